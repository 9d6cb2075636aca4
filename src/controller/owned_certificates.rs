//! Writing the Certificates that the Ingress, Gateway and workload reconcilers own. Their status stays the Certificate
//! reconciler's.

use super::events::EventPublisher;
use super::sweep::{plan_sweep, run_sweep};
use super::{AUTOMATION_FIELD_MANAGER, ReconcileError};
use crate::api::Certificate;
use crate::issuer_policy::{PolicyRefusal, check_certificate_policy};
use crate::kube_errors::{is_conflict, is_not_found};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use std::sync::Arc;

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

/// The object that asks for a set of Certificates (an Ingress, a Gateway): where Events about them go and
/// how messages name it.
pub(crate) struct Requester<'a> {
    /// The client its Certificates are written with.
    pub client: &'a Client,
    /// The Event publisher.
    pub events: &'a EventPublisher,
    /// The object the Events are about.
    pub object: ObjectReference,
    /// Its kind, as messages name it (`Ingress`, `Gateway`).
    pub kind: &'a str,
}

impl Requester<'_> {
    /// Publishes an Event about the requester.
    pub async fn publish(&self, warning: bool, reason: &str, note: String) {
        self.events.publish_to(&self.object, "Certificates", warning, reason, note).await;
    }

    /// The Certificates of `desired` that their issuers' policies permit. A refused one gets an Event on the
    /// requester and is not created; one that exists already (in `owned`) stays as it is (its status says
    /// `NotPermitted`).
    pub async fn permitted(
        &self,
        desired: Vec<Certificate>,
        owned: &[Arc<Certificate>],
    ) -> Result<Vec<Certificate>, ReconcileError> {
        let mut permitted = Vec::with_capacity(desired.len());
        for certificate in desired {
            match check_certificate_policy(self.client, &certificate).await {
                Ok(()) => permitted.push(certificate),
                Err(PolicyRefusal::NotPermitted(message)) => {
                    let name = certificate.name_any();
                    self.publish(true, "NotPermitted", format!("no Certificate {name}: {message}")).await;
                    let key = (certificate.namespace(), name);
                    if let Some(existing) = owned.iter().find(|c| (c.namespace(), c.name_any()) == key) {
                        permitted.push(existing.as_ref().clone());
                    }
                }
                Err(unchecked @ PolicyRefusal::Unchecked(_)) => {
                    return Err(ReconcileError::PolicyUnchecked(unchecked.to_string()));
                }
            }
        }
        Ok(permitted)
    }

    /// Applies the `desired` Certificates and deletes the `owned` ones nothing desires any more. A desired
    /// Certificate whose name is taken by one not in `owned` is applied only if `is_ours` says the existing
    /// one belongs to the requester (never take over a Certificate that something else created).
    pub async fn sync(
        &self,
        desired: &[Certificate],
        owned: &[Arc<Certificate>],
        is_ours: impl Fn(&Certificate) -> bool,
    ) -> Result<(), ReconcileError> {
        let key = |c: &Certificate| (c.namespace().unwrap_or_default(), c.name_any());
        let is_ours = &is_ours;
        run_sweep(
            plan_sweep(desired, owned, same_request),
            |certificate| async move {
                let (namespace, name) = key(certificate);
                if !owned.iter().any(|c| key(c) == (namespace.clone(), name.clone())) {
                    let api: Api<Certificate> = Api::namespaced(self.client.clone(), &namespace);
                    let existing = api
                        .get_opt(&name)
                        .await
                        .map_err(|e| ReconcileError::kube(format!("reading Certificate {namespace}/{name}"), e))?;
                    if let Some(existing) = existing
                        && !is_ours(&existing)
                    {
                        let kind = self.kind;
                        tracing::warn!(certificate = %format!("{namespace}/{name}"), "a Certificate of that name exists and is not this {kind}'s; leaving it");
                        let message = format!(
                            "Certificate {namespace}/{name} exists and is not controlled by this {kind}; leaving it alone"
                        );
                        self.publish(true, "CertificateConflict", message).await;
                        return Ok(());
                    }
                }
                apply_certificate(self.client, certificate).await?;
                tracing::info!(certificate = %format!("{namespace}/{name}"), dns_names = ?certificate.spec.dns_names, "Certificate for {} applied", self.kind);
                Ok(())
            },
            |leftover| async move {
                let (namespace, name) = key(leftover);
                delete_certificate(self.client, &namespace, &name, leftover.uid()).await?;
                tracing::info!(certificate = %format!("{namespace}/{name}"), "Certificate the {} no longer asks for deleted", self.kind);
                let message = format!("Deleted Certificate {name}: the {} no longer asks for it", self.kind);
                self.publish(false, "CertificateDeleted", message).await;
                Ok(())
            },
        )
        .await
    }
}
