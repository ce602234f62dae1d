//! A request's stop signal: set by whoever gave up on the work (a cancelled RPC, a stopping
//! server) or due at the caller's deadline, and read by the counting loops every few thousand
//! bytes, so work nobody waits for ends within microseconds instead of running to completion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{CoreError, Result};

#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    deadline: Option<Instant>,
}

/// Never set: nothing can reach it to call `stop`.
static NEVER: Stop = Stop {
    stopped: AtomicBool::new(false),
    deadline: None,
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
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// # Errors
    /// `Stopped` once `stop` was called or the deadline has passed.
    pub fn check(&self) -> Result<()> {
        if self.is_stopped() {
            Err(CoreError::Stopped)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
