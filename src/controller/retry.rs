//! How long a reconcile that failed waits before it runs again: longer after each failure of the same
//! object in a row (never a hot loop on an object that keeps failing), back to the start after a success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The wait after the first failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The wait after `failures` failures in a row (1 or more): 5 s, 10 s, 20 s, ... at most 5 minutes.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Failed reconciles in a row, per object (`kind/namespace/name`).
#[derive(Default)]
pub struct ErrorBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// Counts a failure of `object` and returns how long to wait before trying it again.
    pub fn failed(&self, object: &str) -> Duration {
        let Ok(mut failures) = self.failures.lock() else { return MAX_RETRY };
        let count = failures.entry(object.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        retry_delay(*count)
    }

    /// Forgets the failures of `object` (it succeeded, or is gone).
    pub fn succeeded(&self, object: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_in_a_row_doubles_the_wait_up_to_five_minutes() {
        let cases = [(1, 5), (2, 10), (3, 20), (4, 40), (6, 160), (7, 300), (100, 300), (u32::MAX, 300)];
        for (failures, seconds) in cases {
            assert_eq!(retry_delay(failures), Duration::from_secs(seconds), "{failures} failures");
        }
    }

    #[test]
    fn a_success_starts_the_count_again_and_objects_count_apart() {
        let backoff = ErrorBackoff::default();
        assert_eq!(backoff.failed("Certificate/apps/web"), Duration::from_secs(5));
        assert_eq!(backoff.failed("Certificate/apps/web"), Duration::from_secs(10));
        assert_eq!(backoff.failed("Certificate/apps/api"), Duration::from_secs(5), "another object");
        backoff.succeeded("Certificate/apps/web");
        assert_eq!(backoff.failed("Certificate/apps/web"), Duration::from_secs(5));
    }
}
