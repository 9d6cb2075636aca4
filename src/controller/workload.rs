//! One Certificate per workload, from the Pods the admission webhook marked `kacme.dev/workload`, deleted
//! when no Pod of the workload remains (its Secret stays, as for any deleted Certificate, so that a
//! workload scaled back up mounts it at once).
//!
//! Pods are watched metadata only and only when marked; the workload Certificates are the ones labelled
//! `kacme.dev/source: workload`; namespaces are watched (metadata only) through the webhook's namespace
//! selector. Each pass computes all desired Certificates ([`desired_workload_certificates`]) from the Pods in
//! the selected namespaces, whose workload comes from their controller (read by UID, its pod template
//! saying what the workload asks for), never from the label; applies those that differ, and deletes
//! labelled leftovers in the selected namespaces. Namespaces outside the selection are left as they are.

use super::ReconcileError;
use super::owned_certificates::{apply_certificate, delete_certificate, same_request};
use super::resync::{resync_loop, trigger_on};
use super::sweep::{plan_sweep, run_sweep};
use crate::api::Certificate;
use crate::automatic::annotations::{LABEL_SOURCE, LABEL_WORKLOAD, SOURCE_WORKLOAD};
use crate::automatic::workload::{
    ControllerFacts, MarkedPod, PodController, WorkloadIdentity, desired_workload_certificates, template_owner,
};
use crate::kube_errors::is_not_found;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Where the workload reconciler acts: the namespaces whose Pods go through the webhook.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The webhook's namespace selector in kubectl's form (`--webhook-namespace-selector`; empty for all).
    pub namespace_selector: String,
    /// Namespaces the webhook never mutates (kacme's own and kube-system).
    pub excluded_namespaces: Vec<String>,
}

/// What was read about Pod controllers, by (namespace, controller UID, the Pods' template revision labels):
/// `None` when no controller with that UID exists. A new revision of a template gives new Pods new
/// revision labels, so a rollout is read afresh.
type ControllerCache = Mutex<HashMap<(String, String, String), Option<ControllerFacts>>>;

/// Runs the workload reconciler until `shutdown` resolves.
pub(crate) async fn run_workload_controller(
    client: Client,
    config: WorkloadConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (triggers_tx, triggers) = tokio::sync::mpsc::channel(1);
    let (pods, pod_writer) = reflector::store::<PartialObjectMeta<Pod>>();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(Api::<PartialObjectMeta<Pod>>::all(client.clone()), watcher::Config::default().labels(LABEL_WORKLOAD))
            .modify(|pod| pod.managed_fields_mut().clear()),
    )
    .default_backoff();
    let (certificates, certificate_writer) = reflector::store::<Certificate>();
    let certificate_stream = reflector::reflector(
        certificate_writer,
        watcher(
            Api::<Certificate>::all(client.clone()),
            watcher::Config::default().labels(&format!("{LABEL_SOURCE}={SOURCE_WORKLOAD}")),
        ),
    )
    .default_backoff();
    let (namespaces, namespace_stream) = super::resync::selected_namespaces(&client, &config.namespace_selector);
    let watches = tokio::spawn(async move {
        tokio::join!(
            trigger_on(pod_stream, triggers_tx.clone()),
            trigger_on(certificate_stream, triggers_tx.clone()),
            trigger_on(namespace_stream, triggers_tx),
        );
    });
    let ready = pods.wait_until_ready().await.is_ok()
        && certificates.wait_until_ready().await.is_ok()
        && namespaces.wait_until_ready().await.is_ok();
    if !ready {
        tracing::warn!("the workload caches did not become ready");
        watches.abort();
        return;
    }
    tracing::info!(selector = %config.namespace_selector, "workload reconciler started");
    let cache = Arc::new(ControllerCache::default());
    resync_loop("workload", triggers, shutdown, || {
        let selected = selected_namespaces(&namespaces, &config.excluded_namespaces);
        reconcile_workloads(&client, &pods, &certificates, selected, cache.clone())
    })
    .await;
    watches.abort();
}

/// The namespaces the webhook selects, but for the excluded ones.
fn selected_namespaces(namespaces: &Store<PartialObjectMeta<Namespace>>, excluded: &[String]) -> BTreeSet<String> {
    namespaces.state().iter().map(|ns| ns.name_any()).filter(|name| !excluded.contains(name)).collect()
}

async fn reconcile_workloads(
    client: &Client,
    pods: &Store<PartialObjectMeta<Pod>>,
    certificates: &Store<Certificate>,
    selected: BTreeSet<String>,
    cache: Arc<ControllerCache>,
) -> Result<(), ReconcileError> {
    let mut marked = Vec::new();
    let mut used = BTreeSet::new();
    for pod in pods.state().iter() {
        let Some(namespace) = pod.namespace().filter(|ns| selected.contains(ns)) else { continue };
        let controller = match template_owner(&pod.metadata) {
            None => PodController::None,
            Some(owner) => {
                let key = (namespace.clone(), owner.uid.clone(), revision_labels(&pod.metadata));
                used.insert(key.clone());
                let cached = cache.lock().ok().and_then(|c| c.get(&key).cloned());
                let facts = match cached {
                    Some(facts) => facts,
                    None => {
                        let facts = read_controller(client, &namespace, owner).await?;
                        if let Ok(mut cache) = cache.lock() {
                            cache.insert(key, facts.clone());
                        }
                        facts
                    }
                };
                facts.map_or(PodController::Unverified, PodController::Found)
            }
        };
        marked.push(MarkedPod { namespace, metadata: pod.metadata.clone(), controller });
    }
    if let Ok(mut cache) = cache.lock() {
        cache.retain(|key, _| used.contains(key));
    }
    // Only the selected namespaces' Certificates are compared with what is desired (and may be deleted).
    let existing: Vec<Arc<Certificate>> =
        certificates.state().into_iter().filter(|c| c.namespace().is_some_and(|ns| selected.contains(&ns))).collect();
    let existing_owned: Vec<Certificate> = existing.iter().map(|c| c.as_ref().clone()).collect();
    let desired = desired_workload_certificates(&marked, &selected, &existing_owned);
    let existing_now = &existing;
    run_sweep(
        plan_sweep(&desired, &existing, same_request),
        |certificate| async move {
            let (namespace, name) = (certificate.namespace().unwrap_or_default(), certificate.name_any());
            let exists = existing_now.iter().any(|c| c.namespace().as_deref() == Some(namespace.as_str()) && c.name_any() == name);
            if !exists && let Some(foreign) = foreign_certificate(client, &namespace, &name).await? {
                tracing::warn!(certificate = %format!("{namespace}/{name}"), owner = %foreign, "a Certificate of the workload's name exists and is not kacme's; leaving it");
                return Ok(());
            }
            apply_certificate(client, certificate).await?;
            tracing::info!(certificate = %format!("{namespace}/{name}"), "workload Certificate applied");
            Ok(())
        },
        |leftover| async move {
            let (namespace, name) = (leftover.namespace().unwrap_or_default(), leftover.name_any());
            delete_certificate(client, &namespace, &name, leftover.uid()).await?;
            tracing::info!(certificate = %format!("{namespace}/{name}"), "no Pod of the workload remains; Certificate deleted");
            Ok(())
        },
    )
    .await
}

/// The labels by which a controller marks the template revision of its Pods, joined (part of the cache key).
fn revision_labels(metadata: &ObjectMeta) -> String {
    let labels = metadata.labels.as_ref();
    ["pod-template-hash", "controller-revision-hash"]
        .iter()
        .map(|key| labels.and_then(|l| l.get(*key)).map(String::as_str).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads the controller `owner` that a Pod in `namespace` names: its facts when it exists with the UID the
/// Pod names, `None` when it does not (or is of a kind kacme does not read).
async fn read_controller(
    client: &Client,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<Option<ControllerFacts>, ReconcileError> {
    let read = match owner.kind.as_str() {
        "ReplicaSet" => {
            read_template::<ReplicaSet>(client, namespace, &owner.name, |r| {
                r.spec.as_ref().and_then(|s| s.template.as_ref())
            })
            .await
        }
        "StatefulSet" => {
            read_template::<StatefulSet>(client, namespace, &owner.name, |s| s.spec.as_ref().map(|s| &s.template)).await
        }
        "DaemonSet" => {
            read_template::<DaemonSet>(client, namespace, &owner.name, |d| d.spec.as_ref().map(|s| &s.template)).await
        }
        "Job" => read_template::<Job>(client, namespace, &owner.name, |j| j.spec.as_ref().map(|s| &s.template)).await,
        _ => return Ok(None),
    };
    let Some((metadata, template_annotations)) =
        read.map_err(|e| ReconcileError::kube(format!("reading {} {namespace}/{}", owner.kind, owner.name), e))?
    else {
        return Ok(None);
    };
    if metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return Ok(None);
    }
    let controller = metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).cloned();
    Ok(Some(ControllerFacts {
        identity: WorkloadIdentity { kind: owner.kind.clone(), name: owner.name.clone(), uid: owner.uid.clone() },
        controller,
        template_annotations,
    }))
}

/// The metadata of the object `name` of kind `K` in `namespace` and the annotations of its pod template;
/// `None` when it does not exist.
async fn read_template<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    template: impl Fn(&K) -> Option<&PodTemplateSpec>,
) -> Result<Option<(ObjectMeta, std::collections::BTreeMap<String, String>)>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(object) => {
            let annotations = template(&object)
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default();
            Ok(Some((object.meta().clone(), annotations)))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Describes the Certificate `namespace/name` when one exists that kacme did not create for a workload.
async fn foreign_certificate(client: &Client, namespace: &str, name: &str) -> Result<Option<String>, ReconcileError> {
    let api: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    let existing = api
        .get_metadata_opt(name)
        .await
        .map_err(|e| ReconcileError::kube(format!("reading Certificate {namespace}/{name}"), e))?;
    Ok(existing.filter(|c| c.labels().get(LABEL_SOURCE).map(String::as_str) != Some(SOURCE_WORKLOAD)).map(|c| {
        c.labels().get(crate::api::names::LABEL_MANAGED_BY).cloned().unwrap_or_else(|| "created by someone else".into())
    }))
}
