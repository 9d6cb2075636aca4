//! Certificates for annotated Gateways (and XListenerSets, where that CRD is served): one per Secret that
//! their TLS-terminating listeners name, kept in step with the listeners and deleted when the annotation,
//! the listener or the object goes (never a Certificate the object did not ask for).
//!
//! Gateways are few, so they are watched whole. Certificates made here are labelled `kacme.dev/source:
//! gateway` (or `listenerset`) and with the asking object's UID (`kacme.dev/owner-uid`); only those are
//! cached. A Certificate in the Gateway's namespace is also controlled by it (garbage collection deletes it
//! with the Gateway); one in another namespace, which a ReferenceGrant there allowed, cannot have an owner
//! reference, so a sweep over the caches deletes it once its Gateway is gone. ReferenceGrants are watched:
//! a grant that appears or goes reconciles the Gateways of the namespaces it names.

use super::ReconcileError;
use super::events::EventPublisher;
use super::owned_certificates::{Requester, delete_certificate};
use crate::api::Certificate;
use crate::automatic::annotations::{ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER, LABEL_SOURCE};
use crate::automatic::gateway::{
    ANNOTATION_OWNER, LABEL_OWNER_UID, ListenerOwner, SOURCE_GATEWAY, SOURCE_LISTENER_SET,
    desired_listener_certificates, made_for,
};
use crate::gateway_api::{
    GATEWAY_API_EXPERIMENTAL_GROUP, GATEWAY_API_GROUP, Gateway, Listener, ReferenceGrant, XListenerSet,
};
use crate::shutdown::Shutdown;
use futures::StreamExt;
use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// How long a pass waits for the caches it needs before it gives up and is retried.
const CACHE_WAIT: Duration = Duration::from_secs(30);
/// How often the Certificates in other namespaces are checked for a Gateway that is gone.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// A Gateway API object with listeners: a Gateway or an XListenerSet.
pub(crate) trait ListenerSource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The value of `kacme.dev/source` on its Certificates.
    const SOURCE: &'static str;
    /// Its listeners.
    fn listeners(&self) -> &[Listener];
}

impl ListenerSource for Gateway {
    const SOURCE: &'static str = SOURCE_GATEWAY;
    fn listeners(&self) -> &[Listener] {
        &self.spec.listeners
    }
}

impl ListenerSource for XListenerSet {
    const SOURCE: &'static str = SOURCE_LISTENER_SET;
    fn listeners(&self) -> &[Listener] {
        &self.spec.listeners
    }
}

struct GatewayContext<K: ListenerSource> {
    client: Client,
    events: EventPublisher,
    /// Certificates labelled `kacme.dev/source: <K::SOURCE>`.
    owned: Store<Certificate>,
    /// Every ReferenceGrant (None when the API does not serve them: then no grant allows anything).
    grants: Option<Store<ReferenceGrant>>,
    /// Every object of kind K.
    sources: Store<K>,
}

impl<K: ListenerSource> GatewayContext<K> {
    /// Waits until the caches a pass reads are filled: deciding on a half-filled cache could delete a
    /// Certificate whose ReferenceGrant was simply not listed yet.
    async fn ready(&self) -> Result<(), ReconcileError> {
        let grants = async {
            match &self.grants {
                Some(grants) => grants.wait_until_ready().await,
                None => Ok(()),
            }
        };
        let waited = tokio::time::timeout(CACHE_WAIT, async {
            let (owned, grants) = tokio::join!(self.owned.wait_until_ready(), grants);
            owned.is_ok() && grants.is_ok()
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            _ => Err(ReconcileError::CacheNotReady(format!("Certificates and ReferenceGrants of {}s", K::kind(&())))),
        }
    }
}

/// Whether `group/version` serves `plural` (a CRD may be absent: the Gateway API is optional).
async fn served(client: &Client, group: &str, version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(&format!("{group}/{version}")).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}

/// Runs the Gateway reconciler, and the XListenerSet one where that CRD is served, until `shutdown` fires.
/// Without the Gateway API CRDs it returns at once (they are looked for at start-up only).
pub(crate) async fn run_gateway_controllers(client: Client, shutdown: Shutdown) {
    if !served(&client, GATEWAY_API_GROUP, "v1", "gateways").await {
        tracing::info!(
            "the Gateway API is not served: annotated Gateways get no Certificates (restart kacme once its CRDs are installed)"
        );
        return;
    }
    let grants = served(&client, GATEWAY_API_GROUP, "v1beta1", "referencegrants").await;
    let listener_sets = served(&client, GATEWAY_API_EXPERIMENTAL_GROUP, "v1alpha1", "xlistenersets").await;
    let gateways = run::<Gateway>(client.clone(), grants, shutdown.clone());
    let listener_sets = async {
        if listener_sets {
            run::<XListenerSet>(client.clone(), grants, shutdown.clone()).await;
        }
    };
    tokio::join!(gateways, listener_sets);
}

async fn run<K: ListenerSource>(client: Client, grants_served: bool, shutdown: Shutdown) {
    let kind = K::kind(&()).to_string();
    let source = format!("{LABEL_SOURCE}={}", K::SOURCE);
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let sources = controller.store();

    // Certificates lead to the object that asked for them through the UID label.
    let (owned, owned_writer) = reflector::store::<Certificate>();
    let owned_stream = reflector::reflector(
        owned_writer,
        watcher(Api::<Certificate>::all(client.clone()), watcher::Config::default().labels(&source)),
    )
    .default_backoff()
    .touched_objects();
    let by_uid = sources.clone();
    let controller = controller.watches_stream(owned_stream, move |certificate: Certificate| {
        let uid = certificate.labels().get(LABEL_OWNER_UID).cloned();
        by_uid.state().into_iter().filter(move |s| uid.is_some() && s.uid() == uid).map(|s| ObjectRef::from_obj(&*s))
    });

    // A ReferenceGrant leads to the objects of the namespaces it lets refer.
    let (controller, grants) = if grants_served {
        let (grants, grants_writer) = reflector::store::<ReferenceGrant>();
        let grant_stream = reflector::reflector(
            grants_writer,
            watcher(Api::<ReferenceGrant>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects();
        let in_namespaces = sources.clone();
        let (group, kind) = (K::group(&()).to_string(), kind.clone());
        let controller = controller.watches_stream(grant_stream, move |grant: ReferenceGrant| {
            let namespaces: Vec<String> = grant
                .spec
                .from
                .iter()
                .filter(|f| f.group == group && f.kind == kind)
                .map(|f| f.namespace.clone())
                .collect();
            in_namespaces
                .state()
                .into_iter()
                .filter(move |s| s.namespace().is_some_and(|n| namespaces.contains(&n)))
                .map(|s| ObjectRef::from_obj(&*s))
        });
        (controller, Some(grants))
    } else {
        (controller, None)
    };

    let ctx = Arc::new(GatewayContext::<K> {
        events: EventPublisher::new(client.clone(), "kacme"),
        owned,
        grants,
        sources,
        client: client.clone(),
    });
    let sweeper = tokio::spawn(sweep_orphans(ctx.clone()));
    tracing::info!(kind = %kind, "{kind} reconciler started");
    controller
        .graceful_shutdown_on(shutdown.stopped())
        .run(
            |source, ctx| super::isolation::isolated(reconcile(source, ctx)),
            |_, error, _| {
                tracing::warn!(%error, "{} reconcile failed; retrying", K::kind(&()));
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|_| std::future::ready(()))
        .await;
    sweeper.abort();
}

#[tracing::instrument(skip_all, fields(object = %format!("{} {}/{}", K::kind(&()), source.namespace().unwrap_or_default(), source.name_any())))]
async fn reconcile<K: ListenerSource>(source: Arc<K>, ctx: Arc<GatewayContext<K>>) -> Result<Action, ReconcileError> {
    ctx.ready().await?;
    let namespace = source.namespace().ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    let uid = source.uid().ok_or(ReconcileError::MissingField("metadata.uid"))?;
    let owned: Vec<Arc<Certificate>> = ctx.owned.state().into_iter().filter(|c| made_for(c, &uid)).collect();
    let annotated = source.annotations().contains_key(ANNOTATION_ISSUER)
        || source.annotations().contains_key(ANNOTATION_CLUSTER_ISSUER);
    if !annotated && owned.is_empty() {
        return Ok(Action::await_change());
    }
    let kind = K::kind(&());
    let requester =
        Requester { client: &ctx.client, events: &ctx.events, object: source.object_ref(&()), kind: kind.as_ref() };
    let desired = if annotated {
        let grants = ctx.grants.as_ref().map(Store::state).unwrap_or_default();
        let grants: Vec<&ReferenceGrant> = grants.iter().map(AsRef::as_ref).collect();
        let group = K::group(&());
        let owner = ListenerOwner {
            kind: kind.as_ref(),
            group: group.as_ref(),
            source: K::SOURCE,
            namespace: namespace.clone(),
            name: source.name_any(),
            annotations: source.annotations(),
            listeners: source.listeners(),
            owner_reference: source.controller_owner_ref(&()).map(|mut owner| {
                // blockOwnerDeletion would need permission to set finalizers on Gateways.
                owner.block_owner_deletion = None;
                owner
            }),
        };
        match desired_listener_certificates(&owner, &grants) {
            Ok(plan) => {
                for skipped in &plan.skipped {
                    tracing::warn!(reason = %skipped, "a listener gets no Certificate");
                    requester.publish(true, "ListenerSkipped", format!("no Certificate for {skipped}")).await;
                }
                plan.certificates
            }
            Err(error) => {
                requester.publish(true, "BadAnnotation", error.to_string()).await;
                return Ok(Action::await_change());
            }
        }
    } else {
        Vec::new()
    };
    let desired = requester.permitted(desired, &owned).await?;
    let this = format!("{kind} {namespace}/{}", source.name_any());
    requester.sync(&desired, &owned, |existing| is_ours(existing, &uid, &this, &ctx.sources)).await?;
    Ok(Action::await_change())
}

/// Whether an existing Certificate that the cache does not (yet) show as the object's is the object's: it
/// records the object's UID, or it was made for an object of the same kind, namespace and name that is gone
/// (a Gateway deleted and created again takes over its predecessor's Certificates).
fn is_ours<K: ListenerSource>(existing: &Certificate, uid: &str, this: &str, sources: &Store<K>) -> bool {
    if made_for(existing, uid) {
        return true;
    }
    let Some(recorded) = existing.labels().get(LABEL_OWNER_UID) else { return false };
    let predecessor = existing.annotations().get(ANNOTATION_OWNER).is_some_and(|owner| owner == this);
    predecessor && !sources.state().iter().any(|s| s.uid().as_deref() == Some(recorded.as_str()))
}

/// Deletes, every [`ORPHAN_SWEEP_INTERVAL`], the Certificates in other namespaces (no owner reference) whose
/// Gateway is gone. Reads only the caches; a request only for a Certificate to delete.
async fn sweep_orphans<K: ListenerSource>(ctx: Arc<GatewayContext<K>>) {
    loop {
        tokio::time::sleep(ORPHAN_SWEEP_INTERVAL).await;
        if ctx.ready().await.is_err() || ctx.sources.wait_until_ready().await.is_err() {
            continue;
        }
        let live: Vec<String> = ctx.sources.state().iter().filter_map(|s| s.uid()).collect();
        for certificate in ctx.owned.state().into_iter().filter(|c| orphaned(c, &live)) {
            let (namespace, name) = (certificate.namespace().unwrap_or_default(), certificate.name_any());
            match delete_certificate(&ctx.client, &namespace, &name, certificate.uid()).await {
                Ok(()) => {
                    tracing::info!(certificate = %format!("{namespace}/{name}"), "Certificate of a {} that is gone deleted", K::kind(&()))
                }
                Err(error) => tracing::warn!(%error, "deleting the Certificate of a {} that is gone", K::kind(&())),
            }
        }
    }
}

/// Whether `certificate`, made for a Gateway in another namespace (no owner reference, the Gateway's UID in
/// its label), outlived that Gateway: none of the `live` UIDs is its, and it is not being deleted already.
/// A Certificate with an owner reference is left to the garbage collector.
fn orphaned(certificate: &Certificate, live: &[String]) -> bool {
    certificate.owner_references().is_empty()
        && certificate.metadata.deletion_timestamp.is_none()
        && certificate.labels().get(LABEL_OWNER_UID).is_some_and(|uid| !live.contains(uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    #[test]
    fn only_a_certificate_in_another_namespace_whose_gateway_is_gone_is_an_orphan() {
        let certificate = |uid: Option<&str>, owned: bool, deleting: bool| {
            let mut c: Certificate = serde_json::from_value(serde_json::json!({
                "apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate", "metadata": {"name": "web-tls"},
                "spec": {"secretName": "web-tls", "issuerRef": {"name": "ca"}},
            }))
            .unwrap();
            if let Some(uid) = uid {
                c.labels_mut().insert(LABEL_OWNER_UID.into(), uid.into());
            }
            if owned {
                c.metadata.owner_references = Some(vec![OwnerReference { uid: "gone".into(), ..Default::default() }]);
            }
            if deleting {
                c.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
            }
            c
        };
        let live = vec!["here".to_string()];
        // (case, certificate, orphaned)
        let cases = [
            ("its Gateway is gone", certificate(Some("gone"), false, false), true),
            ("its Gateway is there", certificate(Some("here"), false, false), false),
            ("owned: the garbage collector's", certificate(Some("gone"), true, false), false),
            ("being deleted already", certificate(Some("gone"), false, true), false),
            ("no UID label: not kacme's to judge", certificate(None, false, false), false),
        ];
        for (case, certificate, expected) in cases {
            assert_eq!(orphaned(&certificate, &live), expected, "{case}");
        }
    }
}
