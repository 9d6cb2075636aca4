//! ACME errors, classified so that a controller knows what to do: retry soon, retry later, or give up.

use super::observe::AcmeAction;
use std::time::Duration;

/// The RFC 8555 problem type prefix.
pub const PROBLEM_PREFIX: &str = "urn:ietf:params:acme:error:";

/// A problem document from the CA, with its type and the CA's own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemDetail {
    /// The full problem type, for example `urn:ietf:params:acme:error:rejectedIdentifier`.
    pub kind: String,
    /// The CA's detail text, with the details of any subproblems appended.
    pub detail: String,
    /// The HTTP status the CA gave, if any.
    pub status: Option<u16>,
}

impl ProblemDetail {
    /// The short problem name, for example `rejectedIdentifier`.
    pub fn short_kind(&self) -> &str {
        self.kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(&self.kind)
    }

    pub(crate) fn from_problem(problem: &instant_acme::Problem) -> ProblemDetail {
        let mut detail = problem.detail.clone().unwrap_or_default();
        for sub in &problem.subproblems {
            let identifier = sub.identifier.as_ref().map(|i| format!("{i:?}")).unwrap_or_default();
            detail.push_str(&format!(
                "; {identifier} {}: {}",
                sub.r#type.as_deref().map(|t| t.strip_prefix(PROBLEM_PREFIX).unwrap_or(t)).unwrap_or("problem"),
                sub.detail.as_deref().unwrap_or_default()
            ));
        }
        ProblemDetail {
            kind: problem.r#type.clone().unwrap_or_else(|| "about:blank".into()),
            detail,
            status: problem.status,
        }
    }
}

impl std::fmt::Display for ProblemDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `about:blank` (RFC 7807): the problem means no more than its HTTP status, which the detail names.
        match self.kind.as_str() {
            "about:blank" => f.write_str(&self.detail),
            _ => write!(f, "{}: {}", self.short_kind(), self.detail),
        }
    }
}

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retry the same step at once (a rejected nonce).
    Immediately,
    /// Retry after this delay (rate limit, CA unavailable, network failure).
    After(Duration),
    /// Do not retry this order: the CA refused it, or the input can never work.
    Never,
}

/// An ACME engine error: which action failed, the CA's problem if it sent one, and whether to retry.
#[derive(Debug, thiserror::Error)]
#[error("ACME {} failed: {message}", action.as_str())]
pub struct AcmeError {
    pub action: AcmeAction,
    pub retry: Retry,
    pub problem: Option<ProblemDetail>,
    pub message: String,
}

/// Delay before retrying after a CA outage or a network failure, unless the CA said otherwise.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);
/// Delay before retrying after a rate limit, unless the CA said otherwise.
pub const RATE_LIMIT_RETRY_DELAY: Duration = Duration::from_secs(60);

impl AcmeError {
    /// A final error that did not come from the CA (bad input, unsupported challenge types...).
    pub fn fatal(action: AcmeAction, message: impl Into<String>) -> AcmeError {
        AcmeError { action, retry: Retry::Never, problem: None, message: message.into() }
    }

    /// A final error carrying a problem the CA reported (for example an invalid challenge).
    pub fn from_ca_problem(action: AcmeAction, problem: &instant_acme::Problem) -> AcmeError {
        let problem = ProblemDetail::from_problem(problem);
        AcmeError { action, retry: retry_for_problem(&problem), message: problem.to_string(), problem: Some(problem) }
    }

    /// Classifies an instant-acme error.
    pub fn classify(action: AcmeAction, error: instant_acme::Error) -> AcmeError {
        use instant_acme::Error as E;
        match error {
            E::Api(problem) => AcmeError::from_ca_problem(action, &problem),
            E::Timeout(until) => {
                let delay = until
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or(Duration::from_secs(1));
                AcmeError {
                    action,
                    retry: Retry::After(delay),
                    problem: None,
                    message: "the CA has not finished yet".into(),
                }
            }
            E::Crypto | E::KeyRejected => AcmeError::fatal(action, error.to_string()),
            E::Unsupported(what) => AcmeError::fatal(action, format!("the CA does not support {what}")),
            // Transport, unparseable answers (an HTML error page from a proxy), missing headers: the CA or
            // the network is having trouble; try again later.
            other => AcmeError {
                action,
                retry: Retry::After(DEFAULT_RETRY_DELAY),
                problem: None,
                message: error_chain(&other),
            },
        }
    }

    /// Whether the problem type is `short_kind` (for example `badNonce`).
    pub fn is_problem(&self, short_kind: &str) -> bool {
        self.problem.as_ref().is_some_and(|p| p.short_kind() == short_kind)
    }

    /// Whether retrying could help.
    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::Never
    }
}

fn retry_for_problem(problem: &ProblemDetail) -> Retry {
    match problem.short_kind() {
        "badNonce" => Retry::Immediately,
        "rateLimited" => Retry::After(RATE_LIMIT_RETRY_DELAY),
        "serverInternal" | "orderNotReady" => Retry::After(DEFAULT_RETRY_DELAY),
        _ if problem.status == Some(429) => Retry::After(RATE_LIMIT_RETRY_DELAY),
        _ if problem.status.is_some_and(|s| s >= 500) => Retry::After(DEFAULT_RETRY_DELAY),
        _ => Retry::Never,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, status: u16) -> instant_acme::Problem {
        serde_json::from_value(serde_json::json!({
            "type": format!("{PROBLEM_PREFIX}{kind}"), "detail": format!("the CA says {kind}"), "status": status
        }))
        .unwrap()
    }

    #[test]
    fn problems_are_classified_by_what_a_retry_can_achieve() {
        let cases = [
            ("badNonce", 400, Retry::Immediately),
            ("rateLimited", 429, Retry::After(RATE_LIMIT_RETRY_DELAY)),
            ("serverInternal", 500, Retry::After(DEFAULT_RETRY_DELAY)),
            ("somethingNew", 503, Retry::After(DEFAULT_RETRY_DELAY)),
            ("orderNotReady", 403, Retry::After(DEFAULT_RETRY_DELAY)),
            ("rejectedIdentifier", 400, Retry::Never),
            ("unauthorized", 403, Retry::Never),
            ("malformed", 400, Retry::Never),
            ("caa", 403, Retry::Never),
            ("incorrectResponse", 403, Retry::Never),
            ("connection", 400, Retry::Never),
            ("badCSR", 400, Retry::Never),
            ("externalAccountRequired", 401, Retry::Never),
        ];
        for (kind, status, retry) in cases {
            let error = AcmeError::classify(AcmeAction::Order, instant_acme::Error::Api(problem(kind, status)));
            assert_eq!(error.retry, retry, "{kind}");
            assert!(error.is_problem(kind), "{kind}");
            assert!(error.to_string().contains(&format!("the CA says {kind}")), "{kind}: the CA's words are kept");
        }
    }

    #[test]
    fn transport_failures_are_retried_later_and_crypto_failures_never() {
        let network =
            AcmeError::classify(AcmeAction::Directory, instant_acme::Error::Other("connection refused".into()));
        assert_eq!(network.retry, Retry::After(DEFAULT_RETRY_DELAY));
        assert!(network.message.contains("connection refused"));
        assert_eq!(AcmeError::classify(AcmeAction::Account, instant_acme::Error::KeyRejected).retry, Retry::Never);
    }
}
