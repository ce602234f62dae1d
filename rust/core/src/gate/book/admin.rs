//! What changes a rule book from outside a request: an operator's budget limits (`Admin`'s
//! `SetBudget`) and a config reload adopting the previous load's live instances.

use std::sync::Arc;

use super::{override_key, RuleBook};
use crate::error::{CoreError, Result};
use crate::gate::matching::{RuleKind, Scope, ScopeKey};

impl RuleBook {
    /// Budget `rule` (by name) gets `limit_usd` for `scope` (every instance when empty), from now
    /// on and for instances made later; returns the live instances changed.
    ///
    /// # Errors
    /// The gate's, for a limit that is not finite and >= 0.
    pub fn set_budget_limit(
        &self,
        rule: &str,
        limit_usd: f64,
        scope: &[(ScopeKey, String)],
    ) -> Result<usize> {
        let mut wanted = scope.to_vec();
        wanted.sort();
        let mut held = self.lock();
        let key = if wanted.is_empty() {
            rule.to_owned()
        } else {
            override_key(rule, &wanted)
        };
        let mut changed = 0;
        for ((index, instance_scope), &id) in &held.budgets {
            if self.budgets[*index].name == rule && (wanted.is_empty() || *instance_scope == wanted)
            {
                self.gate.set_budget_limit(id, limit_usd)?;
                changed += 1;
            }
        }
        held.overrides.insert(key, limit_usd);
        Ok(changed)
    }

    /// Every budget instance: (rule index, scope, gate id).
    pub fn budget_instances(&self) -> Vec<(usize, Scope, usize)> {
        let held = self.lock();
        held.budgets
            .iter()
            .map(|((index, scope), &id)| (*index, scope.clone(), id))
            .collect()
    }

    /// Takes over `previous`'s instances whose rule this config keeps unchanged, after a reload
    /// over the same gate, so spend, reservations in flight and rate held survive it. Returns
    /// the (kind, id) adopted.
    ///
    /// A rate limit is kept when one of the same name, rpm, tpm and concurrency still selects
    /// its scope; a budget when one of the same name and window does. Admin overrides of kept
    /// budgets stay, except for the names in `reset` (budgets whose shared limit the reload
    /// changed, which Redis now holds). A kept budget takes this config's limit, unless an
    /// override sets it or it is in `follows_shared` (its limit is the one Redis holds).
    ///
    /// # Errors
    /// `InvalidArgument` when the books are over different gates.
    pub fn adopt(
        &self,
        previous: &Self,
        reset: &[String],
        follows_shared: bool,
    ) -> Result<Vec<(RuleKind, usize)>> {
        if !Arc::ptr_eq(&self.gate, &previous.gate) {
            return Err(CoreError::invalid(
                "previous",
                "both rule books must share one gate",
            ));
        }
        let old = previous.lock();
        let mut held = self.lock();
        let kept_name = |name: &str| {
            self.budgets.iter().any(|b| b.name == name) && !reset.iter().any(|r| r == name)
        };
        held.overrides = old
            .overrides
            .iter()
            .filter(|(key, _)| kept_name(key.split('[').next().unwrap_or(key)))
            .map(|(key, &limit)| (key.clone(), limit))
            .collect();
        let mut adopted = Vec::new();
        for ((old_index, scope), &id) in &old.limits {
            let was = &previous.limits[*old_index];
            let Some(index) = self.limits.iter().position(|rule| {
                rule.name == was.name
                    && (rule.rpm, rule.tpm, rule.concurrency) == (was.rpm, was.tpm, was.concurrency)
            }) else {
                continue;
            };
            if self.limits[index].matches.still_selects(scope) {
                held.limits.insert((index, scope.clone()), id);
                held.owned
                    .insert((RuleKind::Limit, id), (index, scope.clone()));
                adopted.push((RuleKind::Limit, id));
            }
        }
        for ((old_index, scope), &id) in &old.budgets {
            let was = &previous.budgets[*old_index];
            let Some(index) = self
                .budgets
                .iter()
                .position(|rule| rule.name == was.name && rule.window == was.window)
            else {
                continue;
            };
            let rule = &self.budgets[index];
            if !rule.matches.still_selects(scope) {
                continue;
            }
            held.budgets.insert((index, scope.clone()), id);
            held.owned
                .insert((RuleKind::Budget, id), (index, scope.clone()));
            adopted.push((RuleKind::Budget, id));
            if follows_shared && !reset.contains(&rule.name) {
                continue;
            }
            let limit = held
                .overrides
                .get(&override_key(&rule.name, scope))
                .or_else(|| held.overrides.get(&rule.name))
                .copied()
                .unwrap_or(rule.limit_usd);
            self.gate.set_budget_limit(id, limit)?;
        }
        Ok(adopted)
    }
}
