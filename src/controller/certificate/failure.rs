//! When a step goes wrong: retry the same order, abandon it, or fail the attempt and back off.

use super::{NEXT_STEP, Pass};
use crate::acme::{AccountOrigin, AcmeAccount, AcmeAction, AcmeError, OrderProgress, Retry};
use crate::api::CertificateReason;
use crate::controller::ReconcileError;
use crate::controller::accounts::IssuerInfo;
use crate::controller::kube_solver::cleanup_all_solver_objects;
use crate::controller::retry::immediate_retry_delay;
use crate::desired::{EventNote, EventReason};
use crate::pki::PkiError;
use kube::runtime::controller::Action;

/// How soon an order is tried again after the CA refused a restored account (which is then looked up).
const RESTORED_ACCOUNT_REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the CA refused the account itself: it does not know it, or (for an account restored from its
/// record and so never checked) it says the request is not authorized, other than for the lifetime asked.
fn refuses_account(error: &AcmeError, account: &AcmeAccount) -> bool {
    error.is_problem("accountDoesNotExist")
        || (account.origin() == AccountOrigin::Restored
            && error.is_problem("unauthorized")
            && !error.refuses_lifetime())
}

/// Why an issuance attempt failed for good; the message is shown in the conditions and the Event.
#[derive(Debug, thiserror::Error)]
pub(super) enum IssuanceError {
    /// No solver of the issuer applies to one of the names.
    #[error("no solver of {issuer} applies to {identifier} (check the solvers' selectors)")]
    NoSolver { identifier: String, issuer: String },
    /// An IP address of the spec does not parse (admission should have refused it).
    #[error("{0:?} is not an IP address")]
    InvalidIpAddress(String),
    /// The private key could not be generated.
    #[error("{0}")]
    GenerateKey(PkiError),
    /// The CSR could not be built.
    #[error("{0}")]
    BuildCsr(PkiError),
    /// The CA sent a chain that does not parse.
    #[error("the CA returned an unreadable chain: {0}")]
    UnreadableChain(PkiError),
    /// The issued chain does not verify to the issuer's issuing roots: it is not stored.
    #[error("{0}")]
    ChainNotTrusted(String),
    /// The CA sent a certificate for a key other than the order's.
    #[error("the CA returned a certificate for another key")]
    CertificateForAnotherKey,
    /// The CA certified other names, addresses or a common name than the order asked for.
    #[error("{0}; it is not stored (a new order would get the same)")]
    CertificateDiffers(String),
    /// The Secret appeared meanwhile and belongs to something else.
    #[error("{0}")]
    SecretNotOwned(String),
    /// A solver did not serve its challenge by the deadline.
    #[error(
        "the solver for {identifier} was still not serving the challenge {}s after it was presented (the deadline \
         is {}s): {detail}",
        waited.as_secs(),
        deadline.as_secs()
    )]
    SolverNotReady { identifier: String, waited: std::time::Duration, deadline: std::time::Duration, detail: String },
    /// The CA did not validate an authorization by the deadline (its route served, but the CA could not
    /// reach it or is still validating): the order is given up.
    #[error(
        "the CA had not validated {identifier} {}s after its challenge was presented (the deadline is {}s); giving \
         up this order: {detail}",
        waited.as_secs(),
        deadline.as_secs()
    )]
    NotValidatedInTime {
        identifier: String,
        waited: std::time::Duration,
        deadline: std::time::Duration,
        detail: String,
    },
    /// The CA refused the lifetime asked for.
    #[error("the CA refused the requested lifetime of {duration} ({detail}): {error}")]
    DurationNotAllowed { duration: String, detail: String, error: Box<AcmeError> },
    /// The profile asked for is not one the CA offers.
    #[error("{0}")]
    ProfileNotOffered(String),
    /// The keystore password cannot be read (the message names the Secret and key, never the value).
    #[error("{0}")]
    KeystorePassword(String),
    /// The additional outputs (combined PEM, DER, PKCS#12) could not be encoded.
    #[error("writing the Secret's additional outputs failed: {0}")]
    EncodeOutputs(PkiError),
    /// The CA refused the order (or the engine gave up on it).
    #[error(transparent)]
    Acme(#[from] AcmeError),
}

impl Pass<'_> {
    /// An ACME error in an order: retry the same order, or fail this issuance for good.
    pub(super) async fn acme_failure(
        &mut self,
        error: AcmeError,
        progress: Option<OrderProgress>,
        account: &AcmeAccount,
        issuer: &IssuerInfo,
    ) -> Result<Action, ReconcileError> {
        if error.action == AcmeAction::Finalize
            && let Some(duration) = self.lifetime_sent(issuer)
            && error.finalize_refuses_lifetime()
        {
            let detail = if error.is_problem("serverInternal") {
                "sent as the order's notAfter; the CA failed to sign it, as step-ca does (the reason only in its \
                 log) for a lifetime above its provisioner's maximum: ask for a shorter duration, or set \
                 sendLifetime: false on the issuer"
            } else {
                "sent as the order's notAfter"
            };
            let detail = detail.to_string();
            return self.fail(IssuanceError::DurationNotAllowed { duration, detail, error: Box::new(error) }).await;
        }
        self.ctx.forget_order(self.certificate);
        let mut error = error;
        if refuses_account(&error, account) {
            // The CA does not know the account (it lost its state, the account was removed, or a restored URL
            // is stale): the next attempt looks the stored key's account up (registering it if need be)
            // instead of using the cached or recorded account forever.
            self.ctx.accounts.distrust(account.uri());
            self.ctx.accounts.forget(issuer.kind, &issuer.secret_namespace, &issuer.name);
            if account.origin() == AccountOrigin::Restored {
                // Restored without asking the CA, and this was its check: not the Certificate's failure. The
                // account is not restored from that URL again, so this happens once.
                tracing::info!(account = account.uri(), %error, "the CA refused the restored ACME account; looking it up");
                error.retry = Retry::After(RESTORED_ACCOUNT_REFUSED_RETRY);
            }
        }
        let key = format!("{}/{}", self.namespace, self.name());
        if error.retry != Retry::Immediately {
            self.ctx.immediate_retries.succeeded(&key);
        }
        match error.retry {
            Retry::Immediately => {
                self.retried_at_once = true;
                Ok(Action::requeue(immediate_retry_delay(self.ctx.immediate_retries.count(&key))))
            }
            Retry::After(delay) => {
                let wishes = crate::controller::retry::wishes_of(&self.certificate.metadata);
                self.ctx.retry_gate.hold_until(&key, wishes, std::time::Instant::now() + delay);
                let order = progress.map(|progress| self.order_status(&progress, account));
                self.transition().retrying(order, delay.as_secs(), &error.to_string());
                Ok(Action::requeue(delay))
            }
            Retry::Never => self.fail(error.into()).await,
        }
    }

    /// The Certificate's duration, when its orders ask the CA for it (see `start::lifetime_to_send`).
    pub(super) fn lifetime_sent(&self, issuer: &IssuerInfo) -> Option<String> {
        let duration = self.certificate.spec.duration?;
        (issuer.acme.send_lifetime != Some(false)).then(|| duration.to_string())
    }

    /// Gives up the order in flight without counting a failure; the next pass starts a new one.
    pub(super) async fn abandon_order(&mut self, reason: &str, message: &str) {
        let order = self.status.order.as_ref().map(|o| o.url.as_str()).unwrap_or_default();
        tracing::info!(reason, order, "{message}");
        self.ctx.forget_order(self.certificate);
        if let Err(failures) = cleanup_all_solver_objects(self.ctx, self.certificate).await {
            tracing::warn!(error = %failures.join("; "), "removing solver objects of an abandoned order failed");
        }
        self.transition().order_abandoned(reason, message);
    }

    /// Ends this issuance attempt as failed: counts it, cleans up, and backs off.
    pub(super) async fn fail(&mut self, error: IssuanceError) -> Result<Action, ReconcileError> {
        self.ctx.forget_order(self.certificate);
        if let Err(failures) = cleanup_all_solver_objects(self.ctx, self.certificate).await {
            tracing::warn!(error = %failures.join("; "), "removing solver objects after a failure failed; retrying later");
        }
        self.delete_next_key().await?;
        if let IssuanceError::SecretNotOwned(message) = &error {
            self.transition().secret_taken_over(message);
        }
        let (reason, event_reason) = match &error {
            IssuanceError::SolverNotReady { .. } => (CertificateReason::SolverNotReady, EventReason::SolverNotReady),
            IssuanceError::DurationNotAllowed { .. } => (CertificateReason::DurationNotAllowed, EventReason::Failed),
            IssuanceError::ProfileNotOffered(_) => (CertificateReason::ProfileNotOffered, EventReason::Failed),
            IssuanceError::KeystorePassword(_) => (CertificateReason::KeystorePasswordUnavailable, EventReason::Failed),
            _ => (CertificateReason::Failed, EventReason::Failed),
        };
        let (attempts, message) = self.transition().failed_because(reason, &error.to_string());
        tracing::warn!(attempts, %error, "issuance failed");
        self.publish(EventNote::warning(event_reason, message)).await;
        let retry_at = self.ctx.config.backoff.retry_at(self.now, attempts);
        Ok(Action::requeue(retry_at.duration_since(self.now).unsigned_abs().max(NEXT_STEP)))
    }
}
