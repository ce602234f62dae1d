//! Whether the token gate lets every candidate of a decision through right now, for the Route
//! calls the router answers on its own.
//!
//! Which rule instances apply to a (tenant, stage, model) is Python's to decide (`TokenGate`
//! creates them on first use, and in shared mode registers them with the lease manager); each
//! answer it computes is taught here (`learn`). A decision is admitted here only when every
//! candidate's rules are known and none refuses: anything else (an unknown scope, a refusal that
//! may be a lease to top up, a refusal to report) goes the engine's way, which decides the same.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::Result;
use crate::gate::Gate;

#[derive(Debug, Clone, Default)]
struct Rules {
    limits: Vec<usize>,
    budgets: Vec<usize>,
}

/// tenant -> stage -> model -> rules.
type Known = HashMap<String, HashMap<String, HashMap<String, Rules>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Every candidate passes.
    All,
    /// Some candidate's rules are not known here yet.
    Unknown,
    /// Some candidate is refused now.
    Refused,
}

#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    known: RwLock<Known>,
}

impl Admission {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self {
            gate,
            known: RwLock::default(),
        }
    }

    /// The rate limits and budgets that apply to `model` for `tenant` and `stage`.
    pub fn learn(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        limits: Vec<usize>,
        budgets: Vec<usize>,
    ) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        known
            .entry(tenant.to_owned())
            .or_default()
            .entry(stage.to_owned())
            .or_default()
            .insert(model.to_owned(), Rules { limits, budgets });
    }

    /// Forgets what `learn` taught for `model` with `tenant` and `stage`: its rules are about to
    /// be freed, or the entry is dropped to keep what is known bounded.
    pub fn forget(&self, tenant: &str, stage: &str, model: &str) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        let Some(stages) = known.get_mut(tenant) else {
            return;
        };
        if let Some(models) = stages.get_mut(stage) {
            models.remove(model);
            if models.is_empty() {
                stages.remove(stage);
            }
        }
        if stages.is_empty() {
            known.remove(tenant);
        }
    }

    /// (tenant, stage, model) entries known.
    pub fn len(&self) -> usize {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known
            .values()
            .flat_map(HashMap::values)
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks, without reserving, each `(model, estimated cost)` at `tokens` tokens.
    ///
    /// # Errors
    /// `UnknownRule` when a learnt id is not the gate's (a `learn` against another gate).
    pub fn admits<'a>(
        &self,
        tenant: &str,
        stage: &str,
        candidates: impl IntoIterator<Item = (&'a str, f64)>,
        tokens: u64,
        now_s: f64,
    ) -> Result<Admitted> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let Some(models) = known.get(tenant).and_then(|stages| stages.get(stage)) else {
            return Ok(Admitted::Unknown);
        };
        for (model, cost_usd) in candidates {
            let Some(rules) = models.get(model) else {
                return Ok(Admitted::Unknown);
            };
            if rules.limits.is_empty() && rules.budgets.is_empty() {
                continue;
            }
            let denial = self
                .gate
                .check(&rules.limits, &rules.budgets, tokens, cost_usd, now_s)?;
            if denial.is_some() {
                return Ok(Admitted::Refused);
            }
        }
        Ok(Admitted::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Window;

    #[test]
    fn admits_only_what_it_knows_and_the_gate_passes() {
        let gate = Arc::new(Gate::new());
        let budget = gate.add_budget("b", 1.0, Window::Total).unwrap();
        let admission = Admission::new(gate);
        let now = 1_000.0;
        assert_eq!(
            admission.admits("t", "", [("m", 0.5)], 10, now).unwrap(),
            Admitted::Unknown
        );
        admission.learn("t", "", "m", vec![], vec![budget]);
        admission.learn("t", "", "free", vec![], vec![]);
        assert_eq!(
            admission
                .admits("t", "", [("m", 0.5), ("free", 9.0)], 10, now)
                .unwrap(),
            Admitted::All
        );
        assert_eq!(
            admission.admits("t", "", [("m", 2.0)], 10, now).unwrap(),
            Admitted::Refused
        );
        assert_eq!(
            admission
                .admits("t", "", [("other", 0.0)], 10, now)
                .unwrap(),
            Admitted::Unknown
        );
        assert_eq!(admission.len(), 2);
        admission.forget("t", "", "m");
        admission.forget("t", "", "free");
        admission.forget("nobody", "", "m");
        assert!(admission.is_empty());
        assert_eq!(
            admission.admits("t", "", [("m", 0.5)], 10, now).unwrap(),
            Admitted::Unknown
        );
    }
}
