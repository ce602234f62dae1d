//! An append-only vector that readers index without a lock, for the gate's rules.
//!
//! Rules are added through `&self` while the gate may already be serving (Python holds the gate
//! in a frozen object), and every reservation reads several of them. A `RwLock<Vec<_>>` would put
//! one shared counter, written by every reader, in front of all of them; here elements live in
//! chunks that are allocated once and never move, so a read is an index computation and one
//! atomic load. Same layout as `latency/slot.rs`'s store, generic over the element.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Chunk `k` holds `2^k` elements, so the vector holds up to `2^CHUNKS - 1`: beyond any rule
/// count, and it keeps indices within `u32`, which reservations store them as.
const CHUNKS: usize = 32;

pub(crate) struct AppendOnly<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
    len: AtomicUsize,
    /// Serialises `push`, which is rare (build time); reads never touch it.
    push: Mutex<()>,
}

impl<T> AppendOnly<T> {
    pub(crate) fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            push: Mutex::new(()),
        }
    }

    /// (chunk, offset) of element `index`, or `None` past capacity.
    fn locate(index: usize) -> Option<(usize, usize)> {
        let position = index.checked_add(1)?;
        let chunk = (usize::BITS - 1 - position.leading_zeros()) as usize;
        (chunk < CHUNKS).then(|| (chunk, position - (1 << chunk)))
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        let (chunk, offset) = Self::locate(index)?;
        self.chunks[chunk].get()?.get(offset)?.get()
    }

    /// Appends `value` and returns its index, or `None` when full.
    pub(crate) fn push(&self, value: T) -> Option<usize> {
        let _serialised = self.push.lock().unwrap_or_else(PoisonError::into_inner);
        let index = self.len.load(Ordering::Relaxed);
        let (chunk, offset) = Self::locate(index)?;
        let slots = self.chunks[chunk]
            .get_or_init(|| (0..1usize << chunk).map(|_| OnceLock::new()).collect());
        // The slot is empty: indices are handed out once, under the lock.
        slots[offset].set(value).ok()?;
        // Published after the element exists, so `len` never counts one `get` cannot see.
        self.len.store(index + 1, Ordering::Release);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    #[test]
    fn pushes_dense_indices_across_chunks() {
        let store = AppendOnly::new();
        assert!(store.get(0).is_none());
        for i in 0..100 {
            assert_eq!(store.push(i * 10), Some(i));
        }
        assert_eq!(store.len(), 100);
        assert_eq!(store.get(63), Some(&630));
        assert!(store.get(100).is_none());
        assert!(store.get(usize::MAX).is_none());
        assert_eq!(
            AppendOnly::<u8>::locate((1 << CHUNKS) - 2),
            Some((CHUNKS - 1, (1 << (CHUNKS - 1)) - 1))
        );
        assert_eq!(AppendOnly::<u8>::locate((1 << CHUNKS) - 1), None);
    }

    #[test]
    fn concurrent_pushes_get_distinct_indices_and_readers_see_them() {
        let store = Arc::new(AppendOnly::new());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    (0..250)
                        .map(|i| {
                            let index = store.push(t * 1_000 + i).unwrap();
                            assert!(store.get(index).is_some());
                            index
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut indices: Vec<usize> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..1_000).collect::<Vec<_>>());
    }
}
