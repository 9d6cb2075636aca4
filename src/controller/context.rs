//! What every reconcile shares: the configuration, the watch caches, the ACME accounts, the orders in
//! flight, and the guards that say when a cache may be older than kacme's own last write.

use super::accounts::{AccountCache, IssuerInfo};
use super::events::EventPublisher;
use super::kube_solver;
use super::observe::{Observers, ReconcileObserver};
use super::{FIELD_MANAGER, ReconcileError};
use crate::acme::{AcmeObserver, OrderSession, SelfCheck};
use crate::api::{Certificate, CertificateStatus, ClusterIssuer, Issuer, IssuerKind, IssuerRef};
use crate::decision::BackoffPolicy;
use crate::desired::SolverContext;
use crate::kube_errors::{is_conflict, is_not_found, status_code};
use crate::pki::PrivateKey;
use k8s_openapi::api::core::v1::Secret;
#[cfg(test)]
use k8s_openapi::api::core::v1::{Pod, Service};
#[cfg(test)]
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
#[cfg(test)]
use kube::runtime::reflector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Where ClusterIssuers keep their Secrets (account keys, EAB keys).
    pub cluster_resource_namespace: String,
    /// The image solver Pods run (`kacme solver`): the operator's own image.
    pub solver_image: String,
    /// Backoff after failed issuances.
    pub backoff: BackoffPolicy,
    /// Reconciles of Certificates running at once.
    pub concurrency: u16,
    /// Of those, how many may work with one issuer at once (default: all of them).
    pub per_issuer_concurrency: Option<u16>,
    /// Spread renewals of Certificates issued together over this long after their renewal time.
    pub renewal_jitter: Duration,
    /// Check that challenges answer before telling the CA (off by default).
    pub self_check: Option<SelfCheck>,
    /// How long one reconcile may wait for the CA in place before requeueing.
    pub max_wait_per_step: Duration,
    /// How long after a challenge was first presented its solver objects may take to serve it before the
    /// attempt fails.
    pub authorization_deadline: Duration,
    /// The longest wait between two checks of a certificate's renewal window at a CA that offers ACME
    /// Renewal Information (RFC 9773), whatever the CA's Retry-After.
    pub renewal_info_max_interval: Duration,
    /// The name events are reported under.
    pub reporter: String,
    /// Which labels and annotations issuers' solver templates may put on solver Pods and Ingresses.
    pub solver_templates: crate::decision::solver_template::SolverTemplateRules,
    /// Which ACME servers namespaced Issuers may use, and whether they may skip TLS verification.
    pub namespaced_issuers: crate::decision::issuer_restrictions::NamespacedIssuerRules,
}

impl ControllerConfig {
    /// Defaults for everything but the namespace and image.
    pub fn new(cluster_resource_namespace: impl Into<String>, solver_image: impl Into<String>) -> ControllerConfig {
        ControllerConfig {
            cluster_resource_namespace: cluster_resource_namespace.into(),
            solver_image: solver_image.into(),
            backoff: BackoffPolicy::default(),
            concurrency: 16,
            per_issuer_concurrency: None,
            renewal_jitter: Duration::from_secs(60),
            self_check: None,
            max_wait_per_step: Duration::from_secs(2),
            authorization_deadline: crate::desired::DEFAULT_AUTHORIZATION_DEADLINE,
            renewal_info_max_interval: Duration::from_secs(24 * 3600),
            reporter: "kacme".into(),
            solver_templates: Default::default(),
            namespaced_issuers: Default::default(),
        }
    }
}

/// The watch caches the reconcilers read instead of the apiserver.
#[derive(Clone)]
pub struct Stores {
    /// Secrets labelled `app.kubernetes.io/managed-by: kacme` (Certificates' Secrets, next keys, account keys).
    pub secrets: super::secret_cache::SecretCache,
    /// Issuers.
    pub issuers: Store<Issuer>,
    /// ClusterIssuers.
    pub cluster_issuers: Store<ClusterIssuer>,
    /// Solver Pods, Services and Ingresses.
    pub solvers: kube_solver::SolverStores,
    /// The Certificates' cache, where a watch fills one: a pass looks at its newest copy (see
    /// [`Context::freshness`]). Without it, a pass acts on the copy it is handed.
    pub certificates: Option<Store<Certificate>>,
}

impl Stores {
    /// Stores that stay empty (no watch fills them): for a [`Context`] that reads through the apiserver only,
    /// such as the per-Pod certificate endpoint's, which every replica serves.
    pub fn empty() -> Stores {
        Stores {
            secrets: Default::default(),
            issuers: kube::runtime::reflector::store().0,
            cluster_issuers: kube::runtime::reflector::store().0,
            solvers: kube_solver::SolverStores {
                pods: kube::runtime::reflector::store().0,
                services: kube::runtime::reflector::store().0,
                ingresses: kube::runtime::reflector::store().0,
            },
            certificates: None,
        }
    }

    /// Empty stores and the writers that fill them, for unit tests that play the watches themselves.
    #[cfg(test)]
    pub(crate) fn with_writers() -> (Stores, StoreWriters) {
        let secrets = super::secret_cache::SecretCache::default();
        let secrets_writer = secrets.clone();
        let (issuers, issuers_writer) = reflector::store();
        let (cluster_issuers, cluster_issuers_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (ingresses, ingresses_writer) = reflector::store();
        let stores = Stores {
            secrets,
            issuers,
            cluster_issuers,
            solvers: kube_solver::SolverStores { pods, services, ingresses },
            certificates: None,
        };
        let writers = StoreWriters {
            secrets: secrets_writer,
            issuers: issuers_writer,
            cluster_issuers: cluster_issuers_writer,
            pods: pods_writer,
            services: services_writer,
            ingresses: ingresses_writer,
        };
        (stores, writers)
    }
}

/// The writing ends of [`Stores`], for unit tests that feed the caches instead of watches.
#[cfg(test)]
pub(crate) struct StoreWriters {
    pub secrets: super::secret_cache::SecretCache,
    pub issuers: reflector::store::Writer<Issuer>,
    pub cluster_issuers: reflector::store::Writer<ClusterIssuer>,
    pub pods: reflector::store::Writer<Pod>,
    pub services: reflector::store::Writer<Service>,
    pub ingresses: reflector::store::Writer<Ingress>,
}

/// An order in flight as the process that created or resumed it keeps it: the instant-acme handle, the
/// private key the certificate will be for, and the issuer the order was placed with.
pub(super) struct KeptOrder {
    pub session: OrderSession,
    pub key: PrivateKey,
    pub issuer: IssuerRef,
}

/// A status a pass built but could not write, and the Certificate it was built from.
struct UnwrittenStatus {
    uid: Option<String>,
    resource_version: Option<String>,
    status: CertificateStatus,
}

/// What a create of a Secret found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretCreation {
    /// The Secret is new.
    Created,
    /// A Secret of that name exists already; nothing was written.
    AlreadyExists,
}

/// What kacme last did to a Secret, until the cache shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SecretWrite {
    Written(String),
    Deleted,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub accounts: AccountCache,
    pub acme_observer: Arc<dyn AcmeObserver>,
    pub reconcile_observer: Arc<dyn ReconcileObserver>,
    pub events: EventPublisher,
    /// Slots per issuer, so that one slow CA cannot hold every worker.
    pub issuer_slots: super::issuer_slots::IssuerSlots,
    /// Failed reconciles in a row per object, for the error policy's growing wait.
    pub error_backoff: super::retry::ErrorBackoff,
    /// Steps the CA asked to retry at once (rejected nonces), in a row per Certificate.
    pub immediate_retries: super::retry::ErrorBackoff,
    /// Objects a CA asked to retry later, held until then (see [`super::retry::RetryGate`]).
    pub retry_gate: super::retry::RetryGate,
    pub stores: Stores,
    pub solver_context: SolverContext,
    orders: Mutex<HashMap<String, KeptOrder>>,
    /// The resourceVersion each Certificate had after kacme last wrote its status (or last read it afresh),
    /// and when, until the watch delivers that version.
    written: Mutex<HashMap<String, (String, Instant)>>,
    /// Secrets kacme wrote or deleted whose change the cache may not show yet, by namespace/name.
    secret_writes: Mutex<HashMap<String, (SecretWrite, Instant)>>,
    /// Statuses a pass could not write (see [`Context::remember_unwritten`]), by namespace/name.
    unwritten: Mutex<HashMap<String, UnwrittenStatus>>,
    /// Tests only: the Certificates (namespace/name) whose reconcile panics at once.
    #[cfg(test)]
    pub(crate) panic_for: Mutex<std::collections::HashSet<String>>,
}

pub(super) fn object_key(certificate: &Certificate) -> String {
    format!("{}/{}", certificate.namespace().unwrap_or_default(), certificate.name_any())
}

/// Keys of the Certificate's Secret that only some specs ask for: removed when the spec stops asking.
const OPTIONAL_OUTPUT_KEYS: [&str; 4] = [
    crate::api::names::TLS_COMBINED_PEM,
    crate::api::names::KEY_DER,
    crate::api::names::KEYSTORE_P12,
    crate::api::names::TRUSTSTORE_P12,
];

impl Context {
    /// A context over `client` and `stores`, with nothing remembered yet.
    pub fn new(client: Client, config: ControllerConfig, observers: Observers, stores: Stores) -> Context {
        Context {
            events: EventPublisher::new(client.clone(), &config.reporter),
            solver_context: SolverContext::new(config.solver_image.clone()),
            accounts: AccountCache::default(),
            acme_observer: observers.acme,
            reconcile_observer: observers.reconcile,
            stores,
            error_backoff: super::retry::ErrorBackoff::default(),
            immediate_retries: super::retry::ErrorBackoff::default(),
            retry_gate: super::retry::RetryGate::default(),
            issuer_slots: super::issuer_slots::IssuerSlots::new(
                config
                    .per_issuer_concurrency
                    .map(usize::from)
                    .unwrap_or_else(|| super::issuer_slots::default_per_issuer(config.concurrency)),
            ),
            orders: Mutex::default(),
            written: Mutex::default(),
            secret_writes: Mutex::default(),
            unwritten: Mutex::default(),
            #[cfg(test)]
            panic_for: Mutex::default(),
            config,
            client,
        }
    }

    /// The labels of `namespace`, for issuer policies that select namespaces: one read of its metadata
    /// (none for a namespace that does not exist).
    pub async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, kube::Error> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let meta = api.get_metadata_opt(namespace).await?;
        Ok(meta.and_then(|m| m.metadata.labels).unwrap_or_default())
    }

    /// A Secret, from the cache when it is current: the cache holds only kacme's own Secrets, so one it does
    /// not hold is read from the apiserver (it may be foreign), and so is one kacme changed since the cache
    /// last heard of it (acting on a stale Secret could issue twice).
    pub(crate) async fn read_secret(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        match self.cached_secret(namespace, name) {
            Some(Some(secret)) => Ok(Some(secret)),
            _ => self.read_secret_afresh(namespace, name).await,
        }
    }

    /// What the cache can tell of a Secret: `Some(Some(_))` it holds the Secret, current as far as kacme's
    /// own writes go; `Some(None)` kacme deleted it and the cache shows that; `None` the cache cannot tell
    /// (it does not hold the Secret, which may then be someone else's or not exist, or it predates kacme's
    /// last write).
    pub(crate) fn cached_secret(&self, namespace: &str, name: &str) -> Option<Option<Arc<Secret>>> {
        let key = format!("{namespace}/{name}");
        let cached = self.stores.secrets.get(namespace, name);
        let pending = self.secret_writes.lock().ok().and_then(|w| w.get(&key).map(|(write, _)| write.clone()));
        match (cached, pending) {
            (Some(secret), None) => Some(Some(secret)),
            (Some(secret), Some(SecretWrite::Written(version)))
                if secret.resource_version().as_ref() == Some(&version) =>
            {
                self.forget_secret_write(&key);
                Some(Some(secret))
            }
            (None, Some(SecretWrite::Deleted)) => {
                self.forget_secret_write(&key);
                Some(None)
            }
            _ => None,
        }
    }

    /// A Secret read from the apiserver.
    pub(crate) async fn read_secret_afresh(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// Creates a Secret of kacme's with a POST, which never overwrites: [`SecretCreation::AlreadyExists`]
    /// when a Secret of that name exists (someone else's, until its ownership says otherwise). Remembers
    /// the new version until the cache shows it.
    pub(crate) async fn create_secret(&self, namespace: &str, secret: &Secret) -> Result<SecretCreation, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, secret).await
        {
            Ok(created) => {
                self.remember_created_secret(namespace, &created);
                Ok(SecretCreation::Created)
            }
            Err(e) if is_already_exists(&e) => Ok(SecretCreation::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// Server-side applies `secret` over `current`, a Secret kacme has found to be its own: only while it is
    /// still that very Secret (the apply names `current`'s resourceVersion, so a Secret replaced, deleted or
    /// changed meanwhile answers 409 and nothing is written). Remembers the new version until the cache
    /// shows it.
    pub(crate) async fn replace_secret(
        &self,
        namespace: &str,
        secret: &Secret,
        current: &Secret,
    ) -> Result<(), kube::Error> {
        let name = secret.name_any();
        let mut secret = secret.clone();
        secret.metadata.resource_version = current.resource_version();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
        // An apply removes only what kacme applied before, not what its create wrote: drop the outputs the
        // spec no longer asks for explicitly, at the version just written.
        let stale: Vec<&String> = written
            .data
            .iter()
            .flat_map(|d| d.keys())
            .filter(|k| OPTIONAL_OUTPUT_KEYS.contains(&k.as_str()))
            .filter(|k| !secret.data.as_ref().is_some_and(|d| d.contains_key(*k)))
            .collect();
        if !stale.is_empty() {
            let mut operations = vec![serde_json::json!({
                "op": "test", "path": "/metadata/resourceVersion", "value": written.resource_version()
            })];
            operations.extend(stale.iter().map(|k| serde_json::json!({"op": "remove", "path": format!("/data/{}", k.replace('~', "~0").replace('/', "~1"))})));
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::Array(operations)).map_err(kube::Error::SerdeError)?;
            written = api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
        }
        self.remember_secret_write(namespace, &name, written.resource_version().map(SecretWrite::Written));
        Ok(())
    }

    /// Records `uid` as the Certificate UID of `current` (a Secret kacme wrote before it recorded UIDs), with
    /// a merge patch of that one annotation that names `current`'s resourceVersion (409 if it changed).
    pub(crate) async fn record_certificate_uid(
        &self,
        namespace: &str,
        current: &Secret,
        uid: &str,
    ) -> Result<(), kube::Error> {
        let name = current.name_any();
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": { crate::api::names::ANNOTATION_CERTIFICATE_UID: uid },
            }
        });
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let written = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        self.remember_secret_write(namespace, &name, written.resource_version().map(SecretWrite::Written));
        Ok(())
    }

    /// Deletes `secret`, a Secret kacme has found to be its own, if it still exists: only that very object
    /// (the delete names its UID, so a Secret of the same name created since by someone else stays).
    /// Remembers the deletion until the cache shows it.
    pub(crate) async fn delete_secret(&self, namespace: &str, secret: &Secret) -> Result<(), ReconcileError> {
        let name = secret.name_any();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: secret.uid().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            // Another object of that name now: not ours to delete, and not this one's to report.
            Err(e) if is_conflict(&e) => return Ok(()),
            Err(e) => return Err(ReconcileError::kube(format!("deleting Secret {namespace}/{name}"), e)),
        }
        self.remember_secret_write(namespace, &name, Some(SecretWrite::Deleted));
        Ok(())
    }

    /// Remembers a Secret kacme created by other means than [`Context::apply_secret`].
    pub(crate) fn remember_created_secret(&self, namespace: &str, secret: &Secret) {
        self.remember_secret_write(namespace, &secret.name_any(), secret.resource_version().map(SecretWrite::Written));
    }

    fn remember_secret_write(&self, namespace: &str, name: &str, write: Option<SecretWrite>) {
        // The watch often delivers a write before its request returns: then there is nothing to remember
        // (and nothing would forget it until the Secret's next read, its renewal), and an earlier write's
        // record is out of date.
        if let Some(SecretWrite::Written(version)) = &write
            && self.stores.secrets.resource_version(namespace, name).as_ref() == Some(version)
        {
            self.forget_secret_write(&format!("{namespace}/{name}"));
            return;
        }
        if let (Ok(mut writes), Some(write)) = (self.secret_writes.lock(), write) {
            writes.insert(format!("{namespace}/{name}"), (write, Instant::now()));
        }
    }

    /// How long the watch may still take to show a Secret kacme has just written that the cache does not
    /// hold at all yet (`None`: the cache holds a version of it, kacme deleted it, or kacme wrote it longer
    /// than [`OWN_WRITE_DELIVERY`] ago). A pass may wait instead of reading it: the watch event of the
    /// Secret wakes its Certificate. (A cache holding another version is read afresh as before: it may be
    /// someone else's later change.)
    pub(crate) fn secret_write_in_flight(&self, namespace: &str, name: &str) -> Option<Duration> {
        if self.stores.secrets.contains(namespace, name) {
            return None;
        }
        let writes = self.secret_writes.lock().ok()?;
        let (SecretWrite::Written(_), at) = writes.get(&format!("{namespace}/{name}"))? else { return None };
        OWN_WRITE_DELIVERY.checked_sub(at.elapsed()).filter(|left| !left.is_zero())
    }

    fn forget_secret_write(&self, key: &str) {
        if let Ok(mut writes) = self.secret_writes.lock() {
            writes.remove(key);
            shrink_when_drained(&mut writes);
        }
    }

    /// The Secret watch delivered `secret`: a write of kacme's that the cache now shows needs no more
    /// remembering (without this, the entry of every Secret kacme created stayed until its next read, which
    /// for an issued certificate is its renewal: one entry per Certificate).
    pub(crate) fn secret_delivered(&self, secret: &Secret) {
        let Some(namespace) = secret.metadata.namespace.as_deref() else { return };
        let key = format!("{namespace}/{}", secret.name_any());
        let Ok(mut writes) = self.secret_writes.lock() else { return };
        let shown = matches!(writes.get(&key), Some((SecretWrite::Written(version), _))
            if secret.resource_version().as_ref() == Some(version));
        if shown {
            writes.remove(&key);
            shrink_when_drained(&mut writes);
        }
    }

    /// The issuer `reference` names, as the cache has it (a Certificate in `namespace` refers to it).
    pub(crate) fn cached_issuer(&self, reference: &IssuerRef, namespace: &str) -> Option<IssuerInfo> {
        match reference.kind {
            IssuerKind::Issuer => {
                let issuer = self.stores.issuers.get(&ObjectRef::new(&reference.name).within(namespace))?;
                IssuerInfo::from_issuer(&issuer)
            }
            IssuerKind::ClusterIssuer => {
                let issuer = self.stores.cluster_issuers.get(&ObjectRef::new(&reference.name))?;
                IssuerInfo::from_cluster_issuer(&issuer, &self.config.cluster_resource_namespace)
            }
        }
    }

    /// Keeps an order in flight between passes (its position is in status, its key in the next-key Secret
    /// anyway: a restarted operator reads them back).
    pub(super) fn keep_order(&self, certificate: &Certificate, order: KeptOrder) {
        if let Ok(mut orders) = self.orders.lock() {
            orders.insert(object_key(certificate), order);
        }
    }

    /// The kept order at `url`, if any.
    pub(super) fn take_order(&self, certificate: &Certificate, url: &str) -> Option<KeptOrder> {
        let mut orders = self.orders.lock().ok()?;
        let order = orders.remove(&object_key(certificate))?;
        (order.session.progress().url == url).then_some(order)
    }

    pub(super) fn forget_order(&self, certificate: &Certificate) {
        if let Ok(mut orders) = self.orders.lock() {
            orders.remove(&object_key(certificate));
        }
    }

    /// Tests only: panics when a test asked the reconcile of `certificate` to panic.
    #[cfg(test)]
    pub(crate) fn panic_if_asked(&self, certificate: &Certificate) {
        let asked = self.panic_for.lock().is_ok_and(|names| names.contains(&object_key(certificate)));
        if asked {
            panic!("injected panic for Certificate {}", object_key(certificate));
        }
    }

    /// Remembers the resourceVersion a status write produced (or a fresh read returned).
    pub(super) fn remember_write(&self, certificate: &Certificate, resource_version: Option<String>) {
        if let (Ok(mut written), Some(version)) = (self.written.lock(), resource_version) {
            written.insert(object_key(certificate), (version, Instant::now()));
        }
    }

    /// The Certificate watch delivered `certificate`: once it delivers the version kacme wrote, the cache is
    /// at least that new (a watch delivers every version in order; a re-list, the latest), and a later
    /// version in the cache is someone else's newer write, not an older status.
    pub(crate) fn certificate_delivered(&self, certificate: &Certificate) {
        let Ok(mut written) = self.written.lock() else { return };
        let key = object_key(certificate);
        if written.get(&key).is_some_and(|(version, _)| certificate.resource_version().as_ref() == Some(version)) {
            written.remove(&key);
            shrink_when_drained(&mut written);
        }
    }

    /// Whether the cached copy may predate kacme's own last status write (acting on a stale status could
    /// repeat a step, such as ordering twice), and if so, what to do about it; with the copy to act on.
    ///
    /// A pass is handed the copy the cache held when the pass was queued (kube-runtime reads it then), and
    /// is polled a moment later. The watch may deliver kacme's own last write in between, which ends the
    /// record of that write ([`Context::certificate_delivered`]): the handed copy would then look current
    /// while it is older than that write, and a pass acting on it ordered a second time. So the cache's
    /// newest copy is taken, under the lock that guards the record: a record ended means the cache holds
    /// the write (the reflector stores an object before the watch hands it on).
    pub(super) fn freshness(&self, certificate: Arc<Certificate>) -> (Arc<Certificate>, Freshness) {
        let Ok(written) = self.written.lock() else { return (certificate, Freshness::ReadAfresh) };
        let newest = self.stores.certificates.as_ref().and_then(|store| store.get(&ObjectRef::from_obj(&*certificate)));
        let certificate = newest.unwrap_or(certificate);
        let freshness = match written.get(&object_key(&certificate)) {
            None => Freshness::Current,
            Some((version, _)) if certificate.resource_version().as_ref() == Some(version) => Freshness::Current,
            Some((_, at)) => match OWN_WRITE_DELIVERY.checked_sub(at.elapsed()) {
                Some(left) if !left.is_zero() => Freshness::AwaitWatch(left),
                _ => Freshness::ReadAfresh,
            },
        };
        (certificate, freshness)
    }

    pub(super) fn forget_written(&self, certificate: &Certificate) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(&object_key(certificate));
        }
        if let Ok(mut unwritten) = self.unwritten.lock() {
            unwritten.remove(&object_key(certificate));
        }
    }

    /// Keeps the status a pass over `certificate` built but could not write (the apiserver failed the
    /// write): what it records may exist nowhere else, such as the order the pass created at the CA, whose
    /// loss would cost a second order. The next pass starts from it ([`Context::take_unwritten`]).
    pub(super) fn remember_unwritten(&self, certificate: &Certificate, status: CertificateStatus) {
        let unwritten = UnwrittenStatus {
            uid: certificate.metadata.uid.clone(),
            resource_version: certificate.resource_version(),
            status,
        };
        if let Ok(mut map) = self.unwritten.lock() {
            map.insert(object_key(certificate), unwritten);
        }
    }

    /// The status a failed write left for `certificate`, when it was built from this very version of it:
    /// a later version (someone else's change, or the write landed after all) is acted on as it is.
    pub(super) fn take_unwritten(&self, certificate: &Certificate) -> Option<CertificateStatus> {
        let mut map = self.unwritten.lock().ok()?;
        let unwritten = map.remove(&object_key(certificate))?;
        shrink_when_drained(&mut map);
        (unwritten.uid == certificate.metadata.uid && unwritten.resource_version == certificate.resource_version())
            .then_some(unwritten.status)
    }
}

/// Gives back most of a map's table once it holds under a quarter of what it has room for: hash tables
/// keep their largest size, and the maps of Certificates in some state (waiting for a slot, a write the
/// watch has not shown yet) fill up while thousands are issued at once, then hold a few. Halving at most
/// each time the length falls by four keeps the rehashing amortised.
pub(crate) fn shrink_when_drained<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    const SMALL: usize = 64;
    if map.capacity() > SMALL && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// How long a pass waits for the watch to deliver kacme's own status write before it reads the Certificate
/// from the apiserver instead: the watch usually delivers it within milliseconds, and its event starts the
/// next pass at once. Longer (a watch restarting, or a version the watch skipped), one read settles it.
pub(super) const OWN_WRITE_DELIVERY: Duration = Duration::from_secs(2);

/// Whether a pass may act on the Certificate the cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Freshness {
    /// The cache holds kacme's last write, or kacme wrote nothing since it started.
    Current,
    /// The cache is older than kacme's last write, which was a moment ago: the watch will deliver it and
    /// start a pass; look again after this long only if it does not.
    AwaitWatch(Duration),
    /// The cache still differs from kacme's last write a while after it: read the Certificate afresh.
    ReadAfresh,
}

/// Whether a create found an object of that name (409 AlreadyExists, not another conflict).
fn is_already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status_code(error) == Some(409) && status.reason == "AlreadyExists")
}

/// Writes `status` with server-side apply under [`FIELD_MANAGER`] (fields kacme no longer sets go);
/// returns the object's new resourceVersion.
pub(crate) async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: &S,
) -> Result<Option<String>, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        "kind": kind,
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(|object| object.resource_version())
        .map_err(|e| ReconcileError::kube(format!("writing the status of {kind} {name}"), e))
}
