//! The chart's PrometheusRule and Grafana dashboard against a real operator's `/metrics`: every series the
//! alerts and the dashboard's queries name is in a real scrape; `promtool check rules` accepts the rendered
//! rules (and the dashboard's queries as recording rules); `promtool test rules`, fed the scraped samples,
//! fires no alert on the healthy operator and exactly the right one for each failure added to it.

mod common;

use common::helm::Helm;
use common::operator_env::{Ca, OperatorEnv, RunningOperator};
use kacme_testenv::{Binaries, Pebble, PebbleOptions, TempDir, poll_until};
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const CERTIFICATE: &str = "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  secretName: web-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n  - web.example.test\n";

const ALERTS: [&str; 6] = [
    "KacmeCertificateExpiringSoon",
    "KacmeCertificateNotReady",
    "KacmeAcmeErrorsRising",
    "KacmeIssuerNotReady",
    "KacmeNoLeader",
    "KacmeReconcileStalled",
];

/// Samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The `kacme_*` names a PromQL expression uses.
fn kacme_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("kacme_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The rendered chart's PrometheusRule `spec.groups` (with every alert on) and the dashboard JSON.
async fn rendered() -> (Value, serde_json::Value) {
    let helm = Helm::offline().unwrap();
    let documents = helm
        .template("kacme", "kacme", &["--set", "prometheusRule.enabled=true,grafanaDashboard.enabled=true"])
        .await
        .unwrap();
    let rule = documents.iter().find(|d| d["kind"].as_str() == Some("PrometheusRule")).expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    let config_map = documents
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap") && d["metadata"]["name"].as_str() == Some("kacme-dashboard"))
        .expect("the dashboard ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    let dashboard = serde_json::from_str(config_map["data"]["kacme.json"].as_str().unwrap()).expect("dashboard JSON");
    (rule["spec"]["groups"].clone(), dashboard)
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(queries.len() >= panels.len(), "every panel has a query");
    queries
}

fn alert_exprs(groups: &Value) -> BTreeMap<String, String> {
    let mut exprs = BTreeMap::new();
    for group in groups.as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.insert(rule["alert"].as_str().unwrap().to_string(), rule["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

async fn promtool(dir: &Path, args: &[&str]) -> String {
    let binary = Binaries::locate().unwrap().path("promtool").expect("promtool (tests/env/install promtool)");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary).args(args).current_dir(dir).kill_on_drop(true).output(),
    )
    .await
    .expect("promtool did not finish within 60s")
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

fn write_yaml(dir: &Path, name: &str, value: &Value) {
    std::fs::write(dir.join(name), serde_yaml::to_string(value).unwrap()).unwrap();
}

/// Starts an operator on Pebble with a Ready Issuer, ClusterIssuer and Certificate, and returns its
/// `/metrics` once they all show there.
async fn healthy_scrape() -> String {
    let pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
    let mut env = OperatorEnv::prepare(Ca::Pebble(pebble), false).await.expect("starting the environment");
    env.start_operator().unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let cluster_issuer = env
        .issuer_yaml("apps", "shared")
        .replace("kind: Issuer\n", "kind: ClusterIssuer\n")
        .replace("  namespace: apps\n", "");
    env.apply(&cluster_issuer).await.unwrap();
    env.apply(CERTIFICATE).await.unwrap();
    env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
    let operator: &RunningOperator = env.operator().unwrap();
    let text =
        poll_until("every object Ready in /metrics", Duration::from_secs(30), Duration::from_millis(200), || async {
            let (status, text) = match operator.get("/metrics").await {
                Ok(answer) => answer,
                Err(error) => return Ok(Err(format!("{error:#}"))),
            };
            Ok(
                if status == 200
                    && text.contains(r#"kacme_clusterissuer_ready_status{name="shared",condition="True"} 1"#)
                    && text.contains(r#"kacme_issuer_ready_status{namespace="apps",name="ca",condition="True"} 1"#)
                    && text.contains("kacme_leader_election_is_leader 1")
                {
                    Ok(text)
                } else {
                    Err(text)
                },
            )
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    drop(env);
    text
}

/// A promtool test group: `series` (name{labels} → promtool values) evaluated for 3 h; at 2 h exactly
/// `expected` fire (alert → [(labels, summary)]), every other alert of [`ALERTS`] not.
fn test_group(name: &str, series: &BTreeMap<String, String>, expected: &[(&str, &[(&str, &str)], &str)]) -> Value {
    let input: Vec<Value> = series
        .iter()
        .map(|(s, values)| {
            let mut m = Mapping::new();
            m.insert("series".into(), s.clone().into());
            m.insert("values".into(), values.clone().into());
            Value::Mapping(m)
        })
        .collect();
    let tests: Vec<Value> = ALERTS
        .iter()
        .map(|alert| {
            let exp: Vec<Value> = expected
                .iter()
                .filter(|(a, _, _)| a == alert)
                .map(|(_, labels, summary)| {
                    let mut m = Mapping::new();
                    let labels: Mapping = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
                    m.insert("exp_labels".into(), Value::Mapping(labels));
                    let mut annotations = Mapping::new();
                    annotations.insert("summary".into(), (*summary).into());
                    m.insert("exp_annotations".into(), Value::Mapping(annotations));
                    Value::Mapping(m)
                })
                .collect();
            let mut m = Mapping::new();
            m.insert("eval_time".into(), "2h".into());
            m.insert("alertname".into(), (*alert).into());
            m.insert("exp_alerts".into(), Value::Sequence(exp));
            Value::Mapping(m)
        })
        .collect();
    let mut group = Mapping::new();
    group.insert("name".into(), name.into());
    group.insert("interval".into(), "1m".into());
    group.insert("input_series".into(), Value::Sequence(input));
    group.insert("alert_rule_test".into(), Value::Sequence(tests));
    Value::Mapping(group)
}

/// The groups with only the `summary` annotation (their descriptions are checked by `promtool check rules`).
fn with_summaries_only(groups: &Value) -> Value {
    let mut groups = groups.clone();
    for group in groups.as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            let annotations = rule["annotations"].as_mapping_mut().unwrap();
            annotations.retain(|k, _| k.as_str() == Some("summary"));
        }
    }
    groups
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_alerts_fire_on_failures_added_to_a_real_scrape_and_the_dashboard_names_real_series() {
    tokio::time::timeout(Duration::from_secs(150), run()).await.expect("the test did not finish within 150s");
}

async fn run() {
    let (groups, dashboard) = rendered().await;
    let exprs = alert_exprs(&groups);
    assert_eq!(exprs.keys().map(String::as_str).collect::<BTreeSet<_>>(), ALERTS.into_iter().collect());
    let dir = TempDir::new("alerts").unwrap();
    let mut rules = Mapping::new();
    rules.insert("groups".into(), groups.clone());
    write_yaml(dir.path(), "rules.yaml", &Value::Mapping(rules));
    promtool(dir.path(), &["check", "rules", "rules.yaml"]).await;

    // The dashboard's queries parse (as recording rules; Grafana's $__rate_interval as 5m).
    let queries = dashboard_queries(&dashboard);
    let recording: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut m = Mapping::new();
            m.insert("record".into(), format!("dashboard:query_{i}").into());
            m.insert("expr".into(), q.replace("$__rate_interval", "5m").into());
            Value::Mapping(m)
        })
        .collect();
    let mut group = Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Value::Sequence(recording));
    let mut file = Mapping::new();
    file.insert("groups".into(), Value::Sequence(vec![Value::Mapping(group)]));
    write_yaml(dir.path(), "dashboard.yaml", &Value::Mapping(file));
    promtool(dir.path(), &["check", "rules", "dashboard.yaml"]).await;

    // Every series named is one the operator exports.
    let text = healthy_scrape().await;
    let healthy = samples(&text);
    let exported: BTreeSet<&str> = healthy.keys().map(|s| metric_name(s)).collect();
    for (what, expr) in exprs
        .iter()
        .map(|(a, e)| (a.clone(), e.clone()))
        .chain(queries.iter().map(|q| (format!("dashboard query {q}"), q.clone())))
    {
        let names = kacme_names(&expr);
        assert!(!names.is_empty(), "{what} names no kacme series: {expr}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{what} uses {name}, which the operator does not export:\n{text}"
            );
        }
    }

    // promtool unit tests over the scrape, each failure added to it.
    let constant = |value: f64| format!("{value}+0x180");
    let healthy_series: BTreeMap<String, String> = healthy.iter().map(|(s, v)| (s.clone(), constant(*v))).collect();
    let with = |changes: &[(&str, String)]| {
        let mut series = healthy_series.clone();
        for (s, values) in changes {
            series.insert(s.to_string(), values.clone());
        }
        series
    };
    let day = 86_400.0;
    let expiring = r#"namespace="apps",name="expiring",issuer_name="ca",issuer_kind="Issuer""#;
    let later = r#"namespace="apps",name="later",issuer_name="ca",issuer_kind="Issuer""#;
    let stuck = r#"namespace="apps",name="stuck",issuer_name="shared",issuer_kind="ClusterIssuer""#;
    let mut standby = healthy_series.clone();
    standby.insert("kacme_leader_election_is_leader".into(), constant(0.0));
    let mut unscraped = healthy_series.clone();
    unscraped.remove("kacme_leader_election_is_leader");
    let certificate_labels = |name: &'static str, issuer: &'static str, kind: &'static str| {
        vec![
            ("namespace", "apps"),
            ("name", name),
            ("issuer_name", issuer),
            ("issuer_kind", kind),
            ("severity", "warning"),
        ]
    };
    let expiring_labels = certificate_labels("expiring", "ca", "Issuer");
    let stuck_labels = certificate_labels("stuck", "shared", "ClusterIssuer");
    let tests = vec![
        test_group("healthy operator", &healthy_series, &[]),
        test_group(
            "a certificate expiring in 10 days (another in 30)",
            &with(&[
                (&format!("kacme_certificate_expiration_timestamp_seconds{{{expiring}}}"), constant(10.0 * day)),
                (&format!("kacme_certificate_ready_status{{{expiring},condition=\"True\"}}"), constant(1.0)),
                (&format!("kacme_certificate_expiration_timestamp_seconds{{{later}}}"), constant(30.0 * day)),
                (&format!("kacme_certificate_ready_status{{{later},condition=\"True\"}}"), constant(1.0)),
            ]),
            &[(
                "KacmeCertificateExpiringSoon",
                &expiring_labels,
                "Certificate apps/expiring expires in less than 14 days",
            )],
        ),
        test_group(
            "a certificate not Ready",
            &with(&[
                (&format!("kacme_certificate_ready_status{{{stuck},condition=\"True\"}}"), constant(0.0)),
                (&format!("kacme_certificate_ready_status{{{stuck},condition=\"False\"}}"), constant(1.0)),
                (&format!("kacme_certificate_ready_status{{{stuck},condition=\"Unknown\"}}"), constant(0.0)),
            ]),
            &[("KacmeCertificateNotReady", &stuck_labels, "Certificate apps/stuck has not been Ready for 15m")],
        ),
        test_group(
            "an Issuer and a ClusterIssuer not Ready",
            &with(&[
                (r#"kacme_issuer_ready_status{namespace="apps",name="broken",condition="True"}"#, constant(0.0)),
                (r#"kacme_issuer_ready_status{namespace="apps",name="broken",condition="False"}"#, constant(1.0)),
                (r#"kacme_clusterissuer_ready_status{name="gone",condition="True"}"#, constant(0.0)),
                (r#"kacme_clusterissuer_ready_status{name="gone",condition="Unknown"}"#, constant(1.0)),
            ]),
            &[
                (
                    "KacmeIssuerNotReady",
                    &[("namespace", "apps"), ("name", "broken"), ("issuer_kind", "Issuer"), ("severity", "warning")],
                    "Issuer apps/broken has not been Ready for 15m",
                ),
                (
                    "KacmeIssuerNotReady",
                    &[("name", "gone"), ("issuer_kind", "ClusterIssuer"), ("severity", "warning")],
                    "ClusterIssuer gone has not been Ready for 15m",
                ),
            ],
        ),
        test_group(
            "ACME orders failing every minute (finalizes now and then)",
            &with(&[
                (r#"kacme_acme_requests_total{action="order",outcome="server_error"}"#, "0+1x180".into()),
                (r#"kacme_acme_requests_total{action="finalize",outcome="client_error"}"#, "0+0.1x180".into()),
            ]),
            &[(
                "KacmeAcmeErrorsRising",
                &[("action", "order"), ("severity", "warning")],
                "ACME order requests are failing",
            )],
        ),
        test_group(
            "only a standby replica",
            &standby,
            &[("KacmeNoLeader", &[("severity", "critical")], "No kacme replica leads")],
        ),
        test_group(
            "no replica scraped",
            &unscraped,
            &[("KacmeNoLeader", &[("severity", "critical")], "No kacme replica leads")],
        ),
        test_group(
            "the certificate loop stalled",
            &with(&[(r#"kacme_controller_stalled{controller="certificate"}"#, constant(1.0))]),
            &[(
                "KacmeReconcileStalled",
                &[("controller", "certificate"), ("severity", "critical")],
                "kacme's certificate loop is stalled",
            )],
        ),
    ];
    let mut rules = Mapping::new();
    rules.insert("groups".into(), with_summaries_only(&groups));
    write_yaml(dir.path(), "summaries.yaml", &Value::Mapping(rules));
    let mut file = Mapping::new();
    file.insert("rule_files".into(), Value::Sequence(vec!["summaries.yaml".into()]));
    file.insert("evaluation_interval".into(), "1m".into());
    file.insert("tests".into(), Value::Sequence(tests));
    write_yaml(dir.path(), "tests.yaml", &Value::Mapping(file));
    let output = promtool(dir.path(), &["test", "rules", "tests.yaml"]).await;
    assert!(output.contains("SUCCESS"), "{output}");
}

#[tokio::test]
async fn values_set_the_alerts_thresholds_labels_and_which_alerts_exist() {
    let helm = Helm::offline().unwrap();
    let documents = helm
        .template(
            "kacme",
            "kacme",
            &[
                "--set",
                "prometheusRule.enabled=true,prometheusRule.labels.release=prom,prometheusRule.alertLabels.team=platform",
                "--set",
                "prometheusRule.alerts.certificateExpiringSoon.days=7,prometheusRule.alerts.noLeader.enabled=false",
                "--set",
                "prometheusRule.alerts.acmeErrorsRising.window=30m,prometheusRule.alerts.acmeErrorsRising.errors=20",
                "--set",
                "prometheusRule.alerts.certificateNotReady.for=1h,grafanaDashboard.enabled=true",
                "--set",
                "grafanaDashboard.labels.grafana_dashboard=null,grafanaDashboard.labels.dashboards=kacme",
            ],
        )
        .await
        .unwrap();
    let rule = documents.iter().find(|d| d["kind"].as_str() == Some("PrometheusRule")).unwrap();
    assert_eq!(rule["metadata"]["labels"]["release"].as_str(), Some("prom"));
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap();
    let by_name = |name: &str| rules.iter().find(|r| r["alert"].as_str() == Some(name));
    assert!(by_name("KacmeNoLeader").is_none(), "a disabled alert is left out");
    let expiring = by_name("KacmeCertificateExpiringSoon").unwrap();
    assert!(expiring["expr"].as_str().unwrap().contains("< 7 * 86400"), "{expiring:?}");
    assert_eq!(expiring["labels"]["team"].as_str(), Some("platform"));
    let errors = by_name("KacmeAcmeErrorsRising").unwrap()["expr"].as_str().unwrap().to_string();
    assert!(errors.contains("[30m]") && errors.ends_with("> 20"), "{errors}");
    assert_eq!(by_name("KacmeCertificateNotReady").unwrap()["for"].as_str(), Some("1h"));
    let config_map = documents.iter().find(|d| d["kind"].as_str() == Some("ConfigMap")).unwrap();
    let labels = &config_map["metadata"]["labels"];
    assert!(labels["grafana_dashboard"].is_null() && labels["dashboards"].as_str() == Some("kacme"), "{labels:?}");
}
