//! How long a reconcile that failed waits before it runs again: longer after each failure of the same
//! object in a row (never a hot loop on an object that keeps failing), back to the start after a success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait after the first failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The wait after `failures` failures in a row (1 or more): 5 s, 10 s, 20 s, ... at most 5 minutes.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// The wait before retrying a step the CA asked to retry at once (a rejected nonce), after `retries`
/// such retries in a row: 10 ms, doubling to 10 s, so that a CA that rejects every nonce costs a request
/// every 10 s, not a hot loop.
pub(crate) fn immediate_retry_delay(retries: u32) -> Duration {
    let doublings = retries.min(10);
    Duration::from_millis(10).saturating_mul(1 << doublings).min(Duration::from_secs(10))
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

    /// Counts one more failure of `object` and returns how many there were before it.
    pub fn count(&self, object: &str) -> u32 {
        let Ok(mut failures) = self.failures.lock() else { return u32::MAX };
        let count = failures.entry(object.to_string()).or_insert(0);
        let before = *count;
        *count = count.saturating_add(1);
        before
    }

    /// Forgets the failures of `object` (it succeeded, or is gone).
    pub fn succeeded(&self, object: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }
}

/// Objects that asked to be tried again no sooner than some instant (a CA's "retry later"). A reconcile
/// triggered meanwhile by anything but a change of the object's wishes (its generation and annotations), such
/// as kacme's own status write of the failure, waits out the rest instead of asking the CA again: a CA whose
/// every error reads differently would otherwise make each status write trigger the next request, a hot loop.
#[derive(Default)]
pub struct RetryGate {
    waits: Mutex<HashMap<String, (Instant, String)>>,
}

impl RetryGate {
    /// `object` (with `wishes`, see [`wishes_of`]) is not to be tried again before `until`.
    pub fn hold_until(&self, object: &str, wishes: String, until: Instant) {
        if let Ok(mut waits) = self.waits.lock() {
            waits.insert(object.to_string(), (until, wishes));
        }
    }

    /// How long `object` still has to wait at `now`; `None` when it may run (its time has come, or its
    /// wishes changed), and the hold is forgotten then.
    pub fn remaining(&self, object: &str, wishes: &str, now: Instant) -> Option<Duration> {
        let mut waits = self.waits.lock().ok()?;
        match waits.get(object) {
            Some((until, held)) if *until > now && held == wishes => Some(*until - now),
            Some(_) => {
                waits.remove(object);
                None
            }
            None => None,
        }
    }
}

impl RetryGate {
    /// Forgets every hold (for tests whose passes stand for requeues that came due).
    #[cfg(test)]
    pub fn release_all(&self) {
        if let Ok(mut waits) = self.waits.lock() {
            waits.clear();
        }
    }
}

/// What a user changes to ask for something new: the generation (the spec) and the annotations (a renewal
/// request, for example).
pub fn wishes_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{:?}|{:?}", meta.generation, meta.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_retries_start_at_once_and_slow_down_to_ten_seconds() {
        let cases = [(0, 10), (1, 20), (2, 40), (5, 320), (9, 5120), (10, 10_000), (u32::MAX, 10_000)];
        for (retries, millis) in cases {
            assert_eq!(immediate_retry_delay(retries), Duration::from_millis(millis), "{retries} retries");
        }
    }

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

    #[test]
    fn a_held_object_waits_out_its_time_unless_its_wishes_change() {
        let gate = RetryGate::default();
        let now = Instant::now();
        assert_eq!(gate.remaining("apps/web", "1|None", now), None, "nothing held");
        gate.hold_until("apps/web", "1|None".into(), now + Duration::from_secs(10));
        assert_eq!(gate.remaining("apps/web", "1|None", now + Duration::from_secs(4)), Some(Duration::from_secs(6)));
        assert_eq!(gate.remaining("apps/api", "1|None", now), None, "another object");
        assert_eq!(gate.remaining("apps/web", "1|None", now + Duration::from_secs(10)), None, "its time has come");
        gate.hold_until("apps/web", "1|None".into(), now + Duration::from_secs(10));
        assert_eq!(gate.remaining("apps/web", "2|None", now), None, "a new spec runs at once");
        assert_eq!(gate.remaining("apps/web", "1|None", now), None, "and the hold is gone");
    }
}
