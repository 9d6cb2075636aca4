//! Whether a Certificate needs a new certificate, and why.
//!
//! Like cert-manager's policy chain: first the Secret is read (DoesNotExist, SecretOfEarlierCertificate,
//! MissingData, InvalidKeyPair; a Secret that exists but is not ours stops everything, see
//! [`super::ownership`]), then the named checks of [`POLICY_CHAIN`] run
//! in order on the certificate and key it holds, and the first that finds a reason to issue gives it:
//! KeyMismatchesSpec, SpecChanged (DNS names, IP addresses, common name, issuer, usages),
//! ManuallyTriggered, Expiring.

use super::ownership::{SecretOwnership, secret_ownership};
use super::{BackoffPolicy, RenewBefore, RenewalWindow, renewal_in_window, renewal_time};
use crate::api::names::{
    ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME, ANNOTATION_RENEW_REQUESTED_AT, ANNOTATION_USAGES, TLS_CRT, TLS_KEY,
};
use crate::api::{Certificate, CertificateSpec, ConditionType, IssuanceReason, KeyUsage, RenewalInfoStatus};
use crate::pki::{
    CertificateInfo, KeySpec, ParsedChain, PrivateKey, effective_usages, key_matches_certificate, parse_chain,
    parse_private_key,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Everything the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub certificate: &'a Certificate,
    /// The Secret named by `spec.secretName`, if it exists.
    pub secret: Option<&'a Secret>,
    pub now: Timestamp,
}

/// What to do about a Certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuanceDecision {
    /// A Secret of that name exists but kacme did not create it for this Certificate: leave it alone and
    /// say so in the Ready condition.
    SecretNotOwned { message: String },
    /// Issue a certificate now.
    Issue { reason: IssuanceReason, message: String },
    /// Issuance is needed but the last attempt (for this generation of the spec) failed: retry then.
    BackOff { reason: IssuanceReason, message: String, retry_at: Timestamp },
    /// The Secret holds a valid certificate matching the spec; look again at `renewal_time`. `renewal_id` is
    /// the certificate's RFC 9773 identifier, to ask the CA for its renewal window.
    UpToDate { not_before: Timestamp, not_after: Timestamp, renewal_time: Timestamp, renewal_id: Option<String> },
}

/// Decides whether to issue, and why; or when to look again.
pub fn issuance_decision(observed: &Observed<'_>, backoff: &BackoffPolicy) -> IssuanceDecision {
    let (reason, message) = match read_secret(observed) {
        Err(decision) => return decision,
        Ok(Err(why)) => why,
        Ok(Ok(stored)) => match POLICY_CHAIN.iter().find_map(|(_, check)| check(observed, &stored)) {
            Some(why) => why,
            None => return up_to_date(observed, &stored),
        },
    };
    if reason != IssuanceReason::ManuallyTriggered
        && let Some(retry_at) = backoff_until(observed, backoff)
        && observed.now < retry_at
    {
        return IssuanceDecision::BackOff { reason, message, retry_at };
    }
    IssuanceDecision::Issue { reason, message }
}

fn up_to_date(observed: &Observed<'_>, stored: &Stored<'_>) -> IssuanceDecision {
    let leaf = stored.leaf();
    IssuanceDecision::UpToDate {
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        renewal_time: scheduled_renewal(observed.certificate, leaf).at,
        renewal_id: leaf.renewal_id.clone(),
    }
}

/// When the stored certificate is renewed, and whether the CA's window decided it.
struct Scheduled {
    at: Timestamp,
    /// The CA's suggested window (RFC 9773), when it set the time.
    window: Option<RenewalWindow>,
}

/// When to renew the stored certificate: at a point inside the CA's suggested renewal window (RFC 9773)
/// when the status holds one for this very certificate, else on kacme's own schedule (renewBefore,
/// renewBeforePercentage, or 2/3 of the lifetime). A renewBefore or renewBeforePercentage that asks for an
/// earlier time than the window wins: the user's explicit wish.
fn scheduled_renewal(certificate: &Certificate, leaf: &CertificateInfo) -> Scheduled {
    let renewal_info = certificate.status.as_ref().and_then(|s| s.renewal_info.as_ref());
    schedule(&certificate.spec, renewal_info, leaf)
}

/// When to renew `leaf`, as [`IssuanceDecision::UpToDate`] says it, given the spec and the CA's renewal
/// suggestion of the status (for the pass that stores a new certificate and asks for its window at once).
pub fn renewal_schedule(
    spec: &CertificateSpec,
    renewal_info: Option<&RenewalInfoStatus>,
    leaf: &CertificateInfo,
) -> Timestamp {
    schedule(spec, renewal_info, leaf).at
}

fn schedule(spec: &CertificateSpec, renewal_info: Option<&RenewalInfoStatus>, leaf: &CertificateInfo) -> Scheduled {
    let own = renewal_time(
        leaf.not_before,
        leaf.not_after,
        RenewBefore::from_spec(spec.renew_before.map(std::time::Duration::from), spec.renew_before_percentage),
    );
    let Some((id, window)) = renewal_window(renewal_info, leaf) else {
        return Scheduled { at: own, window: None };
    };
    let Some(in_window) = renewal_in_window(window, id, leaf.not_after) else {
        return Scheduled { at: own, window: None };
    };
    let explicit = spec.renew_before.is_some() || spec.renew_before_percentage.is_some();
    if explicit && own < in_window {
        Scheduled { at: own, window: None }
    } else {
        Scheduled { at: in_window, window: Some(window) }
    }
}

/// The CA's suggested renewal window for `leaf`, from the status, with the certificate's identifier: only
/// when the status speaks of this very certificate (a window of the previous one means nothing).
fn renewal_window<'a>(
    renewal_info: Option<&RenewalInfoStatus>,
    leaf: &'a CertificateInfo,
) -> Option<(&'a str, RenewalWindow)> {
    let id = leaf.renewal_id.as_deref()?;
    let info = renewal_info?;
    if info.certificate_id != id {
        return None;
    }
    let window = RenewalWindow { start: info.window_start.as_ref()?.0, end: info.window_end.as_ref()?.0 };
    Some((id, window))
}

/// The RFC 9773 identifier of the certificate that a renewal replaces, to send as the new order's
/// `replaces`: only when renewing (the same names: `Expiring`, `ManuallyTriggered`) a certificate the CA gave
/// a renewal window for, that is, a CA known to speak RFC 9773.
pub fn replaced_certificate(
    certificate: &Certificate,
    secret: Option<&Secret>,
    reason: IssuanceReason,
) -> Option<String> {
    if !matches!(reason, IssuanceReason::Expiring | IssuanceReason::ManuallyTriggered) {
        return None;
    }
    let chain = parse_chain(secret_data(secret?, TLS_CRT)?).ok()?;
    let renewal_info = certificate.status.as_ref().and_then(|s| s.renewal_info.as_ref());
    renewal_window(renewal_info, &chain.leaf).map(|(id, _)| id.to_string())
}

/// The time before which a failed issuance must not be retried, if the last attempt failed for the
/// current generation of the spec (editing the spec retries at once, as in cert-manager).
fn backoff_until(observed: &Observed<'_>, backoff: &BackoffPolicy) -> Option<Timestamp> {
    let status = observed.certificate.status.as_ref()?;
    let attempts = u32::try_from(status.failed_issuance_attempts?).ok().filter(|a| *a > 0)?;
    let last_failure = status.last_failure_time.as_ref()?.0;
    let failed_generation = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Issuing.as_str() && c.status == "False")
        .and_then(|c| c.observed_generation);
    let generation = observed.certificate.metadata.generation;
    if failed_generation.is_some() && generation.is_some() && failed_generation != generation {
        return None;
    }
    Some(backoff.retry_at(last_failure, attempts))
}

/// A reason to issue and the message that explains it.
type Why = (IssuanceReason, String);

/// What the Secret holds once it is known to be ours and readable.
struct Stored<'a> {
    secret: &'a Secret,
    chain: ParsedChain,
    key: PrivateKey,
}

impl Stored<'_> {
    fn leaf(&self) -> &CertificateInfo {
        &self.chain.leaf
    }
}

/// One check of the issuance policy: a reason to issue, or `None` when this check finds nothing.
type Check = fn(&Observed<'_>, &Stored<'_>) -> Option<Why>;

/// The checks on a readable certificate and key, in the order they run; the first reason found wins.
const POLICY_CHAIN: [(&str, Check); 9] = [
    ("the certificate was not revoked", certificate_revoked),
    ("the private key matches the spec", private_key_mismatches_spec),
    ("the DNS names are the requested ones", dns_names_changed),
    ("the IP addresses are the requested ones", ip_addresses_changed),
    ("the common name is the requested one", common_name_changed),
    ("the issuer is the requested one", issuer_changed),
    ("the usages are the requested ones", usages_changed),
    ("no renewal was requested", renewal_requested),
    ("the renewal time has not come", renewal_time_reached),
];

/// The certificate and key of the Secret; a reason to issue when there is none usable; or the decision
/// to leave a foreign Secret alone.
fn read_secret<'a>(observed: &Observed<'a>) -> Result<Result<Stored<'a>, Why>, IssuanceDecision> {
    let certificate = observed.certificate;
    let Some(secret) = observed.secret else {
        return Ok(Err((
            IssuanceReason::DoesNotExist,
            format!("Issuing certificate as Secret {:?} does not exist", certificate.spec.secret_name),
        )));
    };
    match secret_ownership(secret, certificate) {
        SecretOwnership::Foreign(message) => return Err(IssuanceDecision::SecretNotOwned { message }),
        SecretOwnership::OfEarlierCertificate(message) => {
            return Ok(Err((IssuanceReason::SecretOfEarlierCertificate, message)));
        }
        SecretOwnership::Ours | SecretOwnership::WrittenBeforeUpgrade => {}
    }
    let (Some(crt), Some(key)) = (secret_data(secret, TLS_CRT), secret_data(secret, TLS_KEY)) else {
        let missing = match (secret_data(secret, TLS_CRT), secret_data(secret, TLS_KEY)) {
            (None, None) => "a certificate (tls.crt) nor a private key (tls.key)",
            (None, Some(_)) => "a certificate (tls.crt)",
            _ => "a private key (tls.key)",
        };
        return Ok(Err((
            IssuanceReason::MissingData,
            format!("Issuing certificate as Secret does not contain {missing}"),
        )));
    };
    let invalid = |what: &str| Ok(Err((IssuanceReason::InvalidKeyPair, format!("Issuing certificate as {what}"))));
    let Ok(chain) = parse_chain(crt) else {
        return invalid("tls.crt does not hold a readable PEM certificate");
    };
    let Ok(key) = parse_private_key(key) else {
        return invalid("tls.key does not hold a readable PEM private key");
    };
    if !key_matches_certificate(&key, &chain.leaf) {
        return invalid("the private key in tls.key does not match the certificate in tls.crt");
    }
    Ok(Ok(Stored { secret, chain, key }))
}

fn private_key_mismatches_spec(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    let wanted = KeySpec::from_spec(observed.certificate.spec.private_key.as_ref());
    (stored.key.spec() != wanted).then(|| {
        (
            IssuanceReason::KeyMismatchesSpec,
            format!("Issuing certificate as the private key is {} but the spec asks for {wanted}", stored.key.spec()),
        )
    })
}

fn spec_changed(change: String) -> Option<Why> {
    Some((IssuanceReason::SpecChanged, format!("Issuing certificate as {change}")))
}

fn dns_names_changed(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    changed(dns_names_differ(&observed.certificate.spec, stored.leaf()))
}

fn ip_addresses_changed(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    changed(ip_addresses_differ(&observed.certificate.spec, stored.leaf()))
}

fn common_name_changed(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    changed(common_name_differs(&observed.certificate.spec, stored.leaf()))
}

/// What differs between a certificate and the spec: the subject ("DNS names") and what each says.
type Difference = (&'static str, String);

fn changed(difference: Option<Difference>) -> Option<Why> {
    difference.and_then(|(subject, detail)| spec_changed(format!("the {subject} changed: {detail}")))
}

fn dns_names_differ(spec: &CertificateSpec, leaf: &CertificateInfo) -> Option<Difference> {
    let wanted: BTreeSet<String> = spec.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let have: BTreeSet<String> = leaf.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    (wanted != have).then(|| ("DNS names", format!("the certificate has {have:?}, the spec asks for {wanted:?}")))
}

fn ip_addresses_differ(spec: &CertificateSpec, leaf: &CertificateInfo) -> Option<Difference> {
    let wanted: BTreeSet<IpAddr> = spec.ip_addresses.iter().filter_map(|a| a.parse().ok()).collect();
    let have: BTreeSet<IpAddr> = leaf.ip_addresses.iter().copied().collect();
    (wanted != have).then(|| ("IP addresses", format!("the certificate has {have:?}, the spec asks for {wanted:?}")))
}

fn common_name_differs(spec: &CertificateSpec, leaf: &CertificateInfo) -> Option<Difference> {
    let (wanted, have) = (&spec.common_name, &leaf.common_name);
    (wanted != have).then(|| ("common name", format!("the certificate has {have:?}, the spec asks for {wanted:?}")))
}

/// How a certificate the CA just issued differs from what `spec` asked for (names, addresses, common name),
/// if it does. Stored anyway, such a certificate would be found out of date at once and ordered again and
/// again; kacme counts it as a failed attempt instead, which backs off.
pub fn issued_differs_from_spec(spec: &CertificateSpec, leaf: &CertificateInfo) -> Option<String> {
    [dns_names_differ, ip_addresses_differ, common_name_differs].iter().find_map(|differs| differs(spec, leaf)).map(
        |(subject, detail)| {
            format!("the CA issued a certificate that does not match the request ({subject}): {detail}")
        },
    )
}

fn issuer_changed(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    let wanted = &observed.certificate.spec.issuer_ref;
    let have = (annotation(stored.secret, ANNOTATION_ISSUER_KIND), annotation(stored.secret, ANNOTATION_ISSUER_NAME));
    let wanted_kind = wanted.kind.to_string();
    if have == (Some(wanted_kind.as_str()), Some(wanted.name.as_str())) {
        return None;
    }
    spec_changed(format!(
        "the issuer changed: the certificate is from {} {:?}, the spec asks for {wanted_kind} {:?}",
        have.0.unwrap_or("an unknown issuer"),
        have.1.unwrap_or_default(),
        wanted.name
    ))
}

fn usages_changed(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    let wanted_key = KeySpec::from_spec(observed.certificate.spec.private_key.as_ref());
    let wanted = usages_annotation(&effective_usages(&observed.certificate.spec.usages, wanted_key.algorithm));
    let have = annotation(stored.secret, ANNOTATION_USAGES).unwrap_or_default();
    if have == wanted {
        return None;
    }
    spec_changed(format!("the usages changed: the certificate has [{have}], the spec asks for [{wanted}]"))
}

fn renewal_requested(observed: &Observed<'_>, _: &Stored<'_>) -> Option<Why> {
    let certificate = observed.certificate;
    let requested = certificate.metadata.annotations.as_ref()?.get(ANNOTATION_RENEW_REQUESTED_AT)?;
    let handled = certificate.status.as_ref().and_then(|s| s.last_renewal_request.as_ref());
    (Some(requested) != handled).then(|| {
        (
            IssuanceReason::ManuallyTriggered,
            format!("Renewing certificate as requested ({ANNOTATION_RENEW_REQUESTED_AT}={requested})"),
        )
    })
}

fn certificate_revoked(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    let revocation = observed.certificate.status.as_ref()?.revocation.as_ref()?;
    (revocation.revoked_at.is_some() && revocation.serial == stored.leaf().serial).then(|| {
        (
            IssuanceReason::Revoked,
            format!(
                "Issuing a new certificate with a new key as serial {} was revoked (reason {})",
                revocation.serial, revocation.reason
            ),
        )
    })
}

fn renewal_time_reached(observed: &Observed<'_>, stored: &Stored<'_>) -> Option<Why> {
    let leaf = stored.leaf();
    let Scheduled { at: renewal, window } = scheduled_renewal(observed.certificate, leaf);
    if observed.now < renewal {
        return None;
    }
    let message = if observed.now >= leaf.not_after {
        format!("Renewing certificate as it expired at {}", leaf.not_after)
    } else if let Some(window) = window {
        format!(
            "Renewing certificate inside the renewal window the CA suggests, {} to {} (expires {})",
            window.start, window.end, leaf.not_after
        )
    } else {
        format!("Renewing certificate as its renewal time {renewal} has passed (expires {})", leaf.not_after)
    };
    Some((IssuanceReason::Expiring, message))
}

/// The value of the `kacme.dev/usages` Secret annotation for a set of usages.
pub fn usages_annotation(usages: &BTreeSet<KeyUsage>) -> String {
    usages.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(",")
}

fn secret_data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|v| v.0.as_slice()).filter(|v| !v.is_empty())
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}
