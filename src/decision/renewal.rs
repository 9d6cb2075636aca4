//! When to renew a certificate.

use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};

/// How long before expiry to renew, as a Certificate's spec says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewBefore {
    /// A fixed time before expiry (`renewBefore`).
    Duration(std::time::Duration),
    /// A percentage (1-99) of the issued lifetime (`renewBeforePercentage`).
    Percentage(u8),
    /// Neither given: renew when 2/3 of the lifetime has passed.
    Default,
}

impl RenewBefore {
    /// The renewal policy of a spec: renewBefore, else renewBeforePercentage, else the default.
    pub fn from_spec(renew_before: Option<std::time::Duration>, percentage: Option<i32>) -> RenewBefore {
        match (renew_before, percentage) {
            (Some(d), _) => RenewBefore::Duration(d),
            (None, Some(p)) => RenewBefore::Percentage(p.clamp(1, 99) as u8),
            (None, None) => RenewBefore::Default,
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before` ahead of expiry,
/// computed on the lifetime actually issued (a CA may shorten the requested duration).
///
/// A renewBefore as long as the lifetime or longer would renew at once, forever; it is clamped to the
/// default (1/3 of the lifetime before expiry) instead. A certificate with no lifetime renews at expiry.
pub fn renewal_time(not_before: Timestamp, not_after: Timestamp, renew_before: RenewBefore) -> Timestamp {
    let lifetime = not_after.duration_since(not_before);
    if lifetime <= SignedDuration::ZERO {
        return not_after;
    }
    let default = lifetime / 3;
    let before = match renew_before {
        RenewBefore::Default => default,
        RenewBefore::Percentage(p) => {
            SignedDuration::from_secs_f64(lifetime.as_secs_f64() * f64::from(p.clamp(1, 99)) / 100.0)
        }
        RenewBefore::Duration(d) => match SignedDuration::try_from(d) {
            Ok(d) if d < lifetime => d,
            _ => default,
        },
    };
    // Whole seconds: status fields and Kubernetes times have no sub-second part. Rounded down, never up:
    // `as_second` truncates toward zero, which before 1970 would move the renewal past expiry.
    let at = not_after - before;
    at.round(TimestampRound::new().smallest(Unit::Second).mode(RoundMode::Floor)).unwrap_or(at)
}

/// A CA's suggested renewal window (RFC 9773), as the Certificate's status holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// When to renew inside a CA's suggested window: a point chosen uniformly over certificates (from a hash
/// of `seed`, the certificate's identifier, so that every pass and every replica picks the same one), as
/// RFC 9773 section 4.2 asks to spread renewals over the window. Never after `not_after`. A window whose end
/// is not after its start is invalid (`None`): RFC 9773 says to treat it as no answer.
pub fn renewal_in_window(window: RenewalWindow, seed: &str, not_after: Timestamp) -> Option<Timestamp> {
    let width = window.end.duration_since(window.start);
    if width <= SignedDuration::ZERO {
        return None;
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    let at = window.start + SignedDuration::from_secs_f64(width.as_secs_f64() * fraction);
    let at = at.round(TimestampRound::new().smallest(Unit::Second).mode(RoundMode::Floor)).unwrap_or(at);
    Some(at.min(not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn renewal_time_follows_the_policy_table() {
        let hour = Duration::from_secs(3600);
        // (case, notBefore, notAfter, policy, expected renewal)
        let cases = [
            (
                "default renews at two thirds of a 24h lifetime",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Default,
                "2026-01-01T16:00:00Z",
            ),
            (
                "default renews at two thirds of a 90d lifetime",
                "2026-01-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
                RenewBefore::Default,
                "2026-03-02T00:00:00Z",
            ),
            (
                "renewBefore 8h renews 8h before expiry",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Duration(8 * hour),
                "2026-01-01T16:00:00Z",
            ),
            (
                "renewBefore 1h renews 1h before expiry",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Duration(hour),
                "2026-01-01T23:00:00Z",
            ),
            (
                "renewBefore equal to the lifetime is clamped to the default",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Duration(24 * hour),
                "2026-01-01T16:00:00Z",
            ),
            (
                "renewBefore longer than the lifetime is clamped to the default",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Duration(720 * hour),
                "2026-01-01T16:00:00Z",
            ),
            (
                "percentage 50 renews at half the lifetime",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                RenewBefore::Percentage(50),
                "2026-01-01T12:00:00Z",
            ),
            (
                "percentage 10 renews at 90 percent of the lifetime",
                "2026-01-01T00:00:00Z",
                "2026-01-11T00:00:00Z",
                RenewBefore::Percentage(10),
                "2026-01-10T00:00:00Z",
            ),
            (
                "a zero lifetime renews at expiry",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                RenewBefore::Default,
                "2026-01-01T00:00:00Z",
            ),
            (
                "an inverted validity renews at expiry",
                "2026-01-02T00:00:00Z",
                "2026-01-01T00:00:00Z",
                RenewBefore::Default,
                "2026-01-01T00:00:00Z",
            ),
            (
                // Found by a property test: truncating toward zero renewed at 1970-01-01T00:00:00Z.
                "a renewal time before 1970 is rounded down, never past expiry",
                "1969-12-31T23:59:58Z",
                "1969-12-31T23:59:59.5Z",
                RenewBefore::Duration(Duration::from_millis(100)),
                "1969-12-31T23:59:59Z",
            ),
            (
                "a short-lived 5m certificate renews after 3m20s",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:05:00Z",
                RenewBefore::Default,
                "2026-01-01T00:03:20Z",
            ),
        ];
        for (case, nb, na, policy, want) in cases {
            assert_eq!(renewal_time(ts(nb), ts(na), policy), ts(want), "{case}");
        }
    }

    #[test]
    fn renew_before_is_taken_from_the_spec_in_order_of_precedence() {
        let d = Duration::from_secs(60);
        assert_eq!(RenewBefore::from_spec(Some(d), Some(10)), RenewBefore::Duration(d));
        assert_eq!(RenewBefore::from_spec(None, Some(10)), RenewBefore::Percentage(10));
        assert_eq!(RenewBefore::from_spec(None, Some(150)), RenewBefore::Percentage(99));
        assert_eq!(RenewBefore::from_spec(None, None), RenewBefore::Default);
    }

    #[test]
    fn renewal_inside_a_window_is_spread_stable_and_never_after_expiry() {
        let window = RenewalWindow { start: ts("2026-01-10T00:00:00Z"), end: ts("2026-01-11T00:00:00Z") };
        let expiry = ts("2026-01-20T00:00:00Z");
        let picks: Vec<Timestamp> =
            (0..200).map(|i| renewal_in_window(window, &format!("cert-{i}"), expiry).unwrap()).collect();
        assert!(picks.iter().all(|t| *t >= window.start && *t < window.end), "inside the window");
        let early = picks.iter().filter(|t| **t < ts("2026-01-10T12:00:00Z")).count();
        assert!((60..=140).contains(&early), "spread over the window, not bunched: {early} of 200 in the first half");
        assert_eq!(renewal_in_window(window, "cert-7", expiry), Some(picks[7]), "the same point on every pass");
        // A window reaching past expiry never renews after expiry.
        assert!(renewal_in_window(window, "cert-7", window.start).unwrap() <= window.start);
        // RFC 9773: a window that ends at or before its start is no answer.
        let empty = RenewalWindow { start: window.end, end: window.end };
        assert_eq!(renewal_in_window(empty, "cert-7", expiry), None);
        let inverted = RenewalWindow { start: window.end, end: window.start };
        assert_eq!(renewal_in_window(inverted, "cert-7", expiry), None);
    }
}
