//! The Certificate reconciler: one step of the issuance path per pass, its position kept in status.
//!
//! A pass gathers the Certificate, its Secret and its order in flight, then takes exactly one phase:
//! - [`decide`]: no order in flight — is a certificate needed, and why (the pure policy chain of
//!   [`crate::decision`])? Up to date, back off, or start an order;
//! - [`start`]: create the ACME order and store its private key before any pass can finalize it;
//! - [`advance`]: move the order on (solver objects, challenges, finalize), or finish one a crash interrupted;
//! - [`store`]: check the chain and store it in the Secret;
//! - [`failure`]: retry the same order, abandon it, or fail the attempt and back off.
//!
//! Every phase changes status through [`StatusTransition`] and describes Events as [`EventNote`]s: both pure
//! and unit-tested in [`crate::desired`]. The status is written once, at the end of the pass, and only when it
//! changed.

mod advance;
mod decide;
mod failure;
mod outputs;
mod revoke;
mod start;
mod store;
#[cfg(test)]
mod tests;

use super::accounts::{IssuerInfo, ensure_account};
use super::context::Freshness;
use super::error::ReconcileError;
use super::issuer_slots::{IssuerSlot, Turn};
use super::kube_solver::{cleanup_all_solver_objects, has_cached_solver_objects};
use super::{Context, apply_status};
use crate::acme::AcmeAccount;
use crate::api::ConditionType;
use crate::api::{Certificate, CertificateReason, CertificateStatus, ClusterIssuer, Issuer, IssuerKind};
use crate::decision::policy::{check_certificate, needs_namespace_labels};
use crate::decision::{SecretOwnership, next_key_ownership};
use crate::desired::find_condition;
use crate::desired::{
    EventNote, EventReason, IssuerWait, StatusTransition, next_key_secret_name, order_status, requeue_at,
    status_changed,
};
use crate::pki::{CsrRequest, PrivateKey, effective_usages};
use failure::IssuanceError;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The finalizer that lets kacme remove solver objects of a Certificate deleted mid-order.
pub const FINALIZER: &str = "kacme.dev/solver-cleanup";

/// How soon to look again at a Certificate waiting for its issuer.
pub(crate) const ISSUER_WAIT: Duration = Duration::from_secs(15);
/// How soon to look again at a Certificate whose Secret belongs to someone else.
const FOREIGN_SECRET_WAIT: Duration = Duration::from_secs(60);
/// How soon to look again at a Certificate its issuer's policy refuses: a change of the issuer wakes it at
/// once; this catches a change of its namespace's labels.
const NOT_PERMITTED_WAIT: Duration = Duration::from_secs(300);
/// How soon to look again at a Certificate whose issuer has no free slot (other Certificates use them all):
/// it is woken the moment a slot is offered to it (see [`super::issuer_slots`]); this only covers a lost wake.
pub(crate) const ISSUER_BUSY_FALLBACK: Duration = Duration::from_secs(30);
/// How soon the next step of an order runs when nothing needs waiting for.
const NEXT_STEP: Duration = Duration::from_millis(50);

/// Reconciles a Certificate.
#[tracing::instrument(skip_all, fields(certificate = %format!("{}/{}", certificate.namespace().unwrap_or_default(), certificate.name_any())))]
pub async fn reconcile_certificate(certificate: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = certificate.namespace().ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    #[cfg(test)]
    ctx.panic_if_asked(&certificate);
    let api: Api<Certificate> = Api::namespaced(ctx.client.clone(), &namespace);
    let (certificate, freshness) = ctx.freshness(certificate);
    let certificate = match freshness {
        Freshness::Current => certificate,
        // Without a request: the watch event of kacme's own write starts the next pass (a slot offered to
        // this Certificate stays offered meanwhile).
        Freshness::AwaitWatch(left) => return Ok(Action::requeue(left)),
        Freshness::ReadAfresh => match api.get_opt(&certificate.name_any()).await {
            Ok(Some(fresh)) => {
                // The cache shows this version (or a later one) soon; until then it may be older.
                ctx.remember_write(&fresh, fresh.resource_version());
                Arc::new(fresh)
            }
            Ok(None) => {
                ctx.forget_written(&certificate);
                ctx.issuer_slots.leave(&slot_waiter(&certificate));
                return Ok(Action::await_change());
            }
            Err(e) => return Err(ReconcileError::kube(format!("reading Certificate {}", certificate.name_any()), e)),
        },
    };
    finalizer(&api, FINALIZER, certificate, |event| async {
        match event {
            FinalizerEvent::Apply(certificate) => {
                // The CA asked to retry later: a reconcile triggered meanwhile (by our own status write of
                // that failure, say) waits out the rest, unless the user asked for something new.
                let key = format!("{namespace}/{}", certificate.name_any());
                let wishes = crate::controller::retry::wishes_of(&certificate.metadata);
                if let Some(wait) = ctx.retry_gate.remaining(&key, &wishes, std::time::Instant::now()) {
                    return Ok(Action::requeue(wait));
                }
                // A pass whose status write failed left its status: carry on from it, not from the older one
                // stored (which may not name the order that pass created).
                let stored = certificate.status.clone();
                let certificate = match ctx.take_unwritten(&certificate) {
                    Some(status) => Arc::new(Certificate { status: Some(status), ..Certificate::clone(&certificate) }),
                    None => certificate,
                };
                // On the heap: a pass is a large future, and a test runs it on its thread's stack.
                Box::pin(Pass::new(&ctx, &certificate).stored(stored).run()).await
            }
            FinalizerEvent::Cleanup(certificate) => {
                ctx.forget_written(&certificate);
                ctx.issuer_slots.leave(&slot_waiter(&certificate));
                clean_up_deleted(&ctx, &certificate).await
            }
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer)
}

/// How `certificate` waits for a slot of its issuer (see [`super::issuer_slots`]).
fn slot_waiter(certificate: &Certificate) -> ObjectRef<Certificate> {
    ObjectRef::new(&certificate.name_any()).within(&certificate.namespace().unwrap_or_default())
}

/// The Certificate is being deleted: revoke its certificate when the issuer's policy says so, and remove its
/// solver objects and the key of an order in flight.
async fn clean_up_deleted(ctx: &Context, certificate: &Certificate) -> Result<Action, ReconcileError> {
    Pass::new(ctx, certificate).revoke_on_deletion().await?;
    ctx.forget_order(certificate);
    cleanup_all_solver_objects(ctx, certificate)
        .await
        .map_err(|failures| ReconcileError::RemoveSolverObjects(failures.join("; ")))?;
    delete_next_key_secret(ctx, certificate).await?;
    Ok(Action::await_change())
}

/// Deletes the next-key Secret of `certificate` if it exists and records the Certificate's UID (see
/// [`next_key_ownership`]); one that does not is someone else's and stays.
async fn delete_next_key_secret(ctx: &Context, certificate: &Certificate) -> Result<(), ReconcileError> {
    let namespace = certificate.namespace().unwrap_or_default();
    let name = next_key_secret_name(&certificate.name_any());
    let secret = ctx
        .read_secret(&namespace, &name)
        .await
        .map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))?;
    match secret.as_deref().map(|s| (s, next_key_ownership(s, certificate))) {
        None => Ok(()),
        Some((secret, SecretOwnership::Ours)) => ctx.delete_secret(&namespace, secret).await,
        Some((_, ownership)) => {
            tracing::warn!(secret = %name, ?ownership, "leaving alone a next-key Secret that is not this Certificate's");
            Ok(())
        }
    }
}

/// One reconcile pass of one Certificate: the status it builds is written once, at the end.
struct Pass<'a> {
    ctx: &'a Context,
    certificate: &'a Certificate,
    namespace: String,
    status: CertificateStatus,
    now: Timestamp,
    /// Solver objects removed in this pass: the caches may still show them.
    solver_objects_removed: HashSet<String>,
    /// The issuer slot this pass holds while it works with the CA.
    issuer_slot: Option<IssuerSlot>,
    /// Whether this pass found no free slot and waits in the issuer's queue.
    waits_for_slot: bool,
    /// Whether the CA asked this pass to retry its step at once (a rejected nonce).
    retried_at_once: bool,
    /// The status the apiserver holds: the Certificate's, unless the pass carries on from a status an
    /// earlier pass could not write (see [`Context::remember_unwritten`]).
    stored: Option<CertificateStatus>,
}

/// Why this pass cannot work with the issuer.
enum IssuerUnusable {
    /// The issuer is missing, not Ready, or its account is not.
    NotReady(IssuerWait),
    /// Every slot of the issuer is taken by other Certificates.
    Busy,
    /// The issuer's policy refuses this Certificate (the message names the value and the rule).
    NotPermitted(String),
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, certificate: &'a Certificate) -> Pass<'a> {
        Pass {
            ctx,
            certificate,
            namespace: certificate.namespace().unwrap_or_default(),
            status: certificate.status.clone().unwrap_or_default(),
            now: Timestamp::now(),
            solver_objects_removed: HashSet::new(),
            issuer_slot: None,
            waits_for_slot: false,
            retried_at_once: false,
            stored: certificate.status.clone(),
        }
    }

    /// This pass over a Certificate whose status in the apiserver is `stored`.
    fn stored(self, stored: Option<CertificateStatus>) -> Pass<'a> {
        Pass { stored, ..self }
    }

    async fn run(mut self) -> Result<Action, ReconcileError> {
        // An order in flight reads the Secret only when it needs it (rarely): until the certificate is
        // stored, a Secret that does not exist yet would cost a read on every pass.
        // The pass right after storing a certificate (woken by its own status write) may find the Secret it
        // wrote not yet in the cache: the Secret's watch event wakes it again, without a read.
        let secret_in_flight = self.ctx.secret_write_in_flight(&self.namespace, &self.certificate.spec.secret_name);
        let action = match (self.status.order.clone(), secret_in_flight) {
            (Some(order), _) => self.continue_order(crate::desired::order_progress(&order)).await,
            (None, Some(left)) => Ok(Action::requeue(left)),
            (None, None) if self.waits_in_line_before_reading() => self.wait_for_issuer(&IssuerUnusable::Busy).await,
            (None, None) => match self.read_certificate_secret().await {
                Ok(secret) => match revoke::pending_revocation(self.certificate) {
                    Some(pending) => self.revoke_requested(secret.as_deref(), pending).await,
                    None => self.decide(secret.as_deref()).await,
                },
                Err(error) => Err(error),
            },
        };
        if !self.waits_for_slot {
            // A place in an issuer's queue, or a slot offered, that this pass did not use goes to the next.
            self.ctx.issuer_slots.leave(&slot_waiter(self.certificate));
        }
        if !self.retried_at_once {
            self.ctx.immediate_retries.succeeded(&format!("{}/{}", self.namespace, self.name()));
        }
        // Write what was learned even when the step failed: the failure is in the status.
        let old = self.stored.clone().unwrap_or_default();
        if status_changed(&old, &self.status) {
            let api: Api<Certificate> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
            match apply_status(&api, &self.certificate.name_any(), "Certificate", &self.status).await {
                Ok(version) => self.ctx.remember_write(self.certificate, version),
                Err(error) => {
                    self.ctx.remember_unwritten(self.certificate, self.status);
                    return Err(error);
                }
            }
        }
        action
    }

    /// The Certificate's Secret (`spec.secretName`), if it exists.
    async fn read_certificate_secret(&self) -> Result<Option<Arc<Secret>>, ReconcileError> {
        let name = &self.certificate.spec.secret_name;
        self.ctx
            .read_secret(&self.namespace, name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))
    }

    /// The status transitions of this pass.
    fn transition(&mut self) -> StatusTransition<'_> {
        StatusTransition::new(&mut self.status, self.certificate.metadata.generation, self.now)
    }

    async fn publish(&self, note: EventNote) {
        self.ctx.events.publish(self.certificate, "Issuance", &note).await;
    }

    fn name(&self) -> String {
        self.certificate.name_any()
    }

    /// The status form of an order's position, naming its solver objects.
    fn order_status(&self, progress: &crate::acme::OrderProgress, account: &AcmeAccount) -> crate::api::OrderStatus {
        order_status(progress, &self.name(), |token| account.key_authorization(token))
    }

    /// Removes solver objects of this Certificate that no order in flight accounts for. A pass that
    /// presented a challenge and was killed before it wrote status leaves objects that the persisted order
    /// does not name; when the CA has validated meanwhile, nothing presents that challenge again. The cache
    /// tells (no request) whether there are any.
    async fn clean_up_leftover_solver_objects(&self) {
        if has_cached_solver_objects(self.ctx, self.certificate, &self.solver_objects_removed)
            && let Err(failures) = cleanup_all_solver_objects(self.ctx, self.certificate).await
        {
            tracing::warn!(error = %failures.join("; "), "removing leftover solver objects failed; retrying at the next pass");
        }
    }

    /// The next pass of an up-to-date Certificate: at its renewal time (plus its jitter), or at the next check
    /// of its renewal window when that comes first.
    fn requeue_at_renewal(&self, renewal_time: Timestamp, next_check: Option<Timestamp>) -> Action {
        let renewal = self.renewal_wait(renewal_time);
        let check = next_check.map(|at| at.duration_since(self.now).unsigned_abs().max(Duration::from_secs(1)));
        Action::requeue(check.map_or(renewal, |check| check.min(renewal)))
    }

    /// How long until the pass at `renewal_time` (plus this Certificate's jitter).
    fn renewal_wait(&self, renewal_time: Timestamp) -> Duration {
        let key = format!("{}/{}", self.namespace, self.name());
        let at = requeue_at(renewal_time, &key, self.ctx.config.renewal_jitter);
        at.duration_since(self.now).unsigned_abs().max(Duration::from_secs(1))
    }

    /// The issuer of the Certificate and its ACME account, or why they cannot be used yet.
    ///
    /// The cache answers when it holds the issuer Ready; anything else is read afresh, so that a cache
    /// lagging behind an issuer that just became Ready never holds the Certificate back.
    async fn issuer_and_account(&mut self) -> Result<(IssuerInfo, AcmeAccount), IssuerUnusable> {
        let reference = &self.certificate.spec.issuer_ref;
        let cached = self.ctx.cached_issuer(reference, &self.namespace).filter(|info| info.ready);
        let issuer = match cached {
            Some(info) => info,
            None => self.read_issuer().await.map_err(IssuerUnusable::NotReady)?,
        };
        self.check_policy(&issuer).await?;
        if self.issuer_slot.is_none() && !self.take_issuer_slot(&issuer) {
            return Err(IssuerUnusable::Busy);
        }
        let location = issuer.account_for(&self.namespace);
        let account = ensure_account(self.ctx, &issuer, &location).await.map_err(|error| {
            let message = match &location.namespace {
                Some(namespace) => {
                    format!("the ACME account of namespace {namespace} at {}: {error}", issuer.describe())
                }
                None => error.to_string(),
            };
            IssuerUnusable::NotReady(IssuerWait { reason: CertificateReason::IssuerNotReady, message })
        })?;
        Ok((issuer, account))
    }

    /// Takes a slot of `issuer` for this pass, or a place in its line (false: every slot is taken).
    fn take_issuer_slot(&mut self, issuer: &IssuerInfo) -> bool {
        let key = format!("{}/{}/{}", issuer.kind, issuer.secret_namespace, issuer.name);
        let turn = match (&self.status.order, &self.status.revision) {
            (Some(_), _) => Turn::Continuing,
            (None, Some(_)) => Turn::Renewing,
            (None, None) => Turn::Starting,
        };
        let slot = self.ctx.issuer_slots.try_take(&key, &slot_waiter(self.certificate), turn);
        self.waits_for_slot = slot.is_none();
        self.issuer_slot = slot;
        !self.waits_for_slot
    }

    /// Whether this pass, with no order in flight, waits in its issuer's line before it reads anything: a
    /// Certificate whose Secret the cache does not hold (absent, so most likely about to order, or someone
    /// else's) takes its issuer's slot first, so that waiting for one costs no request. Only with the issuer
    /// Ready in the cache; otherwise the pass goes on as usual (and finds out why it cannot order).
    fn waits_in_line_before_reading(&mut self) -> bool {
        let secret_cached = self.ctx.cached_secret(&self.namespace, &self.certificate.spec.secret_name).is_some();
        let reference = &self.certificate.spec.issuer_ref;
        match self.ctx.cached_issuer(reference, &self.namespace).filter(|issuer| issuer.ready) {
            Some(issuer) if !secret_cached => !self.take_issuer_slot(&issuer),
            _ => false,
        }
    }

    /// Whether the issuer's policy permits this Certificate: checked before any ACME request and before any
    /// solver object exists.
    async fn check_policy(&self, issuer: &IssuerInfo) -> Result<(), IssuerUnusable> {
        let labels = if needs_namespace_labels(issuer.policy.as_ref()) {
            let labels = self.ctx.namespace_labels(&self.namespace).await.map_err(|e| {
                IssuerUnusable::NotReady(IssuerWait {
                    reason: CertificateReason::IssuerUnavailable,
                    message: format!("reading the labels of namespace {} for the issuer's policy: {e}", self.namespace),
                })
            })?;
            Some(labels)
        } else {
            None
        };
        check_certificate(&issuer.describe(), issuer.policy.as_ref(), self.certificate, labels.as_ref())
            .map_err(|refused| IssuerUnusable::NotPermitted(refused.0))
    }

    async fn read_issuer(&self) -> Result<IssuerInfo, IssuerWait> {
        let reference = &self.certificate.spec.issuer_ref;
        let found = match reference.kind {
            IssuerKind::Issuer => {
                let api: Api<Issuer> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
                api.get_opt(&reference.name).await.map(|i| i.and_then(|i| IssuerInfo::from_issuer(&i)))
            }
            IssuerKind::ClusterIssuer => {
                let api: Api<ClusterIssuer> = Api::all(self.ctx.client.clone());
                api.get_opt(&reference.name).await.map(|i| {
                    i.and_then(|i| IssuerInfo::from_cluster_issuer(&i, &self.ctx.config.cluster_resource_namespace))
                })
            }
        };
        let wait = |reason, message| Err(IssuerWait { reason, message });
        match found {
            Err(e) => wait(
                CertificateReason::IssuerUnavailable,
                format!("reading {} {}: {e}", reference.kind, reference.name),
            ),
            Ok(None) => wait(
                CertificateReason::IssuerNotFound,
                format!("{} {:?} does not exist", reference.kind, reference.name),
            ),
            Ok(Some(info)) => match super::accounts::check_operator_rules(&info, &self.ctx.config) {
                // Said here in full, so that `kubectl describe` of the Certificate names the refused key or server.
                Err(refused) => wait(CertificateReason::IssuerNotReady, format!("{}: {refused}", info.describe())),
                Ok(()) if !info.ready => wait(
                    CertificateReason::IssuerNotReady,
                    format!("{} is not Ready yet (see its status)", info.describe()),
                ),
                Ok(()) => Ok(info),
            },
        }
    }

    /// The issuer cannot be used yet: say so and look again soon (a busy issuer changes no status). A policy
    /// refusal ends the order in flight, if any.
    async fn wait_for_issuer(&mut self, unusable: &IssuerUnusable) -> Result<Action, ReconcileError> {
        Ok(match unusable {
            IssuerUnusable::NotPermitted(message) => {
                self.ctx.forget_order(self.certificate);
                if self.status.order.is_some()
                    && let Err(failures) = cleanup_all_solver_objects(self.ctx, self.certificate).await
                {
                    tracing::warn!(error = %failures.join("; "), "removing solver objects of a refused order failed");
                }
                if self.status.next_private_key_secret_name.is_some() {
                    self.delete_next_key().await?;
                }
                // An Event when the refusal is news, not at every pass (a pass first shows why it would issue).
                let shown =
                    self.certificate.status.as_ref().and_then(|s| find_condition(&s.conditions, ConditionType::Ready));
                let news =
                    shown.is_none_or(|c| c.reason != CertificateReason::NotPermitted.as_str() || c.message != *message);
                self.transition().not_permitted(message);
                if news {
                    self.publish(EventNote::warning(EventReason::NotPermitted, message.clone())).await;
                }
                Action::requeue(NOT_PERMITTED_WAIT)
            }
            IssuerUnusable::NotReady(wait) => {
                let order_in_flight = self.status.order.is_some();
                self.transition().waiting_for_issuer(wait, order_in_flight);
                Action::requeue(ISSUER_WAIT)
            }
            IssuerUnusable::Busy => {
                // Nothing happened: show nothing (a status write would only wake this Certificate again). It
                // is woken when a slot is offered to it.
                self.status = self.certificate.status.clone().unwrap_or_default();
                Action::requeue(ISSUER_BUSY_FALLBACK)
            }
        })
    }

    fn ip_addresses(&self) -> Result<Vec<IpAddr>, IssuanceError> {
        let addresses = &self.certificate.spec.ip_addresses;
        addresses.iter().map(|a| a.parse().map_err(|_| IssuanceError::InvalidIpAddress(a.clone()))).collect()
    }

    /// What the CSR for `key` must ask for: exactly the spec's names, addresses, common name and usages.
    fn csr_request(&self, key: &PrivateKey) -> Result<CsrRequest, IssuanceError> {
        let spec = &self.certificate.spec;
        Ok(CsrRequest {
            dns_names: spec.dns_names.clone(),
            ip_addresses: self.ip_addresses()?,
            common_name: spec.common_name.clone(),
            usages: effective_usages(&spec.usages, key.spec().algorithm),
        })
    }

    /// Deletes the next-key Secret of this Certificate, if there is one.
    async fn delete_next_key(&self) -> Result<(), ReconcileError> {
        delete_next_key_secret(self.ctx, self.certificate).await
    }
}
