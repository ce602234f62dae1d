//! The gate's rules of one kind (rate limits or budgets), each behind its own mutex, with ids
//! that can be freed and reused.
//!
//! A rule scoped by "*" (one per tenant, say) is created when a request first needs it, so the
//! rules a gate holds grow with the distinct values callers send. The owner frees a rule it no
//! longer needs (`remove`), which drops the rule itself and puts its slot on a free list for the
//! next rule; the slots a gate holds are thus as many as the rules alive at once, never more.
//!
//! An id is `generation << 32 | slot`. A slot's generation moves on each time its rule is freed,
//! so an id kept after its rule was freed (by a metrics scrape that copied a list of ids, say)
//! names no rule, rather than the next rule in that slot. A rule that outstanding reservations
//! name (`holds`) cannot be freed: settle and release find it by slot, and rely on it being there.
//! Slots start at generation 0, so a gate that never frees hands out 0, 1, 2, ...

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::append::AppendOnly;
use crate::error::{CoreError, Result};

// Ids put the generation in the upper 32 bits of a usize.
const _: () = assert!(usize::BITS >= 64);

/// 31 bits, so that ids stay below 2^63 and fit a signed 64-bit int (Python's, protobuf's).
const GENERATION_MASK: u32 = (1 << 31) - 1;

/// A live rule and what its owner needs to decide whether freeing it would lose anything.
#[derive(Debug)]
pub(crate) struct Live<T> {
    pub(crate) rule: T,
    /// Outstanding reservations that name this rule.
    pub(crate) holds: u32,
    /// The time of the last reserve, settle or release naming it; `None` before the first.
    pub(crate) last_used_s: Option<f64>,
}

impl<T> Live<T> {
    /// Counts a reservation taken at `now_s`.
    pub(crate) fn hold(&mut self, now_s: f64) {
        self.holds += 1;
        self.touch(now_s);
    }

    /// Counts a reservation ended (settled, released or rolled back) at `now_s`.
    pub(crate) fn unhold(&mut self, now_s: f64) {
        self.holds = self.holds.saturating_sub(1);
        self.touch(now_s);
    }

    fn touch(&mut self, now_s: f64) {
        self.last_used_s = Some(self.last_used_s.map_or(now_s, |last| last.max(now_s)));
    }
}

#[derive(Debug)]
pub(crate) struct Slot<T> {
    generation: u32,
    live: Option<Live<T>>,
}

pub(crate) type Guard<'a, T> = MutexGuard<'a, Slot<T>>;

pub(crate) struct Rules<T> {
    what: &'static str,
    slots: AppendOnly<Mutex<Slot<T>>>,
    /// Slots whose rule was freed, reused before any new slot is appended.
    free: Mutex<Vec<usize>>,
    live: AtomicUsize,
}

/// Nothing inside a rule's mutex is left half-updated by a panic, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The slot of rule `id`, which a reservation stores (its rule cannot be freed under it).
pub(crate) const fn slot_index(id: usize) -> usize {
    split(id).0
}

const fn split(id: usize) -> (usize, u32) {
    (id & 0xFFFF_FFFF, (id >> 32) as u32)
}

const fn join(slot: usize, generation: u32) -> usize {
    (generation as usize) << 32 | slot
}

impl<T> Rules<T> {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            slots: AppendOnly::new(),
            free: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
        }
    }

    /// Rules alive now.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Slots ever allocated: the most rules that were alive at once.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    fn unknown(&self, id: usize) -> CoreError {
        CoreError::UnknownRule {
            what: self.what,
            index: id as i128,
            len: self.len(),
        }
    }

    /// Adds `rule` and returns its id, or `None` when no slot is left.
    pub(crate) fn add(&self, rule: T) -> Option<usize> {
        let live = Live {
            rule,
            holds: 0,
            last_used_s: None,
        };
        let reused = lock(&self.free).pop();
        let id = if let Some(slot) = reused {
            let mut held = lock(self.slots.get(slot)?);
            held.live = Some(live);
            join(slot, held.generation)
        } else {
            self.slots.push(Mutex::new(Slot {
                generation: 0,
                live: Some(live),
            }))?
        };
        self.live.fetch_add(1, Ordering::AcqRel);
        Some(id)
    }

    /// Rule `id`, locked.
    ///
    /// # Errors
    /// `UnknownRule` unless `id` names a live rule.
    pub(crate) fn get(&self, id: usize) -> Result<Guard<'_, T>> {
        let (slot, generation) = split(id);
        let guard = self
            .slots
            .get(slot)
            .map(lock)
            .ok_or_else(|| self.unknown(id))?;
        if guard.generation == generation && guard.live.is_some() {
            Ok(guard)
        } else {
            Err(self.unknown(id))
        }
    }

    /// The rule in `slot`, if one lives there: for reservations, which hold their rules alive.
    pub(crate) fn at_slot(&self, slot: usize) -> Option<Guard<'_, T>> {
        self.slots
            .get(slot)
            .map(lock)
            .filter(|guard| guard.live.is_some())
    }

    /// Frees rule `id`: true if it was freed, false if reservations still name it (then
    /// nothing changes).
    ///
    /// # Errors
    /// `UnknownRule` unless `id` names a live rule.
    pub(crate) fn remove(&self, id: usize) -> Result<bool> {
        let mut guard = self.get(id)?;
        if guard.live.as_ref().is_some_and(|live| live.holds > 0) {
            return Ok(false);
        }
        guard.live = None;
        guard.generation = guard.generation.wrapping_add(1) & GENERATION_MASK;
        drop(guard);
        lock(&self.free).push(split(id).0);
        self.live.fetch_sub(1, Ordering::AcqRel);
        Ok(true)
    }
}

impl<T> Slot<T> {
    /// The live rule; callers reach a slot through `Rules::get` or `at_slot`, which check that
    /// it has one.
    pub(crate) fn live(&mut self) -> &mut Live<T> {
        self.live
            .as_mut()
            .expect("checked live by Rules::get or at_slot")
    }

    pub(crate) fn rule(&mut self) -> &mut T {
        &mut self.live().rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ids_name_nothing_and_slots_are_reused() {
        let rules = Rules::new("rule");
        let a = rules.add("a").unwrap();
        let b = rules.add("b").unwrap();
        assert_eq!((a, b), (0, 1));
        assert!(rules.remove(a).unwrap());
        assert_eq!(rules.len(), 1);
        assert!(matches!(
            rules.get(a),
            Err(CoreError::UnknownRule { what: "rule", .. })
        ));
        let c = rules.add("c").unwrap();
        assert_eq!(c, 1 << 32, "slot 0 again, in its next generation");
        assert_eq!(*rules.get(c).unwrap().rule(), "c");
        assert!(
            rules.get(a).is_err(),
            "the old id does not name the new rule"
        );
        assert_eq!((rules.len(), rules.slots()), (2, 2));
        assert!(rules.remove(a).is_err());
    }

    #[test]
    fn a_held_rule_is_not_freed() {
        let rules = Rules::new("rule");
        let a = rules.add(()).unwrap();
        rules.get(a).unwrap().live().hold(5.0);
        assert!(!rules.remove(a).unwrap());
        assert_eq!(rules.len(), 1);
        {
            let mut guard = rules.get(a).unwrap();
            guard.live().unhold(7.0);
            assert_eq!(guard.live().last_used_s, Some(7.0));
        }
        assert!(rules.remove(a).unwrap());
        assert!(rules.at_slot(0).is_none());
    }
}
