//! Hooks for metrics: every reconcile, timed, by controller and outcome; the caches, once synced.

use super::ReconcileError;
use crate::acme::AcmeObserver;
use crate::api::{Certificate, ClusterIssuer, Issuer};
use kube::runtime::reflector::Store;
use std::sync::Arc;
use std::time::Duration;

/// Which reconciler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControllerKind {
    Certificate,
    Issuer,
    ClusterIssuer,
}

impl ControllerKind {
    pub const ALL: [ControllerKind; 3] =
        [ControllerKind::Certificate, ControllerKind::Issuer, ControllerKind::ClusterIssuer];

    /// The metric label of the controller.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Certificate => "certificate",
            ControllerKind::Issuer => "issuer",
            ControllerKind::ClusterIssuer => "clusterissuer",
        }
    }
}

/// The operator's caches of the objects it reports on; read at scrape time, so that a deleted object's
/// series disappear with it.
#[derive(Clone)]
pub struct Caches {
    pub certificates: Store<Certificate>,
    pub issuers: Store<Issuer>,
    pub cluster_issuers: Store<ClusterIssuer>,
}

/// Receives calls as each reconcile starts and ends, and one when the caches are complete. Implementations
/// must be cheap: they run on the reconcile path.
pub trait ReconcileObserver: Send + Sync + 'static {
    /// A reconcile of `controller` started; [`ReconcileObserver::reconcile_finished`] or
    /// [`ReconcileObserver::reconcile_cancelled`] follows.
    fn reconcile_started(&self, _controller: ControllerKind) {}

    /// A reconcile of `controller` was dropped before it finished (the loop is shutting down).
    fn reconcile_cancelled(&self, _controller: ControllerKind) {}

    /// A reconcile of `controller` finished after `elapsed`, with `error` if it failed.
    fn reconcile_finished(&self, controller: ControllerKind, elapsed: Duration, error: Option<&ReconcileError>);

    /// The caches of Certificates, Issuers and ClusterIssuers hold everything in the cluster: the operator
    /// now acts on a complete picture.
    fn caches_synced(&self, caches: Caches);
}

/// Ignores everything.
#[derive(Debug, Default)]
pub struct NoReconcileObserver;

impl ReconcileObserver for NoReconcileObserver {
    fn reconcile_finished(&self, _: ControllerKind, _: Duration, _: Option<&ReconcileError>) {}
    fn caches_synced(&self, _: Caches) {}
}

/// Everything the operator reports to: ACME requests and reconciles.
#[derive(Clone)]
pub struct Observers {
    pub acme: Arc<dyn AcmeObserver>,
    pub reconcile: Arc<dyn ReconcileObserver>,
}
