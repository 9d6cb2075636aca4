//! The CA bundle ConfigMaps (see [`crate::automatic::ca_bundle`]): written in every namespace the label
//! selector picks, kept current when an issuer's caBundle changes, and removed from namespaces that are
//! no longer selected. Only ConfigMaps labelled `kacme.dev/ca-bundle` are ever written over or deleted.

use super::ReconcileError;
use super::resync::{resync_loop, trigger_on};
use super::sweep::{plan_sweep, run_sweep};
use crate::api::names::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::api::{ClusterIssuer, Issuer, IssuerKind};
use crate::automatic::ca_bundle::{IssuerBundle, LABEL_CA_BUNDLE, desired_ca_bundle_config_maps};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::future::Future;

/// Where the CA bundle goes.
#[derive(Debug, Clone)]
pub struct CaBundleConfig {
    /// Name of the ConfigMap in each namespace (default `kacme-ca-bundle`).
    pub config_map_name: String,
    /// Label selector of the namespaces that get it (kubectl syntax; empty selects every namespace).
    pub namespace_selector: String,
}

/// Runs the CA bundle reconciler until `shutdown` resolves.
pub(crate) async fn run_ca_bundle_controller(
    client: Client,
    config: CaBundleConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (triggers_tx, triggers) = tokio::sync::mpsc::channel(1);
    let (namespaces, namespace_stream) = super::resync::selected_namespaces(&client, &config.namespace_selector);
    let (issuers, issuer_writer) = reflector::store::<Issuer>();
    let issuer_stream =
        reflector::reflector(issuer_writer, watcher(Api::<Issuer>::all(client.clone()), watcher::Config::default()))
            .default_backoff();
    let (cluster_issuers, cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
    let cluster_issuer_stream = reflector::reflector(
        cluster_issuer_writer,
        watcher(Api::<ClusterIssuer>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let (config_maps, config_map_writer) = reflector::store::<ConfigMap>();
    let config_map_stream = reflector::reflector(
        config_map_writer,
        watcher(Api::<ConfigMap>::all(client.clone()), watcher::Config::default().labels(LABEL_CA_BUNDLE)),
    )
    .default_backoff();
    let watches = tokio::spawn(async move {
        tokio::join!(
            trigger_on(namespace_stream, triggers_tx.clone()),
            trigger_on(issuer_stream, triggers_tx.clone()),
            trigger_on(cluster_issuer_stream, triggers_tx.clone()),
            trigger_on(config_map_stream, triggers_tx),
        );
    });
    let ready = namespaces.wait_until_ready().await.is_ok()
        && issuers.wait_until_ready().await.is_ok()
        && cluster_issuers.wait_until_ready().await.is_ok()
        && config_maps.wait_until_ready().await.is_ok();
    if !ready {
        tracing::warn!("the CA bundle caches did not become ready");
        watches.abort();
        return;
    }
    tracing::info!(config_map = %config.config_map_name, selector = %config.namespace_selector, "CA bundle reconciler started");
    let stores = Stores { namespaces, issuers, cluster_issuers, config_maps };
    resync_loop("ca-bundle", triggers, shutdown, || reconcile_ca_bundles(&client, &config, &stores)).await;
    watches.abort();
}

struct Stores {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    config_maps: Store<ConfigMap>,
}

async fn reconcile_ca_bundles(client: &Client, config: &CaBundleConfig, stores: &Stores) -> Result<(), ReconcileError> {
    let namespaces: Vec<String> = stores
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .map(|ns| ns.name_any())
        .collect();
    let mut bundles: Vec<IssuerBundle> = Vec::new();
    for issuer in stores.cluster_issuers.state() {
        if let Some(pem) = issuer.spec.acme.issuing_ca_bundle.clone().or_else(|| issuer.spec.acme.ca_bundle.clone()) {
            bundles.push(IssuerBundle {
                kind: IssuerKind::ClusterIssuer,
                name: issuer.name_any(),
                namespace: None,
                pem,
            });
        }
    }
    for issuer in stores.issuers.state() {
        if let Some(pem) = issuer.spec.acme.issuing_ca_bundle.clone().or_else(|| issuer.spec.acme.ca_bundle.clone()) {
            bundles.push(IssuerBundle {
                kind: IssuerKind::Issuer,
                name: issuer.name_any(),
                namespace: issuer.namespace(),
                pem,
            });
        }
    }
    let desired = desired_ca_bundle_config_maps(&config.config_map_name, &namespaces, &bundles);
    let existing = stores.config_maps.state();
    let mut plan = plan_sweep(&desired, &existing, |desired, existing| desired.data == existing.data);
    // A ConfigMap of that name that kacme did not make is never deleted (nor overwritten: see below).
    plan.delete.retain(|leftover| leftover.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY));
    let existing_now = &existing;
    run_sweep(
        plan,
        |config_map| async move {
            let exists = existing_now
                .iter()
                .any(|c| c.namespace() == config_map.namespace() && c.name_any() == config_map.name_any());
            write_config_map(client, config_map, exists).await
        },
        |leftover| async move {
            let (namespace, name) = (leftover.namespace().unwrap_or_default(), leftover.name_any());
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(config_map = %format!("{namespace}/{name}"), "CA bundle ConfigMap removed"),
                Err(e) if crate::kube_errors::is_not_found(&e) => {}
                Err(e) => return Err(ReconcileError::kube(format!("deleting ConfigMap {namespace}/{name}"), e)),
            }
            Ok(())
        },
    )
    .await
}

/// Writes a CA bundle ConfigMap. A ConfigMap of that name that kacme did not label is never overwritten
/// (server-side apply would take it over; create fails on it instead).
async fn write_config_map(client: &Client, config_map: &ConfigMap, ours: bool) -> Result<(), ReconcileError> {
    let namespace = config_map.namespace().unwrap_or_default();
    let name = config_map.name_any();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let result = if ours {
        let mut value = serde_json::to_value(config_map)
            .map_err(|source| ReconcileError::Serialize { what: format!("ConfigMap {namespace}/{name}"), source })?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "ConfigMap".into();
        api.patch(&name, &PatchParams::apply(super::AUTOMATION_FIELD_MANAGER).force(), &Patch::Apply(&value)).await
    } else {
        api.create(
            &PostParams { field_manager: Some(super::AUTOMATION_FIELD_MANAGER.into()), ..PostParams::default() },
            config_map,
        )
        .await
    };
    match result {
        Ok(_) => {
            tracing::info!(config_map = %format!("{namespace}/{name}"), "CA bundle ConfigMap written");
            Ok(())
        }
        Err(e) if crate::kube_errors::is_conflict(&e) => {
            tracing::warn!(config_map = %format!("{namespace}/{name}"), "a ConfigMap of that name exists and is not kacme's; leaving it");
            Ok(())
        }
        Err(e) => Err(ReconcileError::kube(format!("writing ConfigMap {namespace}/{name}"), e)),
    }
}
