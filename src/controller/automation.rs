//! The reconcilers behind automatic certificates: annotated Ingresses and Gateways, workloads marked by the admission
//! webhook, and the CA bundle ConfigMaps. They run with the Certificate reconcilers, under the same leader
//! Lease, and only create, update or delete Certificates and ConfigMaps: issuance stays with the
//! Certificate reconciler.

use super::ReconcileError;
use kube::Client;
use std::future::Future;

/// Which automatic certificates to run.
#[derive(Debug, Clone, Default)]
pub struct AutomationConfig {
    /// Certificates for Ingresses annotated `kacme.dev/issuer` / `kacme.dev/cluster-issuer`.
    pub ingresses: bool,
    /// Certificates for Gateways (and XListenerSets) annotated `kacme.dev/issuer` / `kacme.dev/cluster-issuer`,
    /// where the Gateway API is served.
    pub gateways: bool,
    /// One Certificate per workload whose Pods the admission webhook marked `kacme.dev/workload`, in the
    /// namespaces the webhook selects; off unless set.
    pub workloads: Option<super::workload::WorkloadConfig>,
    /// The CA bundle ConfigMaps, when set.
    pub ca_bundle: Option<super::ca_bundle::CaBundleConfig>,
}

/// Runs the enabled reconcilers until `shutdown` resolves.
pub async fn run_automation(
    client: Client,
    config: AutomationConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ReconcileError> {
    let shutdown = crate::shutdown::Shutdown::on(shutdown);
    let stopped = || shutdown.stopped();
    let ingresses = config.ingresses.then(|| super::ingress::run_ingress_controller(client.clone(), stopped()));
    let gateways = config.gateways.then(|| super::gateway::run_gateway_controllers(client.clone(), shutdown.clone()));
    let workloads =
        config.workloads.clone().map(|c| super::workload::run_workload_controller(client.clone(), c, stopped()));
    let ca_bundle =
        config.ca_bundle.clone().map(|c| super::ca_bundle::run_ca_bundle_controller(client.clone(), c, stopped()));
    let optional = |f: Option<_>| async move {
        if let Some(f) = f {
            f.await;
        }
    };
    tokio::join!(
        optional(ingresses.map(futures::FutureExt::boxed)),
        optional(gateways.map(futures::FutureExt::boxed)),
        optional(workloads.map(futures::FutureExt::boxed)),
        optional(ca_bundle.map(futures::FutureExt::boxed))
    );
    Ok(())
}
