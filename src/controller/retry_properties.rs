//! Properties of the reconcile retry delays: bounded and never shorter after one more failure, for any count.

use super::retry::{ErrorBackoff, immediate_retry_delay, retry_delay};
use crate::testing::properties::config;
use proptest::prelude::*;
use std::time::Duration;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_wait_after_failures_is_between_five_seconds_and_five_minutes_and_never_shrinks(failures in 1..=u32::MAX) {
        let delay = retry_delay(failures);
        prop_assert!(Duration::from_secs(5) <= delay && delay <= Duration::from_secs(300), "{delay:?}");
        prop_assert!(delay <= retry_delay(failures.saturating_add(1)));
    }

    #[test]
    fn the_wait_before_an_immediate_retry_is_between_ten_milliseconds_and_ten_seconds_and_never_shrinks(
        retries in any::<u32>(),
    ) {
        let delay = immediate_retry_delay(retries);
        prop_assert!(Duration::from_millis(10) <= delay && delay <= Duration::from_secs(10), "{delay:?}");
        prop_assert!(delay <= immediate_retry_delay(retries.saturating_add(1)));
    }

    #[test]
    fn objects_count_their_failures_apart_and_a_success_starts_again(
        events in proptest::collection::vec((0..3usize, any::<bool>()), 0..60),
    ) {
        let backoff = ErrorBackoff::default();
        let mut model = [0u32; 3];
        for (object, failed) in events {
            let key = format!("Certificate/apps/web-{object}");
            if failed {
                model[object] += 1;
                prop_assert_eq!(backoff.failed(&key), retry_delay(model[object]));
            } else {
                model[object] = 0;
                backoff.succeeded(&key);
            }
        }
    }
}
