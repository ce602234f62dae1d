//! The gate's table of outstanding reservations.
//!
//! Each reservation remembers exactly what it took (rules, tokens, cost) so settle and release
//! give back exactly that, once. Entries live in slabs with a free list, so after warm-up a
//! reservation allocates nothing; an id carries its slot's generation, so an id that was already
//! settled or released (or is simply made up) is refused even after its slot has been reused,
//! instead of refunding someone else's reservation.
//!
//! The table is split into shards, each behind its own mutex and on its own cache line, and
//! reservations are spread over them round-robin: every request passes through here twice, and
//! one mutex for all of them would be the gate's only global lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{CoreError, Result};

/// Most rules (rate limits plus budgets) one reservation may name. Enough for a limit per key
/// (tenant, stage, model, deployment) and a few budgets, and small enough to store inline.
pub const MAX_RULES: usize = 16;

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
/// Slots per shard: 2^28, far beyond what memory would hold at once.
const SLOT_BITS: u32 = 28;
/// 31 bits, so that ids stay below 2^63 and fit a signed 64-bit int (Python, protobuf `int64`).
const GENERATION_MASK: u32 = (1 << 31) - 1;

/// A reservation's id: `generation << 32 | slot << 4 | shard`. A slot's generation moves on each
/// time it is freed, so an old id stops matching; it would match again only after 2^31 reuses of
/// that one slot while the old id was still being held, which no caller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(u64);

impl ReservationId {
    /// An id as the caller stored it; whether it names an outstanding reservation is checked
    /// when it is used.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    fn new(shard: usize, slot: u32, generation: u32) -> Self {
        Self(u64::from(generation) << 32 | u64::from(slot) << SHARD_BITS | shard as u64)
    }

    /// (shard, slot, generation), or `None` for bits no id ever has.
    fn parts(self) -> Option<(usize, u32, u32)> {
        let generation = u32::try_from(self.0 >> 32).ok()?;
        (generation <= GENERATION_MASK).then(|| {
            let low = self.0 as u32;
            ((low as usize) & (SHARDS - 1), low >> SHARD_BITS, generation)
        })
    }
}

/// What one reservation took. Rule ids are below 2^32 (the gate's rule stores hold no more).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Held {
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
    rules: [u32; MAX_RULES],
    limits: u8,
    budgets: u8,
}

impl Held {
    /// The caller has checked that the ids fit: at most `MAX_RULES` in all, each below 2^32.
    pub(crate) fn new(limit_ids: &[usize], budget_ids: &[usize], tokens: u64, cost: f64) -> Self {
        debug_assert!(limit_ids.len() + budget_ids.len() <= MAX_RULES);
        let mut rules = [0; MAX_RULES];
        for (rule, &id) in rules.iter_mut().zip(limit_ids.iter().chain(budget_ids)) {
            *rule = id as u32;
        }
        Self {
            tokens,
            cost_usd: cost,
            rules,
            limits: limit_ids.len() as u8,
            budgets: budget_ids.len() as u8,
        }
    }

    pub(crate) fn limits(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules[..usize::from(self.limits)]
            .iter()
            .map(|&id| id as usize)
    }

    pub(crate) fn budgets(&self) -> impl Iterator<Item = usize> + '_ {
        let start = usize::from(self.limits);
        self.rules[start..start + usize::from(self.budgets)]
            .iter()
            .map(|&id| id as usize)
    }
}

#[derive(Debug)]
enum State {
    Held(Held),
    Free { next: Option<u32> },
}

#[derive(Debug)]
struct Entry {
    generation: u32,
    state: State,
}

#[derive(Debug, Default)]
struct Slab {
    entries: Vec<Entry>,
    free: Option<u32>,
    held: usize,
}

impl Slab {
    /// (slot, generation) of the new entry, or `None` when the shard is full.
    fn insert(&mut self, held: Held) -> Option<(u32, u32)> {
        let slot = if let Some(slot) = self.free {
            slot
        } else {
            let slot = u32::try_from(self.entries.len())
                .ok()
                .filter(|&slot| slot < 1 << SLOT_BITS)?;
            // Pushed free, with `self.free` already `None`, so the path below takes it.
            self.entries.push(Entry {
                generation: 0,
                state: State::Free { next: None },
            });
            slot
        };
        let entry = &mut self.entries[slot as usize];
        if let State::Free { next } = entry.state {
            self.free = next;
        }
        entry.state = State::Held(held);
        self.held += 1;
        Some((slot, entry.generation))
    }

    fn take(&mut self, slot: u32, generation: u32) -> Option<Held> {
        let entry = self.entries.get_mut(slot as usize)?;
        match entry.state {
            State::Held(held) if entry.generation == generation => {
                entry.state = State::Free { next: self.free };
                entry.generation = (generation + 1) & GENERATION_MASK;
                self.free = Some(slot);
                self.held -= 1;
                Some(held)
            }
            _ => None,
        }
    }
}

/// Keeps each shard on its own cache line (two, for adjacent-line prefetch), so threads working
/// in different shards do not contend through false sharing.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded<T>(T);

#[derive(Debug, Default)]
pub(crate) struct Reservations {
    shards: [Padded<Mutex<Slab>>; SHARDS],
    next_shard: AtomicUsize,
}

impl Reservations {
    /// Nothing inside is left half-updated by a panic, so a poisoned lock is used as is.
    fn shard(&self, shard: usize) -> MutexGuard<'_, Slab> {
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// # Errors
    /// `InvalidArgument` if 2^28 reservations are already outstanding in the chosen shard.
    pub(crate) fn insert(&self, held: Held) -> Result<ReservationId> {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let (slot, generation) = self
            .shard(shard)
            .insert(held)
            .ok_or_else(|| CoreError::invalid("reservation", "too many outstanding"))?;
        Ok(ReservationId::new(shard, slot, generation))
    }

    /// Removes and returns the reservation, which is then gone for good.
    ///
    /// # Errors
    /// `UnknownReservation` unless `id` is outstanding.
    pub(crate) fn take(&self, id: ReservationId) -> Result<Held> {
        let unknown = CoreError::UnknownReservation {
            id: i128::from(id.get()),
        };
        let (shard, slot, generation) = id.parts().ok_or_else(|| unknown.clone())?;
        self.shard(shard).take(slot, generation).ok_or(unknown)
    }

    /// Outstanding reservations; each shard is counted under its lock, so the total is exact when
    /// nothing runs concurrently and a momentary snapshot otherwise.
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS).map(|shard| self.shard(shard).held).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(limits: &[usize], budgets: &[usize]) -> Held {
        Held::new(limits, budgets, 10, 0.5)
    }

    #[test]
    fn held_splits_limits_and_budgets() {
        let h = held(&[3, 1], &[7]);
        assert_eq!(h.limits().collect::<Vec<_>>(), [3, 1]);
        assert_eq!(h.budgets().collect::<Vec<_>>(), [7]);
        let none = held(&[], &[]);
        assert_eq!(none.limits().count() + none.budgets().count(), 0);
    }

    #[test]
    fn an_id_is_taken_once_and_stale_ids_never_match() {
        let table = Reservations::default();
        let first = table.insert(held(&[0], &[])).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.take(first).unwrap(), held(&[0], &[]));
        assert_eq!(
            table.take(first),
            Err(CoreError::UnknownReservation {
                id: i128::from(first.get())
            })
        );
        // Round-robin brings the 17th reservation back to the first one's shard and freed slot,
        // under a new generation; the old id still fails.
        let ids: Vec<_> = (0..2 * SHARDS)
            .map(|_| table.insert(held(&[], &[1])).unwrap())
            .collect();
        assert!(ids.iter().all(|id| id.get() < 1 << 63));
        assert_eq!(first.parts(), Some((0, 0, 0)));
        assert_eq!(ids[SHARDS - 1].parts(), Some((0, 0, 1)));
        assert!(table.take(first).is_err());
        assert_eq!(table.len(), 2 * SHARDS);
        for id in ids {
            table.take(id).unwrap();
        }
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn made_up_ids_are_unknown() {
        let table = Reservations::default();
        for raw in [0, 1 << 40, u64::MAX, (1 << 63) | 5] {
            assert!(table.take(ReservationId::from_raw(raw)).is_err(), "{raw}");
        }
    }

    #[test]
    fn generations_wrap_within_31_bits() {
        let mut slab = Slab::default();
        let (slot, generation) = slab.insert(held(&[], &[])).unwrap();
        slab.entries[slot as usize].generation = GENERATION_MASK;
        assert!(slab.take(slot, generation).is_none());
        assert!(slab.take(slot, GENERATION_MASK).is_some());
        assert_eq!(slab.insert(held(&[], &[])), Some((slot, 0)));
        assert_eq!(slab.held, 1);
    }
}
