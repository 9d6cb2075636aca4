//! Which Secrets kacme may read, replace or delete for a Certificate.
//!
//! A Secret is kacme's for a Certificate when it records that Certificate's UID (annotation
//! [`ANNOTATION_CERTIFICATE_UID`]; a next-key Secret may record it in its ownerReference instead). A name
//! alone is not enough: anyone who may write Secrets in the namespace can write a name, and a Certificate
//! deleted and created again under the same name is another object with another UID.
//!
//! Two kinds of Secret that do not record the UID are still taken on, each in a way that cannot hand a
//! stranger's key to the CA:
//! - **written before the upgrade**: kacme before the UID was recorded wrote only
//!   [`ANNOTATION_CERTIFICATE_NAME`]. Such a Secret is adopted as it is (its UID recorded once) only when the
//!   Certificate's status shows that kacme issued for it before (`status.revision`), which no Secret writer
//!   can fake: a Certificate that never issued adopts no name-only Secret;
//! - **of an earlier Certificate of the same name**: labelled as kacme's, naming this Certificate, and
//!   older than it (created before this Certificate was). This is the Secret left behind when a Certificate
//!   is deleted and created again. It is taken over by issuing anew at once, with a new key: its certificate
//!   and key are never trusted, so a Secret planted under that name before the Certificate existed gains
//!   its writer nothing.
//!
//! Everything else is foreign: kacme neither reads its key, nor replaces, nor deletes it.

use crate::api::Certificate;
use crate::api::names::{ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, LABEL_MANAGED_BY, MANAGED_BY};
use k8s_openapi::api::core::v1::Secret;

/// Whether a Secret is one kacme made for a given Certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOwnership {
    /// It records this Certificate's UID.
    Ours,
    /// kacme wrote it for this Certificate before it recorded UIDs, and the Certificate's status shows that
    /// issuance: adopt it as it is, recording the UID.
    WrittenBeforeUpgrade,
    /// kacme wrote it for an earlier Certificate of this name, since deleted: replace it by issuing anew,
    /// never trusting its key. The message says so.
    OfEarlierCertificate(String),
    /// It belongs to something else; the message says why kacme thinks so.
    Foreign(String),
}

impl SecretOwnership {
    /// Whether kacme may read the Secret's certificate and key as its own (reuse the key, finish an order
    /// with it, find it up to date).
    pub fn may_read(&self) -> bool {
        matches!(self, SecretOwnership::Ours | SecretOwnership::WrittenBeforeUpgrade)
    }

    /// Whether kacme may replace the Secret's content with a certificate it issued for this Certificate.
    pub fn may_replace(&self) -> bool {
        !matches!(self, SecretOwnership::Foreign(_))
    }
}

/// Whether `secret` (the one `spec.secretName` names) is kacme's for `certificate`; see the module.
pub fn secret_ownership(secret: &Secret, certificate: &Certificate) -> SecretOwnership {
    let secret_name = secret.metadata.name.as_deref().unwrap_or_default();
    let name = certificate.metadata.name.as_deref().unwrap_or_default();
    let Some(uid) = certificate.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
        return SecretOwnership::Foreign(format!(
            "Certificate {name:?} has no UID yet, so no Secret can be known to be its own"
        ));
    };
    match annotation(secret, ANNOTATION_CERTIFICATE_NAME) {
        Some(owner) if owner == name => {}
        Some(owner) => {
            return SecretOwnership::Foreign(format!(
                "Secret {secret_name:?} belongs to Certificate {owner:?} (annotation \
                 {ANNOTATION_CERTIFICATE_NAME}); kacme will not overwrite it: choose another secretName"
            ));
        }
        None => {
            return SecretOwnership::Foreign(format!(
                "Secret {secret_name:?} exists and was not created by kacme (no {ANNOTATION_CERTIFICATE_NAME} \
                 annotation); kacme will not overwrite it: delete it or choose another secretName"
            ));
        }
    }
    let recorded = annotation(secret, ANNOTATION_CERTIFICATE_UID);
    if recorded == Some(uid) {
        return SecretOwnership::Ours;
    }
    if recorded.is_none() && issued_before(certificate) {
        return SecretOwnership::WrittenBeforeUpgrade;
    }
    if is_labelled_ours(secret) && created_before(secret, certificate) {
        let earlier = recorded.map(|u| format!(" (UID {u})")).unwrap_or_default();
        return SecretOwnership::OfEarlierCertificate(format!(
            "Issuing certificate as Secret {secret_name:?} was written for an earlier Certificate {name:?}{earlier}, \
             since deleted; it is replaced with a certificate for a new key"
        ));
    }
    let why = match recorded {
        Some(other) => format!("it records Certificate UID {other}, not this Certificate's {uid}"),
        None => {
            format!("it records no Certificate UID ({ANNOTATION_CERTIFICATE_UID}) and this Certificate never issued")
        }
    };
    SecretOwnership::Foreign(format!(
        "Secret {secret_name:?} names Certificate {name:?} but was not written by kacme for this one: {why}; \
         kacme will not overwrite it: delete it or choose another secretName"
    ))
}

/// Whether `secret` (the next-key Secret) is kacme's for `certificate`: only when it records the
/// Certificate's UID, in the annotation or (as kacme before the upgrade wrote it) in an ownerReference to
/// the Certificate. A next-key Secret is never adopted otherwise: kacme neither reads, replaces nor deletes
/// it.
pub fn next_key_ownership(secret: &Secret, certificate: &Certificate) -> SecretOwnership {
    let Some(uid) = certificate.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
        return SecretOwnership::Foreign("the Certificate has no UID yet".into());
    };
    let name = certificate.metadata.name.as_deref().unwrap_or_default();
    let names_it = annotation(secret, ANNOTATION_CERTIFICATE_NAME) == Some(name);
    let annotated = annotation(secret, ANNOTATION_CERTIFICATE_UID) == Some(uid);
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Certificate" && owner.uid == uid && owner.name == name);
    if names_it && (annotated || owned) {
        SecretOwnership::Ours
    } else {
        let secret_name = secret.metadata.name.as_deref().unwrap_or_default();
        SecretOwnership::Foreign(format!(
            "Secret {secret_name:?} is in the way of the next private key of Certificate {name:?} and was not \
             written by kacme for it; kacme will neither read, replace nor delete it: delete or rename it"
        ))
    }
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn is_labelled_ours(secret: &Secret) -> bool {
    secret.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY)
}

/// Whether kacme stored a certificate for this Certificate before (status is kacme's to write).
fn issued_before(certificate: &Certificate) -> bool {
    certificate.status.as_ref().and_then(|s| s.revision).is_some_and(|r| r >= 1)
}

/// Whether the Secret existed before the Certificate did (both timestamps known).
fn created_before(secret: &Secret, certificate: &Certificate) -> bool {
    match (&secret.metadata.creation_timestamp, &certificate.metadata.creation_timestamp) {
        (Some(secret), Some(certificate)) => secret.0 < certificate.0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateStatus;
    use crate::desired::testing::certificate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use std::collections::BTreeMap;

    const UID: &str = "0b6b2c4e-1d1f-4c55-9a7e-3c1f00000001";
    const OTHER_UID: &str = "0b6b2c4e-1d1f-4c55-9a7e-3c1f00000099";

    fn at(text: &str) -> Option<Time> {
        Some(Time(text.parse().unwrap()))
    }

    /// A Secret `web-tls` with the given annotations (name, UID), managed-by label or not, created at
    /// `created`.
    fn secret(name: Option<&str>, uid: Option<&str>, labelled: bool, created: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("web-tls".into());
        let mut annotations = BTreeMap::new();
        if let Some(name) = name {
            annotations.insert(ANNOTATION_CERTIFICATE_NAME.to_string(), name.to_string());
        }
        if let Some(uid) = uid {
            annotations.insert(ANNOTATION_CERTIFICATE_UID.to_string(), uid.to_string());
        }
        secret.metadata.annotations = Some(annotations);
        if labelled {
            secret.metadata.labels = Some(BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())]));
        }
        secret.metadata.creation_timestamp = at(created);
        secret
    }

    /// The fixture Certificate, created at noon, issued before or not.
    fn web(issued: bool) -> Certificate {
        let mut certificate = certificate();
        certificate.metadata.creation_timestamp = at("2026-06-01T12:00:00Z");
        if issued {
            certificate.status = Some(CertificateStatus { revision: Some(3), ..Default::default() });
        }
        certificate
    }

    const BEFORE: &str = "2026-06-01T11:00:00Z";
    const AFTER: &str = "2026-06-01T13:00:00Z";

    #[derive(Debug, PartialEq)]
    enum Want {
        Ours,
        Upgrade,
        Earlier,
        Foreign,
    }

    fn kind(ownership: &SecretOwnership) -> Want {
        match ownership {
            SecretOwnership::Ours => Want::Ours,
            SecretOwnership::WrittenBeforeUpgrade => Want::Upgrade,
            SecretOwnership::OfEarlierCertificate(_) => Want::Earlier,
            SecretOwnership::Foreign(_) => Want::Foreign,
        }
    }

    #[test]
    fn a_secret_is_ours_only_when_it_records_this_certificates_uid_or_one_of_two_safe_exceptions() {
        // (case, secret, certificate issued before, expected)
        let cases = [
            ("name and UID of this Certificate", secret(Some("web"), Some(UID), true, AFTER), false, Want::Ours),
            ("the UID decides, not the label", secret(Some("web"), Some(UID), false, AFTER), false, Want::Ours),
            ("a forged name on a new Secret", secret(Some("web"), None, true, AFTER), false, Want::Foreign),
            ("a forged name and another UID", secret(Some("web"), Some(OTHER_UID), true, AFTER), true, Want::Foreign),
            ("no kacme annotation at all", secret(None, None, true, BEFORE), true, Want::Foreign),
            ("another Certificate's name", secret(Some("api"), Some(UID), true, AFTER), true, Want::Foreign),
            ("the name only, once issued (upgrade)", secret(Some("web"), None, false, AFTER), true, Want::Upgrade),
            (
                "an earlier Certificate's, older than this one",
                secret(Some("web"), Some(OTHER_UID), true, BEFORE),
                false,
                Want::Earlier,
            ),
            ("an earlier one's before the upgrade", secret(Some("web"), None, true, BEFORE), false, Want::Earlier),
            (
                "older but not labelled as kacme's",
                secret(Some("web"), Some(OTHER_UID), false, BEFORE),
                false,
                Want::Foreign,
            ),
        ];
        for (case, secret, issued, want) in cases {
            let ownership = secret_ownership(&secret, &web(issued));
            assert_eq!(kind(&ownership), want, "{case}: {ownership:?}");
        }
    }

    #[test]
    fn a_certificate_without_a_uid_owns_no_secret() {
        let mut certificate = web(true);
        certificate.metadata.uid = None;
        let ownership = secret_ownership(&secret(Some("web"), Some(UID), true, AFTER), &certificate);
        assert_eq!(kind(&ownership), Want::Foreign);
        assert_eq!(
            kind(&next_key_ownership(&secret(Some("web"), Some(UID), true, AFTER), &certificate)),
            Want::Foreign
        );
    }

    #[test]
    fn only_secrets_kacme_wrote_may_be_read_and_only_foreign_ones_are_never_replaced() {
        // (ownership, may read, may replace)
        let cases = [
            (SecretOwnership::Ours, true, true),
            (SecretOwnership::WrittenBeforeUpgrade, true, true),
            (SecretOwnership::OfEarlierCertificate(String::new()), false, true),
            (SecretOwnership::Foreign(String::new()), false, false),
        ];
        for (ownership, read, replace) in cases {
            assert_eq!((ownership.may_read(), ownership.may_replace()), (read, replace), "{ownership:?}");
        }
    }

    fn owner(name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "kacme.dev/v1alpha1".into(),
            kind: "Certificate".into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn a_next_key_secret_is_ours_only_when_it_records_the_uid_in_its_annotation_or_its_owner() {
        let with_owner = |mut s: Secret, o: OwnerReference| {
            s.metadata.owner_references = Some(vec![o]);
            s
        };
        // (case, secret, expected)
        let cases = [
            ("the UID annotation", secret(Some("web"), Some(UID), true, AFTER), Want::Ours),
            (
                "an owner with the UID (before the upgrade)",
                with_owner(secret(Some("web"), None, true, AFTER), owner("web", UID)),
                Want::Ours,
            ),
            ("the name only", secret(Some("web"), None, true, AFTER), Want::Foreign),
            ("another UID", secret(Some("web"), Some(OTHER_UID), true, BEFORE), Want::Foreign),
            (
                "an owner with another UID",
                with_owner(secret(Some("web"), None, true, BEFORE), owner("web", OTHER_UID)),
                Want::Foreign,
            ),
            ("the UID but another name", secret(Some("api"), Some(UID), true, AFTER), Want::Foreign),
        ];
        for (case, secret, want) in cases {
            let ownership = next_key_ownership(&secret, &web(true));
            assert_eq!(kind(&ownership), want, "{case}: {ownership:?}");
        }
    }
}
