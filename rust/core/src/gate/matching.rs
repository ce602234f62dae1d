//! The vocabulary of rule matching: what a rule's `match` names (`ScopeKey`, `Wanted`,
//! `RuleMatch`), what a request offers it (`Subject`), the rules of one config load (`LimitRule`,
//! `BudgetRule`, `Pressure`) and what the book answers with (`RuleIds`, `Created`, `Shift`).
//! The book that holds them is `gate/book.rs`.

use std::fmt::Write as _;

use crate::error::{CoreError, Result};
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
    /// Whether this match still selects exactly `scope` for the values the scope holds.
    pub(super) fn still_selects(&self, scope: &Scope) -> bool {
        let value = |key: ScopeKey| {
            scope
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        let selected: Option<Scope> = self
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
