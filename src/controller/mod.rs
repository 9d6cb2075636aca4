//! `kacme controller`: the Certificate, Issuer and ClusterIssuer reconcilers and their wiring.
//!
//! The operator watches only what it needs: its own CRDs, Secrets labelled
//! `app.kubernetes.io/managed-by: kacme`, and solver Pods, Services and Ingresses labelled
//! `kacme.dev/solver` — never a cache of every Secret in the cluster.

mod accounts;
mod automation;
mod ca_bundle;
mod certificate;
mod context;
mod error;
mod events;
mod gateway;
mod ingress;
mod isolation;
mod issuer;
pub(crate) mod issuer_slots;
pub(crate) mod kube_solver;
mod observe;
mod owned_certificates;
mod panic_status;
mod resync;
mod retry;
#[cfg(test)]
mod retry_properties;
mod secret_cache;
mod sweep;
#[cfg(test)]
mod testing;
mod workload;

pub use accounts::{AccountCache, IssuerInfo, ensure_account};
pub use automation::{AutomationConfig, run_automation};
pub use ca_bundle::CaBundleConfig;
pub use certificate::FINALIZER;
#[cfg(test)]
pub(crate) use context::StoreWriters;
pub(crate) use context::apply_status;
pub use context::{Context, ControllerConfig, Stores};
pub use error::ReconcileError;
pub use events::EventPublisher;
pub use observe::{Caches, ControllerKind, NoReconcileObserver, Observers, ReconcileObserver};
pub use workload::WorkloadConfig;

use crate::acme::AcmeObserver;
use crate::api::names::{
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_DNS_NAMES, ANNOTATION_IP_ADDRESSES, LABEL_MANAGED_BY, LABEL_SOLVER,
    MANAGED_BY, TLS_CRT, TLS_KEY,
};
use crate::api::{Certificate, ClusterIssuer, Issuer, IssuerKind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server-side apply field manager of everything kacme writes.
pub const FIELD_MANAGER: &str = "kacme";
/// The server-side apply field manager of Certificates kacme creates for Ingresses and workloads, and of
/// the CA bundle ConfigMaps.
pub const AUTOMATION_FIELD_MANAGER: &str = "kacme-automation";

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let wait = ctx.error_backoff.failed(&backoff_key(object.as_ref()));
    // Named like the reconcilers' spans (`certificate = "apps/web"`), so that every line about an object names it.
    let object = match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    };
    tracing::warn!(kind = %K::kind(&()), %object, %error, reason = error.metric_label(), retry_in = ?wait, "reconcile failed; retrying");
    Action::requeue(wait)
}

/// The key of an object in [`retry::ErrorBackoff`]: `kind/namespace/name`.
fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// What the caches never need of an object: its managedFields and the copy of the whole object that
/// `kubectl apply` keeps in an annotation (together often larger than the object itself).
fn strip_for_cache<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// The annotation in which `kubectl apply` (client side) keeps the last object it applied.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the cache keeps of a Secret: as [`strip_for_cache`], and of a Certificate's Secret (type
/// `kubernetes.io/tls`, naming its Certificate) only what passes read from the cache: `tls.crt` cut to its
/// leaf certificate, and `tls.key` (the issuance decision, key reuse, revocation), and not the
/// `kacme.dev/dns-names` and `kacme.dev/ip-addresses` annotations (for people; nothing reads them). The intermediates,
/// `ca.crt` and the additional outputs (keystores, combined PEM, DER key) go: about two thirds of such a
/// Secret, and at 10,000 Certificates the largest thing kacme kept. Code that writes a Secret from its
/// content (rewriting the outputs) reads it afresh from the apiserver; storing a certificate does anyway.
fn strip_secret_for_cache(secret: &mut Secret) {
    strip_for_cache(secret);
    let of_a_certificate = secret.type_.as_deref() == Some(crate::desired::TLS_SECRET_TYPE)
        && secret.annotations().contains_key(ANNOTATION_CERTIFICATE_NAME);
    let Some(data) = secret.data.as_mut().filter(|_| of_a_certificate) else { return };
    data.retain(|key, _| key == TLS_CRT || key == TLS_KEY);
    // What the Secret was issued for is read from its certificate; these two annotations are for people.
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.remove(ANNOTATION_DNS_NAMES);
        annotations.remove(ANNOTATION_IP_ADDRESSES);
    }
    if let Some(crt) = data.get_mut(TLS_CRT) {
        cut_to_leaf(&mut crt.0);
    }
}

/// Cuts a PEM chain after its first certificate (left as it is when it has none).
fn cut_to_leaf(pem: &mut Vec<u8>) {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    if let Some(at) = pem.windows(END.len()).position(|window| window == END) {
        pem.truncate(at + END.len());
        pem.push(b'\n');
        pem.shrink_to_fit();
    }
}

/// A watch of `K` (filtered by `config`) that fills a cache as it is polled: the stream triggers a
/// controller, the store serves reads, from one watch. What the caches never need is dropped first
/// ([`strip_for_cache`]); nothing kacme writes is built from a cached object's metadata.
fn cached_watch<K>(
    client: &Client,
    config: watcher::Config,
    strip: fn(&mut K),
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer).touched_objects();
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

/// Runs `reconcile` of `object`, telling the observer how long it took and how it ended; a panic is an
/// error of the object (see [`isolation`]), shown in an Event and in its Ready condition
/// ([`panic_status`]); a success resets the object's error backoff.
async fn observed<K: panic_status::ShowsReconcilePanic>(
    ctx: Arc<Context>,
    controller: ControllerKind,
    object: &K,
    reconcile: impl Future<Output = Result<Action, ReconcileError>>,
) -> Result<Action, ReconcileError> {
    let observer = ctx.reconcile_observer.clone();
    let started = Instant::now();
    let in_flight = InFlight::start(observer.clone(), controller);
    let result = isolation::isolated(reconcile).await;
    match &result {
        Ok(_) => ctx.error_backoff.succeeded(&backoff_key(object)),
        // Where the object's owner looks: a panic is a bug of kacme, but it costs (and names) this object.
        Err(error @ ReconcileError::Panicked(_)) => {
            let reason = crate::api::ReconcileReason::Panicked.as_str();
            ctx.events.publish_to(&object.object_ref(&()), "Reconcile", true, reason, error.to_string()).await;
            panic_status::show_reconcile_panic(&ctx, object, &error.to_string()).await;
        }
        Err(_) => {}
    }
    in_flight.finish();
    observer.reconcile_finished(controller, started.elapsed(), result.as_ref().err());
    result
}

/// A reconcile in flight, as the observer sees it: started when made; cancelled when dropped before
/// [`InFlight::finish`] (the loop dropped the reconcile), so that liveness never counts it as running.
struct InFlight {
    observer: Arc<dyn ReconcileObserver>,
    controller: ControllerKind,
    finished: bool,
}

impl InFlight {
    fn start(observer: Arc<dyn ReconcileObserver>, controller: ControllerKind) -> InFlight {
        observer.reconcile_started(controller);
        InFlight { observer, controller, finished: false }
    }

    /// The reconcile ended: the caller reports it with `reconcile_finished`.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.observer.reconcile_cancelled(self.controller);
        }
    }
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
    let (pods, pods_task) = cached_watch::<Pod>(&client, solver_objects(), strip_for_cache);
    let (services, services_task) = cached_watch::<Service>(&client, solver_objects(), strip_for_cache);
    let (ingresses, ingresses_task) = cached_watch::<Ingress>(&client, solver_objects(), strip_for_cache);
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
    // kacme's Secrets in a compact cache of their own (see secret_cache): the largest thing kept per Certificate.
    let secrets = secret_cache::SecretCache::default();
    let secret_writer = secrets.clone();
    let secret_events = watcher(Api::<Secret>::all(client.clone()), managed)
        .default_backoff()
        .modify(strip_secret_for_cache)
        .inspect_ok(move |event| secret_writer.apply(event))
        .touched_objects();
    let (issuers, issuer_events) = cached_watch::<Issuer>(&client, watcher::Config::default(), strip_for_cache);
    let (cluster_issuers, cluster_issuer_events) =
        cached_watch::<ClusterIssuer>(&client, watcher::Config::default(), strip_for_cache);
    // The Certificates' cache, stripped like the others: at 10,000 Certificates every byte counts.
    let (certificate_cache, certificate_writer) = reflector::store();
    let stores = Stores {
        secrets,
        issuers,
        cluster_issuers,
        solvers: kube_solver::SolverStores { pods, services, ingresses },
        certificates: Some(certificate_cache.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        Observers { acme: observers.acme.clone(), reconcile: observers.reconcile.clone() },
        stores,
    ));

    let shutdown = crate::shutdown::Shutdown::on(shutdown);

    // The stale-cache guard learns from the watch when kacme's own status writes are in the cache.
    let delivered_ctx = ctx.clone();
    let delivered_secret_ctx = ctx.clone();
    let certificate_events =
        watcher(Api::<Certificate>::all(client.clone()), watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(strip_for_cache)
            .reflect(certificate_writer)
            .applied_objects()
            .inspect_ok(move |certificate| delivered_ctx.certificate_delivered(certificate));
    let certificates = Controller::for_stream(certificate_events, certificate_cache);
    let store = certificates.store();
    let issuer_store = store.clone();
    let cluster_issuer_store = store.clone();
    // A Certificate waiting for a slot of its issuer is reconciled as soon as one is offered to it.
    let slot_wakes = ctx.issuer_slots.take_wakes();
    let service_pods = ctx.stores.solvers.pods.clone();
    let ingress_pods = ctx.stores.solvers.pods.clone();
    let certificate_controller = certificates
        .reconcile_on(slot_wakes)
        .owns(Api::<Pod>::all(client.clone()), solver_objects())
        // A solver Service or Ingress belongs to its solver Pod (which belongs to the Certificate).
        .watches(Api::<Service>::all(client.clone()), solver_objects(), move |service| {
            kube_solver::certificate_of_solver_object(&service.metadata, &service_pods)
        })
        .watches(Api::<Ingress>::all(client.clone()), solver_objects(), move |ingress| {
            kube_solver::certificate_of_solver_object(&ingress.metadata, &ingress_pods)
        })
        .watches_stream(
            secret_events.inspect_ok(move |secret| delivered_secret_ctx.secret_delivered(secret)),
            |secret| {
                let name = secret.annotations().get(ANNOTATION_CERTIFICATE_NAME)?.clone();
                Some(ObjectRef::<Certificate>::new(&name).within(&secret.namespace()?))
            },
        )
        .watches_stream(issuer_events, move |issuer| {
            certificates_of(&issuer_store, IssuerKind::Issuer, issuer.namespace(), &issuer.name_any())
        })
        .watches_stream(cluster_issuer_events, move |issuer| {
            certificates_of(&cluster_issuer_store, IssuerKind::ClusterIssuer, None, &issuer.name_any())
        })
        .with_config(ControllerRunConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.stopped())
        .run(
            |certificate, ctx| async move {
                let reconcile = certificate::reconcile_certificate(certificate.clone(), ctx.clone());
                observed(ctx, ControllerKind::Certificate, certificate.as_ref(), reconcile).await
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
        .graceful_shutdown_on(shutdown.stopped())
        .run(
            |object, ctx| async move {
                let reconcile = issuer::reconcile_issuer(object.clone(), ctx.clone());
                observed(ctx, ControllerKind::Issuer, object.as_ref(), reconcile).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let cluster_issuer_controller = cluster_issuers
        .graceful_shutdown_on(shutdown.stopped())
        .run(
            |object, ctx| async move {
                let reconcile = issuer::reconcile_cluster_issuer(object.clone(), ctx.clone());
                observed(ctx, ControllerKind::ClusterIssuer, object.as_ref(), reconcile).await
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

#[cfg(test)]
mod cache_tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use std::collections::BTreeMap;

    #[test]
    fn the_caches_keep_no_managed_fields_nor_kubectls_copy_of_the_object_and_everything_else() {
        let mut certificate = crate::desired::testing::certificate();
        certificate.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        certificate.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED_ANNOTATION.to_string(), "{\"apiVersion\": \"kacme.dev/v1alpha1\", ...}".to_string()),
            (crate::api::names::ANNOTATION_RENEW_REQUESTED_AT.to_string(), "t1".to_string()),
        ]));
        let mut expected = certificate.clone();
        strip_for_cache(&mut certificate);
        expected.metadata.managed_fields = None;
        expected.metadata.annotations.as_mut().unwrap().remove(LAST_APPLIED_ANNOTATION);
        assert_eq!(
            (&certificate.metadata, &certificate.spec),
            (&expected.metadata, &expected.spec),
            "only those two go; kacme's own annotations stay"
        );
    }

    #[test]
    fn the_secret_cache_keeps_of_a_certificates_secret_only_the_leaf_and_the_key() {
        let leaf = "-----BEGIN CERTIFICATE-----\nTEFG\n-----END CERTIFICATE-----\n";
        let chain = format!("{leaf}-----BEGIN CERTIFICATE-----\nSU5U\n-----END CERTIFICATE-----\n");
        let data = |pairs: &[(&str, &str)]| {
            Some(pairs.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect())
        };
        let mut secret = Secret {
            metadata: kube::api::ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_CERTIFICATE_NAME.to_string(), "web".to_string()),
                    (ANNOTATION_DNS_NAMES.to_string(), "web.example".to_string()),
                    (ANNOTATION_IP_ADDRESSES.to_string(), "10.0.0.1".to_string()),
                    ("team".to_string(), "a".to_string()),
                ])),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            type_: Some(crate::desired::TLS_SECRET_TYPE.to_string()),
            data: data(&[(TLS_CRT, &chain), (TLS_KEY, "KEY"), ("ca.crt", "CA"), ("keystore.p12", "P12")]),
            ..Default::default()
        };
        let mut other = secret.clone();
        other.type_ = Some("Opaque".to_string());
        strip_secret_for_cache(&mut secret);
        assert_eq!(secret.data, data(&[(TLS_CRT, leaf), (TLS_KEY, "KEY")]));
        assert_eq!(secret.metadata.managed_fields, None);
        let annotations: Vec<&str> = secret.annotations().keys().map(String::as_str).collect();
        assert_eq!(annotations, [ANNOTATION_CERTIFICATE_NAME, "team"], "the names annotations go, the rest stays");
        let kept = other.data.clone();
        strip_secret_for_cache(&mut other);
        assert_eq!(other.data, kept, "a next-key or account Secret (not kubernetes.io/tls) keeps everything");
    }

    #[test]
    fn a_pem_without_a_certificate_is_left_as_it_is() {
        let mut garbage = b"not a certificate".to_vec();
        cut_to_leaf(&mut garbage);
        assert_eq!(garbage, b"not a certificate");
    }
}
