//! Whole reconcile passes of the Certificate reconciler against the in-memory apiserver and CA: every
//! branch of the issuance path, crash windows included, in milliseconds.

use super::FINALIZER;
use crate::acme::CaTrust;
use crate::acme::fake::{Endpoint, FakeAcme, FakeChallenge, Fault, Validation};
use crate::api::names::{
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, ANNOTATION_ISSUER_NAME, ANNOTATION_RENEW_REQUESTED_AT,
    CA_CRT, LABEL_MANAGED_BY, MANAGED_BY, TLS_KEY,
};
use crate::api::{AcmeSolver, Certificate, Http01Solver, IssuerKind, PrivateKeySpec, RotationPolicy, SolverSelector};
use crate::controller::issuer_slots::Turn;
use crate::controller::testing::{CERTIFICATE, IssuanceHarness, NAMESPACE, SECRET, ready_issuer_at};
use crate::pki::{parse_ca_bundle, verify_chain};
use crate::testing::FakeApiserver;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// More passes than any issuance here needs: a loop that does not converge fails instead of spinning.
const MAX_PASSES: usize = 8;

fn owned(pairs: &[&str]) -> Vec<String> {
    pairs.iter().map(|s| s.to_string()).collect()
}

fn condition(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.into(), reason.into()))
}

/// A Secret `apps/web-tls` that kacme did not make.
fn foreign_secret() -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(SECRET.into());
    secret.metadata.namespace = Some(NAMESPACE.into());
    secret.metadata.labels = Some(BTreeMap::from([("owner".into(), "someone".into())]));
    secret.data = Some(BTreeMap::from([("password".into(), k8s_openapi::ByteString(b"hunter2".to_vec()))]));
    secret
}

/// How many times Events with this reason were published (a repeated Event counts each time).
fn event_count(harness: &IssuanceHarness, reason: &str) -> u64 {
    harness.apiserver.events().iter().filter(|e| e.reason == reason).map(|e| e.count).sum()
}

/// Whether a request wrote to the Certificate's Secret.
fn wrote_certificate_secret(apiserver: &FakeApiserver) -> bool {
    apiserver.writes().iter().any(|w| w.path.ends_with(&format!("/secrets/{SECRET}")))
}

// --- First passes, without a CA (moved from the fake apiserver's first tests) ---------------------------

#[tokio::test]
async fn a_certificate_whose_issuer_is_missing_gets_its_finalizer_then_says_so_in_status() {
    let mut harness = IssuanceHarness::start().await;
    harness.apiserver.put(&crate::desired::testing::certificate());

    harness.pass().await;
    let finalizers = harness.certificate().metadata.finalizers;
    harness.apiserver.clear_requests();
    harness.sync_caches();
    harness.pass().await;

    assert_eq!(finalizers, Some(vec![FINALIZER.to_owned()]));
    assert_eq!(harness.condition_reason("Ready"), condition("False", "IssuerNotFound"));
    let writes: Vec<String> = harness.apiserver.writes().iter().map(ToString::to_string).collect();
    assert_eq!(
        writes,
        ["PATCH /apis/kacme.dev/v1alpha1/namespaces/apps/certificates/web/status?force=true&fieldManager=kacme -> 200"]
    );
    assert_eq!(harness.acme_requests(), 0, "no issuer, no CA to ask");
}

#[tokio::test]
async fn a_secret_of_someone_else_is_left_alone_and_reported_once() {
    let harness = IssuanceHarness::ready_to_issue().await;
    let foreign = harness.apiserver.put(&foreign_secret());

    harness.pass().await;
    harness.pass().await;

    assert_eq!(harness.condition_reason("Ready"), condition("False", "SecretNotOwned"));
    assert_eq!(harness.secret(SECRET), Some(foreign), "the Secret is untouched");
    assert_eq!(harness.event_reasons(), ["SecretNotOwned"]);
    assert_eq!(harness.apiserver.count("PATCH", "/status"), 1, "the second pass has nothing new to write");
    assert_eq!(harness.acme_requests(), 0, "nothing to order for a Secret kacme may not write");
}

#[tokio::test]
async fn a_deleted_certificate_loses_its_solver_objects_and_then_its_finalizer() {
    let harness = IssuanceHarness::ready_to_issue().await;
    let labels = BTreeMap::from([
        (crate::api::names::LABEL_SOLVER.to_owned(), "true".to_owned()),
        (crate::api::names::LABEL_CERTIFICATE.to_owned(), crate::desired::certificate_label_value("web")),
    ]);
    let mut pod = Pod::default();
    pod.metadata.name = Some("web-solver".into());
    pod.metadata.namespace = Some(NAMESPACE.into());
    pod.metadata.labels = Some(labels);
    harness.apiserver.put(&pod);
    harness.apiserver.put(&Ingress { metadata: pod.metadata.clone(), ..Ingress::default() });
    Api::<Certificate>::namespaced(harness.apiserver.client(), NAMESPACE)
        .delete("web", &DeleteParams::default())
        .await
        .expect("deletion starts");

    harness.pass().await;

    assert!(harness.apiserver.list::<Pod>().is_empty() && harness.apiserver.list::<Ingress>().is_empty());
    assert!(
        harness.apiserver.get::<Certificate>(NAMESPACE, "web").is_none(),
        "the finalizer went, and the Certificate"
    );
}

// --- The issuance path ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_certificate_becomes_ready_in_a_few_passes_once_its_solver_objects_serve_the_challenge() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());

    let passes = harness.run_until_ready(MAX_PASSES).await;

    let requests = harness.apiserver.requests();
    let writes = harness.apiserver.writes().len();
    println!(
        "a new Certificate is Ready after {passes} passes, {} apiserver requests ({writes} writes), {} ACME requests",
        requests.len(),
        harness.acme_requests()
    );
    for request in &requests {
        println!("  {request}");
    }
    assert!(passes <= 3, "{passes} passes: create the order, the solver objects, then validate and finalize");
    // The budget as measured (3 Events and 3 status writes included); lower is welcome, higher is a regression.
    assert!(requests.len() <= 25, "{} apiserver requests", requests.len());
    assert!(writes <= 19, "{writes} apiserver writes");
    assert!(harness.acme_requests() <= 15, "{} ACME requests", harness.acme_requests());
    let (chain, key) = harness.stored_certificate();
    assert!(crate::pki::key_matches_certificate(&key, &chain.leaf), "tls.key is the key of tls.crt");
    assert_eq!(chain.leaf.dns_names, ["web.example.test"]);
    let ca = parse_ca_bundle(harness.ca.ca_pem().as_bytes()).expect("the fake's CA certificate");
    verify_chain(&chain, &ca, Timestamp::now()).expect("the chain verifies to the fake's issuing CA");
    let secret = harness.secret(SECRET).expect("the Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca_crt = parse_ca_bundle(&secret.data.as_ref().and_then(|d| d.get(CA_CRT)).expect("ca.crt").0)
        .expect("ca.crt holds PEM certificates");
    assert_eq!(ca_crt, ca, "ca.crt carries the issuing CA, and not the caBundle's TLS root of the ACME endpoint");
    verify_chain(&chain, &ca_crt, Timestamp::now()).expect("the chain verifies to ca.crt, as a workload checks it");
    assert_eq!(harness.ca.certificates_issued(), std::slice::from_ref(&chain.leaf.serial));
    assert_eq!(harness.ca.orders_created(), 1);
    let status = harness.certificate().status.expect("a status");
    assert_eq!(status.revision, Some(1));
    assert_eq!(status.not_after.map(|t| t.0), Some(chain.leaf.not_after));
    let renewal = status.renewal_time.expect("a renewal time").0;
    assert!(chain.leaf.not_before < renewal && renewal < chain.leaf.not_after, "renewal within the lifetime");
    assert_eq!(
        (status.order, status.next_private_key_secret_name, status.failed_issuance_attempts),
        (None, None, None)
    );
    assert_eq!(harness.condition_reason("Ready"), condition("True", "Ready"));
    assert_eq!(harness.event_reasons(), ["OrderCreated", "Issued"]);
    assert_eq!(harness.solver_objects(), Vec::<String>::new(), "the solver objects are gone");
    assert!(harness.next_key_secret().is_none(), "the next-key Secret is gone");
}

#[tokio::test]
async fn an_up_to_date_certificate_is_left_alone_without_a_request_to_the_apiserver_or_the_ca() {
    // The process that issued it remembers its own writes; a restarted one knows only its caches.
    for restart in [false, true] {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        harness.run_until_ready(MAX_PASSES).await;
        if restart {
            harness.restart();
        }
        harness.sync_caches();
        harness.apiserver.clear_requests();
        let acme_requests = harness.acme_requests();

        harness.pass().await;

        assert_eq!(harness.apiserver.requests(), [], "restarted: {restart}: everything is read from the caches");
        assert_eq!(harness.acme_requests(), acme_requests, "restarted: {restart}");
        assert_eq!(harness.condition_reason("Ready"), condition("True", "Ready"), "restarted: {restart}");
    }
}

#[tokio::test]
async fn a_pass_over_a_cached_copy_older_than_kacmes_own_write_waits_for_the_watch_without_a_request() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let before_the_order = harness.certificate();
    harness.sync_caches();
    harness.pass().await;
    assert!(harness.certificate().status.and_then(|s| s.order).is_some(), "the first pass wrote its order");
    harness.sync_caches();
    harness.apiserver.clear_requests();
    let acme_requests = harness.acme_requests();

    // The watch has not delivered the status write yet: the cache still holds the Certificate from before.
    let written = harness.certificate();
    harness.ctx.remember_write(&written, written.resource_version());
    let action = super::reconcile_certificate(Arc::new(before_the_order), harness.ctx.clone()).await.expect("a pass");

    assert_eq!(harness.apiserver.requests(), [], "no read: the watch event of the write starts the next pass");
    assert_eq!(harness.acme_requests(), acme_requests, "and nothing at the CA");
    assert_ne!(action, Action::await_change(), "a look again in case the event is lost");
    // Once the cache shows the write, the order goes on.
    harness.run_until_ready(MAX_PASSES).await;
}

#[tokio::test]
async fn a_pass_that_waits_for_its_own_solver_asks_the_ca_nothing() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.sync_caches();
    harness.pass().await; // the order
    harness.sync_caches();
    harness.pass().await; // the solver objects
    assert!(!harness.solver_objects().is_empty(), "solver objects exist");
    let acme_requests = harness.acme_requests();

    // The solver Pod is not ready yet (the kubelet has not started it), pass after pass.
    for _ in 0..3 {
        harness.sync_caches();
        harness.pass().await;
    }

    assert_eq!(harness.acme_requests(), acme_requests, "nothing changes at the CA while kacme's own solver starts");
    let order = harness.certificate().status.and_then(|s| s.order).expect("the order is in flight");
    let message = order.authorizations[0].message.clone().unwrap_or_default();
    assert!(message.contains("to be ready"), "the wait is shown: {message}");
    harness.run_until_ready(MAX_PASSES).await;
}

#[tokio::test]
async fn a_certificate_past_its_renewal_time_is_renewed_while_it_stays_ready() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    // Issued 1 minute back-dated and valid for 15 s: its renewal time (2/3 of the lifetime) has passed.
    harness.ca.set_certificate_validity(Duration::from_secs(15));
    harness.run_until_ready(MAX_PASSES).await;
    let (first, first_key) = harness.stored_certificate();
    harness.ca.set_certificate_validity(Duration::from_secs(24 * 3600));

    harness.sync_caches();
    harness.pass().await;
    let while_renewing = (harness.condition_reason("Ready"), harness.condition_reason("Issuing"));
    harness.run_until_ready(MAX_PASSES).await;

    assert_eq!(while_renewing, (condition("True", "Ready"), condition("True", "Expiring")));
    let (second, second_key) = harness.stored_certificate();
    assert_ne!(first.leaf.serial, second.leaf.serial);
    assert!(second.leaf.not_after > first.leaf.not_after);
    assert_ne!(first_key.pem(), second_key.pem(), "the key rotates by default");
    assert!(harness.stored_key_matches_certificate());
    assert_eq!(harness.certificate().status.and_then(|s| s.revision), Some(2));
    assert_eq!(harness.ca.certificates_issued().len(), 2);
    assert_eq!(event_count(&harness, "Issued"), 2);
}

#[tokio::test]
async fn a_change_of_names_mid_order_abandons_the_order_and_issues_for_the_new_names() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_passes(2).await;
    assert!(!harness.solver_objects().is_empty(), "the order is at its challenge");

    harness.edit_certificate_spec(|spec| spec.dns_names = vec!["app.example.test".into()]).await;
    harness.sync_caches();
    harness.pass().await;

    assert_eq!(harness.condition_reason("Issuing"), condition("False", "SpecChanged"));
    assert_eq!(harness.certificate().status.and_then(|s| s.order), None, "the order is abandoned");
    assert_eq!(harness.solver_objects(), Vec::<String>::new(), "with its solver objects");
    harness.run_until_ready(MAX_PASSES).await;
    let (chain, _) = harness.stored_certificate();
    assert_eq!(chain.leaf.dns_names, ["app.example.test"]);
    assert_eq!(harness.ca.orders_created(), 2);
    assert_eq!(harness.ca.certificates_issued().len(), 1, "nothing was issued for the old names");
    assert!(harness.stored_key_matches_certificate());
}

#[tokio::test]
async fn a_change_of_issuer_mid_order_abandons_the_order_and_issues_from_the_new_issuer() {
    // (case, whether the new issuer is at another CA)
    for (case, another_ca) in [("another CA", true), ("another account at the same CA", false)] {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        let other_ca = FakeAcme::start().await;
        harness.apiserver.put(&ready_issuer_at("other", if another_ca { &other_ca } else { &harness.ca }));
        harness.run_passes(2).await;
        assert!(!harness.solver_objects().is_empty(), "{case}: the order is at its challenge");

        harness.edit_certificate_spec(|spec| spec.issuer_ref.name = "other".into()).await;
        harness.sync_caches();
        harness.pass().await;

        assert_eq!(harness.condition_reason("Issuing"), condition("False", "SpecChanged"), "{case}");
        harness.run_until_ready(MAX_PASSES).await;
        let secret = harness.secret(SECRET).expect("the Secret");
        let issuer = secret.metadata.annotations.and_then(|a| a.get(ANNOTATION_ISSUER_NAME).cloned());
        assert_eq!(issuer.as_deref(), Some("other"), "{case}");
        let (chain, _) = harness.stored_certificate();
        let issued = if another_ca { other_ca.certificates_issued() } else { harness.ca.certificates_issued() };
        assert_eq!(issued, [chain.leaf.serial], "{case}: issued by the new issuer's CA");
        assert_eq!(harness.certificate().status.and_then(|s| s.failed_issuance_attempts), None, "{case}: no failure");
        assert!(!harness.event_reasons().contains(&"Failed".to_string()), "{case}: {:?}", harness.event_reasons());
    }
}

#[tokio::test]
async fn an_issuer_that_is_missing_or_not_ready_is_reported_without_asking_the_ca() {
    let not_ready = |harness: &IssuanceHarness| {
        let mut issuer = harness.ready_issuer();
        let condition = &mut issuer.status.as_mut().expect("a status").conditions[0];
        condition.status = "False".into();
        condition.reason = "ErrRegisterAcmeAccount".into();
        Some(issuer)
    };
    let missing = |_: &IssuanceHarness| None;
    // (case, the Issuer, the kind the Certificate refers to, the expected reason)
    type IssuerOf = fn(&IssuanceHarness) -> Option<crate::api::Issuer>;
    let cases: [(&str, IssuerOf, IssuerKind, &str); 3] = [
        ("no Issuer of that name", missing, IssuerKind::Issuer, "IssuerNotFound"),
        ("an Issuer that is not Ready", not_ready, IssuerKind::Issuer, "IssuerNotReady"),
        (
            "no ClusterIssuer of that name (an Issuer of that name does not count)",
            |h| Some(h.ready_issuer()),
            IssuerKind::ClusterIssuer,
            "IssuerNotFound",
        ),
    ];
    for (case, issuer, kind, reason) in cases {
        let mut harness = IssuanceHarness::start().await;
        if let Some(issuer) = issuer(&harness) {
            harness.apiserver.put(&issuer);
        }
        let mut certificate = crate::desired::testing::certificate();
        certificate.spec.issuer_ref.kind = kind;
        harness.seed_certificate(certificate);
        harness.sync_caches();

        harness.pass().await;

        assert_eq!(harness.condition_reason("Ready"), condition("False", reason), "{case}");
        assert_eq!(harness.condition_reason("Issuing"), condition("False", reason), "{case}");
        assert_eq!(harness.acme_requests(), 0, "{case}: no ACME request");
        assert!(harness.next_key_secret().is_none(), "{case}: no key stored");
    }
}

#[tokio::test]
async fn a_name_that_no_solver_matches_fails_the_attempt_without_an_order_at_the_ca() {
    let mut harness = IssuanceHarness::start().await;
    let mut issuer = harness.ready_issuer();
    issuer.spec.acme.solvers = vec![AcmeSolver {
        selector: Some(SolverSelector { dns_names: vec!["other.example.test".into()], ..SolverSelector::default() }),
        http01: Http01Solver::default(),
    }];
    harness.apiserver.put(&issuer);
    harness.seed_certificate(crate::desired::testing::certificate());
    harness.sync_caches();

    harness.pass().await;

    let (status, reason, message) = harness.condition("Ready").expect("a Ready condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Failed"));
    assert!(message.contains("no solver of Issuer apps/ca applies to web.example.test"), "{message}");
    assert_eq!(harness.condition_reason("Issuing"), condition("False", "Failed"));
    assert_eq!(harness.certificate().status.and_then(|s| s.failed_issuance_attempts), Some(1));
    assert_eq!(harness.ca.orders_created(), 0);
    assert_eq!(harness.ca.requests(Endpoint::NewOrder), 0);
    assert!(harness.next_key_secret().is_none());
    assert_eq!(harness.event_reasons(), ["Failed"]);
}

#[tokio::test]
async fn a_challenge_the_ca_refuses_fails_the_attempt_with_its_words_then_backs_off() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let refusal = "Connection refused to web.example.test:80";
    harness.ca.set_validation(Validation::Invalid(refusal.into()));

    let mut passes = 0;
    while harness.condition_reason("Issuing") != condition("False", "Failed") {
        assert!(passes < MAX_PASSES, "no failure after {passes} passes: {:#?}", harness.certificate().status);
        harness.run_passes(1).await;
        passes += 1;
    }

    let (_, _, message) = harness.condition("Ready").expect("a Ready condition");
    assert!(message.contains(refusal), "the CA's words are shown: {message}");
    assert_eq!(harness.condition_reason("Ready"), condition("False", "Failed"));
    let status = harness.certificate().status.expect("a status");
    assert_eq!(status.failed_issuance_attempts, Some(1));
    assert!(status.last_failure_time.is_some());
    assert_eq!((status.order, status.next_private_key_secret_name), (None, None));
    assert_eq!(harness.solver_objects(), Vec::<String>::new(), "the solver objects are removed");
    assert!(harness.next_key_secret().is_none(), "the next-key Secret is removed");
    let reasons = harness.event_reasons();
    assert!(reasons.ends_with(&owned(&["ValidationFailed", "Failed"])), "{reasons:?}");

    // Backing off: the next pass asks nobody anything and writes nothing.
    harness.sync_caches();
    harness.apiserver.clear_requests();
    let acme_requests = harness.acme_requests();
    harness.pass().await;
    assert_eq!(harness.apiserver.writes(), []);
    assert_eq!(harness.acme_requests(), acme_requests);

    // Once the backoff has elapsed, the next attempt issues and clears the failure.
    harness.ca.set_validation(Validation::Valid);
    harness.let_the_backoff_elapse().await;
    harness.run_until_ready(MAX_PASSES).await;
    let status = harness.certificate().status.expect("a status");
    assert_eq!((status.failed_issuance_attempts, status.last_failure_time), (None, None));
    assert_eq!(harness.ca.orders_created(), 2);
}

#[tokio::test]
async fn a_server_error_on_finalize_is_retried_on_the_same_order() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.fail_next(Endpoint::Finalize, Fault::problem(500, "serverInternal", "the signer is down"), 1);

    let mut passes = 0;
    while !harness.condition("Issuing").is_some_and(|(_, _, message)| message.starts_with("Retrying")) {
        assert!(passes < MAX_PASSES, "no retry after {passes} passes: {:#?}", harness.certificate().status);
        harness.run_passes(1).await;
        passes += 1;
    }
    let (status, _, message) = harness.condition("Issuing").expect("Issuing");
    let order_while_retrying = harness.certificate().status.and_then(|s| s.order).map(|o| o.url);
    harness.run_until_ready(MAX_PASSES).await;

    assert_eq!(status, "True");
    assert!(message.contains("the signer is down"), "{message}");
    assert!(order_while_retrying.is_some(), "the order stays in status");
    assert_eq!(harness.ca.orders_created(), 1);
    assert_eq!(harness.ca.requests(Endpoint::Finalize), 2);
    assert_eq!(harness.ca.certificates_issued().len(), 1);
    assert_eq!(harness.certificate().status.and_then(|s| s.failed_issuance_attempts), None);
    assert!(harness.stored_key_matches_certificate());
}

#[tokio::test]
async fn a_nonce_the_ca_keeps_rejecting_is_retried_at_once_on_the_same_order() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    // instant-acme itself tries a request three times when the nonce is rejected: reject all three.
    harness.ca.fail_next(
        Endpoint::Finalize,
        Fault::problem(400, "badNonce", "JWS has an invalid anti-replay nonce"),
        3,
    );

    let mut actions = Vec::new();
    while !harness.is_ready_and_idle() {
        assert!(actions.len() < MAX_PASSES, "not Ready after {actions:?}");
        harness.sync_caches();
        actions.push(harness.pass().await);
        harness.mark_solver_pods_ready();
    }

    assert!(actions.contains(&Action::requeue(Duration::from_millis(10))), "retried at once: {actions:?}");
    assert_eq!(harness.ca.requests(Endpoint::Finalize), 4);
    assert_eq!(harness.ca.orders_created(), 1);
    assert_eq!(harness.certificate().status.and_then(|s| s.failed_issuance_attempts), None, "not a failure");
    assert!(harness.stored_key_matches_certificate());
}

#[tokio::test]
async fn an_order_the_ca_forgot_fails_the_attempt_and_the_next_attempt_orders_again() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_passes(2).await;
    assert!(!harness.solver_objects().is_empty(), "the order is at its challenge");

    harness.ca.forget_orders();
    harness.run_passes(1).await;

    assert_eq!(harness.condition_reason("Issuing"), condition("False", "Failed"));
    let (_, _, message) = harness.condition("Issuing").expect("Issuing");
    assert!(message.contains("order"), "the CA's words: {message}");
    assert_eq!(harness.solver_objects(), Vec::<String>::new());
    assert!(harness.next_key_secret().is_none());
    harness.let_the_backoff_elapse().await;
    harness.run_until_ready(MAX_PASSES).await;
    assert_eq!(harness.ca.orders_created(), 2);
    assert_eq!(harness.ca.certificates_issued().len(), 1);
    assert!(harness.stored_key_matches_certificate());
}

#[tokio::test]
async fn an_account_the_ca_forgot_is_registered_again_with_the_stored_key() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    // The first pass registers the account and stores its new key; the second caches the account.
    harness.run_passes(2).await;
    let account_key = harness.secret(crate::controller::testing::ACCOUNT_KEY_SECRET).expect("the account key");

    harness.ca.forget_accounts();
    harness.run_passes(1).await;

    let (_, _, message) = harness.condition("Issuing").expect("Issuing");
    assert!(message.contains("accountDoesNotExist"), "the CA's words: {message}");
    harness.let_the_backoff_elapse().await;
    harness.run_until_ready(MAX_PASSES).await;
    assert_eq!(harness.ca.accounts_created(), 2, "registered again");
    let same_key = harness.secret(crate::controller::testing::ACCOUNT_KEY_SECRET).map(|s| s.data);
    assert_eq!(same_key, Some(account_key.data), "with the stored key");
    assert_eq!(harness.ca.certificates_issued().len(), 1);
    assert!(harness.stored_key_matches_certificate());
}

#[tokio::test]
async fn a_foreign_secret_that_appears_right_before_the_store_step_is_never_written() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let apiserver = harness.apiserver.clone();
    let planted: Arc<Mutex<Option<Secret>>> = Arc::default();
    let planted_by_ca = planted.clone();
    // The Secret appears while the CA validates: after the pass read the Secret, before it stores.
    harness.ca.set_validation(Validation::Check(Arc::new(move |_: &FakeChallenge| {
        *planted_by_ca.lock().expect("the planted Secret") = Some(apiserver.put(&foreign_secret()));
        Ok(())
    })));

    let mut passes = 0;
    while harness.condition_reason("Issuing") != condition("False", "Failed") {
        assert!(passes < MAX_PASSES, "no failure after {passes} passes: {:#?}", harness.certificate().status);
        harness.run_passes(1).await;
        passes += 1;
    }
    let (_, _, message) = harness.condition("Issuing").expect("Issuing");
    harness.run_passes(1).await;

    assert!(message.contains("was not created by kacme"), "{message}");
    assert_eq!(harness.condition_reason("Ready"), condition("False", "SecretNotOwned"));
    let planted = planted.lock().expect("the planted Secret").clone();
    assert!(planted.is_some(), "the CA validated");
    assert_eq!(harness.secret(SECRET), planted, "the foreign Secret is untouched");
    assert!(!wrote_certificate_secret(&harness.apiserver), "no write to {SECRET}: {:?}", harness.apiserver.writes());
    assert!(harness.next_key_secret().is_none());
    assert_eq!(harness.ca.certificates_issued().len(), 1);
}

#[tokio::test]
async fn the_key_is_reused_on_renewal_only_when_the_rotation_policy_says_never() {
    // (rotation policy, whether the renewed certificate keeps the key)
    let cases = [(RotationPolicy::Never, true), (RotationPolicy::Always, false)];
    for (policy, kept) in cases {
        let mut harness = IssuanceHarness::start().await;
        harness.apiserver.put(&harness.ready_issuer());
        let mut certificate = crate::desired::testing::certificate();
        certificate.spec.private_key = Some(PrivateKeySpec { rotation_policy: Some(policy), ..Default::default() });
        harness.seed_certificate(certificate);
        harness.run_until_ready(MAX_PASSES).await;
        let (first, first_key) = harness.stored_certificate();

        harness
            .edit_certificate_metadata(|meta| {
                meta.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_RENEW_REQUESTED_AT.into(), "2026-12-01T00:00:00Z".into());
            })
            .await;
        harness.run_until_ready(MAX_PASSES).await;

        let (second, second_key) = harness.stored_certificate();
        assert_ne!(first.leaf.serial, second.leaf.serial, "{policy:?}: renewed");
        assert_eq!(first_key.pem() == second_key.pem(), kept, "{policy:?}");
        assert!(harness.stored_key_matches_certificate(), "{policy:?}");
        assert_eq!(harness.certificate().status.and_then(|s| s.revision), Some(2), "{policy:?}");
    }
}

#[tokio::test]
async fn a_certificate_deleted_mid_order_loses_its_solver_objects_and_its_next_key() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_passes(2).await;
    assert!(!harness.solver_objects().is_empty(), "the order is at its challenge");
    assert!(harness.next_key_secret().is_some(), "the order's key is stored");

    Api::<Certificate>::namespaced(harness.apiserver.client(), NAMESPACE)
        .delete("web", &DeleteParams::default())
        .await
        .expect("deletion starts");
    harness.sync_caches();
    harness.pass().await;

    assert_eq!(harness.solver_objects(), Vec::<String>::new());
    assert!(harness.next_key_secret().is_none());
    assert!(harness.apiserver.get::<Certificate>(NAMESPACE, "web").is_none(), "the finalizer went");
    assert!(harness.secret(SECRET).is_none(), "nothing was stored");
}

// --- Crash windows -------------------------------------------------------------------------------------

/// When a crash is injected.
#[derive(Clone, Copy, Debug)]
enum CrashIn {
    /// The first pass, which creates the order.
    OrderPass,
    /// The pass in which the CA validates, which finalizes and stores.
    StorePass,
}

/// The status write at the end of every pass.
const STATUS_WRITE: (&str, &str) = ("PATCH", "/certificates/web/status");

/// Makes the requests `failing` fail once each (from now on): the process died before them.
fn die_before(apiserver: &FakeApiserver, failing: &[(&str, &str)]) {
    for (method, path) in failing {
        apiserver.fail_next(method, path, 500, 1);
    }
}

/// Registers the Issuer's ACME account and stores its key, as the first pass would before its order.
async fn create_account(harness: &IssuanceHarness) {
    let issuer = crate::controller::accounts::IssuerInfo::from_issuer(&harness.ready_issuer()).expect("an ACME issuer");
    crate::controller::accounts::ensure_account(&harness.ctx, &issuer, &issuer.own_account())
        .await
        .expect("the account registers");
}

#[tokio::test]
async fn a_crash_at_any_write_of_the_issuance_path_loses_no_key_and_issues_once() {
    // (case, the pass that dies, the writes it never makes (the first one failing is where it dies), how
    // many orders the issuance may take after a restart, and in the same process)
    let cases: [(&str, CrashIn, &[(&str, &str)], [usize; 2]); 4] = [
        (
            "after the order is created, before its key is stored",
            CrashIn::OrderPass,
            // The key is created with a POST to the collection; the account's key exists by then.
            &[("POST", "/namespaces/apps/secrets"), STATUS_WRITE],
            [2, 2],
        ),
        // The same process carries on from the status it could not write, which names the order.
        ("after the key is stored, before status names the order", CrashIn::OrderPass, &[STATUS_WRITE], [2, 1]),
        (
            "after the Secret is written, before the next key is deleted",
            CrashIn::StorePass,
            &[("DELETE", "/secrets/web-next-key"), STATUS_WRITE],
            [1, 1],
        ),
        ("after the next key is deleted, before status says it is issued", CrashIn::StorePass, &[STATUS_WRITE], [1, 1]),
    ];
    for (case, pass, failing, orders) in cases {
        // A restart loses the orders in memory, the account cache and the record of kacme's own writes;
        // without one, the same process carries on after the failed pass.
        for restart in [true, false] {
            let case = format!("{case} ({})", if restart { "restarted" } else { "same process" });
            let mut harness = IssuanceHarness::ready_to_issue().await;
            match pass {
                CrashIn::OrderPass => {
                    create_account(&harness).await;
                    die_before(&harness.apiserver, failing)
                }
                CrashIn::StorePass => {
                    let apiserver = harness.apiserver.clone();
                    let failing: Vec<(String, String)> =
                        failing.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
                    harness.ca.set_validation(Validation::Check(Arc::new(move |_: &FakeChallenge| {
                        let failing: Vec<(&str, &str)> =
                            failing.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
                        die_before(&apiserver, &failing);
                        Ok(())
                    })));
                }
            }

            let mut passes = 0;
            loop {
                assert!(passes < MAX_PASSES, "{case}: no pass failed");
                harness.sync_caches();
                let status_before = harness.certificate().status;
                passes += 1;
                let failed = harness.try_pass().await.is_err();
                harness.mark_solver_pods_ready();
                if failed {
                    assert_eq!(harness.certificate().status, status_before, "{case}: the dead pass wrote no status");
                    break;
                }
            }
            if matches!(pass, CrashIn::StorePass) {
                assert!(harness.secret(SECRET).is_some(), "{case}: the Secret was written before the crash");
            }
            if restart {
                harness.restart();
            }
            harness.run_until_ready(MAX_PASSES).await;

            assert!(harness.stored_key_matches_certificate(), "{case}: tls.key is the key of tls.crt");
            let (chain, _) = harness.stored_certificate();
            assert_eq!(harness.ca.certificates_issued(), [chain.leaf.serial], "{case}: issued once, and stored");
            assert_eq!(harness.ca.orders_created(), orders[usize::from(!restart)], "{case}: orders");
            assert_eq!(harness.certificate().status.and_then(|s| s.revision), Some(1), "{case}: revision");
            assert_eq!(harness.event_reasons().last().map(String::as_str), Some("Issued"), "{case}");
            assert!(harness.next_key_secret().is_none(), "{case}: the next-key Secret is gone");
            assert_eq!(harness.solver_objects(), Vec::<String>::new(), "{case}: the solver objects are gone");
        }
    }
}

#[tokio::test]
async fn a_leftover_solver_pod_whose_deletion_was_cut_short_is_deleted_again_one_in_its_grace_period_is_not() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_until_ready(MAX_PASSES).await;
    let labels = BTreeMap::from([
        (crate::api::names::LABEL_SOLVER.to_owned(), "true".to_owned()),
        (crate::api::names::LABEL_CERTIFICATE.to_owned(), crate::desired::certificate_label_value("web")),
    ]);
    // (case, deletionTimestamp relative to now, whether the pass deletes it)
    let cases = [
        ("a DELETE cut short by a killed operator (overdue)", Some(-60), true),
        ("a Pod in its grace period", Some(30), false),
        ("a leftover not being deleted", None, true),
    ];
    for (case, deleted_at, deleted_again) in cases {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-leftover".into());
        pod.metadata.namespace = Some(NAMESPACE.into());
        pod.metadata.labels = Some(labels.clone());
        pod.metadata.deletion_timestamp = deleted_at.map(|seconds: i64| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds),
            )
        });
        harness.apiserver.put(&pod);
        harness.sync_caches();
        harness.apiserver.clear_requests();

        harness.pass().await;

        let gone = harness.apiserver.get::<Pod>(NAMESPACE, "web-leftover").is_none();
        assert_eq!(gone, deleted_again, "{case}");
        assert_eq!(
            harness.apiserver.count("DELETE", "/pods") > 0,
            deleted_again,
            "{case}: {:?}",
            harness.apiserver.requests()
        );
        harness.apiserver.remove::<Pod>(NAMESPACE, "web-leftover");
    }
}

// --- Issuer slots -----------------------------------------------------------------------------------------

/// The slots of the Issuer `apps/ca`, as the reconciler names them.
const CA_SLOTS: &str = "Issuer/apps/ca";

/// How Certificate `apps/<name>` waits for a slot.
fn slot_waiter(name: &str) -> ObjectRef<Certificate> {
    ObjectRef::new(name).within(NAMESPACE)
}

/// The Certificates woken so far, in order.
fn woken(wakes: &mut (impl futures::Stream<Item = ObjectRef<Certificate>> + Unpin)) -> Vec<String> {
    let mut woken = Vec::new();
    while let Some(Some(certificate)) = wakes.next().now_or_never() {
        woken.push(certificate.name);
    }
    woken
}

/// The Certificate fixture as `apps/<name>` for `<name>.example.test`, from Issuer `issuer`.
fn another_certificate(name: &str, issuer: &str) -> Certificate {
    let mut certificate = crate::desired::testing::certificate();
    certificate.metadata.name = Some(name.into());
    certificate.metadata.uid = Some(format!("uid-of-{name}"));
    certificate.spec.secret_name = format!("{name}-tls");
    certificate.spec.dns_names = vec![format!("{name}.example.test")];
    certificate.spec.issuer_ref = crate::api::IssuerRef { name: issuer.into(), kind: IssuerKind::Issuer };
    certificate
}

/// One pass over Certificate `apps/<name>` as the fake apiserver holds it now.
async fn pass_of(harness: &IssuanceHarness, name: &str) -> Action {
    let certificate: Certificate = harness.apiserver.get(NAMESPACE, name).expect("the Certificate exists");
    let action =
        super::reconcile_certificate(Arc::new(certificate), harness.ctx.clone()).await.expect("the pass succeeds");
    // The watch delivers what the pass wrote.
    let written: Certificate = harness.apiserver.get(NAMESPACE, name).expect("the Certificate exists");
    harness.ctx.certificate_delivered(&written);
    action
}

#[tokio::test]
async fn a_certificate_whose_issuer_has_no_free_slot_waits_without_a_write_or_a_request_and_is_woken_when_one_frees() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let mut wakes = Box::pin(harness.ctx.issuer_slots.take_wakes());
    harness.sync_caches();
    // Other Certificates of the same issuer hold every slot of it.
    let slots = &harness.ctx.issuer_slots;
    let mut held: Vec<_> = (0..slots.per_issuer())
        .map(|n| slots.try_take(CA_SLOTS, &slot_waiter(&format!("other-{n}")), Turn::Starting))
        .collect();
    assert!(held.iter().all(Option::is_some), "the slots can be taken");
    let acme_before = harness.acme_requests();

    harness.apiserver.clear_requests();
    let first = harness.pass().await;
    harness.sync_caches();
    let again = harness.pass().await;

    for action in [first, again] {
        assert_eq!(action, Action::requeue(super::ISSUER_BUSY_FALLBACK), "woken, not polled; a long fallback");
    }
    assert!(harness.apiserver.writes().is_empty(), "waiting writes nothing: {:?}", harness.apiserver.writes());
    assert_eq!(harness.apiserver.requests(), [], "nor reads: its Secret is read once it has a slot");
    assert_eq!(harness.acme_requests(), acme_before, "no request to the CA");
    assert_eq!(woken(&mut wakes), Vec::<String>::new(), "not woken while every slot is held");
    held.pop();
    assert_eq!(woken(&mut wakes), [CERTIFICATE], "woken the moment a slot frees");
    assert!(
        harness.ctx.issuer_slots.try_take(CA_SLOTS, &slot_waiter("newcomer"), Turn::Starting).is_none(),
        "the slot is kept for the woken Certificate"
    );
    harness.ctx.issuer_slots.leave(&slot_waiter("newcomer"));
    harness.run_until_ready(MAX_PASSES).await;
    assert!(harness.is_ready_and_idle(), "issued with the slot offered to it");
}

#[tokio::test]
async fn certificates_waiting_for_slots_are_woken_in_the_order_they_came_and_a_deleted_one_loses_its_place() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let mut wakes = Box::pin(harness.ctx.issuer_slots.take_wakes());
    for name in ["first", "second", "third"] {
        harness.seed_certificate(another_certificate(name, crate::controller::testing::ISSUER));
    }
    harness.sync_caches();
    let slots = &harness.ctx.issuer_slots;
    let mut held: Vec<_> = (0..slots.per_issuer())
        .map(|n| slots.try_take(CA_SLOTS, &slot_waiter(&format!("other-{n}")), Turn::Starting))
        .collect();
    for name in ["first", CERTIFICATE, "second", "third"] {
        assert_eq!(pass_of(&harness, name).await, Action::requeue(super::ISSUER_BUSY_FALLBACK), "{name} waits");
    }
    // web is deleted while it waits: its pass removes the finalizer and its place in the queue.
    Api::<Certificate>::namespaced(harness.apiserver.client(), NAMESPACE)
        .delete(CERTIFICATE, &DeleteParams::default())
        .await
        .expect("deletion starts");
    harness.pass().await;
    assert!(harness.apiserver.get::<Certificate>(NAMESPACE, CERTIFICATE).is_none(), "web is gone");

    held.pop();
    assert_eq!(woken(&mut wakes), ["first"]);
    let first = harness.ctx.issuer_slots.try_take(CA_SLOTS, &slot_waiter("first"), Turn::Starting);
    assert!(first.is_some(), "first takes the slot offered to it");
    held.pop();
    assert_eq!(woken(&mut wakes), ["second"], "the deleted one is skipped");
    // second's pass finds nothing to do with the CA after all (say, its issuer went away): the slot passes on.
    harness.apiserver.remove::<crate::api::Issuer>(NAMESPACE, crate::controller::testing::ISSUER);
    harness.sync_caches();
    assert_eq!(pass_of(&harness, "second").await, Action::requeue(super::ISSUER_WAIT), "it waits for its issuer");
    assert_eq!(woken(&mut wakes), ["third"], "the slot offered to second went to the next in line");
    assert_eq!(harness.ctx.issuer_slots.waiting(), 1, "only third is left, with its offer");
}

#[tokio::test]
async fn while_a_slow_cas_certificates_hold_all_its_slots_a_fast_issuers_certificate_is_issued() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let mut wakes = Box::pin(harness.ctx.issuer_slots.take_wakes());
    // A second Issuer whose CA never answers a new order: every pass that gets that far hangs, holding a slot.
    let slow_ca = FakeAcme::start().await;
    slow_ca.fail_next(Endpoint::NewOrder, Fault::Hang, 1000);
    harness.apiserver.put(&ready_issuer_at("slow", &slow_ca));
    let per_issuer = harness.ctx.issuer_slots.per_issuer();
    let slow: Vec<String> = (0..=per_issuer).map(|n| format!("slow-{n}")).collect();
    for name in &slow {
        harness.seed_certificate(another_certificate(name, "slow"));
    }
    harness.sync_caches();
    let hanging: Vec<_> = slow[..per_issuer]
        .iter()
        .map(|name| {
            let (apiserver, ctx, name) = (harness.apiserver.clone(), harness.ctx.clone(), name.clone());
            tokio::spawn(async move {
                for _ in 0..MAX_PASSES {
                    let certificate: Certificate = apiserver.get(NAMESPACE, &name).expect("the Certificate exists");
                    let _ = super::reconcile_certificate(Arc::new(certificate), ctx.clone()).await;
                    if let Some(written) = apiserver.get::<Certificate>(NAMESPACE, &name) {
                        ctx.certificate_delivered(&written);
                    }
                }
            })
        })
        .collect();
    let all_hang = async {
        while slow_ca.requests(Endpoint::NewOrder) < per_issuer as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all_hang).await.expect("every slot of the slow CA is held");

    // One more Certificate of the slow CA: no slot, so no request and no worker held.
    let last = &slow[per_issuer];
    let action = tokio::time::timeout(Duration::from_secs(5), pass_of(&harness, last)).await.expect("it does not wait");
    assert_eq!(action, Action::requeue(super::ISSUER_BUSY_FALLBACK));
    assert_eq!(slow_ca.requests(Endpoint::NewOrder), per_issuer as u64, "nothing more asked of the slow CA");

    // The fast issuer's Certificate is issued meanwhile.
    harness.run_until_ready(MAX_PASSES).await;
    assert!(harness.is_ready_and_idle());

    // A slow pass ends (here: cancelled): its slot goes to the one waiting.
    assert_eq!(woken(&mut wakes), Vec::<String>::new());
    hanging[0].abort();
    let next = tokio::time::timeout(Duration::from_secs(5), wakes.next()).await.expect("a wake").expect("the stream");
    assert_eq!(next.name, *last, "the waiting Certificate of the slow issuer is woken");
    for task in &hanging {
        task.abort();
    }
}

#[tokio::test]
async fn a_ca_that_rejects_every_nonce_is_retried_ever_more_slowly_and_costs_no_key() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.fail_next(
        Endpoint::NewOrder,
        Fault::problem(400, "badNonce", "JWS has an invalid anti-replay nonce"),
        1000,
    );

    let mut waits = Vec::new();
    for _ in 0..6 {
        harness.sync_caches();
        waits.push(harness.pass().await);
    }

    let expected: Vec<Action> = [10, 20, 40, 80, 160, 320].map(|ms| Action::requeue(Duration::from_millis(ms))).into();
    assert_eq!(waits, expected, "no hot loop: each retry in a row waits twice as long");
    assert_eq!(harness.ca.orders_created(), 0);
    assert!(harness.next_key_secret().is_none(), "no key is stored (nor generated) for an order that does not exist");
}

/// Moves the time every challenge of the order in flight was first presented `seconds` back (the harness
/// cannot move the clock), as if kacme had presented them then (a status apply of its own field manager),
/// and restarts the operator so that the order is resumed from status.
async fn present_earlier(harness: &mut IssuanceHarness, seconds: i64) {
    let mut status = harness.certificate().status.expect("a status");
    let order = status.order.as_mut().expect("an order in flight");
    for authorization in &mut order.authorizations {
        let presented_at = authorization.presented_at.as_mut().expect("a presented challenge");
        presented_at.0 -= jiff::SignedDuration::from_secs(seconds);
    }
    let api: Api<Certificate> = Api::namespaced(harness.apiserver.client(), NAMESPACE);
    crate::controller::apply_status(&api, CERTIFICATE, "Certificate", &status)
        .await
        .expect("moving the presentation back");
    harness.restart();
}

#[tokio::test]
async fn a_solver_pod_that_never_becomes_ready_is_awaited_ever_more_slowly_then_fails_the_attempt_by_its_deadline() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus};
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    // The order, then the solver objects; nobody plays the kubelet.
    let mut actions = Vec::new();
    for _ in 0..3 {
        harness.sync_caches();
        actions.push(harness.pass().await);
    }
    let pods = harness.apiserver.list::<Pod>();
    let [pod] = pods.as_slice() else { panic!("one solver Pod: {pods:?}") };
    let pod_name = pod.metadata.name.clone().expect("a name");
    assert_eq!(actions.last(), Some(&Action::requeue(Duration::from_secs(1))), "a solver just presented");
    // The kubelet cannot pull the image.
    let mut pulling = pod.clone();
    pulling.status = Some(PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "solver".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("Back-off pulling image \"kacme:test\"".into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    harness.apiserver.put(&pulling);

    // A minute later, the next look comes 30 s later, and the wait says why.
    present_earlier(&mut harness, 60).await;
    harness.sync_caches();
    assert_eq!(harness.pass().await, Action::requeue(Duration::from_secs(30)));
    let (status, _, message) = harness.condition("Issuing").expect("Issuing");
    assert_eq!(status, "True");
    assert!(message.contains(&pod_name) && message.contains("ImagePullBackOff"), "{message}");
    assert_eq!(harness.solver_objects().len(), 3, "still waiting: {:?}", harness.solver_objects());

    // Past the deadline (5 minutes by default), the attempt fails.
    present_earlier(&mut harness, 300).await;
    harness.sync_caches();
    let action = harness.pass().await;
    let (status, reason, message) = harness.condition("Ready").expect("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SolverNotReady"));
    let expected = "the solver for web.example.test was still not serving the challenge 36"; // 360 s, or 361 s
    assert!(message.contains(expected) && message.contains("(the deadline is 300s)"), "{message}");
    assert!(message.contains(&format!("solver Pod {pod_name}")), "names the Pod: {message}");
    assert!(message.contains("ImagePullBackOff: Back-off pulling image"), "says why: {message}");
    assert_eq!(harness.condition_reason("Issuing"), condition("False", "SolverNotReady"));
    assert_eq!(event_count(&harness, "SolverNotReady"), 1);
    let status = harness.certificate().status.expect("a status");
    assert_eq!(status.failed_issuance_attempts, Some(1));
    assert_eq!((status.order, status.next_private_key_secret_name), (None, None), "the order is abandoned");
    assert_eq!(harness.solver_objects(), Vec::<String>::new(), "the solver objects are removed");
    assert!(harness.next_key_secret().is_none(), "the next-key Secret is removed");
    assert_eq!(action, Action::requeue(harness.config.backoff.initial), "the usual failure backoff");

    // Backing off: the next pass asks nobody anything and writes nothing.
    harness.sync_caches();
    harness.apiserver.clear_requests();
    let acme_requests = harness.acme_requests();
    harness.pass().await;
    assert_eq!(harness.apiserver.writes(), []);
    assert_eq!(harness.acme_requests(), acme_requests);
}

// --- A panicked reconcile ------------------------------------------------------------------------------

#[tokio::test]
async fn a_route_the_ca_cannot_reach_yet_is_asked_about_again_on_the_same_order_until_the_authorization_deadline() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.leave_failed_challenges_pending(true);
    let refusal =
        "error doing http GET for url http://web.example.test/.well-known/acme-challenge/x with status code 404";
    harness.ca.set_validation(Validation::Check(Arc::new(move |_: &FakeChallenge| Err(refusal.to_string()))));
    let submitted_with_the_cas_error = |harness: &IssuanceHarness| {
        let status = harness.certificate().status.unwrap_or_default();
        status.order.is_some_and(|order| {
            order.authorizations.iter().any(|a| {
                a.state.as_deref() == Some("submitted") && a.message.as_deref().is_some_and(|m| m.contains(refusal))
            })
        })
    };
    let mut passes = 0;
    while !submitted_with_the_cas_error(&harness) {
        assert!(passes < MAX_PASSES, "not submitted after {passes} passes: {:#?}", harness.certificate().status);
        harness.run_passes(1).await;
        passes += 1;
    }

    // Still issuing on the same order, the CA's words in the Issuing condition.
    let (status, _, message) = harness.condition("Issuing").expect("Issuing");
    assert_eq!(status, "True");
    assert!(message.contains(refusal) && message.contains("asking again"), "{message}");
    assert!(!harness.event_reasons().contains(&"Failed".to_string()), "{:?}", harness.event_reasons());

    // Asked again (after a restart: at once), until the deadline (5 minutes by default) passes.
    present_earlier(&mut harness, 300).await;
    harness.sync_caches();
    let action = harness.pass().await;

    let (status, reason, message) = harness.condition("Ready").expect("Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Failed"));
    assert!(message.contains("the CA had not validated web.example.test 30"), "names it and how long: {message}");
    assert!(message.contains("(the deadline is 300s)") && message.contains(refusal), "the CA's last error: {message}");
    assert_eq!(harness.ca.orders_created(), 1, "one order throughout");
    assert!(harness.ca.requests(Endpoint::Challenge) >= 2, "asked again on the same order");
    assert_eq!(harness.solver_objects(), Vec::<String>::new(), "the solver objects are removed");
    assert_eq!(action, Action::requeue(harness.config.backoff.initial), "then the usual failure backoff");
}

/// One reconcile of Certificate `apps/<name>` as the controller runs it: through `observed`, which catches
/// a panic, then the error policy on failure (whose requeue is the error backoff).
async fn controller_pass(
    harness: &IssuanceHarness,
    name: &str,
) -> (Result<Action, crate::controller::ReconcileError>, Action) {
    use crate::controller::{ControllerKind, error_policy, observed};
    let certificate: Certificate = harness.apiserver.get(NAMESPACE, name).expect("the Certificate exists");
    let ctx = harness.ctx.clone();
    let reconcile = super::reconcile_certificate(Arc::new(certificate.clone()), ctx.clone());
    let result = observed(ctx.clone(), ControllerKind::Certificate, &certificate, reconcile).await;
    // The watch delivers what the pass wrote.
    if let Some(written) = harness.apiserver.get::<Certificate>(NAMESPACE, name) {
        ctx.certificate_delivered(&written);
    }
    let action = match &result {
        Ok(action) => action.clone(),
        Err(error) => error_policy(Arc::new(certificate), error, ctx),
    };
    (result, action)
}

/// (status, reason, message) of the Ready condition of Certificate `apps/<name>`.
fn ready_of(harness: &IssuanceHarness, name: &str) -> Option<(String, String, String)> {
    let certificate: Certificate = harness.apiserver.get(NAMESPACE, name)?;
    let ready = certificate.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((ready.status, ready.reason, ready.message))
}

#[tokio::test]
async fn a_panic_in_one_certificates_reconcile_shows_on_it_and_backs_off_while_another_is_issued() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    let mut api = crate::desired::testing::certificate();
    api.metadata.name = Some("api".into());
    api.metadata.uid = Some("0b6b2c4e-1d1f-4c55-9a7e-3c1f00000002".into());
    api.spec.secret_name = "api-tls".into();
    api.spec.dns_names = vec!["api.example.test".into()];
    harness.seed_certificate(api);
    harness.ctx.panic_for.lock().expect("the lock").insert(format!("{NAMESPACE}/{CERTIFICATE}"));

    // The poisoned Certificate: an error of its own, shown in Ready and an Event, retried with backoff.
    harness.sync_caches();
    let (result, action) = controller_pass(&harness, CERTIFICATE).await;
    let error = result.expect_err("the panic is an error of the Certificate");
    assert!(matches!(error, crate::controller::ReconcileError::Panicked(_)), "{error}");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "the first error backoff");
    let (status, reason, message) = ready_of(&harness, CERTIFICATE).expect("a Ready condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ReconcilePanicked"));
    assert_eq!(message, "the reconcile panicked: injected panic for Certificate apps/web (a bug: please report it)");
    assert_eq!(event_count(&harness, "ReconcilePanicked"), 1);

    // Again: a longer backoff, the Event counted again, and no status write (it already says so).
    harness.sync_caches();
    harness.apiserver.clear_requests();
    let (result, action) = controller_pass(&harness, CERTIFICATE).await;
    assert!(result.is_err());
    assert_eq!(action, Action::requeue(Duration::from_secs(10)), "the second error backoff");
    assert_eq!(harness.apiserver.count("PATCH", "/certificates/web/status"), 0, "nothing new to show");
    assert_eq!(event_count(&harness, "ReconcilePanicked"), 2);

    // A status write that fails is only logged: the error stays the panic, the backoff goes on.
    harness.apiserver.fail_next("PATCH", "/certificates/web/status", 500, 1);
    let mut unshown = harness.certificate();
    unshown.status = None;
    let api_of_web: Api<Certificate> = Api::namespaced(harness.apiserver.client(), NAMESPACE);
    api_of_web.replace_status(CERTIFICATE, &Default::default(), &unshown).await.expect("clearing the status");
    let (result, action) = controller_pass(&harness, CERTIFICATE).await;
    assert!(matches!(result, Err(crate::controller::ReconcileError::Panicked(_))), "{result:?}");
    assert_eq!(action, Action::requeue(Duration::from_secs(20)), "the third error backoff");

    // The other Certificate of the same controller and issuer is issued meanwhile.
    let mut issued = false;
    for _ in 0..MAX_PASSES {
        harness.sync_caches();
        let (result, _) = controller_pass(&harness, "api").await;
        result.expect("the other Certificate's passes succeed");
        harness.mark_solver_pods_ready();
        if ready_of(&harness, "api").is_some_and(|(status, _, _)| status == "True") {
            issued = true;
            break;
        }
    }
    assert!(issued, "the other Certificate is Ready: {:?}", ready_of(&harness, "api"));
    assert!(harness.secret("api-tls").is_some());
    assert_eq!(ready_of(&harness, CERTIFICATE).map(|(status, _, _)| status), None, "the failed write left web unshown");

    // Once the bug is gone, the Certificate is issued too, and Ready says so.
    harness.ctx.panic_for.lock().expect("the lock").clear();
    harness.run_until_ready(MAX_PASSES).await;
    assert_eq!(harness.condition_reason("Ready"), condition("True", "Ready"));
}

// --- Issuer policy ---------------------------------------------------------------------------------------

/// A ClusterIssuer `corp`, Ready at the harness's CA, with `policy`; the Certificate `web` now uses it.
async fn with_cluster_issuer_policy(harness: &IssuanceHarness, policy: crate::api::IssuerPolicy) {
    let issuer = harness.ready_issuer();
    let mut cluster_issuer = crate::api::ClusterIssuer::new(
        "corp",
        crate::api::ClusterIssuerSpec { acme: issuer.spec.acme.clone(), policy: Some(policy) },
    );
    cluster_issuer.metadata.generation = Some(1);
    cluster_issuer.status = issuer.status.clone();
    harness.apiserver.put(&cluster_issuer);
    harness
        .edit_certificate_spec(|spec| {
            spec.issuer_ref = crate::api::IssuerRef { name: "corp".into(), kind: IssuerKind::ClusterIssuer };
        })
        .await;
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Namespace {
    let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
    namespace.metadata.name = Some(name.into());
    namespace.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    namespace
}

fn names_policy(templates: &[&str]) -> crate::api::IssuerPolicy {
    crate::api::IssuerPolicy { dns_names: Some(owned(templates)), ..Default::default() }
}

#[tokio::test]
async fn a_name_outside_the_issuers_policy_is_refused_before_any_acme_request_or_solver_object() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    with_cluster_issuer_policy(&harness, names_policy(&["{label}.{namespace}.svc"])).await;
    harness.ca.set_validation(harness.validation_through_solver_objects());

    harness.run_passes(3).await;

    let (status, reason, message) = harness.condition("Ready").expect("a Ready condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NotPermitted"));
    assert!(message.contains("\"web.example.test\"") && message.contains("{label}.{namespace}.svc"), "{message}");
    assert!(message.contains("ClusterIssuer corp") && message.contains("namespace apps"), "{message}");
    assert_eq!(harness.acme_requests(), 0, "the CA hears nothing of a refused request");
    assert!(harness.solver_objects().is_empty());
    assert_eq!(harness.certificate().status.and_then(|s| s.order), None);
    assert_eq!(event_count(&harness, "NotPermitted"), 1, "one Event, not one per pass");
}

#[tokio::test]
async fn a_name_the_policy_permits_in_a_selected_namespace_is_issued() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let mut policy = names_policy(&["{label}.{namespace}.svc"]);
    policy.namespace_selector = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(BTreeMap::from([("tenant".to_string(), "apps".to_string())])),
        match_expressions: None,
    });
    with_cluster_issuer_policy(&harness, policy).await;
    harness.edit_certificate_spec(|spec| spec.dns_names = owned(&["web.apps.svc"])).await;
    harness.ca.set_validation(harness.validation_through_solver_objects());

    // Without the label, the namespace is not selected.
    harness.apiserver.put(&namespace(NAMESPACE, &[]));
    harness.run_passes(2).await;
    let (_, reason, message) = harness.condition("Ready").expect("a Ready condition");
    assert_eq!(reason, "NotPermitted");
    assert!(message.contains("namespace apps may not use ClusterIssuer corp"), "{message}");
    assert_eq!(harness.acme_requests(), 0);

    // Labelled, it is; the name matches its template.
    harness.apiserver.put(&namespace(NAMESPACE, &[("tenant", "apps")]));
    harness.run_until_ready(MAX_PASSES).await;
    assert!(harness.is_ready_and_idle());
}

#[tokio::test]
async fn a_policy_tightened_mid_order_ends_the_order_and_removes_its_solver_objects() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    with_cluster_issuer_policy(&harness, names_policy(&["{label}.example.test"])).await;
    harness.ca.set_validation(Validation::PendingFor(1000));
    harness.run_passes(3).await;
    assert!(harness.certificate().status.and_then(|s| s.order).is_some(), "an order in flight");
    assert!(!harness.solver_objects().is_empty(), "solver objects exist");

    with_cluster_issuer_policy(&harness, names_policy(&["{label}.{namespace}.svc"])).await;
    harness.sync_caches();
    harness.pass().await;

    assert_eq!(harness.condition_reason("Ready"), condition("False", "NotPermitted"));
    let status = harness.certificate().status.unwrap_or_default();
    assert_eq!(status.order, None);
    assert_eq!(status.next_private_key_secret_name, None);
    assert!(harness.next_key_secret().is_none(), "the order's key is deleted");
    harness.sync_caches();
    assert!(harness.solver_objects().is_empty(), "{:?}", harness.solver_objects());
}

/// The Certificate fixture, in `namespace`, from the ClusterIssuer `issuer`.
fn certificate_in(namespace: &str, issuer: &str) -> Certificate {
    let mut certificate = crate::desired::testing::certificate();
    certificate.metadata.namespace = Some(namespace.into());
    certificate.metadata.uid = Some(format!("uid-of-{namespace}-web"));
    certificate.spec.issuer_ref = crate::api::IssuerRef { name: issuer.into(), kind: IssuerKind::ClusterIssuer };
    certificate
}

#[tokio::test]
async fn with_an_account_per_namespace_two_namespaces_get_two_accounts_and_each_proves_its_names_itself() {
    // (accountPerNamespace, accounts the CA registers, challenges answered) for the same name asked for by
    // two namespaces, at a CA that reuses an account's valid authorizations.
    let cases = [(None, 1, 1), (Some(true), 2, 2)];
    for (per_namespace, accounts, challenges) in cases {
        let mut harness = IssuanceHarness::start().await;
        harness.ca.reuse_authorizations(true);
        harness.ca.set_validation(harness.validation_through_solver_objects());
        let mut issuer = crate::controller::testing::ready_cluster_issuer_at("shared", &harness.ca);
        issuer.spec.acme.account_per_namespace = per_namespace;
        harness.apiserver.put(&issuer);
        for namespace in ["team-a", "team-b"] {
            harness.seed_certificate(certificate_in(namespace, "shared"));
            harness.run_until_ready_of(namespace, "web", MAX_PASSES).await;
        }

        let case = format!("accountPerNamespace {per_namespace:?}");
        assert_eq!(harness.ca.accounts_created(), accounts, "{case}: new-account registrations at the CA");
        assert_eq!(harness.ca.requests(Endpoint::Challenge), challenges, "{case}: challenges answered");
        assert_eq!(harness.ca.certificates_issued().len(), 2, "{case}");
        let keys: Vec<String> = harness
            .apiserver
            .list::<Secret>()
            .into_iter()
            .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("shared-account")))
            .map(|s| format!("{}/{}", s.metadata.namespace.unwrap_or_default(), s.metadata.name.unwrap_or_default()))
            .collect();
        let expected: &[&str] = if per_namespace == Some(true) {
            &["kacme-system/shared-account-team-a", "kacme-system/shared-account-team-b"]
        } else {
            &["kacme-system/shared-account"]
        };
        assert_eq!(keys, expected, "{case}: the account keys, all in the cluster resource namespace");
    }
}

#[tokio::test]
async fn a_namespace_account_key_secret_not_marked_for_that_namespace_is_never_used() {
    let mut harness = IssuanceHarness::start().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    let mut issuer = crate::controller::testing::ready_cluster_issuer_at("shared", &harness.ca);
    issuer.spec.acme.account_per_namespace = Some(true);
    harness.apiserver.put(&issuer);
    // team-a's account key, copied (or planted) where team-b's belongs.
    harness.seed_certificate(certificate_in("team-a", "shared"));
    harness.run_until_ready_of("team-a", "web", MAX_PASSES).await;
    let mut planted: Secret = harness.apiserver.get("kacme-system", "shared-account-team-a").expect("team-a's key");
    planted.metadata.name = Some("shared-account-team-b".into());
    planted.metadata.resource_version = None;
    planted.metadata.uid = None;
    harness.apiserver.put(&planted);

    harness.seed_certificate(certificate_in("team-b", "shared"));
    harness.sync_caches();
    harness.ctx.retry_gate.release_all();
    let certificate: Certificate = harness.apiserver.get("team-b", "web").expect("the Certificate");
    super::reconcile_certificate(Arc::new(certificate), harness.ctx.clone()).await.expect("the pass");

    let certificate: Certificate = harness.apiserver.get("team-b", "web").expect("the Certificate");
    let ready = certificate.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
    let ready = ready.expect("a Ready condition");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "IssuerNotReady"));
    assert!(
        ready.message.contains("namespace team-b") && ready.message.contains("kacme.dev/account-namespace"),
        "{}",
        ready.message
    );
    assert_eq!(harness.ca.accounts_created(), 1, "no account for team-b with team-a's key");
    assert_eq!(harness.ca.orders_created(), 1, "no order for team-b");
}

#[tokio::test]
async fn a_namespace_account_binds_with_the_namespaces_own_eab_key_when_it_has_one_else_the_issuers() {
    use base64::Engine as _;
    let encode = |key: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let mut harness = IssuanceHarness::start().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    // The CA knows only team-b's key: the issuer's own key (used by team-a, which has none) is unknown.
    let team_b_key = b"team-b's 32 byte secret for EAB!".to_vec();
    harness.ca.require_external_account(Some(vec![crate::acme::ExternalAccountBinding {
        key_id: "kid-team-b".into(),
        hmac_key: team_b_key.clone(),
    }]));
    let secret = |name: &str, data: &[(&str, String)]| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kacme-system".into()),
            ..Default::default()
        },
        data: Some(
            data.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.clone().into_bytes()))).collect(),
        ),
        ..Secret::default()
    };
    harness.apiserver.put(&secret("eab", &[("secret", encode(b"the issuer's 32 byte EAB secret!"))]));
    harness.apiserver.put(&secret("eab-team-b", &[("keyID", "kid-team-b".into()), ("secret", encode(&team_b_key))]));
    let mut issuer = crate::controller::testing::ready_cluster_issuer_at("shared", &harness.ca);
    issuer.spec.acme.account_per_namespace = Some(true);
    issuer.spec.acme.external_account_binding = Some(crate::api::ExternalAccountBinding {
        key_id: "kid-shared".into(),
        key_secret_ref: crate::api::SecretKeySelector { name: "eab".into(), key: None },
    });
    harness.apiserver.put(&issuer);

    harness.seed_certificate(certificate_in("team-b", "shared"));
    harness.run_until_ready_of("team-b", "web", MAX_PASSES).await;
    assert_eq!(harness.ca.accounts_created(), 1, "team-b's account, bound with team-b's key");

    harness.seed_certificate(certificate_in("team-a", "shared"));
    harness.sync_caches();
    let certificate: Certificate = harness.apiserver.get("team-a", "web").expect("the Certificate");
    super::reconcile_certificate(Arc::new(certificate), harness.ctx.clone()).await.expect("the pass");
    let certificate: Certificate = harness.apiserver.get("team-a", "web").expect("the Certificate");
    let ready = certificate.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
    let ready = ready.expect("a Ready condition");
    assert_eq!(ready.reason, "IssuerNotReady");
    assert!(ready.message.contains("kid-shared"), "team-a bound with the issuer's key: {}", ready.message);
    assert_eq!(harness.ca.accounts_created(), 1);
}

// --- Secrets kacme may touch ---------------------------------------------------------------------------

/// A Secret named like the Certificate's, labelled and annotated as kacme's for Certificate `web`, but
/// written by someone else: without the Certificate's UID.
fn forged_secret(name: &str) -> Secret {
    let mut secret = foreign_secret();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(BTreeMap::from([(LABEL_MANAGED_BY.into(), MANAGED_BY.into())]));
    secret.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_CERTIFICATE_NAME.into(), "web".into())]));
    let key = crate::pki::generate_private_key(&crate::pki::KeySpec::from_spec(None)).expect("a key");
    secret.data = Some(BTreeMap::from([(TLS_KEY.into(), k8s_openapi::ByteString(key.pem().as_bytes().to_vec()))]));
    secret
}

#[tokio::test]
async fn a_secret_with_a_forged_name_annotation_is_neither_read_nor_written() {
    let harness = IssuanceHarness::ready_to_issue().await;
    let forged = harness.apiserver.put(&forged_secret(SECRET));

    harness.pass().await;
    harness.pass().await;

    assert_eq!(harness.condition_reason("Ready"), condition("False", "SecretNotOwned"));
    let (_, _, message) = harness.condition("Ready").expect("a Ready condition");
    assert!(message.contains("records no Certificate UID"), "{message}");
    assert_eq!(harness.secret(SECRET), Some(forged), "the Secret is untouched");
    assert_eq!(harness.acme_requests(), 0, "nothing to order for a Secret kacme may not write");
}

#[tokio::test]
async fn a_certificate_created_again_under_the_same_name_replaces_the_secret_with_a_new_key() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_until_ready(MAX_PASSES).await;
    let (first, first_key) = harness.stored_certificate();

    // Deleted (the Secret stays, as in cert-manager) and created again a moment later: another UID.
    assert!(harness.apiserver.remove::<Certificate>(NAMESPACE, "web"));
    let mut again = crate::desired::testing::certificate();
    again.metadata.uid = Some("0b6b2c4e-1d1f-4c55-9a7e-3c1f00000002".into());
    let later = Timestamp::now() + jiff::SignedDuration::from_secs(2);
    again.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(later));
    harness.seed_certificate(again);
    harness.run_until_ready(MAX_PASSES).await;

    let (second, second_key) = harness.stored_certificate();
    assert_ne!(first.leaf.serial, second.leaf.serial, "issued anew");
    assert_ne!(first_key.pem(), second_key.pem(), "the earlier Certificate's key is not trusted");
    let secret = harness.secret(SECRET).expect("the Secret");
    assert_eq!(
        secret.annotations().get(ANNOTATION_CERTIFICATE_UID).map(String::as_str),
        Some("0b6b2c4e-1d1f-4c55-9a7e-3c1f00000002"),
        "the Secret now records the new Certificate"
    );
    assert!(harness.event_reasons().iter().any(|r| r == "Issued"));
}

#[tokio::test]
async fn a_certificate_created_after_a_secret_that_records_another_uid_does_not_take_it() {
    let harness = IssuanceHarness::ready_to_issue().await;
    let mut secret = forged_secret(SECRET);
    secret.annotations_mut().insert(ANNOTATION_CERTIFICATE_UID.into(), "0b6b2c4e-1d1f-4c55-9a7e-3c1f00000099".into());
    // Written after the Certificate existed: not a Secret an earlier Certificate left behind.
    let later = Timestamp::now() + jiff::SignedDuration::from_secs(2);
    secret.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(later));
    let planted = harness.apiserver.put(&secret);

    harness.pass().await;

    assert_eq!(harness.condition_reason("Ready"), condition("False", "SecretNotOwned"));
    assert_eq!(harness.secret(SECRET), Some(planted), "the Secret is untouched");
    assert_eq!(harness.acme_requests(), 0);
}

#[tokio::test]
async fn a_secret_written_before_the_upgrade_is_adopted_once_without_a_new_certificate() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_until_ready(MAX_PASSES).await;
    let (issued, _) = harness.stored_certificate();
    // As kacme wrote it before it recorded UIDs.
    let mut legacy = harness.secret(SECRET).expect("the Secret");
    legacy.annotations_mut().remove(ANNOTATION_CERTIFICATE_UID);
    legacy.metadata.managed_fields = None;
    harness.apiserver.put(&legacy);
    let orders = harness.ca.orders_created();
    harness.apiserver.clear_requests();

    harness.sync_caches();
    harness.pass().await;
    harness.sync_caches();
    harness.pass().await;

    let secret = harness.secret(SECRET).expect("the Secret");
    let uid = harness.certificate().metadata.uid;
    assert_eq!(secret.annotations().get(ANNOTATION_CERTIFICATE_UID), uid.as_ref(), "the UID is recorded");
    assert_eq!(harness.apiserver.count("PATCH", "/secrets/web-tls"), 1, "recorded once");
    assert_eq!(harness.stored_certificate().0.leaf.serial, issued.leaf.serial, "the certificate stays");
    assert_eq!(harness.ca.orders_created(), orders, "no new order");
    assert!(harness.is_ready_and_idle());
}

#[tokio::test]
async fn a_next_key_secret_of_someone_else_is_neither_read_replaced_nor_deleted() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.run_passes(1).await;
    assert!(harness.certificate().status.and_then(|s| s.order).is_some(), "an order is in flight");
    // A restarted operator must read the order's key back from the next-key Secret; someone has put
    // their own key there, with kacme's name annotation and label but without the Certificate's UID.
    harness.restart();
    let planted = harness.apiserver.put(&forged_secret("web-next-key"));

    harness.run_passes(3).await;

    assert_eq!(harness.next_key_secret(), Some(planted.clone()), "neither replaced nor deleted");
    assert!(harness.ca.certificates_issued().is_empty(), "no certificate for the planted key (or any)");
    assert!(harness.secret(SECRET).is_none());
    let (status, _, message) = harness.condition("Ready").expect("a Ready condition");
    assert_eq!(status, "False");
    assert!(message.contains("in the way of the next private key"), "{message}");

    // Nor is it deleted with the Certificate.
    Api::<Certificate>::namespaced(harness.apiserver.client(), NAMESPACE)
        .delete("web", &DeleteParams::default())
        .await
        .expect("deletion starts");
    harness.sync_caches();
    harness.pass().await;
    assert!(harness.apiserver.get::<Certificate>(NAMESPACE, "web").is_none(), "the finalizer went");
    assert_eq!(harness.next_key_secret(), Some(planted), "still there");
}

// --- Trust kept apart ------------------------------------------------------------------------------------

/// Replaces the `acme` spec of the harness's Issuer.
fn edit_issuer(harness: &IssuanceHarness, edit: impl FnOnce(&mut crate::api::AcmeIssuer)) {
    let mut issuer = harness.ready_issuer();
    edit(&mut issuer.spec.acme);
    harness.apiserver.put(&issuer);
}

#[tokio::test]
async fn a_chain_that_does_not_verify_to_the_issuers_roots_is_not_stored() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    // The caBundle trusts the ACME endpoint only: nothing the CA issues verifies to it.
    let CaTrust::Bundle(tls_roots) = harness.ca.trust() else { panic!("a bundle") };
    edit_issuer(&harness, |acme| acme.ca_bundle = Some(crate::controller::accounts::pem_bundle(&tls_roots)));

    harness.run_passes(MAX_PASSES).await;

    assert!(harness.secret(SECRET).is_none(), "an untrusted chain is not stored");
    let (_, reason, message) = harness.condition("Ready").expect("Ready");
    assert_eq!(reason, "Failed");
    assert!(message.contains("does not verify to any certificate of the issuer's caBundle"), "{message}");
    assert!(message.contains("issuingCABundle"), "says how to fix it: {message}");
    assert!(harness.certificate().status.and_then(|s| s.failed_issuance_attempts).is_some());
}

#[tokio::test]
async fn issuing_roots_configured_on_the_issuer_become_ca_crt_and_must_verify_the_chain() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    harness.ca.set_validation(harness.validation_through_solver_objects());
    let issuing = harness.ca.ca_pem();
    edit_issuer(&harness, |acme| acme.issuing_ca_bundle = Some(issuing.clone()));

    harness.run_until_ready(MAX_PASSES).await;

    let secret = harness.secret(SECRET).expect("the Secret");
    let ca_crt = secret.data.as_ref().and_then(|d| d.get(CA_CRT)).expect("ca.crt");
    assert_eq!(
        parse_ca_bundle(&ca_crt.0).expect("PEM"),
        parse_ca_bundle(issuing.as_bytes()).expect("PEM"),
        "ca.crt is the configured issuing roots"
    );

    // Roots that do not sign this CA's certificates: the next issuance is not stored.
    let CaTrust::Bundle(tls_roots) = harness.ca.trust() else { panic!("a bundle") };
    edit_issuer(&harness, |acme| acme.issuing_ca_bundle = Some(crate::controller::accounts::pem_bundle(&tls_roots)));
    harness.edit_certificate_spec(|spec| spec.dns_names.push("api.example.test".into())).await;
    harness.run_passes(MAX_PASSES).await;
    let (_, reason, message) = harness.condition("Issuing").expect("Issuing");
    assert_eq!(reason, "Failed");
    assert!(message.contains("does not verify to the issuer's issuingCABundle"), "{message}");
    let kept = harness.secret(SECRET).expect("the Secret");
    assert_eq!(kept.data, secret.data, "the Secret keeps the certificate that verified");
}

// --- The operator's rules for issuers (issue 13, parts 4 and 7) ---------------------------------------------

#[tokio::test]
async fn an_issuer_the_operators_rules_refuse_gets_no_request_to_its_ca_and_no_solver_object() {
    use crate::api::{Http01Ingress, ObjectMetaTemplate, SolverIngressTemplate};
    let snippet = |issuer: &mut crate::api::Issuer| {
        issuer.spec.acme.solvers[0].http01.ingress = Some(Http01Ingress {
            ingress_template: Some(SolverIngressTemplate {
                metadata: Some(ObjectMetaTemplate {
                    annotations: BTreeMap::from([(
                        "nginx.ingress.kubernetes.io/configuration-snippet".to_owned(),
                        "proxy_pass http://kube-apiserver;".to_owned(),
                    )]),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        });
    };
    let skip_tls = |issuer: &mut crate::api::Issuer| issuer.spec.acme.skip_tls_verify = Some(true);
    let elsewhere = |_: &mut crate::api::Issuer| {};
    // (case, edit of the Issuer, servers the operator allows, words the message holds)
    type Edit = fn(&mut crate::api::Issuer);
    let cases: [(&str, Edit, Vec<String>, &[&str]); 3] = [
        (
            "a snippet annotation in the ingress template",
            snippet,
            vec![],
            &["ingressTemplate", "nginx.ingress.kubernetes.io/configuration-snippet", "snippet"],
        ),
        ("skipTLSVerify on a namespaced Issuer", skip_tls, vec![], &["skip TLS verification"]),
        ("a server the operator does not allow", elsewhere, vec!["ca.allowed.test".to_owned()], &["ca.allowed.test"]),
    ];
    for (case, edit, allowed_servers, words) in cases {
        let mut harness = IssuanceHarness::start().await;
        harness.config.namespaced_issuers.allowed_servers = allowed_servers;
        harness.restart();
        let mut issuer = harness.ready_issuer();
        edit(&mut issuer);
        harness.apiserver.put(&issuer);
        harness.seed_certificate(crate::desired::testing::certificate());
        harness.sync_caches();

        harness.pass().await;
        harness.pass().await;

        let (status, reason, message) = harness.condition("Ready").expect("a Ready condition");
        assert_eq!((status.as_str(), reason.as_str()), ("False", "IssuerNotReady"), "{case}: {message}");
        for word in words {
            assert!(message.contains(word), "{case}: the message names {word:?}: {message}");
        }
        assert_eq!(harness.acme_requests(), 0, "{case}: nothing reaches the CA");
        assert!(harness.solver_objects().is_empty(), "{case}: no solver object");
    }
}

#[tokio::test]
async fn a_cluster_issuer_may_skip_tls_verification_and_use_any_server() {
    let mut harness = IssuanceHarness::start().await;
    harness.config.namespaced_issuers.allowed_servers = vec!["ca.allowed.test".to_owned()];
    harness.restart();
    let issuer = harness.ready_issuer();
    let info = crate::controller::accounts::IssuerInfo {
        kind: IssuerKind::ClusterIssuer,
        name: "corp".into(),
        secret_namespace: "kacme-system".into(),
        acme: crate::api::AcmeIssuer { skip_tls_verify: Some(true), ..issuer.spec.acme.clone() },
        policy: None,
        ready: true,
        offers_renewal_info: false,
        generation: Some(1),
        recorded_account: None,
    };
    let namespaced = crate::controller::accounts::IssuerInfo { kind: IssuerKind::Issuer, ..info.clone() };
    let check = crate::controller::accounts::check_operator_rules;
    assert!(check(&info, &harness.config).is_ok());
    let refused = check(&namespaced, &harness.config).expect_err("a namespaced Issuer is refused");
    assert_eq!(refused.reason(), crate::api::IssuerReason::SkipTlsVerifyNotAllowed);
}

#[tokio::test]
async fn a_ca_that_sends_a_hostile_token_or_identifier_gets_no_solver_route() {
    let authorization = |identifier: &str, token: &str, base: &str| {
        serde_json::json!({
            "status": "pending",
            "identifier": {"type": "dns", "value": identifier},
            "challenges": [{"type": "http-01", "url": format!("{base}/challenge/999"), "status": "pending", "token": token}],
        })
    };
    let good_token = "Xq3wTj9vS0l4mZ_kPcR8yA2dN7fUeB1hGiK5oLpQ6rs";
    // (case, identifier, token, words the failure holds)
    let cases = [
        ("a token with a path", "web.example.test", "../../../../../../../../../../healthz", "base64url"),
        ("a token with a query", "web.example.test", "abcdefghijklmnopqrstuvwxyz?a=../b", "base64url"),
        ("a short token", "web.example.test", "abc", "3 characters"),
        ("a name that was not ordered", "api.other-team.svc", good_token, "did not order"),
    ];
    for (case, identifier, token, words) in cases {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        let base = harness.ca.directory_url().trim_end_matches("/directory").to_string();
        let body = authorization(identifier, token, &base).to_string().into_bytes();
        let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        harness.ca.fail_next(Endpoint::Authorization, Fault::Raw { status: 200, headers, body }, 100);

        for _ in 0..4 {
            harness.sync_caches();
            let _ = harness.try_pass().await;
        }

        let (status, _, message) = harness.condition("Issuing").expect("an Issuing condition");
        assert_eq!(status, "False", "{case}: {message}");
        assert!(message.contains(words), "{case}: the failure says {words:?}: {message}");
        assert!(harness.apiserver.list::<Ingress>().is_empty(), "{case}: no solver Ingress");
        assert!(harness.apiserver.list::<Pod>().is_empty(), "{case}: no solver Pod");
    }
}

// --- The lifetime asked for ----------------------------------------------------------------------------

/// The harness with its Certificate asking for `duration`.
async fn asking_for_a_lifetime(duration: Duration) -> IssuanceHarness {
    let harness = IssuanceHarness::start().await;
    harness.apiserver.put(&harness.ready_issuer());
    let mut certificate = crate::desired::testing::certificate();
    certificate.spec.duration = Some(duration.into());
    harness.seed_certificate(certificate);
    harness
}

/// How far `at` is from `expected`, in seconds.
fn seconds_apart(at: Timestamp, expected: Timestamp) -> i64 {
    (at.as_second() - expected.as_second()).abs()
}

#[tokio::test]
async fn a_certificates_duration_is_sent_as_not_after_and_the_stored_certificate_ends_then() {
    let mut harness = asking_for_a_lifetime(Duration::from_secs(2 * 3600)).await;
    let asked_at = Timestamp::now();

    harness.run_until_ready(MAX_PASSES).await;

    let (stored, _) = harness.stored_certificate();
    let expected = asked_at + jiff::SignedDuration::from_hours(2);
    assert!(seconds_apart(stored.leaf.not_after, expected) <= 5, "ends {} not {expected}", stored.leaf.not_after);
    let payloads = harness.ca.new_order_payloads();
    assert_eq!(payloads.len(), 1);
    let not_after: Timestamp = payloads[0]["notAfter"].as_str().expect("notAfter").parse().expect("RFC 3339");
    assert_eq!(not_after.as_second(), stored.leaf.not_after.as_second(), "the certificate ends at the notAfter sent");
    assert!(payloads[0].get("notBefore").is_none(), "notBefore is left to the CA");
}

#[tokio::test]
async fn without_a_duration_no_lifetime_is_sent_and_the_cas_default_applies() {
    let mut harness = IssuanceHarness::ready_to_issue().await;
    let asked_at = Timestamp::now();

    harness.run_until_ready(MAX_PASSES).await;

    assert!(harness.ca.new_order_payloads()[0].get("notAfter").is_none());
    let (stored, _) = harness.stored_certificate();
    assert!(seconds_apart(stored.leaf.not_after, asked_at + jiff::SignedDuration::from_hours(24)) <= 5);
}

#[tokio::test]
async fn an_issuer_that_turns_sending_the_lifetime_off_sends_none() {
    let mut harness = asking_for_a_lifetime(Duration::from_secs(2 * 3600)).await;
    edit_issuer(&harness, |acme| acme.send_lifetime = Some(false));
    let asked_at = Timestamp::now();

    harness.run_until_ready(MAX_PASSES).await;

    assert!(harness.ca.new_order_payloads()[0].get("notAfter").is_none());
    let (stored, _) = harness.stored_certificate();
    assert!(seconds_apart(stored.leaf.not_after, asked_at + jiff::SignedDuration::from_hours(24)) <= 5);
}

#[tokio::test]
async fn a_lifetime_the_ca_refuses_shows_as_duration_not_allowed_with_the_cas_words() {
    let mut harness = asking_for_a_lifetime(Duration::from_secs(48 * 3600)).await;
    harness.ca.set_max_lifetime(Duration::from_secs(24 * 3600));

    harness.run_passes(2).await;

    let (status, reason, message) = harness.condition("Issuing").expect("an Issuing condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "DurationNotAllowed"), "{message}");
    assert!(message.contains("more than the authorized maximum certificate duration"), "{message}");
    assert!(message.contains("172800s"), "the lifetime asked for is named: {message}");
    assert_eq!(harness.ca.orders_created(), 0);
    assert!(harness.event_reasons().iter().any(|r| r == "Failed"));
}

#[tokio::test]
async fn a_server_error_on_finalizing_an_order_with_a_lifetime_shows_as_duration_not_allowed() {
    // step-ca 0.30 accepts any notAfter on newOrder and answers finalize with a bare 500 when the lifetime
    // is above its provisioner's maximum; retrying the same order would fail the same way forever.
    let mut harness = asking_for_a_lifetime(Duration::from_secs(48 * 3600)).await;
    harness.ca.fail_next(Endpoint::Finalize, Fault::problem(500, "serverInternal", "internal error"), 1);

    let mut passes = 0;
    while harness.condition("Issuing").is_none_or(|(status, _, _)| status != "False") {
        assert!(passes < MAX_PASSES, "no failure after {passes} passes: {:#?}", harness.certificate().status);
        harness.run_passes(1).await;
        passes += 1;
    }

    let (_, reason, message) = harness.condition("Issuing").expect("Issuing");
    assert_eq!(reason, "DurationNotAllowed", "{message}");
    assert!(message.contains("172800s") && message.contains("sendLifetime: false"), "{message}");
    assert!(message.contains("internal error"), "the CA's words are kept: {message}");
    assert_eq!(harness.certificate().status.and_then(|s| s.order), None, "the order is given up");
    assert_eq!(harness.ca.requests(Endpoint::Finalize), 1);
}

#[tokio::test]
async fn a_solver_service_and_ingress_left_by_an_earlier_solver_pod_are_handed_to_the_new_one_before_the_ca_is_told() {
    // The garbage collector removes a Service or Ingress whose owner is gone: one still owned by an earlier
    // solver Pod of the same name (a failed one replaced) would vanish while the CA validates through it.
    use k8s_openapi::api::core::v1::Service;
    let mut harness = IssuanceHarness::ready_to_issue().await;
    for _ in 0..MAX_PASSES {
        harness.sync_caches();
        harness.pass().await;
        if harness.solver_objects().iter().any(|o| o.starts_with("Ingress/")) {
            break;
        }
    }
    let pod = harness.apiserver.list::<Pod>().into_iter().next().expect("a solver Pod");
    let pod_uid = pod.uid().expect("the Pod's uid");
    let earlier = |mut meta: kube::api::ObjectMeta| {
        for owner in meta.owner_references.iter_mut().flatten() {
            owner.uid = "uid-of-an-earlier-solver-pod".to_string();
        }
        meta
    };
    let mut service = harness.apiserver.list::<Service>().into_iter().next().expect("a solver Service");
    service.metadata = earlier(service.metadata);
    harness.apiserver.put(&service);
    let mut ingress = harness.apiserver.list::<Ingress>().into_iter().next().expect("a solver Ingress");
    ingress.metadata = earlier(ingress.metadata);
    harness.apiserver.put(&ingress);
    harness.mark_solver_pods_ready();
    harness.sync_caches();
    let challenges_answered = harness.ca.requests(Endpoint::Challenge);

    harness.pass().await;

    let controller_uid = |meta: &kube::api::ObjectMeta| {
        meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone())
    };
    let service = harness.apiserver.list::<Service>().into_iter().next().expect("the solver Service");
    let ingress = harness.apiserver.list::<Ingress>().into_iter().next().expect("the solver Ingress");
    assert_eq!(controller_uid(&service.metadata).as_ref(), Some(&pod_uid), "the Service belongs to the Pod now");
    assert_eq!(controller_uid(&ingress.metadata).as_ref(), Some(&pod_uid), "the Ingress belongs to the Pod now");
    assert_eq!(harness.ca.requests(Endpoint::Challenge), challenges_answered, "the CA is told only in a later pass");
    harness.run_until_ready(MAX_PASSES).await;
}

/// kube-runtime reads the copy a pass acts on from the cache when it queues the pass, and polls the pass a
/// moment later. A pass queued while the previous pass wrote status (the order it created), and polled just
/// after the watch delivered that write, held the older copy and no record of the write: it ordered again
/// (seen as two `OrderCreated` Events for one issuance in `tests/cli.rs` and `tests/lifecycle.rs`).
#[tokio::test]
async fn a_pass_queued_before_the_watch_delivered_kacmes_own_write_acts_on_that_write() {
    use crate::controller::ControllerConfig;
    use crate::controller::context::{Freshness, Stores};
    use kube::runtime::{reflector, watcher};

    let apiserver = FakeApiserver::new();
    let (mut stores, _writers) = Stores::with_writers();
    let (certificates, mut writer) = reflector::store::<Certificate>();
    stores.certificates = Some(certificates);
    let config = ControllerConfig::new("kacme", "kacme:test");
    let ctx = crate::controller::testing::context_with_stores(&apiserver, &config, stores);
    let at = |version: &str| {
        let mut certificate = crate::desired::testing::certificate();
        certificate.metadata.resource_version = Some(version.into());
        certificate
    };
    writer.apply_watcher_event(&watcher::Event::Apply(at("255")));
    let handed = Arc::new(at("255"));

    // The previous pass wrote status (version 259); the watch delivers it (stored, then handed on).
    ctx.remember_write(&at("259"), Some("259".into()));
    let (copy, freshness) = ctx.freshness(handed.clone());
    assert_eq!(copy.resource_version().as_deref(), Some("255"));
    assert!(matches!(freshness, Freshness::AwaitWatch(_)), "before the watch delivers it: {freshness:?}");
    writer.apply_watcher_event(&watcher::Event::Apply(at("259")));
    ctx.certificate_delivered(&at("259"));

    let (copy, freshness) = ctx.freshness(handed);
    assert_eq!(copy.resource_version().as_deref(), Some("259"), "the pass acts on kacme's write, not the copy handed");
    assert_eq!(freshness, Freshness::Current);
}
