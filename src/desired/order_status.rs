//! Between the engine's order position and the Certificate status: a lossless round trip, so that a
//! restarted operator resumes the order from status.

use super::solver_name;
use crate::acme::{AuthorizationProgress, AuthorizationStep, OrderProgress, OrderState};
use crate::api::{AuthorizationStatus, OrderStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn step_name(step: AuthorizationStep) -> &'static str {
    match step {
        AuthorizationStep::Pending => "pending",
        AuthorizationStep::Presented => "presented",
        AuthorizationStep::Submitted => "submitted",
        AuthorizationStep::Valid => "valid",
        AuthorizationStep::Invalid => "invalid",
        AuthorizationStep::Gone => "gone",
    }
}

fn step_from_name(name: Option<&str>) -> AuthorizationStep {
    match name {
        Some("presented") => AuthorizationStep::Presented,
        Some("submitted") => AuthorizationStep::Submitted,
        Some("valid") => AuthorizationStep::Valid,
        Some("invalid") => AuthorizationStep::Invalid,
        Some("gone") => AuthorizationStep::Gone,
        _ => AuthorizationStep::Pending,
    }
}

fn order_state_from_name(name: Option<&str>) -> OrderState {
    match name {
        Some("ready") => OrderState::Ready,
        Some("processing") => OrderState::Processing,
        Some("valid") => OrderState::Valid,
        Some("invalid") => OrderState::Invalid,
        _ => OrderState::Pending,
    }
}

/// The status form of an order position, naming the solver objects of each authorization.
pub fn order_status(
    progress: &OrderProgress,
    certificate_name: &str,
    key_authorization: impl Fn(&str) -> String,
) -> OrderStatus {
    OrderStatus {
        url: progress.url.clone(),
        state: Some(progress.state.as_str().to_string()),
        identifiers: progress.identifiers.clone(),
        authorizations: progress
            .authorizations
            .iter()
            .map(|a| AuthorizationStatus {
                identifier: a.identifier.clone(),
                url: a.url.clone(),
                challenge_url: a.challenge_url.clone(),
                token: a.token.clone(),
                state: Some(step_name(a.step).to_string()),
                presented_at: a.presented_at.and_then(|s| jiff::Timestamp::from_second(s as i64).ok()).map(Time),
                solver_name: match (&a.token, a.solver_may_exist()) {
                    (Some(token), true) => Some(solver_name(
                        certificate_name,
                        &crate::acme::Http01Challenge {
                            identifier: a.identifier.clone(),
                            token: token.clone(),
                            key_authorization: key_authorization(token),
                            authorization_url: a.url.clone(),
                        },
                    )),
                    _ => None,
                },
                message: a.message.clone(),
            })
            .collect(),
    }
}

/// The engine's order position from status.
pub fn order_progress(status: &OrderStatus) -> OrderProgress {
    OrderProgress {
        url: status.url.clone(),
        state: order_state_from_name(status.state.as_deref()),
        identifiers: status.identifiers.clone(),
        authorizations: status
            .authorizations
            .iter()
            .map(|a| AuthorizationProgress {
                identifier: a.identifier.clone(),
                url: a.url.clone(),
                challenge_url: a.challenge_url.clone(),
                token: a.token.clone(),
                step: step_from_name(a.state.as_deref()),
                presented_at: a.presented_at.as_ref().map(|t| t.0.as_second().max(0) as u64),
                message: a.message.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_position_survives_the_round_trip_through_status() {
        let progress = OrderProgress {
            url: "https://ca/order/1".into(),
            state: OrderState::Pending,
            identifiers: vec!["a.example.test".into(), "127.0.0.1".into()],
            authorizations: [
                AuthorizationStep::Pending,
                AuthorizationStep::Presented,
                AuthorizationStep::Submitted,
                AuthorizationStep::Valid,
                AuthorizationStep::Invalid,
                AuthorizationStep::Gone,
            ]
            .into_iter()
            .enumerate()
            .map(|(i, step)| AuthorizationProgress {
                identifier: format!("n{i}.example.test"),
                url: format!("https://ca/authz/{i}"),
                challenge_url: Some(format!("https://ca/chall/{i}")),
                token: Some(format!("token{i}")),
                step,
                presented_at: Some(1_700_000_000 + i as u64),
                message: Some(format!("message {i}")),
            })
            .collect(),
        };
        for state in
            [OrderState::Pending, OrderState::Ready, OrderState::Processing, OrderState::Valid, OrderState::Invalid]
        {
            let progress = OrderProgress { state, ..progress.clone() };
            let status = order_status(&progress, "web", |t| format!("{t}.thumb"));
            assert_eq!(order_progress(&status), progress, "{state:?}");
        }
        let status = order_status(&progress, "web", |t| format!("{t}.thumb"));
        let names: Vec<bool> = status.authorizations.iter().map(|a| a.solver_name.is_some()).collect();
        assert_eq!(names, [false, true, true, false, false, false], "solver names only while solver objects may exist");
    }
}
