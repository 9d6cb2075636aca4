//! Desired state: pure builders of the objects and status the Certificate controller writes.
//!
//! Everything here is a function of plain values (the Certificate, the issuer's spec, an ACME challenge,
//! the time as a parameter) and never touches a client, a clock or the network. The controller applies
//! what these functions return and deletes labelled leftovers it did not build.
//!
//! - [`select_solver`]: which of an issuer's solvers serves an identifier, with cert-manager's precedence.
//! - [`solver_name`], [`token_hash`], [`certificate_label_value`], [`next_key_secret_name`]: deterministic,
//!   valid names and label values.
//! - [`build_solver_pod`], [`build_solver_service`], [`build_solver_ingress`]: the transient HTTP-01
//!   solver objects of one challenge.
//! - [`build_certificate_secret`], [`build_next_key_secret`]: the Certificate's Secret and the Secret
//!   that holds the private key of an issuance in progress.
//! - [`set_condition`], [`remove_condition`], [`status_changed`]: status conditions, written only when
//!   something meaningful changed.
//! - [`StatusTransition`]: the Certificate status after each step of the issuance path;
//!   [`authorization_events`] and [`EventNote`]: the Events it publishes.
//! - [`order_status`], [`order_progress`]: the order in flight between the engine and status.
//! - [`requeue_at`]: the renewal requeue time with a per-Certificate jitter.

#![warn(missing_docs)]

mod conditions;
mod events;
mod names;
mod order_status;
#[cfg(test)]
mod properties;
mod requeue;
mod secret;
mod solver_objects;
mod solver_route;
mod solver_selection;
mod solver_wait;
mod status;

pub use conditions::{ConditionStatus, condition_is, find_condition, remove_condition, set_condition, status_changed};
pub use events::{EventNote, EventReason, authorization_events};
pub use names::{
    certificate_label_value, namespace_account_secret_name, next_key_secret_name, solver_name, token_hash,
};
pub use order_status::{order_progress, order_status};
pub use requeue::requeue_at;
pub use secret::{
    MAX_KEYSTORE_PASSWORD_BYTES, TLS_SECRET_TYPE, additional_outputs, build_certificate_secret, build_next_key_secret,
    keystore_password, keystore_password_key, outputs_annotation, pkcs12_wanted, secret_rewrite_needed,
};
pub use solver_objects::{
    SOLVER_CONTAINER_NAME, SOLVER_PORT, SOLVER_PORT_NAME, SOLVER_USER_ID, SolverContext, build_solver_ingress,
    build_solver_pod, build_solver_service, default_solver_resources, hand_to_solver_pod, solver_selector_labels,
};
pub use solver_route::{
    RouteAcceptance, build_solver_http_route, route_acceptance, solver_parent_refs, solver_workload,
};
pub use solver_selection::select_solver;
pub use solver_wait::{DEFAULT_AUTHORIZATION_DEADLINE, SolverWait, first_look_at_new_solvers, solver_wait};
pub use status::{IssuerWait, StatusTransition, UP_TO_DATE_MESSAGE, Validity};

#[cfg(test)]
pub(crate) mod testing;
