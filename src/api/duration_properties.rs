//! Properties of Go durations as a tenant writes them: any text is read or refused, never a panic; what is
//! accepted is within bounds and exact; what kacme writes reads back the same.

use super::duration::{DurationError, GoDuration, MAX_DURATION, MAX_DURATION_LENGTH, parse_go_duration};
use crate::testing::properties::{config, hostile_text};
use proptest::prelude::*;
use std::time::Duration;

const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// One `<number><unit>` of a duration: whole digits (up to 40, beyond any range), fraction digits, unit.
fn component() -> impl Strategy<Value = (String, String, (&'static str, u128))> {
    let whole = prop_oneof![4 => "[0-9]{1,4}", 1 => "[0-9]{5,40}"];
    (whole, "[0-9]{0,15}", proptest::sample::select(&UNITS[..]))
}

/// Text in the duration alphabet with the characters that broke other parsers: signs, exponents, `inf`.
fn durationish_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof!["[0-9]{1,25}", "(ns|us|µs|ms|s|m|h|d|e|E|inf|NaN|\\.|-|\\+| |_|e300|e-9)"],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

/// `whole.fraction` times `unit_nanos`, exactly, truncated to whole nanoseconds; `None` beyond u128.
fn exact_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let whole = whole.parse::<u128>().ok()?.checked_mul(unit_nanos)?;
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let fraction = if fraction.is_empty() { 0 } else { fraction.parse::<u128>().ok()? };
    whole.checked_add(fraction * unit_nanos / scale)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_read_or_refused_without_panicking(text in prop_oneof![hostile_text(), durationish_text()]) {
        if let Ok(duration) = parse_go_duration(&text) {
            prop_assert!(!text.is_empty() && text.chars().count() <= MAX_DURATION_LENGTH, "{text:?}");
            prop_assert!(duration <= MAX_DURATION, "{text:?} gave {duration:?}");
            prop_assert!(text.starts_with(|c: char| c.is_ascii_digit()), "{text:?} has a sign or no number");
        }
    }

    #[test]
    fn a_sum_of_components_is_exact_or_refused_as_out_of_range_never_wrapped(
        components in proptest::collection::vec(component(), 1..5),
    ) {
        let text: String = components.iter().map(|(w, f, (u, _))| match f.is_empty() {
            true => format!("{w}{u}"),
            false => format!("{w}.{f}{u}"),
        }).collect();
        let expected = components
            .iter()
            .try_fold(0u128, |sum, (w, f, (_, unit))| sum.checked_add(exact_nanos(w, f, *unit)?));
        let got = parse_go_duration(&text);
        if text.chars().count() > MAX_DURATION_LENGTH {
            prop_assert_eq!(got, Err(DurationError::TooLong));
        } else {
            match expected {
                Some(nanos) if nanos <= MAX_DURATION.as_nanos() => {
                    let nanos = u64::try_from(nanos).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(got, Ok(Duration::from_nanos(nanos)), "{}", text);
                }
                _ => prop_assert_eq!(got, Err(DurationError::OutOfRange), "{}", text),
            }
        }
    }

    #[test]
    fn a_duration_written_by_kacme_reads_back_the_same(nanos in 0..=MAX_DURATION.as_nanos() as u64) {
        let duration = GoDuration::from(Duration::from_nanos(nanos));
        let text = duration.to_string();
        prop_assert_eq!(text.parse::<GoDuration>(), Ok(duration), "{}", text);
        let json = serde_json::to_value(duration).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_value::<GoDuration>(json).ok(), Some(duration));
    }

    #[test]
    fn a_duration_field_refuses_bad_text_with_an_error_instead_of_panicking(
        text in prop_oneof![hostile_text(), durationish_text()],
    ) {
        if let Err(error) = serde_json::from_value::<GoDuration>(serde_json::Value::String(text.clone())) {
            prop_assert!(error.to_string().contains("is not a duration"), "{error}");
        }
    }
}
