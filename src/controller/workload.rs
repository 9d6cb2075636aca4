//! One Certificate per workload, from the Pods the admission webhook marked `kacme.dev/workload`, deleted
//! when no Pod of the workload remains (its Secret stays, as for any deleted Certificate, so that a
//! workload scaled back up mounts it at once).
//!
//! Pods are watched metadata only and only when marked; the workload Certificates are the ones labelled
//! `kacme.dev/source: workload`. Each pass computes all desired Certificates from the Pod cache
//! ([`desired_workload_certificates`]), applies those that differ, and deletes labelled leftovers.

use super::ReconcileError;
use super::owned_certificates::{apply_certificate, delete_certificate, same_request};
use super::resync::{resync_loop, trigger_on};
use super::sweep::{plan_sweep, run_sweep};
use crate::api::Certificate;
use crate::automatic::annotations::{LABEL_SOURCE, LABEL_WORKLOAD, SOURCE_WORKLOAD};
use crate::automatic::workload::{MarkedPod, desired_workload_certificates};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::future::Future;

/// Runs the workload reconciler until `shutdown` resolves.
pub(crate) async fn run_workload_controller(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
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
    let watches = tokio::spawn(async move {
        tokio::join!(trigger_on(pod_stream, triggers_tx.clone()), trigger_on(certificate_stream, triggers_tx));
    });
    if pods.wait_until_ready().await.is_err() || certificates.wait_until_ready().await.is_err() {
        tracing::warn!("the workload caches did not become ready");
        watches.abort();
        return;
    }
    tracing::info!("workload reconciler started");
    resync_loop("workload", triggers, shutdown, || reconcile_workloads(&client, &pods, &certificates)).await;
    watches.abort();
}

async fn reconcile_workloads(
    client: &Client,
    pods: &Store<PartialObjectMeta<Pod>>,
    certificates: &Store<Certificate>,
) -> Result<(), ReconcileError> {
    let marked: Vec<MarkedPod> = pods
        .state()
        .iter()
        .filter_map(|pod| Some(MarkedPod { namespace: pod.namespace()?, metadata: pod.metadata.clone() }))
        .collect();
    let desired = desired_workload_certificates(&marked);
    let existing = certificates.state();
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
