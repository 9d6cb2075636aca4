//! How long to wait after failed issuance attempts.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Exponential backoff after failed issuance attempts: `initial`, doubled per further failure, at most
/// `max`. Never zero, so a failing Certificate never spins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 30s after the first failure, then 1m, 2m, ... up to 1h.
    fn default() -> Self {
        BackoffPolicy { initial: Duration::from_secs(30), max: Duration::from_secs(3600) }
    }
}

impl BackoffPolicy {
    /// The delay after `failed_attempts` consecutive failures (0 means no failure: no delay).
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        if failed_attempts == 0 {
            return Duration::ZERO;
        }
        let initial = self.initial.max(Duration::from_secs(1));
        let factor = 2u32.saturating_pow(failed_attempts.saturating_sub(1).min(31));
        initial.saturating_mul(factor).min(self.max.max(initial))
    }

    /// When the next attempt may start, given the time of the last failure.
    pub fn retry_at(&self, last_failure: Timestamp, failed_attempts: u32) -> Timestamp {
        let delay = SignedDuration::try_from(self.delay(failed_attempts)).unwrap_or(SignedDuration::MAX);
        last_failure.saturating_add(delay).unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
        let policy = BackoffPolicy { initial: Duration::from_secs(30), max: Duration::from_secs(600) };
        let cases =
            [(0, 0), (1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (7, 600), (100, 600), (u32::MAX, 600)];
        for (attempts, secs) in cases {
            assert_eq!(policy.delay(attempts), Duration::from_secs(secs), "after {attempts} failures");
        }
    }

    #[test]
    fn backoff_never_hot_loops_even_when_configured_to_zero() {
        let policy = BackoffPolicy { initial: Duration::ZERO, max: Duration::ZERO };
        assert_eq!(policy.delay(1), Duration::from_secs(1));
        assert_eq!(policy.delay(5), Duration::from_secs(1));
    }

    #[test]
    fn retry_time_is_the_last_failure_plus_the_delay() {
        let policy = BackoffPolicy::default();
        let failure: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(policy.retry_at(failure, 3), "2026-01-01T00:02:00Z".parse().unwrap());
    }
}
