//! HTTP-01 through the Gateway API on the stand-in: the `gatewayHTTPRoute` solver's HTTPRoute, the
//! stand-in acting as the controller of every Gateway (it writes the routes' `status.parents` and routes
//! accepted ones), Pebble validating through it.
//!
//! Needs the binaries and the Gateway API CRDs that `tests/env/install` puts in its cache.

mod common;

use common::operator_env::{OperatorEnv, condition};
use common::within;
use kacme::api::names::TLS_CRT;
use kacme::gateway_api::HTTPRoute;
use kacme::pki::parse_chain;
use kacme_testenv::{PebbleOptions, REFUSE_ROUTES_ANNOTATION};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn gateway_yaml(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: apps\n{annotations}spec:\n  gatewayClassName: stand-in\n  listeners:\n  - name: http\n    port: 80\n    protocol: HTTP\n"
    )
}

/// An Issuer whose solver attaches its routes to `parent_refs` (YAML list items, indented for the place).
fn route_issuer_yaml(env: &OperatorEnv, parent_refs: &str) -> String {
    env.issuer_yaml("apps", "gw").replace(
        "    - http01:\n        ingress:\n          ingressClassName: kacme-test\n",
        &format!("    - http01:\n        gatewayHTTPRoute:\n          labels:\n            routes: acme\n          parentRefs:\n{parent_refs}"),
    )
}

fn certificate_yaml(name: &str, names: &[&str], ip: &str) -> String {
    let names: String = names.iter().map(|n| format!("  - {n}\n")).collect();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: gw\n  dnsNames:\n{names}  ipAddresses:\n  - {ip}\n"
    )
}

fn routes(env: &OperatorEnv) -> Api<HTTPRoute> {
    Api::namespaced(env.client.clone(), "apps")
}

/// Records every solver HTTPRoute seen in `apps` (by name) until dropped.
fn record_routes(env: &OperatorEnv) -> (Arc<Mutex<BTreeMap<String, HTTPRoute>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let api = routes(env);
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&ListParams::default().labels("kacme.dev/solver")).await {
                let mut seen = record.lock().unwrap();
                for route in list {
                    seen.insert(route.name_any(), route);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_issued_through_solver_httproutes_that_the_gateway_accepted() {
    within(180, async {
        let env = OperatorEnv::with_pebble_and_gateway_api(PebbleOptions::default(), &[]).await.unwrap();
        env.apply(&gateway_yaml("web", "")).await.unwrap();
        // The same listener twice, and the namespace spelled out once: the route names it once.
        let parents = "          - name: web\n            sectionName: http\n          - name: web\n            namespace: apps\n            sectionName: http\n";
        env.apply(&route_issuer_yaml(&env, parents)).await.unwrap();
        let (seen, recorder) = record_routes(&env);
        let started = Instant::now();
        let ip = env.ca.ip().to_string();
        env.apply(&certificate_yaml("web", &["web.example.test", "api.example.test"], &ip)).await.unwrap();
        env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
        eprintln!("HTTPRoute solver: apply -> Ready in {:.2}s", started.elapsed().as_secs_f64());
        recorder.abort();

        let secret = env.secrets("apps").get("web-tls").await.unwrap();
        let leaf = parse_chain(&secret.data.unwrap()[TLS_CRT].0).unwrap().leaf;
        let mut names = leaf.dns_names.clone();
        names.sort();
        assert_eq!(names, ["api.example.test", "web.example.test"]);
        assert_eq!(leaf.ip_addresses, [env.ca.ip()]);

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "one route per identifier: {:?}", seen.keys());
        let mut hostnames: Vec<Vec<String>> = seen.values().map(|r| r.spec.hostnames.clone()).collect();
        hostnames.sort();
        assert_eq!(hostnames, [vec![], vec!["api.example.test".to_string()], vec!["web.example.test".to_string()]]);
        for route in seen.values() {
            // The apiserver fills in group and kind.
            let parents: Vec<(&str, Option<&str>, Option<&str>)> = route
                .spec
                .parent_refs
                .iter()
                .map(|p| (p.name.as_str(), p.namespace.as_deref(), p.section_name.as_deref()))
                .collect();
            assert_eq!(parents, [("web", None, Some("http"))], "{}", route.name_any());
            assert_eq!(route.labels().get("routes").map(String::as_str), Some("acme"));
            let owner = &route.owner_references()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Certificate", "web"));
            let path = route.spec.rules[0].matches[0].path.clone().unwrap();
            assert_eq!(path.type_.as_deref(), Some("Exact"));
            assert!(path.value.unwrap().starts_with("/.well-known/acme-challenge/"));
        }
        env.wait_no_solver_objects("apps").await.unwrap();
        let left = routes(&env).list(&ListParams::default()).await.unwrap().items;
        assert!(left.is_empty(), "solver routes left: {:?}", left.iter().map(|r| r.name_any()).collect::<Vec<_>>());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_refuses_the_solver_route_is_named_on_the_certificate_until_the_deadline() {
    within(180, async {
        let env =
            OperatorEnv::with_pebble_and_gateway_api(PebbleOptions::default(), &["--authorization-deadline", "6s"])
                .await
                .unwrap();
        let refusal = format!("  annotations:\n    {REFUSE_ROUTES_ANNOTATION}: routes from apps are not allowed\n");
        env.apply(&gateway_yaml("locked", &refusal)).await.unwrap();
        env.apply(&route_issuer_yaml(&env, "          - name: locked\n")).await.unwrap();
        let ip = env.ca.ip().to_string();
        env.apply(&certificate_yaml("web", &["web.example.test"], &ip)).await.unwrap();

        // While it waits, Issuing says which Gateway refuses the route and why.
        let waiting = env
            .wait_certificate("apps", "web", Duration::from_secs(30), "Issuing names the refusing Gateway", |c| {
                condition(c, "Issuing").is_some_and(|(_, _, message)| message.contains("NotAllowedByListeners"))
            })
            .await
            .unwrap();
        let (_, _, message) = condition(&waiting, "Issuing").unwrap();
        assert!(
            message.contains("Gateway apps/locked does not accept HTTPRoute")
                && message.contains("routes from apps are not allowed"),
            "{message}"
        );
        // The CA was never asked: no authorization was submitted.
        let order = waiting.status.as_ref().and_then(|s| s.order.clone());
        let order = serde_json::to_value(order).unwrap();
        assert!(!order.to_string().contains("\"Submitted\""), "{order}");

        // At the deadline the attempt fails, with the Gateway's verdict, and the solver objects go.
        let failed = env
            .wait_certificate("apps", "web", Duration::from_secs(40), "the attempt fails at the deadline", |c| {
                condition(c, "Ready").is_some_and(|(status, reason, _)| status == "False" && reason == "SolverNotReady")
            })
            .await
            .unwrap();
        let (_, _, message) = condition(&failed, "Ready").unwrap();
        assert!(message.contains("NotAllowedByListeners"), "{message}");
        env.wait_no_solver_objects("apps").await.unwrap();
        let left = routes(&env).list(&ListParams::default()).await.unwrap().items;
        assert!(left.is_empty(), "solver routes left: {:?}", left.iter().map(|r| r.name_any()).collect::<Vec<_>>());
    })
    .await
}

/// A Gateway annotated `kacme.dev/issuer` with an HTTP listener (where the solver routes attach) and HTTPS
/// listeners: `https` (shop.example.test, Secret shop-tls), `api` (api.example.test, Secret api-tls in the
/// namespace `certs`) and `taken` (a Secret whose Certificate name someone else holds).
fn annotated_gateway_yaml(https_listener: bool) -> String {
    let https = if https_listener {
        "  - name: https\n    port: 443\n    protocol: HTTPS\n    hostname: shop.example.test\n    tls:\n      certificateRefs:\n      - name: shop-tls\n"
    } else {
        ""
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: shop\n  namespace: apps\n  annotations:\n    kacme.dev/issuer: gw\nspec:\n  gatewayClassName: stand-in\n  listeners:\n  - name: http\n    port: 80\n    protocol: HTTP\n{https}  - name: api\n    port: 443\n    protocol: HTTPS\n    hostname: api.example.test\n    tls:\n      certificateRefs:\n      - name: api-tls\n        namespace: certs\n  - name: taken\n    port: 8443\n    protocol: HTTPS\n    hostname: taken.example.test\n    tls:\n      certificateRefs:\n      - name: taken\n"
    )
}

const REFERENCE_GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: gateways-from-apps\n  namespace: certs\nspec:\n  from:\n  - group: gateway.networking.k8s.io\n    kind: Gateway\n    namespace: apps\n  to:\n  - group: \"\"\n    kind: Secret\n";

#[tokio::test(flavor = "multi_thread")]
async fn annotated_gateways_get_a_certificate_per_listener_secret_and_other_namespaces_need_a_reference_grant() {
    within(240, async {
        let env = OperatorEnv::with_pebble_and_gateway_api(PebbleOptions::default(), &[]).await.unwrap();
        env.control_plane.create_namespace("certs").await.unwrap();
        env.apply(&route_issuer_yaml(&env, "          - name: shop\n            sectionName: http\n")).await.unwrap();
        // The Certificate in `certs` is issued by the Issuer `gw` there (an Ingress solver, on the stand-in).
        env.apply(&env.issuer_yaml("certs", "gw")).await.unwrap();
        // Someone else's Certificate named like the `taken` listener's Secret: left alone.
        let other = certificate_yaml("taken", &["someone.example.test"], &env.ca.ip().to_string())
            .replace("secretName: taken-tls", "secretName: theirs");
        env.apply(&other).await.unwrap();
        let started = Instant::now();
        env.apply(&annotated_gateway_yaml(true)).await.unwrap();

        // The HTTPS listener's Secret: a Certificate controlled by the Gateway, issued through an HTTPRoute.
        let shop = env.wait_ready("apps", "shop-tls", Duration::from_secs(60)).await.unwrap();
        eprintln!("annotated Gateway: apply -> Ready in {:.2}s", started.elapsed().as_secs_f64());
        assert_eq!(shop.spec.dns_names, ["shop.example.test"]);
        assert_eq!(shop.spec.secret_name, "shop-tls");
        let owner = &shop.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Gateway", "shop", Some(true)));
        assert_eq!(shop.labels().get("kacme.dev/source").map(String::as_str), Some("gateway"));
        let secret = env.secrets("apps").get("shop-tls").await.unwrap();
        let leaf = parse_chain(&secret.data.unwrap()[TLS_CRT].0).unwrap().leaf;
        assert_eq!(leaf.dns_names, ["shop.example.test"]);

        // The Secret in `certs` needs a ReferenceGrant there; until then the Gateway says why it has none.
        let gateway_events = |reason: &'static str, text: &'static str| {
            let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), "apps");
            async move {
                events.list(&ListParams::default()).await.unwrap().items.into_iter().any(|e| {
                    e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Gateway"))
                        && e.reason.as_deref() == Some(reason)
                        && e.note.as_deref().is_some_and(|n| n.contains(text))
                })
            }
        };
        poll_until("a ListenerSkipped Event naming the missing grant", Duration::from_secs(20), || async {
            gateway_events("ListenerSkipped", "no ReferenceGrant in certs").await
        })
        .await;
        poll_until("a CertificateConflict Event for the taken name", Duration::from_secs(20), || async {
            gateway_events("CertificateConflict", "apps/taken exists and is not controlled by this Gateway").await
        })
        .await;
        assert!(env.certificates("certs").get_opt("api-tls").await.unwrap().is_none());
        let theirs = env.certificates("apps").get("taken").await.unwrap();
        assert_eq!(theirs.spec.dns_names, ["someone.example.test"], "someone else's Certificate is left alone");

        // With the grant: a Certificate in `certs`, no owner reference (none can cross namespaces), the
        // Gateway's UID recorded, issued by the Issuer of `certs`.
        env.apply(REFERENCE_GRANT).await.unwrap();
        let api = env.wait_ready("certs", "api-tls", Duration::from_secs(60)).await.unwrap();
        let gateway_uid = Api::<kacme::gateway_api::Gateway>::namespaced(env.client.clone(), "apps")
            .get("shop")
            .await
            .unwrap()
            .uid()
            .unwrap();
        assert_eq!(api.spec.dns_names, ["api.example.test"]);
        assert!(api.owner_references().is_empty());
        assert_eq!(api.labels().get("kacme.dev/owner-uid"), Some(&gateway_uid));
        assert_eq!(api.annotations().get("kacme.dev/owner").map(String::as_str), Some("Gateway apps/shop"));

        // The grant withdrawn: the Certificate it allowed goes.
        Api::<kacme::gateway_api::ReferenceGrant>::namespaced(env.client.clone(), "certs")
            .delete("gateways-from-apps", &Default::default())
            .await
            .unwrap();
        env.wait_certificate_gone("certs", "api-tls", Duration::from_secs(20)).await.unwrap();

        // A listener removed: its Certificate goes; the Gateway deleted: the one in `certs` goes too.
        env.apply(REFERENCE_GRANT).await.unwrap();
        env.wait_certificate("certs", "api-tls", Duration::from_secs(20), "the grant is back", |_| true).await.unwrap();
        env.apply(&annotated_gateway_yaml(false)).await.unwrap();
        env.wait_certificate_gone("apps", "shop-tls", Duration::from_secs(20)).await.unwrap();
        Api::<kacme::gateway_api::Gateway>::namespaced(env.client.clone(), "apps")
            .delete("shop", &Default::default())
            .await
            .unwrap();
        env.wait_certificate_gone("certs", "api-tls", Duration::from_secs(40)).await.unwrap();
        let theirs = env.certificates("apps").get("taken").await.unwrap();
        assert_eq!(theirs.spec.dns_names, ["someone.example.test"], "someone else's Certificate is still there");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_annotated_xlistenerset_gets_certificates_like_a_gateway_and_loses_them_with_the_annotation() {
    within(180, async {
        let env = OperatorEnv::with_pebble_and_gateway_api(PebbleOptions::default(), &[]).await.unwrap();
        env.apply(&gateway_yaml("web", "")).await.unwrap();
        env.apply(&route_issuer_yaml(&env, "          - name: web\n            sectionName: http\n")).await.unwrap();
        let listener_set = |annotation: &str| {
            format!(
                "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XListenerSet\nmetadata:\n  name: team\n  namespace: apps\n{annotation}spec:\n  parentRef:\n    name: web\n  listeners:\n  - name: team\n    port: 443\n    protocol: HTTPS\n    hostname: team.example.test\n    tls:\n      certificateRefs:\n      - name: team-tls\n"
            )
        };
        env.apply(&listener_set("  annotations:\n    kacme.dev/issuer: gw\n")).await.unwrap();
        let team = env.wait_ready("apps", "team-tls", Duration::from_secs(60)).await.unwrap();
        assert_eq!(team.spec.dns_names, ["team.example.test"]);
        let owner = &team.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("XListenerSet", "team"));
        assert_eq!(team.labels().get("kacme.dev/source").map(String::as_str), Some("listenerset"));
        // The annotation removed (a merge patch setting it to null).
        let mut without: serde_json::Value = serde_yaml::from_str(&listener_set("")).unwrap();
        without["metadata"]["annotations"] = serde_json::json!({ "kacme.dev/issuer": null });
        Api::<kacme::gateway_api::XListenerSet>::namespaced(env.client.clone(), "apps")
            .patch("team", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&without))
            .await
            .unwrap();
        env.wait_certificate_gone("apps", "team-tls", Duration::from_secs(20)).await.unwrap();
    })
    .await
}

/// Polls `check` every 200 ms until it holds, failing after `timeout`.
async fn poll_until<F: std::future::Future<Output = bool>>(what: &str, timeout: Duration, check: impl Fn() -> F) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_gets_no_certificate_for_a_name_its_issuers_policy_does_not_permit() {
    within(120, async {
        let env = OperatorEnv::with_pebble_and_gateway_api(PebbleOptions::default(), &[]).await.unwrap();
        let issuer = route_issuer_yaml(&env, "          - name: shop\n            sectionName: http\n");
        let issuer = issuer.replace("spec:\n", "spec:\n  policy:\n    dnsNames: [\"{label}.{namespace}.example.test\"]\n");
        env.apply(&issuer).await.unwrap();
        let listener = |name: &str, hostname: &str| {
            format!("  - name: {name}\n    port: 443\n    protocol: HTTPS\n    hostname: {hostname}\n    tls:\n      certificateRefs:\n      - name: {name}-tls\n")
        };
        let gateway = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: shop\n  namespace: apps\n  annotations:\n    kacme.dev/issuer: gw\nspec:\n  gatewayClassName: stand-in\n  listeners:\n  - name: http\n    port: 80\n    protocol: HTTP\n{}{}",
            listener("own", "shop.apps.example.test"),
            listener("other", "shop.team-b.example.test")
        );
        env.apply(&gateway).await.unwrap();
        let own = env.wait_ready("apps", "own-tls", Duration::from_secs(60)).await.unwrap();
        assert_eq!(own.spec.dns_names, ["shop.apps.example.test"]);
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), "apps");
        poll_until("a NotPermitted Event on the Gateway", Duration::from_secs(20), || async {
            events.list(&ListParams::default()).await.unwrap().items.iter().any(|e| {
                e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Gateway"))
                    && e.reason.as_deref() == Some("NotPermitted")
                    && e.note.as_deref().is_some_and(|n| n.contains("other-tls") && n.contains("shop.team-b.example.test"))
            })
        })
        .await;
        assert!(env.certificates("apps").get_opt("other-tls").await.unwrap().is_none(), "no Certificate for team-b's name");
    })
    .await
}
