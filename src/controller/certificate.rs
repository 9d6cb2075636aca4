//! The Certificate reconciler: one step of the issuance path per pass, its position kept in status.

use super::accounts::{IssuerInfo, ensure_account};
use super::error::{ReconcileError, is_not_found};
use super::kube_solver::{KubeSolver, cleanup_all_solver_objects, has_cached_solver_objects};
use super::progress::{order_progress, order_status};
use super::{Context, apply_status};
use crate::acme::{
    AcmeAccount, AcmeError, Advance, AdvanceOptions, AuthorizationStep, OrderProgress, OrderSession, Retry,
};
use crate::api::names::{ANNOTATION_RENEW_REQUESTED_AT, TLS_KEY};
use crate::api::{Certificate, CertificateStatus, ClusterIssuer, Issuer, IssuerKind, RotationPolicy};
use crate::decision::{
    IssuanceDecision, IssuanceReason, Observed, issuance_decision, secret_ownership, usages_annotation,
};
use crate::desired::{
    build_certificate_secret, build_next_key_secret, next_key_secret_name, remove_condition, requeue_at, select_solver,
    set_condition, status_changed,
};
use crate::pki::{
    CsrRequest, KeySpec, PrivateKey, build_csr, effective_usages, generate_private_key, key_matches_certificate,
    parse_chain, parse_private_key, verify_chain,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The finalizer that lets kacme remove solver objects of a Certificate deleted mid-order.
pub const FINALIZER: &str = "kacme.dev/solver-cleanup";

/// How soon to look again at a Certificate waiting for its issuer.
const ISSUER_WAIT: Duration = Duration::from_secs(15);
/// How soon to look again at a Certificate whose Secret belongs to someone else.
const FOREIGN_SECRET_WAIT: Duration = Duration::from_secs(60);

/// Reconciles a Certificate.
#[tracing::instrument(skip_all, fields(certificate = %format!("{}/{}", certificate.namespace().unwrap_or_default(), certificate.name_any())))]
pub async fn reconcile_certificate(certificate: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = certificate.namespace().ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    let api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &namespace);
    let certificate = if ctx.may_be_stale(&certificate) {
        match api.get_opt(&certificate.name_any()).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => {
                ctx.forget_written(&certificate);
                return Ok(Action::await_change());
            }
            Err(e) => return Err(ReconcileError::kube(format!("reading Certificate {}", certificate.name_any()), e)),
        }
    } else {
        certificate
    };
    finalizer(&api, FINALIZER, certificate, |event| async {
        match event {
            FinalizerEvent::Apply(certificate) => Pass::new(&ctx, &certificate).run().await,
            FinalizerEvent::Cleanup(certificate) => {
                ctx.forget_written(&certificate);
                clean_up_deleted(&ctx, &certificate).await
            }
        }
    })
    .await
    .map_err(|error| match error {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

async fn clean_up_deleted(ctx: &Context, certificate: &Certificate) -> Result<Action, ReconcileError> {
    ctx.forget_session(certificate);
    cleanup_all_solver_objects(ctx, certificate)
        .await
        .map_err(|e| ReconcileError::Finalizer(format!("removing solver objects: {e}")))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &certificate.namespace().unwrap_or_default());
    delete_if_present(&secrets, &next_key_secret_name(&certificate.name_any())).await?;
    Ok(Action::await_change())
}

async fn delete_if_present(secrets: &Api<Secret>, name: &str) -> Result<(), ReconcileError> {
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ReconcileError::kube(format!("deleting Secret {name}"), e)),
    }
}

/// One reconcile pass of one Certificate: the status it builds is written once, at the end.
struct Pass<'a> {
    ctx: &'a Context,
    certificate: &'a Certificate,
    status: CertificateStatus,
    now: Timestamp,
    secrets: Api<Secret>,
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, certificate: &'a Certificate) -> Pass<'a> {
        let secrets = Api::namespaced(ctx.client.clone(), &certificate.namespace().unwrap_or_default());
        Pass {
            ctx,
            certificate,
            status: certificate.status.clone().unwrap_or_default(),
            now: Timestamp::now(),
            secrets,
        }
    }

    async fn run(mut self) -> Result<Action, ReconcileError> {
        let secret =
            self.secrets.get_opt(&self.certificate.spec.secret_name).await.map_err(|e| {
                ReconcileError::kube(format!("reading Secret {}", self.certificate.spec.secret_name), e)
            })?;
        let action = match self.status.order.clone() {
            Some(order) => self.continue_order(order_progress(&order), secret.as_ref()).await,
            None => self.decide(secret.as_ref()).await,
        };
        // Write what was learned even when the step failed: the failure is in the status.
        let old = self.certificate.status.clone().unwrap_or_default();
        if status_changed(&old, &self.status) {
            let api: Api<Certificate> =
                Api::namespaced(self.ctx.client.clone(), &self.certificate.namespace().unwrap_or_default());
            let version = apply_status(&api, &self.certificate.name_any(), "Certificate", &self.status).await?;
            self.ctx.remember_write(self.certificate, version);
        }
        action
    }

    fn generation(&self) -> Option<i64> {
        self.certificate.metadata.generation
    }

    fn set(&mut self, type_: &str, holds: bool, reason: &str, message: &str) {
        let generation = self.generation();
        set_condition(&mut self.status.conditions, type_, holds, reason, message, generation, self.now);
    }

    fn condition_is(&self, type_: &str, status: &str, reason: &str) -> bool {
        self.status.conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
    }

    async fn event(&self, warning: bool, reason: &str, note: String) {
        self.ctx.publish_event(self.certificate, warning, reason, note).await;
    }

    async fn decide(&mut self, secret: Option<&Secret>) -> Result<Action, ReconcileError> {
        let observed = Observed { certificate: self.certificate, secret, now: self.now };
        match issuance_decision(&observed, &self.ctx.config.backoff) {
            IssuanceDecision::SecretNotOwned { message } => {
                if !self.condition_is("Ready", "False", "SecretNotOwned") {
                    self.event(true, "SecretNotOwned", message.clone()).await;
                }
                self.set("Ready", false, "SecretNotOwned", &message);
                remove_condition(&mut self.status.conditions, "Issuing");
                Ok(Action::requeue(FOREIGN_SECRET_WAIT))
            }
            IssuanceDecision::UpToDate { not_before, not_after, renewal_time } => {
                self.set("Ready", true, "Ready", "The certificate is up to date and has not expired");
                remove_condition(&mut self.status.conditions, "Issuing");
                self.status.not_before = Some(Time(not_before));
                self.status.not_after = Some(Time(not_after));
                self.status.renewal_time = Some(Time(renewal_time));
                self.clean_up_leftover_solver_objects().await;
                Ok(self.requeue_at_renewal(renewal_time))
            }
            IssuanceDecision::BackOff { reason, message, retry_at } => {
                self.show_need(reason, &message);
                let wait = retry_at.duration_since(self.now).unsigned_abs();
                Ok(Action::requeue(wait.max(Duration::from_secs(1))))
            }
            IssuanceDecision::Issue { reason, message } => {
                self.show_need(reason, &message);
                self.start_issuance(reason, &message, secret).await
            }
        }
    }

    /// Ready reflects the Secret: an expiring or manually renewed certificate is still valid.
    /// After a failure, Ready keeps the failure (with the CA's words) until an issuance succeeds.
    fn show_need(&mut self, reason: IssuanceReason, message: &str) {
        let still_valid = matches!(reason, IssuanceReason::Expiring | IssuanceReason::ManuallyTriggered)
            && self.status.not_after.as_ref().is_some_and(|t| t.0 > self.now);
        let failed =
            self.status.failed_issuance_attempts.unwrap_or(0) > 0 && self.condition_is("Ready", "False", "Failed");
        if !still_valid && !failed {
            self.set("Ready", false, reason.as_str(), message);
        }
    }

    /// Removes solver objects of this Certificate that no order in flight accounts for. A pass that
    /// presented a challenge and was killed before it wrote status leaves objects that the persisted order
    /// does not name; when the CA has validated meanwhile, nothing presents that challenge again. The cache
    /// tells (no request) whether there are any.
    async fn clean_up_leftover_solver_objects(&self) {
        if has_cached_solver_objects(self.ctx, self.certificate)
            && let Err(error) = cleanup_all_solver_objects(self.ctx, self.certificate).await
        {
            tracing::warn!(%error, "removing leftover solver objects failed; retrying at the next pass");
        }
    }

    fn requeue_at_renewal(&self, renewal_time: Timestamp) -> Action {
        let key = format!("{}/{}", self.certificate.namespace().unwrap_or_default(), self.certificate.name_any());
        let at = requeue_at(renewal_time, &key, self.ctx.config.renewal_jitter);
        Action::requeue(at.duration_since(self.now).unsigned_abs().max(Duration::from_secs(1)))
    }

    /// The issuer of the Certificate, or why it cannot be used yet (reason, message).
    async fn issuer(&self) -> Result<IssuerInfo, (&'static str, String)> {
        let reference = &self.certificate.spec.issuer_ref;
        let found = match reference.kind {
            IssuerKind::Issuer => {
                let api: Api<Issuer> =
                    Api::namespaced(self.ctx.client.clone(), &self.certificate.namespace().unwrap_or_default());
                api.get_opt(&reference.name).await.map(|i| i.and_then(|i| IssuerInfo::from_issuer(&i)))
            }
            IssuerKind::ClusterIssuer => {
                let api: Api<ClusterIssuer> = Api::all(self.ctx.client.clone());
                api.get_opt(&reference.name).await.map(|i| {
                    i.and_then(|i| IssuerInfo::from_cluster_issuer(&i, &self.ctx.config.cluster_resource_namespace))
                })
            }
        };
        match found {
            Err(e) => Err(("IssuerUnavailable", format!("reading {} {}: {e}", reference.kind, reference.name))),
            Ok(None) => Err(("IssuerNotFound", format!("{} {:?} does not exist", reference.kind, reference.name))),
            Ok(Some(info)) if !info.ready => {
                Err(("IssuerNotReady", format!("{} is not Ready yet (see its status)", info.describe())))
            }
            Ok(Some(info)) => Ok(info),
        }
    }

    fn waiting_for_issuer(&mut self, reason: &str, message: &str) -> Action {
        self.set("Issuing", false, reason, message);
        if !self.condition_is("Ready", "True", "Ready") {
            self.set("Ready", false, reason, message);
        }
        Action::requeue(ISSUER_WAIT)
    }

    fn ip_addresses(&self) -> Result<Vec<IpAddr>, AcmeError> {
        self.certificate
            .spec
            .ip_addresses
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    AcmeError::fatal(crate::acme::AcmeAction::Order, format!("{a:?} is not an IP address"))
                })
            })
            .collect()
    }

    fn csr_request(&self, key: &PrivateKey) -> Result<CsrRequest, AcmeError> {
        let spec = &self.certificate.spec;
        Ok(CsrRequest {
            dns_names: spec.dns_names.clone(),
            ip_addresses: self.ip_addresses()?,
            common_name: spec.common_name.clone(),
            usages: effective_usages(&spec.usages, key.spec().algorithm),
        })
    }

    async fn start_issuance(
        &mut self,
        reason: IssuanceReason,
        message: &str,
        secret: Option<&Secret>,
    ) -> Result<Action, ReconcileError> {
        let issuer = match self.issuer().await {
            Ok(issuer) => issuer,
            Err((reason, message)) => return Ok(self.waiting_for_issuer(reason, &message)),
        };
        let labels = self.certificate.labels().clone();
        let identifiers: Vec<String> =
            self.certificate.spec.dns_names.iter().chain(&self.certificate.spec.ip_addresses).cloned().collect();
        if let Some(unsolvable) = identifiers.iter().find(|id| select_solver(&issuer.acme, &labels, id).is_none()) {
            let error = AcmeError::fatal(
                crate::acme::AcmeAction::Authorization,
                format!("no solver of {} applies to {unsolvable} (check the solvers' selectors)", issuer.describe()),
            );
            return self.fail(error).await;
        }
        let account = match ensure_account(self.ctx, &issuer).await {
            Ok(account) => account,
            Err(failure) => return Ok(self.waiting_for_issuer("IssuerNotReady", &failure.message)),
        };
        let key = match self.next_private_key(secret) {
            Ok(key) => key,
            Err(error) => return self.fail(error).await,
        };
        let ips = match self.ip_addresses() {
            Ok(ips) => ips,
            Err(error) => return self.fail(error).await,
        };
        let session = match OrderSession::create(&account, &self.certificate.spec.dns_names, &ips).await {
            Ok(session) => session,
            Err(error) => return self.acme_failure(error, None, &account, &issuer).await,
        };
        // The key is stored before status names the order, so before any pass can finalize it: a crash can
        // never lose the key of an issued certificate. Storing it only once the order exists means that
        // while the CA is unreachable no attempt writes a key, for each such write (a watched Secret) would
        // start the next attempt at once instead of after the retry delay.
        let key_secret = build_next_key_secret(self.certificate, key.pem());
        let key_secret_name = key_secret.name_any();
        self.secrets
            .patch(&key_secret_name, &PatchParams::apply(super::FIELD_MANAGER).force(), &Patch::Apply(&key_secret))
            .await
            .map_err(|e| {
                ReconcileError::kube(format!("storing the next private key in Secret {key_secret_name}"), e)
            })?;
        self.status.next_private_key_secret_name = Some(key_secret_name);
        self.status.order =
            Some(order_status(session.progress(), &self.certificate.name_any(), |t| account.key_authorization(t)));
        if reason == IssuanceReason::ManuallyTriggered {
            self.status.last_renewal_request =
                self.certificate.annotations().get(ANNOTATION_RENEW_REQUESTED_AT).cloned();
        }
        self.set("Issuing", true, reason.as_str(), message);
        tracing::info!(reason = reason.as_str(), order = %session.progress().url, "created an ACME order");
        self.event(false, "OrderCreated", format!("Created ACME order {} ({message})", session.progress().url)).await;
        self.ctx.keep_session(self.certificate, session);
        Ok(Action::requeue(Duration::from_millis(50)))
    }

    /// The key of the next certificate: the current one when the spec says never to rotate and it still
    /// fits, else a new one.
    fn next_private_key(&self, secret: Option<&Secret>) -> Result<PrivateKey, AcmeError> {
        let spec = &self.certificate.spec;
        let wanted = KeySpec::from_spec(spec.private_key.as_ref());
        let never_rotate = spec.private_key.as_ref().and_then(|k| k.rotation_policy) == Some(RotationPolicy::Never);
        if never_rotate
            && let Some(secret) = secret
                .filter(|s| secret_ownership(s, &self.certificate.name_any()) == crate::decision::SecretOwnership::Ours)
            && let Some(value) = secret.data.as_ref().and_then(|d| d.get(TLS_KEY))
            && let Ok(current) = parse_private_key(&value.0)
            && current.spec() == wanted
        {
            return Ok(current);
        }
        generate_private_key(&wanted).map_err(|e| AcmeError::fatal(crate::acme::AcmeAction::Finalize, e.to_string()))
    }

    async fn continue_order(
        &mut self,
        progress: OrderProgress,
        secret: Option<&Secret>,
    ) -> Result<Action, ReconcileError> {
        let wanted: Vec<String> =
            self.certificate.spec.dns_names.iter().chain(&self.certificate.spec.ip_addresses).cloned().collect();
        let ordered: Vec<String> = progress.identifiers.clone();
        let same_names = {
            let canonical = |list: &[String]| {
                let mut v: Vec<String> = list
                    .iter()
                    .map(|s| s.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| s.to_ascii_lowercase()))
                    .collect();
                v.sort();
                v
            };
            canonical(&wanted) == canonical(&ordered)
        };
        if !same_names {
            self.abandon_order("SpecChanged", "The names changed during issuance; starting a new order").await?;
            return Ok(Action::requeue(Duration::from_millis(50)));
        }
        let issuer = match self.issuer().await {
            Ok(issuer) => issuer,
            Err((reason, message)) => {
                self.set("Issuing", true, reason, &format!("Waiting for the issuer: {message}"));
                return Ok(Action::requeue(ISSUER_WAIT));
            }
        };
        let account = match ensure_account(self.ctx, &issuer).await {
            Ok(account) => account,
            Err(failure) => {
                self.set(
                    "Issuing",
                    true,
                    "IssuerNotReady",
                    &format!("Waiting for the ACME account: {}", failure.message),
                );
                return Ok(Action::requeue(ISSUER_WAIT));
            }
        };
        let key_secret_name = next_key_secret_name(&self.certificate.name_any());
        let key_secret = self
            .secrets
            .get_opt(&key_secret_name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Secret {key_secret_name}"), e))?;
        let Some(key) = key_secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(TLS_KEY).cloned())
            .and_then(|v| parse_private_key(&v.0).ok())
        else {
            return self.finish_stored_order(&issuer, &account, progress, secret).await;
        };
        let request = match self.csr_request(&key) {
            Ok(request) => request,
            Err(error) => return self.fail(error).await,
        };
        let csr = match build_csr(&request, &key) {
            Ok(csr) => csr,
            Err(error) => {
                return self.fail(AcmeError::fatal(crate::acme::AcmeAction::Finalize, error.to_string())).await;
            }
        };
        let mut session = match self.ctx.take_session(self.certificate, &progress.url) {
            Some(session) => session,
            None => match OrderSession::resume(&account, progress.clone()).await {
                Ok(session) => session,
                Err(error) => return self.acme_failure(error, Some(progress), &account, &issuer).await,
            },
        };
        let solver = KubeSolver { ctx: self.ctx, certificate: self.certificate, acme: &issuer.acme };
        let options = AdvanceOptions {
            self_check: self.ctx.config.self_check.clone(),
            max_wait: self.ctx.config.max_wait_per_step,
        };
        let before = session.progress().clone();
        let advanced = session.advance(&account, &solver, &csr, &options).await;
        let after = session.progress().clone();
        self.report_authorization_events(&before, &after).await;
        self.status.order = Some(order_status(&after, &self.certificate.name_any(), |t| account.key_authorization(t)));
        match advanced {
            Ok(Advance::Wait { after: wait, reason }) => {
                let issuing_reason = self.issuing_reason();
                self.set("Issuing", true, &issuing_reason, &format!("Waiting: {reason}"));
                self.ctx.keep_session(self.certificate, session);
                Ok(Action::requeue(wait.max(Duration::from_millis(50))))
            }
            Ok(Advance::Issued(chain)) => self.store_certificate(&issuer, &chain, &key, &request).await,
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
        secret: Option<&Secret>,
    ) -> Result<Action, ReconcileError> {
        let stored_key = secret
            .filter(|s| secret_ownership(s, &self.certificate.name_any()) == crate::decision::SecretOwnership::Ours)
            .and_then(|s| s.data.as_ref()?.get(TLS_KEY))
            .and_then(|value| parse_private_key(&value.0).ok());
        if let Some(key) = stored_key
            && let Ok(request) = self.csr_request(&key)
            && let Ok(csr) = build_csr(&request, &key)
        {
            let session = match self.ctx.take_session(self.certificate, &progress.url) {
                Some(session) => Ok(session),
                None => OrderSession::resume(account, progress.clone()).await,
            };
            // Only a valid order: advancing any other would finalize it with the Secret's current key.
            if let Ok(mut session) = session
                && session.progress().state == crate::acme::OrderState::Valid
            {
                let solver = KubeSolver { ctx: self.ctx, certificate: self.certificate, acme: &issuer.acme };
                let options = AdvanceOptions { self_check: None, max_wait: self.ctx.config.max_wait_per_step };
                if let Ok(Advance::Issued(chain)) = session.advance(account, &solver, &csr, &options).await
                    && parse_chain(chain.as_bytes()).is_ok_and(|c| key_matches_certificate(&key, &c.leaf))
                {
                    return self.store_certificate(issuer, &chain, &key, &request).await;
                }
            }
        }
        self.abandon_order(
            "MissingPrivateKey",
            "The private key of the order in progress is gone; starting a new order",
        )
        .await?;
        Ok(Action::requeue(Duration::from_millis(50)))
    }

    fn issuing_reason(&self) -> String {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Issuing" && c.status == "True")
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "Issuing".into())
    }

    async fn report_authorization_events(&self, before: &OrderProgress, after: &OrderProgress) {
        for authorization in &after.authorizations {
            let previous = before.authorizations.iter().find(|a| a.url == authorization.url).map(|a| a.step);
            if previous == Some(authorization.step) {
                continue;
            }
            let identifier = &authorization.identifier;
            let was_unsubmitted =
                matches!(previous, None | Some(AuthorizationStep::Pending) | Some(AuthorizationStep::Presented));
            let now_submitted = matches!(authorization.step, AuthorizationStep::Submitted | AuthorizationStep::Valid);
            if was_unsubmitted && now_submitted && authorization.token.is_some() {
                self.event(false, "Presented", format!("Presented the HTTP-01 challenge for {identifier}")).await;
            }
            match authorization.step {
                AuthorizationStep::Valid => {
                    self.event(false, "Validated", format!("The CA validated {identifier}")).await
                }
                AuthorizationStep::Invalid => {
                    let why = authorization.message.clone().unwrap_or_default();
                    self.event(true, "ValidationFailed", format!("The CA could not validate {identifier}: {why}")).await
                }
                _ => {}
            }
        }
    }

    async fn abandon_order(&mut self, reason: &str, message: &str) -> Result<(), ReconcileError> {
        self.ctx.forget_session(self.certificate);
        if let Err(e) = cleanup_all_solver_objects(self.ctx, self.certificate).await {
            tracing::warn!(error = %e, "removing solver objects of an abandoned order failed");
        }
        self.status.order = None;
        self.status.next_private_key_secret_name = None;
        self.set("Issuing", false, reason, message);
        Ok(())
    }

    /// An ACME error in an order: retry the same order, or fail this issuance for good.
    async fn acme_failure(
        &mut self,
        error: AcmeError,
        progress: Option<OrderProgress>,
        account: &AcmeAccount,
        issuer: &IssuerInfo,
    ) -> Result<Action, ReconcileError> {
        self.ctx.forget_session(self.certificate);
        if error.is_problem("accountDoesNotExist") {
            // The CA no longer knows the account (it lost its state, or the account was removed): the next
            // attempt registers again with the stored key instead of using the cached account forever.
            self.ctx.accounts.forget(issuer.kind, &issuer.secret_namespace, &issuer.name);
        }
        match error.retry {
            Retry::Immediately => Ok(Action::requeue(Duration::from_millis(10))),
            Retry::After(delay) => {
                if let Some(progress) = &progress {
                    self.status.order =
                        Some(order_status(progress, &self.certificate.name_any(), |t| account.key_authorization(t)));
                }
                let reason = self.issuing_reason();
                self.set("Issuing", true, &reason, &format!("Retrying in {}s: {error}", delay.as_secs()));
                Ok(Action::requeue(delay))
            }
            Retry::Never => self.fail(error).await,
        }
    }

    /// Ends this issuance attempt as failed: counts it, cleans up, and backs off.
    async fn fail(&mut self, error: AcmeError) -> Result<Action, ReconcileError> {
        self.ctx.forget_session(self.certificate);
        if let Err(e) = cleanup_all_solver_objects(self.ctx, self.certificate).await {
            tracing::warn!(error = %e, "removing solver objects after a failure failed; retrying later");
        }
        delete_if_present(&self.secrets, &next_key_secret_name(&self.certificate.name_any())).await?;
        let attempts = self.status.failed_issuance_attempts.unwrap_or(0).saturating_add(1);
        self.status.failed_issuance_attempts = Some(attempts);
        self.status.last_failure_time = Some(Time(self.now));
        self.status.order = None;
        self.status.next_private_key_secret_name = None;
        let message = format!("The issuance failed: {error}");
        self.set("Issuing", false, "Failed", &message);
        if !self.condition_is("Ready", "True", "Ready") {
            self.set("Ready", false, "Failed", &message);
        }
        tracing::warn!(attempts, %error, "issuance failed");
        self.event(true, "Failed", message).await;
        let retry_at = self.ctx.config.backoff.retry_at(self.now, attempts as u32);
        Ok(Action::requeue(retry_at.duration_since(self.now).unsigned_abs()))
    }

    async fn store_certificate(
        &mut self,
        issuer: &IssuerInfo,
        chain_pem: &str,
        key: &PrivateKey,
        request: &CsrRequest,
    ) -> Result<Action, ReconcileError> {
        let chain = match parse_chain(chain_pem.as_bytes()) {
            Ok(chain) => chain,
            Err(e) => {
                return self
                    .fail(AcmeError::fatal(
                        crate::acme::AcmeAction::Certificate,
                        format!("the CA returned an unreadable chain: {e}"),
                    ))
                    .await;
            }
        };
        if !key_matches_certificate(key, &chain.leaf) {
            return self
                .fail(AcmeError::fatal(
                    crate::acme::AcmeAction::Certificate,
                    "the CA returned a certificate for another key",
                ))
                .await;
        }
        let ca_bundle = issuer.ca_bundle_pem();
        // The question is whether the chain leads to the bundle, so verify it at a moment it is valid: the
        // pass started before the CA signed, and a CA that does not backdate signs from "now".
        let verify_at = Timestamp::now().max(chain.leaf.not_before);
        if let Some(bundle) = &ca_bundle
            && let Ok(ders) = crate::pki::parse_ca_bundle(bundle.as_bytes())
            && let Err(e) = verify_chain(&chain, &ders, verify_at)
        {
            self.event(
                true,
                "ChainNotTrusted",
                format!("The issued chain does not verify to the issuer's caBundle: {e}"),
            )
            .await;
        }
        // Look once more right before writing: never take over a Secret that appeared meanwhile.
        let name = self.certificate.spec.secret_name.clone();
        let current =
            self.secrets.get_opt(&name).await.map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))?;
        if let Some(current) = &current
            && let crate::decision::SecretOwnership::Foreign(message) =
                secret_ownership(current, &self.certificate.name_any())
        {
            self.set("Ready", false, "SecretNotOwned", &message);
            return self.fail(AcmeError::fatal(crate::acme::AcmeAction::Certificate, message)).await;
        }
        let usages = usages_annotation(&request.usages);
        let secret = build_certificate_secret(
            self.certificate,
            &self.certificate.spec.issuer_ref,
            chain_pem,
            key.pem(),
            ca_bundle.as_deref(),
            &usages,
        );
        self.secrets
            .patch(&name, &PatchParams::apply(super::FIELD_MANAGER).force(), &Patch::Apply(&secret))
            .await
            .map_err(|e| ReconcileError::kube(format!("writing Secret {name}"), e))?;
        delete_if_present(&self.secrets, &next_key_secret_name(&self.certificate.name_any())).await?;
        self.ctx.forget_session(self.certificate);
        self.clean_up_leftover_solver_objects().await;
        let renewal = crate::decision::renewal_time(
            chain.leaf.not_before,
            chain.leaf.not_after,
            crate::decision::RenewBefore::from_spec(
                self.certificate.spec.renew_before.map(Duration::from),
                self.certificate.spec.renew_before_percentage,
            ),
        );
        self.status.revision = Some(self.status.revision.unwrap_or(0) + 1);
        self.status.not_before = Some(Time(chain.leaf.not_before));
        self.status.not_after = Some(Time(chain.leaf.not_after));
        self.status.renewal_time = Some(Time(renewal));
        self.status.order = None;
        self.status.next_private_key_secret_name = None;
        self.status.failed_issuance_attempts = None;
        self.status.last_failure_time = None;
        self.set("Ready", true, "Ready", "The certificate is up to date and has not expired");
        remove_condition(&mut self.status.conditions, "Issuing");
        tracing::info!(
            serial = %chain.leaf.serial,
            not_after = %chain.leaf.not_after,
            secret = %name,
            "issued; the certificate is stored in its Secret"
        );
        self.event(
            false,
            "Issued",
            format!(
                "Issued certificate serial {} valid until {} into Secret {name}",
                chain.leaf.serial, chain.leaf.not_after
            ),
        )
        .await;
        Ok(self.requeue_at_renewal(renewal))
    }
}
