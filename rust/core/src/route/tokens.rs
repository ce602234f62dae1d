//! Prompt token counts for routing: exact BPE counts (tiktoken's algorithm over ranks the Python
//! side loads and checks), or the ~4 characters per token estimate. `switchpoint/tokens.py` says
//! which encodings exist and where their ranks come from; this is only the counting.
//!
//! tiktoken's own two encodings, `cl100k_base` and `o200k_base`, are counted by `toktok` (a
//! hand-compiled pre-tokenizer fused with a backtracking BPE, 2-10 ns per byte where the regex
//! and merge below take 30-150; docs/benchmarks.md, "Exact token counts"). It is used only when
//! the pattern is tiktoken's, byte for byte, and the ranks handed in are exactly the vocabulary
//! `toktok` embeds (checked token by token when the encoding is built), so the ranks are still
//! the ones the Python side checked against tiktoken's pinned sha256. Any other pattern or ranks
//! take the general path: tiktoken's regex (fancy-regex), then tiktoken's quadratic loop for a
//! short piece (fastest when a piece is a few bytes, as almost all are) and `merge_long`, the same
//! merges in O(n log n), for a long one (a megabyte of one letter is one piece).
//!
//! Both paths check their `Stop` every few thousand bytes, so a cancelled caller stops paying.
//! `toktok` counts a text in chunks cut where a piece always ends (see `chunk_end`); the stretch
//! around a character unassigned in the regex engine's Unicode, and a text with nowhere to cut for
//! `MAX_UNCUT` bytes, go the general way.

use std::fmt;
use std::sync::{Arc, OnceLock};

use fancy_regex::Regex;
use rustc_hash::FxHashMap;
use tiktoken_rs::Rank;

use crate::error::{CoreError, Result};
use crate::route::request::Message;
use crate::route::shape::{letter_runs_merge, Upper};
use crate::route::stop::Stop;

mod merge;

use merge::count_piece;
#[cfg(test)]
pub use merge::merge_long;

/// Bytes of text (or merges of one long piece) between two looks at the `Stop`.
const STOP_CHECK_EVERY: usize = 4096;
/// Bytes `toktok` may count past a chunk's size in one go, looking for a place to cut: about
/// 0.2-3 ms of its counting, the longest a cancelled caller keeps paying.
const MAX_UNCUT: usize = 64 * 1024;

/// tiktoken's pre-tokenizing patterns (`tiktoken_ext.openai_public`), the two `toktok` compiles
/// by hand: a BPE with one of these and `toktok`'s vocabulary for it is counted by `toktok`.
pub const CL100K_BASE_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
pub const O200K_BASE_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// The estimate: characters per token, tokens of framing per message and for the reply.
pub const CHARS_PER_TOKEN: u64 = 4;
pub const ESTIMATE_TOKENS_PER_MESSAGE: u64 = 4;
pub const TOKENS_PER_REPLY: u64 = 3;
/// Real-tokenizer framing per message (`<|start|>`, `<|message|>`, `<|end|>`), on top of the
/// encoded role and content, as in `OpenAI`'s token-counting recipe.
pub const CHAT_TOKENS_PER_MESSAGE: u64 = 3;

/// A BPE encoding: mergeable ranks and the pre-tokenizing pattern, exactly as tiktoken builds one.
pub struct Bpe {
    ranks: FxHashMap<Vec<u8>, Rank>,
    pattern: Regex,
    /// tiktoken's own encoding, its ranks verified equal to the vocabulary `toktok` embeds.
    builtin: Option<Arc<toktok::Tokenizer>>,
    /// The high bound routing may use for a count it does not make (`route/shape.rs`).
    upper: Upper,
}

impl fmt::Debug for Bpe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bpe")
            .field("counter", &self.counter_name())
            .finish_non_exhaustive()
    }
}

impl Bpe {
    /// Counted by `toktok` when `pattern` is tiktoken's `cl100k_base` or `o200k_base` one and
    /// `ranks` are exactly that encoding's; by the regex and the merge otherwise.
    ///
    /// # Errors
    /// `InvalidArgument` when the pattern does not compile or a single byte has no rank (every
    /// byte needs one, or a piece could not be split).
    pub fn new(ranks: FxHashMap<Vec<u8>, Rank>, pattern: &str) -> Result<Self> {
        let builtin = builtin_for(&ranks, pattern);
        Ok(Self {
            builtin,
            ..Self::general(ranks, pattern)?
        })
    }

    /// Always counted by the regex and the merge: what `new` falls back to, and the reference
    /// `toktok` is tested against.
    ///
    /// # Errors
    /// As `new`.
    pub fn general(ranks: FxHashMap<Vec<u8>, Rank>, pattern: &str) -> Result<Self> {
        let pattern = Regex::new(pattern)
            .map_err(|e| CoreError::invalid("pattern", format!("does not compile: {e}")))?;
        if let Some(byte) = (0..=u8::MAX).find(|b| !ranks.contains_key(&[*b][..])) {
            return Err(CoreError::invalid(
                "ranks",
                format!("byte {byte:#04x} has no rank"),
            ));
        }
        Ok(Self {
            upper: letter_runs_merge(&ranks, pattern.as_str()),
            ranks,
            pattern,
            builtin: None,
        })
    }

    pub fn ranks(&self) -> &FxHashMap<Vec<u8>, Rank> {
        &self.ranks
    }

    /// The high bound of a count of this encoding made without counting.
    pub fn upper(&self) -> Upper {
        self.upper
    }

    /// Which counter counts: "toktok" (tiktoken's own encoding) or "regex" (any other).
    pub fn counter_name(&self) -> &'static str {
        if self.builtin.is_some() {
            "toktok"
        } else {
            "regex"
        }
    }

    /// Tokens `text` encodes to, special-token text counted as ordinary text (tiktoken's
    /// `encode_ordinary`). A piece the pattern engine gives up on (its backtracking limit) is
    /// counted by the estimate instead of failing the request.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn count(&self, text: &str, stop: &Stop) -> Result<u64> {
        let Some(builtin) = &self.builtin else {
            return self.count_general(text, stop);
        };
        // In chunks of about `STOP_CHECK_EVERY` bytes, cut where a piece always ends (`chunk_end`),
        // looking at `stop` between them. A text with nowhere to cut for `MAX_UNCUT` bytes (a
        // megabyte of one letter, unspaced CJK) is counted the general way up to its next cut,
        // which looks at `stop` itself.
        let mut tokens = 0u64;
        let mut start = 0;
        let mut padded = Padded::default();
        while start < text.len() {
            if start > 0 {
                stop.check()?;
            }
            let from = start + STOP_CHECK_EVERY;
            let end = chunk_end(text, from);
            tokens += if end.saturating_sub(from) > MAX_UNCUT {
                self.count_general(&text[start..end], stop)?
            } else {
                self.count_chunk(builtin, &text[start..end], &mut padded, stop)?
            };
            start = end;
        }
        Ok(tokens)
    }

    /// `toktok`'s count of `chunk`, but for the stretches around characters the pattern engine
    /// knows as unassigned, each cut where a piece always ends and counted by the regex and merge.
    fn count_chunk(
        &self,
        builtin: &toktok::Tokenizer,
        chunk: &str,
        padded: &mut Padded,
        stop: &Stop,
    ) -> Result<u64> {
        let bytes = chunk.as_bytes();
        if chunk.is_ascii() {
            return Ok(padded.count(builtin, bytes));
        }
        let mut tokens = 0u64;
        let mut counted_to = 0;
        for unassigned in unassigned_chars().find_iter(chunk) {
            if unassigned.start() < counted_to {
                continue; // in the stretch just counted
            }
            let from = chunk_start(chunk, counted_to, unassigned.start());
            let to = chunk_end(chunk, unassigned.end());
            tokens += padded.count(builtin, &bytes[counted_to..from]);
            tokens += self.count_general(&chunk[from..to], stop)?;
            counted_to = to;
        }
        Ok(tokens + padded.count(builtin, &bytes[counted_to..]))
    }

    fn count_general(&self, text: &str, stop: &Stop) -> Result<u64> {
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
            tokens += count_piece(&self.ranks, piece.as_str().as_bytes(), stop)?;
        }
        Ok(tokens)
    }
}

/// Text handed to `toktok` with zeros after it. Its cache of short pieces reads a piece as one
/// 16-byte word (the bytes past the piece masked off; `pcache::pack_key`), so up to 15 bytes past
/// the end of the text: past a caller's string that is memory not ours (the address sanitizer
/// stops on it), here it is the zeros.
#[derive(Default)]
struct Padded(Vec<u8>);

impl Padded {
    const ZEROS: [u8; 16] = [0; 16];

    fn count(&mut self, builtin: &toktok::Tokenizer, text: &[u8]) -> u64 {
        self.0.clear();
        self.0.extend_from_slice(text);
        self.0.extend_from_slice(&Self::ZEROS);
        builtin.count(&self.0[..text.len()]) as u64
    }
}

/// Characters the pattern engine knows as unassigned. `toktok`'s character classes come from a
/// newer Unicode, where some of them are letters, digits or marks, so a chunk holding one is split
/// by the regex, as tiktoken splits it (every difference found over all scalar values is here).
fn unassigned_chars() -> &'static regex::Regex {
    static UNASSIGNED: OnceLock<regex::Regex> = OnceLock::new();
    UNASSIGNED.get_or_init(|| regex::Regex::new(r"\p{Cn}").expect("a valid class"))
}

/// `toktok`'s encoding for `pattern`, if `pattern` is one of tiktoken's two and `ranks` are, token
/// for token, the vocabulary `toktok` embeds for it. Its tables are built once per process (~0.4 s
/// for o200k) and shared by every config load after; the ranks are compared every time.
fn builtin_for(ranks: &FxHashMap<Vec<u8>, Rank>, pattern: &str) -> Option<Arc<toktok::Tokenizer>> {
    static CL100K: OnceLock<Option<Arc<toktok::Tokenizer>>> = OnceLock::new();
    static O200K: OnceLock<Option<Arc<toktok::Tokenizer>>> = OnceLock::new();
    let (name, built) = match pattern {
        CL100K_BASE_PATTERN => ("cl100k_base", &CL100K),
        O200K_BASE_PATTERN => ("o200k_base", &O200K),
        _ => return None,
    };
    let tokenizer = built
        .get_or_init(|| toktok::Tokenizer::builtin(name).ok().map(Arc::new))
        .clone()?;
    let same = tokenizer.vocab_size() == ranks.len()
        && ranks
            .iter()
            .all(|(bytes, &rank)| tokenizer.token_bytes(rank) == Some(bytes.as_slice()));
    same.then_some(tokenizer)
}

/// The first position at or after `from` (or the end) where a space or a tab follows a character
/// that is not whitespace. No piece of either pattern holds that pair: a space or tab only begins
/// a piece (before letters or punctuation) or sits in a piece of whitespace alone (punctuation
/// takes the line breaks after it, never a space). Neither pattern looks behind, and at such a cut
/// the patterns' `$`, `(?!\S)` and optional contraction read the end of text as they read the
/// space, so both sides split as they do in the whole text, as tiktoken's regex splits them; each
/// side `toktok` counts is free of the characters it splits differently (`unassigned_chars`).
fn chunk_end(text: &str, from: usize) -> usize {
    if from >= text.len() {
        return text.len();
    }
    (from.max(1)..text.len())
        .find(|&at| is_cut(text, at))
        .unwrap_or(text.len())
}

/// The last such position after `floor` and at or before `at`, or `floor`.
fn chunk_start(text: &str, floor: usize, at: usize) -> usize {
    (floor + 1..=at)
        .rev()
        .find(|&at| is_cut(text, at))
        .unwrap_or(floor)
}

fn is_cut(text: &str, at: usize) -> bool {
    let bytes = text.as_bytes();
    // A space or tab is a whole character, so `at` is a character boundary.
    matches!(bytes[at], b' ' | b'\t')
        && match bytes[at - 1] {
            byte if byte.is_ascii() => {
                !matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
            }
            // `char::is_whitespace` is Unicode's White_Space, the patterns' `\s`.
            _ => text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace()),
        }
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
                    body += bpe.count_message(message, stop)?;
                }
                Ok(body + chat_framing(messages.len()))
            }
        }
    }
}

/// The chat framing of a prompt of `messages` messages, counted by a real tokenizer.
pub fn chat_framing(messages: usize) -> u64 {
    CHAT_TOKENS_PER_MESSAGE * messages as u64 + TOKENS_PER_REPLY
}

impl Bpe {
    /// Tokens of one message's role and content, without framing: a prompt's count is the sum
    /// of its messages' and its framing.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed.
    pub fn count_message(&self, message: &Message<'_>, stop: &Stop) -> Result<u64> {
        Ok(self.count(message.role, stop)? + self.count(message.content, stop)?)
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

#[cfg(test)]
#[path = "tokens_builtin_tests.rs"]
mod builtin_tests;
