//! The second half of a decision: which of the ranked candidates may take the request now.
//!
//! The gate checks each candidate's rate limits and budgets against their own limits (in shared
//! mode a reserve tops a short lease up first, so a lease alone refuses nothing here); a refused
//! candidate leaves the ranking with its reason, and when none is left the request is refused with
//! the denial that clears soonest. Then the open breakers: a candidate whose breaker refuses calls
//! leaves too, unless every candidate's does, when the decision stands (the call skips them and
//! tries the fallback chain) with reasons saying why the chosen model may not be the one that
//! answers.

use super::{Decision, Router};
use crate::error::{Denial, DenialKind, Refusal, Result};

/// A model whose circuit breaker refuses calls now, and when it will try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenBreaker<'a> {
    pub model: &'a str,
    pub retry_in_s: f64,
}

impl Router {
    /// `decision` (made by `route` for `tenant` and `stage`) without the candidates the gate or
    /// an open breaker refuses now, with the reasons.
    ///
    /// # Errors
    /// `Refused(Quota)` with the soonest-clearing denial when the gate refuses every candidate;
    /// `NoRoom` when a candidate needs a rule instance and `max_scopes` are alive.
    pub fn admit(
        &self,
        mut decision: Decision,
        tenant: &str,
        stage: &str,
        open: &[OpenBreaker<'_>],
        now_s: f64,
    ) -> Result<Decision> {
        if let Some(book) = self.config.quota.as_ref().filter(|book| !book.is_empty()) {
            let tokens = decision.input_tokens.saturating_add(decision.output_tokens);
            let mut refusals: Vec<Denial> = Vec::new();
            let mut reasons = Vec::new();
            let mut kept = Vec::with_capacity(decision.candidates.len());
            for candidate in decision.candidates {
                let (name, provider) = (self.name(candidate.index), self.provider(candidate.index));
                let refused = book.refusal(
                    tenant,
                    stage,
                    name,
                    provider,
                    tokens,
                    candidate.estimated_cost_usd,
                    now_s,
                )?;
                match refused {
                    None => kept.push(candidate),
                    Some(denial) => {
                        let why =
                            quota_message(denial.kind.as_str(), &denial.name, denial.retry_after_s);
                        reasons.push(format!("{name} excluded: {why}"));
                        refusals.push(denial);
                    }
                }
            }
            if kept.is_empty() {
                let soonest = refusals
                    .into_iter()
                    .min_by(|a, b| a.retry_after_s.total_cmp(&b.retry_after_s));
                if let Some(denial) = soonest {
                    return Err(Refusal::quota(denial));
                }
            }
            decision.candidates = kept;
            decision.reasons.extend(reasons);
        }
        if !open.is_empty() {
            self.mask_open_breakers(&mut decision, open);
        }
        Ok(decision)
    }

    fn mask_open_breakers(&self, decision: &mut Decision, open: &[OpenBreaker<'_>]) {
        let mut reasons = Vec::new();
        let mut kept = Vec::with_capacity(decision.candidates.len());
        for candidate in &decision.candidates {
            let name = self.name(candidate.index);
            match open.iter().find(|breaker| breaker.model == name) {
                Some(breaker) => reasons.push(format!(
                    "{name} excluded: circuit breaker open (retry in {:.1}s)",
                    breaker.retry_in_s
                )),
                None => kept.push(*candidate),
            }
        }
        if reasons.is_empty() {
            return;
        }
        if !kept.is_empty() {
            decision.candidates = kept;
        }
        decision.reasons.extend(reasons);
    }
}

/// What a refusal by a rate limit or budget says, here and in `QuotaExceededError`: "budget 'b'
/// is exhausted; retry after 3.6e+03s", "rate limit (rpm) 'r' is exhausted; retry after 0.5s".
pub fn quota_message(kind: &str, name: &str, retry_after_s: f64) -> String {
    let what = if kind == DenialKind::Budget.as_str() {
        "budget".to_owned()
    } else {
        format!("rate limit ({kind})")
    };
    format!(
        "{what} '{name}' is exhausted; {}",
        retry_wait(retry_after_s)
    )
}

/// When a refused call may pass: "retry after 3.6e+03s", or "no retry" for never.
pub fn retry_wait(retry_after_s: f64) -> String {
    if retry_after_s.is_finite() {
        format!("retry after {}s", general3(retry_after_s))
    } else {
        "no retry".to_owned()
    }
}

/// `x` to three significant digits as C's `%.3g` writes it (and Python's `format(x, ".3g")`).
pub fn general3(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x == 0.0 {
            "0".to_owned()
        } else {
            x.to_string()
        };
    }
    let scientific = format!("{x:.2e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |digits: &str| {
        if digits.contains('.') {
            digits
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        } else {
            digits.to_owned()
        }
    };
    if (-4..3).contains(&exponent) {
        let decimals = usize::try_from(2 - exponent).unwrap_or(0);
        trim(&format!("{x:.decimals$}"))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    }
}
