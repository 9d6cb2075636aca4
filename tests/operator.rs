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
    let ip = env.ca.ip().to_string();
    let extra = format!("  ipAddresses:\n  - {ip}\n");
    env.apply(&certificate_yaml("web", "ca", &["web.example.test", "api.example.test"], &extra)).await.unwrap();
    let certificate = env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
    let rss = env
        .operator_pid()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    eprintln!("{ca}: apply -> Ready in {:.2}s; operator resident memory {rss} kB", started.elapsed().as_secs_f64());
    check_secret(env, "web", &["web.example.test", "api.example.test"]).await;
    let secret = env.secrets("apps").get("web-tls").await.unwrap();
    let leaf = parse_chain(&secret.data.unwrap()[TLS_CRT].0).unwrap().leaf;
    assert_eq!(leaf.ip_addresses, [env.ca.ip()], "{ca}: the IP address is certified too");
    let status = certificate.status.unwrap();
    assert_eq!(status.revision, Some(1));
    assert!(status.not_after.is_some() && status.renewal_time.is_some());
    env.wait_no_solver_objects("apps").await.unwrap();
    let events = env.event_reasons("apps", "web").await.unwrap();
    for reason in ["OrderCreated", "Issued"] {
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

async fn renews_by_itself(env: OperatorEnv, ca: &str) {
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.apply(&certificate_yaml("short", "ca", &["short.example.test"], "")).await.unwrap();
    let mut serials = Vec::new();
    for revision in 1..=3 {
        let certificate = env
            .wait_certificate("apps", "short", Duration::from_secs(60), &format!("revision {revision}"), |c| {
                c.status.as_ref().and_then(|s| s.revision) >= Some(revision)
                    && condition(c, "Ready").is_some_and(|(s, _, _)| s == "True")
            })
            .await
            .unwrap();
        let serial = check_secret(&env, "short", &["short.example.test"]).await;
        eprintln!("{ca} revision {revision}: serial {serial}, renewal {:?}", certificate.status.unwrap().renewal_time);
        serials.push(serial);
    }
    serials.dedup();
    assert_eq!(serials.len(), 3, "{ca}: each renewal brought a new serial");
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_short_lived_certificates_renew_by_themselves() {
    let options = PebbleOptions { validity: Some(Duration::from_secs(12)), ..PebbleOptions::default() };
    renews_by_itself(OperatorEnv::with_pebble(options).await.unwrap(), "pebble").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_short_lived_certificates_renew_by_themselves() {
    // step-ca backdates notBefore by a minute: with 40s certificates the lifetime is 100s and renewal
    // comes about 7s after issuance (at 2/3 of the lifetime), 33s before expiry.
    let options = StepCaOptions {
        default_duration: Duration::from_secs(40),
        min_duration: Duration::from_secs(5),
        ..StepCaOptions::default()
    };
    renews_by_itself(OperatorEnv::with_step_ca(options).await.unwrap(), "step-ca").await;
}

async fn serial_of(env: &OperatorEnv, name: &str) -> Option<String> {
    let secret = env.secrets("apps").get_opt(&format!("{name}-tls")).await.unwrap()?;
    let data = secret.data?;
    Some(parse_chain(&data.get(TLS_CRT)?.0).ok()?.leaf.serial)
}

async fn wait_new_serial(env: &OperatorEnv, name: &str, old: &str, names: &[&str], what: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(serial) = serial_of(env, name).await
            && serial != old
            && env.wait_ready("apps", name, Duration::from_secs(1)).await.is_ok()
        {
            let checked = check_secret(env, name, names).await;
            if checked == serial {
                return serial;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(40), "{what}: no reissue\n{}", env.operator_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_or_editing_the_secret_and_changing_the_spec_each_reissue() {
    use k8s_openapi::ByteString;
    use kube::api::{DeleteParams, Patch, PatchParams};
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.apply(&certificate_yaml("edit", "ca", &["edit.example.test"], "")).await.unwrap();
    env.wait_ready("apps", "edit", Duration::from_secs(60)).await.unwrap();
    let names = ["edit.example.test"];
    let mut serial = check_secret(&env, "edit", &names).await;

    env.secrets("apps").delete("edit-tls", &DeleteParams::default()).await.unwrap();
    serial = wait_new_serial(&env, "edit", &serial, &names, "deleted Secret").await;

    let garbage = serde_json::json!({"data": {TLS_CRT: ByteString(b"garbage".to_vec())}});
    env.secrets("apps").patch("edit-tls", &PatchParams::default(), &Patch::Merge(&garbage)).await.unwrap();
    serial = wait_new_serial(&env, "edit", &serial, &names, "edited Secret data").await;

    env.apply(&certificate_yaml("edit", "ca", &["edit.example.test", "more.example.test"], "")).await.unwrap();
    let names = ["edit.example.test", "more.example.test"];
    serial = wait_new_serial(&env, "edit", &serial, &names, "changed dnsNames").await;

    env.apply(&certificate_yaml("edit", "ca", &names, "  privateKey:\n    algorithm: RSA\n    size: 2048\n"))
        .await
        .unwrap();
    wait_new_serial(&env, "edit", &serial, &names, "changed key algorithm").await;
    let secret = env.secrets("apps").get("edit-tls").await.unwrap();
    let key = parse_private_key(&secret.data.unwrap()[TLS_KEY].0).unwrap();
    assert_eq!(key.spec().algorithm, kacme::api::KeyAlgorithm::Rsa);
    assert!(String::from_utf8_lossy(key.pem().as_bytes()).starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    env.wait_no_solver_objects("apps").await.unwrap();
    let certificate = env.certificates("apps").get("edit").await.unwrap();
    assert_eq!(certificate.status.unwrap().revision, Some(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_ends_not_ready_with_a_reason_and_backs_off() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PostParams;
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let broken_issuer = env.issuer_yaml("apps", "broken").replace(env.ca.directory_url(), "https://127.0.0.1:1/dir");
    env.apply(&broken_issuer).await.unwrap();

    // A Secret that belongs to someone else.
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("taken-tls".into());
    foreign.string_data = Some([("note".to_string(), "mine".to_string())].into());
    let foreign = env.secrets("apps").create(&PostParams::default(), &foreign).await.unwrap();

    env.apply(&certificate_yaml("orphan", "nobody", &["orphan.example.test"], "")).await.unwrap();
    env.apply(&certificate_yaml("waiting", "broken", &["waiting.example.test"], "")).await.unwrap();
    env.apply(&certificate_yaml("taken", "ca", &["taken.example.test"], "")).await.unwrap();
    // An IP the CA cannot reach: nothing listens on 127.0.0.99.
    env.apply(
        &certificate_yaml("unreachable", "ca", &[], "  ipAddresses:\n  - 127.0.0.99\n").replace("  dnsNames:\n", ""),
    )
    .await
    .unwrap();

    for (name, reason) in [
        ("orphan", "IssuerNotFound"),
        ("waiting", "IssuerNotReady"),
        ("taken", "SecretNotOwned"),
        ("unreachable", "Failed"),
    ] {
        let certificate = env
            .wait_certificate("apps", name, Duration::from_secs(30), &format!("{name}: Ready=False {reason}"), |c| {
                condition(c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == reason)
            })
            .await
            .unwrap();
        let (_, _, message) = condition(&certificate, "Ready").unwrap();
        assert!(!message.is_empty(), "{name}: a message");
        eprintln!("{name}: Ready=False {reason}: {message}");
    }
    let unreachable = env.certificates("apps").get("unreachable").await.unwrap();
    let (_, _, message) = condition(&unreachable, "Ready").unwrap();
    assert!(message.contains("127.0.0.99"), "the CA's detail names the identifier: {message}");

    // Backoff: over 10 seconds, a 2s initial backoff doubling to 8s allows a handful of attempts, not dozens.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = env.certificates("apps").get("unreachable").await.unwrap().status.unwrap().failed_issuance_attempts;
    assert!(attempts.is_some_and(|a| (1..=5).contains(&a)), "attempts after 10s: {attempts:?}");
    let after = env.secrets("apps").get("taken-tls").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "the foreign Secret is untouched");
    assert!(after.metadata.annotations.unwrap_or_default().is_empty());
    env.wait_no_solver_objects("apps").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_operator_resumes_the_same_order_and_leaves_nothing_behind() {
    let mut env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();

    // Point 1: solver Pods created but not running (no kubelet), the order waiting on them.
    env.stand_in = None;
    env.apply(&certificate_yaml("resume", "ca", &["resume.example.test"], "")).await.unwrap();
    let waiting = env
        .wait_certificate("apps", "resume", Duration::from_secs(30), "an order waiting for its solver", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.order.as_ref())
                .is_some_and(|o| o.authorizations.iter().any(|a| a.state.as_deref() == Some("presented")))
        })
        .await
        .unwrap();
    let order_url = waiting.status.unwrap().order.unwrap().url;
    env.kill_operator();
    env.stand_in = Some(
        kacme_testenv::SolverStandIn::start(
            env.client.clone(),
            common::operator_env::kacme_binary(),
            env.ca.http01_addr(),
        )
        .await
        .unwrap(),
    );
    env.start_operator().unwrap();
    env.wait_ready("apps", "resume", Duration::from_secs(60)).await.unwrap();
    let events = env.event_reasons("apps", "resume").await.unwrap();
    assert_eq!(events.iter().filter(|e| *e == "OrderCreated").count(), 1, "one order only: {events:?} ({order_url})");
    check_secret(&env, "resume", &["resume.example.test"]).await;

    // Point 2: kills at random moments right after applying.
    for round in 0..3u64 {
        let name = format!("crash{round}");
        let host = format!("{name}.example.test");
        env.apply(&certificate_yaml(&name, "ca", &[&host], "")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50 + (round * 97) % 300)).await;
        env.kill_operator();
        env.start_operator().unwrap();
        env.wait_ready("apps", &name, Duration::from_secs(60)).await.unwrap();
        check_secret(&env, &name, &[&host]).await;
    }
    env.wait_no_solver_objects("apps").await.unwrap();
    let leftover_keys = env.next_key_secrets("apps").await.unwrap();
    assert!(leftover_keys.is_empty(), "next-key Secrets left: {leftover_keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_certificate_mid_order_removes_its_solver_objects() {
    let mut env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.stand_in = None;
    env.apply(&certificate_yaml("gone", "ca", &["gone.example.test"], "")).await.unwrap();
    kacme_testenv::poll_until("solver objects", Duration::from_secs(30), Duration::from_millis(100), || async {
        let objects = env.solver_objects("apps").await?;
        Ok(if objects.len() == 3 { Ok(()) } else { Err(format!("{objects:?}")) })
    })
    .await
    .unwrap();
    env.certificates("apps").delete("gone", &Default::default()).await.unwrap();
    env.wait_no_solver_objects("apps").await.unwrap();
    kacme_testenv::poll_until("the Certificate gone", Duration::from_secs(20), Duration::from_millis(100), || async {
        Ok(if env.certificates("apps").get_opt("gone").await?.is_none() { Ok(()) } else { Err("still there".into()) })
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_issues_the_lifetime_asked_for_and_refuses_one_above_its_maximum() {
    let options = StepCaOptions { max_duration: Duration::from_secs(24 * 3600), ..StepCaOptions::default() };
    let env = OperatorEnv::with_step_ca(options).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let asked_at = jiff::Timestamp::now();
    env.apply(&certificate_yaml("two-hours", "ca", &["two-hours.example.test"], "  duration: 2h\n")).await.unwrap();
    env.apply(&certificate_yaml("two-days", "ca", &["two-days.example.test"], "  duration: 48h\n")).await.unwrap();

    env.wait_ready("apps", "two-hours", Duration::from_secs(60)).await.unwrap();
    check_secret(&env, "two-hours", &["two-hours.example.test"]).await;
    let secret = env.secrets("apps").get("two-hours-tls").await.unwrap();
    let leaf = parse_chain(&secret.data.unwrap()[TLS_CRT].0).unwrap().leaf;
    let ends_in = leaf.not_after.as_second() - asked_at.as_second();
    assert!((2 * 3600 - 120..=2 * 3600 + 120).contains(&ends_in), "ends {ends_in}s after the ask, not 2h");

    let refused = env
        .wait_certificate("apps", "two-days", Duration::from_secs(60), "DurationNotAllowed", |c| {
            condition(c, "Issuing").is_some_and(|(_, reason, _)| reason == "DurationNotAllowed")
        })
        .await
        .unwrap();
    let (status, _, message) = condition(&refused, "Issuing").unwrap();
    eprintln!("step-ca refused 48h: {message}");
    // step-ca 0.30 accepts the order and fails finalize with a bare 500 (the reason only in its log).
    assert_eq!(status, "False");
    assert!(message.contains("requested lifetime of 172800s"), "{message}");
    assert_eq!(env.certificates("apps").get("two-days").await.unwrap().status.unwrap().order, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_issues_the_lifetime_asked_for() {
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let asked_at = jiff::Timestamp::now();
    env.apply(&certificate_yaml("two-hours", "ca", &["two-hours.example.test"], "  duration: 2h\n")).await.unwrap();

    env.wait_ready("apps", "two-hours", Duration::from_secs(60)).await.unwrap();
    check_secret(&env, "two-hours", &["two-hours.example.test"]).await;
    let secret = env.secrets("apps").get("two-hours-tls").await.unwrap();
    let leaf = parse_chain(&secret.data.unwrap()[TLS_CRT].0).unwrap().leaf;
    let ends_in = leaf.not_after.as_second() - asked_at.as_second();
    assert!((2 * 3600 - 120..=2 * 3600 + 120).contains(&ends_in), "ends {ends_in}s after the ask, not 2h");
}

/// How long an ingress controller takes to program a new rule in the late-route test.
const LATE_ROUTE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_a_route_that_serves_seconds_late_is_validated_on_the_same_order() {
    let env = OperatorEnv::with_step_ca(StepCaOptions::default()).await.unwrap();
    env.stand_in.as_ref().expect("the solver stand-in").program_ingresses_after(LATE_ROUTE);
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let started = Instant::now();
    env.apply(&certificate_yaml("late", "ca", &["late.example.test"], "")).await.unwrap();

    // step-ca sees 404 until the stand-in routes the solver's Ingress; kacme asks again on the same order.
    let certificate = env.wait_ready("apps", "late", Duration::from_secs(120)).await.unwrap();
    let elapsed = started.elapsed();

    check_secret(&env, "late", &["late.example.test"]).await;
    let events = env.event_reasons("apps", "late").await.unwrap();
    let orders = events.iter().filter(|e| *e == "OrderCreated").count();
    assert_eq!(orders, 1, "one order only: {events:?}");
    assert!(!events.iter().any(|e| e == "Failed"), "no failed attempt: {events:?}");
    let status = certificate.status.unwrap();
    assert_eq!((status.revision, status.failed_issuance_attempts), (Some(1), None));
    let log = env.operator_log();
    let asked_again = log.matches("the CA left the challenge pending; asking again").count();
    assert!(asked_again >= 1, "the route was late, so step-ca was asked again:\n{}", env.operator_log());
    eprintln!(
        "step-ca: a route {}s late -> Ready {:.1}s after apply, on one order, after {asked_again} validations that \
         failed",
        LATE_ROUTE.as_secs(),
        elapsed.as_secs_f64()
    );
    env.wait_no_solver_objects("apps").await.unwrap();
}
