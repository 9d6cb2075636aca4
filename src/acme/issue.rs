//! A whole issuance, driven to the end: for libraries, examples and tests. The controller drives
//! [`OrderSession::advance`] one reconcile at a time instead.

use super::account::AcmeAccount;
use super::error::{AcmeError, Retry};
use super::observe::AcmeAction;
use super::order::{Advance, AdvanceOptions, ChallengeSolver, OrderOptions, OrderSession};
use crate::pki::{CsrRequest, PrivateKey, build_csr};
use std::time::{Duration, Instant};

/// Limits of [`issue`].
#[derive(Clone, Debug)]
pub struct IssueOptions {
    pub advance: AdvanceOptions,
    /// Give up (with the last error) after this long.
    pub deadline: Duration,
    /// Retries of a step rejected for a bad nonce.
    pub bad_nonce_retries: u32,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions { advance: AdvanceOptions::default(), deadline: Duration::from_secs(120), bad_nonce_retries: 10 }
    }
}

/// An issued certificate.
#[derive(Debug)]
pub struct Issued {
    /// The chain, leaf first, as PEM.
    pub chain_pem: String,
    /// The order URL.
    pub order_url: String,
}

/// Orders a certificate for the request's names, solves the challenges and returns the chain.
pub async fn issue<S: ChallengeSolver>(
    account: &AcmeAccount,
    request: &CsrRequest,
    key: &PrivateKey,
    solver: &S,
    options: &IssueOptions,
) -> Result<Issued, AcmeError> {
    let started = Instant::now();
    let order_options = OrderOptions::default();
    let session = retrying(options, started, || {
        OrderSession::create(account, &request.dns_names, &request.ip_addresses, &order_options)
    })
    .await?;
    issue_with(session, account, request, key, solver, options).await
}

/// Drives an existing (created or resumed) order to its certificate.
pub async fn issue_with<S: ChallengeSolver>(
    session: OrderSession,
    account: &AcmeAccount,
    request: &CsrRequest,
    key: &PrivateKey,
    solver: &S,
    options: &IssueOptions,
) -> Result<Issued, AcmeError> {
    let csr = build_csr(request, key).map_err(|e| AcmeError::fatal(AcmeAction::Finalize, e.to_string()))?;
    issue_with_csr(session, account, &csr, solver, options).await
}

/// Drives an existing order to its certificate, finalizing with `csr_der` (a CSR made elsewhere, for
/// example by a Pod that keeps its key: its names must be exactly the order's identifiers).
pub async fn issue_with_csr<S: ChallengeSolver>(
    mut session: OrderSession,
    account: &AcmeAccount,
    csr_der: &[u8],
    solver: &S,
    options: &IssueOptions,
) -> Result<Issued, AcmeError> {
    let started = Instant::now();
    let csr = csr_der;
    let mut bad_nonces = 0;
    loop {
        match session.advance(account, solver, csr, &options.advance).await {
            Ok(Advance::Issued(chain_pem)) => {
                return Ok(Issued { chain_pem, order_url: session.progress().url.clone() });
            }
            Ok(Advance::Wait { after, reason }) => {
                if started.elapsed() > options.deadline {
                    return Err(AcmeError::fatal(
                        AcmeAction::Order,
                        format!("gave up after {:?}: {reason}", options.deadline),
                    ));
                }
                tokio::time::sleep(after.min(Duration::from_secs(2))).await;
            }
            Err(error) => match retry_delay(&error, &mut bad_nonces, started, options) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(error),
            },
        }
    }
}

/// How long to wait before retrying after `error`, or `None` to give up.
fn retry_delay(error: &AcmeError, bad_nonces: &mut u32, started: Instant, options: &IssueOptions) -> Option<Duration> {
    match error.retry {
        Retry::Immediately if *bad_nonces < options.bad_nonce_retries => {
            *bad_nonces += 1;
            Some(Duration::ZERO)
        }
        Retry::After(delay) if started.elapsed() + delay < options.deadline => Some(delay),
        _ => None,
    }
}

async fn retrying<T, F, Fut>(options: &IssueOptions, started: Instant, mut attempt: F) -> Result<T, AcmeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AcmeError>>,
{
    let mut bad_nonces = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => match retry_delay(&error, &mut bad_nonces, started, options) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(error),
            },
        }
    }
}
