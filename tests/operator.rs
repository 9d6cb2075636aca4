//! The operator end to end: `kacme controller` as a process against a real control plane, a real ACME CA,
//! and the solver-Pod stand-in, driven with kubectl as a user would.

mod common;

use common::operator_env::{OperatorEnv, condition};
use kacme::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use kacme::pki::{key_matches_certificate, parse_ca_bundle, parse_chain, parse_private_key, verify_chain};
use kacme_testenv::{PebbleOptions, StepCaOptions};
use std::time::{Duration, Instant};

fn certificate_yaml(name: &str, issuer: &str, names: &[&str], extra: &str) -> String {
    let names: String = names.iter().map(|n| format!("  - {n}\n")).collect();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: {issuer}\n  dnsNames:\n{names}{extra}"
    )
}

/// Reads the Certificate's Secret and checks it: chain verifies to ca.crt, names and key match.
async fn check_secret(env: &OperatorEnv, name: &str, names: &[&str]) -> String {
    let secret = env.secrets("apps").get(&format!("{name}-tls")).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.unwrap();
    let chain = parse_chain(&data[TLS_CRT].0).unwrap();
    let bundle = parse_ca_bundle(&data[CA_CRT].0).unwrap();
    verify_chain(&chain, &bundle, jiff::Timestamp::now()).expect("tls.crt verifies to ca.crt");
    let mut got = chain.leaf.dns_names.clone();
    got.sort();
    let mut wanted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    assert_eq!(got, wanted);
    let key = parse_private_key(&data[TLS_KEY].0).unwrap();
    assert!(key_matches_certificate(&key, &chain.leaf));
    chain.leaf.serial
}

async fn issue_one(env: &OperatorEnv, ca: &str) {
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let started = Instant::now();
    env.apply(&certificate_yaml("web", "ca", &["web.example.test", "api.example.test"], "")).await.unwrap();
    let certificate = env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
    eprintln!("{ca}: apply -> Ready in {:.2}s", started.elapsed().as_secs_f64());
    check_secret(env, "web", &["web.example.test", "api.example.test"]).await;
    let status = certificate.status.unwrap();
    assert_eq!(status.revision, Some(1));
    assert!(status.not_after.is_some() && status.renewal_time.is_some());
    env.wait_no_solver_objects("apps").await.unwrap();
    let events = env.event_reasons("apps", "web").await.unwrap();
    for reason in ["OrderCreated", "Presented", "Issued"] {
        assert!(events.iter().any(|e| e == reason), "{ca}: event {reason} in {events:?}");
    }
    let table = env.control_plane.kubectl(&["get", "kcert", "-n", "apps"]).await.unwrap();
    assert!(table.contains("web") && table.contains("True"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_a_certificate_applied_with_kubectl_becomes_ready() {
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    issue_one(&env, "pebble").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_a_certificate_applied_with_kubectl_becomes_ready() {
    let env = OperatorEnv::with_step_ca(StepCaOptions::default()).await.unwrap();
    issue_one(&env, "step-ca").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_renew_by_themselves() {
    let env =
        OperatorEnv::with_pebble(PebbleOptions { validity: Some(Duration::from_secs(12)), ..PebbleOptions::default() })
            .await
            .unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.apply(&certificate_yaml("short", "ca", &["short.example.test"], "")).await.unwrap();
    let mut serials = Vec::new();
    for revision in 1..=3 {
        let certificate = env
            .wait_certificate("apps", "short", Duration::from_secs(40), &format!("revision {revision}"), |c| {
                c.status.as_ref().and_then(|s| s.revision) >= Some(revision)
                    && condition(c, "Ready").is_some_and(|(s, _, _)| s == "True")
            })
            .await
            .unwrap();
        let serial = check_secret(&env, "short", &["short.example.test"]).await;
        eprintln!("revision {revision}: serial {serial}, renewal {:?}", certificate.status.unwrap().renewal_time);
        serials.push(serial);
    }
    serials.dedup();
    assert_eq!(serials.len(), 3, "each renewal brought a new serial");
}
