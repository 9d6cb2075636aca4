//! Hostile input from tenants against a running operator: malformed Ingress annotations and hosts, Issuers
//! whose fields the CRD admits but no CA can work with, and a Secret template the apiserver would refuse on the
//! Secret. After all of them at once, the operator process is still running, each bad object is reported
//! where its owner looks (an Event on the Ingress, a condition on the Issuer or Certificate), nothing is
//! retried in a hot loop, and an unrelated Certificate and a well-formed Ingress still get their certificates.
//!
//! (What the CRD refuses at admission, and that annotations refuse exactly the same values, is proven in
//! tests/environment.rs; a hostile CA is tests/hostile_ca.rs.)

mod common;

use common::operator_env::{OperatorEnv, condition};
use common::within;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kacme::api::{Certificate, Issuer};
use kacme_testenv::{PebbleOptions, poll_until};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "apps";

fn ingress(name: &str, annotations: serde_json::Value, hosts: &[&str]) -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "ingressClassName": "public",
            "rules": [{"host": "web.example.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}],
            "tls": [{"secretName": format!("{name}-tls"), "hosts": hosts}],
        },
    }))
    .expect("an Ingress")
}

fn certificate(name: &str, issuer: &str, extra: serde_json::Value) -> Certificate {
    let mut spec = json!({"secretName": format!("{name}-tls"), "issuerRef": {"name": issuer},
        "dnsNames": [format!("{name}.example.test")]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({"apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}))
    .expect("a Certificate")
}

/// Events about `name` in the namespace: (reason, message).
async fn events_about(env: &OperatorEnv, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let list = events.list(&params).await.expect("listing Events");
    list.items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tenant_objects_cost_only_themselves() {
    within(240, async {
        let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.expect("environment");
        env.apply(&env.issuer_yaml(NAMESPACE, "ca")).await.expect("the good Issuer");
        let ingresses: Api<Ingress> = Api::namespaced(env.client.clone(), NAMESPACE);
        let issuers: Api<Issuer> = Api::namespaced(env.client.clone(), NAMESPACE);
        let certificates = env.certificates(NAMESPACE);
        let post = PostParams::default();
        let huge = "9".repeat(200 * 1024);
        let many_hosts: Vec<String> = (0..150).map(|i| format!("h{i}.example.test")).collect();
        let many_hosts: Vec<&str> = many_hosts.iter().map(String::as_str).collect();
        // Kubernetes admits labels of any length in Ingress hosts; DNS does not.
        let long_host = format!("{}.example.test", "a".repeat(100));

        // (Ingress, annotations, hosts, what the Event on the Ingress must say)
        let bad_ingresses: Vec<(&str, serde_json::Value, Vec<&str>, &str)> = vec![
            (
                "exponent",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/duration": "1e300h"}),
                vec!["a.example.test"],
                "kacme.dev/duration",
            ),
            (
                "infinite",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/duration": "infh"}),
                vec!["a.example.test"],
                "kacme.dev/duration",
            ),
            (
                "overflow",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/renew-before": "99999999999999999999999h"}),
                vec!["a.example.test"],
                "kacme.dev/renew-before",
            ),
            (
                "huge-value",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/duration": huge}),
                vec!["a.example.test"],
                "kacme.dev/duration",
            ),
            (
                "renew-after-expiry",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/duration": "1h", "kacme.dev/renew-before": "2h"}),
                vec!["a.example.test"],
                "kacme.dev/renew-before",
            ),
            (
                "algorithm",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/private-key-algorithm": "dsa"}),
                vec!["a.example.test"],
                "kacme.dev/private-key-algorithm",
            ),
            (
                "usages",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/usages": "server auth,,flying"}),
                vec!["a.example.test"],
                "kacme.dev/usages",
            ),
            (
                "both-issuers",
                json!({"kacme.dev/issuer": "ca", "kacme.dev/cluster-issuer": "ca"}),
                vec!["a.example.test"],
                "kacme.dev/cluster-issuer",
            ),
            ("issuer-name", json!({"kacme.dev/issuer": "Not_A_Name"}), vec!["a.example.test"], "kacme.dev/issuer"),
            ("bad-host", json!({"kacme.dev/issuer": "ca"}), vec!["web.1"], "web.1"),
            ("long-host", json!({"kacme.dev/issuer": "ca"}), vec![long_host.as_str()], "not a DNS name"),
            ("many-hosts", json!({"kacme.dev/issuer": "ca"}), many_hosts.clone(), "150"),
        ];
        for (name, annotations, hosts, _) in &bad_ingresses {
            ingresses
                .create(&post, &ingress(name, annotations.clone(), hosts))
                .await
                .unwrap_or_else(|e| panic!("Ingress {name}: {e}"));
        }

        // Issuers the CRD admits that no CA can work with.
        let good_issuer: serde_json::Value =
            serde_yaml::from_str(&env.issuer_yaml(NAMESPACE, "x")).expect("Issuer YAML");
        let issuer_with = |name: &str, change: serde_json::Value| -> Issuer {
            let mut issuer = good_issuer.clone();
            issuer["metadata"]["name"] = json!(name);
            issuer["spec"]["acme"]["privateKeySecretRef"]["name"] = json!(format!("{name}-account"));
            if let (Some(acme), Some(change)) = (issuer["spec"]["acme"].as_object_mut(), change.as_object()) {
                for (key, value) in change {
                    if value.is_null() {
                        acme.remove(key);
                    } else {
                        acme.insert(key.clone(), value.clone());
                    }
                }
            }
            serde_json::from_value(issuer).expect("an Issuer")
        };
        let bad_issuers: Vec<(&str, serde_json::Value)> = vec![
            ("garbage-bundle", json!({"caBundle": "not a PEM bundle at all"})),
            ("broken-pem", json!({"caBundle": "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"})),
            ("nothing-listens", json!({"server": "https://127.0.0.1:1/dir"})),
            (
                "missing-eab-secret",
                json!({"externalAccountBinding": {"keyID": "kid", "keySecretRef": {"name": "nowhere"}}}),
            ),
            ("junk-account-key", json!({})),
        ];
        // An account key Secret that kacme does not own and cannot read: it must be reported, never overwritten.
        let mut junk_key = Secret::default();
        junk_key.metadata.name = Some("junk-account-key-account".into());
        junk_key.string_data = Some(
            [(
                "tls.key".to_string(),
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n".to_string(),
            )]
            .into(),
        );
        let junk_key = env.secrets(NAMESPACE).create(&post, &junk_key).await.expect("the junk key Secret");
        for (name, change) in &bad_issuers {
            issuers
                .create(&post, &issuer_with(name, change.clone()))
                .await
                .unwrap_or_else(|e| panic!("Issuer {name}: {e}"));
            certificates
                .create(&post, &certificate(&format!("on-{name}"), name, json!({})))
                .await
                .expect("a Certificate on a bad Issuer");
        }

        // A Secret template the apiserver would refuse on the Secret is refused on the Certificate, at admission,
        // rather than after an issuance that could never be stored.
        let bad_template = certificate(
            "bad-template",
            "ca",
            json!({"secretTemplate": {"labels": {"team": "not a valid label value!"}}}),
        );
        match certificates.create(&post, &bad_template).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
            other => panic!("a Secret template with an invalid label was not refused: {other:?}"),
        }

        // Meanwhile, everyone else is served in the usual time.
        let started = Instant::now();
        certificates
            .create(&post, &certificate("unrelated", "ca", json!({})))
            .await
            .expect("the unrelated Certificate");
        ingresses
            .create(&post, &ingress("good", json!({"kacme.dev/issuer": "ca"}), &["good.example.test"]))
            .await
            .expect("the good Ingress");
        env.wait_ready(NAMESPACE, "unrelated", Duration::from_secs(60))
            .await
            .expect("the unrelated Certificate is Ready");
        env.wait_ready(NAMESPACE, "good-tls", Duration::from_secs(60))
            .await
            .expect("the good Ingress's Certificate is Ready");
        eprintln!("unrelated Certificate and good Ingress Ready {:?} after the hostile objects", started.elapsed());

        for (name, _, _, needle) in &bad_ingresses {
            let events = poll_until(
                &format!("an Event on Ingress {name}"),
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async {
                    let events = events_about(&env, name).await;
                    Ok(if events.iter().any(|(_, m)| m.contains(needle)) {
                        Ok(events)
                    } else {
                        Err(format!("{events:?}"))
                    })
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Ingress {name}: {e:#}"));
            let (reason, message) = events.iter().find(|(_, m)| m.contains(needle)).expect("found above");
            assert!(
                message.len() < 2048,
                "Ingress {name}: the Event quotes a bounded message, not the whole value: {} bytes",
                message.len()
            );
            eprintln!("Ingress {name}: {reason}: {message}");
            assert!(
                certificates.get_opt(&format!("{name}-tls")).await.expect("get").is_none(),
                "Ingress {name}: no Certificate"
            );
        }

        for (name, _) in &bad_issuers {
            let issuer = poll_until(
                &format!("Issuer {name} Ready=False"),
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async {
                    let issuer = issuers.get(name).await?;
                    let ready =
                        issuer.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
                    Ok(match ready {
                        Some(c) if c.status == "False" => Ok(c),
                        other => Err(format!("{other:?}")),
                    })
                },
            )
            .await
            .unwrap_or_else(|e| panic!("Issuer {name}: {e:#}"));
            eprintln!("Issuer {name}: Ready=False {}: {}", issuer.reason, issuer.message);
            assert!(!issuer.message.is_empty());
            assert!(!issuer.message.contains("AAAA"), "no key material in the message");
            let on = format!("on-{name}");
            let certificate = env
                .wait_certificate(NAMESPACE, &on, Duration::from_secs(30), "IssuerNotReady", |c| {
                    condition(c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "IssuerNotReady")
                })
                .await
                .expect("the Certificate on a bad Issuer waits for it");
            assert!(certificate.status.and_then(|s| s.order).is_none(), "{on}: no order on a broken Issuer");
        }
        let after = env.secrets(NAMESPACE).get("junk-account-key-account").await.expect("the junk key Secret");
        assert_eq!(
            after.metadata.resource_version, junk_key.metadata.resource_version,
            "a Secret kacme cannot read is never overwritten"
        );

        // No hot loop: once everything has been reported, the bad objects cost a handful of reconciles each.
        let reconciles = || async {
            let (_, metrics) = env.operator().expect("an operator").get("/metrics").await.expect("/metrics");
            metrics
                .lines()
                .filter(|l| l.starts_with("kacme_reconcile_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let before = reconciles().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = reconciles().await;
        let objects = bad_ingresses.len() + 2 * bad_issuers.len();
        eprintln!("{} reconciles in 10s for {objects} bad objects", after - before);
        assert!(after - before <= (objects * 8) as f64, "{before} -> {after} reconciles in 10s: a hot loop");

        let operator = env.operator().expect("an operator was started");
        assert!(!operator.exited(), "the operator is still running:\n{}", operator.log_tail(80));
        let log = operator.log();
        assert!(!log.contains("panicked"), "nothing panicked:\n{}", operator.log_tail(80));
    })
    .await
}
