//! The routing table: the registry's models, validated once per config load, with the state that
//! changes between loads (the latency slot) kept beside each row.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{CoreError, Result};
use crate::latency::LatencyTracker;

/// Upper bound on prices (USD per million tokens) and latency priors (ms). Far beyond any real
/// value, and low enough that multiplying by any `u64` token count stays finite, so costs,
/// latencies and their min-max spread can never become infinite (and normalisation never NaN).
pub const MAX_PRICE_OR_PRIOR: f64 = 1e12;

const TOKENS_PER_MTOK: f64 = 1_000_000.0;

/// Distinct capabilities a table tells apart: a model's capabilities are a `u64` bitmask.
pub const MAX_CAPABILITIES: usize = 64;

/// The capability bits of a config's models: every name any model lists, sorted, bit `i` for the
/// `i`-th; and each model's mask, in `per_model` order.
///
/// # Errors
/// `InvalidArgument` on "models" beyond `MAX_CAPABILITIES` distinct names.
pub fn capability_bits<S: AsRef<str>>(per_model: &[Vec<S>]) -> Result<(Vec<String>, Vec<u64>)> {
    let mut names: Vec<&str> = per_model.iter().flatten().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() > MAX_CAPABILITIES {
        return Err(CoreError::invalid(
            "models",
            format!("at most {MAX_CAPABILITIES} distinct capabilities"),
        ));
    }
    let bit = |name: &str| names.binary_search(&name).map_or(0, |i| 1u64 << i);
    let masks = per_model
        .iter()
        .map(|listed| {
            listed
                .iter()
                .fold(0, |mask, name| mask | bit(name.as_ref()))
        })
        .collect();
    Ok((names.into_iter().map(str::to_owned).collect(), masks))
}

/// A call's latency from its time to first token and time per output token.
pub(crate) fn expected_latency_ms(ttft_ms: f64, tpot_ms: f64, output_tokens: u64) -> f64 {
    ttft_ms + output_tokens as f64 * tpot_ms
}

/// One model row as loaded from config.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// Maximum input + output tokens.
    pub context_window: u64,
    /// Configured quality in [0, 1].
    pub quality: f64,
    /// Time to first token used until enough live samples exist.
    pub ttft_prior_ms: f64,
    /// Time per output token used until enough live samples exist.
    pub tpot_prior_ms: f64,
    /// Bit `i` set means the model supports capability `i` (tools, vision, json mode, ...).
    pub capabilities: u64,
}

impl ModelSpec {
    /// What a call of `input_tokens` in and `output_tokens` out costs at this model's prices: the
    /// one formula for scoring, gate estimates and billing.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / TOKENS_PER_MTOK
    }

    /// The configured latency of a call producing `output_tokens`, before live samples exist.
    pub fn prior_latency_ms(&self, output_tokens: u64) -> f64 {
        expected_latency_ms(self.ttft_prior_ms, self.tpot_prior_ms, output_tokens)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// `InvalidModelSpec` naming the model and its first bad field.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &'static str, reason: String| CoreError::InvalidModelSpec {
            model: self.name.clone(),
            field,
            reason,
        };
        if self.name.is_empty() {
            return Err(fail("name", "must not be empty".into()));
        }
        for (field, value) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
            ("ttft_prior_ms", self.ttft_prior_ms),
            ("tpot_prior_ms", self.tpot_prior_ms),
        ] {
            if !(value.is_finite() && (0.0..=MAX_PRICE_OR_PRIOR).contains(&value)) {
                return Err(fail(
                    field,
                    format!("must be finite, >= 0 and <= {MAX_PRICE_OR_PRIOR:e}, got {value}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.quality) {
            return Err(fail(
                "quality",
                format!("must be in [0, 1], got {}", self.quality),
            ));
        }
        if self.context_window == 0 {
            return Err(fail("context_window", "must be > 0".into()));
        }
        Ok(())
    }
}

/// A validated model plus its per-table state.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) spec: ModelSpec,
    pub(crate) slot: usize,
}

/// The routing table: built once per config load, scored per request (see `scoring.rs`).
#[derive(Debug)]
pub struct ModelTable {
    pub(crate) rows: Box<[Row]>,
    pub(crate) tracker: Arc<LatencyTracker>,
    /// Weighted sample count a histogram needs before its live median replaces the prior.
    pub(crate) min_samples: f64,
}

impl ModelTable {
    /// Validates every model and resolves its latency slot (by name, so history survives reloads).
    /// Names must be unique: two rows sharing a name would share one latency history and make the
    /// ranking ambiguous.
    ///
    /// # Errors
    /// `InvalidModelSpec` for the first invalid or duplicate model.
    pub fn new(
        models: Vec<ModelSpec>,
        tracker: Arc<LatencyTracker>,
        min_samples: u32,
    ) -> Result<Self> {
        let mut seen = HashSet::with_capacity(models.len());
        for spec in &models {
            spec.validate()?;
            if !seen.insert(spec.name.as_str()) {
                return Err(CoreError::InvalidModelSpec {
                    model: spec.name.clone(),
                    field: "name",
                    reason: "is listed twice; model names must be unique".into(),
                });
            }
        }
        let rows = models
            .into_iter()
            .map(|spec| {
                let slot = tracker.slot(&spec.name)?;
                Ok(Row { spec, slot })
            })
            .collect::<Result<Box<[Row]>>>()?;
        Ok(Self {
            rows,
            tracker,
            min_samples: f64::from(min_samples),
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn tracker(&self) -> &Arc<LatencyTracker> {
        &self.tracker
    }

    fn row(&self, index: usize) -> Result<&Row> {
        self.rows.get(index).ok_or(CoreError::IndexOutOfRange {
            what: "index",
            index: index as i128,
            len: self.rows.len(),
        })
    }

    /// # Errors
    /// `IndexOutOfRange` unless `index < len()`.
    pub fn spec(&self, index: usize) -> Result<&ModelSpec> {
        Ok(&self.row(index)?.spec)
    }

    /// The latency-tracker slot of model `index`.
    ///
    /// # Errors
    /// `IndexOutOfRange` unless `index < len()`.
    pub fn slot(&self, index: usize) -> Result<usize> {
        Ok(self.row(index)?.slot)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            context_window: 8_192,
            quality: 0.5,
            ttft_prior_ms: 300.0,
            tpot_prior_ms: 20.0,
            capabilities: 0,
        }
    }

    fn tracker() -> Arc<LatencyTracker> {
        Arc::new(LatencyTracker::new(60.0).unwrap())
    }

    #[test]
    fn validate_names_field_and_model() {
        type Breaker = fn(&mut ModelSpec);
        let cases: [(Breaker, &str); 8] = [
            (|s| s.name.clear(), "name"),
            (|s| s.input_per_mtok = -1.0, "input_per_mtok"),
            (|s| s.output_per_mtok = f64::NAN, "output_per_mtok"),
            (|s| s.ttft_prior_ms = f64::INFINITY, "ttft_prior_ms"),
            (|s| s.tpot_prior_ms = 1e13, "tpot_prior_ms"),
            (|s| s.quality = 1.5, "quality"),
            (|s| s.quality = f64::NAN, "quality"),
            (|s| s.context_window = 0, "context_window"),
        ];
        for (break_it, field) in cases {
            let mut bad = spec("m");
            break_it(&mut bad);
            match bad.validate() {
                Err(CoreError::InvalidModelSpec { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidModelSpec, got {other:?}"),
            }
        }
        assert!(spec("m").validate().is_ok());
    }

    #[test]
    fn table_rejects_invalid_and_duplicate_models() {
        let mut bad = spec("b");
        bad.quality = -0.1;
        let err = ModelTable::new(vec![spec("a"), bad], tracker(), 20).unwrap_err();
        assert!(err.to_string().starts_with("model \"b\": quality"), "{err}");
        let err = ModelTable::new(vec![spec("a"), spec("a")], tracker(), 20).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn slots_survive_rebuilds() {
        let tracker = tracker();
        let first = ModelTable::new(vec![spec("a"), spec("b")], tracker.clone(), 20).unwrap();
        let second = ModelTable::new(vec![spec("c"), spec("b")], tracker.clone(), 20).unwrap();
        assert_eq!(first.slot(1).unwrap(), second.slot(1).unwrap());
        assert_eq!(second.slot(0).unwrap(), 2);
        assert_eq!(tracker.len(), 3);
        assert!(second.tracker().len() == 3);
    }

    #[test]
    fn capability_bits_sort_every_name_and_cap_at_64() {
        let (names, masks) =
            capability_bits(&[vec!["vision", "chat"], vec![], vec!["code", "chat"]]).unwrap();
        assert_eq!(names, ["chat", "code", "vision"]);
        assert_eq!(masks, [0b101, 0, 0b011]);
        let many: Vec<Vec<String>> = (0..65).map(|i| vec![format!("c{i}")]).collect();
        assert_eq!(
            capability_bits(&many).unwrap_err().to_string(),
            "models: at most 64 distinct capabilities"
        );
        assert_eq!(capability_bits(&many[..64]).unwrap().0.len(), 64);
    }

    #[test]
    fn accessors_report_out_of_range() {
        let table = ModelTable::new(vec![spec("a")], tracker(), 20).unwrap();
        assert_eq!(table.len(), 1);
        assert!(!table.is_empty());
        assert_eq!(table.spec(0).unwrap().name, "a");
        assert!(table.spec(1).is_err());
        assert!(table.slot(1).is_err());
        let empty = ModelTable::new(Vec::new(), tracker(), 20).unwrap();
        assert!(empty.is_empty());
    }
}
