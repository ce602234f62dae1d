//! A request's stop signal: set by whoever gave up on the work (a cancelled RPC, a stopping
//! server) or due at the caller's deadline, and read by the counting loops every few thousand
//! bytes, so work nobody waits for ends within microseconds instead of running to completion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{CoreError, Result};

#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    deadline: Option<Instant>,
    /// Bytes the work may count exactly where it runs (`on_loop`); `None`: any.
    counts_at_most: Option<usize>,
}

/// Never set: nothing can reach it to call `stop`.
static NEVER: Stop = Stop {
    stopped: AtomicBool::new(false),
    deadline: None,
    counts_at_most: None,
};

impl Stop {
    /// For work nobody stops: small requests, and callers without a deadline or a cancel.
    pub fn never() -> &'static Self {
        &NEVER
    }

    pub fn new(deadline: Option<Instant>) -> Self {
        Self {
            stopped: AtomicBool::new(false),
            deadline,
            counts_at_most: None,
        }
    }

    /// For work on the event loop, which every other call waits behind: it may count at most
    /// `bytes` exactly, for at most `budget` from now; past either it asks for a worker thread
    /// (`LongWork`) rather than count more. Made per request (its budget starts now).
    pub fn on_loop(bytes: usize, budget: Duration) -> Self {
        Self {
            stopped: AtomicBool::new(false),
            deadline: Instant::now().checked_add(budget),
            counts_at_most: Some(bytes),
        }
    }

    /// Whether the work runs where it must stay short (`on_loop`).
    pub const fn is_on_loop(&self) -> bool {
        self.counts_at_most.is_some()
    }

    /// # Errors
    /// `LongWork` when counting `bytes` exactly is more than this work may do where it runs.
    pub fn may_count(&self, bytes: usize) -> Result<()> {
        match self.counts_at_most {
            Some(most) if bytes > most => Err(CoreError::LongWork { bytes }),
            _ => Ok(()),
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// # Errors
    /// `Stopped` once `stop` was called or the deadline has passed; `LongWork` instead for work
    /// on the loop past its budget.
    pub fn check(&self) -> Result<()> {
        if !self.is_stopped() {
            Ok(())
        } else if let Some(bytes) = self.counts_at_most {
            Err(CoreError::LongWork { bytes })
        } else {
            Err(CoreError::Stopped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_when_told_or_at_the_deadline() {
        let stop = Stop::new(None);
        assert!(stop.check().is_ok());
        stop.stop();
        assert_eq!(stop.check(), Err(CoreError::Stopped));
        let past = Stop::new(Instant::now().checked_sub(Duration::from_millis(1)));
        assert!(past.is_stopped());
        assert!(!Stop::never().is_stopped());
    }

    #[test]
    fn work_on_the_loop_counts_only_so_much() {
        let on_loop = Stop::on_loop(100, Duration::from_secs(60));
        assert!(on_loop.may_count(100).is_ok() && on_loop.check().is_ok());
        assert_eq!(
            on_loop.may_count(101),
            Err(CoreError::LongWork { bytes: 101 })
        );
        assert!(Stop::never().may_count(usize::MAX).is_ok());
        assert!(on_loop.is_on_loop() && !Stop::never().is_on_loop());
        // Past its budget, work on the loop asks for a worker rather than stop.
        let spent = Stop::on_loop(100, Duration::ZERO);
        assert_eq!(spent.check(), Err(CoreError::LongWork { bytes: 100 }));
    }
}
