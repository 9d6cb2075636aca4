//! Tenancy on a real control plane: two tenants share a ClusterIssuer whose policy gives each namespace only
//! the names `{label}.{namespace}.svc`. Tenant A's attempts to obtain tenant B's names (a Certificate, an
//! Ingress annotation, a Pod annotation through the admission webhook) and everything else outside the policy
//! are refused where A looks, and the CA receives no order for them (counted by a pass-through proxy in front
//! of Pebble); B's own request, and A's own, are issued; a namespace outside the selector gets nothing.

mod common;

use common::operator_env::{Ca, OperatorEnv, condition};
use common::within;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use kacme::api::Certificate;
use kacme_testenv::{HostileAcme, HostileBehaviour, PebbleOptions, poll_until};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Arguments that serve the webhook on the environment's own loopback address.
fn webhook_args(env_ip: std::net::IpAddr) -> Vec<String> {
    let port = std::net::TcpListener::bind((env_ip, 0)).expect("a free port").local_addr().expect("an address").port();
    vec![
        "--webhook-address".into(),
        format!("{env_ip}:{port}"),
        "--webhook-url".into(),
        format!("https://{env_ip}:{port}/mutate-pods"),
    ]
}

fn cluster_issuer_yaml(server: &str, bundle: &str) -> String {
    let bundle: String = bundle.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        r#"apiVersion: kacme.dev/v1alpha1
kind: ClusterIssuer
metadata:
  name: corp
spec:
  acme:
    server: {server}
    caBundle: |
{bundle}    privateKeySecretRef:
      name: corp-account
    solvers:
    - http01:
        ingress:
          ingressClassName: kacme-test
  policy:
    namespaceSelector:
      matchExpressions:
      - key: tenant
        operator: Exists
    dnsNames:
    - "{{label}}.{{namespace}}.svc"
    ipAddresses:
    - 10.20.0.0/16
    maxDuration: 720h
    usages: [digital signature, key encipherment, server auth, client auth]
"#
    )
}

fn certificate(namespace: &str, name: &str, extra: serde_json::Value) -> Certificate {
    let mut spec = json!({"secretName": format!("{name}-tls"), "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({"apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec}))
    .expect("a Certificate")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_gets_only_its_own_names_whichever_way_it_asks() {
    within(300, async {
        // The CA's orders are counted exactly below, so Pebble must not reject nonces at random: a retried
        // newOrder (badNonce) would count twice (CI saw 3 for 2 Certificates).
        let options = PebbleOptions { nonce_reject_percent: 0, ..PebbleOptions::default() };
        let mut env = OperatorEnv::with_pebble(options).await.expect("environment");
        env.kill_operator();
        env.extra_args = webhook_args(env.ca.ip());
        env.start_operator().expect("the operator with its webhook");
        let Ca::Pebble(pebble) = &env.ca else { panic!("Pebble") };
        let ca = HostileAcme::start(pebble, HostileBehaviour::PassThrough).await.expect("the counting proxy");

        let kubectl = |args: Vec<String>| {
            let control_plane = &env.control_plane;
            async move { control_plane.kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
        };
        for (namespace, tenant) in [("team-a", Some("a")), ("team-b", Some("b")), ("team-c", None)] {
            env.control_plane.create_namespace(namespace).await.expect("namespace");
            let mut labels = vec!["kacme.dev/webhook=enabled".to_string()];
            labels.extend(tenant.map(|t| format!("tenant={t}")));
            for label in labels {
                kubectl(vec!["label".into(), "namespace".into(), namespace.into(), label]).await.expect("label");
            }
        }
        env.apply(&cluster_issuer_yaml(ca.directory_url(), &ca.ca_bundle_pem())).await.expect("the ClusterIssuer");
        let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
        poll_until("the webhook configuration with a caBundle", WAIT, POLL, || async {
            Ok(match configurations.get_opt("kacme").await? {
                Some(c) if kacme::webhook::configuration::current_ca_bundle(&c).is_some_and(|b| !b.is_empty()) => {
                    Ok(())
                }
                _ => Err("not yet".to_string()),
            })
        })
        .await
        .expect("the webhook is configured");

        let post = PostParams::default();
        let team_a = env.certificates("team-a");
        // Tenant A asks for what it may not have, through Certificates...
        let refused: Vec<(&str, serde_json::Value, &str)> = vec![
            ("steal", json!({"dnsNames": ["api.team-b.svc"]}), "\"api.team-b.svc\""),
            ("deeper", json!({"dnsNames": ["x.api.team-a.svc"]}), "\"x.api.team-a.svc\""),
            ("suffix", json!({"dnsNames": ["api.team-a.svc.cluster.local"]}), "api.team-a.svc.cluster.local"),
            ("address", json!({"ipAddresses": ["10.30.0.1"]}), "\"10.30.0.1\""),
            ("lifetime", json!({"dnsNames": ["long.team-a.svc"], "duration": "1000h"}), "policy.maxDuration is 720h"),
            ("signing", json!({"dnsNames": ["sign.team-a.svc"], "usages": ["code signing"]}), "\"code signing\""),
        ];
        for (name, extra, _) in &refused {
            team_a.create(&post, &certificate("team-a", name, extra.clone())).await.expect("admitted");
        }
        // ...an Ingress annotation...
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": "steal", "namespace": "team-a", "annotations": {"kacme.dev/cluster-issuer": "corp"}},
            "spec": {"tls": [{"secretName": "stolen-tls", "hosts": ["api.team-b.svc"]}],
                "rules": [{"host": "api.team-b.svc", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
        }))
        .expect("an Ingress");
        Api::<Ingress>::namespaced(env.client.clone(), "team-a").create(&post, &ingress).await.expect("the Ingress");
        // ...and a Pod annotation, refused at admission.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "steal", "namespace": "team-a",
                "annotations": {"kacme.dev/names": "api.team-b.svc", "kacme.dev/cluster-issuer": "corp"}},
            "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]},
        }))
        .expect("a Pod");
        let denied = Api::<Pod>::namespaced(env.client.clone(), "team-a").create(&post, &pod).await;
        let message = denied.expect_err("the webhook refuses the Pod").to_string();
        eprintln!("Pod: {message}");
        assert!(message.contains("api.team-b.svc") && message.contains("{label}.{namespace}.svc"), "{message}");
        // A namespace outside the selector gets nothing, even its own names.
        env.certificates("team-c")
            .create(&post, &certificate("team-c", "own", json!({"dnsNames": ["own.team-c.svc"]})))
            .await
            .expect("admitted");

        // Each tenant's own requests are issued.
        team_a
            .create(&post, &certificate("team-a", "own", json!({"dnsNames": ["own.team-a.svc"]})))
            .await
            .expect("A's own");
        env.certificates("team-b")
            .create(
                &post,
                &certificate(
                    "team-b",
                    "api",
                    json!({"dnsNames": ["api.team-b.svc"], "usages": ["server auth", "client auth"]}),
                ),
            )
            .await
            .expect("B's own");
        env.wait_ready("team-b", "api", WAIT).await.expect("B's own Certificate is Ready");
        env.wait_ready("team-a", "own", WAIT).await.expect("A's own Certificate is Ready");

        for (namespace, name, fragment) in refused
            .iter()
            .map(|(name, _, fragment)| ("team-a", *name, *fragment))
            .chain([("team-c", "own", "namespace team-c may not use ClusterIssuer corp")])
        {
            let certificate = env
                .wait_certificate(namespace, name, WAIT, "NotPermitted", |c| {
                    condition(c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "NotPermitted")
                })
                .await
                .expect("refused");
            let (_, _, message) = condition(&certificate, "Ready").expect("Ready");
            eprintln!("{namespace}/{name}: {message}");
            assert!(message.contains(fragment), "{namespace}/{name}: {fragment:?} missing from {message}");
            assert!(certificate.status.and_then(|s| s.order).is_none(), "{namespace}/{name}: no order");
            let reasons = env.event_reasons(namespace, name).await.expect("Events");
            assert!(reasons.iter().any(|r| r == "NotPermitted"), "{namespace}/{name}: {reasons:?}");
        }
        let events: Api<Event> = Api::namespaced(env.client.clone(), "team-a");
        let ingress_events = poll_until("the Ingress's NotPermitted Event", WAIT, POLL, || async {
            let list = events.list(&ListParams::default().fields("involvedObject.name=steal")).await?.items;
            let found: Vec<String> = list
                .into_iter()
                .filter(|e| {
                    e.involved_object.kind.as_deref() == Some("Ingress") && e.reason.as_deref() == Some("NotPermitted")
                })
                .filter_map(|e| e.message)
                .collect();
            Ok(if found.is_empty() { Err("none yet".to_string()) } else { Ok(found) })
        })
        .await
        .expect("an Event on the Ingress");
        eprintln!("Ingress: {ingress_events:?}");
        assert!(ingress_events[0].contains("api.team-b.svc"), "{ingress_events:?}");
        assert!(team_a.get_opt("stolen-tls").await.expect("get").is_none(), "no Certificate for the Ingress");

        // The CA saw exactly the two permitted orders.
        let orders = ca.handle().request_counts().get("POST /order-plz").copied().unwrap_or(0);
        eprintln!("CA requests: {:?}", ca.handle().request_counts());
        assert_eq!(orders, 2, "orders at the CA: only the two permitted Certificates");
        let operator = env.operator().expect("an operator");
        assert!(!operator.exited(), "the operator is running:\n{}", operator.log_tail(60));
    })
    .await
}

/// With `accountPerNamespace`, two namespaces asking for the same name at a CA that reuses every valid
/// authorization of an account (Pebble with `PEBBLE_AUTHZREUSE=100`) each get their own account, with its key in
/// kacme's namespace, and each answers a challenge: neither rides on the other's validation.
#[tokio::test(flavor = "multi_thread")]
async fn with_an_account_per_namespace_no_namespace_rides_on_another_namespaces_authorizations() {
    within(240, async {
        let options =
            PebbleOptions { authz_reuse_percent: Some(100), nonce_reject_percent: 0, ..PebbleOptions::default() };
        let env = OperatorEnv::with_pebble(options).await.expect("environment");
        let Ca::Pebble(pebble) = &env.ca else { panic!("Pebble") };
        let yaml = cluster_issuer_yaml(pebble.directory_url(), &pebble.ca_bundle_pem());
        let (without_policy, _) = yaml.split_once("  policy:\n").expect("the fixture has a policy");
        let yaml = without_policy.replace("    solvers:\n", "    accountPerNamespace: true\n    solvers:\n");
        env.apply(&yaml).await.expect("the ClusterIssuer");
        for (answered, namespace) in [(1u64, "team-a"), (2, "team-b")] {
            env.control_plane.create_namespace(namespace).await.expect("namespace");
            let shared = json!({"dnsNames": ["shared.example.test"]});
            env.certificates(namespace)
                .create(&PostParams::default(), &certificate(namespace, "shared", shared))
                .await
                .expect("create");
            env.wait_ready(namespace, "shared", WAIT).await.unwrap_or_else(|e| panic!("{e:#}\n{}", env.operator_log()));
            // Its order's authorization was pending (not another account's, reused): it answered a challenge.
            let counts = pebble.request_counts().expect("Pebble's log");
            assert_eq!(counts.get("POST /chalZ/").copied(), Some(answered), "{namespace} presented its own challenge");
        }

        let counts = pebble.request_counts().expect("Pebble's log");
        eprintln!("CA requests: {counts:?}");
        assert_eq!(counts.get("POST /chalZ/").copied(), Some(2), "each namespace answered its own challenge");
        for namespace in ["team-a", "team-b"] {
            let key =
                env.secrets("kacme").get(&format!("corp-account-{namespace}")).await.expect("the namespace's key");
            assert_eq!(
                key.metadata.annotations.unwrap_or_default().get("kacme.dev/account-namespace"),
                Some(&namespace.to_string())
            );
            assert!(
                env.secrets(namespace).list(&ListParams::default()).await.expect("list").items.iter().all(|s| !s
                    .metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("corp-account")),
                "no account key in the tenant's namespace"
            );
        }
    })
    .await
}

/// A namespaced Issuer for `server` with `acme_extra` YAML lines under `acme:` and an ingress solver with
/// `ingress_extra` lines under `ingress:`.
fn issuer_yaml(name: &str, server: &str, bundle: &str, acme_extra: &str, ingress_extra: &str) -> String {
    let bundle: String = bundle.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n  acme:\n    \
         server: {server}\n    caBundle: |\n{bundle}    privateKeySecretRef:\n      name: {name}-account\n{acme_extra}    \
         solvers:\n    - http01:\n        ingress:\n          ingressClassName: kacme-test\n{ingress_extra}"
    )
}

/// `https://host:port/` of a directory URL: the URL prefix that allows one server.
fn server_prefix(directory_url: &str) -> String {
    let rest = directory_url.strip_prefix("https://").expect("an https URL");
    format!("https://{}/", rest.split('/').next().expect("a host"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_cannot_make_the_operator_its_deputy() {
    within(240, async {
        let mut env = OperatorEnv::with_pebble(PebbleOptions::default()).await.expect("environment");
        let Ca::Pebble(pebble) = &env.ca else { panic!("Pebble") };
        // One counting proxy per Issuer, so that each Issuer's requests are seen apart.
        let mut proxies = Vec::new();
        for _ in 0..4 {
            proxies.push(HostileAcme::start(pebble, HostileBehaviour::PassThrough).await.expect("a counting proxy"));
        }
        let [fine, snippet, insecure, elsewhere] = &proxies[..] else { panic!("four proxies") };
        let allowed: Vec<String> = [fine, snippet, insecure].iter().map(|p| server_prefix(p.directory_url())).collect();
        env.kill_operator();
        env.extra_args = vec![format!("--issuer-allowed-servers={}", allowed.join(","))];
        env.start_operator().expect("the operator with its issuer rules");
        env.control_plane.create_namespace("team-a").await.expect("namespace");

        let annotation = |key: &str| format!("          ingressTemplate:\n            metadata:\n              annotations:\n                {key}: \"x\"\n");
        let routing = format!(
            "{}          podTemplate:\n            metadata:\n              labels:\n                team: a\n",
            annotation("nginx.ingress.kubernetes.io/whitelist-source-range")
        );
        // (issuer, server, acme lines, ingress lines, expected (status, reason), words of the message)
        let cases: Vec<(&str, &HostileAcme, String, String, (&str, &str), &str)> = vec![
            ("fine", fine, String::new(), routing, ("True", "ACMEAccountRegistered"), ""),
            (
                "snippet",
                snippet,
                String::new(),
                annotation("nginx.ingress.kubernetes.io/server-snippet"),
                ("False", "SolverTemplateNotAllowed"),
                "nginx.ingress.kubernetes.io/server-snippet",
            ),
            (
                "insecure",
                insecure,
                "    skipTLSVerify: true\n".into(),
                String::new(),
                ("False", "SkipTLSVerifyNotAllowed"),
                "skip TLS verification",
            ),
            ("elsewhere", elsewhere, String::new(), String::new(), ("False", "ServerNotAllowed"), "--issuer-allowed-servers"),
        ];
        for (name, proxy, acme_extra, ingress_extra, _, _) in &cases {
            let yaml = issuer_yaml(name, proxy.directory_url(), &proxy.ca_bundle_pem(), acme_extra, ingress_extra);
            env.apply(&yaml).await.expect("an Issuer");
        }
        let issuers: Api<kacme::api::Issuer> = Api::namespaced(env.client.clone(), "team-a");
        for (name, proxy, _, _, (status, reason), words) in &cases {
            let ready = poll_until(&format!("Issuer {name} {status} {reason}"), WAIT, POLL, || async {
                let issuer = issuers.get(name).await?;
                let ready = issuer.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
                Ok(match ready {
                    Some(c) if c.status == *status && c.reason == *reason => Ok(c),
                    other => Err(format!("{other:?}")),
                })
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}\noperator log:\n{}", env.operator_log()));
            eprintln!("Issuer {name}: Ready={} {}: {}", ready.status, ready.reason, ready.message);
            assert!(ready.message.contains(words), "Issuer {name}: the message names {words:?}: {}", ready.message);
            if *status == "False" {
                assert_eq!(proxy.handle().requests(), 0, "Issuer {name}: no request reached its server");
            }
        }

        // A Certificate of the refused Issuer waits, with no solver object; one of the allowed Issuer is issued
        // through its templates.
        let team_a = env.certificates("team-a");
        let post = PostParams::default();
        for (name, issuer) in [("through-snippet", "snippet"), ("through-fine", "fine")] {
            let certificate: Certificate = serde_json::from_value(json!({
                "apiVersion": "kacme.dev/v1alpha1", "kind": "Certificate",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"secretName": format!("{name}-tls"), "issuerRef": {"name": issuer},
                    "dnsNames": [format!("{name}.team-a.svc")]},
            }))
            .expect("a Certificate");
            team_a.create(&post, &certificate).await.expect("a Certificate");
        }
        env.wait_ready("team-a", "through-fine", WAIT).await.expect("the allowed Issuer's Certificate is issued");
        let waiting = poll_until("the refused Issuer's Certificate waiting", WAIT, POLL, || async {
            let certificate = team_a.get("through-snippet").await?;
            Ok(match condition(&certificate, "Ready") {
                Some((status, reason, message))
                    if status == "False"
                        && reason == "IssuerNotReady"
                        && message.contains("nginx.ingress.kubernetes.io/server-snippet") =>
                {
                    Ok(message)
                }
                other => Err(format!("{other:?}")),
            })
        })
        .await
        .expect("the refused Issuer's Certificate names the refused key");
        eprintln!("Certificate through-snippet: {waiting}");
        let ingresses = Api::<Ingress>::namespaced(env.client.clone(), "team-a").list(&ListParams::default()).await;
        let solver_for_snippet = ingresses
            .expect("Ingresses")
            .items
            .iter()
            .any(|i| i.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("nginx.ingress.kubernetes.io/server-snippet")));
        assert!(!solver_for_snippet, "no Ingress carries the snippet");
        assert_eq!(snippet.handle().requests(), 0, "the refused Issuer's server never heard from kacme");
        assert_eq!(elsewhere.handle().requests(), 0, "nor did the server outside the allow-list");
        let operator = env.operator().expect("an operator");
        assert!(!operator.exited(), "the operator is running:\n{}", operator.log_tail(60));
    })
    .await
}
