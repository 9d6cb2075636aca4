//! Certificates for annotated Ingresses: one per `spec.tls[]` entry, owned by the Ingress, kept in step,
//! and deleted when the annotation goes (never a Certificate the Ingress does not control).
//!
//! Every Ingress is watched, but metadata only (annotations decide); the full Ingress is read only when it
//! carries an issuer annotation. Certificates made here are labelled `kacme.dev/source: ingress` and only
//! those are cached.

use super::ReconcileError;
use super::events::EventPublisher;
use super::owned_certificates::Requester;
use crate::api::Certificate;
use crate::api::names::LABEL_SOLVER;
use crate::automatic::annotations::{ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER, LABEL_SOURCE, SOURCE_INGRESS};
use crate::automatic::certificate::controlled_by;
use crate::automatic::ingress::desired_ingress_certificates;
use futures::StreamExt;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

struct IngressContext {
    client: Client,
    events: EventPublisher,
    /// Certificates labelled `kacme.dev/source: ingress`.
    owned: Store<Certificate>,
}

/// Runs the Ingress reconciler until `shutdown` resolves.
pub(crate) async fn run_ingress_controller(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let source = format!("{LABEL_SOURCE}={SOURCE_INGRESS}");
    let (owned, writer) = reflector::store();
    let owned_stream = reflector::reflector(
        writer,
        watcher(Api::<Certificate>::all(client.clone()), watcher::Config::default().labels(&source)),
    )
    .default_backoff()
    .touched_objects();
    let owned_task = tokio::spawn(async move { owned_stream.for_each(|_| std::future::ready(())).await });
    if owned.wait_until_ready().await.is_err() {
        tracing::warn!("the cache of Ingress Certificates did not become ready");
    }
    let ctx = Arc::new(IngressContext {
        events: EventPublisher::new(client.clone(), "kacme"),
        owned,
        client: client.clone(),
    });
    tracing::info!("Ingress reconciler started");
    // Every Ingress, metadata only (Api<PartialObjectMeta<_>> makes metadata-only requests).
    let ingresses: Api<PartialObjectMeta<Ingress>> = Api::all(client.clone());
    Controller::new(ingresses, watcher::Config::default().labels(&format!("!{LABEL_SOLVER}")))
        .owns(Api::<Certificate>::all(client.clone()), watcher::Config::default().labels(&source))
        .graceful_shutdown_on(shutdown)
        .run(
            |meta, ctx| super::isolation::isolated(reconcile_ingress(meta, ctx)),
            |_, error, _| {
                tracing::warn!(%error, "Ingress reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|_| std::future::ready(()))
        .await;
    owned_task.abort();
}

#[tracing::instrument(skip_all, fields(ingress = %format!("{}/{}", meta.namespace().unwrap_or_default(), meta.name_any())))]
async fn reconcile_ingress(
    meta: Arc<PartialObjectMeta<Ingress>>,
    ctx: Arc<IngressContext>,
) -> Result<Action, ReconcileError> {
    let namespace = meta.namespace().ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    let uid = meta.uid().ok_or(ReconcileError::MissingField("metadata.uid"))?;
    let owned: Vec<Arc<Certificate>> = ctx
        .owned
        .state()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|c| controlled_by(c.metadata.owner_references.as_deref(), &uid))
        .collect();
    let annotated = meta.annotations().contains_key(ANNOTATION_ISSUER)
        || meta.annotations().contains_key(ANNOTATION_CLUSTER_ISSUER);
    if !annotated && owned.is_empty() {
        return Ok(Action::await_change());
    }
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = if annotated {
        let Some(ingress) = ingresses
            .get_opt(&meta.name_any())
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Ingress {namespace}/{}", meta.name_any()), e))?
        else {
            return Ok(Action::await_change());
        };
        match desired_ingress_certificates(&ingress) {
            Ok(plan) => {
                for skipped in &plan.skipped {
                    tracing::warn!(reason = %skipped, "an Ingress TLS entry gets no Certificate");
                    publish(&ctx, &meta, true, "TLSEntrySkipped", format!("no Certificate for {skipped}")).await;
                }
                plan.certificates
            }
            Err(error) => {
                publish(&ctx, &meta, true, "BadAnnotation", error.to_string()).await;
                return Ok(Action::await_change());
            }
        }
    } else {
        Vec::new()
    };
    let requester = requester(&ctx, &meta);
    let desired = requester.permitted(desired, &owned).await?;
    requester
        .sync(&desired, &owned, |existing| controlled_by(existing.metadata.owner_references.as_deref(), &uid))
        .await?;
    Ok(Action::await_change())
}

fn requester<'a>(ctx: &'a IngressContext, meta: &PartialObjectMeta<Ingress>) -> Requester<'a> {
    Requester { client: &ctx.client, events: &ctx.events, object: meta.object_ref(&()), kind: "Ingress" }
}

async fn publish(ctx: &IngressContext, meta: &PartialObjectMeta<Ingress>, warning: bool, reason: &str, note: String) {
    requester(ctx, meta).publish(warning, reason, note).await;
}
