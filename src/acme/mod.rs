//! The ACME engine: accounts, orders as resumable state machines, HTTP-01 through a solver trait, error
//! classification and metrics hooks. It knows nothing of Kubernetes.
//!
//! A whole issuance in a few lines:
//!
//! ```no_run
//! # async fn example(solver: impl kacme::acme::ChallengeSolver) -> Result<(), Box<dyn std::error::Error>> {
//! use kacme::acme::{AccountSpec, AcmeAccount, CaTrust, IssueOptions, NoObserver, issue};
//! use kacme::pki::{CsrRequest, KeySpec, generate_private_key};
//! use std::sync::Arc;
//!
//! let spec = AccountSpec {
//!     directory_url: "https://ca.internal/acme/acme/directory".into(),
//!     email: None,
//!     external_account: None,
//!     trust: CaTrust::Bundle(kacme::pki::parse_ca_bundle(&std::fs::read("root_ca.crt")?)?),
//! };
//! let account = AcmeAccount::register(&spec, None, Arc::new(NoObserver)).await?.account;
//! let key = generate_private_key(&KeySpec::from_spec(None))?;
//! let request = CsrRequest { dns_names: vec!["app.internal".into()], ..Default::default() };
//! let chain_pem = issue(&account, &request, &key, &solver, &IssueOptions::default()).await?.chain_pem;
//! # Ok(()) }
//! ```

mod account;
mod challenge;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod http;
mod issue;
mod jws;
mod lifetime;
mod new_account;
mod observe;
mod order;
mod renewal_info;
mod resubmission;
mod revocation;
mod selfcheck;

pub use account::{
    AccountKey, AccountOrigin, AccountRecord, AccountSpec, AcmeAccount, ExternalAccountBinding, Registration,
    decode_eab_hmac_key,
};
pub use challenge::{CHALLENGE_PATH_PREFIX, Http01Challenge, check_challenge, check_identifier, check_token};
pub use error::{AcmeError, DEFAULT_RETRY_DELAY, PROBLEM_PREFIX, ProblemDetail, Retry, ca_text};
pub use http::CaTrust;
pub use issue::{IssueOptions, Issued, issue, issue_with, issue_with_csr};
pub use lifetime::rfc3339;
pub use observe::{AcmeAction, AcmeObserver, AcmeOutcome, NoObserver, RequestCounter};
pub use order::{
    Advance, AdvanceOptions, AuthorizationProgress, AuthorizationStep, ChallengeSolver, OrderOptions, OrderProgress,
    OrderSession, OrderState, Presentation, SolverError, challenges_with_solvers, order_identifiers,
};
pub use renewal_info::RenewalSuggestion;
pub use revocation::RevocationReason;
pub use selfcheck::SelfCheck;
