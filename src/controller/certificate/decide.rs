//! Phase 1: no order in flight. Is a certificate needed, and why?

use super::{FOREIGN_SECRET_WAIT, IssuerUnusable, NEXT_STEP, Pass};
use crate::api::RenewalInfoStatus;
use crate::controller::ReconcileError;
use crate::decision::{IssuanceDecision, Observed, SecretOwnership, issuance_decision, secret_ownership};
use crate::desired::{EventNote, EventReason, Validity, secret_rewrite_needed};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use std::time::Duration;

/// The shortest wait between two renewal-window checks of a certificate, whatever the CA's Retry-After
/// (RFC 9773 section 4.3.2 suggests clamping it to between a minute and a day; the upper bound is the
/// operator's `--renewal-info-max-interval`).
const MIN_RENEWAL_INFO_INTERVAL: Duration = Duration::from_secs(60);
/// How soon to look again for the renewal window when the issuer is missing, not Ready or refuses.
const RENEWAL_INFO_ISSUER_WAIT: Duration = Duration::from_secs(300);
/// How soon to ask again after a failed renewal-window check.
const RENEWAL_INFO_ERROR_WAIT: Duration = Duration::from_secs(3600);

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
            IssuanceDecision::UpToDate { not_before, not_after, renewal_time, renewal_id } => {
                self.transition().up_to_date(Validity { not_before, not_after, renewal_time });
                if let Some(secret) = secret
                    && let Some(why) = secret_rewrite_needed(self.certificate, secret)
                    && let Some(action) = self.rewrite_secret(secret, &why).await?
                {
                    return Ok(action);
                }
                self.clean_up_leftover_solver_objects().await;
                let before = self.status.renewal_info.clone();
                let next_check = self.check_renewal_info(renewal_id.as_deref()).await;
                let window = |info: &Option<RenewalInfoStatus>| {
                    info.as_ref().map(|i| (i.certificate_id.clone(), i.window_start.clone(), i.window_end.clone()))
                };
                if window(&before) != window(&self.status.renewal_info) {
                    // A new window may move the renewal: decide again with it.
                    return Ok(Action::requeue(NEXT_STEP));
                }
                Ok(self.requeue_at_renewal(renewal_time, next_check))
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

    /// Asks the CA for the renewal window of the stored certificate (RFC 9773) when it is time to, and keeps
    /// its answer in status; returns when to ask again (`None`: not at all, the CA offers no renewal
    /// information or the certificate has no identifier). Advisory: a failure only delays the next check,
    /// and kacme renews on its own schedule meanwhile.
    pub(super) async fn check_renewal_info(&mut self, renewal_id: Option<&str>) -> Option<Timestamp> {
        let Some(id) = renewal_id else {
            self.status.renewal_info = None;
            return None;
        };
        let known = self.status.renewal_info.clone().filter(|info| info.certificate_id == id);
        if let Some(info) = &known
            && info.next_check.0 > self.now
        {
            return Some(info.next_check.0);
        }
        // The issuer's status tells (from the cache, no request) whether its CA offers renewal information.
        let reference = &self.certificate.spec.issuer_ref;
        match self.ctx.cached_issuer(reference, &self.namespace) {
            Some(issuer) if issuer.offers_renewal_info => {}
            Some(_) => {
                self.status.renewal_info = None;
                return None;
            }
            None => return Some(self.now + RENEWAL_INFO_ISSUER_WAIT),
        }
        let account = match self.issuer_and_account().await {
            Ok((_, account)) => account,
            Err(IssuerUnusable::Busy) => return Some(self.now + Duration::from_secs(1)),
            Err(_) => return Some(self.now + RENEWAL_INFO_ISSUER_WAIT),
        };
        let max = self.ctx.config.renewal_info_max_interval;
        let (wait, info) = match account.renewal_info(id).await {
            Ok(None) => {
                self.status.renewal_info = None;
                return None;
            }
            Ok(Some(suggestion)) => (
                suggestion.retry_after.clamp(MIN_RENEWAL_INFO_INTERVAL.min(max), max),
                RenewalInfoStatus {
                    certificate_id: id.to_string(),
                    window_start: Some(Time(suggestion.window_start)),
                    window_end: Some(Time(suggestion.window_end)),
                    explanation_url: suggestion.explanation_url,
                    next_check: Time(self.now),
                    last_error: None,
                },
            ),
            Err(error) => {
                tracing::info!(%error, "asking the CA for the renewal window failed; renewing on kacme's schedule meanwhile");
                let mut info = known.unwrap_or(RenewalInfoStatus {
                    certificate_id: id.to_string(),
                    window_start: None,
                    window_end: None,
                    explanation_url: None,
                    next_check: Time(self.now),
                    last_error: None,
                });
                info.last_error = Some(error.to_string());
                (RENEWAL_INFO_ERROR_WAIT.min(max), info)
            }
        };
        let next_check = self.now + wait;
        self.status.renewal_info = Some(RenewalInfoStatus { next_check: Time(next_check), ..info });
        Some(next_check)
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
