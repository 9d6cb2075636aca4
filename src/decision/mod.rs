//! Pure decisions: functions of observed state and `now` that return what to do next. They never touch
//! a client, a clock or the network, and are unit-tested with plain values.

mod backoff;
mod issuance;
mod renewal;

pub use backoff::BackoffPolicy;
pub use issuance::{
    IssuanceDecision, IssuanceReason, Observed, SecretOwnership, issuance_decision, secret_ownership, usages_annotation,
};
pub use renewal::{RenewBefore, renewal_time};

#[cfg(test)]
mod tests;
