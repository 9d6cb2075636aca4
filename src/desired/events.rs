//! The Events the issuance path publishes about a Certificate, computed from what changed.

use crate::acme::{AuthorizationStep, OrderProgress};

/// The reason of an Event about a Certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// A new ACME order was created.
    OrderCreated,
    /// The CA could not validate an identifier.
    ValidationFailed,
    /// The certificate was issued and stored.
    Issued,
    /// An issuance attempt failed.
    Failed,
    /// The Secret belongs to something else.
    SecretNotOwned,
    /// The issuer's policy refuses the Certificate.
    NotPermitted,
    /// A solver did not serve its challenge by the deadline: the attempt failed.
    SolverNotReady,
    /// A certificate was revoked.
    Revoked,
    /// A revocation failed (the CA refused it, or could not be reached).
    RevocationFailed,
    /// The Secret was written again from its certificate and key (new outputs or secretTemplate), without a
    /// new certificate.
    SecretUpdated,
    /// The Secret could not be written as the spec asks (for example the keystore password is missing).
    SecretNotUpdated,
}

impl EventReason {
    /// The CamelCase reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventReason::OrderCreated => "OrderCreated",
            EventReason::ValidationFailed => "ValidationFailed",
            EventReason::Issued => "Issued",
            EventReason::Failed => "Failed",
            EventReason::SecretNotOwned => "SecretNotOwned",
            EventReason::NotPermitted => "NotPermitted",
            EventReason::SolverNotReady => "SolverNotReady",
            EventReason::Revoked => "Revoked",
            EventReason::RevocationFailed => "RevocationFailed",
            EventReason::SecretUpdated => "SecretUpdated",
            EventReason::SecretNotUpdated => "SecretNotUpdated",
        }
    }
}

/// An Event to publish: Normal or Warning, a reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// Warning (something went wrong) or Normal.
    pub warning: bool,
    /// Why.
    pub reason: EventReason,
    /// What happened, in words.
    pub message: String,
}

impl EventNote {
    /// A Normal Event.
    pub fn normal(reason: EventReason, message: impl Into<String>) -> EventNote {
        EventNote { warning: false, reason, message: message.into() }
    }

    /// A Warning Event.
    pub fn warning(reason: EventReason, message: impl Into<String>) -> EventNote {
        EventNote { warning: true, reason, message: message.into() }
    }
}

/// The Events for the authorizations that changed between two positions of an order: one Warning per
/// authorization the CA refused, with its reason, so that no name's Event hides another's.
///
/// Progress (a challenge presented, a name validated) is not an Event: each would cost a request per name
/// and issuance, and `kubectl describe` shows it in the status (the order's authorizations and the Issuing
/// condition). What a user looks for in Events is the outcome: Issued, or why not.
pub fn authorization_events(before: &OrderProgress, after: &OrderProgress) -> Vec<EventNote> {
    let mut notes = Vec::new();
    for authorization in &after.authorizations {
        let previous = before.authorizations.iter().find(|a| a.url == authorization.url).map(|a| a.step);
        if previous == Some(authorization.step) || authorization.step != AuthorizationStep::Invalid {
            continue;
        }
        let why = authorization.message.clone().unwrap_or_default();
        notes.push(EventNote::warning(
            EventReason::ValidationFailed,
            format!("The CA could not validate {}: {why}", authorization.identifier),
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AuthorizationProgress, OrderState};

    fn authorization(identifier: &str, step: AuthorizationStep, token: Option<&str>) -> AuthorizationProgress {
        AuthorizationProgress {
            identifier: identifier.into(),
            url: format!("https://ca/authz/{identifier}"),
            challenge_url: None,
            token: token.map(Into::into),
            step,
            presented_at: None,
            message: (step == AuthorizationStep::Invalid).then(|| "connection refused".into()),
        }
    }

    fn order(authorizations: Vec<AuthorizationProgress>) -> OrderProgress {
        OrderProgress {
            url: "https://ca/order/1".into(),
            state: OrderState::Pending,
            identifiers: authorizations.iter().map(|a| a.identifier.clone()).collect(),
            authorizations,
        }
    }

    fn reasons(notes: &[EventNote]) -> Vec<(EventReason, &str)> {
        notes.iter().map(|n| (n.reason, n.message.as_str())).collect()
    }

    #[test]
    fn only_an_authorization_the_ca_refused_gets_an_event() {
        use AuthorizationStep::*;
        // (case, before, after, expected events)
        let cases: Vec<(&str, Vec<AuthorizationProgress>, Vec<AuthorizationProgress>, Vec<(EventReason, &str)>)> = vec![
            (
                "nothing changed",
                vec![authorization("a", Submitted, Some("t"))],
                vec![authorization("a", Submitted, Some("t"))],
                vec![],
            ),
            (
                "presenting is progress, shown in status only",
                vec![authorization("a", Pending, Some("t")), authorization("b", Presented, Some("u"))],
                vec![authorization("a", Submitted, Some("t")), authorization("b", Submitted, Some("u"))],
                vec![],
            ),
            (
                "validating is progress, shown in status only",
                vec![authorization("a", Pending, Some("t"))],
                vec![authorization("a", Valid, Some("t"))],
                vec![],
            ),
            (
                "a refused challenge is a warning with the CA's words",
                vec![authorization("a", Submitted, Some("t"))],
                vec![authorization("a", Invalid, Some("t"))],
                vec![(EventReason::ValidationFailed, "The CA could not validate a: connection refused")],
            ),
            (
                "each refused name has its own warning",
                vec![authorization("a", Submitted, Some("t")), authorization("b", Submitted, Some("u"))],
                vec![authorization("a", Invalid, Some("t")), authorization("b", Invalid, Some("u"))],
                vec![
                    (EventReason::ValidationFailed, "The CA could not validate a: connection refused"),
                    (EventReason::ValidationFailed, "The CA could not validate b: connection refused"),
                ],
            ),
        ];
        for (case, before, after, expected) in cases {
            let notes = authorization_events(&order(before), &order(after));
            assert_eq!(reasons(&notes), expected, "{case}");
        }
        let refused =
            authorization_events(&order(vec![]), &order(vec![authorization("a", AuthorizationStep::Invalid, None)]));
        assert!(refused[0].warning);
    }
}
