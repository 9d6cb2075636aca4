//! Revoking a certificate (RFC 8555 section 7.6), signed with the key of the account that ordered it.

use super::account::AcmeAccount;
use super::error::AcmeError;
use super::observe::{AcmeAction, labelled};
use rustls_pki_types::CertificateDer;

/// Why a certificate is revoked: the RFC 5280 CRLReason codes an ACME subscriber may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, as `kacme revoke --reason` and the annotation spell them.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The RFC 5280 name, for example `keyCompromise`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
        }
    }

    /// The reason named `text` (its RFC 5280 name); the error lists the names.
    pub fn parse(text: &str) -> Result<RevocationReason, String> {
        RevocationReason::ALL.into_iter().find(|r| r.as_str() == text.trim()).ok_or_else(|| {
            let names: Vec<&str> = RevocationReason::ALL.iter().map(|r| r.as_str()).collect();
            format!(
                "{} is not a revocation reason (one of: {})",
                crate::api::validation::quoted(text),
                names.join(", ")
            )
        })
    }

    fn to_acme(self) -> instant_acme::RevocationReason {
        match self {
            RevocationReason::Unspecified => instant_acme::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => instant_acme::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => instant_acme::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => instant_acme::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => instant_acme::RevocationReason::CessationOfOperation,
        }
    }
}

impl std::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AcmeAccount {
    /// Revokes the certificate `certificate_der` (a leaf this account ordered). A certificate the CA says is
    /// revoked already (`alreadyRevoked`) counts as revoked.
    pub async fn revoke(&self, certificate_der: &[u8], reason: RevocationReason) -> Result<(), AcmeError> {
        let certificate = CertificateDer::from(certificate_der);
        // `unspecified` is sent as no reason: RFC 5280 section 5.3.1 says not to use the code itself.
        let reason = (reason != RevocationReason::Unspecified).then(|| reason.to_acme());
        let request = instant_acme::RevocationRequest { certificate: &certificate, reason };
        match labelled(AcmeAction::Revocation, self.inner.revoke(&request)).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let error = AcmeError::classify(AcmeAction::Revocation, error);
                if error.is_problem("alreadyRevoked") { Ok(()) } else { Err(error) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_read_by_their_rfc_5280_names_only() {
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::parse(reason.as_str()), Ok(reason));
        }
        assert_eq!(RevocationReason::parse(" keyCompromise "), Ok(RevocationReason::KeyCompromise));
        let refused = RevocationReason::parse("key compromise").unwrap_err();
        assert!(refused.contains("keyCompromise, affiliationChanged"), "{refused}");
        assert!(RevocationReason::parse("caCompromise").is_err(), "not for a subscriber to say");
    }
}
