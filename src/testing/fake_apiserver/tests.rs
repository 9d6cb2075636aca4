//! The fake apiserver, driven through `kube::Api` as the reconcilers drive the real one.

use crate::api::{Certificate, CertificateStatus, ClusterIssuer, Issuer};
use crate::testing::FakeApiserver;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

fn secret(name: &str, labels: &[(&str, &str)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
    secret.data = Some(BTreeMap::from([("key".into(), ByteString(b"value".to_vec()))]));
    secret
}

fn status_code(error: kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an apiserver Status, got {other}"),
    }
}

fn certificate() -> Certificate {
    let mut certificate = crate::desired::testing::certificate();
    certificate.metadata.uid = None;
    certificate.metadata.generation = None;
    certificate
}

#[tokio::test]
async fn a_created_object_reads_back_with_the_metadata_the_server_sets() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");

    let created = secrets.create(&PostParams::default(), &secret("web-tls", &[])).await.expect("created");
    let read = secrets.get("web-tls").await.expect("read back");

    assert_eq!(read, created);
    assert_eq!(read.metadata.namespace.as_deref(), Some("apps"));
    assert!(read.metadata.uid.is_some() && read.metadata.creation_timestamp.is_some());
    assert_eq!(read.metadata.generation, Some(1));
    assert_eq!(read.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(fake.get::<Secret>("apps", "web-tls"), Some(read));
}

#[tokio::test]
async fn creating_an_existing_name_conflicts_and_a_missing_name_reads_as_none() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    secrets.create(&PostParams::default(), &secret("web-tls", &[])).await.expect("created");

    let again = secrets.create(&PostParams::default(), &secret("web-tls", &[])).await.expect_err("exists");
    let missing = secrets.get("other").await.expect_err("absent");

    assert!(matches!(&again, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"), "{again}");
    assert!(matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"), "{missing}");
    assert_eq!(secrets.get_opt("other").await.expect("a 404 is no error for get_opt"), None);
}

#[tokio::test]
async fn every_write_takes_the_next_resource_version_of_one_counter() {
    let fake = FakeApiserver::new();
    let client = fake.client();
    let apps: Api<Secret> = Api::namespaced(client.clone(), "apps");
    let other: Api<Secret> = Api::namespaced(client, "other");

    let first = apps.create(&PostParams::default(), &secret("a", &[])).await.expect("created");
    let second = other.create(&PostParams::default(), &secret("a", &[])).await.expect("created");
    let patched = apps.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "dg=="}}))).await;

    let versions = [first.resource_version(), second.resource_version(), patched.expect("patched").resource_version()];
    assert_eq!(versions, [Some("1".into()), Some("2".into()), Some("3".into())]);
}

#[tokio::test]
async fn list_selects_by_label_equality_existence_and_inequality() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    for (name, labels) in [
        ("solver-a", &[("kacme.dev/solver", "true"), ("kacme.dev/certificate", "web")][..]),
        ("solver-b", &[("kacme.dev/solver", "true"), ("kacme.dev/certificate", "api")][..]),
        ("unrelated", &[("team", "web")][..]),
    ] {
        secrets.create(&PostParams::default(), &secret(name, labels)).await.expect("created");
    }
    let names = |list: kube::core::ObjectList<Secret>| list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>();
    let cases = [
        ("", vec!["solver-a", "solver-b", "unrelated"]),
        ("kacme.dev/solver", vec!["solver-a", "solver-b"]),
        ("kacme.dev/solver,kacme.dev/certificate=web", vec!["solver-a"]),
        ("kacme.dev/certificate!=web", vec!["solver-b", "unrelated"]),
        ("!kacme.dev/solver", vec!["unrelated"]),
    ];
    for (selector, expected) in cases {
        let list = secrets.list(&ListParams::default().labels(selector)).await.expect("listed");
        assert!(list.metadata.resource_version.is_some(), "{selector}: a list has a resourceVersion");
        assert_eq!(names(list), expected, "{selector}");
    }
}

#[tokio::test]
async fn a_list_across_namespaces_sees_every_namespace_and_metadata_only_reads_work() {
    let fake = FakeApiserver::new();
    let client = fake.client();
    for namespace in ["apps", "other"] {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        secrets.create(&PostParams::default(), &secret("web-tls", &[("a", "b")])).await.expect("created");
    }
    let all: Api<Secret> = Api::all(client.clone());
    let apps: Api<Secret> = Api::namespaced(client, "apps");

    let everywhere = all.list_metadata(&ListParams::default().labels("a=b")).await.expect("listed");
    let one = apps.get_metadata_opt("web-tls").await.expect("read");
    let label = json!({"metadata": {"labels": {"c": "d"}}});
    let patched = apps.patch_metadata("web-tls", &PatchParams::default(), &Patch::Merge(&label)).await;

    assert_eq!(everywhere.items.len(), 2);
    assert_eq!(one.map(|m| m.metadata.labels), Some(Some(BTreeMap::from([("a".into(), "b".into())]))));
    assert_eq!(patched.expect("patched").metadata.labels.map(|l| l.len()), Some(2));
}

#[tokio::test]
async fn cluster_scoped_and_namespaced_objects_live_apart() {
    let fake = FakeApiserver::new();
    let client = fake.client();
    let spec = json!({"acme": {"server": "https://ca.test/directory", "privateKeySecretRef": {"name": "account"}, "solvers": []}});
    let issuer: Issuer = serde_json::from_value(json!({
        "apiVersion": "kacme.dev/v1alpha1", "kind": "Issuer", "metadata": {"name": "ca"}, "spec": spec,
    }))
    .expect("an Issuer");
    let cluster_issuer: ClusterIssuer = serde_json::from_value(json!({
        "apiVersion": "kacme.dev/v1alpha1", "kind": "ClusterIssuer", "metadata": {"name": "ca"}, "spec": spec,
    }))
    .expect("a ClusterIssuer");

    Api::<Issuer>::namespaced(client.clone(), "apps").create(&PostParams::default(), &issuer).await.expect("created");
    let created = Api::<ClusterIssuer>::all(client.clone()).create(&PostParams::default(), &cluster_issuer).await;

    assert_eq!(created.expect("created").namespace(), None);
    assert!(fake.get::<Issuer>("apps", "ca").is_some());
    assert!(fake.get::<ClusterIssuer>("", "ca").is_some());
    assert_eq!(fake.count("POST", "/apis/kacme.dev/v1alpha1/clusterissuers"), 1);
    assert_eq!(fake.count("POST", "/apis/kacme.dev/v1alpha1/namespaces/apps/issuers"), 1);
}

#[tokio::test]
async fn apply_creates_then_merges_and_drops_what_the_manager_no_longer_sets() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let apply = |body: serde_json::Value| {
        let secrets = secrets.clone();
        async move { secrets.patch("web-tls", &PatchParams::apply("kacme").force(), &Patch::Apply(body)).await }
    };
    apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"labels": {"mine": "1", "old": "1"}}, "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    }))
    .await
    .expect("created by apply");
    // Another writer adds a label of its own.
    secrets
        .patch("web-tls", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"theirs": "1"}}})))
        .await
        .expect("merged");

    let applied = apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"labels": {"mine": "2"}}, "data": {"tls.crt": "bmV3", "tls.key": "a2V5"},
    }))
    .await
    .expect("applied");

    let labels: Vec<(&str, &str)> = applied.labels().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("mine", "2"), ("theirs", "1")], "the manager's old label goes, the other writer's stays");
    let data = applied.data.expect("data");
    assert_eq!(data["tls.crt"].0, b"new");
    assert_eq!(fake.requests().first().map(|r| r.status), Some(201), "an apply that creates answers 201");
    assert_eq!(fake.requests()[0].query, "force=true&fieldManager=kacme");
}

#[tokio::test]
async fn apply_over_another_managers_field_conflicts_unless_forced() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let body = |value: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"labels": {"owner": value}}});
    secrets.patch("s", &PatchParams::apply("first"), &Patch::Apply(body("first"))).await.expect("created");

    let refused = secrets.patch("s", &PatchParams::apply("second"), &Patch::Apply(body("second"))).await;
    let same_value = secrets.patch("s", &PatchParams::apply("second"), &Patch::Apply(body("first"))).await;
    let forced = secrets.patch("s", &PatchParams::apply("second").force(), &Patch::Apply(body("second"))).await;

    assert_eq!(status_code(refused.expect_err("a conflict")), 409);
    assert!(same_value.is_ok(), "agreeing on a value is no conflict");
    assert_eq!(forced.expect("forced").labels()["owner"], "second");
}

#[tokio::test]
async fn a_merge_patch_deletes_null_fields_and_replaces_lists() {
    let fake = FakeApiserver::new();
    let certificates: Api<Certificate> = Api::namespaced(fake.client(), "apps");
    let mut certificate = certificate();
    certificate.spec.dns_names = vec!["a.test".into(), "b.test".into()];
    certificate.metadata.annotations = Some(BTreeMap::from([("keep".into(), "1".into()), ("drop".into(), "1".into())]));
    certificates.create(&PostParams::default(), &certificate).await.expect("created");

    let patch = json!({"metadata": {"annotations": {"drop": null}}, "spec": {"dnsNames": ["c.test"]}});
    let patched = certificates.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await.expect("patched");

    assert_eq!(patched.annotations().keys().collect::<Vec<_>>(), ["keep"]);
    assert_eq!(patched.spec.dns_names, ["c.test"]);
}

#[tokio::test]
async fn a_json_patch_with_a_failing_test_changes_nothing() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let before = secrets.create(&PostParams::default(), &secret("s", &[("a", "1")])).await.expect("created");
    let patch = |expected: &str| -> json_patch::Patch {
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/labels/a", "value": expected},
            {"op": "replace", "path": "/metadata/labels/a", "value": "2"},
        ]))
        .expect("a JSON patch")
    };

    let refused = secrets.patch("s", &PatchParams::default(), &Patch::Json::<()>(patch("0"))).await;
    let unchanged = fake.get::<Secret>("apps", "s");
    let applied = secrets.patch("s", &PatchParams::default(), &Patch::Json::<()>(patch("1"))).await;

    assert_eq!(status_code(refused.expect_err("the test op fails")), 422);
    assert_eq!(unchanged, Some(before));
    assert_eq!(applied.expect("applied").labels()["a"], "2");
}

#[tokio::test]
async fn status_writes_change_only_status_and_spec_writes_bump_the_generation() {
    let fake = FakeApiserver::new();
    let certificates: Api<Certificate> = Api::namespaced(fake.client(), "apps");
    let mut with_status = certificate();
    with_status.status = Some(CertificateStatus { revision: Some(7), ..CertificateStatus::default() });
    let created = certificates.create(&PostParams::default(), &with_status).await.expect("created");
    assert_eq!(created.status, None, "a create drops the status");

    let status = json!({
        "apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"labels": {"ignored": "1"}}, "spec": {"secretName": "ignored"}, "status": {"revision": 1},
    });
    let after_status =
        certificates.patch_status("web", &PatchParams::apply("kacme").force(), &Patch::Apply(&status)).await;
    let after_status = after_status.expect("status applied");
    let labels_only = json!({"metadata": {"labels": {"team": "web"}}, "status": {"revision": 99}});
    let after_labels = certificates.patch("web", &PatchParams::default(), &Patch::Merge(&labels_only)).await;
    let after_labels = after_labels.expect("labels patched");
    let spec = json!({"spec": {"dnsNames": ["other.example.test"]}});
    let after_spec = certificates.patch("web", &PatchParams::default(), &Patch::Merge(&spec)).await.expect("patched");

    assert_eq!(after_status.status.as_ref().and_then(|s| s.revision), Some(1));
    assert_eq!(after_status.spec, created.spec, "a status write leaves the spec");
    assert!(after_status.labels().is_empty(), "a status write leaves the metadata");
    assert_eq!(after_status.metadata.generation, Some(1));
    assert_eq!(after_labels.metadata.generation, Some(1), "metadata is no generation change");
    assert_eq!(after_labels.status, after_status.status, "a main-resource write leaves the status");
    assert_eq!(after_spec.metadata.generation, Some(2));
}

#[tokio::test]
async fn a_status_apply_removes_the_status_fields_it_no_longer_sets() {
    let fake = FakeApiserver::new();
    let certificates: Api<Certificate> = Api::namespaced(fake.client(), "apps");
    certificates.create(&PostParams::default(), &certificate()).await.expect("created");
    let apply = |status: serde_json::Value| {
        let certificates = certificates.clone();
        let body = json!({"apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate", "status": status});
        async move { certificates.patch_status("web", &PatchParams::apply("kacme").force(), &Patch::Apply(body)).await }
    };

    apply(json!({"revision": 1, "order": {"url": "https://ca.test/order/1", "state": "pending"}})).await.expect("one");
    let after = apply(json!({"revision": 1})).await.expect("two");

    assert_eq!(serde_json::to_value(after.status).expect("JSON"), json!({"revision": 1}));
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let body = json!({"apiVersion": "v1", "kind": "Secret", "data": {"k": "dg=="}});
    let first = secrets.patch("s", &PatchParams::apply("kacme"), &Patch::Apply(&body)).await.expect("created");

    let second = secrets.patch("s", &PatchParams::apply("kacme"), &Patch::Apply(&body)).await.expect("applied");

    assert_eq!(second.resource_version(), first.resource_version());
}

#[tokio::test]
async fn a_replace_with_an_outdated_resource_version_conflicts() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let created = secrets.create(&PostParams::default(), &secret("s", &[])).await.expect("created");
    let mut changed = created.clone();
    changed.metadata.labels = Some(BTreeMap::from([("a".into(), "1".into())]));
    secrets.replace("s", &PostParams::default(), &changed).await.expect("replaced at the current version");

    let stale = secrets.replace("s", &PostParams::default(), &created).await;

    assert_eq!(status_code(stale.expect_err("outdated")), 409);
}

#[tokio::test]
async fn delete_without_finalizers_removes_at_once() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    secrets.create(&PostParams::default(), &secret("s", &[])).await.expect("created");

    let deleted = secrets.delete("s", &DeleteParams::background()).await.expect("deleted");
    let again = secrets.delete("s", &DeleteParams::default()).await;

    assert!(deleted.is_right(), "the apiserver answers a finished deletion with a Status");
    assert_eq!(fake.get::<Secret>("apps", "s"), None);
    assert_eq!(status_code(again.expect_err("gone")), 404);
}

#[tokio::test]
async fn delete_with_finalizers_waits_for_the_last_finalizer() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    let mut held = secret("s", &[]);
    held.metadata.finalizers = Some(vec!["a".into(), "b".into()]);
    secrets.create(&PostParams::default(), &held).await.expect("created");

    let marked = secrets.delete("s", &DeleteParams::default()).await.expect("deletion started");
    let marked = marked.left().expect("a deletion that waits answers with the object");
    let one_left = json!({"metadata": {"finalizers": ["b"]}});
    secrets.patch("s", &PatchParams::default(), &Patch::Merge(&one_left)).await.expect("one finalizer removed");
    let new_finalizer = json!({"metadata": {"finalizers": ["b", "c"]}});
    let refused = secrets.patch("s", &PatchParams::default(), &Patch::Merge(&new_finalizer)).await;
    let still_there = fake.get::<Secret>("apps", "s");
    secrets
        .patch("s", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("last removed");

    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(status_code(refused.expect_err("no new finalizer while deleting")), 422);
    assert!(still_there.is_some_and(|s| s.metadata.deletion_timestamp.is_some()));
    assert_eq!(fake.get::<Secret>("apps", "s"), None);
}

#[tokio::test]
async fn delete_preconditions_on_the_uid_are_checked() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    secrets.create(&PostParams::default(), &secret("s", &[])).await.expect("created");
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: Some("another".into()), resource_version: None }),
        ..DeleteParams::default()
    };

    let refused = secrets.delete("s", &params).await;

    assert_eq!(status_code(refused.expect_err("precondition failed")), 409);
    assert!(fake.get::<Secret>("apps", "s").is_some());
}

#[tokio::test]
async fn delete_collection_removes_what_the_selector_selects() {
    let fake = FakeApiserver::new();
    let pods: Api<Pod> = Api::namespaced(fake.client(), "apps");
    for (name, label) in [("solver-1", "kacme.dev/solver"), ("solver-2", "kacme.dev/solver"), ("app", "app")] {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = Some(BTreeMap::from([(label.into(), "true".into())]));
        pods.create(&PostParams::default(), &pod).await.expect("created");
    }

    let solvers = ListParams::default().labels("kacme.dev/solver");
    let deleted = pods.delete_collection(&DeleteParams::background(), &solvers).await;

    assert_eq!(deleted.expect("deleted").left().map(|list| list.items.len()), Some(2));
    assert_eq!(fake.list::<Pod>().iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["app"]);
}

#[tokio::test]
async fn the_finalizer_helper_adds_its_finalizer_then_cleans_up_and_removes_it() {
    let fake = FakeApiserver::new();
    let certificates: Api<Certificate> = Api::namespaced(fake.client(), "apps");
    certificates.create(&PostParams::default(), &certificate()).await.expect("created");
    let pass = |events: Arc<std::sync::Mutex<Vec<&'static str>>>| {
        let certificates = certificates.clone();
        let current = fake.get::<Certificate>("apps", "web").expect("the Certificate exists");
        async move {
            finalizer(&certificates, "kacme.dev/cleanup", Arc::new(current), |event| async move {
                let seen = match event {
                    FinalizerEvent::Apply(_) => "apply",
                    FinalizerEvent::Cleanup(_) => "cleanup",
                };
                events.lock().expect("not poisoned").push(seen);
                Ok::<_, std::convert::Infallible>(Action::await_change())
            })
            .await
        }
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));

    pass(seen.clone()).await.expect("the finalizer is added");
    let finalizers = fake.get::<Certificate>("apps", "web").map(|c| c.finalizers().to_vec());
    pass(seen.clone()).await.expect("apply runs");
    certificates.delete("web", &DeleteParams::default()).await.expect("deletion started");
    pass(seen.clone()).await.expect("cleanup runs and the finalizer goes");

    assert_eq!(finalizers, Some(vec!["kacme.dev/cleanup".to_owned()]));
    assert_eq!(*seen.lock().expect("not poisoned"), ["apply", "cleanup"]);
    assert!(fake.get::<Certificate>("apps", "web").is_none());
    assert_eq!(fake.count("PATCH", "/certificates/web"), 2, "one JSON patch to add, one to remove");
}

#[tokio::test]
async fn an_injected_failure_answers_its_status_the_given_number_of_times() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    secrets.create(&PostParams::default(), &secret("s", &[])).await.expect("created");
    fake.fail_next("PATCH", "/secrets/s", 500, 2);
    let patch = || async {
        let label = json!({"metadata": {"labels": {"a": "1"}}});
        secrets.patch("s", &PatchParams::default(), &Patch::Merge(&label)).await
    };

    let first = patch().await;
    let second = patch().await;
    let unchanged = fake.get::<Secret>("apps", "s");
    let third = patch().await;

    assert_eq!(status_code(first.expect_err("injected")), 500);
    assert_eq!(status_code(second.expect_err("injected")), 500);
    assert!(unchanged.is_some_and(|s| s.metadata.labels.is_none()), "a failed request writes nothing");
    assert!(third.is_ok());
    let statuses: Vec<u16> = fake.writes().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 500, 500, 200]);
}

#[tokio::test]
async fn an_injected_conflict_reads_as_a_conflict() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    fake.fail_next("POST", "/secrets", 409, 1);

    let refused = secrets.create(&PostParams::default(), &secret("s", &[])).await;

    assert!(matches!(refused, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict"));
    assert_eq!(fake.get::<Secret>("apps", "s"), None);
}

#[tokio::test]
async fn a_recorder_event_lands_in_events_and_a_repeat_counts() {
    let fake = FakeApiserver::new();
    let certificate = fake.put(&crate::desired::testing::certificate());
    let recorder = Recorder::new(fake.client(), Reporter { controller: "kacme".into(), instance: None });
    let event = Event {
        type_: EventType::Warning,
        reason: "OrderFailed".into(),
        note: Some("the CA said no".into()),
        action: "Issuance".into(),
        secondary: None,
    };

    recorder.publish(&event, &certificate.object_ref(&())).await.expect("published");
    recorder.publish(&event, &certificate.object_ref(&())).await.expect("published again");

    let events = fake.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].reason.as_str(), events[0].note.as_str(), events[0].type_.as_str(), events[0].regarding.as_str()),
        ("OrderFailed", "the CA said no", "Warning", "web")
    );
    assert_eq!(events[0].count, 2);
    assert_eq!(fake.count("POST", "/apis/events.k8s.io/v1/namespaces/apps/events"), 1);
}

#[tokio::test]
async fn put_seeds_an_object_with_its_status() {
    let fake = FakeApiserver::new();
    let mut seeded = certificate();
    seeded.status = Some(CertificateStatus { revision: Some(3), ..CertificateStatus::default() });

    let stored = fake.put(&seeded);
    let read = Api::<Certificate>::namespaced(fake.client(), "apps").get("web").await.expect("read");

    assert_eq!(read.metadata, stored.metadata);
    assert_eq!(read.status.and_then(|s| s.revision), Some(3));
    assert_eq!(read.metadata.generation, Some(1));
    assert!(fake.requests().iter().all(|r| r.method == "GET"), "put sends no request");
}

#[tokio::test]
async fn a_watch_is_refused() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");

    let watch = secrets.watch(&kube::api::WatchParams::default(), "0").await;

    assert_eq!(status_code(watch.err().expect("no watch")), 405);
}

#[tokio::test]
async fn the_request_log_keeps_method_path_query_and_status_until_cleared() {
    let fake = FakeApiserver::new();
    let secrets: Api<Secret> = Api::namespaced(fake.client(), "apps");
    secrets.get_opt("s").await.expect("a 404 reads as None");
    secrets.list(&ListParams::default().labels("a=b")).await.expect("listed");

    let logged: Vec<String> = fake.requests().iter().map(ToString::to_string).collect();
    fake.clear_requests();

    assert_eq!(
        logged,
        [
            "GET /api/v1/namespaces/apps/secrets/s -> 404",
            "GET /api/v1/namespaces/apps/secrets?labelSelector=a=b -> 200"
        ]
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn remove_takes_an_object_away_at_once_as_another_actor_would() {
    let fake = FakeApiserver::new();
    let mut held = secret("s", &[]);
    held.metadata.namespace = Some("apps".into());
    held.metadata.finalizers = Some(vec!["someone.else/finalizer".into()]);
    fake.put(&held);

    assert!(fake.remove::<Secret>("apps", "s"));
    assert!(!fake.remove::<Secret>("apps", "s"));
    assert_eq!(Api::<Secret>::namespaced(fake.client(), "apps").get_opt("s").await.expect("read"), None);
}
