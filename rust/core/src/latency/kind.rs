//! The two words the tracker and its slots share: which histogram, and what a read reports.

use std::str::FromStr;

use crate::error::{CoreError, Result};

/// Which of a slot's three histograms to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    Total,
    Ttft,
    Tpot,
}

impl LatencyKind {
    pub(crate) const fn index(self) -> usize {
        match self {
            Self::Total => 0,
            Self::Ttft => 1,
            Self::Tpot => 2,
        }
    }
}

impl FromStr for LatencyKind {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "total" => Ok(Self::Total),
            "ttft" => Ok(Self::Ttft),
            "tpot" => Ok(Self::Tpot),
            other => Err(CoreError::invalid(
                "kind",
                format!("must be \"total\", \"ttft\" or \"tpot\", got {other:?}"),
            )),
        }
    }
}

/// What `LatencyTracker::percentiles` reports, in milliseconds; all zeros for an empty histogram.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// Sum of the samples' decayed weights at the time of the call (a fresh sample weighs 1).
    pub count: f64,
}
