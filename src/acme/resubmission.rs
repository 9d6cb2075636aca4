//! Asking the CA again about a challenge it could not validate yet, on the same order.
//!
//! RFC 8555 section 8.2: a CA may retry a failed validation itself, keeping the challenge `processing`
//! meanwhile; or it may leave the challenge `pending` with an `error`, and the client may then ask again by
//! POSTing the challenge once more. step-ca does the latter for an HTTP-01 route that refuses connections
//! or answers an HTTP error (as an ingress controller answers 404 before it has programmed a new rule): it
//! marks a challenge `invalid` only when the route answers something other than the key authorization.
//! So a route that starts serving a few seconds late costs a few re-POSTs, not a new order: kacme asks
//! again after 1 s, 2 s, 4 s, 8 s and then every [`LONGEST_RESUBMIT_DELAY`], until the authorization is
//! valid, invalid (a new order, after backoff) or past its deadline. A `processing` challenge is never
//! POSTed again: the CA is working on it.

use instant_acme::ChallengeStatus;
use std::time::{Duration, Instant};

/// The first wait before asking again about a challenge the CA could not validate.
pub const FIRST_RESUBMIT_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two requests to validate the same challenge.
pub const LONGEST_RESUBMIT_DELAY: Duration = Duration::from_secs(10);

/// How long to wait after the `failed_attempts`-th validation that failed without invalidating the
/// challenge: doubling from [`FIRST_RESUBMIT_DELAY`], at most [`LONGEST_RESUBMIT_DELAY`].
pub fn resubmit_delay(failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(16);
    FIRST_RESUBMIT_DELAY.saturating_mul(1 << doublings).min(LONGEST_RESUBMIT_DELAY)
}

/// What to do about a challenge that kacme submitted and whose authorization is still `pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmittedChallenge {
    /// The CA is validating (or retrying by itself): wait for it, do not POST again.
    CaIsValidating,
    /// The CA left the challenge pending: ask it again now.
    AskAgain,
    /// The CA left the challenge pending: ask it again after this long.
    AskAgainAfter(Duration),
}

/// The next step for a submitted challenge of `status`, when kacme may ask again at `ask_again_at` (`None`:
/// at once, for example after a restart) and it is `now`.
pub fn submitted_challenge(status: ChallengeStatus, ask_again_at: Option<Instant>, now: Instant) -> SubmittedChallenge {
    match status {
        ChallengeStatus::Pending => match ask_again_at {
            Some(at) if at > now => SubmittedChallenge::AskAgainAfter(at - now),
            _ => SubmittedChallenge::AskAgain,
        },
        // Processing: RFC 8555 section 8.2, the server retries; valid or invalid: the authorization follows.
        ChallengeStatus::Processing | ChallengeStatus::Valid | ChallengeStatus::Invalid => {
            SubmittedChallenge::CaIsValidating
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_waits_between_requests_double_from_one_second_up_to_ten() {
        let waits: Vec<u64> = (1..=7).map(|n| resubmit_delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(resubmit_delay(0), FIRST_RESUBMIT_DELAY, "no failure yet: the shortest wait");
    }

    #[test]
    fn a_pending_challenge_is_asked_again_when_its_wait_is_over_and_a_processing_one_never() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3);
        let earlier = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        // (case, challenge status, ask again at, expected)
        let cases = [
            ("pending, nothing known (a restart)", ChallengeStatus::Pending, None, SubmittedChallenge::AskAgain),
            ("pending, wait over", ChallengeStatus::Pending, Some(earlier), SubmittedChallenge::AskAgain),
            ("pending, wait over just now", ChallengeStatus::Pending, Some(now), SubmittedChallenge::AskAgain),
            (
                "pending, still waiting",
                ChallengeStatus::Pending,
                Some(later),
                SubmittedChallenge::AskAgainAfter(Duration::from_secs(3)),
            ),
            ("processing: the CA retries", ChallengeStatus::Processing, None, SubmittedChallenge::CaIsValidating),
            (
                "processing even after the wait",
                ChallengeStatus::Processing,
                Some(earlier),
                SubmittedChallenge::CaIsValidating,
            ),
            ("valid", ChallengeStatus::Valid, None, SubmittedChallenge::CaIsValidating),
            ("invalid", ChallengeStatus::Invalid, None, SubmittedChallenge::CaIsValidating),
        ];
        for (case, status, at, expected) in cases {
            assert_eq!(submitted_challenge(status, at, now), expected, "{case}");
        }
    }

    proptest! {
        #[test]
        fn the_wait_never_shrinks_and_stays_between_one_and_ten_seconds(attempts in any::<u32>()) {
            let wait = resubmit_delay(attempts);
            prop_assert!((FIRST_RESUBMIT_DELAY..=LONGEST_RESUBMIT_DELAY).contains(&wait));
            prop_assert!(resubmit_delay(attempts.saturating_add(1)) >= wait);
        }
    }
}
