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
