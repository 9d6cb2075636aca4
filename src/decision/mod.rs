//! Pure decisions: functions of observed state and `now` that return what to do next. They never touch
//! a client, a clock or the network, and are unit-tested with plain values.

mod backoff;
mod identifiers;
mod issuance;
pub mod issuer_restrictions;
mod ownership;
pub mod policy;
mod renewal;
pub mod solver_template;

pub use crate::api::IssuanceReason;
pub use backoff::BackoffPolicy;
pub use identifiers::{order_is_for_another_issuer, same_identifiers};
pub use issuance::{
    IssuanceDecision, Observed, issuance_decision, issued_differs_from_spec, renewal_schedule, replaced_certificate,
    usages_annotation,
};
pub use ownership::{SecretOwnership, next_key_ownership, secret_ownership};
pub use renewal::{RenewBefore, RenewalWindow, renewal_in_window, renewal_time};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
