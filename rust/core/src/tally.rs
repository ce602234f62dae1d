//! What the Route calls the router answers on its own leave for the metrics: a request count by
//! (model, tenant, stage) and a histogram of the time each took.
//!
//! Such a call never returns to Python code of ours, so its metrics are kept here and read when
//! /metrics is scraped, merged with the ones Python keeps (same names and labels). Recording is a
//! few hash lookups under an uncontended lock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::error::{CoreError, Result};

#[derive(Debug, Default)]
struct State {
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
        let tenants = entry(&mut held.requests, model);
        *entry(entry(tenants, tenant), stage) += 1;
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
    fn bounds_must_ascend() {
        assert!(RouteTally::new(vec![0.1, 0.1]).is_err());
        assert!(RouteTally::new(vec![f64::NAN]).is_err());
    }
}
