//! When to look at a Certificate again for renewal.

use aws_lc_rs::digest::{SHA256, digest};
use jiff::Timestamp;
use std::time::Duration;

/// The time to requeue a Certificate for renewal: `renewal_time` plus a jitter in `[0, max_jitter)`
/// derived from a hash of `key` (conventionally `namespace/name`).
///
/// Thousands of Certificates issued in the same minute then renew spread over `max_jitter` instead of
/// all in the same second, and one Certificate always gets the same offset, so repeated reconciles do
/// not move its requeue time. Keep `max_jitter` small next to the time between renewal and expiry
/// (the requeue time may be up to `max_jitter` after `renewal_time`). A zero `max_jitter` gives
/// `renewal_time`; a time beyond jiff's range saturates at [`Timestamp::MAX`].
pub fn requeue_at(renewal_time: Timestamp, key: &str, max_jitter: Duration) -> Timestamp {
    let max_nanos = u64::try_from(max_jitter.as_nanos()).unwrap_or(u64::MAX);
    if max_nanos == 0 {
        return renewal_time;
    }
    let jitter = Duration::from_nanos(stable_hash(key) % max_nanos);
    renewal_time.checked_add(jitter).unwrap_or(Timestamp::MAX)
}

/// A hash of `key` that is the same in every process and release (unlike `std`'s `DefaultHasher`).
fn stable_hash(key: &str) -> u64 {
    let hash = digest(&SHA256, key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn renewal() -> Timestamp {
        "2026-06-01T16:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_jitter_stays_within_its_bound() {
        // (case, key, max jitter)
        let cases = [
            ("a one-minute jitter", "apps/web", Duration::from_secs(60)),
            ("a one-second jitter", "apps/api", Duration::from_secs(1)),
            ("a one-nanosecond jitter is always zero", "apps/web", Duration::from_nanos(1)),
            ("an empty key", "", Duration::from_secs(60)),
            ("a huge jitter", "apps/web", Duration::MAX),
        ];
        for (case, key, max_jitter) in cases {
            let at = requeue_at(renewal(), key, max_jitter);
            assert!(at >= renewal(), "{case}: {at} is not before the renewal time");
            let offset = Duration::try_from(at.duration_since(renewal())).unwrap();
            assert!(offset < max_jitter, "{case}: {offset:?} < {max_jitter:?}");
        }
    }

    #[test]
    fn no_jitter_requeues_at_the_renewal_time() {
        assert_eq!(requeue_at(renewal(), "apps/web", Duration::ZERO), renewal());
    }

    #[test]
    fn one_certificate_always_gets_the_same_offset() {
        let max = Duration::from_secs(300);
        let first = requeue_at(renewal(), "apps/web", max);
        assert_eq!(requeue_at(renewal(), "apps/web", max), first);
        let a_day_later = renewal() + jiff::SignedDuration::from_hours(24);
        assert_eq!(
            requeue_at(a_day_later, "apps/web", max).duration_since(a_day_later),
            first.duration_since(renewal())
        );
    }

    #[test]
    fn a_thousand_certificates_renewing_together_spread_over_the_jitter() {
        let max = Duration::from_secs(60);
        let seconds: BTreeSet<i64> =
            (0..1000).map(|i| requeue_at(renewal(), &format!("apps/cert-{i}"), max).as_second()).collect();
        assert_eq!(seconds.len(), 60, "every second of the minute gets some of them");
    }

    #[test]
    fn a_renewal_at_the_end_of_time_saturates_instead_of_overflowing() {
        assert_eq!(requeue_at(Timestamp::MAX, "apps/web", Duration::from_secs(60)), Timestamp::MAX);
    }
}
