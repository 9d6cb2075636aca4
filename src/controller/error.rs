//! Errors of the reconcilers, each variant named after the action that failed.

use crate::acme::AcmeError;

/// A reconcile failure. Messages never carry Secret contents.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Kubernetes API request failed.
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// An ACME request failed outside an order (the account of an issuer).
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// The object lacks a field every object of its kind has.
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// An object could not be turned into JSON for a request.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A Secret that a create found in the way was gone when kacme read it: the next pass tries again.
    #[error("Secret {0} was in the way of a create and then gone; trying again")]
    SecretVanished(String),
    /// Adding or removing the finalizer failed.
    #[error("the finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
    /// Solver objects of a deleted Certificate could not all be removed.
    #[error("removing solver objects: {0}")]
    RemoveSolverObjects(String),
    /// An issuer's policy could not be checked (its issuer or namespace could not be read).
    #[error("{0}")]
    PolicyUnchecked(String),
    /// A watch cache a reconcile reads did not fill in time (its list keeps failing, or kacme lacks the right).
    #[error("the cache of {0} is not filled yet")]
    CacheNotReady(String),
    /// A revocation the issuer's policy asks for could not be done yet.
    #[error("{0}")]
    Revocation(String),
    /// The reconcile panicked (a bug): the panic was caught and costs this object only.
    #[error("the reconcile panicked: {0} (a bug: please report it)")]
    Panicked(String),
    /// Several writes of one round failed (each is tried).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ReconcileError>),
}

impl ReconcileError {
    /// A Kubernetes API failure while doing `action` (for example "reading Secret apps/web-tls").
    pub fn kube(action: impl Into<String>, source: kube::Error) -> ReconcileError {
        ReconcileError::Kube { action: action.into(), source }
    }

    /// The error of a reconcile run through kube-runtime's `finalizer()` helper: the reconcile's own error
    /// as it was, anything else as a finalizer error.
    pub fn from_finalizer(error: kube::runtime::finalizer::Error<ReconcileError>) -> ReconcileError {
        use kube::runtime::finalizer::Error;
        match error {
            Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
            other => ReconcileError::Finalizer(Box::new(other)),
        }
    }

    /// Nothing, one error, or all of them.
    pub fn all(mut errors: Vec<ReconcileError>) -> Result<(), ReconcileError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ReconcileError::Several(errors)),
        }
    }

    /// Every value of [`ReconcileError::metric_label`], so that metrics can start each series at 0.
    pub const METRIC_LABELS: [&'static str; 5] = ["kube", "acme", "invalid_object", "finalizer", "panic"];

    /// The metric label of the error kind.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. }
            | ReconcileError::PolicyUnchecked(_)
            | ReconcileError::SecretVanished(_)
            | ReconcileError::CacheNotReady(_) => "kube",
            ReconcileError::Acme(_) | ReconcileError::Revocation(_) => "acme",
            ReconcileError::MissingField(_) | ReconcileError::Serialize { .. } => "invalid_object",
            ReconcileError::Finalizer(_) | ReconcileError::RemoveSolverObjects(_) => "finalizer",
            ReconcileError::Panicked(_) => "panic",
            ReconcileError::Several(errors) => errors.first().map_or("kube", ReconcileError::metric_label),
        }
    }
}
