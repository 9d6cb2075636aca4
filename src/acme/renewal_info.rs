//! What the CA's directory offers beyond RFC 8555: renewal windows (ACME Renewal Information, RFC 9773) and
//! profiles (draft-ietf-acme-profiles).

use super::account::AcmeAccount;
use super::error::AcmeError;
use super::observe::{AcmeAction, labelled};
use jiff::Timestamp;
use std::time::Duration;

/// The CA's suggestion for renewing one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalSuggestion {
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    /// The CA's page explaining the window, if any.
    pub explanation_url: Option<String>,
    /// When the CA asks to be asked again (its Retry-After), from now.
    pub retry_after: Duration,
}

impl AcmeAccount {
    /// The CA's renewal window for the certificate with RFC 9773 identifier `certificate_id`, or `None` when
    /// the CA's directory offers no `renewalInfo` (then no request is made).
    pub async fn renewal_info(&self, certificate_id: &str) -> Result<Option<RenewalSuggestion>, AcmeError> {
        let Some(id) = certificate_identifier(certificate_id) else {
            return Err(AcmeError::fatal(
                AcmeAction::RenewalInfo,
                format!("{certificate_id:?} is not an RFC 9773 certificate identifier"),
            ));
        };
        match labelled(AcmeAction::RenewalInfo, self.inner.renewal_info(&id)).await {
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(error) => Err(AcmeError::classify(AcmeAction::RenewalInfo, error)),
            Ok((info, retry_after)) => {
                let at = |t: time::OffsetDateTime| {
                    Timestamp::from_nanosecond(t.unix_timestamp_nanos()).map_err(|_| {
                        AcmeError::fatal(AcmeAction::RenewalInfo, "the CA's renewal window is out of range")
                    })
                };
                Ok(Some(RenewalSuggestion {
                    window_start: at(info.suggested_window.start)?,
                    window_end: at(info.suggested_window.end)?,
                    explanation_url: info.explanation_url,
                    retry_after,
                }))
            }
        }
    }

    /// Whether the CA's directory offers ACME Renewal Information (RFC 9773); the directory is read once per
    /// account.
    pub async fn offers_renewal_info(&self) -> Result<bool, AcmeError> {
        self.lifetime_orders.offers_renewal_info().await
    }

    /// The profiles the CA's directory offers (`meta.profiles`), by name, sorted.
    pub fn profiles(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.profiles().map(|p| p.name.to_string()).collect();
        names.sort();
        names
    }

    /// Whether the CA offers the profile `wanted`; the error says what it offers instead.
    pub fn check_profile(&self, wanted: &str) -> Result<(), String> {
        profile_offered(&self.profiles(), wanted)
    }
}

/// Whether `wanted` is among the `offered` profiles; the error names what is offered.
pub(crate) fn profile_offered(offered: &[String], wanted: &str) -> Result<(), String> {
    if offered.iter().any(|p| p == wanted) {
        return Ok(());
    }
    let wanted = crate::api::validation::quoted(wanted);
    Err(if offered.is_empty() {
        format!("the CA offers no profiles (its directory has no meta.profiles), so not profile {wanted}")
    } else {
        format!("the CA does not offer profile {wanted}; it offers: {}", offered.join(", "))
    })
}

/// An RFC 9773 certificate identifier (`aki.serial`) as instant-acme takes it; `None` for text of another
/// shape.
pub(crate) fn certificate_identifier(text: &str) -> Option<instant_acme::CertificateIdentifier<'_>> {
    let (aki, serial) = text.split_once('.')?;
    let base64url = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (base64url(aki) && base64url(serial))
        .then(|| instant_acme::CertificateIdentifier { authority_key_identifier: aki.into(), serial: serial.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_offered_only_by_name() {
        let offered = vec!["default".to_string(), "shortlived".to_string()];
        assert_eq!(profile_offered(&offered, "shortlived"), Ok(()));
        let refused = profile_offered(&offered, "tlsserver").unwrap_err();
        assert!(refused.contains("\"tlsserver\"") && refused.contains("default, shortlived"), "{refused}");
        let none = profile_offered(&[], "shortlived").unwrap_err();
        assert!(none.contains("offers no profiles"), "{none}");
    }

    #[test]
    fn only_base64url_pairs_are_certificate_identifiers() {
        let id = certificate_identifier("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE").unwrap();
        assert_eq!(id.to_string(), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
        for bad in ["", ".", "a.", ".b", "a.b.c", "a/b.c", "a.b?x=1", "a b.c"] {
            assert!(certificate_identifier(bad).is_none(), "{bad:?}");
        }
    }
}
