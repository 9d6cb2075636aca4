//! Whether a Certificate needs a new certificate, and why.
//!
//! Like cert-manager's policy chain: the first check that fails gives the reason, in this order:
//! DoesNotExist, MissingData, InvalidKeyPair, KeyMismatchesSpec, SpecChanged, ManuallyTriggered,
//! Expiring. A Secret that exists but is not ours stops everything before that.

use super::{BackoffPolicy, RenewBefore, renewal_time};
use crate::api::names::{
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME, ANNOTATION_RENEW_REQUESTED_AT,
    ANNOTATION_USAGES, TLS_CRT, TLS_KEY,
};
use crate::api::{Certificate, KeyUsage};
use crate::pki::{KeySpec, effective_usages, key_matches_certificate, parse_chain, parse_private_key};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Why a certificate is (re)issued. The names are the CamelCase reasons of the `Issuing` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssuanceReason {
    /// The Secret does not exist.
    DoesNotExist,
    /// The Secret lacks tls.crt or tls.key.
    MissingData,
    /// tls.crt or tls.key cannot be read, or they do not belong together.
    InvalidKeyPair,
    /// The private key's algorithm, size or encoding differs from the spec.
    KeyMismatchesSpec,
    /// Names, common name, usages or issuer differ from what the certificate was issued for.
    SpecChanged,
    /// The renewal time has been reached.
    Expiring,
    /// A user asked for renewal (annotation `kacme.dev/renew-requested-at` or `kacme renew`).
    ManuallyTriggered,
}

impl IssuanceReason {
    /// The CamelCase condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuanceReason::DoesNotExist => "DoesNotExist",
            IssuanceReason::MissingData => "MissingData",
            IssuanceReason::InvalidKeyPair => "InvalidKeyPair",
            IssuanceReason::KeyMismatchesSpec => "KeyMismatchesSpec",
            IssuanceReason::SpecChanged => "SpecChanged",
            IssuanceReason::Expiring => "Expiring",
            IssuanceReason::ManuallyTriggered => "ManuallyTriggered",
        }
    }
}

impl std::fmt::Display for IssuanceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// The Secret holds a valid certificate matching the spec; look again at `renewal_time`.
    UpToDate { not_before: Timestamp, not_after: Timestamp, renewal_time: Timestamp },
}

/// Whether a Secret is one kacme made for a given Certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOwnership {
    /// It carries kacme's `kacme.dev/certificate-name` annotation naming this Certificate.
    Ours,
    /// It belongs to something else; the message says why kacme thinks so.
    Foreign(String),
}

/// Whether the Secret was created by kacme for the Certificate named `certificate_name`.
pub fn secret_ownership(secret: &Secret, certificate_name: &str) -> SecretOwnership {
    let secret_name = secret.metadata.name.as_deref().unwrap_or_default();
    match annotation(secret, ANNOTATION_CERTIFICATE_NAME) {
        Some(owner) if owner == certificate_name => SecretOwnership::Ours,
        Some(owner) => SecretOwnership::Foreign(format!(
            "Secret {secret_name:?} belongs to Certificate {owner:?} (annotation {ANNOTATION_CERTIFICATE_NAME}); \
             kacme will not overwrite it: choose another secretName"
        )),
        None => SecretOwnership::Foreign(format!(
            "Secret {secret_name:?} exists and was not created by kacme (no {ANNOTATION_CERTIFICATE_NAME} \
             annotation); kacme will not overwrite it: delete it or choose another secretName"
        )),
    }
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Decides whether to issue, and why; or when to look again.
pub fn issuance_decision(observed: &Observed<'_>, backoff: &BackoffPolicy) -> IssuanceDecision {
    let (reason, message) = match why_issue(observed) {
        Ok(Some(why)) => why,
        Ok(None) => return up_to_date(observed),
        Err(decision) => return decision,
    };
    if reason != IssuanceReason::ManuallyTriggered
        && let Some(retry_at) = backoff_until(observed, backoff)
        && observed.now < retry_at
    {
        return IssuanceDecision::BackOff { reason, message, retry_at };
    }
    IssuanceDecision::Issue { reason, message }
}

fn up_to_date(observed: &Observed<'_>) -> IssuanceDecision {
    // why_issue returned None only after reading the chain successfully.
    let chain = observed.secret.and_then(|s| secret_data(s, TLS_CRT)).and_then(|crt| parse_chain(crt).ok());
    match chain {
        Some(chain) => {
            let renewal_time =
                renewal_time(chain.leaf.not_before, chain.leaf.not_after, renew_before(observed.certificate));
            IssuanceDecision::UpToDate {
                not_before: chain.leaf.not_before,
                not_after: chain.leaf.not_after,
                renewal_time,
            }
        }
        None => IssuanceDecision::Issue {
            reason: IssuanceReason::InvalidKeyPair,
            message: "Issuing certificate as tls.crt cannot be read".into(),
        },
    }
}

fn renew_before(certificate: &Certificate) -> RenewBefore {
    RenewBefore::from_spec(
        certificate.spec.renew_before.map(std::time::Duration::from),
        certificate.spec.renew_before_percentage,
    )
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
        .find(|c| c.type_ == "Issuing" && c.status == "False")
        .and_then(|c| c.observed_generation);
    let generation = observed.certificate.metadata.generation;
    if failed_generation.is_some() && generation.is_some() && failed_generation != generation {
        return None;
    }
    Some(backoff.retry_at(last_failure, attempts))
}

type Why = (IssuanceReason, String);

fn why_issue(observed: &Observed<'_>) -> Result<Option<Why>, IssuanceDecision> {
    let certificate = observed.certificate;
    let spec = &certificate.spec;
    let Some(secret) = observed.secret else {
        return Ok(Some((
            IssuanceReason::DoesNotExist,
            format!("Issuing certificate as Secret {:?} does not exist", spec.secret_name),
        )));
    };
    if let SecretOwnership::Foreign(message) =
        secret_ownership(secret, certificate.metadata.name.as_deref().unwrap_or_default())
    {
        return Err(IssuanceDecision::SecretNotOwned { message });
    }
    let (Some(crt), Some(key)) = (secret_data(secret, TLS_CRT), secret_data(secret, TLS_KEY)) else {
        let missing = match (secret_data(secret, TLS_CRT), secret_data(secret, TLS_KEY)) {
            (None, None) => "a certificate (tls.crt) nor a private key (tls.key)",
            (None, Some(_)) => "a certificate (tls.crt)",
            _ => "a private key (tls.key)",
        };
        return Ok(Some((
            IssuanceReason::MissingData,
            format!("Issuing certificate as Secret does not contain {missing}"),
        )));
    };
    let invalid = |what: &str| Ok(Some((IssuanceReason::InvalidKeyPair, format!("Issuing certificate as {what}"))));
    let Ok(chain) = parse_chain(crt) else {
        return invalid("tls.crt does not hold a readable PEM certificate");
    };
    let Ok(private_key) = parse_private_key(key) else {
        return invalid("tls.key does not hold a readable PEM private key");
    };
    if !key_matches_certificate(&private_key, &chain.leaf) {
        return invalid("the private key in tls.key does not match the certificate in tls.crt");
    }

    let wanted_key = KeySpec::from_spec(spec.private_key.as_ref());
    if private_key.spec() != wanted_key {
        return Ok(Some((
            IssuanceReason::KeyMismatchesSpec,
            format!(
                "Issuing certificate as the private key is {} but the spec asks for {wanted_key}",
                private_key.spec()
            ),
        )));
    }

    if let Some(change) = spec_change(observed, secret, &chain.leaf, wanted_key) {
        return Ok(Some((IssuanceReason::SpecChanged, format!("Issuing certificate as {change}"))));
    }

    let requested = certificate.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_RENEW_REQUESTED_AT));
    let handled = certificate.status.as_ref().and_then(|s| s.last_renewal_request.as_ref());
    if let Some(requested) = requested
        && Some(requested) != handled
    {
        return Ok(Some((
            IssuanceReason::ManuallyTriggered,
            format!("Renewing certificate as requested ({ANNOTATION_RENEW_REQUESTED_AT}={requested})"),
        )));
    }

    let renewal = renewal_time(chain.leaf.not_before, chain.leaf.not_after, renew_before(certificate));
    if observed.now >= renewal {
        let message = if observed.now >= chain.leaf.not_after {
            format!("Renewing certificate as it expired at {}", chain.leaf.not_after)
        } else {
            format!("Renewing certificate as its renewal time {renewal} has passed (expires {})", chain.leaf.not_after)
        };
        return Ok(Some((IssuanceReason::Expiring, message)));
    }
    Ok(None)
}

/// What differs between the spec and what the certificate in the Secret was issued for, if anything.
fn spec_change(
    observed: &Observed<'_>,
    secret: &Secret,
    leaf: &crate::pki::CertificateInfo,
    key: KeySpec,
) -> Option<String> {
    let spec = &observed.certificate.spec;
    let wanted_dns: BTreeSet<String> = spec.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let have_dns: BTreeSet<String> = leaf.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    if wanted_dns != have_dns {
        return Some(format!(
            "the DNS names changed: the certificate has {have_dns:?}, the spec asks for {wanted_dns:?}"
        ));
    }
    let wanted_ips: BTreeSet<IpAddr> = spec.ip_addresses.iter().filter_map(|a| a.parse().ok()).collect();
    let have_ips: BTreeSet<IpAddr> = leaf.ip_addresses.iter().copied().collect();
    if wanted_ips != have_ips {
        return Some(format!(
            "the IP addresses changed: the certificate has {have_ips:?}, the spec asks for {wanted_ips:?}"
        ));
    }
    if spec.common_name != leaf.common_name {
        return Some(format!(
            "the common name changed: the certificate has {:?}, the spec asks for {:?}",
            leaf.common_name, spec.common_name
        ));
    }
    let issuer = (annotation(secret, ANNOTATION_ISSUER_KIND), annotation(secret, ANNOTATION_ISSUER_NAME));
    let wanted_kind = spec.issuer_ref.kind.to_string();
    if issuer != (Some(wanted_kind.as_str()), Some(spec.issuer_ref.name.as_str())) {
        return Some(format!(
            "the issuer changed: the certificate is from {} {:?}, the spec asks for {wanted_kind} {:?}",
            issuer.0.unwrap_or("an unknown issuer"),
            issuer.1.unwrap_or_default(),
            spec.issuer_ref.name
        ));
    }
    let wanted_usages = usages_annotation(&effective_usages(&spec.usages, key.algorithm));
    let have_usages = annotation(secret, ANNOTATION_USAGES).unwrap_or_default();
    if have_usages != wanted_usages {
        return Some(format!(
            "the usages changed: the certificate has [{have_usages}], the spec asks for [{wanted_usages}]"
        ));
    }
    None
}

/// The value of the `kacme.dev/usages` Secret annotation for a set of usages.
pub fn usages_annotation(usages: &BTreeSet<KeyUsage>) -> String {
    usages.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(",")
}

fn secret_data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.data.as_ref()?.get(key).map(|v| v.0.as_slice()).filter(|v| !v.is_empty())
}
