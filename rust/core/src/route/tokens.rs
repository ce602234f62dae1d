//! Prompt token counts for routing: exact BPE counts (tiktoken's algorithm over ranks the Python
//! side loads and checks), or the ~4 characters per token estimate. `switchpoint/tokens.py` says
//! which encodings exist and where their ranks come from; this is only the counting.
//!
//! Counting is near-linear in the text's bytes whatever its shape: a short piece is merged by
//! tiktoken's own quadratic loop (fastest when a piece is a few bytes, as almost all are), a long
//! one (a megabyte of one letter is one piece) by `merge_long`, the same merges in O(n log n). A
//! long count checks its `Stop` every few thousand bytes, so a cancelled caller stops paying.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use fancy_regex::Regex;
use rustc_hash::FxHashMap;
use tiktoken_rs::{byte_pair_split, Rank};

use crate::error::{CoreError, Result};
use crate::route::request::Message;
use crate::route::stop::Stop;

/// Pieces up to this many bytes go through tiktoken's loop: below it the quadratic scan over a
/// small vector beats a heap (measured: equal at about 200 bytes on o200k).
const SHORT_PIECE_BYTES: usize = 128;
/// Bytes of text (or merges of one long piece) between two looks at the `Stop`.
const STOP_CHECK_EVERY: usize = 4096;

/// The estimate: characters per token, tokens of framing per message and for the reply.
pub const CHARS_PER_TOKEN: u64 = 4;
pub const ESTIMATE_TOKENS_PER_MESSAGE: u64 = 4;
pub const TOKENS_PER_REPLY: u64 = 3;
/// Real-tokenizer framing per message (`<|start|>`, `<|message|>`, `<|end|>`), on top of the
/// encoded role and content, as in `OpenAI`'s token-counting recipe.
pub const CHAT_TOKENS_PER_MESSAGE: u64 = 3;

/// A BPE encoding: mergeable ranks and the pre-tokenizing pattern, exactly as tiktoken builds one.
#[derive(Debug)]
pub struct Bpe {
    ranks: FxHashMap<Vec<u8>, Rank>,
    pattern: Regex,
}

impl Bpe {
    /// # Errors
    /// `InvalidArgument` when the pattern does not compile or a single byte has no rank (every
    /// byte needs one, or a piece could not be split).
    pub fn new(ranks: FxHashMap<Vec<u8>, Rank>, pattern: &str) -> Result<Self> {
        let pattern = Regex::new(pattern)
            .map_err(|e| CoreError::invalid("pattern", format!("does not compile: {e}")))?;
        if let Some(byte) = (0..=u8::MAX).find(|b| !ranks.contains_key(&[*b][..])) {
            return Err(CoreError::invalid(
                "ranks",
                format!("byte {byte:#04x} has no rank"),
            ));
        }
        Ok(Self { ranks, pattern })
    }

    pub fn ranks(&self) -> &FxHashMap<Vec<u8>, Rank> {
        &self.ranks
    }

    /// Tokens `text` encodes to, special-token text counted as ordinary text (tiktoken's
    /// `encode_ordinary`). A piece the pattern engine gives up on (its backtracking limit) is
    /// counted by the estimate instead of failing the request.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn count(&self, text: &str, stop: &Stop) -> Result<u64> {
        let mut tokens = 0u64;
        let mut counted_to = 0;
        let mut checked_at = 0;
        for found in self.pattern.find_iter(text) {
            let Ok(piece) = found else {
                return Ok(tokens + estimate_text(&text[counted_to..]));
            };
            counted_to = piece.end();
            if counted_to - checked_at >= STOP_CHECK_EVERY {
                stop.check()?;
                checked_at = counted_to;
            }
            tokens += self.count_piece(piece.as_str().as_bytes(), stop)?;
        }
        Ok(tokens)
    }

    fn count_piece(&self, piece: &[u8], stop: &Stop) -> Result<u64> {
        if self.ranks.contains_key(piece) {
            return Ok(1);
        }
        if piece.len() <= SHORT_PIECE_BYTES {
            return Ok(byte_pair_split(piece, &self.ranks).len() as u64);
        }
        Ok(self.merge_long(piece, stop)?.len() as u64)
    }
}

impl Bpe {
    /// The start of every token `piece` merges into: exactly tiktoken's `_byte_pair_merge` (merge the
    /// adjacent pair of lowest rank, the leftmost of equals, until no pair has a rank), in O(n log n).
    ///
    /// The parts form a linked list over byte positions; a min-heap holds (rank, start) of each
    /// mergeable pair, packed in one integer, so the lowest rank and then the lowest start, the
    /// leftmost, comes out first. An entry goes stale when its part is merged away or its pair
    /// changes; the pair of a live part only ever grows, to a different byte string with a different
    /// rank, so an entry is current exactly when its part is alive and the rank still matches.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed; `InvalidArgument` for a piece of
    /// 4 GiB or more (a start must fit the packed entry; no request can carry one).
    pub fn merge_long(&self, piece: &[u8], stop: &Stop) -> Result<Vec<usize>> {
        let ranks = &self.ranks;
        let len = piece.len();
        if len < 2 {
            return Ok((0..len).collect());
        }
        if u32::try_from(len).is_err() {
            return Err(CoreError::invalid("text", "a piece of 4 GiB or more"));
        }
        let mut parts: Vec<Part> = (0..len)
            .map(|i| Part {
                next: i + 1,
                prev: i.wrapping_sub(1),
                rank: Rank::MAX,
            })
            .collect();
        let rank_of = |parts: &[Part], start: usize| -> Rank {
            let second = parts[start].next;
            if second >= len {
                return Rank::MAX;
            }
            let end = parts[second].next;
            ranks.get(&piece[start..end]).copied().unwrap_or(Rank::MAX)
        };
        let mut entries = Vec::with_capacity(len);
        for start in 0..len - 1 {
            let rank = ranks
                .get(&piece[start..start + 2])
                .copied()
                .unwrap_or(Rank::MAX);
            parts[start].rank = rank;
            if rank != Rank::MAX {
                entries.push(Reverse(entry(rank, start)));
            }
        }
        let mut heap = BinaryHeap::from(entries);
        let mut merges = 0usize;
        while let Some(Reverse(key)) = heap.pop() {
            let (rank, start) = unpack(key);
            if parts[start].rank != rank {
                continue; // stale: merged away (DEAD) or its pair changed since
            }
            merges += 1;
            if merges % STOP_CHECK_EVERY == 0 {
                stop.check()?;
            }
            let removed = parts[start].next;
            let after = parts[removed].next;
            parts[removed].rank = DEAD;
            parts[start].next = after;
            if after < len {
                parts[after].prev = start;
            }
            let rank = rank_of(&parts, start);
            parts[start].rank = rank;
            if rank != Rank::MAX {
                heap.push(Reverse(entry(rank, start)));
            }
            let before = parts[start].prev;
            if before != usize::MAX {
                let rank = rank_of(&parts, before);
                parts[before].rank = rank;
                if rank != Rank::MAX {
                    heap.push(Reverse(entry(rank, before)));
                }
            }
        }
        Ok((0..len).filter(|&i| parts[i].rank != DEAD).collect())
    }
}

/// One part of a piece being merged: its neighbours' starts (`len` past the last, `usize::MAX`
/// before the first) and the rank of the pair it starts (`Rank::MAX`: none, `DEAD`: merged away).
#[derive(Clone, Copy)]
struct Part {
    next: usize,
    prev: usize,
    rank: Rank,
}

/// No BPE has this many ranks: it marks a part merged into its left neighbour.
const DEAD: Rank = Rank::MAX - 1;

fn entry(rank: Rank, start: usize) -> u64 {
    (u64::from(rank) << 32) | start as u64
}

fn unpack(key: u64) -> (Rank, usize) {
    // The high half is a rank and the low half a start below 2^32 (checked by the caller).
    #[allow(clippy::cast_possible_truncation)]
    ((key >> 32) as Rank, (key & u64::from(u32::MAX)) as usize)
}

/// How one encoding counts.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Estimate,
    Bpe(Arc<Bpe>),
}

pub fn estimate_text(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(CHARS_PER_TOKEN)
}

impl Tokenizer {
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn count_text(&self, text: &str, stop: &Stop) -> Result<u64> {
        match self {
            Self::Estimate => Ok(estimate_text(text)),
            Self::Bpe(bpe) => bpe.count(text, stop),
        }
    }

    /// Tokens of a whole prompt, framing included.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn count_messages(&self, messages: &[Message<'_>], stop: &Stop) -> Result<u64> {
        let n = messages.len() as u64;
        match self {
            Self::Estimate => {
                let chars: u64 = messages
                    .iter()
                    .map(|m| m.content.chars().count() as u64)
                    .sum();
                Ok(chars.div_ceil(CHARS_PER_TOKEN)
                    + ESTIMATE_TOKENS_PER_MESSAGE * n
                    + TOKENS_PER_REPLY)
            }
            Self::Bpe(bpe) => {
                let mut body = 0u64;
                for message in messages {
                    body += bpe.count(message.role, stop)? + bpe.count(message.content, stop)?;
                }
                Ok(body + CHAT_TOKENS_PER_MESSAGE * n + TOKENS_PER_REPLY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every single byte, plus "ab" and "abc" as merges: enough to watch the merge order.
    fn toy() -> Bpe {
        let mut ranks: FxHashMap<Vec<u8>, Rank> =
            (0..=u8::MAX).map(|b| (vec![b], u32::from(b))).collect();
        ranks.insert(b"ab".to_vec(), 300);
        ranks.insert(b"abc".to_vec(), 301);
        Bpe::new(ranks, r"\S+|\s+").unwrap()
    }

    #[test]
    fn counts_merges_and_whole_pieces() {
        let bpe = toy();
        let count = |text| bpe.count(text, Stop::never()).unwrap();
        assert_eq!(count("abc"), 1);
        assert_eq!(count("abcd"), 2); // abc + d
        assert_eq!(count("ab ab"), 3); // ab, " ", ab
        assert_eq!(count(""), 0);
    }

    #[test]
    fn messages_add_framing() {
        let messages = [Message {
            role: "user",
            content: "abcd",
        }];
        let estimate = Tokenizer::Estimate
            .count_messages(&messages, Stop::never())
            .unwrap();
        assert_eq!(estimate, 1 + 4 + 3);
        let exact = Tokenizer::Bpe(Arc::new(toy()))
            .count_messages(&messages, Stop::never())
            .unwrap();
        assert_eq!(exact, 4 + 2 + 3 + 3); // "user" is four single bytes here
    }

    #[test]
    fn estimate_counts_characters_not_bytes() {
        assert_eq!(estimate_text("ééééé"), 2);
    }

    #[test]
    fn missing_byte_ranks_and_bad_patterns_are_refused() {
        let ranks: FxHashMap<Vec<u8>, Rank> = [(b"a".to_vec(), 0)].into_iter().collect();
        assert!(Bpe::new(ranks, r"\S+")
            .unwrap_err()
            .to_string()
            .contains("byte 0x00"));
        let ranks = (0..=u8::MAX).map(|b| (vec![b], u32::from(b))).collect();
        assert!(Bpe::new(ranks, "(").is_err());
    }
}
