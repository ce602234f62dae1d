//! Budget windows on the UTC calendar: the hour, day or month holding a moment given in epoch
//! seconds, or one window for all time.
//!
//! Months need a calendar. Rather than pull in chrono for one conversion, this uses Howard
//! Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian, exact for every date, a
//! dozen integer operations), checked below against a naive day-by-day walk. Boundaries are whole
//! seconds, so `now` is floored to a whole second first and everything after that is integer
//! arithmetic: a moment a hair before midnight can never round into the next day.

use std::str::FromStr;

use crate::error::{CoreError, Result};

const SECONDS_PER_MINUTE: i64 = 60;
const SECONDS_PER_HOUR: i64 = 3_600;
const SECONDS_PER_DAY: i64 = 86_400;

/// Upper bound on `now`: 10000-01-01T00:00:00Z. Keeps every conversion to integer seconds exact
/// and in range, and is far beyond any real clock; a larger value is a unit mistake (ms, ns).
pub const MAX_NOW_S: f64 = 253_402_300_800.0;

/// How a budget's spend is grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Month,
    /// One window for all time: a lifetime cap.
    Total,
}

impl Window {
    /// The window as config and Python spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    /// The window holding `now_s`, which the caller has checked with `check_now`.
    pub(crate) fn span_at(self, now_s: f64) -> Span {
        let second = now_s.floor() as i64;
        let (start, end) = match self {
            Self::Hour => {
                let start = second.div_euclid(SECONDS_PER_HOUR) * SECONDS_PER_HOUR;
                (start, start + SECONDS_PER_HOUR)
            }
            Self::Day => {
                let start = second.div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY;
                (start, start + SECONDS_PER_DAY)
            }
            Self::Month => {
                let (year, month, _) = civil_from_days(second.div_euclid(SECONDS_PER_DAY));
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * SECONDS_PER_DAY,
                    days_from_civil(next_year, next_month, 1) * SECONDS_PER_DAY,
                )
            }
            Self::Total => {
                return Span {
                    start_s: 0.0,
                    end_s: f64::INFINITY,
                }
            }
        };
        Span {
            start_s: start as f64,
            end_s: end as f64,
        }
    }
}

impl FromStr for Window {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            "month" => Ok(Self::Month),
            "total" => Ok(Self::Total),
            other => Err(CoreError::invalid(
                "window",
                format!("must be \"hour\", \"day\", \"month\" or \"total\", got {other:?}"),
            )),
        }
    }
}

/// The fixed UTC minute holding `now_s` (checked with `check_now`): the window a rate limit's
/// lease is granted for (see `lease.rs`). Not a budget window, so not a `Window` variant.
pub(crate) fn minute_at(now_s: f64) -> Span {
    let start = (now_s.floor() as i64).div_euclid(SECONDS_PER_MINUTE) * SECONDS_PER_MINUTE;
    Span {
        start_s: start as f64,
        end_s: (start + SECONDS_PER_MINUTE) as f64,
    }
}

/// One window's bounds, `[start_s, end_s)` in epoch seconds; exact integers except `Total`'s
/// infinite end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
}

/// Validates a caller's `now`: epoch seconds for budgets, any non-negative scale for rate limits.
///
/// # Errors
/// `InvalidArgument` unless `now_s` is finite and in `[0, MAX_NOW_S)`.
pub(crate) fn check_now(now_s: f64) -> Result<()> {
    if (0.0..MAX_NOW_S).contains(&now_s) {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "now",
            format!("must be finite seconds in [0, {MAX_NOW_S}) (year 10000), got {now_s}"),
        ))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1-12, `day` 1-31).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Years start in March here, so the leap day is the last day of the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01; the inverse of
/// `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
// Boundaries are whole seconds, exact in f64, so equality is what is meant.
#[allow(clippy::float_cmp)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Epoch seconds of a UTC date at midnight.
    fn at(year: i64, month: i64, day: i64) -> f64 {
        (days_from_civil(year, month, day) * SECONDS_PER_DAY) as f64
    }

    fn is_leap(year: i64) -> bool {
        (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
    }

    #[test]
    fn civil_matches_a_day_by_day_walk() {
        // Through 2400, so every leap rule (4, 100, 400) is crossed at least once.
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..days_from_civil(2401, 1, 1) {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            assert_eq!(days_from_civil(year, month, day), days);
            let month_len = match month {
                2 if is_leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
    }

    #[test]
    fn months_end_at_the_right_day() {
        let cases = [
            ((2024, 2, 29), (2024, 2, 1), (2024, 3, 1)), // leap year
            ((2023, 2, 28), (2023, 2, 1), (2023, 3, 1)),
            ((2100, 2, 28), (2100, 2, 1), (2100, 3, 1)), // century, not leap
            ((2000, 2, 29), (2000, 2, 1), (2000, 3, 1)), // 400-year, leap
            ((1999, 12, 31), (1999, 12, 1), (2000, 1, 1)), // year end
            ((2025, 1, 1), (2025, 1, 1), (2025, 2, 1)),
        ];
        for ((y, m, d), start, end) in cases {
            let last_second = at(y, m, d) + 86_399.5;
            let span = Window::Month.span_at(last_second);
            assert_eq!(span.start_s, at(start.0, start.1, start.2), "{y}-{m}-{d}");
            assert_eq!(span.end_s, at(end.0, end.1, end.2), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn windows_turn_exactly_at_the_boundary() {
        let midnight = at(2024, 1, 1);
        for window in [Window::Hour, Window::Day, Window::Month] {
            let before = window.span_at(midnight - 1e-6);
            let after = window.span_at(midnight);
            assert_eq!(before.end_s, midnight, "{window:?}");
            assert_eq!(after.start_s, midnight, "{window:?}");
        }
        let hour = Window::Hour.span_at(midnight + 3_600.0 * 5.0 + 59.9);
        assert_eq!(
            (hour.start_s, hour.end_s),
            (midnight + 18_000.0, midnight + 21_600.0)
        );
        let minute = minute_at(midnight + 59.999);
        assert_eq!((minute.start_s, minute.end_s), (midnight, midnight + 60.0));
        assert_eq!(minute_at(midnight + 60.0).start_s, midnight + 60.0);
        let total = Window::Total.span_at(midnight);
        assert_eq!((total.start_s, total.end_s), (0.0, f64::INFINITY));
    }

    #[test]
    fn parses_and_validates() {
        for window in [Window::Hour, Window::Day, Window::Month, Window::Total] {
            assert_eq!(window.as_str().parse::<Window>().unwrap(), window);
        }
        let err = "week".parse::<Window>().unwrap_err();
        assert!(err.to_string().starts_with("window: must be"), "{err}");
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_NOW_S] {
            assert!(check_now(bad).is_err(), "{bad}");
        }
        assert!(check_now(0.0).is_ok());
    }

    proptest! {
        #[test]
        fn spans_hold_now_and_tile_time(
            now in 0.0..MAX_NOW_S - 40.0 * 86_400.0,
            window in prop::sample::select(vec![Window::Hour, Window::Day, Window::Month]),
        ) {
            let span = window.span_at(now);
            prop_assert!(span.start_s <= now && now < span.end_s, "{:?} {}", span, now);
            // Consecutive windows meet: the next one starts where this one ends.
            prop_assert_eq!(window.span_at(span.end_s).start_s, span.end_s);
            prop_assert_eq!(window.span_at(span.start_s), span);
            let start_day = (span.start_s as i64).div_euclid(SECONDS_PER_DAY);
            prop_assert_eq!(span.start_s as i64 % SECONDS_PER_HOUR, 0);
            if window == Window::Month {
                prop_assert_eq!(civil_from_days(start_day).2, 1);
                prop_assert_eq!(span.start_s as i64 % SECONDS_PER_DAY, 0);
            }
        }

        #[test]
        fn civil_round_trips(days in -1_000_000i64..3_000_000) {
            let (year, month, day) = civil_from_days(days);
            prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day));
            prop_assert_eq!(days_from_civil(year, month, day), days);
        }
    }
}
