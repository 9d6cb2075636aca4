//! What the operator tells its operators: `/metrics` after an issuance (per Certificate expiry, renewal and
//! Ready, per Issuer Ready, ACME requests and latency, reconciles), `/healthz`, `/readyz`, and JSON logs whose
//! lines about a Certificate carry its namespace/name.

mod common;

use common::operator_env::{Ca, OperatorEnv, OperatorLaunch, RunningOperator};
use kacme_testenv::{Pebble, PebbleOptions, poll_until};
use std::collections::BTreeMap;
use std::time::Duration;

const CERTIFICATE: &str = "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  secretName: web-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n  - web.example.test\n";

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str, text: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no sample {series} in /metrics:\n{text}"))
}

async fn scrape(operator: &RunningOperator) -> (String, BTreeMap<String, f64>) {
    let (status, text) = operator.get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let parsed = samples(&text);
    (text, parsed)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_json_logs_describe_an_issuance() {
    tokio::time::timeout(Duration::from_secs(120), run()).await.expect("the test did not finish within 120s");
}

async fn run() {
    let pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
    let mut env = OperatorEnv::prepare(Ca::Pebble(pebble), false).await.expect("starting the environment");
    env.start_operator_with(&OperatorLaunch { args: vec!["--log-format=json".into()], ..OperatorLaunch::default() })
        .unwrap();
    let operator = env.operator().unwrap();
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ok: leading")] {
        poll_until(path, Duration::from_secs(20), Duration::from_millis(100), || async {
            Ok(match operator.get(path).await {
                Ok((200, text)) if text.trim() == body => Ok(()),
                Ok((status, text)) => Err(format!("{status} {text}")),
                Err(error) => Err(format!("{error:#}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail(20)));
    }

    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.apply(CERTIFICATE).await.unwrap();
    let certificate = env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
    let status = certificate.status.unwrap();
    let not_after = status.not_after.unwrap().0.as_second() as f64;
    let renewal = status.renewal_time.unwrap().0.as_second() as f64;

    let (text, samples) = scrape(operator).await;
    let labels = r#"namespace="apps",name="web",issuer_name="ca",issuer_kind="Issuer""#;
    assert_eq!(
        value(&samples, &format!("kacme_certificate_expiration_timestamp_seconds{{{labels}}}"), &text),
        not_after
    );
    assert_eq!(value(&samples, &format!("kacme_certificate_renewal_timestamp_seconds{{{labels}}}"), &text), renewal);
    for (condition, expected) in [("True", 1.0), ("False", 0.0), ("Unknown", 0.0)] {
        let series = format!("kacme_certificate_ready_status{{{labels},condition=\"{condition}\"}}");
        assert_eq!(value(&samples, &series, &text), expected, "{series}");
    }
    let issuer = r#"kacme_issuer_ready_status{namespace="apps",name="ca",condition="True"}"#;
    assert_eq!(value(&samples, issuer, &text), 1.0);
    // The ACME conversation of one issuance: directory, nonce, account, order, authorization, challenge,
    // finalize and certificate download, each timed.
    for action in ["directory", "nonce", "account", "order", "authz", "challenge", "finalize", "certificate"] {
        let labels = format!(r#"action="{action}",outcome="success""#);
        let count = value(&samples, &format!("kacme_acme_requests_total{{{labels}}}"), &text);
        assert!(count >= 1.0, "ACME {action} requests: {count}");
        let timed = value(&samples, &format!("kacme_acme_request_duration_seconds_count{{{labels}}}"), &text);
        assert_eq!(timed, count, "every {action} request timed");
        let seconds = value(&samples, &format!("kacme_acme_request_duration_seconds_sum{{{labels}}}"), &text);
        assert!(seconds > 0.0 && seconds < 60.0 * count, "{action}: {seconds}s for {count} requests");
    }
    let reconciles = value(&samples, r#"kacme_reconcile_total{controller="certificate"}"#, &text);
    assert!(reconciles >= 3.0, "an issuance takes several passes: {reconciles}");
    let buckets =
        value(&samples, r#"kacme_reconcile_duration_seconds_bucket{controller="certificate",le="+Inf"}"#, &text);
    assert_eq!(buckets, reconciles, "every reconcile timed");
    assert!(value(&samples, r#"kacme_reconcile_total{controller="issuer"}"#, &text) >= 1.0);
    for reason in ["kube", "acme", "invalid_object", "finalizer"] {
        let series = format!(r#"kacme_reconcile_errors_total{{controller="certificate",reason="{reason}"}}"#);
        assert!(value(&samples, &series, &text) >= 0.0);
    }
    for controller in ["certificate", "issuer", "clusterissuer"] {
        let series = format!(r#"kacme_controller_stalled{{controller="{controller}"}}"#);
        assert_eq!(value(&samples, &series, &text), 0.0, "a loop that makes progress is not stalled");
        let series = format!(r#"kacme_controller_seconds_without_progress{{controller="{controller}"}}"#);
        assert!(value(&samples, &series, &text) < 60.0, "{series}");
    }
    assert_eq!(value(&samples, "kacme_leader_election_is_leader", &text), 1.0);
    let version = format!(r#"kacme_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&samples, &version, &text), 1.0);
    assert!(text.contains("# TYPE kacme_acme_request_duration_seconds histogram"), "{text}");

    // A deleted Certificate's series go with it.
    env.certificates("apps").delete("web", &Default::default()).await.unwrap();
    poll_until(
        "the deleted Certificate's series to go",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let (text, _) = scrape(operator).await;
            Ok(if text.contains(r#"name="web""#) { Err("still there".to_string()) } else { Ok(()) })
        },
    )
    .await
    .unwrap();

    // JSON logs: every line an object; the lines of the Certificate's reconciles name it.
    let log = operator.log();
    let mut about_web = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(object["timestamp"].is_string() && object["level"].is_string(), "{line}");
        if object["span"]["certificate"] == "apps/web" {
            about_web += 1;
        }
    }
    assert!(about_web > 0, "no log line carries the Certificate's namespace/name:\n{}", operator.log_tail(30));
    assert!(!log.contains("PRIVATE KEY"), "a private key in the logs");
}
