//! What every reconcile shares: the configuration, the watch caches, the ACME accounts, the orders in
//! flight, and the guards that say when a cache may be older than kacme's own last write.

use super::accounts::{AccountCache, IssuerInfo};
use super::events::EventPublisher;
use super::kube_solver;
use super::observe::{Observers, ReconcileObserver};
use super::{FIELD_MANAGER, ReconcileError};
use crate::acme::{AcmeObserver, OrderSession, SelfCheck};
use crate::api::{Certificate, ClusterIssuer, Issuer, IssuerKind, IssuerRef};
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
use std::time::Duration;

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
    pub secrets: Store<Secret>,
    /// Issuers.
    pub issuers: Store<Issuer>,
    /// ClusterIssuers.
    pub cluster_issuers: Store<ClusterIssuer>,
    /// Solver Pods, Services and Ingresses.
    pub solvers: kube_solver::SolverStores,
}

impl Stores {
    /// Empty stores and the writers that fill them, for unit tests that play the watches themselves.
    #[cfg(test)]
    pub(crate) fn with_writers() -> (Stores, StoreWriters) {
        let (secrets, secrets_writer) = reflector::store();
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
    pub secrets: reflector::store::Writer<Secret>,
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
    /// The resourceVersion each Certificate had after kacme last wrote its status.
    written: Mutex<HashMap<String, String>>,
    /// Secrets kacme wrote or deleted whose change the cache may not show yet, by namespace/name.
    secret_writes: Mutex<HashMap<String, SecretWrite>>,
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
        let key = format!("{namespace}/{name}");
        let cached = self.stores.secrets.get(&ObjectRef::new(name).within(namespace));
        let pending = self.secret_writes.lock().ok().and_then(|w| w.get(&key).cloned());
        let current = match (&cached, pending) {
            (Some(secret), None) => Some(secret.clone()),
            (Some(secret), Some(SecretWrite::Written(version)))
                if secret.resource_version().as_ref() == Some(&version) =>
            {
                self.forget_secret_write(&key);
                Some(secret.clone())
            }
            (None, Some(SecretWrite::Deleted)) => {
                self.forget_secret_write(&key);
                None
            }
            _ => None,
        };
        match current {
            Some(secret) => Ok(Some(secret)),
            None => self.read_secret_afresh(namespace, name).await,
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
        if let (Ok(mut writes), Some(write)) = (self.secret_writes.lock(), write) {
            writes.insert(format!("{namespace}/{name}"), write);
        }
    }

    fn forget_secret_write(&self, key: &str) {
        if let Ok(mut writes) = self.secret_writes.lock() {
            writes.remove(key);
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

    /// Remembers the resourceVersion a status write produced.
    pub(super) fn remember_write(&self, certificate: &Certificate, resource_version: Option<String>) {
        if let (Ok(mut written), Some(version)) = (self.written.lock(), resource_version) {
            written.insert(object_key(certificate), version);
        }
    }

    /// Whether the cached copy may predate kacme's own last status write (then it must be read afresh:
    /// acting on a stale status could repeat a step, such as storing a certificate twice). A copy that shows
    /// the write ends the guard: the cache never goes back, so nothing is kept per Certificate between
    /// passes once the watch has caught up.
    pub(super) fn may_be_stale(&self, certificate: &Certificate) -> bool {
        let Ok(mut written) = self.written.lock() else { return true };
        let key = object_key(certificate);
        match written.get(&key) {
            None => false,
            Some(version) if certificate.resource_version().as_ref() == Some(version) => {
                written.remove(&key);
                false
            }
            Some(_) => true,
        }
    }

    pub(super) fn forget_written(&self, certificate: &Certificate) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(&object_key(certificate));
        }
    }
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
