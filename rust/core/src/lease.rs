//! The lease cap of a rate limit, for several replicas sharing one limit.
//!
//! With shared state, the replicas' RPM and TPM limits draw on one pool per fixed UTC minute in
//! Redis (the minute starting at `floor(now / 60) * 60`). The lease manager (Python) leases slices
//! of the pool and sets here how much this replica may use in the current minute; the limiter then
//! refuses a call that would take the minute's usage past that allowance. The cap comes on top of
//! the limiter's token buckets, which keep smoothing this replica's own traffic as before.
//!
//! Usage of a minute is the calls finished in it plus the calls in flight. A reserve counts at
//! once (one request, its estimated tokens); settle replaces the estimate by the actual tokens and
//! release by none, though the request stays counted (the provider may have seen it, the same rule
//! as the RPM bucket's). Both charge the minute in which the call finishes. Calls in flight at a
//! minute boundary are carried into the new minute, as a budget's reservations are: they hold
//! capacity where they will be charged. They were counted in the old minute too, which can only
//! refuse more, never admit more.
//!
//! The bound: a reserve passes only if the minute's usage plus the call fits the allowance. So
//! requests admitted in a minute never pass this replica's allowance, and as Redis never grants
//! more than the pool, the replicas together never admit more requests in a minute than the limit.
//! Tokens can pass it only through calls that use more than they estimated (as with budgets) and
//! through oversized calls (more tokens than the whole per-minute limit), which, like the bucket,
//! the cap admits when the minute's allowance has room for the whole limit.
//!
//! Rollover: at a minute boundary a lease becomes 0 until the lease manager sets one for the new
//! minute, for the budgets' reason: keeping it would let a replica spend an old lease again in
//! every minute. No lease (`None`) means no cap: a single replica, or fail-open while Redis is
//! unreachable.
//!
//! Reporting: `take_unreported` hands over what finished calls consumed since the previous take
//! (a request each, their actual tokens), for the lease manager to report to the pool.

use crate::error::{CoreError, DenialKind, Result, UNKNOWN_RETRY_AFTER_S};
use crate::window::{minute_at, Span};

/// One UTC minute of a rate limit, as the lease manager and stats see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteUsage {
    pub start_s: f64,
    pub end_s: f64,
    /// Calls that finished (settled or released) in this minute, and their actual tokens.
    pub requests_done: u64,
    pub tokens_done: u64,
    /// Calls in flight and their estimated tokens, counted in whichever minute is current.
    pub requests_reserved: u64,
    pub tokens_reserved: u64,
    /// The minute's allowances; `None` where uncapped.
    pub requests_leased: Option<f64>,
    pub tokens_leased: Option<f64>,
}

/// The part of the cap that a rollover changes; `Copy`, so that read-only calls can roll a copy.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Minute {
    span: Span,
    requests_done: u64,
    tokens_done: u64,
    requests_leased: Option<f64>,
    tokens_leased: Option<f64>,
}

impl Minute {
    /// This minute as of `now_s`. Minutes only move forward: a `now` from before the current one
    /// (a caller whose clock read raced another's) is treated as inside it.
    fn at(self, now_s: f64) -> Self {
        if now_s < self.span.end_s {
            return self;
        }
        Self {
            span: minute_at(now_s),
            requests_done: 0,
            tokens_done: 0,
            requests_leased: self.requests_leased.map(|_| 0.0),
            tokens_leased: self.tokens_leased.map(|_| 0.0),
        }
    }
}

/// One rate limit's lease cap. Counts are integers, so usage compares exactly with allowances
/// (which the lease manager sets to whole requests and tokens); sums saturate rather than wrap.
#[derive(Debug)]
pub(crate) struct LeaseCap {
    minute: Minute,
    requests_reserved: u64,
    tokens_reserved: u64,
    unreported_requests: u64,
    unreported_tokens: u64,
}

impl LeaseCap {
    pub(crate) fn new() -> Self {
        Self {
            minute: Minute {
                span: minute_at(0.0),
                requests_done: 0,
                tokens_done: 0,
                requests_leased: None,
                tokens_leased: None,
            },
            requests_reserved: 0,
            tokens_reserved: 0,
            unreported_requests: 0,
            unreported_tokens: 0,
        }
    }

    /// Why the cap would refuse a call of `tokens` at `now_s`, as (kind, retry after), requests
    /// first. `rpm` and `tpm` are the rule's per-minute limits: when this replica's own usage
    /// already fills one, no lease can help before the next minute; otherwise more lease can.
    pub(crate) fn check(
        &self,
        tokens: u64,
        rpm: Option<f64>,
        tpm: Option<f64>,
        now_s: f64,
    ) -> Option<(DenialKind, f64)> {
        let minute = self.minute.at(now_s);
        let until_next_minute = minute.span.end_s - now_s;
        if let (Some(allowed), Some(limit)) = (minute.requests_leased, rpm) {
            let used = minute.requests_done.saturating_add(self.requests_reserved) as f64;
            if used + 1.0 > allowed {
                // Requests in flight stay counted even if released, so they count as final here.
                let wait = if used + 1.0 > limit {
                    until_next_minute
                } else {
                    UNKNOWN_RETRY_AFTER_S
                };
                return Some((DenialKind::RpmLease, wait));
            }
        }
        if let (Some(allowed), Some(limit)) = (minute.tokens_leased, tpm) {
            // As for the bucket, a call larger than the whole limit needs only the whole limit.
            let needed = (tokens as f64).min(limit);
            let used = minute.tokens_done.saturating_add(self.tokens_reserved) as f64;
            if used + needed > allowed {
                // Estimates in flight may come back; settled tokens will not.
                let wait = if minute.tokens_done as f64 + needed > limit {
                    until_next_minute
                } else {
                    UNKNOWN_RETRY_AFTER_S
                };
                return Some((DenialKind::TpmLease, wait));
            }
        }
        None
    }

    /// Whether this replica's own usage of the minute holding `now_s` leaves no room for a call of
    /// `tokens` under the rule's `rpm` or `tpm` itself, whatever lease may come: the kind (`Rpm`,
    /// `Tpm`) and the wait until the next minute. Only capped pools count, as in `check`.
    pub(crate) fn beyond_limits(
        &self,
        tokens: u64,
        rpm: Option<f64>,
        tpm: Option<f64>,
        now_s: f64,
    ) -> Option<(DenialKind, f64)> {
        let minute = self.minute.at(now_s);
        let until_next_minute = minute.span.end_s - now_s;
        if let (Some(_), Some(limit)) = (minute.requests_leased, rpm) {
            let used = minute.requests_done.saturating_add(self.requests_reserved) as f64;
            if used + 1.0 > limit {
                return Some((DenialKind::Rpm, until_next_minute));
            }
        }
        if let (Some(_), Some(limit)) = (minute.tokens_leased, tpm) {
            if minute.tokens_done as f64 + (tokens as f64).min(limit) > limit {
                return Some((DenialKind::Tpm, until_next_minute));
            }
        }
        None
    }

    /// Counts a reserved call in the current minute; the caller has checked that it fits.
    pub(crate) fn reserve(&mut self, tokens: u64, now_s: f64) {
        self.minute = self.minute.at(now_s);
        self.requests_reserved += 1;
        self.tokens_reserved = self.tokens_reserved.saturating_add(tokens);
    }

    /// Takes back a reservation made in the same gate call, when another rule refused.
    pub(crate) fn undo(&mut self, tokens: u64) {
        self.unreserve(tokens);
    }

    /// A reserved call finished having used `actual` tokens (0 for a release), charged to the
    /// minute holding `now_s` together with its request.
    pub(crate) fn finish(&mut self, estimated: u64, actual: u64, now_s: f64) {
        self.minute = self.minute.at(now_s);
        self.unreserve(estimated);
        self.minute.requests_done += 1;
        self.minute.tokens_done = self.minute.tokens_done.saturating_add(actual);
        self.unreported_requests += 1;
        self.unreported_tokens = self.unreported_tokens.saturating_add(actual);
    }

    fn unreserve(&mut self, tokens: u64) {
        debug_assert!(
            self.requests_reserved > 0,
            "more reservations removed than made"
        );
        self.requests_reserved = self.requests_reserved.saturating_sub(1);
        self.tokens_reserved = if self.requests_reserved == 0 {
            0
        } else {
            self.tokens_reserved.saturating_sub(tokens)
        };
    }

    /// The lease manager's allowances for the minute holding `now_s`; `None` uncaps. `rpm` and
    /// `tpm` say which limits the rule has: an allowance for a limit it lacks is a caller's bug.
    ///
    /// # Errors
    /// `InvalidArgument` naming `requests` or `tokens` for an allowance that is not finite and
    /// >= 0 or that the rule has no limit for.
    pub(crate) fn set_leased(
        &mut self,
        (requests, tokens): (Option<f64>, Option<f64>),
        (limits_requests, limits_tokens): (bool, bool),
        name: &str,
        now_s: f64,
    ) -> Result<()> {
        for (field, allowance, limited, unit) in [
            ("requests", requests, limits_requests, "rpm"),
            ("tokens", tokens, limits_tokens, "tpm"),
        ] {
            match allowance {
                Some(value) if !(value.is_finite() && value >= 0.0) => {
                    return Err(CoreError::invalid(
                        field,
                        format!("must be finite and >= 0, got {value}"),
                    ));
                }
                Some(_) if !limited => {
                    return Err(CoreError::invalid(
                        field,
                        format!("rate limit {name:?} has no {unit} to lease"),
                    ));
                }
                _ => {}
            }
        }
        // Roll first, so an allowance set for a new minute is not zeroed by that minute's rollover.
        self.minute = self.minute.at(now_s);
        self.minute.requests_leased = requests;
        self.minute.tokens_leased = tokens;
        Ok(())
    }

    /// Requests and tokens of the calls finished since the previous take.
    pub(crate) fn take_unreported(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.unreported_requests),
            std::mem::take(&mut self.unreported_tokens),
        )
    }

    pub(crate) fn state(&self, now_s: f64) -> MinuteUsage {
        let minute = self.minute.at(now_s);
        MinuteUsage {
            start_s: minute.span.start_s,
            end_s: minute.span.end_s,
            requests_done: minute.requests_done,
            tokens_done: minute.tokens_done,
            requests_reserved: self.requests_reserved,
            tokens_reserved: self.tokens_reserved,
            requests_leased: minute.requests_leased,
            tokens_leased: minute.tokens_leased,
        }
    }
}

#[cfg(test)]
// Minute boundaries and allowances are whole numbers, exact in f64.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    /// 2024-03-01T00:00:00Z, a minute boundary.
    const T: f64 = 1_709_251_200.0;
    const BOTH: (bool, bool) = (true, true);

    fn kind(cap: &LeaseCap, tokens: u64, now: f64) -> Option<DenialKind> {
        cap.check(tokens, Some(10.0), Some(1_000.0), now)
            .map(|(kind, _)| kind)
    }

    #[test]
    fn uncapped_until_leased_and_then_capped_at_the_allowance() {
        let mut cap = LeaseCap::new();
        for _ in 0..20 {
            assert_eq!(kind(&cap, 100, T), None);
            cap.reserve(100, T);
        }
        for _ in 0..20 {
            cap.finish(100, 100, T);
        }
        cap.set_leased((Some(22.0), Some(2_500.0)), BOTH, "r", T + 1.0)
            .unwrap();
        // 20 requests and 2000 tokens already used this minute.
        cap.reserve(100, T + 1.0);
        assert_eq!(kind(&cap, 400, T + 1.0), None);
        assert_eq!(kind(&cap, 401, T + 1.0), Some(DenialKind::TpmLease));
        cap.reserve(400, T + 1.0);
        assert_eq!(kind(&cap, 0, T + 1.0), Some(DenialKind::RpmLease));
        let state = cap.state(T + 1.0);
        assert_eq!((state.requests_done, state.requests_reserved), (20, 2));
        assert_eq!((state.tokens_done, state.tokens_reserved), (2_000, 500));
        assert_eq!((state.start_s, state.end_s), (T, T + 60.0));
    }

    #[test]
    fn settle_and_release_charge_the_minute_they_finish_in() {
        let mut cap = LeaseCap::new();
        cap.set_leased((Some(5.0), Some(1_000.0)), BOTH, "r", T)
            .unwrap();
        cap.reserve(300, T + 59.0);
        cap.reserve(200, T + 59.0);
        // Carried into the next minute, where the lease is 0 until set again.
        assert_eq!(cap.state(T + 60.0).requests_leased, Some(0.0));
        assert_eq!(kind(&cap, 0, T + 60.0), Some(DenialKind::RpmLease));
        cap.finish(300, 450, T + 61.0);
        cap.finish(200, 0, T + 62.0);
        let state = cap.state(T + 62.0);
        assert_eq!(
            (state.start_s, state.requests_done, state.tokens_done),
            (T + 60.0, 2, 450)
        );
        assert_eq!((state.requests_reserved, state.tokens_reserved), (0, 0));
        assert_eq!(cap.take_unreported(), (2, 450));
        assert_eq!(cap.take_unreported(), (0, 0));
        // A late `now` from the previous minute does not bring it back.
        cap.set_leased((Some(3.0), None), BOTH, "r", T + 10.0)
            .unwrap();
        assert_eq!(cap.state(T + 10.0).start_s, T + 60.0);
        assert_eq!(cap.state(T + 10.0).tokens_leased, None);
    }

    #[test]
    fn retry_after_says_when_only_the_next_minute_can_help() {
        let mut cap = LeaseCap::new();
        cap.set_leased((Some(3.0), Some(900.0)), BOTH, "r", T)
            .unwrap();
        for _ in 0..3 {
            cap.reserve(300, T + 20.0);
        }
        // The lease is used up but the limit is not: more lease may come at any moment.
        let (kind, wait) = cap.check(0, Some(10.0), Some(1_000.0), T + 20.0).unwrap();
        assert_eq!((kind, wait), (DenialKind::RpmLease, UNKNOWN_RETRY_AFTER_S));
        // This replica alone has used the whole limit: only the next minute helps.
        let (kind, wait) = cap.check(0, Some(3.0), Some(1_000.0), T + 20.0).unwrap();
        assert_eq!((kind, wait), (DenialKind::RpmLease, 40.0));
        cap.set_leased((None, Some(900.0)), BOTH, "r", T + 20.0)
            .unwrap();
        let (kind, wait) = cap.check(1, None, Some(1_000.0), T + 20.0).unwrap();
        assert_eq!((kind, wait), (DenialKind::TpmLease, UNKNOWN_RETRY_AFTER_S));
        for _ in 0..3 {
            cap.finish(300, 300, T + 30.0);
        }
        let (_, wait) = cap.check(101, None, Some(1_000.0), T + 30.0).unwrap();
        assert_eq!(wait, 30.0);
    }

    #[test]
    fn oversized_calls_need_a_whole_minute_of_allowance() {
        let mut cap = LeaseCap::new();
        cap.set_leased((None, Some(999.0)), BOTH, "r", T).unwrap();
        assert_eq!(kind(&cap, 5_000, T), Some(DenialKind::TpmLease));
        cap.set_leased((None, Some(1_000.0)), BOTH, "r", T).unwrap();
        assert_eq!(kind(&cap, 5_000, T), None);
        cap.reserve(5_000, T);
        assert_eq!(kind(&cap, 0, T), Some(DenialKind::TpmLease));
        cap.undo(5_000);
        assert_eq!(cap.state(T).tokens_reserved, 0);
        assert_eq!(cap.take_unreported(), (0, 0));
    }

    #[test]
    fn validates_allowances() {
        let mut cap = LeaseCap::new();
        let cases = [
            (
                (Some(f64::NAN), None),
                BOTH,
                "requests: must be finite and >= 0",
            ),
            ((None, Some(-1.0)), BOTH, "tokens: must be finite and >= 0"),
            (
                (None, Some(1.0)),
                (true, false),
                "tokens: rate limit \"r\" has no tpm",
            ),
            (
                (Some(1.0), None),
                (false, true),
                "requests: rate limit \"r\" has no rpm",
            ),
        ];
        for (allowances, limits, message) in cases {
            let err = cap.set_leased(allowances, limits, "r", T).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
        assert_eq!(cap.state(T).requests_leased, None);
        cap.set_leased((None, None), (false, false), "r", T)
            .unwrap();
    }
}
