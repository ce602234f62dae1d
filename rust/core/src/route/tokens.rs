//! Prompt token counts for routing: exact BPE counts (tiktoken's algorithm over ranks the Python
//! side loads and checks), or the ~4 characters per token estimate. `switchpoint/tokens.py` says
//! which encodings exist and where their ranks come from; this is only the counting.

use std::sync::Arc;

use fancy_regex::Regex;
use rustc_hash::FxHashMap;
use tiktoken_rs::{byte_pair_split, Rank};

use crate::error::{CoreError, Result};
use crate::route::request::Message;

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

    /// Tokens `text` encodes to, special-token text counted as ordinary text (tiktoken's
    /// `encode_ordinary`). A piece the pattern engine gives up on (its backtracking limit) is
    /// counted by the estimate instead of failing the request.
    pub fn count(&self, text: &str) -> u64 {
        let mut tokens = 0u64;
        let mut counted_to = 0;
        for found in self.pattern.find_iter(text) {
            let Ok(piece) = found else {
                return tokens + estimate_text(&text[counted_to..]);
            };
            counted_to = piece.end();
            let bytes = piece.as_str().as_bytes();
            tokens += if self.ranks.contains_key(bytes) {
                1
            } else {
                byte_pair_split(bytes, &self.ranks).len() as u64
            };
        }
        tokens
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
    pub fn count_text(&self, text: &str) -> u64 {
        match self {
            Self::Estimate => estimate_text(text),
            Self::Bpe(bpe) => bpe.count(text),
        }
    }

    /// Tokens of a whole prompt, framing included.
    pub fn count_messages(&self, messages: &[Message<'_>]) -> u64 {
        let n = messages.len() as u64;
        match self {
            Self::Estimate => {
                let chars: u64 = messages
                    .iter()
                    .map(|m| m.content.chars().count() as u64)
                    .sum();
                chars.div_ceil(CHARS_PER_TOKEN) + ESTIMATE_TOKENS_PER_MESSAGE * n + TOKENS_PER_REPLY
            }
            Self::Bpe(bpe) => {
                let body: u64 = messages
                    .iter()
                    .map(|m| bpe.count(m.role) + bpe.count(m.content))
                    .sum();
                body + CHAT_TOKENS_PER_MESSAGE * n + TOKENS_PER_REPLY
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
        assert_eq!(bpe.count("abc"), 1);
        assert_eq!(bpe.count("abcd"), 2); // abc + d
        assert_eq!(bpe.count("ab ab"), 3); // ab, " ", ab
        assert_eq!(bpe.count(""), 0);
    }

    #[test]
    fn messages_add_framing() {
        let messages = [Message {
            role: "user",
            content: "abcd",
        }];
        let estimate = Tokenizer::Estimate.count_messages(&messages);
        assert_eq!(estimate, 1 + 4 + 3);
        let exact = Tokenizer::Bpe(Arc::new(toy())).count_messages(&messages);
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
