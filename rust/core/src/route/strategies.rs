//! The built-in strategies and the reasons auto routing gives when it picks one: the core's, so
//! that Python passes only the strategies a config adds.

/// (cost, latency, quality) weights of the strategies every config has; a configured strategy of
/// the same name replaces one.
pub const BUILTIN_STRATEGIES: [(&str, [f64; 3]); 4] = [
    ("cost-first", [0.7, 0.15, 0.15]),
    ("latency-first", [0.15, 0.7, 0.15]),
    ("quality-first", [0.1, 0.1, 0.8]),
    ("balanced", [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]),
];

/// What auto routing uses for prompts at or above the hard threshold.
pub(super) const HARD_STRATEGY: &str = "quality-first";
/// What auto routing uses for prompts at or below the easy threshold.
pub(super) const EASY_STRATEGY: &str = "cost-first";

/// "complexity >= 0.6: quality-first": the reason a threshold gives, the number written as the
/// config's YAML (Python) writes it back.
pub(super) fn threshold_reason(comparison: &str, threshold: f64, strategy: &str) -> String {
    format!(
        "complexity {comparison} {}: {strategy}",
        python_float(threshold)
    )
}

/// `value` as Python's `repr(float)` spells it: the shortest round-tripping digits (as Rust's),
/// with ".0" on whole numbers and a two-digit exponent below 1e-4 or from 1e16.
fn python_float(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_finite() && value != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        let scientific = format!("{value:e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    if value.is_finite() && value.fract() == 0.0 {
        return format!("{value:.1}");
    }
    format!("{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_write_numbers_as_python_does() {
        assert_eq!(
            threshold_reason(">=", 0.6, HARD_STRATEGY),
            "complexity >= 0.6: quality-first"
        );
        assert_eq!(
            threshold_reason("<=", 0.0, EASY_STRATEGY),
            "complexity <= 0.0: cost-first"
        );
        for (value, python) in [
            (1.0, "1.0"),
            (0.25, "0.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (0.000_1, "0.0001"),
            (0.000_01, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
        ] {
            assert_eq!(python_float(value), python, "{value}");
        }
    }
}
