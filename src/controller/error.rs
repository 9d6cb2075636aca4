//! Errors of the reconcilers, each variant named after the action that failed.

use crate::acme::AcmeError;

/// A reconcile failure. Messages never carry Secret contents.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl ReconcileError {
    /// A Kubernetes API failure while doing `action` (for example "reading Secret apps/web-tls").
    pub fn kube(action: impl Into<String>, source: kube::Error) -> ReconcileError {
        ReconcileError::Kube { action: action.into(), source }
    }

    /// Every value of [`ReconcileError::metric_label`], so that metrics can start each series at 0.
    pub const METRIC_LABELS: [&'static str; 4] = ["kube", "acme", "invalid_object", "finalizer"];

    /// The metric label of the error kind.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube",
            ReconcileError::Acme(_) => "acme",
            ReconcileError::MissingField(_) => "invalid_object",
            ReconcileError::Finalizer(_) => "finalizer",
        }
    }
}

/// Whether a Kubernetes API error is a 404.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Whether a Kubernetes API error is a 409 AlreadyExists/Conflict.
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}
