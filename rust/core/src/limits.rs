//! Rate limits: requests per minute and tokens per minute as token buckets, and a cap on
//! concurrent requests. One `RateLimiter` per rule (tenant, stage, model, deployment, ...).
//!
//! The gate keeps each limiter behind its own mutex and passes time in explicitly, so a limiter
//! is plain single-threaded state and every decision is a function of the calls made and the
//! times given (tests need no sleeping). A bucket may go below zero: a call that used more
//! tokens than it reserved is charged in full at settle, and the debt only delays the refill.
//!
//! With shared state a limiter also has a lease cap (`lease.rs`): this replica's allowance of the
//! replicas' common per-minute pool, checked after the buckets and concurrency.

use std::sync::Arc;

use crate::error::{CoreError, Denial, DenialKind, Result, UNKNOWN_RETRY_AFTER_S};
use crate::lease::{LeaseCap, MinuteUsage};

/// Refill arithmetic rounds, so waiting exactly the `retry_after_s` a denial gave could leave a
/// bucket a few ulps short; this much shortfall still passes.
const ROUNDING_SLACK: f64 = 1e-9;

/// A token bucket that holds at most `capacity` and refills it completely in one minute.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    capacity: f64,
    per_s: f64,
    level: f64,
    /// The time `level` was computed for. Only moves forward: callers on several threads pass
    /// times that may arrive slightly out of order, and an earlier time just refills nothing.
    at_s: f64,
}

impl Bucket {
    fn per_minute(capacity: f64) -> Self {
        Self {
            capacity,
            per_s: capacity / 60.0,
            level: capacity,
            at_s: 0.0,
        }
    }

    fn level_at(&self, now_s: f64) -> f64 {
        if now_s > self.at_s {
            (self.level + (now_s - self.at_s) * self.per_s).min(self.capacity)
        } else {
            self.level
        }
    }

    fn advance(&mut self, now_s: f64) {
        self.level = self.level_at(now_s);
        self.at_s = self.at_s.max(now_s);
    }

    /// Seconds until `amount` could be taken, or `None` if it can be now. An amount larger than
    /// the whole bucket needs only a full bucket (and then drives it negative); otherwise a call
    /// larger than the per-minute limit could never pass at all.
    fn wait_s(&self, amount: f64, now_s: f64) -> Option<f64> {
        let needed = amount.min(self.capacity);
        let level = self.level_at(now_s);
        (level + ROUNDING_SLACK < needed).then(|| (needed - level) / self.per_s)
    }

    /// Adds (or, negative, removes) `amount` at `now_s`; never above capacity.
    fn adjust(&mut self, amount: f64, now_s: f64) {
        self.advance(now_s);
        self.add(amount);
    }

    /// Adds `amount` at the bucket's own time, without refilling first.
    fn add(&mut self, amount: f64) {
        self.level = (self.level + amount).min(self.capacity);
    }
}

/// What a limiter reports for stats: tokens left in each bucket (`None` where the rule has no
/// such limit), calls in flight, and the current minute as the lease cap counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitState {
    pub requests_available: Option<f64>,
    pub tokens_available: Option<f64>,
    pub in_flight: u32,
    pub minute: MinuteUsage,
}

/// One rate-limit rule. A reserved call takes one request and its estimated tokens and occupies a
/// concurrency slot until it is settled or released.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    name: Arc<str>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    concurrency: Option<u32>,
    in_flight: u32,
    lease: LeaseCap,
}

impl RateLimiter {
    /// # Errors
    /// `InvalidArgument` for an empty name, a per-minute limit that is not finite and > 0, or a
    /// concurrency of 0.
    pub(crate) fn new(
        name: &str,
        rpm: Option<f64>,
        tpm: Option<f64>,
        concurrency: Option<u32>,
    ) -> Result<Self> {
        if name.is_empty() {
            return Err(CoreError::invalid("name", "must not be empty"));
        }
        for (field, value) in [("rpm", rpm), ("tpm", tpm)] {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(CoreError::invalid(
                    field,
                    format!("must be finite and > 0, got {value}"),
                ));
            }
        }
        if concurrency == Some(0) {
            return Err(CoreError::invalid("concurrency", "must be >= 1, got 0"));
        }
        Ok(Self {
            name: name.into(),
            requests: rpm.map(Bucket::per_minute),
            tokens: tpm.map(Bucket::per_minute),
            concurrency,
            in_flight: 0,
            lease: LeaseCap::new(),
        })
    }

    fn denial(&self, kind: DenialKind, retry_after_s: f64) -> Denial {
        Denial {
            kind,
            name: Arc::clone(&self.name),
            retry_after_s,
        }
    }

    /// Why a call of `tokens` would be refused at `now_s`, if it would; the first of RPM, TPM,
    /// concurrency and the lease cap that refuses. Changes nothing. The lease comes last, so that
    /// a lease denial means everything else about this rule would pass and more lease is all the
    /// call needs from it.
    pub(crate) fn check(&self, tokens: u64, now_s: f64) -> Option<Denial> {
        if let Some(wait) = self.requests.and_then(|b| b.wait_s(1.0, now_s)) {
            return Some(self.denial(DenialKind::Rpm, wait));
        }
        if let Some(wait) = self.tokens.and_then(|b| b.wait_s(tokens as f64, now_s)) {
            return Some(self.denial(DenialKind::Tpm, wait));
        }
        if self.concurrency.is_some_and(|cap| self.in_flight >= cap) {
            return Some(self.denial(DenialKind::Concurrency, UNKNOWN_RETRY_AFTER_S));
        }
        let (rpm, tpm) = self.capacities();
        self.lease
            .check(tokens, rpm, tpm, now_s)
            .map(|(kind, wait)| self.denial(kind, wait))
    }

    /// `check` as routing asks it: the lease cap gives way to the rule's own per-minute limits,
    /// since a reserve tops the lease up from the shared pool first (`LeaseCap::beyond_limits`).
    pub(crate) fn check_limits(&self, tokens: u64, now_s: f64) -> Option<Denial> {
        match self.check(tokens, now_s) {
            Some(denial) if matches!(denial.kind, DenialKind::RpmLease | DenialKind::TpmLease) => {
                let (rpm, tpm) = self.capacities();
                self.lease
                    .beyond_limits(tokens, rpm, tpm, now_s)
                    .map(|(kind, wait)| self.denial(kind, wait))
            }
            other => other,
        }
    }

    fn capacities(&self) -> (Option<f64>, Option<f64>) {
        (
            self.requests.map(|b| b.capacity),
            self.tokens.map(|b| b.capacity),
        )
    }

    /// Takes one request, `tokens` tokens and a concurrency slot, or nothing if any is short.
    pub(crate) fn reserve(&mut self, tokens: u64, now_s: f64) -> std::result::Result<(), Denial> {
        if let Some(denial) = self.check(tokens, now_s) {
            return Err(denial);
        }
        if let Some(bucket) = &mut self.requests {
            bucket.adjust(-1.0, now_s);
        }
        if let Some(bucket) = &mut self.tokens {
            bucket.adjust(-(tokens as f64), now_s);
        }
        self.in_flight += 1;
        self.lease.reserve(tokens, now_s);
        Ok(())
    }

    /// Gives back everything `reserve` took, when another rule of the same gate call refused: the
    /// call never happened, so unlike `release` the request is refunded too.
    pub(crate) fn undo(&mut self, tokens: u64) {
        // No refill: `reserve` already advanced both buckets to this call's time.
        if let Some(bucket) = &mut self.requests {
            bucket.add(1.0);
        }
        if let Some(bucket) = &mut self.tokens {
            bucket.add(tokens as f64);
        }
        self.lease.undo(tokens);
        self.finish();
    }

    /// A reserved call finished having used `actual` tokens: the difference from the estimate is
    /// refunded or charged, and its concurrency slot is freed.
    pub(crate) fn settle(&mut self, estimated: u64, actual: u64, now_s: f64) {
        if let Some(bucket) = &mut self.tokens {
            bucket.adjust(estimated as f64 - actual as f64, now_s);
        }
        self.lease.finish(estimated, actual, now_s);
        self.finish();
    }

    /// A reserved call was abandoned (failed before the provider billed it, cancelled): its
    /// estimated tokens come back and its concurrency slot is freed, but the request stays
    /// counted against RPM, because the provider may well have seen it and counted it too.
    pub(crate) fn release(&mut self, estimated: u64, now_s: f64) {
        if let Some(bucket) = &mut self.tokens {
            bucket.adjust(estimated as f64, now_s);
        }
        self.lease.finish(estimated, 0, now_s);
        self.finish();
    }

    fn finish(&mut self) {
        // The gate's reservation table hands each reservation back exactly once, so this
        // never goes below zero.
        debug_assert!(
            self.in_flight > 0,
            "{} finished more calls than began",
            self.name
        );
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn state(&self, now_s: f64) -> LimitState {
        LimitState {
            requests_available: self.requests.map(|b| b.level_at(now_s)),
            tokens_available: self.tokens.map(|b| b.level_at(now_s)),
            in_flight: self.in_flight,
            minute: self.lease.state(now_s),
        }
    }

    /// The lease manager's allowances for the minute holding `now_s` (`None` uncaps).
    ///
    /// # Errors
    /// `InvalidArgument` for an allowance that is not finite and >= 0, or for a limit (RPM or
    /// TPM) this rule does not have.
    pub(crate) fn set_leased(
        &mut self,
        requests: Option<f64>,
        tokens: Option<f64>,
        now_s: f64,
    ) -> Result<()> {
        let limited = (self.requests.is_some(), self.tokens.is_some());
        self.lease
            .set_leased((requests, tokens), limited, &self.name, now_s)
    }

    /// Requests and tokens of the calls finished since the previous take, for the shared pool.
    pub(crate) fn take_unreported(&mut self) -> (u64, u64) {
        self.lease.take_unreported()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: std::result::Result<(), Denial>) -> Option<DenialKind> {
        result.err().map(|denial| denial.kind)
    }

    #[test]
    fn validates_rules() {
        let cases = [
            ("", None, None, None, "name"),
            ("r", Some(0.0), None, None, "rpm"),
            ("r", None, Some(f64::NAN), None, "tpm"),
            ("r", None, Some(-5.0), None, "tpm"),
            ("r", None, None, Some(0), "concurrency"),
        ];
        for (name, rpm, tpm, concurrency, field) in cases {
            match RateLimiter::new(name, rpm, tpm, concurrency) {
                Err(CoreError::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidArgument, got {other:?}"),
            }
        }
        assert!(RateLimiter::new("open", None, None, None).is_ok());
    }

    #[test]
    fn rpm_refills_at_rpm_over_sixty_per_second() {
        let mut limiter = RateLimiter::new("r", Some(6.0), None, None).unwrap();
        for _ in 0..6 {
            limiter.reserve(0, 100.0).unwrap();
            limiter.settle(0, 0, 100.0);
        }
        let denial = limiter.reserve(0, 100.0).unwrap_err();
        assert_eq!(denial.kind, DenialKind::Rpm);
        assert_eq!(&*denial.name, "r");
        // One request per 10 s.
        assert!((denial.retry_after_s - 10.0).abs() < 1e-9, "{denial:?}");
        assert_eq!(kind(limiter.reserve(0, 109.0)), Some(DenialKind::Rpm));
        assert_eq!(kind(limiter.reserve(0, 100.0 + denial.retry_after_s)), None);
        let state = limiter.state(100.0 + denial.retry_after_s);
        assert!(state.requests_available.unwrap().abs() < 1e-9);
        assert_eq!((state.tokens_available, state.in_flight), (None, 1));
    }

    #[test]
    fn tpm_settles_the_difference_and_may_go_into_debt() {
        let mut limiter = RateLimiter::new("t", None, Some(600.0), None).unwrap();
        limiter.reserve(500, 0.0).unwrap();
        assert_eq!(limiter.state(0.0).tokens_available, Some(100.0));
        // Used 200 tokens more than estimated: the bucket goes to -100.
        limiter.settle(500, 700, 0.0);
        assert_eq!(limiter.state(0.0).tokens_available, Some(-100.0));
        let denial = limiter.check(10, 0.0).unwrap();
        assert_eq!(denial.kind, DenialKind::Tpm);
        // 110 tokens at 10 per second.
        assert!((denial.retry_after_s - 11.0).abs() < 1e-9, "{denial:?}");
        // A minute refills the whole capacity: from -100 to 500.
        assert_eq!(limiter.state(60.0).tokens_available, Some(500.0));
        // A refund never fills beyond capacity, even when the bucket refilled during the call.
        limiter.reserve(100, 60.0).unwrap();
        limiter.settle(100, 0, 120.0);
        assert_eq!(limiter.state(120.0).tokens_available, Some(600.0));
    }

    #[test]
    fn oversized_calls_pass_only_on_a_full_bucket() {
        let mut limiter = RateLimiter::new("t", None, Some(1_000.0), None).unwrap();
        limiter.reserve(2_500, 0.0).unwrap();
        assert_eq!(limiter.state(0.0).tokens_available, Some(-1_500.0));
        let denial = limiter.check(2_500, 0.0).unwrap();
        // Back to full takes 2500 tokens at 1000/60 per second.
        assert!((denial.retry_after_s - 150.0).abs() < 1e-9, "{denial:?}");
        assert!(limiter.check(2_500, 150.0).is_none());
    }

    #[test]
    fn concurrency_frees_on_settle_and_release() {
        let mut limiter = RateLimiter::new("c", None, None, Some(2)).unwrap();
        limiter.reserve(1, 0.0).unwrap();
        limiter.reserve(1, 0.0).unwrap();
        let denial = limiter.reserve(1, 0.0).unwrap_err();
        assert_eq!(denial.kind, DenialKind::Concurrency);
        assert!((denial.retry_after_s - UNKNOWN_RETRY_AFTER_S).abs() < f64::EPSILON);
        limiter.settle(1, 1, 0.0);
        limiter.release(1, 0.0);
        assert_eq!(limiter.state(0.0).in_flight, 0);
        assert!(limiter.check(1, 0.0).is_none());
    }

    #[test]
    fn release_keeps_the_request_but_refunds_tokens_and_undo_refunds_both() {
        let mut limiter = RateLimiter::new("b", Some(60.0), Some(6_000.0), Some(1)).unwrap();
        limiter.reserve(1_000, 0.0).unwrap();
        limiter.release(1_000, 0.0);
        let state = limiter.state(0.0);
        assert_eq!(state.requests_available, Some(59.0));
        assert_eq!(
            (state.tokens_available, state.in_flight),
            (Some(6_000.0), 0)
        );
        limiter.reserve(1_000, 0.0).unwrap();
        limiter.undo(1_000);
        let state = limiter.state(0.0);
        assert_eq!(state.requests_available, Some(59.0));
        assert_eq!(
            (state.tokens_available, state.in_flight),
            (Some(6_000.0), 0)
        );
    }

    #[test]
    fn earlier_times_refill_nothing() {
        let mut limiter = RateLimiter::new("r", Some(60.0), None, None).unwrap();
        limiter.reserve(0, 50.0).unwrap();
        // A caller whose clock read came before the last one sees the bucket as it is.
        limiter.reserve(0, 49.0).unwrap();
        assert_eq!(limiter.state(49.0).requests_available, Some(58.0));
        assert_eq!(limiter.state(51.0).requests_available, Some(59.0));
    }
}
