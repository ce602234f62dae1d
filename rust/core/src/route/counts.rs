//! Exact prompt counts, remembered per message: the turns of a conversation send the same
//! messages again and again, and only the new ones need counting.
//!
//! A message's count does not depend on its neighbours (framing is per message), so a prompt's
//! count is the sum of its messages' and each can be remembered alone. The key is a keyed `SipHash`
//! of the encoding, role and content with the content's length: a caller cannot aim a collision at
//! another tenant's messages without the process's random key. Two generations of bounded size
//! keep what was used recently: a lookup that finds an entry in the older one brings it forward,
//! and when the newer one fills up the older is dropped.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::request::Message;
use super::tokens::{chat_framing, Tokenizer};
use super::{Router, Stop};
use crate::error::Result;

/// Messages remembered per generation (two generations: at most twice this many, ~1 MB).
pub const REMEMBERED_PER_GENERATION: usize = 16 * 1024;
/// Shorter messages are counted again: that costs less than hashing and locking.
pub const REMEMBERED_FROM_BYTES: usize = 256;

type Key = (u64, u64);

#[derive(Debug, Default)]
struct Generations {
    newer: FxHashMap<Key, u64>,
    older: FxHashMap<Key, u64>,
}

/// Remembered message counts of one router (one config load).
#[derive(Debug, Default)]
pub(crate) struct CountMemo {
    keys: RandomState,
    generations: Mutex<Generations>,
}

impl CountMemo {
    fn key(&self, encoding: usize, message: &Message<'_>) -> Key {
        let mut hasher = self.keys.build_hasher();
        encoding.hash(&mut hasher);
        message.role.hash(&mut hasher);
        message.content.hash(&mut hasher);
        (hasher.finish(), message.content.len() as u64)
    }

    fn get(&self, key: Key) -> Option<u64> {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&tokens) = generations.newer.get(&key) {
            return Some(tokens);
        }
        let tokens = generations.older.remove(&key)?;
        generations.insert(key, tokens);
        Some(tokens)
    }

    fn put(&self, key: Key, tokens: u64) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        generations.insert(key, tokens);
    }

    /// Messages remembered now.
    fn len(&self) -> usize {
        let generations = self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        generations.newer.len() + generations.older.len()
    }
}

impl Generations {
    fn insert(&mut self, key: Key, tokens: u64) {
        if self.newer.len() >= REMEMBERED_PER_GENERATION {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, tokens);
    }
}

impl Router {
    /// The exact count of `messages` by the largest of the models' tokenizers.
    ///
    /// # Errors
    /// `Stopped` once `stop` is set or its deadline has passed; `LongWork` when `stop` is on the
    /// event loop and the prompt is longer than it may count there.
    pub fn exact_tokens(&self, messages: &[Message<'_>], stop: &Stop) -> Result<u64> {
        stop.may_count(messages.iter().map(|m| m.content.len()).sum())?;
        let mut most = 0;
        for (index, encoding) in self.config.encodings.iter().enumerate() {
            most = most.max(self.counted(index, encoding, messages, stop)?);
        }
        Ok(most)
    }

    /// `encoding`'s count of `messages`, framing included, with long messages remembered.
    pub(super) fn counted(
        &self,
        index: usize,
        encoding: &Tokenizer,
        messages: &[Message<'_>],
        stop: &Stop,
    ) -> Result<u64> {
        let Tokenizer::Bpe(bpe) = encoding else {
            return encoding.count_messages(messages, stop);
        };
        let mut body = 0;
        for message in messages {
            body += if message.content.len() < REMEMBERED_FROM_BYTES {
                bpe.count_message(message, stop)?
            } else {
                let key = self.counts.key(index, message);
                if let Some(tokens) = self.counts.get(key) {
                    tokens
                } else {
                    let tokens = bpe.count_message(message, stop)?;
                    self.counts.put(key, tokens);
                    tokens
                }
            };
        }
        Ok(body + chat_framing(messages.len()))
    }

    /// Messages whose counts this router remembers.
    pub fn remembered_counts(&self) -> usize {
        self.counts.len()
    }
}
