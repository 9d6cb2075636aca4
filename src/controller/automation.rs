//! The reconcilers behind automatic certificates: annotated Ingresses, workloads marked by the admission
//! webhook, and the CA bundle ConfigMaps. They run with the Certificate reconcilers, under the same leader
//! Lease, and only create, update or delete Certificates and ConfigMaps: issuance stays with the
//! Certificate reconciler.

use super::ReconcileError;
use crate::api::Certificate;
use crate::kube_errors::{is_conflict, is_not_found};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use std::future::Future;

/// The server-side apply field manager of Certificates kacme creates for Ingresses and workloads.
pub const AUTOMATION_FIELD_MANAGER: &str = "kacme-automation";

/// Which automatic certificates to run.
#[derive(Debug, Clone, Default)]
pub struct AutomationConfig {
    /// Certificates for Ingresses annotated `kacme.dev/issuer` / `kacme.dev/cluster-issuer`.
    pub ingresses: bool,
    /// One Certificate per workload whose Pods the admission webhook marked `kacme.dev/workload`.
    pub workloads: bool,
    /// The CA bundle ConfigMaps, when set.
    pub ca_bundle: Option<super::ca_bundle::CaBundleConfig>,
}

/// Runs the enabled reconcilers until `shutdown` resolves.
pub async fn run_automation(
    client: Client,
    config: AutomationConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ReconcileError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let ingresses = config.ingresses.then(|| super::ingress::run_ingress_controller(client.clone(), stopped()));
    let workloads = config.workloads.then(|| super::workload::run_workload_controller(client.clone(), stopped()));
    let ca_bundle =
        config.ca_bundle.clone().map(|c| super::ca_bundle::run_ca_bundle_controller(client.clone(), c, stopped()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let optional = |f: Option<_>| async move {
        if let Some(f) = f {
            f.await;
        }
    };
    tokio::join!(
        optional(ingresses.map(futures::FutureExt::boxed)),
        optional(workloads.map(futures::FutureExt::boxed)),
        optional(ca_bundle.map(futures::FutureExt::boxed))
    );
    Ok(())
}

/// Server-side applies `certificate` (metadata and spec; its status is the Certificate reconciler's).
pub(crate) async fn apply_certificate(client: &Client, certificate: &Certificate) -> Result<(), ReconcileError> {
    let namespace = certificate.namespace().unwrap_or_default();
    let name = certificate.name_any();
    let api: Api<Certificate> = Api::namespaced(client.clone(), &namespace);
    let mut value = serde_json::to_value(certificate)
        .map_err(|source| ReconcileError::Serialize { what: format!("Certificate {namespace}/{name}"), source })?;
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
        object.insert("apiVersion".into(), format!("{}/{}", crate::api::GROUP, crate::api::VERSION).into());
        object.insert("kind".into(), "Certificate".into());
    }
    api.patch(&name, &PatchParams::apply(AUTOMATION_FIELD_MANAGER).force(), &Patch::Apply(&value))
        .await
        .map_err(|e| ReconcileError::kube(format!("applying Certificate {namespace}/{name}"), e))?;
    Ok(())
}

/// Deletes the Certificate `namespace/name` if it is still the one with `uid`.
pub(crate) async fn delete_certificate(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: Option<String>,
) -> Result<(), ReconcileError> {
    let api: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // The precondition failed: the name now belongs to another object, which is not ours to delete.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(ReconcileError::kube(format!("deleting Certificate {namespace}/{name}"), e)),
    }
}

/// Whether two Certificates ask for the same thing (labels kacme sets, owners and spec).
pub(crate) fn same_request(desired: &Certificate, existing: &Certificate) -> bool {
    let labels_kept = desired.labels().iter().all(|(k, v)| existing.labels().get(k) == Some(v));
    let owners_kept = desired
        .owner_references()
        .iter()
        .all(|o| existing.owner_references().iter().any(|e| e.uid == o.uid && e.controller == o.controller));
    labels_kept && owners_kept && desired.spec == existing.spec
}

/// Runs a "compute everything, apply the difference" loop: `pass` runs after each batch of `triggers`
/// (coalesced for `debounce`), again after `retry` when it failed, and at least every `resync`.
pub(crate) async fn resync_loop<F, Fut>(
    name: &'static str,
    mut triggers: tokio::sync::mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ReconcileError>>,
{
    use std::time::Duration;
    let debounce = Duration::from_millis(200);
    let retry = Duration::from_secs(5);
    let resync = Duration::from_secs(300);
    tokio::pin!(shutdown);
    let mut wait = resync;
    loop {
        tokio::select! {
            trigger = triggers.recv() => {
                if trigger.is_none() {
                    break;
                }
                tokio::time::sleep(debounce).await;
                while triggers.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => break,
        }
        wait = match pass().await {
            Ok(()) => resync,
            Err(error) => {
                tracing::warn!(%error, reconciler = name, "pass failed; retrying");
                retry
            }
        };
    }
}

/// Forwards every event of a watch stream as a trigger, and waits until the first list is in.
pub(crate) fn trigger_on<S, T>(stream: S, triggers: tokio::sync::mpsc::Sender<()>) -> impl Future<Output = ()> + Send
where
    S: futures::Stream<Item = Result<T, kube::runtime::watcher::Error>> + Send + 'static,
    T: Send,
{
    use futures::StreamExt;
    async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = &event {
                tracing::debug!(%error, "watch error");
            }
            let _ = triggers.try_send(());
        }
    }
}
