//! Phase 3: an order is in flight. Move it on by one step: solver objects, challenges, finalize.

use super::failure::IssuanceError;
use super::{NEXT_STEP, Pass};
use crate::acme::{AcmeAccount, Advance, AdvanceOptions, OrderProgress, OrderSession, OrderState};
use crate::api::names::TLS_KEY;
use crate::api::{CertificateReason, IssuanceReason};
use crate::controller::ReconcileError;
use crate::controller::accounts::IssuerInfo;
use crate::controller::context::KeptOrder;
use crate::controller::kube_solver::KubeSolver;
use crate::decision::{
    SecretOwnership, next_key_ownership, order_is_for_another_issuer, same_identifiers, secret_ownership,
};
use crate::desired::{SolverWait, authorization_events, first_look_at_new_solvers, next_key_secret_name, solver_wait};
use crate::pki::{build_csr, key_matches_certificate, parse_chain, parse_private_key};
use kube::runtime::controller::Action;

impl Pass<'_> {
    pub(super) async fn continue_order(&mut self, progress: OrderProgress) -> Result<Action, ReconcileError> {
        let spec = &self.certificate.spec;
        let wanted: Vec<String> = spec.dns_names.iter().chain(&spec.ip_addresses).cloned().collect();
        if !same_identifiers(&wanted, &progress.identifiers) {
            self.abandon_order(
                IssuanceReason::SpecChanged.as_str(),
                "The names changed during issuance; starting a new order",
            )
            .await;
            return Ok(Action::requeue(NEXT_STEP));
        }
        // The order's key and issuer: kept in memory by the process that runs the order, else read back from
        // the next-key Secret (a restarted operator).
        let (key, session, other_issuer) = match self.ctx.take_order(self.certificate, &progress.url) {
            Some(kept) => {
                let other_issuer = kept.issuer != spec.issuer_ref;
                (Some(kept.key), Some(kept.session), other_issuer)
            }
            None => {
                let key_secret_name = next_key_secret_name(&self.name());
                let key_secret = self
                    .ctx
                    .read_secret(&self.namespace, &key_secret_name)
                    .await
                    .map_err(|e| ReconcileError::kube(format!("reading Secret {key_secret_name}"), e))?;
                // A next-key Secret that does not record this Certificate's UID is never read.
                let key_secret =
                    key_secret.filter(|s| next_key_ownership(s, self.certificate) == SecretOwnership::Ours);
                let other_issuer =
                    key_secret.as_ref().is_some_and(|s| order_is_for_another_issuer(s, &spec.issuer_ref));
                let key = key_secret
                    .as_ref()
                    .and_then(|s| s.data.as_ref()?.get(TLS_KEY))
                    .and_then(|v| parse_private_key(&v.0).ok());
                (key, None, other_issuer)
            }
        };
        if other_issuer {
            self.abandon_order(
                IssuanceReason::SpecChanged.as_str(),
                "The issuer changed during issuance; starting a new order",
            )
            .await;
            return Ok(Action::requeue(NEXT_STEP));
        }
        let (issuer, account) = match self.issuer_and_account().await {
            Ok(found) => found,
            Err(wait) => {
                if let (Some(key), Some(session)) = (key, session) {
                    let issuer = spec.issuer_ref.clone();
                    self.ctx.keep_order(self.certificate, KeptOrder { session, key, issuer });
                }
                return self.wait_for_issuer(&wait).await;
            }
        };
        let Some(key) = key else {
            return self.finish_stored_order(&issuer, &account, progress).await;
        };
        let request = match self.csr_request(&key) {
            Ok(request) => request,
            Err(error) => return self.fail(error).await,
        };
        let csr = match build_csr(&request, &key) {
            Ok(csr) => csr,
            Err(error) => return self.fail(IssuanceError::BuildCsr(error)).await,
        };
        let mut session = match session {
            Some(session) => session,
            None => match OrderSession::resume(&account, progress.clone()).await {
                Ok(session) => session,
                Err(error) => return self.acme_failure(error, Some(progress), &account, &issuer).await,
            },
        };
        let solver = KubeSolver::new(self.ctx, self.certificate, &issuer.acme);
        let options = AdvanceOptions {
            self_check: self.ctx.config.self_check.clone(),
            max_wait: self.ctx.config.max_wait_per_step,
        };
        let before = session.progress().clone();
        let advanced = session.advance(&account, &solver, &csr, &options).await;
        self.solver_objects_removed.extend(solver.removed());
        let after = session.progress().clone();
        for note in authorization_events(&before, &after) {
            self.publish(note).await;
        }
        let order = self.order_status(&after, &account);
        self.status.order = Some(order.clone());
        match advanced {
            Ok(Advance::Wait { after: wait, reason }) => {
                let now = u64::try_from(self.now.as_second()).unwrap_or_default();
                let deadline = self.ctx.config.authorization_deadline;
                let wait = match solver_wait(&after, now, deadline) {
                    SolverWait::NotWaiting => wait,
                    // A challenge the CA is to be asked about again may be due before the next look at a solver.
                    SolverWait::LookAgainAfter(delay) => delay.min(session.next_resubmission().unwrap_or(delay)),
                    SolverWait::Overdue { identifier, waited, last_message, submitted: false } => {
                        let detail = last_message.unwrap_or_else(|| "its solver reported nothing".into());
                        let error = IssuanceError::SolverNotReady { identifier, waited, deadline, detail };
                        return self.fail(error).await;
                    }
                    SolverWait::Overdue { identifier, waited, last_message, submitted: true } => {
                        let detail = last_message.unwrap_or_else(|| "the CA reported no error".into());
                        let error = IssuanceError::NotValidatedInTime { identifier, waited, deadline, detail };
                        return self.fail(error).await;
                    }
                };
                if first_look_at_new_solvers(&before, &after) {
                    // Usually ready at the next look, which writes what it finds: no write for this one.
                    self.status = self.certificate.status.clone().unwrap_or_default();
                } else {
                    self.transition().order_waiting(order, &reason);
                }
                let issuer = spec.issuer_ref.clone();
                self.ctx.keep_order(self.certificate, KeptOrder { session, key, issuer });
                Ok(Action::requeue(wait.max(NEXT_STEP)))
            }
            Ok(Advance::Issued(chain)) => self.store_certificate(&issuer, &account, &chain, &key, &request).await,
            Err(error) => self.acme_failure(error, Some(after), &account, &issuer).await,
        }
    }

    /// The order's private key is gone. A pass that stored the certificate deletes the key and then writes
    /// status: when it was interrupted in between (a crash), the order is valid and the Secret already holds
    /// its certificate and key, so finish that issuance (revision, Issued) from the order instead of ordering
    /// again. Otherwise the key is lost: start a new order.
    async fn finish_stored_order(
        &mut self,
        issuer: &IssuerInfo,
        account: &AcmeAccount,
        progress: OrderProgress,
    ) -> Result<Action, ReconcileError> {
        let secret = self.read_certificate_secret().await?;
        let stored_key = secret
            .as_deref()
            .filter(|s| secret_ownership(s, self.certificate).may_read())
            .and_then(|s| s.data.as_ref()?.get(TLS_KEY))
            .and_then(|value| parse_private_key(&value.0).ok());
        if let Some(key) = stored_key
            && let Ok(request) = self.csr_request(&key)
            && let Ok(csr) = build_csr(&request, &key)
        {
            let session = OrderSession::resume(account, progress.clone()).await;
            // Only a valid order: advancing any other would finalize it with the Secret's current key.
            if let Ok(mut session) = session
                && session.progress().state == OrderState::Valid
            {
                let solver = KubeSolver::new(self.ctx, self.certificate, &issuer.acme);
                let options = AdvanceOptions { self_check: None, max_wait: self.ctx.config.max_wait_per_step };
                if let Ok(Advance::Issued(chain)) = session.advance(account, &solver, &csr, &options).await
                    && parse_chain(chain.as_bytes()).is_ok_and(|c| key_matches_certificate(&key, &c.leaf))
                {
                    return self.store_certificate(issuer, account, &chain, &key, &request).await;
                }
            }
        }
        self.abandon_order(
            CertificateReason::MissingPrivateKey.as_str(),
            "The private key of the order in progress is gone; starting a new order",
        )
        .await;
        Ok(Action::requeue(NEXT_STEP))
    }
}
