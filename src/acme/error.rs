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

    /// The problem as kacme shows it in conditions and Events: the CA's words kept, but bounded by
    /// [`ca_text`] (the detail to [`MAX_DETAIL_CHARS`], each of the first [`MAX_SUBPROBLEMS`] subproblems
    /// to [`MAX_SUBPROBLEM_CHARS`], the type to [`MAX_KIND_CHARS`]), without control characters.
    pub(crate) fn from_problem(problem: &instant_acme::Problem) -> ProblemDetail {
        let mut detail = ca_text(problem.detail.as_deref().unwrap_or_default(), MAX_DETAIL_CHARS);
        for sub in problem.subproblems.iter().take(MAX_SUBPROBLEMS) {
            let identifier = sub.identifier.as_ref().map(|i| format!("{i:?}")).unwrap_or_default();
            let kind = sub.r#type.as_deref().map(|t| t.strip_prefix(PROBLEM_PREFIX).unwrap_or(t)).unwrap_or("problem");
            let text = format!("{identifier} {kind}: {}", sub.detail.as_deref().unwrap_or_default());
            detail.push_str("; ");
            detail.push_str(&ca_text(&text, MAX_SUBPROBLEM_CHARS));
        }
        if problem.subproblems.len() > MAX_SUBPROBLEMS {
            detail.push_str(&format!("; and {} more subproblems", problem.subproblems.len() - MAX_SUBPROBLEMS));
        }
        ProblemDetail {
            kind: ca_text(problem.r#type.as_deref().unwrap_or("about:blank"), MAX_KIND_CHARS),
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

/// The most characters of a CA's problem detail that kacme shows.
pub const MAX_DETAIL_CHARS: usize = 512;
/// The most subproblems of one problem that kacme shows.
pub const MAX_SUBPROBLEMS: usize = 5;
/// The most characters of one subproblem that kacme shows.
pub const MAX_SUBPROBLEM_CHARS: usize = 200;
/// The most characters of a problem type that kacme shows.
pub const MAX_KIND_CHARS: usize = 100;
/// The most characters of an error that did not come with a problem document (a transport error, an
/// unreadable answer) that kacme shows.
pub const MAX_ERROR_CHARS: usize = 512;

/// Text a CA (or the network) sent, made fit for a condition, an Event or a log line: control characters
/// (newlines, escape sequences, NUL, bidirectional overrides...) become spaces, runs of whitespace become
/// one space, and the result is cut to `max_chars` characters with `…` marking the cut. What a CA says
/// reaches users, but never verbatim: it cannot forge lines in `kubectl describe`, colour a terminal or
/// fill a status with megabytes.
pub fn ca_text(text: &str, max_chars: usize) -> String {
    let cleaned: String = text.chars().map(|c| if is_unsafe_char(c) { ' ' } else { c }).collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let mut shown: String = collapsed.chars().take(max_chars.saturating_sub(1)).collect();
    shown.truncate(shown.trim_end().len());
    shown.push('…');
    shown
}

/// Control characters, and the invisible format characters that reorder or hide text (Unicode
/// bidirectional controls, zero-width characters, the byte order mark).
fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
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
                message: ca_text(&error_chain(&other), MAX_ERROR_CHARS),
            },
        }
    }

    /// Whether the problem type is `short_kind` (for example `badNonce`).
    pub fn is_problem(&self, short_kind: &str) -> bool {
        self.problem.as_ref().is_some_and(|p| p.short_kind() == short_kind)
    }

    /// Whether this error, the answer to a new order that asked for a lifetime (`notAfter`), is the CA
    /// refusing that lifetime: a final 4xx problem whose detail names it (duration, notAfter, validity,
    /// lifetime). Other refusals (a name, the account, a malformed request) stay ordinary failures.
    pub fn refuses_lifetime(&self) -> bool {
        self.retry == Retry::Never
            && self
                .problem
                .as_ref()
                .is_some_and(|p| p.status.is_none_or(|s| (400..500).contains(&s)) && names_the_lifetime(&p.detail))
    }

    /// Whether this error, the answer to finalizing an order that asked for a lifetime, is probably the
    /// CA refusing that lifetime at signing time: a 4xx problem that names the duration or `notAfter`,
    /// or a `serverInternal` 500 (step-ca 0.30 answers so when the lifetime is above its provisioner's
    /// maximum, with the reason only in its own log).
    pub fn finalize_refuses_lifetime(&self) -> bool {
        let Some(problem) = &self.problem else { return false };
        match problem.status {
            Some(status) if (400..500).contains(&status) => {
                names_the_lifetime(&problem.detail) && self.retry == Retry::Never
            }
            // step-ca's problem document carries no status.
            Some(500) | None => problem.short_kind() == "serverInternal",
            _ => false,
        }
    }

    /// Whether retrying could help.
    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::Never
    }
}

/// Whether a CA's detail text is about the certificate's lifetime.
fn names_the_lifetime(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    ["duration", "notafter", "validity", "lifetime"].iter().any(|word| detail.contains(word))
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
    fn only_a_final_refusal_that_names_the_lifetime_refuses_it() {
        let refusal = |kind: &str, status: u16, detail: &str| {
            let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
                "type": format!("{PROBLEM_PREFIX}{kind}"), "detail": detail, "status": status
            }))
            .unwrap();
            AcmeError::classify(AcmeAction::Order, instant_acme::Error::Api(problem))
        };
        let cases = [
            (refusal("unauthorized", 403, "requested duration of 48h is more than the maximum"), true),
            (refusal("malformed", 400, "notAfter is not supported"), true),
            (refusal("malformed", 400, "All requests MUST include a User-Agent header"), false),
            (refusal("rejectedIdentifier", 400, "name not allowed"), false),
            (refusal("rateLimited", 429, "too many certificates with this validity"), false),
            (refusal("serverInternal", 500, "duration store down"), false),
        ];
        for (error, refuses) in cases {
            assert_eq!(error.refuses_lifetime(), refuses, "{error}");
        }
        assert!(!AcmeError::fatal(AcmeAction::Order, "duration").refuses_lifetime(), "not from the CA");
    }

    #[test]
    fn a_finalize_failure_refuses_the_lifetime_when_it_names_it_or_the_ca_failed_to_sign() {
        let with_detail = |kind: &str, status: u16, detail: &str| {
            let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
                "type": format!("{PROBLEM_PREFIX}{kind}"), "detail": detail, "status": status
            }))
            .unwrap();
            AcmeError::classify(AcmeAction::Finalize, instant_acme::Error::Api(problem))
        };
        let cases = [
            ("a 403 naming the duration", with_detail("unauthorized", 403, "requested duration of 48h is more"), true),
            ("a 400 naming notAfter", with_detail("malformed", 400, "NotAfter is too late"), true),
            ("step-ca's 500", with_detail("serverInternal", 500, "The server experienced an internal error"), true),
            ("a bad CSR", with_detail("badCSR", 400, "the CSR's names differ"), false),
            ("a 503", with_detail("serverInternal", 503, "maintenance"), false),
            (
                "step-ca's 500 without a status in the document",
                {
                    let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
                    "type": format!("{PROBLEM_PREFIX}serverInternal"), "detail": "The server experienced an internal error"
                }))
                .unwrap();
                    AcmeError::classify(AcmeAction::Finalize, instant_acme::Error::Api(problem))
                },
                true,
            ),
            ("no problem document", AcmeError::fatal(AcmeAction::Finalize, "duration"), false),
        ];
        for (case, error, refuses) in cases {
            assert_eq!(error.finalize_refuses_lifetime(), refuses, "{case}");
        }
    }

    #[test]
    fn text_from_a_ca_is_bounded_and_stripped_of_control_characters() {
        let long = "x".repeat(1000);
        // (case, text, max, shown)
        let cases: Vec<(&str, &str, usize, String)> = vec![
            ("plain words are kept", "no such order", 100, "no such order".into()),
            ("newlines become one space", "line one\r\n\nline two", 100, "line one line two".into()),
            ("escape sequences are gone", "red \u{1b}[31malert\u{1b}[0m", 100, "red [31malert [0m".into()),
            ("NUL and bell are gone", "a\0b\u{7}c", 100, "a b c".into()),
            ("bidirectional overrides are gone", "abc\u{202e}fed", 100, "abc fed".into()),
            ("zero-width characters are gone", "we\u{200b}b", 100, "we b".into()),
            ("leading and trailing whitespace goes", "  \t hello \n ", 100, "hello".into()),
            ("a long text is cut with a mark", long.as_str(), 10, format!("{}…", "x".repeat(9))),
            ("a text of exactly the bound is whole", "0123456789", 10, "0123456789".into()),
            ("non-ASCII letters count as one", "ééééé", 3, "éé…".into()),
            ("nothing but control characters is empty", "\n\r\t", 10, String::new()),
        ];
        for (case, text, max, shown) in cases {
            let got = ca_text(text, max);
            assert_eq!(got, shown, "{case}");
            assert!(got.chars().count() <= max, "{case}: {got}");
        }
    }

    #[test]
    fn a_problem_is_shown_bounded_with_the_cas_detail_kept() {
        let sub = serde_json::json!({"type": format!("{PROBLEM_PREFIX}rejectedIdentifier"), "detail": "no\nway"});
        let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": format!("{PROBLEM_PREFIX}rejectedIdentifier\n"),
            "detail": format!("name not allowed by policy\n\u{1b}[2J{}", "y".repeat(5000)),
            "status": 400,
            "subproblems": vec![sub; 40],
        }))
        .unwrap();
        let shown = ProblemDetail::from_problem(&problem);
        let text = shown.to_string();
        assert!(text.starts_with("rejectedIdentifier: name not allowed by policy [2J"), "{text}");
        assert!(text.len() < 2048, "{} bytes", text.len());
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("no way"), "a subproblem's words are kept: {text}");
        assert!(text.ends_with("and 35 more subproblems"), "{text}");
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
