//! Go durations (`90m`, `24h`, `1h30m`, `1.5h`) as kacme accepts them wherever a tenant writes one: the
//! grammar of the CRD's admission pattern ([`GO_DURATION_PATTERN`]), checked arithmetic, and an upper
//! bound. Parsing never panics, whatever the text (kube's own parser panics on `1e300h` or `infh`).

use std::time::Duration;

/// A Go duration as the CRD schema accepts it: one or more `<number><unit>`, no sign, no exponent.
pub const GO_DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The longest duration kacme accepts: 100 years, far beyond any certificate lifetime, well inside what
/// the apiserver's CEL `duration()` can represent.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest text kacme reads as a duration (as the CRD's `maxLength`).
pub const MAX_DURATION_LENGTH: usize = 64;

/// Why a text is not a duration kacme accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("it is empty")]
    Empty,
    /// The text is longer than [`MAX_DURATION_LENGTH`].
    #[error("it is longer than {MAX_DURATION_LENGTH} characters")]
    TooLong,
    /// A number is missing or malformed, or a sign or exponent was used.
    #[error("expected a number at {0:?} (durations look like 90m, 24h or 1h30m; no sign, no exponent)")]
    Number(String),
    /// A unit is missing or unknown.
    #[error("unknown or missing unit at {0:?} (units: ns, us, ms, s, m, h)")]
    Unit(String),
    /// The value is larger than [`MAX_DURATION`].
    #[error("it is longer than 100 years")]
    OutOfRange,
}

/// Parses a Go duration with the grammar of [`GO_DURATION_PATTERN`], within [`MAX_DURATION`].
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    // In characters, as the CRD's maxLength counts them (`µ` is two bytes).
    if text.chars().count() > MAX_DURATION_LENGTH {
        return Err(DurationError::TooLong);
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let whole_len = digits(rest);
        if whole_len == 0 {
            return Err(DurationError::Number(rest.to_string()));
        }
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after_dot) => {
                let fraction_len = digits(after_dot);
                if fraction_len == 0 {
                    return Err(DurationError::Number(rest.to_string()));
                }
                after_dot.split_at(fraction_len)
            }
            None => ("", after),
        };
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Unit(after_unit_context(unit, after))),
        };
        let value = scaled(whole, fraction, unit_nanos).ok_or(DurationError::OutOfRange)?;
        total_nanos = total_nanos.checked_add(value).ok_or(DurationError::OutOfRange)?;
        if total_nanos > MAX_DURATION.as_nanos() {
            return Err(DurationError::OutOfRange);
        }
        rest = after;
    }
    let seconds = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::OutOfRange)?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| DurationError::OutOfRange)?;
    Ok(Duration::new(seconds, nanos))
}

fn after_unit_context(unit: &str, after: &str) -> String {
    if unit.is_empty() { after.chars().take(8).collect() } else { unit.to_string() }
}

/// `whole.fraction` times `unit_nanos`, truncated to whole nanoseconds; `None` on overflow.
fn scaled(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let whole = whole.parse::<u128>().ok()?.checked_mul(unit_nanos)?;
    // floor(0.d1d2...dn * unit) exactly, for any n: long multiplication from the last digit, keeping only
    // the carry into the whole part (always below `unit_nanos`, so it cannot overflow).
    let fraction =
        fraction.bytes().rev().fold(0u128, |carry, digit| (u128::from(digit - b'0') * unit_nanos + carry) / 10);
    whole.checked_add(fraction)
}

/// A duration field of the API (`spec.duration`, `spec.renewBefore`): read with [`parse_go_duration`], so
/// that an object whose duration slipped past admission is an error of that object, never a panic of the
/// watch that reads it. Written as kube's `Duration` wrote it (`86400s`), which reads back the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(Duration);

impl From<GoDuration> for Duration {
    fn from(duration: GoDuration) -> Duration {
        duration.0
    }
}

impl From<Duration> for GoDuration {
    fn from(duration: Duration) -> GoDuration {
        GoDuration(duration)
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<GoDuration, DurationError> {
        parse_go_duration(text).map(GoDuration)
    }
}

impl std::fmt::Display for GoDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GoDuration {
    /// Reads a duration; one longer than [`MAX_DURATION`] reads as [`MAX_DURATION`]. The CRD refuses those at
    /// admission, but an object stored before it did must not fail to read: the controller lists and watches
    /// every Certificate at once, and one unreadable object would stop it for all of them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<GoDuration, D::Error> {
        let text = String::deserialize(deserializer)?;
        match parse_go_duration(&text) {
            Ok(duration) => Ok(GoDuration(duration)),
            Err(DurationError::OutOfRange) => Ok(GoDuration(MAX_DURATION)),
            Err(e) => Err(serde::de::Error::custom(format!("{text:?} is not a duration: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_field_reads_back_what_it_writes_and_refuses_what_would_panic() {
        for text in ["24h", "90m", "1.5s", "100ms", "1µs", "2160h", "8h"] {
            let read: GoDuration = serde_json::from_value(serde_json::json!(text)).expect(text);
            let written = serde_json::to_value(read).expect("serializes");
            let again: GoDuration = serde_json::from_value(written.clone()).expect("reads back");
            assert_eq!(read, again, "{text:?} was written as {written}");
        }
        assert_eq!(serde_json::to_value(GoDuration(Duration::from_secs(86400))).unwrap(), "86400s");
        // Admitted by the CRD before it bounded durations: read, at the bound, rather than fail the whole watch.
        let stored_before_the_bound: GoDuration = serde_json::from_value(serde_json::json!("1000000h")).unwrap();
        assert_eq!(Duration::from(stored_before_the_bound), MAX_DURATION);
        for text in ["1e300h", "infh", "-1h", "NaNh"] {
            let error = serde_json::from_value::<GoDuration>(serde_json::json!(text)).expect_err(text);
            assert!(error.to_string().contains("is not a duration"), "{error}");
        }
    }

    #[test]
    fn durations_parse_like_the_crd_pattern_accepts_them_and_never_panic() {
        let hour = Duration::from_secs(3600);
        let too_long = "1h".repeat(40);
        // (text, expected)
        let cases: Vec<(&str, Result<Duration, DurationError>)> = vec![
            ("24h", Ok(24 * hour)),
            ("90m", Ok(Duration::from_secs(5400))),
            ("1h30m", Ok(Duration::from_secs(5400))),
            ("1.5h", Ok(Duration::from_secs(5400))),
            ("1500ms", Ok(Duration::from_millis(1500))),
            ("2µs", Ok(Duration::from_micros(2))),
            ("0.000000001s", Ok(Duration::from_nanos(1))),
            // Found by a property test: digits beyond the unit's precision used to be dropped one by one
            // (7.2 ns read as 6 ns, 59.9999999994 s as 59.999999994 s).
            ("0.000000000002h", Ok(Duration::from_nanos(7))),
            ("0.99999999999m", Ok(Duration::from_nanos(59_999_999_999))),
            ("1.0000000000000000000000000000000000000000000000009ns", Ok(Duration::from_nanos(1))),
            ("876000h", Ok(MAX_DURATION)),
            ("876000h1ns", Err(DurationError::OutOfRange)),
            ("", Err(DurationError::Empty)),
            ("a day", Err(DurationError::Number("a day".into()))),
            ("-5m", Err(DurationError::Number("-5m".into()))),
            ("+5m", Err(DurationError::Number("+5m".into()))),
            ("1e300h", Err(DurationError::Unit("e".into()))),
            ("infh", Err(DurationError::Number("infh".into()))),
            ("NaNh", Err(DurationError::Number("NaNh".into()))),
            ("5", Err(DurationError::Unit("".into()))),
            ("5d", Err(DurationError::Unit("d".into()))),
            ("1.h", Err(DurationError::Number("1.h".into()))),
            (".5h", Err(DurationError::Number(".5h".into()))),
            ("99999999999999999999999999999999999999999h", Err(DurationError::OutOfRange)),
            ("1h 30m", Err(DurationError::Unit("h ".into()))),
            (too_long.as_str(), Err(DurationError::TooLong)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), expected, "{text:?}");
        }
    }

    #[test]
    fn the_parser_accepts_exactly_what_the_crd_pattern_accepts() {
        // The pattern and the parser agree on every sample; only the range check is the parser's own.
        let pattern = regex_lite_match;
        for text in ["24h", "1h30m", "1.5h", "5", "-5m", "5d", "1e3h", "1.h", "", "10us", "3µs", "0s", "h"] {
            assert_eq!(pattern(text), parse_go_duration(text).is_ok(), "{text:?}");
        }
    }

    /// [`GO_DURATION_PATTERN`] written out by hand (no regex crate in the build).
    fn regex_lite_match(text: &str) -> bool {
        let units = ["ns", "us", "µs", "ms", "s", "m", "h"];
        let mut rest = text;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let whole = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if whole == 0 {
                return false;
            }
            rest = &rest[whole..];
            if let Some(after) = rest.strip_prefix('.') {
                let fraction = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
                if fraction == 0 {
                    return false;
                }
                rest = &after[fraction..];
            }
            // Longest unit first, as the regex engine backtracks to a match.
            match ["ns", "us", "µs", "ms"].iter().chain(&units[4..]).find(|u| rest.starts_with(**u)) {
                Some(unit) => rest = &rest[unit.len()..],
                None => return false,
            }
        }
        true
    }
}
