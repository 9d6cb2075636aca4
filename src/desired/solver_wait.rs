//! Waiting for solvers and for the CA: how soon to look again at an order whose solver objects are not
//! serving yet, and when to give up on an authorization.
//!
//! Each authorization has a deadline ([`DEFAULT_AUTHORIZATION_DEADLINE`], `kacme controller
//! --authorization-deadline`), counted from the first time its challenge was presented: by then its solver
//! must serve and the CA must have validated it. A solver Pod that never becomes ready (an image that cannot
//! be pulled, a Pod that cannot be scheduled, a quota that refuses it), or a route that the CA still cannot
//! reach after being asked again and again on the same order, must not hold the order for ever: past the
//! deadline the attempt fails, naming the identifier, how long it waited and what the solver or the CA last
//! said, and backs off like any failure. Until then a Certificate whose solver is not ready is looked at
//! again after delays that grow with the wait (half the time waited so far, from 1 s to 30 s): a Pod that
//! starts at once is seen at once (its watch event wakes the Certificate too), and one that takes minutes
//! costs a pass every 30 s, not every second. How soon to ask the CA again is the ACME engine's (see
//! `acme::resubmission`).

use crate::acme::{AuthorizationStep, OrderProgress};
use std::time::Duration;

/// How long after a challenge was first presented its authorization may take to become valid: its solver
/// serving it and the CA validating it (the default of `kacme controller --authorization-deadline`).
pub const DEFAULT_AUTHORIZATION_DEADLINE: Duration = Duration::from_secs(300);
/// The first look again at a solver that is not ready.
const FIRST_LOOK: Duration = Duration::from_secs(1);
/// The longest wait between two looks.
const LONGEST_LOOK: Duration = Duration::from_secs(30);

/// What to do about the solvers of an order that waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SolverWait {
    /// No authorization waits for its solver (the order waits for the CA).
    NotWaiting,
    /// Solvers are being set up: look again after this long.
    LookAgainAfter(Duration),
    /// An authorization was not valid by the deadline: the attempt fails.
    Overdue {
        /// The identifier whose solver is not ready, or that the CA has not validated.
        identifier: String,
        /// How long since its challenge was first presented.
        waited: Duration,
        /// What the solver last reported (for example why its Pod is not ready), or the CA's last error.
        last_message: Option<String>,
        /// Whether the CA had been told (the solver served the challenge; the CA has not validated it).
        submitted: bool,
    },
}

/// Whether a pass that waits for solvers it has only just set up may leave the status as it was: it
/// presented a challenge for the first time (`before`, the position it started from, shows it not yet
/// presented) and now every authorization that is not valid is presented and awaits its solver. The next
/// look writes the wait if it lasts (usually a second later), or the pass that submits the challenges
/// writes their position; a restarted operator resumes from the order URL and presents again (idempotent).
/// Saves one status write per issuance whose solvers are ready at the next look.
pub fn first_look_at_new_solvers(before: &OrderProgress, after: &OrderProgress) -> bool {
    let newly_presented = after.authorizations.iter().any(|a| {
        a.step == AuthorizationStep::Presented
            && before.authorizations.iter().find(|b| b.url == a.url).is_none_or(|b| b.presented_at.is_none())
    });
    let only_solvers_awaited =
        after.authorizations.iter().all(|a| matches!(a.step, AuthorizationStep::Presented | AuthorizationStep::Valid));
    before.url == after.url && newly_presented && only_solvers_awaited
}

/// The solver wait of `progress` at `now` (seconds since the epoch, as `presentedAt` is kept), with
/// `deadline` per authorization. The authorization that waited longest decides whether the deadline passed
/// (presented or submitted ones: both are not valid yet); the presented one that waited least how soon to
/// look again (never later than the next deadline).
pub fn solver_wait(progress: &OrderProgress, now: u64, deadline: Duration) -> SolverWait {
    let waiting = progress
        .authorizations
        .iter()
        .filter(|a| matches!(a.step, AuthorizationStep::Presented | AuthorizationStep::Submitted))
        .filter_map(|a| Some((a, Duration::from_secs(now.saturating_sub(a.presented_at?)))));
    let mut look_again: Option<Duration> = None;
    let mut overdue: Option<(&crate::acme::AuthorizationProgress, Duration)> = None;
    for (authorization, waited) in waiting {
        if waited >= deadline {
            if overdue.is_none_or(|(_, longest)| waited > longest) {
                overdue = Some((authorization, waited));
            }
            continue;
        }
        if authorization.step == AuthorizationStep::Submitted {
            // Waiting for the CA: the engine knows when to ask it again.
            continue;
        }
        let delay = (waited / 2).clamp(FIRST_LOOK, LONGEST_LOOK).min((deadline - waited).max(FIRST_LOOK));
        look_again = Some(look_again.map_or(delay, |d| d.min(delay)));
    }
    match (overdue, look_again) {
        (Some((authorization, waited)), _) => SolverWait::Overdue {
            identifier: authorization.identifier.clone(),
            waited,
            last_message: authorization.message.clone(),
            submitted: authorization.step == AuthorizationStep::Submitted,
        },
        (None, Some(delay)) => SolverWait::LookAgainAfter(delay),
        (None, None) => SolverWait::NotWaiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AuthorizationProgress, OrderState};

    const NOW: u64 = 1_800_000_000;
    const DEADLINE: Duration = Duration::from_secs(300);

    fn authorization(identifier: &str, step: AuthorizationStep, waited: Option<u64>) -> AuthorizationProgress {
        AuthorizationProgress {
            identifier: identifier.into(),
            url: format!("https://ca.test/authz/{identifier}"),
            challenge_url: Some(format!("https://ca.test/chall/{identifier}")),
            token: Some("token".into()),
            step,
            presented_at: waited.map(|w| NOW - w),
            message: Some(format!("waiting for solver Pod of {identifier} to be ready")),
        }
    }

    fn order(authorizations: Vec<AuthorizationProgress>) -> OrderProgress {
        OrderProgress {
            url: "https://ca.test/order/1".into(),
            state: OrderState::Pending,
            identifiers: authorizations.iter().map(|a| a.identifier.clone()).collect(),
            authorizations,
        }
    }

    #[test]
    fn the_looks_at_a_solver_that_is_not_ready_grow_with_the_wait_and_stop_at_the_deadline() {
        use AuthorizationStep::Presented;
        // (case, seconds waited, expected)
        let cases = [
            ("just presented", 0, SolverWait::LookAgainAfter(Duration::from_secs(1))),
            ("after a second", 1, SolverWait::LookAgainAfter(Duration::from_secs(1))),
            ("after 4 s", 4, SolverWait::LookAgainAfter(Duration::from_secs(2))),
            ("after 10 s", 10, SolverWait::LookAgainAfter(Duration::from_secs(5))),
            ("after 40 s", 40, SolverWait::LookAgainAfter(Duration::from_secs(20))),
            ("after two minutes, at most 30 s", 120, SolverWait::LookAgainAfter(Duration::from_secs(30))),
            ("never past the deadline", 290, SolverWait::LookAgainAfter(Duration::from_secs(10))),
            ("a second before it", 299, SolverWait::LookAgainAfter(Duration::from_secs(1))),
        ];
        for (case, waited, expected) in cases {
            let progress = order(vec![authorization("web.example.test", Presented, Some(waited))]);
            assert_eq!(solver_wait(&progress, NOW, DEADLINE), expected, "{case}");
        }
    }

    #[test]
    fn a_solver_not_ready_at_the_deadline_is_overdue_with_what_it_last_said() {
        let progress = order(vec![authorization("web.example.test", AuthorizationStep::Presented, Some(300))]);
        assert_eq!(
            solver_wait(&progress, NOW, DEADLINE),
            SolverWait::Overdue {
                identifier: "web.example.test".into(),
                waited: Duration::from_secs(300),
                last_message: Some("waiting for solver Pod of web.example.test to be ready".into()),
                submitted: false,
            }
        );
    }

    #[test]
    fn an_authorization_the_ca_has_not_validated_by_the_deadline_is_overdue_with_the_cas_last_error() {
        let mut entry = authorization("web.example.test", AuthorizationStep::Submitted, Some(299));
        entry.message = Some("the CA could not validate it yet (attempt 30): connection: 404".into());
        assert_eq!(solver_wait(&order(vec![entry.clone()]), NOW, DEADLINE), SolverWait::NotWaiting, "not yet");
        entry.presented_at = Some(NOW - 300);
        assert_eq!(
            solver_wait(&order(vec![entry]), NOW, DEADLINE),
            SolverWait::Overdue {
                identifier: "web.example.test".into(),
                waited: Duration::from_secs(300),
                last_message: Some("the CA could not validate it yet (attempt 30): connection: 404".into()),
                submitted: true,
            }
        );
    }

    #[test]
    fn only_authorizations_waiting_for_their_solver_count() {
        use AuthorizationStep::{Gone, Invalid, Pending, Presented, Submitted, Valid};
        // (case, authorizations, expected)
        let cases = [
            ("nothing presented yet", vec![authorization("a.test", Pending, None)], SolverWait::NotWaiting),
            (
                "submitted ones within their deadline, valid, invalid and gone ones wait for no solver",
                vec![
                    authorization("a.test", Submitted, Some(10)),
                    authorization("b.test", Valid, Some(3600)),
                    authorization("c.test", Invalid, Some(3600)),
                    authorization("d.test", Gone, Some(3600)),
                ],
                SolverWait::NotWaiting,
            ),
            (
                "a presented one without a time (an old status) never expires",
                vec![authorization("a.test", Presented, None)],
                SolverWait::NotWaiting,
            ),
            (
                "the one that waited least decides when to look again",
                vec![authorization("a.test", Presented, Some(200)), authorization("b.test", Presented, Some(4))],
                SolverWait::LookAgainAfter(Duration::from_secs(2)),
            ),
            (
                "the one that waited longest decides that the attempt fails",
                vec![
                    authorization("a.test", Presented, Some(4)),
                    authorization("b.test", Presented, Some(301)),
                    authorization("c.test", Presented, Some(900)),
                ],
                SolverWait::Overdue {
                    identifier: "c.test".into(),
                    waited: Duration::from_secs(900),
                    last_message: Some("waiting for solver Pod of c.test to be ready".into()),
                    submitted: false,
                },
            ),
        ];
        for (case, authorizations, expected) in cases {
            assert_eq!(solver_wait(&order(authorizations), NOW, DEADLINE), expected, "{case}");
        }
    }

    #[test]
    fn a_clock_behind_the_presentation_time_waits_instead_of_failing() {
        let mut entry = authorization("web.example.test", AuthorizationStep::Presented, Some(0));
        entry.presented_at = Some(NOW + 60);
        assert_eq!(solver_wait(&order(vec![entry]), NOW, DEADLINE), SolverWait::LookAgainAfter(FIRST_LOOK));
    }

    #[test]
    fn only_the_first_look_at_solvers_just_set_up_leaves_the_status_as_it_was() {
        use AuthorizationStep::*;
        let position = |steps: &[(AuthorizationStep, Option<u64>)]| {
            order(
                steps
                    .iter()
                    .zip(["a", "b"])
                    .map(|((step, waited), name)| authorization(name, *step, *waited))
                    .collect(),
            )
        };
        // (case, position before the pass, after it, status left as it was)
        let cases = [
            (
                "just presented, solver not ready yet",
                position(&[(Pending, None)]),
                position(&[(Presented, Some(0))]),
                true,
            ),
            (
                "just presented, the other name already valid",
                position(&[(Pending, None), (Valid, None)]),
                position(&[(Presented, Some(0)), (Valid, None)]),
                true,
            ),
            (
                "a wait that lasts is written",
                position(&[(Presented, Some(1))]),
                position(&[(Presented, Some(2))]),
                false,
            ),
            (
                "a submitted challenge is written",
                position(&[(Pending, None)]),
                position(&[(Submitted, Some(0))]),
                false,
            ),
            (
                "one presented, one submitted",
                position(&[(Pending, None), (Pending, None)]),
                position(&[(Presented, Some(0)), (Submitted, Some(0))]),
                false,
            ),
        ];
        for (case, before, after, expected) in cases {
            assert_eq!(first_look_at_new_solvers(&before, &after), expected, "{case}");
        }
    }
}
