//! A panicked reconcile shows on the object: besides the `ReconcilePanicked` Event, the object's `Ready`
//! condition turns False with reason `ReconcilePanicked` and the panic's message, where `kubectl get` and
//! `kubectl wait` look. Best effort: a failing status write is logged, never escalated (the object is
//! retried with backoff anyway).
//!
//! The status is read afresh and written whole through server-side apply under kacme's field manager,
//! as the reconcilers write it, so that nothing kacme set before (an order in flight, notAfter) is lost;
//! nothing is written when the condition already says so.

use super::{Context, apply_status};
use crate::api::{Certificate, CertificateStatus, ClusterIssuer, ConditionType, Issuer, IssuerStatus, ReconcileReason};
use crate::desired::set_condition;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// An object whose `Ready` condition can show that its reconcile panicked.
pub(crate) trait ShowsReconcilePanic:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The status type.
    type Status: Serialize + Clone + Default + PartialEq + Send + Sync;
    /// The kind, as the status apply names it.
    const KIND: &'static str;
    /// The object's status, if it has one.
    fn status(&self) -> Option<&Self::Status>;
    /// The conditions of a status.
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// The API of objects of this kind in `namespace` (ignored for cluster-scoped kinds).
    fn api(client: Client, namespace: &str) -> Api<Self>;
    /// Called with the resourceVersion the status write produced.
    fn status_written(&self, _ctx: &Context, _resource_version: Option<String>) {}
}

impl ShowsReconcilePanic for Certificate {
    type Status = CertificateStatus;
    const KIND: &'static str = "Certificate";
    fn status(&self) -> Option<&CertificateStatus> {
        self.status.as_ref()
    }
    fn conditions_mut(status: &mut CertificateStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn status_written(&self, ctx: &Context, resource_version: Option<String>) {
        // The reconciler reads a Certificate afresh when the cache predates kacme's own last write.
        ctx.remember_write(self, resource_version);
    }
}

impl ShowsReconcilePanic for Issuer {
    type Status = IssuerStatus;
    const KIND: &'static str = "Issuer";
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn conditions_mut(status: &mut IssuerStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
}

impl ShowsReconcilePanic for ClusterIssuer {
    type Status = IssuerStatus;
    const KIND: &'static str = "ClusterIssuer";
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn conditions_mut(status: &mut IssuerStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
    fn api(client: Client, _namespace: &str) -> Api<Self> {
        Api::all(client)
    }
}

/// `status` with `Ready=False`, reason `ReconcilePanicked` and `message`; None when it already says so.
pub(crate) fn panicked_status<K: ShowsReconcilePanic>(
    status: Option<&K::Status>,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<K::Status> {
    let old = status.cloned().unwrap_or_default();
    let mut new = old.clone();
    let reason = ReconcileReason::Panicked.as_str();
    set_condition(K::conditions_mut(&mut new), ConditionType::Ready, false, reason, message, generation, now);
    (new != old).then_some(new)
}

/// Shows on `object` that its reconcile panicked with `message` (see the module docs); best effort.
pub(crate) async fn show_reconcile_panic<K: ShowsReconcilePanic>(ctx: &Context, object: &K, message: &str) {
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let api = K::api(ctx.client.clone(), &namespace);
    let fresh = match api.get_opt(&name).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(kind = K::KIND, %namespace, %name, %error, "reading the object to show its panic failed");
            return;
        }
    };
    let Some(status) = panicked_status::<K>(fresh.status(), message, fresh.meta().generation, Timestamp::now()) else {
        return;
    };
    match apply_status(&api, &name, K::KIND, &status).await {
        Ok(version) => fresh.status_written(ctx, version),
        Err(error) => {
            tracing::warn!(kind = K::KIND, %namespace, %name, %error, "showing a panicked reconcile in status failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::find_condition;

    fn t0() -> Timestamp {
        "2026-06-01T12:00:00Z".parse().expect("a time")
    }

    fn ready_certificate_status() -> CertificateStatus {
        let mut status = CertificateStatus { revision: Some(3), ..CertificateStatus::default() };
        set_condition(&mut status.conditions, ConditionType::Ready, true, "Ready", "up to date", Some(1), t0());
        status
    }

    #[test]
    fn a_panic_turns_ready_false_with_its_message_and_keeps_the_rest_of_the_status() {
        let message = "the reconcile panicked: index out of bounds (a bug: please report it)";
        let later = t0() + jiff::SignedDuration::from_secs(60);
        // (case, old status, expect a write)
        let cases = [("no status yet", None, true), ("a Ready certificate", Some(ready_certificate_status()), true)];
        for (case, old, write) in cases {
            let new = panicked_status::<Certificate>(old.as_ref(), message, Some(2), later);
            assert_eq!(new.is_some(), write, "{case}");
            let new = new.expect(case);
            let ready = find_condition(&new.conditions, ConditionType::Ready).expect(case);
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()),
                ("False", "ReconcilePanicked", message),
                "{case}"
            );
            assert_eq!((ready.observed_generation, ready.last_transition_time.0), (Some(2), later), "{case}");
            assert_eq!(new.revision, old.and_then(|o| o.revision), "{case}: the rest stays");
        }
    }

    #[test]
    fn a_status_that_already_shows_the_panic_is_not_written_again() {
        let message = "the reconcile panicked: boom (a bug: please report it)";
        let shown = panicked_status::<Issuer>(None, message, Some(1), t0()).expect("a first write");
        let later = t0() + jiff::SignedDuration::from_secs(60);
        assert_eq!(panicked_status::<Issuer>(Some(&shown), message, Some(1), later), None);
        let other = panicked_status::<Issuer>(Some(&shown), "another panic", Some(1), later).expect("a new message");
        let ready = find_condition(&other.conditions, ConditionType::Ready).expect("Ready");
        assert_eq!(ready.last_transition_time.0, t0(), "still False since the first panic");
    }
}
