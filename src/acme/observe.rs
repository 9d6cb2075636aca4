//! Hooks for metrics: every ACME request, counted and timed by action and outcome.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What an ACME request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AcmeAction {
    Directory,
    Nonce,
    Account,
    Order,
    Authorization,
    Challenge,
    Finalize,
    Certificate,
    /// ACME Renewal Information (RFC 9773).
    RenewalInfo,
    /// Revoking a certificate.
    Revocation,
}

impl AcmeAction {
    /// The metric label of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeAction::Directory => "directory",
            AcmeAction::Nonce => "nonce",
            AcmeAction::Account => "account",
            AcmeAction::Order => "order",
            AcmeAction::Authorization => "authz",
            AcmeAction::Challenge => "challenge",
            AcmeAction::Finalize => "finalize",
            AcmeAction::Certificate => "certificate",
            AcmeAction::RenewalInfo => "renewalInfo",
            AcmeAction::Revocation => "revocation",
        }
    }
}

/// How an ACME request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AcmeOutcome {
    /// A 2xx (or 3xx) answer.
    Success,
    /// A 4xx answer: a problem document from the CA.
    ClientError,
    /// A 5xx answer.
    ServerError,
    /// No answer: connection refused, TLS failure, timeout.
    NetworkError,
}

impl AcmeOutcome {
    /// The metric label of the outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeOutcome::Success => "success",
            AcmeOutcome::ClientError => "client_error",
            AcmeOutcome::ServerError => "server_error",
            AcmeOutcome::NetworkError => "network_error",
        }
    }

    pub(crate) fn from_status(status: u16) -> AcmeOutcome {
        match status {
            500.. => AcmeOutcome::ServerError,
            400..=499 => AcmeOutcome::ClientError,
            _ => AcmeOutcome::Success,
        }
    }
}

/// Receives one call per ACME request. Implementations must be cheap: they run on the request path.
pub trait AcmeObserver: Send + Sync + 'static {
    fn request_finished(&self, action: AcmeAction, outcome: AcmeOutcome, elapsed: Duration);
}

/// Ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;

impl AcmeObserver for NoObserver {
    fn request_finished(&self, _: AcmeAction, _: AcmeOutcome, _: Duration) {}
}

/// Counts requests and sums their time per (action, outcome); for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct RequestCounter {
    counts: Mutex<BTreeMap<(AcmeAction, AcmeOutcome), (u64, Duration)>>,
}

impl RequestCounter {
    /// Requests so far per (action, outcome), with their total time.
    pub fn snapshot(&self) -> BTreeMap<(AcmeAction, AcmeOutcome), (u64, Duration)> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().map(|(n, _)| n).sum()
    }

    /// Requests so far for one action, whatever the outcome.
    pub fn count(&self, action: AcmeAction) -> u64 {
        self.snapshot().iter().filter(|((a, _), _)| *a == action).map(|(_, (n, _))| n).sum()
    }
}

impl AcmeObserver for RequestCounter {
    fn request_finished(&self, action: AcmeAction, outcome: AcmeOutcome, elapsed: Duration) {
        if let Ok(mut counts) = self.counts.lock() {
            let entry = counts.entry((action, outcome)).or_default();
            entry.0 += 1;
            entry.1 += elapsed;
        }
    }
}

tokio::task_local! {
    /// The action the engine is performing; the HTTP client labels requests with it.
    pub(crate) static CURRENT_ACTION: AcmeAction;
}

/// Runs `future` with its ACME requests labelled `action` (nonce requests are always labelled `nonce`).
pub(crate) async fn labelled<F: std::future::Future>(action: AcmeAction, future: F) -> F::Output {
    CURRENT_ACTION.scope(action, future).await
}
