//! What the Route calls the router answers on its own leave for the metrics: a request count by
//! (model, tenant, stage) and a histogram of the time each took.
//!
//! Such a call never returns to Python code of ours, so its metrics are kept here and read when
//! /metrics is scraped, merged with the ones Python keeps (same names and labels). Recording is a
//! few hash lookups under an uncontended lock.
//!
//! Callers name any tenant they like, so once `set_labels` has named the known tenants and stages,
//! any other value is counted under one "other" label: the series stay as many as the config
//! names, however many distinct values arrive.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use crate::error::{CoreError, Result};

/// The label values counted as themselves; every other non-empty value becomes `other`.
#[derive(Debug, Default)]
struct Labels {
    tenants: HashSet<String>,
    stages: HashSet<String>,
    other: String,
}

impl Labels {
    fn pick<'a>(&'a self, known: &HashSet<String>, value: &'a str) -> &'a str {
        if value.is_empty() || known.contains(value) {
            value
        } else {
            &self.other
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// `None` until `set_labels`: every value is its own label.
    labels: Option<Labels>,
    /// model -> tenant -> stage -> calls.
    requests: HashMap<String, HashMap<String, HashMap<String, u64>>>,
    /// One count per bucket, the last for values above every bound.
    counts: Vec<u64>,
    sum_s: f64,
}

#[derive(Debug)]
pub struct RouteTally {
    /// Inclusive upper bounds, ascending (Prometheus `le`).
    bounds: Box<[f64]>,
    state: Mutex<State>,
}

/// (model, tenant, stage, calls).
pub type RequestCount = (String, String, String, u64);

impl RouteTally {
    /// # Errors
    /// `InvalidArgument` unless `bounds` are finite and strictly ascending.
    pub fn new(bounds: Vec<f64>) -> Result<Self> {
        let ascending = bounds.windows(2).all(|pair| pair[0] < pair[1]);
        if !(ascending && bounds.iter().all(|b| b.is_finite())) {
            return Err(CoreError::invalid(
                "bounds",
                "must be finite and strictly ascending",
            ));
        }
        let counts = vec![0; bounds.len() + 1];
        Ok(Self {
            bounds: bounds.into(),
            state: Mutex::new(State {
                counts,
                ..State::default()
            }),
        })
    }

    /// One call answered by `model` for `tenant` and `stage`, in `seconds`.
    pub fn record(&self, model: &str, tenant: &str, stage: &str, seconds: f64) {
        // A value equal to a bound belongs to that bound's bucket (`le` is inclusive).
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        let mut held = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        held.counts[bucket] += 1;
        held.sum_s += seconds;
        let State {
            labels, requests, ..
        } = &mut *held;
        let (tenant, stage) = match labels {
            Some(labels) => (
                labels.pick(&labels.tenants, tenant),
                labels.pick(&labels.stages, stage),
            ),
            None => (tenant, stage),
        };
        *entry(entry(entry(requests, model), tenant), stage) += 1;
    }

    /// From now on, a tenant or stage outside `tenants` / `stages` (and not empty) is counted as
    /// `other`. Counts already taken keep their labels.
    pub fn set_labels(&self, tenants: Vec<String>, stages: Vec<String>, other: String) {
        let mut held = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        held.labels = Some(Labels {
            tenants: tenants.into_iter().collect(),
            stages: stages.into_iter().collect(),
            other,
        });
    }

    pub fn requests(&self) -> Vec<RequestCount> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (model, tenants) in &state.requests {
            for (tenant, stages) in tenants {
                for (stage, &calls) in stages {
                    out.push((model.clone(), tenant.clone(), stage.clone(), calls));
                }
            }
        }
        out
    }

    /// Calls per bucket (not cumulative) and the sum of their seconds.
    pub fn overhead(&self) -> (Vec<u64>, f64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.counts.clone(), state.sum_s)
    }
}

/// The value under `key`, inserted as the default first; looked up by `&str` so the common case
/// (the key is there) allocates nothing.
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_labels_and_buckets_by_inclusive_bound() {
        let tally = RouteTally::new(vec![0.001, 0.01]).unwrap();
        tally.record("a", "acme", "", 0.001);
        tally.record("a", "acme", "", 0.005);
        tally.record("b", "", "review", 1.0);
        let mut requests = tally.requests();
        requests.sort();
        assert_eq!(
            requests,
            [
                ("a".into(), "acme".into(), String::new(), 2),
                ("b".into(), String::new(), "review".into(), 1)
            ]
        );
        let (counts, sum) = tally.overhead();
        assert_eq!(counts, [1, 1, 1]);
        assert!((sum - 1.006).abs() < 1e-12);
    }

    #[test]
    fn unknown_tenants_and_stages_share_one_label() {
        let tally = RouteTally::new(vec![1.0]).unwrap();
        tally.set_labels(vec!["acme".into()], vec!["review".into()], "other".into());
        for i in 0..100 {
            tally.record("a", &format!("t{i}"), "review", 0.5);
        }
        tally.record("a", "acme", "", 0.5);
        tally.record("a", "", "nope", 0.5);
        let mut requests = tally.requests();
        requests.sort();
        assert_eq!(
            requests,
            [
                ("a".into(), String::new(), "other".into(), 1),
                ("a".into(), "acme".into(), String::new(), 1),
                ("a".into(), "other".into(), "review".into(), 100),
            ]
        );
    }

    #[test]
    fn bounds_must_ascend() {
        assert!(RouteTally::new(vec![0.1, 0.1]).is_err());
        assert!(RouteTally::new(vec![f64::NAN]).is_err());
    }
}
