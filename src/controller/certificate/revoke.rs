//! Revocation: of the certificate in the Secret when a user asks (`kacme.dev/revoke-requested-at`, set by
//! `kacme revoke`), and, when the issuer's `revocation` policy says so, of a deleted Certificate's certificate
//! and of a certificate that a renewal with a new key replaced.

use super::{NEXT_STEP, Pass};
use crate::acme::{AcmeAccount, Retry, RevocationReason};
use crate::api::RevocationStatus;
use crate::api::names::{ANNOTATION_REVOCATION_REASON, ANNOTATION_REVOKE_REQUESTED_AT, TLS_CRT};
use crate::controller::ReconcileError;
use crate::controller::accounts::IssuerInfo;
use crate::decision::secret_ownership;
use crate::desired::{EventNote, EventReason};
use crate::pki::{ParsedChain, parse_chain};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use std::time::Duration;

/// How long the deletion of a Certificate waits for its revocation before it goes ahead without.
const DELETION_REVOCATION_DEADLINE: Duration = Duration::from_secs(300);
/// How soon a revocation the CA could not do now is tried again.
const REVOCATION_RETRY: Duration = Duration::from_secs(30);

/// A revocation asked for and not yet acted on: the annotation's value and the reason asked for.
pub(super) struct RevocationRequest {
    request: String,
    reason: Result<RevocationReason, String>,
}

/// The revocation the Certificate's annotations ask for, unless the status shows it was acted on.
pub(super) fn pending_revocation(certificate: &crate::api::Certificate) -> Option<RevocationRequest> {
    let annotations = certificate.metadata.annotations.as_ref()?;
    let request = annotations.get(ANNOTATION_REVOKE_REQUESTED_AT)?;
    let handled = certificate.status.as_ref().and_then(|s| s.revocation.as_ref()).and_then(|r| r.request.as_ref());
    if handled == Some(request) {
        return None;
    }
    let reason = match annotations.get(ANNOTATION_REVOCATION_REASON) {
        None => Ok(RevocationReason::Unspecified),
        Some(text) => RevocationReason::parse(text)
            .map_err(|problem| format!("annotation {ANNOTATION_REVOCATION_REASON}: {problem}")),
    };
    Some(RevocationRequest { request: request.clone(), reason })
}

/// The chain in a Secret that is this Certificate's, if it holds a readable one.
fn stored_chain(secret: Option<&Secret>, certificate: &crate::api::Certificate) -> Option<ParsedChain> {
    let secret = secret.filter(|s| secret_ownership(s, certificate).may_read())?;
    parse_chain(&secret.data.as_ref()?.get(TLS_CRT)?.0).ok()
}

impl Pass<'_> {
    /// Acts on a revocation request: revokes the certificate in the Secret and records it, so that the next
    /// pass issues a new one (reason `Revoked`). A CA that cannot answer now is asked again later; a refusal
    /// is recorded with the CA's words.
    pub(super) async fn revoke_requested(
        &mut self,
        secret: Option<&Secret>,
        pending: RevocationRequest,
    ) -> Result<Action, ReconcileError> {
        let RevocationRequest { request, reason } = pending;
        let reason = match reason {
            Ok(reason) => reason,
            Err(problem) => return Ok(self.revocation_refused(request, String::new(), "", problem).await),
        };
        let Some(chain) = stored_chain(secret, self.certificate) else {
            let problem =
                format!("Secret {} holds no certificate of this Certificate", self.certificate.spec.secret_name);
            return Ok(self.revocation_refused(request, String::new(), reason.as_str(), problem).await);
        };
        let serial = chain.leaf.serial.clone();
        let account = match self.issuer_and_account().await {
            Ok((_, account)) => account,
            Err(unusable) => return self.wait_for_issuer(&unusable).await,
        };
        match account.revoke(&chain.certificates[0], reason).await {
            Ok(()) => {
                tracing::info!(%serial, %reason, "revoked the certificate as asked");
                self.status.revocation = Some(RevocationStatus {
                    request: Some(request),
                    serial: serial.clone(),
                    reason: reason.to_string(),
                    revoked_at: Some(Time(self.now)),
                    error: None,
                });
                let message = format!("Revoked certificate serial {serial} (reason {reason}); issuing a new one");
                self.publish(EventNote::normal(EventReason::Revoked, message)).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Err(error) if error.retry == Retry::Never => {
                Ok(self.revocation_refused(request, serial, reason.as_str(), error.to_string()).await)
            }
            Err(error) => {
                let wait = match error.retry {
                    Retry::After(delay) => delay.max(REVOCATION_RETRY),
                    _ => Duration::from_secs(1),
                };
                tracing::warn!(%serial, %error, "revoking failed; trying again in {wait:?}");
                let message = format!("Revoking certificate serial {serial} failed, trying again in {wait:?}: {error}");
                self.publish(EventNote::warning(EventReason::RevocationFailed, message)).await;
                Ok(Action::requeue(wait))
            }
        }
    }

    /// Records a revocation request that cannot be done (the reason named no reason, nothing to revoke, or the
    /// CA refused): said once, in status and an Event, and not tried again until the annotation changes.
    async fn revocation_refused(&mut self, request: String, serial: String, reason: &str, problem: String) -> Action {
        tracing::warn!(%problem, "a revocation request cannot be done");
        self.status.revocation = Some(RevocationStatus {
            request: Some(request),
            serial,
            reason: reason.to_string(),
            revoked_at: None,
            error: Some(problem.clone()),
        });
        self.publish(EventNote::warning(EventReason::RevocationFailed, format!("Not revoked: {problem}"))).await;
        Action::requeue(NEXT_STEP)
    }

    /// The issuer's `revocation.whenDeleted`: revokes the certificate of this Certificate, which is being
    /// deleted. `Ok` when done, not asked for, or given up after [`DELETION_REVOCATION_DEADLINE`]; an error
    /// holds the deletion (the finalizer) for a retry.
    pub(super) async fn revoke_on_deletion(&mut self) -> Result<(), ReconcileError> {
        let Some(issuer) = self.issuer_for_revocation().await else { return Ok(()) };
        if issuer.acme.revocation.as_ref().and_then(|r| r.when_deleted) != Some(true) {
            return Ok(());
        }
        let name = &self.certificate.spec.secret_name;
        let secret = self
            .ctx
            .read_secret(&self.namespace, name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))?;
        let Some(chain) = stored_chain(secret.as_deref(), self.certificate) else { return Ok(()) };
        let serial = chain.leaf.serial.clone();
        let reason = RevocationReason::CessationOfOperation;
        let revoked = match self.issuer_and_account().await {
            Ok((_, account)) => account.revoke(&chain.certificates[0], reason).await.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{} cannot be used", issuer.describe())),
        };
        match revoked {
            Ok(()) => {
                tracing::info!(%serial, "revoked the certificate of a deleted Certificate");
                let message =
                    format!("Revoked certificate serial {serial} (reason {reason}): the Certificate is deleted");
                self.publish(EventNote::normal(EventReason::Revoked, message)).await;
                Ok(())
            }
            Err(problem) => {
                let deleting_for = self
                    .certificate
                    .metadata
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| self.now.duration_since(t.0).unsigned_abs())
                    .unwrap_or_default();
                if deleting_for < DELETION_REVOCATION_DEADLINE {
                    return Err(ReconcileError::Revocation(format!(
                        "revoking certificate serial {serial} before the Certificate goes: {problem}"
                    )));
                }
                let message = format!(
                    "Gave up revoking certificate serial {serial} after {}s; the Certificate goes without: {problem}",
                    deleting_for.as_secs()
                );
                tracing::warn!(%serial, %problem, "gave up revoking the certificate of a deleted Certificate");
                self.publish(EventNote::warning(EventReason::RevocationFailed, message)).await;
                Ok(())
            }
        }
    }

    /// The issuer's `revocation.whenKeyRotated`: revokes `replaced` (the Secret's previous certificate) when the
    /// new certificate has another key. Best effort: a failure is an Event, the old certificate then expires.
    pub(super) async fn revoke_replaced(
        &self,
        issuer: &IssuerInfo,
        account: &AcmeAccount,
        replaced: Option<&ParsedChain>,
        new: &ParsedChain,
    ) {
        if issuer.acme.revocation.as_ref().and_then(|r| r.when_key_rotated) != Some(true) {
            return;
        }
        let Some(old) = replaced.filter(|old| old.leaf.public_key_raw != new.leaf.public_key_raw) else { return };
        let serial = &old.leaf.serial;
        let asked = self.status.revocation.as_ref().filter(|r| r.revoked_at.is_some()).map(|r| &r.serial);
        if asked == Some(serial) {
            return; // revoked already, as asked (`kacme revoke`)
        }
        let reason = RevocationReason::Superseded;
        match account.revoke(&old.certificates[0], reason).await {
            Ok(()) => {
                let message =
                    format!("Revoked the replaced certificate serial {serial} (reason {reason}): its key was rotated");
                self.publish(EventNote::normal(EventReason::Revoked, message)).await;
            }
            Err(error) => {
                tracing::warn!(%serial, %error, "revoking the replaced certificate failed");
                let message =
                    format!("Revoking the replaced certificate serial {serial} failed (it will expire): {error}");
                self.publish(EventNote::warning(EventReason::RevocationFailed, message)).await;
            }
        }
    }

    /// The Certificate's issuer for a revocation: from the cache, else read; `None` when it is gone.
    async fn issuer_for_revocation(&self) -> Option<IssuerInfo> {
        let reference = &self.certificate.spec.issuer_ref;
        if let Some(issuer) = self.ctx.cached_issuer(reference, &self.namespace) {
            return Some(issuer);
        }
        self.read_issuer().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_revocation_is_pending_until_the_status_shows_its_request() {
        let mut certificate = crate::desired::testing::certificate();
        assert!(pending_revocation(&certificate).is_none(), "no annotation, nothing to revoke");
        certificate.metadata.annotations =
            Some(BTreeMap::from([(ANNOTATION_REVOKE_REQUESTED_AT.to_string(), "t1".to_string())]));
        let pending = pending_revocation(&certificate).expect("pending");
        assert_eq!((pending.request.as_str(), pending.reason), ("t1", Ok(RevocationReason::Unspecified)));
        certificate.status = Some(crate::api::CertificateStatus {
            revocation: Some(RevocationStatus {
                request: Some("t1".into()),
                serial: "01".into(),
                reason: "unspecified".into(),
                revoked_at: None,
                error: Some("refused".into()),
            }),
            ..Default::default()
        });
        assert!(pending_revocation(&certificate).is_none(), "acted on, even when it failed");
        let annotations = certificate.metadata.annotations.as_mut().unwrap();
        annotations.insert(ANNOTATION_REVOKE_REQUESTED_AT.into(), "t2".into());
        annotations.insert(ANNOTATION_REVOCATION_REASON.into(), "keyCompromise".into());
        let pending = pending_revocation(&certificate).expect("a new request");
        assert_eq!(pending.reason, Ok(RevocationReason::KeyCompromise));
        let annotations = certificate.metadata.annotations.as_mut().unwrap();
        annotations.insert(ANNOTATION_REVOCATION_REASON.into(), "stolen".into());
        let problem = pending_revocation(&certificate).expect("a request").reason.unwrap_err();
        assert!(problem.contains(ANNOTATION_REVOCATION_REASON) && problem.contains("keyCompromise"), "{problem}");
    }
}
