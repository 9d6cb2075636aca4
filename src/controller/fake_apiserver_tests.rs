//! Whole reconcile passes of the Certificate reconciler against the in-memory fake apiserver (no ACME
//! server: these passes stop before the first ACME request).

use super::{Context, ControllerConfig, NoReconcileObserver, Observers, Stores, certificate::reconcile_certificate};
use crate::api::Certificate;
use crate::testing::FakeApiserver;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A Context whose client talks to `fake`, with empty solver caches and no ACME server.
fn context(fake: &FakeApiserver) -> Arc<Context> {
    let observers = Observers { acme: Arc::new(crate::acme::NoObserver), reconcile: Arc::new(NoReconcileObserver) };
    let config = ControllerConfig::new("kacme-system", "kacme:test");
    Arc::new(Context::new(fake.client(), config, observers, Stores::empty()))
}

/// One reconcile pass over the Certificate as the fake holds it now.
async fn pass(fake: &FakeApiserver, ctx: &Arc<Context>) {
    let certificate = fake.get::<Certificate>("apps", "web").expect("the Certificate exists");
    reconcile_certificate(Arc::new(certificate), ctx.clone()).await.expect("the pass succeeds");
}

fn ready(certificate: &Certificate) -> Option<(String, String)> {
    let conditions = &certificate.status.as_ref()?.conditions;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn a_certificate_whose_issuer_is_missing_gets_its_finalizer_then_says_so_in_status() {
    let fake = FakeApiserver::new();
    fake.put(&crate::desired::testing::certificate());
    let ctx = context(&fake);

    pass(&fake, &ctx).await;
    let finalizers = fake.get::<Certificate>("apps", "web").map(|c| c.metadata.finalizers);
    fake.clear_requests();
    pass(&fake, &ctx).await;

    assert_eq!(finalizers, Some(Some(vec![super::FINALIZER.to_owned()])));
    let certificate = fake.get::<Certificate>("apps", "web").expect("still there");
    assert_eq!(ready(&certificate), Some(("False".into(), "IssuerNotFound".into())));
    let writes: Vec<String> = fake.writes().iter().map(ToString::to_string).collect();
    assert_eq!(
        writes,
        ["PATCH /apis/kacme.dev/v1alpha1/namespaces/apps/certificates/web/status?force=true&fieldManager=kacme -> 200"]
    );
}

#[tokio::test]
async fn a_secret_of_someone_else_is_left_alone_and_reported_once() {
    let fake = FakeApiserver::new();
    let mut certificate = crate::desired::testing::certificate();
    certificate.metadata.finalizers = Some(vec![super::FINALIZER.to_owned()]);
    fake.put(&certificate);
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("web-tls".into());
    foreign.metadata.namespace = Some("apps".into());
    foreign.metadata.labels = Some(BTreeMap::from([("owner".into(), "someone".into())]));
    let foreign = fake.put(&foreign);
    let ctx = context(&fake);

    pass(&fake, &ctx).await;
    pass(&fake, &ctx).await;

    let certificate = fake.get::<Certificate>("apps", "web").expect("still there");
    assert_eq!(ready(&certificate), Some(("False".into(), "SecretNotOwned".into())));
    assert_eq!(fake.get::<Secret>("apps", "web-tls"), Some(foreign), "the Secret is untouched");
    let reasons: Vec<String> = fake.events().into_iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["SecretNotOwned"]);
    assert_eq!(fake.count("PATCH", "/status"), 1, "the second pass has nothing new to write");
}

#[tokio::test]
async fn a_deleted_certificate_loses_its_solver_objects_and_then_its_finalizer() {
    let fake = FakeApiserver::new();
    let mut certificate = crate::desired::testing::certificate();
    certificate.metadata.finalizers = Some(vec![super::FINALIZER.to_owned()]);
    fake.put(&certificate);
    let labels = BTreeMap::from([
        (crate::api::names::LABEL_SOLVER.to_owned(), "true".to_owned()),
        (crate::api::names::LABEL_CERTIFICATE.to_owned(), crate::desired::certificate_label_value("web")),
    ]);
    let mut pod = Pod::default();
    pod.metadata.name = Some("web-solver".into());
    pod.metadata.namespace = Some("apps".into());
    pod.metadata.labels = Some(labels.clone());
    fake.put(&pod);
    fake.put(&Ingress { metadata: pod.metadata.clone(), ..Ingress::default() });
    let ctx = context(&fake);
    Api::<Certificate>::namespaced(fake.client(), "apps")
        .delete("web", &DeleteParams::default())
        .await
        .expect("deletion starts");

    pass(&fake, &ctx).await;

    assert!(fake.list::<Pod>().is_empty() && fake.list::<Ingress>().is_empty());
    assert!(fake.get::<Certificate>("apps", "web").is_none(), "the finalizer went, and the Certificate with it");
}
