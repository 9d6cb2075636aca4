//! `kacme controller`: the Certificate, Issuer and ClusterIssuer reconcilers and their wiring.
//!
//! The operator watches only what it needs: its own CRDs, Secrets labelled
//! `app.kubernetes.io/managed-by: kacme`, and solver Pods, Services and Ingresses labelled
//! `kacme.dev/solver` — never a cache of every Secret in the cluster.

mod accounts;
mod automation;
mod ca_bundle;
mod certificate;
mod error;
mod events;
mod ingress;
mod issuer;
mod kube_solver;
mod observe;
mod owned_certificates;
mod resync;
mod sweep;
#[cfg(test)]
mod testing;
mod workload;

pub use accounts::{AccountCache, IssuerInfo};
pub use automation::{AutomationConfig, run_automation};
pub use ca_bundle::CaBundleConfig;
pub use certificate::FINALIZER;
pub use error::ReconcileError;
pub use events::EventPublisher;
pub use observe::{Caches, ControllerKind, NoReconcileObserver, Observers, ReconcileObserver};

use crate::acme::{AcmeObserver, OrderSession, SelfCheck};
use crate::api::names::{ANNOTATION_CERTIFICATE_NAME, LABEL_MANAGED_BY, LABEL_SOLVER, MANAGED_BY};
use crate::api::{Certificate, ClusterIssuer, Issuer, IssuerKind, IssuerRef};
use crate::decision::BackoffPolicy;
use crate::desired::SolverContext;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server-side apply field manager of everything kacme writes.
pub const FIELD_MANAGER: &str = "kacme";
/// The server-side apply field manager of Certificates kacme creates for Ingresses and workloads, and of
/// the CA bundle ConfigMaps.
pub const AUTOMATION_FIELD_MANAGER: &str = "kacme-automation";

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
    /// Spread renewals of Certificates issued together over this long after their renewal time.
    pub renewal_jitter: Duration,
    /// Check that challenges answer before telling the CA (off by default).
    pub self_check: Option<SelfCheck>,
    /// How long one reconcile may wait for the CA in place before requeueing.
    pub max_wait_per_step: Duration,
    /// The name events are reported under.
    pub reporter: String,
}

impl ControllerConfig {
    /// Defaults for everything but the namespace and image.
    pub fn new(cluster_resource_namespace: impl Into<String>, solver_image: impl Into<String>) -> ControllerConfig {
        ControllerConfig {
            cluster_resource_namespace: cluster_resource_namespace.into(),
            solver_image: solver_image.into(),
            backoff: BackoffPolicy::default(),
            concurrency: 16,
            renewal_jitter: Duration::from_secs(60),
            self_check: None,
            max_wait_per_step: Duration::from_secs(2),
            reporter: "kacme".into(),
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
    pub stores: Stores,
    pub solver_context: SolverContext,
    sessions: Mutex<HashMap<String, OrderSession>>,
    /// The resourceVersion each Certificate had after kacme last wrote its status.
    written: Mutex<HashMap<String, String>>,
    /// Secrets kacme wrote or deleted whose change the cache may not show yet, by namespace/name.
    secret_writes: Mutex<HashMap<String, SecretWrite>>,
}

fn object_key(certificate: &Certificate) -> String {
    format!("{}/{}", certificate.namespace().unwrap_or_default(), certificate.name_any())
}

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
            sessions: Mutex::default(),
            written: Mutex::default(),
            secret_writes: Mutex::default(),
            config,
            client,
        }
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

    /// Server-side applies a Secret of kacme's, remembering its version until the cache shows it.
    pub(crate) async fn apply_secret(&self, namespace: &str, secret: &Secret) -> Result<(), kube::Error> {
        let name = secret.name_any();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(secret)).await?;
        self.remember_secret_write(namespace, &name, written.resource_version().map(SecretWrite::Written));
        Ok(())
    }

    /// Deletes a Secret of kacme's if it exists, remembering that until the cache shows it.
    pub(crate) async fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), ReconcileError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        certificate::delete_secret_if_present(&api, name).await?;
        self.remember_secret_write(namespace, name, Some(SecretWrite::Deleted));
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

    /// Keeps an order's instant-acme handle between passes (its position is in status anyway).
    fn keep_session(&self, certificate: &Certificate, session: OrderSession) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(object_key(certificate), session);
        }
    }

    /// The kept handle of the order at `url`, if any.
    fn take_session(&self, certificate: &Certificate, url: &str) -> Option<OrderSession> {
        let mut sessions = self.sessions.lock().ok()?;
        let session = sessions.remove(&object_key(certificate))?;
        (session.progress().url == url).then_some(session)
    }

    fn forget_session(&self, certificate: &Certificate) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&object_key(certificate));
        }
    }

    /// Remembers the resourceVersion a status write produced.
    fn remember_write(&self, certificate: &Certificate, resource_version: Option<String>) {
        if let (Ok(mut written), Some(version)) = (self.written.lock(), resource_version) {
            written.insert(object_key(certificate), version);
        }
    }

    /// Whether the cached copy may predate kacme's own last status write (then it must be read afresh:
    /// acting on a stale status could repeat a step, such as storing a certificate twice).
    fn may_be_stale(&self, certificate: &Certificate) -> bool {
        let Ok(written) = self.written.lock() else { return true };
        written.get(&object_key(certificate)).is_some_and(|v| certificate.resource_version().as_ref() != Some(v))
    }

    fn forget_written(&self, certificate: &Certificate) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(&object_key(certificate));
        }
    }
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

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &ReconcileError, _: Arc<Context>) -> Action {
    // Named like the reconcilers' spans (`certificate = "apps/web"`), so that every line about an object names it.
    let object = match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    };
    tracing::warn!(kind = %K::kind(&()), %object, %error, reason = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// A watch of `K` (filtered by `config`) that fills a cache as it is polled: the stream triggers a
/// controller, the store serves reads, from one watch. managedFields are dropped before caching.
fn cached_watch<K>(
    client: &Client,
    config: watcher::Config,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// Waits until a controller's cache is filled; false if it never will be.
///
/// `Store::wait_until_ready` wakes only the last of several waiters (kube-runtime 5 keeps one waker), and the
/// controller itself waits on the same store: poll again now and then instead of relying on the wake-up.
async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
            return ready.is_ok();
        }
    }
}

/// Runs `reconcile`, telling the observer how long it took and how it ended.
async fn observed(
    observer: Arc<dyn ReconcileObserver>,
    controller: ControllerKind,
    reconcile: impl Future<Output = Result<Action, ReconcileError>>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile.await;
    observer.reconcile_finished(controller, started.elapsed(), result.as_ref().err());
    result
}

/// Runs the operator until `shutdown` resolves, reporting ACME requests to `acme_observer`.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    acme_observer: Arc<dyn AcmeObserver>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), ReconcileError> {
    let observers = Observers { acme: acme_observer, reconcile: Arc::new(NoReconcileObserver) };
    run_observed(client, config, observers, shutdown).await
}

/// Runs the operator until `shutdown` resolves, reporting ACME requests, reconciles and the caches to
/// `observers` (the metrics).
pub async fn run_observed(
    client: Client,
    config: ControllerConfig,
    observers: Observers,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), ReconcileError> {
    // Solver objects are cached by reflectors of their own, complete before the first reconcile: sweeping
    // the leftovers of a killed pass relies on the cache (an empty cache would hide them).
    let solver_objects = || watcher::Config::default().labels(LABEL_SOLVER);
    let (pods, pods_task) = cached_watch::<Pod>(&client, solver_objects());
    let (services, services_task) = cached_watch::<Service>(&client, solver_objects());
    let (ingresses, ingresses_task) = cached_watch::<Ingress>(&client, solver_objects());
    let solver_reflectors = tokio::spawn(async move {
        tokio::join!(
            pods_task.for_each(|_| std::future::ready(())),
            services_task.for_each(|_| std::future::ready(())),
            ingresses_task.for_each(|_| std::future::ready(()))
        );
    });
    for ready in [store_ready(&pods).await, store_ready(&services).await, store_ready(&ingresses).await] {
        if !ready {
            tracing::warn!("a solver object cache did not become ready");
        }
    }
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let (secrets, secret_events) = cached_watch::<Secret>(&client, managed);
    let (issuers, issuer_events) = cached_watch::<Issuer>(&client, watcher::Config::default());
    let (cluster_issuers, cluster_issuer_events) = cached_watch::<ClusterIssuer>(&client, watcher::Config::default());
    let stores =
        Stores { secrets, issuers, cluster_issuers, solvers: kube_solver::SolverStores { pods, services, ingresses } };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        Observers { acme: observers.acme.clone(), reconcile: observers.reconcile.clone() },
        stores,
    ));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let certificates =
        Controller::new(Api::<Certificate>::all(client.clone()), watcher::Config::default().any_semantic());
    let store = certificates.store();
    let issuer_store = store.clone();
    let cluster_issuer_store = store.clone();
    let certificate_controller = certificates
        .owns(Api::<Pod>::all(client.clone()), solver_objects())
        .owns(Api::<Service>::all(client.clone()), solver_objects())
        .owns(Api::<Ingress>::all(client.clone()), solver_objects())
        .watches_stream(secret_events, |secret| {
            let name = secret.annotations().get(ANNOTATION_CERTIFICATE_NAME)?.clone();
            Some(ObjectRef::<Certificate>::new(&name).within(&secret.namespace()?))
        })
        .watches_stream(issuer_events, move |issuer| {
            certificates_of(&issuer_store, IssuerKind::Issuer, issuer.namespace(), &issuer.name_any())
        })
        .watches_stream(cluster_issuer_events, move |issuer| {
            certificates_of(&cluster_issuer_store, IssuerKind::ClusterIssuer, None, &issuer.name_any())
        })
        .with_config(ControllerRunConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(signal(shutdown_rx.clone()))
        .run(
            |certificate, ctx| {
                let observer = ctx.reconcile_observer.clone();
                observed(observer, ControllerKind::Certificate, certificate::reconcile_certificate(certificate, ctx))
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "certificate reconcile");
            }
        });
    let issuers = Controller::new(Api::<Issuer>::all(client.clone()), watcher::Config::default().any_semantic());
    let cluster_issuers =
        Controller::new(Api::<ClusterIssuer>::all(client.clone()), watcher::Config::default().any_semantic());
    let caches =
        Caches { certificates: store.clone(), issuers: issuers.store(), cluster_issuers: cluster_issuers.store() };
    let issuer_controller = issuers
        .graceful_shutdown_on(signal(shutdown_rx.clone()))
        .run(
            |issuer, ctx| {
                let observer = ctx.reconcile_observer.clone();
                observed(observer, ControllerKind::Issuer, issuer::reconcile_issuer(issuer, ctx))
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let cluster_issuer_controller = cluster_issuers
        .graceful_shutdown_on(signal(shutdown_rx.clone()))
        .run(
            |issuer, ctx| {
                let observer = ctx.reconcile_observer.clone();
                observed(observer, ControllerKind::ClusterIssuer, issuer::reconcile_cluster_issuer(issuer, ctx))
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let caches_synced = tokio::spawn(async move {
        let synced = store_ready(&caches.certificates).await
            && store_ready(&caches.issuers).await
            && store_ready(&caches.cluster_issuers).await;
        if synced {
            tracing::info!("caches of Certificates, Issuers and ClusterIssuers synced");
            observers.reconcile.caches_synced(caches);
        }
    });

    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    tracing::info!("kacme controller started");
    tokio::join!(certificate_controller, issuer_controller, cluster_issuer_controller);
    caches_synced.abort();
    solver_reflectors.abort();
    tracing::info!("kacme controller stopped");
    Ok(())
}

/// The Certificates that use an issuer (to reconcile them when the issuer changes).
fn certificates_of(
    store: &Store<Certificate>,
    kind: IssuerKind,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<Certificate>> {
    store
        .state()
        .iter()
        .filter(|c| c.spec.issuer_ref.kind == kind && c.spec.issuer_ref.name == name)
        .filter(|c| kind == IssuerKind::ClusterIssuer || c.namespace() == namespace)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}
