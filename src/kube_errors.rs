//! The one place that classifies errors of the Kubernetes API by their status code.

/// Whether the object does not exist (404 NotFound).
pub fn is_not_found(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}

/// Whether the write lost to another (409: AlreadyExists on create, Conflict on a precondition or
/// resourceVersion mismatch).
pub fn is_conflict(error: &kube::Error) -> bool {
    status_code(error) == Some(409)
}

/// Whether the apiserver refused the request for want of rights (403 Forbidden).
pub fn is_forbidden(error: &kube::Error) -> bool {
    status_code(error) == Some(403)
}

/// The HTTP status code of an error the apiserver answered with, if it answered.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
