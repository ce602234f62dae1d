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
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Gate;
use crate::error::{CoreError, Denial, Result};
use crate::reservations::ReservationId;
use crate::window::Window;

/// What a rule can match on; ordered as their names sort, the order of a scope's pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKey {
    Model,
    Provider,
    Stage,
    Tenant,
}

impl ScopeKey {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Stage => "stage",
            Self::Tenant => "tenant",
        }
    }

    /// # Errors
    /// `InvalidArgument` for a name that is not a scope key.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "model" => Ok(Self::Model),
            "provider" => Ok(Self::Provider),
            "stage" => Ok(Self::Stage),
            "tenant" => Ok(Self::Tenant),
            other => Err(CoreError::invalid(
                "match",
                format!("'{other}' is not one of model, provider, stage, tenant"),
            )),
        }
    }
}

/// The values of one key a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// "*": every value, each its own instance.
    Each,
    Only(String),
}

impl Wanted {
    pub fn parse(value: &str) -> Self {
        if value == "*" {
            Self::Each
        } else {
            Self::Only(value.to_owned())
        }
    }
}

/// The instance a rule selects: the values of its matched keys, in key order.
pub type Scope = Vec<(ScopeKey, String)>;

/// "tenant=acme,stage=x", as names and stats show a scope.
pub fn describe_scope(scope: &[(ScopeKey, String)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in scope.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}={value}", key.as_str());
    }
    out
}

/// A rule's `match`, its keys sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch(Vec<(ScopeKey, Wanted)>);

impl RuleMatch {
    pub fn new(mut pairs: Vec<(ScopeKey, Wanted)>) -> Self {
        pairs.sort_by_key(|(key, _)| *key);
        pairs.dedup_by_key(|(key, _)| *key);
        Self(pairs)
    }

    /// The instance this rule selects for `subject`, or `None` when the rule does not apply.
    pub fn select(&self, subject: &Subject<'_>) -> Option<Scope> {
        self.0
            .iter()
            .map(|(key, wanted)| {
                let actual = subject.value(*key)?;
                match wanted {
                    Wanted::Only(value) if value != actual => None,
                    _ => Some((*key, actual.to_owned())),
                }
            })
            .collect()
    }
}

/// What a request offers rules to match: the model only once one is being considered.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub stage: &'a str,
    /// (model, provider).
    pub model: Option<(&'a str, &'a str)>,
}

impl Subject<'_> {
    fn value(&self, key: ScopeKey) -> Option<&str> {
        match key {
            ScopeKey::Tenant => Some(self.tenant),
            ScopeKey::Stage => Some(self.stage),
            ScopeKey::Model => self.model.map(|(model, _)| model),
            ScopeKey::Provider => self.model.map(|(_, provider)| provider),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    pub name: String,
    pub matches: RuleMatch,
    pub rpm: Option<f64>,
    pub tpm: Option<f64>,
    pub concurrency: Option<u32>,
}

/// Past `at_share` of a budget, requests that would use one of `applies_to` use `strategy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pressure {
    pub at_share: f64,
    pub strategy: String,
    pub applies_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRule {
    pub name: String,
    pub matches: RuleMatch,
    pub window: Window,
    pub limit_usd: f64,
    pub pressure: Option<Pressure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Limit,
    Budget,
}

impl RuleKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Budget => "budget",
        }
    }
}

/// An instance the book made, for its owner to register.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub kind: RuleKind,
    pub id: usize,
    /// The rule's index among the config's rules of its kind.
    pub rule: usize,
    /// "name" or "name[tenant=acme]".
    pub name: String,
    pub scope: Scope,
}

/// The rule instances that apply to one (tenant, stage, model), in config order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleIds {
    pub limits: Vec<usize>,
    pub budgets: Vec<usize>,
}

impl RuleIds {
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.budgets.is_empty()
    }
}

/// Budget pressure as it applies to a request: the strategy to use instead, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub applies_to: Vec<String>,
    pub strategy: String,
    pub reason: String,
}

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
        held.owned
            .insert((RuleKind::Limit, id), (index, scope.clone()));
        self.created.store(true, Ordering::Release);
        held.created.push(Created {
            kind: RuleKind::Limit,
            id,
            rule: index,
            name,
            scope,
        });
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
        held.owned
            .insert((RuleKind::Budget, id), (index, scope.clone()));
        self.created.store(true, Ordering::Release);
        held.created.push(Created {
            kind: RuleKind::Budget,
            id,
            rule: index,
            name,
            scope,
        });
        Ok(id)
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
            if rescoped(&self.limits[index].matches, scope) {
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
            if !rescoped(&rule.matches, scope) {
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

/// Whether `matches` still selects exactly `scope` for the values the scope holds.
fn rescoped(matches: &RuleMatch, scope: &Scope) -> bool {
    let value = |key: ScopeKey| {
        scope
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    let selected: Option<Scope> = matches
        .0
        .iter()
        .map(|(key, wanted)| {
            let actual = value(*key)?;
            match wanted {
                Wanted::Only(v) if v != actual => None,
                _ => Some((*key, actual.to_owned())),
            }
        })
        .collect();
    selected.as_ref() == Some(scope)
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

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
