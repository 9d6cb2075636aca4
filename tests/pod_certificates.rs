//! Per-Pod certificates against the real control plane and Pebble: the apiserver calls the webhook, which adds
//! the agent sidecar; `kacme agent` (run here as a process with the sidecar's environment and a real projected
//! token from the TokenRequest API) gets its Pod's certificate from the operator's endpoint, which checks the
//! token with a real TokenReview; the key exists only in the agent's directory; other Pods' tokens, other
//! audiences and Pods that did not ask are refused; the agent renews in place.

mod common;

use anyhow::Context as _;
use common::operator_env::{OperatorEnv, kacme_binary};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kacme::api::Issuer;
use kacme::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use kacme::pod_certificate::agent::{AgentConfig, EndpointClient};
use kacme::pod_certificate::sidecar::{AGENT_CONTAINER, DEFAULT_AUDIENCE};
use kacme_testenv::{PebbleOptions, poll_until};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const NAMES: &str = "${POD_NAME}.pods.test, ${SERVICE_NAMES}";

fn webhook_args(env_ip: std::net::IpAddr) -> Vec<String> {
    let port = std::net::TcpListener::bind((env_ip, 0)).unwrap().local_addr().unwrap().port();
    vec![
        "--webhook-address".into(),
        format!("{env_ip}:{port}"),
        "--webhook-url".into(),
        format!("https://{env_ip}:{port}/mutate-pods"),
        "--pod-certificates".into(),
    ]
}

fn pod(name: &str, per_pod: bool) -> Pod {
    let mut annotations = BTreeMap::new();
    if per_pod {
        annotations.insert("kacme.dev/issuer".to_string(), "ca".to_string());
        annotations.insert("kacme.dev/per-pod".into(), "true".into());
        annotations.insert("kacme.dev/names".into(), NAMES.into());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "annotations": annotations, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]}
    }))
    .unwrap()
}

/// A token from the TokenRequest API for the `default` ServiceAccount of `apps`, bound to `pod`.
async fn pod_token(env: &OperatorEnv, pod: &Pod, audience: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), "apps");
    poll_until("the default ServiceAccount", WAIT, POLL, || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()).ok_or_else(|| "not yet".to_string()))
    })
    .await
    .unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600),
        },
        ..TokenRequest::default()
    };
    let issued = accounts.create_token_request("default", &PostParams::default(), &request).await.unwrap();
    issued.status.unwrap().token
}

/// The Service `web` selecting the Pods (`app: web`).
async fn web_service(env: &OperatorEnv) {
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8443}]},
    }))
    .unwrap();
    Api::namespaced(env.client.clone(), "apps").create(&PostParams::default(), &service).await.unwrap();
}

fn agent_env(pod: &Pod) -> BTreeMap<String, String> {
    let spec = pod.spec.as_ref().unwrap();
    let agent = spec.init_containers.iter().flatten().find(|c| c.name == AGENT_CONTAINER).expect("the agent sidecar");
    agent.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect()
}

fn client_for(env: &BTreeMap<String, String>) -> EndpointClient {
    let config = AgentConfig {
        url: env["KACME_AGENT_URL"].clone(),
        connect: env.get("KACME_AGENT_CONNECT").cloned(),
        ca_pem: env["KACME_AGENT_CA"].clone(),
        token_path: "/nonexistent".into(),
        dir: "/nonexistent".into(),
        algorithm: kacme::api::KeyAlgorithm::Ecdsa,
    };
    EndpointClient::new(&config).unwrap()
}

fn csr_pem(dns: &[&str]) -> String {
    let key = kacme::pki::generate_private_key(&kacme::pki::KeySpec::from_spec(None)).unwrap();
    let request = kacme::pki::CsrRequest {
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ..kacme::pki::CsrRequest::default()
    };
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", kacme::pki::build_csr(&request, &key).unwrap()))
}

fn leaf(dir: &Path) -> Option<kacme::pki::CertificateInfo> {
    kacme::pki::parse_chain(&std::fs::read(dir.join(TLS_CRT)).ok()?).ok().map(|c| c.leaf)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_gets_its_own_certificate_and_key_and_nothing_else() {
    let started = Instant::now();
    let pebble = PebbleOptions { validity: Some(Duration::from_secs(30)), ..PebbleOptions::default() };
    let mut env = OperatorEnv::with_pebble(pebble).await.unwrap();
    env.kill_operator();
    env.extra_args = webhook_args(env.ca.ip());
    env.start_operator().unwrap();
    env.control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let issuers: Api<Issuer> = Api::namespaced(env.client.clone(), "apps");
    poll_until("the Issuer Ready", WAIT, POLL, || async {
        let ready = issuers
            .get_opt("ca")
            .await?
            .and_then(|i| i.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(if ready { Ok(()) } else { Err("not yet".to_string()) })
    })
    .await
    .with_context(|| env.operator_log())
    .unwrap();

    // The apiserver calls the webhook: the Pods get the agent sidecar (they never run here: no kubelet).
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "apps");
    let created = poll_until("the per-Pod Pod admitted", WAIT, POLL, || async {
        Ok(match pods.create(&PostParams::default(), &pod("web-0", true)).await {
            Ok(pod) => Ok(pod),
            Err(e) => Err(e.to_string()),
        })
    })
    .await
    .with_context(|| env.operator_log())
    .unwrap();
    let web_1 = pods.create(&PostParams::default(), &pod("web-1", true)).await.unwrap();
    let plain = pods.create(&PostParams::default(), &pod("plain-0", false)).await.unwrap();
    let sidecar_env = agent_env(&created);
    // ${SERVICE_NAMES}: the Service that selects the Pods.
    web_service(&env).await;
    assert!(sidecar_env["KACME_AGENT_URL"].ends_with("/pod-certificate"), "{sidecar_env:?}");
    let init = &created.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));
    assert!(plain.spec.as_ref().unwrap().init_containers.is_none(), "a Pod that did not ask is untouched");

    // The agent, with the sidecar's environment and a real Pod-bound token.
    let dir = std::env::temp_dir().join(format!("kacme-pod-certificates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token_path = dir.join("token");
    std::fs::write(&token_path, pod_token(&env, &created, DEFAULT_AUDIENCE).await).unwrap();
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent_started = Instant::now();
    let mut agent = tokio::process::Command::new(kacme_binary())
        .arg("agent")
        .env_clear()
        .envs(&sidecar_env)
        .env("POD_NAME", "web-0")
        .env("POD_NAMESPACE", "apps")
        .env("KACME_AGENT_DIR", &files)
        .env("KACME_AGENT_TOKEN", &token_path)
        .env("RUST_LOG", "info")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    poll_until("the agent's first certificate", WAIT, POLL, || async {
        Ok(leaf(&files).map(|_| ()).ok_or_else(|| "not yet".to_string()))
    })
    .await
    .with_context(|| format!("agent:\n{}\noperator:\n{}", agent_log(), env.operator_log()))
    .unwrap();
    eprintln!("first certificate {:.2}s after the agent started", agent_started.elapsed().as_secs_f64());
    let first = leaf(&files).unwrap();
    let mut names = first.dns_names.clone();
    names.sort();
    assert_eq!(names, ["web-0.pods.test", "web.apps.svc"]);
    let key_pem = std::fs::read_to_string(files.join(TLS_KEY)).unwrap();
    let key = kacme::pki::parse_private_key(key_pem.as_bytes()).unwrap();
    assert!(kacme::pki::key_matches_certificate(&key, &first));
    let chain = kacme::pki::parse_chain(&std::fs::read(files.join(TLS_CRT)).unwrap()).unwrap();
    let anchors = kacme::pki::parse_ca_bundle(&std::fs::read(files.join(CA_CRT)).unwrap()).unwrap();
    kacme::pki::verify_chain(&chain, &anchors, jiff::Timestamp::now()).unwrap();

    // The key never reached the apiserver: no Secret anywhere holds it.
    let key_der = pem::parse(&key_pem).unwrap().into_contents();
    let key_base64_line = key_pem.lines().nth(1).unwrap();
    for secret in Api::<Secret>::all(env.client.clone()).list(&ListParams::default()).await.unwrap() {
        for (field, value) in secret.data.iter().flatten() {
            let holds = value.0.windows(key_der.len()).any(|w| w == key_der)
                || String::from_utf8_lossy(&value.0).contains(key_base64_line);
            assert!(
                !holds,
                "Secret {}/{} {field} holds the Pod's key",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            );
        }
    }

    // Refusals, each with a clear message.
    let client = client_for(&sidecar_env);
    let web_1_token = pod_token(&env, &web_1, DEFAULT_AUDIENCE).await;
    let (status, answer, _) = client.get_names(&web_1_token).await.unwrap();
    assert_eq!(status.as_u16(), 200, "{answer:?}");
    assert_eq!(answer.names.unwrap(), ["web-1.pods.test", "web.apps.svc"], "the names web-1 may have");
    // A Pod asking from a namespace the webhook does not serve (no sidecar was added, but anyone can mount a
    // projected token for any audience).
    env.control_plane.create_namespace("elsewhere").await.unwrap();
    let mut outside = pod("web-9", true);
    outside.metadata.namespace = Some("elsewhere".into());
    let outside =
        Api::<Pod>::namespaced(env.client.clone(), "elsewhere").create(&PostParams::default(), &outside).await.unwrap();
    let outside_token = {
        let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), "elsewhere");
        poll_until("the default ServiceAccount of elsewhere", WAIT, POLL, || async {
            Ok(accounts.get_opt("default").await?.map(|_| ()).ok_or_else(|| "not yet".to_string()))
        })
        .await
        .unwrap();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![DEFAULT_AUDIENCE.into()],
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some("web-9".into()),
                    uid: outside.metadata.uid.clone(),
                }),
                expiration_seconds: Some(3600),
            },
            ..TokenRequest::default()
        };
        accounts.create_token_request("default", &PostParams::default(), &request).await.unwrap().status.unwrap().token
    };
    let cases = [
        (
            "a namespace the webhook does not serve",
            outside_token,
            csr_pem(&["web-9.pods.test", "web.apps.svc"]),
            403,
            "not one whose Pods kacme serves",
        ),
        (
            "another Pod's names",
            web_1_token.clone(),
            csr_pem(&["web-0.pods.test", "web.apps.svc"]),
            400,
            "may not have",
        ),
        ("no token", String::new(), csr_pem(&["web-1.pods.test", "web.apps.svc"]), 401, "bearer token"),
        (
            "a token for the apiserver's audience",
            pod_token(&env, &web_1, "https://kubernetes.default.svc.cluster.local").await,
            csr_pem(&["web-1.pods.test", "web.apps.svc"]),
            401,
            "not valid",
        ),
        (
            "a Pod that did not ask",
            pod_token(&env, &plain, DEFAULT_AUDIENCE).await,
            csr_pem(&["plain-0.pods.test"]),
            403,
            "does not ask",
        ),
        ("garbage", web_1_token.clone(), "hello".to_string(), 400, "PEM"),
    ];
    for (case, token, csr, status, expected) in cases {
        let (got, answer, _) = client.post(&token, &csr).await.unwrap();
        let message = answer.message.unwrap_or_default();
        assert_eq!(got.as_u16(), status, "{case}: {message}");
        assert!(message.contains(expected), "{case}: {message}");
        assert!(answer.certificate.is_none(), "{case}");
    }

    // Their owners see it in `kubectl describe pod`: Events on the Pods.
    poll_until("the Pods' Events", WAIT, POLL, || async {
        let (issued, refused) = (env.event_reasons("apps", "web-0").await?, env.event_reasons("apps", "web-1").await?);
        let seen = issued.iter().any(|r| r == "CertificateIssued") && refused.iter().any(|r| r == "CertificateRefused");
        Ok(if seen { Ok(()) } else { Err(format!("web-0: {issued:?}, web-1: {refused:?}")) })
    })
    .await
    .unwrap();

    // Renewal in place (30-second certificates: due after 20 s), with a new key, the agent still running.
    poll_until("the renewed certificate", Duration::from_secs(45), Duration::from_millis(250), || async {
        Ok(match leaf(&files) {
            Some(current) if current.serial != first.serial => Ok(()),
            _ => Err("not yet".to_string()),
        })
    })
    .await
    .with_context(agent_log)
    .unwrap();
    assert_ne!(std::fs::read_to_string(files.join(TLS_KEY)).unwrap(), key_pem, "a new key");
    assert!(agent.try_wait().unwrap().is_none(), "the agent keeps running");

    // Pod deletion leaves no solver object behind.
    pods.delete("web-0", &DeleteParams::default()).await.unwrap();
    poll_until("no solver objects", WAIT, POLL, || async {
        let left = env.solver_objects("apps").await?;
        Ok(if left.is_empty() { Ok(()) } else { Err(left.join(", ")) })
    })
    .await
    .unwrap();
    let log = agent_log();
    assert!(!log.contains("PRIVATE KEY") && !log.contains(&key_pem), "the agent never logs a key");
    agent.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// The operator keeps orders in memory only: one killed mid-order loses it, and the Pod's next request (the
/// agent keeps asking) starts a new order on the restarted operator, which also removes what the lost order
/// left behind. An agent started while the operator is down waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_operator_issues_on_the_next_request_and_leaves_nothing_behind() {
    let mut env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.kill_operator();
    env.extra_args = webhook_args(env.ca.ip());
    env.start_operator().unwrap();
    env.control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let issuers: Api<Issuer> = Api::namespaced(env.client.clone(), "apps");
    poll_until("the Issuer Ready", WAIT, POLL, || async {
        let ready = issuers
            .get_opt("ca")
            .await?
            .and_then(|i| i.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(if ready { Ok(()) } else { Err("not yet".to_string()) })
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "apps");
    let web_0 = poll_until("the per-Pod Pod admitted", WAIT, POLL, || async {
        Ok(pods.create(&PostParams::default(), &pod("web-0", true)).await.map_err(|e| e.to_string()))
    })
    .await
    .unwrap();
    let sidecar_env = agent_env(&web_0);
    // ${SERVICE_NAMES}: the Service that selects the Pods.
    web_service(&env).await;
    let token = pod_token(&env, &web_0, DEFAULT_AUDIENCE).await;
    let csr = csr_pem(&["web-0.pods.test", "web.apps.svc"]);

    // The order starts; the operator is killed at once, before it could finish.
    let client = client_for(&sidecar_env);
    let (status, answer, _) = client.post(&token, &csr).await.unwrap();
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    env.kill_operator();
    env.start_operator().unwrap();
    let restarted = Instant::now();
    let client = client_for(&sidecar_env);
    let chain = poll_until("the certificate from the restarted operator", WAIT, Duration::from_millis(250), || async {
        Ok(match client.post(&token, &csr).await {
            Ok((status, answer, _)) if status.as_u16() == 200 => Ok(answer.certificate.unwrap_or_default()),
            Ok((status, answer, _)) if matches!(status.as_u16(), 202 | 503) => Err(format!("{status}: {answer:?}")),
            Ok((status, answer, _)) => panic!("{status}: {answer:?}\n{}", env.operator_log()),
            // Connection refused while the operator starts.
            Err(error) => Err(error),
        })
    })
    .await
    .unwrap();
    eprintln!("issued {:.2}s after the restart", restarted.elapsed().as_secs_f64());
    let issued = kacme::pki::parse_chain(chain.as_bytes()).unwrap().leaf;
    let mut names = issued.dns_names.clone();
    names.sort();
    assert_eq!(names, ["web-0.pods.test", "web.apps.svc"]);
    poll_until("no solver objects", WAIT, POLL, || async {
        let left = env.solver_objects("apps").await?;
        Ok(if left.is_empty() { Ok(()) } else { Err(left.join(", ")) })
    })
    .await
    .unwrap();

    // An agent started while the operator is down waits for it.
    env.kill_operator();
    let dir = std::env::temp_dir().join(format!("kacme-pod-certificates-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("token"), &token).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new(kacme_binary())
        .arg("agent")
        .env_clear()
        .envs(&sidecar_env)
        .env("POD_NAME", "web-0")
        .env("POD_NAMESPACE", "apps")
        .env("KACME_AGENT_DIR", dir.join("files"))
        .env("KACME_AGENT_TOKEN", dir.join("token"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(leaf(&dir.join("files")).is_none(), "no certificate while the operator is down");
    env.start_operator().unwrap();
    poll_until("the waiting agent's certificate", WAIT, POLL, || async {
        Ok(leaf(&dir.join("files")).map(|_| ()).ok_or_else(|| "not yet".to_string()))
    })
    .await
    .with_context(|| std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default())
    .unwrap();
    agent.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
