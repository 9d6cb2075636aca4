//! Phase 1: no order in flight. Is a certificate needed, and why?

use super::{FOREIGN_SECRET_WAIT, Pass};
use crate::controller::ReconcileError;
use crate::decision::{IssuanceDecision, Observed, SecretOwnership, issuance_decision, secret_ownership};
use crate::desired::{EventNote, EventReason, Validity};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use std::time::Duration;

impl Pass<'_> {
    pub(super) async fn decide(&mut self, secret: Option<&Secret>) -> Result<Action, ReconcileError> {
        if let Some(secret) = secret
            && secret_ownership(secret, self.certificate) == SecretOwnership::WrittenBeforeUpgrade
        {
            self.record_uid(secret).await?;
        }
        let observed = Observed { certificate: self.certificate, secret, now: self.now };
        match issuance_decision(&observed, &self.ctx.config.backoff) {
            IssuanceDecision::SecretNotOwned { message } => {
                if self.transition().secret_not_owned(&message) {
                    self.publish(EventNote::warning(EventReason::SecretNotOwned, message)).await;
                }
                Ok(Action::requeue(FOREIGN_SECRET_WAIT))
            }
            IssuanceDecision::UpToDate { not_before, not_after, renewal_time } => {
                self.transition().up_to_date(Validity { not_before, not_after, renewal_time });
                self.clean_up_leftover_solver_objects().await;
                Ok(self.requeue_at_renewal(renewal_time))
            }
            IssuanceDecision::BackOff { reason, message, retry_at } => {
                self.transition().needs_issuance(reason, &message);
                let wait = retry_at.duration_since(self.now).unsigned_abs();
                Ok(Action::requeue(wait.max(Duration::from_secs(1))))
            }
            IssuanceDecision::Issue { reason, message } => {
                self.transition().needs_issuance(reason, &message);
                self.start_order(reason, &message, secret).await
            }
        }
    }

    /// Adopts a Secret kacme wrote for this Certificate before it recorded UIDs: records the UID, once.
    async fn record_uid(&self, secret: &Secret) -> Result<(), ReconcileError> {
        let uid = self.certificate.metadata.uid.as_deref().unwrap_or_default();
        let name = &self.certificate.spec.secret_name;
        self.ctx
            .record_certificate_uid(&self.namespace, secret, uid)
            .await
            .map_err(|e| ReconcileError::kube(format!("recording the Certificate's UID on Secret {name}"), e))?;
        tracing::info!(secret = %name, "adopted a Secret written before kacme recorded Certificate UIDs");
        Ok(())
    }
}
