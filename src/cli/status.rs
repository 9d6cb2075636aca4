//! `kacme status`: a Certificate's story on one screen, computed from what was read (pure: objects and the
//! time in, a [`StatusReport`] out; [`render_status`] turns it into text, serde into JSON).
//!
//! # The JSON shape (`kacme status -o json`), version 1
//!
//! One object, camelCase keys; fields may be added, none is renamed or removed within a version:
//! - `version` (1), `namespace`, `name`, `ready` (bool: the Ready condition is True);
//! - `spec`: `secretName`, `issuer` {`kind`, `name`}, `dnsNames`, `ipAddresses`, `commonName`;
//! - `conditions`: the Certificate's conditions as the API holds them (`type`, `status`, `reason`,
//!   `message`, `lastTransitionTime`, `observedGeneration`);
//! - `secret`: `name`, `state` (`current` | `missing` | `notOwned` | `unreadable` | `invalid`), `message`,
//!   and for a current Secret `certificate` (the leaf: `subject`, `issuer`, `dnsNames`, `ipAddresses`,
//!   `serial` as lowercase hex, `notBefore`, `notAfter`, `publicKey`, `keyUsages`, `extendedKeyUsages`,
//!   `isCa`, `sha256Fingerprint`), `chain` (subjects of the certificates after the leaf), `caCrt` (subjects
//!   of ca.crt), `privateKey` (`matches` | `doesNotMatch` | `absent` | `unreadable`) and `chainCheck`
//!   (`verifies` | `doesNotVerify` | `noCaCrt`);
//! - `renewal`: `notBefore`, `notAfter`, `renewalTime`, `why` (words), `renewalInfo` (the CA's window as
//!   status.renewalInfo holds it), `failedIssuanceAttempts`, `lastFailureTime`;
//! - `revocation`: status.revocation, when present;
//! - `order`: status.order (the order in flight: `url`, `state`, `identifiers`, `authorizations` each with
//!   `identifier`, `state`, `message`, ...), when present;
//! - `events`: the Certificate's Events, oldest first: `type`, `reason`, `message`, `count`, `lastSeen`;
//! - `solverObjects`: `kind`, `name`, `detail` of the solver Pods, Services and Ingresses it owns;
//! - `unread`: what could not be read (for example Secrets, when the user may not read them).
//!
//! Never a private key or Secret data other than the public certificate facts.

use super::inspect::{ChainCheck, KeyCheck, inspect_secret};
use super::style::Style;
use super::x509::CertificateFacts;
use crate::api::{Certificate, IssuerKind, OrderStatus, RevocationStatus};
use crate::decision::{SecretOwnership, secret_ownership};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;
use std::fmt::Write as _;

/// How many Events the text shows (the most recent); the JSON holds them all.
pub const EVENTS_SHOWN: usize = 20;

/// What the thin read layer found for one Certificate.
#[derive(Clone, Debug)]
pub struct StatusInput {
    pub certificate: Certificate,
    pub secret: SecretRead,
    /// Events whose involved object is the Certificate (any order; Events of an earlier Certificate of the
    /// same name are left out by UID).
    pub events: Vec<Event>,
    /// Solver objects labelled for and owned by the Certificate.
    pub solver_objects: Vec<SolverObject>,
    /// What could not be read, and why.
    pub unread: Vec<String>,
}

/// The outcome of reading the Certificate's Secret.
#[derive(Clone, Debug)]
pub enum SecretRead {
    Found(Box<Secret>),
    NotFound,
    /// Forbidden, or another error: the words say which.
    Unreadable(String),
}

/// A solver Pod, Service or Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SolverObject {
    /// `Pod`, `Service` or `Ingress`.
    pub kind: String,
    pub name: String,
    /// The Pod's phase, the Ingress's host and path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Everything `kacme status` shows; see the module for the JSON shape.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub version: u32,
    pub namespace: String,
    pub name: String,
    pub ready: bool,
    pub spec: SpecSummary,
    pub conditions: Vec<Condition>,
    pub secret: SecretSummary,
    pub renewal: RenewalSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderStatus>,
    pub events: Vec<EventSummary>,
    pub solver_objects: Vec<SolverObject>,
    pub unread: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecSummary {
    pub secret_name: String,
    pub issuer: IssuerSummary,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IssuerSummary {
    pub kind: String,
    pub name: String,
}

/// Whether the Secret holds this Certificate's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretState {
    /// kacme wrote it for this Certificate; its certificate is shown.
    Current,
    Missing,
    /// It belongs to something else (or to an earlier Certificate of this name): nothing of it is shown.
    NotOwned,
    Unreadable,
    /// It is this Certificate's, but tls.crt cannot be read.
    Invalid,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSummary {
    pub name: String,
    pub state: SecretState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateFacts>,
    pub chain: Vec<String>,
    pub ca_crt: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<KeyCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_check: Option<ChainCheck>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Timestamp>,
    /// Why the renewal time is what it is, in words.
    pub why: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<crate::api::RenewalInfoStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Timestamp>,
}

/// One Event (a series counts as one, with its count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

/// The report of `input` as of `now`.
pub fn status_report(input: &StatusInput, now: Timestamp) -> StatusReport {
    let certificate = &input.certificate;
    let status = certificate.status.clone().unwrap_or_default();
    let spec = &certificate.spec;
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let mut conditions = status.conditions.clone();
    conditions.sort_by_key(|c| if c.type_ == "Ready" { 0 } else { 1 });
    StatusReport {
        version: 1,
        namespace: certificate.metadata.namespace.clone().unwrap_or_default(),
        name: certificate.metadata.name.clone().unwrap_or_default(),
        ready,
        spec: SpecSummary {
            secret_name: spec.secret_name.clone(),
            issuer: IssuerSummary {
                kind: match spec.issuer_ref.kind {
                    IssuerKind::Issuer => "Issuer".into(),
                    IssuerKind::ClusterIssuer => "ClusterIssuer".into(),
                },
                name: spec.issuer_ref.name.clone(),
            },
            dns_names: spec.dns_names.clone(),
            ip_addresses: spec.ip_addresses.clone(),
            common_name: spec.common_name.clone(),
        },
        conditions,
        secret: secret_summary(certificate, &input.secret, now),
        renewal: renewal_summary(certificate),
        revocation: status.revocation.clone(),
        order: status.order.clone(),
        events: event_summaries(certificate, &input.events),
        solver_objects: input.solver_objects.clone(),
        unread: input.unread.clone(),
    }
}

fn secret_summary(certificate: &Certificate, read: &SecretRead, now: Timestamp) -> SecretSummary {
    let mut summary = SecretSummary {
        name: certificate.spec.secret_name.clone(),
        state: SecretState::Missing,
        message: None,
        certificate: None,
        chain: Vec::new(),
        ca_crt: Vec::new(),
        private_key: None,
        chain_check: None,
    };
    let secret = match read {
        SecretRead::NotFound => {
            summary.message = Some("the Secret does not exist (yet)".into());
            return summary;
        }
        SecretRead::Unreadable(why) => {
            summary.state = SecretState::Unreadable;
            summary.message = Some(why.clone());
            return summary;
        }
        SecretRead::Found(secret) => secret,
    };
    match secret_ownership(secret, certificate) {
        SecretOwnership::Ours | SecretOwnership::WrittenBeforeUpgrade => {}
        SecretOwnership::OfEarlierCertificate(why) | SecretOwnership::Foreign(why) => {
            summary.state = SecretState::NotOwned;
            summary.message = Some(why);
            return summary;
        }
    }
    let report = inspect_secret(secret, now);
    let Some(leaf) = report.certificates.first() else {
        summary.state = SecretState::Invalid;
        summary.message = report.certificates_error.clone();
        return summary;
    };
    summary.state = SecretState::Current;
    summary.certificate = Some(leaf.clone());
    summary.chain = report.certificates.iter().skip(1).map(|c| c.subject.clone()).collect();
    summary.ca_crt = report.ca_certificates.iter().map(|c| c.subject.clone()).collect();
    summary.private_key = Some(report.private_key);
    summary.chain_check = Some(report.chain);
    summary.message = report.chain_error.clone();
    summary
}

fn renewal_summary(certificate: &Certificate) -> RenewalSummary {
    let status = certificate.status.clone().unwrap_or_default();
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.as_ref().map(|t| t.0);
    let renewal_time = time(&status.renewal_time);
    let info = status.renewal_info.clone();
    let window = info.as_ref().and_then(|i| Some((i.window_start.as_ref()?.0, i.window_end.as_ref()?.0)));
    let spec = &certificate.spec;
    let why = match (renewal_time, window) {
        (None, _) => "no certificate issued yet".to_string(),
        (Some(at), Some((start, end))) if start <= at && at <= end => {
            "a time inside the renewal window that the CA suggests (ACME Renewal Information, RFC 9773)".into()
        }
        (Some(_), _) => match (spec.renew_before, spec.renew_before_percentage) {
            (Some(before), _) => format!("{before} before expiry (spec.renewBefore)"),
            (None, Some(percent)) => format!("{percent}% of the lifetime before expiry (spec.renewBeforePercentage)"),
            (None, None) => "when 2/3 of the lifetime has passed (the default)".into(),
        },
    };
    RenewalSummary {
        not_before: time(&status.not_before),
        not_after: time(&status.not_after),
        renewal_time,
        why,
        renewal_info: info,
        failed_issuance_attempts: status.failed_issuance_attempts.filter(|n| *n > 0),
        last_failure_time: time(&status.last_failure_time),
    }
}

/// The Certificate's Events, oldest first; those of another object with the same name are left out.
fn event_summaries(certificate: &Certificate, events: &[Event]) -> Vec<EventSummary> {
    let uid = certificate.metadata.uid.as_deref();
    let mut summaries: Vec<EventSummary> = events
        .iter()
        .filter(|e| e.involved_object.kind.as_deref().is_none_or(|k| k == "Certificate"))
        .filter(|e| match (uid, e.involved_object.uid.as_deref()) {
            (Some(uid), Some(theirs)) => uid == theirs,
            _ => true,
        })
        .map(|e| EventSummary {
            type_: e.type_.clone().unwrap_or_else(|| "Normal".into()),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1),
            last_seen: e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        })
        .collect();
    summaries.sort_by(|a, b| a.last_seen.cmp(&b.last_seen).then_with(|| a.reason.cmp(&b.reason)));
    summaries
}

/// "3d4h", "2h5m", "4m10s", "12s": a duration for people (negative durations read as their size).
pub fn human_duration(duration: SignedDuration) -> String {
    let seconds = duration.as_secs().unsigned_abs();
    let (days, hours, minutes, secs) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m{secs}s"),
        (0, _, _) => format!("{hours}h{minutes}m"),
        _ => format!("{days}d{hours}h"),
    }
}

/// `at` with how far it is from `now`: "2026-12-01T10:00:00Z (in 3h5m)" or "(5m ago)".
fn when(at: Timestamp, now: Timestamp) -> String {
    let delta = at.duration_since(now);
    if delta.is_negative() {
        format!("{at} ({} ago)", human_duration(delta))
    } else {
        format!("{at} (in {})", human_duration(delta))
    }
}

/// The report as text for people.
pub fn render_status(report: &StatusReport, style: Style, now: Timestamp) -> String {
    let mut out = String::new();
    let headline = if report.ready { style.good("Ready") } else { style.bad("Not Ready") };
    let _ = writeln!(out, "{} {}/{}: {headline}", style.bold("Certificate"), report.namespace, report.name);
    let spec = &report.spec;
    let mut names: Vec<String> = spec.dns_names.clone();
    names.extend(spec.ip_addresses.iter().cloned());
    let _ = writeln!(out, "  Names:   {}", names.join(", "));
    let _ = writeln!(out, "  Issuer:  {} {}", spec.issuer.kind, spec.issuer.name);
    let _ = writeln!(out, "  Secret:  {}", spec.secret_name);

    let _ = writeln!(out, "\n{}", style.bold("Conditions"));
    if report.conditions.is_empty() {
        let _ = writeln!(out, "  {}", style.dim("none yet (the operator has not reconciled this Certificate)"));
    }
    for condition in &report.conditions {
        let status = match (condition.type_.as_str(), condition.status.as_str()) {
            ("Ready", "True") | ("Issuing", "False") => style.good(&condition.status),
            ("Ready", _) => style.bad(&condition.status),
            _ => style.warn(&condition.status),
        };
        let since = style.dim(&format!("since {}", when(condition.last_transition_time.0, now)));
        let _ = writeln!(out, "  {:<8} {status} {}: {}  {since}", condition.type_, condition.reason, condition.message);
    }

    render_secret_summary(&mut out, &report.secret, style, now);
    render_renewal(&mut out, &report.renewal, style, now);

    if let Some(revocation) = &report.revocation {
        let _ = writeln!(out, "\n{}", style.bold("Revocation"));
        let _ = writeln!(out, "  Serial {} (reason {})", revocation.serial, revocation.reason);
        match (&revocation.revoked_at, &revocation.error) {
            (Some(at), _) => {
                let _ = writeln!(out, "  Revoked at {}", when(at.0, now));
            }
            (None, Some(error)) => {
                let _ = writeln!(out, "  {}", style.bad(&format!("Not revoked: {error}")));
            }
            (None, None) => {
                let _ = writeln!(out, "  {}", style.warn("Requested, not done yet"));
            }
        }
    }

    let _ = writeln!(out, "\n{}", style.bold("Order in flight"));
    match &report.order {
        None => {
            let _ = writeln!(out, "  {}", style.dim("none"));
        }
        Some(order) => {
            let _ = writeln!(out, "  {} ({})", order.url, order.state.as_deref().unwrap_or("unknown"));
            for authorization in &order.authorizations {
                let state = authorization.state.as_deref().unwrap_or("unknown");
                let state = match state {
                    "valid" => style.good(state),
                    "invalid" | "gone" => style.bad(state),
                    _ => style.warn(state),
                };
                let mut line = format!("  - {}: {state}", authorization.identifier);
                if let Some(at) = &authorization.presented_at {
                    let _ = write!(line, ", presented {} ago", human_duration(now.duration_since(at.0)));
                }
                if let Some(solver) = &authorization.solver_name {
                    let _ = write!(line, ", solver {solver}");
                }
                let _ = writeln!(out, "{line}");
                if let Some(message) = &authorization.message {
                    let _ = writeln!(out, "      {}", style.dim(&format!("last word: {message}")));
                }
            }
        }
    }

    let shown = report.events.len().min(EVENTS_SHOWN);
    let _ = writeln!(out, "\n{}", style.bold(&format!("Events ({} of {}, oldest first)", shown, report.events.len())));
    if report.events.is_empty() {
        let _ = writeln!(out, "  {}", style.dim("none (Events expire after an hour by default)"));
    }
    for event in &report.events[report.events.len() - shown..] {
        let age = event.last_seen.map(|t| human_duration(now.duration_since(t))).unwrap_or_else(|| "?".into());
        let type_ = if event.type_ == "Warning" { style.warn(&event.type_) } else { event.type_.clone() };
        let count = if event.count > 1 { format!(" (x{})", event.count) } else { String::new() };
        let _ = writeln!(out, "  {age:>7}  {type_:<7}  {:<16} {}{count}", event.reason, event.message);
    }

    let _ = writeln!(out, "\n{}", style.bold("Solver objects"));
    if report.solver_objects.is_empty() {
        let _ = writeln!(out, "  {}", style.dim("none"));
    }
    for object in &report.solver_objects {
        let detail = object.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        let _ = writeln!(out, "  {}/{}{detail}", object.kind.to_lowercase(), object.name);
    }
    for unread in &report.unread {
        let _ = writeln!(out, "\n{}", style.warn(&format!("Not shown: {unread}")));
    }
    out
}

fn render_secret_summary(out: &mut String, secret: &SecretSummary, style: Style, now: Timestamp) {
    let _ = writeln!(out, "\n{}", style.bold(&format!("Current certificate (Secret {})", secret.name)));
    let Some(leaf) = &secret.certificate else {
        let what = match secret.state {
            SecretState::Missing => style.warn("none"),
            _ => style.bad(&format!("{:?}", secret.state)),
        };
        let why = secret.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        let _ = writeln!(out, "  {what}{why}");
        return;
    };
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {:<14}{value}", format!("{label}:"));
    };
    let mut names: Vec<String> = leaf.dns_names.clone();
    names.extend(leaf.ip_addresses.iter().cloned());
    line("Names", names.join(", "));
    line("Serial", leaf.serial.clone());
    line("Not before", leaf.not_before.to_string());
    let expiry = if leaf.not_after <= now {
        style.bad(&format!("{} (expired)", leaf.not_after))
    } else {
        when(leaf.not_after, now)
    };
    line("Not after", expiry);
    let mut issuers = vec![leaf.issuer.clone()];
    issuers.extend(secret.chain.iter().skip(1).cloned());
    line("Issuer chain", issuers.join(" <- "));
    if !secret.ca_crt.is_empty() {
        line("ca.crt", secret.ca_crt.join(", "));
    }
    line("Key", leaf.public_key.clone());
    let key = match secret.private_key {
        Some(KeyCheck::Matches) => style.good("tls.key matches"),
        Some(KeyCheck::DoesNotMatch) => style.bad("tls.key does NOT match"),
        Some(KeyCheck::Absent) => style.bad("tls.key is absent"),
        Some(KeyCheck::Unreadable) | None => style.bad("tls.key is unreadable"),
    };
    let chain = match secret.chain_check {
        Some(ChainCheck::Verifies) => style.good("chain verifies to ca.crt"),
        Some(ChainCheck::DoesNotVerify) => style.bad(&format!(
            "chain does NOT verify to ca.crt: {}",
            secret.message.as_deref().unwrap_or("unknown reason")
        )),
        Some(ChainCheck::NoCaCrt) | None => style.warn("no ca.crt"),
    };
    line("Checks", format!("{key}; {chain}"));
}

fn render_renewal(out: &mut String, renewal: &RenewalSummary, style: Style, now: Timestamp) {
    let _ = writeln!(out, "\n{}", style.bold("Renewal"));
    match renewal.renewal_time {
        Some(at) => {
            let _ = writeln!(out, "  Renews at {}", when(at, now));
        }
        None => {
            let _ = writeln!(out, "  {}", style.dim("no renewal time yet"));
        }
    }
    let _ = writeln!(out, "  Why: {}", renewal.why);
    if let Some(info) = &renewal.renewal_info {
        if let (Some(start), Some(end)) = (&info.window_start, &info.window_end) {
            let _ = writeln!(out, "  CA's window: {} to {}", start.0, end.0);
        }
        let _ = writeln!(out, "  Next check of the window: {}", when(info.next_check.0, now));
        if let Some(url) = &info.explanation_url {
            let _ = writeln!(out, "  CA's explanation: {url}");
        }
        if let Some(error) = &info.last_error {
            let _ = writeln!(out, "  {}", style.warn(&format!("Last check failed: {error}")));
        }
    }
    if let Some(attempts) = renewal.failed_issuance_attempts {
        let last = renewal.last_failure_time.map(|t| format!(", last at {}", when(t, now))).unwrap_or_default();
        let _ = writeln!(out, "  {}", style.warn(&format!("Failed issuance attempts: {attempts}{last}")));
    }
}

#[cfg(test)]
mod tests;
