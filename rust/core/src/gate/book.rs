//! Which rule instances a request selects: the config's rate limits and budgets matched against a
//! request's tenant, stage, model and provider, each instance made in the gate on first use.
//!
//! A rule's `match` names a value ("tenant: acme", the rule applies to that value only) or "*"
//! (each distinct value gets an instance of its own); a key it does not name is shared by every
//! value. Tenants are the caller's to name, so how many instances live at once is capped
//! (`max_scopes`, counted in the gate across config loads): past it, `NoRoom` asks the owner to
//! free idle instances first (its policy: what may be freed without losing spend).
//!
//! Every instance made is queued (`take_created`) for the owner, which registers it with its
//! table of instances and, in shared mode, with the lease manager. The owner frees instances, and
//! tells the book first (`forget`), so no answer names a freed id. Answers, the ids of one
//! (tenant, stage, model), are cached; they too are bounded, the oldest dropped first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::matching::{
    describe_scope, BudgetRule, Created, LimitRule, RuleIds, RuleKind, Scope, ScopeKey, Shift,
    Subject,
};
use super::Gate;
use crate::error::{CoreError, Denial, Result};
use crate::reservations::ReservationId;

/// (tenant, stage, model).
type AnswerKey = (Box<str>, Box<str>, Box<str>);

/// model -> answer.
type ByModel = HashMap<Box<str>, Arc<RuleIds>>;

/// Answers by tenant, stage and model, nested so that a lookup allocates no key.
#[derive(Debug, Default)]
struct Answers {
    by_tenant: HashMap<Box<str>, HashMap<Box<str>, ByModel>>,
    len: usize,
}

impl Answers {
    fn get(&self, tenant: &str, stage: &str, model: &str) -> Option<&Arc<RuleIds>> {
        self.by_tenant.get(tenant)?.get(stage)?.get(model)
    }

    fn contains(&self, key: &AnswerKey) -> bool {
        self.get(&key.0, &key.1, &key.2).is_some()
    }

    fn insert(&mut self, key: &AnswerKey, ids: Arc<RuleIds>) {
        let models = self
            .by_tenant
            .entry(key.0.clone())
            .or_default()
            .entry(key.1.clone())
            .or_default();
        if models.insert(key.2.clone(), ids).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &AnswerKey) -> Option<Arc<RuleIds>> {
        let stages = self.by_tenant.get_mut(&key.0)?;
        let models = stages.get_mut(&key.1)?;
        let removed = models.remove(&key.2)?;
        if models.is_empty() {
            stages.remove(&key.1);
        }
        if stages.is_empty() {
            self.by_tenant.remove(&key.0);
        }
        self.len -= 1;
        Some(removed)
    }
}

#[derive(Debug, Default)]
struct Instances {
    limits: HashMap<(usize, Scope), usize>,
    budgets: HashMap<(usize, Scope), usize>,
    /// (kind, id) -> (rule, scope) of every instance this book made or adopted.
    owned: HashMap<(RuleKind, usize), (usize, Scope)>,
    answers: Answers,
    /// Answer keys in the order they were made, the oldest dropped first; may name keys since
    /// forgotten (skipped).
    order: VecDeque<AnswerKey>,
    /// (kind, id) -> the answers naming it, forgotten with it.
    users: HashMap<(RuleKind, usize), HashSet<AnswerKey>>,
    /// Admin limits by "name" or "name[scope]", for instances made from now on too.
    overrides: HashMap<String, f64>,
    created: Vec<Created>,
    max_scopes: usize,
    max_answers: usize,
}

/// The rules of one config load over the gate every load shares.
#[derive(Debug)]
pub struct RuleBook {
    gate: Arc<Gate>,
    limits: Vec<LimitRule>,
    budgets: Vec<BudgetRule>,
    held: Mutex<Instances>,
    /// Whether `take_created` has anything: asked after every call, so kept outside the lock.
    created: AtomicBool,
}

fn instance_name(rule: &str, scope: &[(ScopeKey, String)]) -> String {
    if scope.is_empty() {
        rule.to_owned()
    } else {
        format!("{rule}[{}]", describe_scope(scope))
    }
}

fn override_key(rule: &str, scope: &[(ScopeKey, String)]) -> String {
    format!("{rule}[{}]", describe_scope(scope))
}

/// `share` as a whole percentage ("90%"), as the reasons show it.
fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

impl RuleBook {
    /// `max_scopes` caps the instances alive in the gate; `max_answers` the cached answers.
    pub fn new(
        gate: Arc<Gate>,
        limits: Vec<LimitRule>,
        budgets: Vec<BudgetRule>,
        max_scopes: usize,
        max_answers: usize,
    ) -> Self {
        Self {
            gate,
            limits,
            budgets,
            held: Mutex::new(Instances {
                max_scopes,
                max_answers,
                ..Instances::default()
            }),
            created: AtomicBool::new(false),
        }
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Whether any rule applies to anything: without, no request is ever refused.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.budgets.is_empty()
    }

    pub fn limit_rules(&self) -> &[LimitRule] {
        &self.limits
    }

    pub fn budget_rules(&self) -> &[BudgetRule] {
        &self.budgets
    }

    /// Whether some budget shifts strategies under pressure.
    pub fn shifts_strategies(&self) -> bool {
        self.budgets.iter().any(|b| b.pressure.is_some())
    }

    fn lock(&self) -> MutexGuard<'_, Instances> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rule instances that apply to `model` (with `provider`) for `tenant` and `stage`,
    /// made now where missing.
    ///
    /// # Errors
    /// `NoRoom` when an instance is missing and `max_scopes` are alive (those made before it
    /// stay, queued); the gate's errors for a rule it refuses to make.
    pub fn ids_for(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
    ) -> Result<Arc<RuleIds>> {
        let mut held = self.lock();
        self.ids_locked(&mut held, tenant, stage, model, provider)
    }

    fn ids_locked(
        &self,
        held: &mut Instances,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
    ) -> Result<Arc<RuleIds>> {
        if let Some(found) = held.answers.get(tenant, stage, model) {
            return Ok(Arc::clone(found));
        }
        let key: AnswerKey = (tenant.into(), stage.into(), model.into());
        let subject = Subject {
            tenant,
            stage,
            model: Some((model, provider)),
        };
        let mut ids = RuleIds::default();
        for (index, rule) in self.limits.iter().enumerate() {
            if let Some(scope) = rule.matches.select(&subject) {
                ids.limits.push(self.limit_instance(held, index, scope)?);
            }
        }
        for (index, rule) in self.budgets.iter().enumerate() {
            if let Some(scope) = rule.matches.select(&subject) {
                ids.budgets.push(self.budget_instance(held, index, scope)?);
            }
        }
        let ids = Arc::new(ids);
        for &id in &ids.limits {
            users_of(held, RuleKind::Limit, id).insert(key.clone());
        }
        for &id in &ids.budgets {
            users_of(held, RuleKind::Budget, id).insert(key.clone());
        }
        held.answers.insert(&key, Arc::clone(&ids));
        held.order.push_back(key);
        while held.answers.len > held.max_answers {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            drop_answer(held, &oldest);
        }
        if held.order.len() > 2 * held.max_answers.max(1) {
            // Keys forgotten and made again pile up here; keep the live ones, oldest first.
            let answers = &held.answers;
            let mut seen = HashSet::new();
            let kept: VecDeque<AnswerKey> = held
                .order
                .iter()
                .rev()
                .filter(|k| answers.contains(k) && seen.insert((*k).clone()))
                .cloned()
                .collect();
            held.order = kept.into_iter().rev().collect();
        }
        Ok(ids)
    }

    fn make_room(&self, held: &Instances) -> Result<()> {
        let live = self.gate.limit_count() + self.gate.budget_count();
        if live >= held.max_scopes {
            return Err(CoreError::NoRoom {
                live,
                max: held.max_scopes,
            });
        }
        Ok(())
    }

    fn limit_instance(&self, held: &mut Instances, index: usize, scope: Scope) -> Result<usize> {
        if let Some(&id) = held.limits.get(&(index, scope.clone())) {
            return Ok(id);
        }
        self.make_room(held)?;
        let rule = &self.limits[index];
        let name = instance_name(&rule.name, &scope);
        let id = self
            .gate
            .add_rate_limit(&name, rule.rpm, rule.tpm, rule.concurrency)?;
        held.limits.insert((index, scope.clone()), id);
        self.made(held, RuleKind::Limit, id, index, name, scope);
        Ok(id)
    }

    fn budget_instance(&self, held: &mut Instances, index: usize, scope: Scope) -> Result<usize> {
        if let Some(&id) = held.budgets.get(&(index, scope.clone())) {
            return Ok(id);
        }
        self.make_room(held)?;
        let rule = &self.budgets[index];
        let limit = held
            .overrides
            .get(&override_key(&rule.name, &scope))
            .or_else(|| held.overrides.get(&rule.name))
            .copied()
            .unwrap_or(rule.limit_usd);
        let name = instance_name(&rule.name, &scope);
        let id = self.gate.add_budget(&name, limit, rule.window)?;
        held.budgets.insert((index, scope.clone()), id);
        self.made(held, RuleKind::Budget, id, index, name, scope);
        Ok(id)
    }

    /// Records instance `id` of rule `index` for `scope`, just made: who owns it, and that Python
    /// has an instance to register (`take_created`).
    fn made(
        &self,
        held: &mut Instances,
        kind: RuleKind,
        id: usize,
        index: usize,
        name: String,
        scope: Scope,
    ) {
        held.owned.insert((kind, id), (index, scope.clone()));
        self.created.store(true, Ordering::Release);
        held.created.push(Created {
            kind,
            id,
            rule: index,
            name,
            scope,
        });
    }

    /// The instances made since the last call, for the owner to register.
    pub fn take_created(&self) -> Vec<Created> {
        let mut held = self.lock();
        self.created.store(false, Ordering::Release);
        std::mem::take(&mut held.created)
    }

    /// Instances made and not yet taken.
    pub fn has_created(&self) -> bool {
        self.created.load(Ordering::Acquire)
    }

    /// Reserves a call of `tokens` and `cost_usd` for `model` (of `provider`) against every rule
    /// that applies for `tenant` and `stage` (`Gate::reserve`); `None` when no rule applies.
    ///
    /// # Errors
    /// `Denied` by the first refusing rule; those of `ids_for`.
    #[allow(clippy::too_many_arguments)] // the subject's four names, the call's two amounts, time
    pub fn reserve(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) -> Result<Option<ReservationId>> {
        self.with_ids(tenant, stage, model, provider, |ids| {
            self.gate
                .reserve(&ids.limits, &ids.budgets, tokens, cost_usd, now_s)
        })
    }

    /// `use_ids` with the rule instances that apply, made where missing; `None` when no rule
    /// applies. Run under the book's lock: an instance cannot be forgotten (and then freed)
    /// between finding its id and using it.
    fn with_ids<T>(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
        use_ids: impl FnOnce(&RuleIds) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut held = self.lock();
        let ids = self.ids_locked(&mut held, tenant, stage, model, provider)?;
        if ids.is_empty() {
            return Ok(None);
        }
        use_ids(&ids).map(Some)
    }

    /// Forgets instance `id` of `kind`, which its owner is about to free, and every answer that
    /// names it. Unknown ids change nothing.
    pub fn forget(&self, kind: RuleKind, id: usize) {
        let mut held = self.lock();
        if let Some(key) = held.owned.remove(&(kind, id)) {
            match kind {
                RuleKind::Limit => held.limits.remove(&key),
                RuleKind::Budget => held.budgets.remove(&key),
            };
        }
        for answer in held.users.remove(&(kind, id)).unwrap_or_default() {
            drop_answer(&mut held, &answer);
        }
    }

    /// (tenant, stage, model) answers cached.
    pub fn answers(&self) -> usize {
        self.lock().answers.len
    }

    /// The first budget of `tenant` and `stage` past its pressure share, as a strategy shift.
    ///
    /// # Errors
    /// As `ids_for`.
    pub fn shift(&self, tenant: &str, stage: &str, now_s: f64) -> Result<Option<Shift>> {
        if !self.shifts_strategies() {
            return Ok(None);
        }
        let subject = Subject {
            tenant,
            stage,
            model: None,
        };
        let mut held = self.lock();
        for (index, rule) in self.budgets.iter().enumerate() {
            let Some(pressure) = &rule.pressure else {
                continue;
            };
            let Some(scope) = rule.matches.select(&subject) else {
                continue;
            };
            let id = self.budget_instance(&mut held, index, scope)?;
            let share = self.gate.budget_state(id, now_s)?.share_used();
            if share >= pressure.at_share {
                return Ok(Some(Shift {
                    applies_to: pressure.applies_to.clone(),
                    strategy: pressure.strategy.clone(),
                    reason: format!(
                        "budget '{}' is {} used (>= {}): {} becomes {}",
                        rule.name,
                        percent(share),
                        percent(pressure.at_share),
                        pressure.applies_to.join(", "),
                        pressure.strategy
                    ),
                }));
            }
        }
        Ok(None)
    }

    /// Why `model` cannot take a call of `tokens` and `cost_usd` now, judged against the rules'
    /// own limits (`Gate::check_limits`); nothing is reserved.
    ///
    /// # Errors
    /// As `ids_for`.
    #[allow(clippy::too_many_arguments)] // the subject's four names, the call's two amounts, time
    pub fn refusal(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) -> Result<Option<Denial>> {
        let refused = self.with_ids(tenant, stage, model, provider, |ids| {
            self.gate
                .check_limits(&ids.limits, &ids.budgets, tokens, cost_usd, now_s)
        })?;
        Ok(refused.flatten())
    }
}

fn users_of(held: &mut Instances, kind: RuleKind, id: usize) -> &mut HashSet<AnswerKey> {
    held.users.entry((kind, id)).or_default()
}

fn drop_answer(held: &mut Instances, key: &AnswerKey) {
    let Some(ids) = held.answers.remove(key) else {
        return;
    };
    for (kind, list) in [
        (RuleKind::Limit, &ids.limits),
        (RuleKind::Budget, &ids.budgets),
    ] {
        for &id in list {
            if let Some(users) = held.users.get_mut(&(kind, id)) {
                users.remove(key);
                if users.is_empty() {
                    held.users.remove(&(kind, id));
                }
            }
        }
    }
}

mod admin;

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
