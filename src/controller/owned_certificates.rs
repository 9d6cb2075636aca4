//! Writing the Certificates that the Ingress and workload reconcilers own. Their status stays the Certificate
//! reconciler's.

use super::{AUTOMATION_FIELD_MANAGER, ReconcileError};
use crate::api::Certificate;
use crate::kube_errors::{is_conflict, is_not_found};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};

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
