//! Per-Pod certificates on a real node ([`kacme_testenv::Node`]), as a user sees them: `helm install` with
//! `webhook.podCertificates.enabled`, a Deployment of two replicas annotated `kacme.dev/per-pod`; each Pod's
//! `kacme agent` sidecar gets its own certificate from step-ca (through the operator's endpoint, solver Pods and
//! Traefik) before the app container starts; the replicas hold distinct keys that no Secret holds, complete
//! mutual TLS with each other by Pod name, renew in place, and a Pod's token cannot buy another Pod's names.
//!
//! Needs root and `tests/env/install node`; elsewhere (or with `KACME_SKIP_NODE_TESTS=1`) it prints
//! `SKIPPED ...: reason` and passes.

mod common;

use anyhow::{Context as _, Result, bail};
use common::helm::{Helm, chart_dir};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kacme::pod_certificate::agent::{AgentConfig, EndpointClient};
use kacme::pod_certificate::sidecar::AGENT_CONTAINER;
use kacme_testenv::{
    Node, NodeOptions, StepCa, StepCaOptions, TLS_PROBE_IMAGE, TRAEFIK_HTTP_PORT, TRAEFIK_INGRESS_CLASS, TempDir,
    kacme_image, node_tests_skip_reason, poll_until, tls_probe_image,
};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

fn tls_probe_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("kacme-tls-probe")).filter(|p| p.is_file())
}

async fn apply(node: &Node, dir: &TempDir, name: &str, yaml: &str) -> Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    node.control_plane().kubectl(&["apply", "-f", &path.display().to_string()]).await?;
    Ok(())
}

fn issuer_yaml(directory_url: &str, ca_bundle: &str) -> String {
    let bundle: String = ca_bundle.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: step-ca\n  namespace: apps\nspec:\n  \
         acme:\n    server: {directory_url}\n    email: ops@example.test\n    caBundle: |\n{bundle}    \
         privateKeySecretRef:\n      name: step-ca-account\n    solvers:\n    - http01:\n        ingress:\n          \
         ingressClassName: {TRAEFIK_INGRESS_CLASS}\n"
    )
}

/// Two replicas of the probe, serving mutual TLS on 8443 with the files at /var/run/kacme, each with its own
/// certificate for `<pod name>.web.apps.node.test`.
const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: apps
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        kacme.dev/per-pod: "true"
        kacme.dev/names: "${POD_NAME}.web.apps.node.test"
        kacme.dev/issuer: step-ca
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: probe
        image: TLS_PROBE_IMAGE
        imagePullPolicy: Never
        args: [serve, --listen, "0.0.0.0:8443"]
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
"#;

/// The Pod's directory under the kubelet's root (the test runs as root on the node's host).
fn pod_volume(node: &Node, pod: &Pod, kind: &str, volume: &str) -> PathBuf {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    node.dir().join("kubelet/pods").join(uid).join("volumes").join(kind).join(volume)
}

fn leaf(dir: &Path) -> Result<kacme::pki::CertificateInfo> {
    Ok(kacme::pki::parse_chain(&std::fs::read(dir.join("tls.crt"))?)?.leaf)
}

/// `kacme-tls-probe connect` in `from` against `to`'s address, naming `to`: (client, server) leaf digests.
async fn handshake(node: &Node, from: &Pod, to: &Pod) -> Result<(String, String)> {
    let ip = to.status.as_ref().and_then(|s| s.pod_ip.clone()).context("the Pod's IP")?;
    let line = node
        .control_plane()
        .kubectl(&[
            "exec",
            "-n",
            "apps",
            &from.name_any(),
            "-c",
            "probe",
            "--",
            "/kacme-tls-probe",
            "connect",
            &format!("{ip}:8443"),
            "--server-name",
            &format!("{}.web.apps.node.test", to.name_any()),
        ])
        .await?;
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [client, server] => {
            Ok((client.trim_start_matches("client=").to_string(), server.trim_start_matches("server=").to_string()))
        }
        _ => bail!("unexpected handshake line {line:?}"),
    }
}

fn leaf_digest(dir: &Path) -> Result<String> {
    let first = pem::parse_many(std::fs::read(dir.join("tls.crt"))?)?.into_iter().next().context("a certificate")?;
    Ok(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, first.contents())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[tokio::test]
async fn replicas_get_their_own_keys_and_certificates_that_stay_in_their_pods() -> Result<()> {
    let test_name = "replicas_get_their_own_keys_and_certificates_that_stay_in_their_pods";
    if let Some(reason) = node_tests_skip_reason() {
        eprintln!("SKIPPED {test_name}: {reason}");
        return Ok(());
    }
    let Some(probe) = tls_probe_binary() else {
        eprintln!("SKIPPED {test_name}: no kacme-tls-probe (cargo build -p kacme-testenv --bin kacme-tls-probe)");
        return Ok(());
    };
    let started = Instant::now();
    let node = Node::start(NodeOptions {
        images: vec![kacme_image(&common::image_binary(), IMAGE_TAG)?, tls_probe_image(&probe)?],
        traefik: true,
        ..NodeOptions::default()
    })
    .await?;
    // 60-second certificates (step-ca backdates a minute): renewal about 20 s after each issuance.
    let step_ca = StepCa::start(StepCaOptions {
        address: Some(node.address()),
        http01_port: Some(TRAEFIK_HTTP_PORT),
        default_duration: Duration::from_secs(60),
        min_duration: Duration::from_secs(30),
        ..StepCaOptions::default()
    })
    .await?;
    let control_plane = node.control_plane();
    let client = control_plane.client().await?;
    let dir = TempDir::new("node-pod-certificates")?;

    let helm = Helm::for_cluster(control_plane.kubeconfig_path())?;
    let chart = chart_dir().display().to_string();
    let values = format!(
        "image.tag={IMAGE_TAG},image.pullPolicy=Never,replicaCount=1,webhook.enabled=true,\
         webhook.podCertificates.enabled=true,logFormat=text,backoff.initial=2s,backoff.max=8s,\
         selfCheckDeadline=60s,selfCheckAddress={}:{TRAEFIK_HTTP_PORT}",
        kacme_testenv::BRIDGE_ADDRESS
    );
    helm.run(&["install", "kacme", &chart, "--namespace", "kacme", "--create-namespace", "--set", &values]).await?;
    let operator_logs = || async {
        control_plane
            .kubectl(&["logs", "-n", "kacme", "-l", "app.kubernetes.io/name=kacme", "--tail=60"])
            .await
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    control_plane.create_namespace("apps").await?;
    control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await?;
    apply(&node, &dir, "issuer", &issuer_yaml(step_ca.directory_url(), step_ca.root_pem())).await?;
    let issuers: Api<kacme::api::Issuer> = Api::namespaced(client.clone(), "apps");
    let ready = poll_until("the Issuer Ready", Duration::from_secs(120), Duration::from_millis(250), || async {
        let ready = issuers
            .get_opt("step-ca")
            .await?
            .and_then(|i| i.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(if ready { Ok(()) } else { Err("not yet".to_string()) })
    })
    .await;
    if let Err(error) = ready {
        return Err(error.context(operator_logs().await));
    }

    // Two replicas: each Running (its app container started after its agent wrote the first certificate).
    let applied = Instant::now();
    apply(&node, &dir, "web", &DEPLOYMENT.replace("TLS_PROBE_IMAGE", TLS_PROBE_IMAGE)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let running = poll_until("two running web Pods", Duration::from_secs(180), Duration::from_millis(250), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?.items;
        let running: Vec<Pod> = list
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
                    cs.iter().any(|c| c.name == "probe" && c.state.as_ref().is_some_and(|s| s.running.is_some()))
                })
            })
            .collect();
        Ok(if running.len() == 2 { Ok(running) } else { Err(format!("{} running", running.len())) })
    })
    .await;
    let web = match running {
        Ok(web) => web,
        Err(error) => {
            let agents = control_plane
                .kubectl(&["logs", "-n", "apps", "-l", "app=web", "-c", AGENT_CONTAINER, "--tail=20"])
                .await
                .unwrap_or_default();
            return Err(error.context(format!("agents:\n{agents}\noperator:\n{}", operator_logs().await)));
        }
    };
    let replicas_running = applied.elapsed();

    // The agent runs beside the app as a native sidecar, and the app container started only once the Pod's
    // certificate was issued (the sidecar's startup probe held it back).
    let events: Vec<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "apps").list(&ListParams::default()).await?.items;
    for pod in &web {
        let status = pod.status.as_ref().context("status")?;
        let agent = status.init_container_statuses.iter().flatten().find(|c| c.name == AGENT_CONTAINER);
        assert!(
            agent.is_some_and(|c| c.started == Some(true) && c.state.as_ref().is_some_and(|s| s.running.is_some())),
            "{}: the agent sidecar runs: {agent:?}",
            pod.name_any()
        );
        let app_started = status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == "probe")
            .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
            .context("the app container's start")?
            .0;
        let issued = events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_ref()) == pod.metadata.uid.as_ref())
            .filter(|e| e.reason.as_deref() == Some("CertificateIssued"))
            .filter_map(|e| e.event_time.as_ref().map(|t| t.0))
            .min()
            .context("a CertificateIssued Event on the Pod")?;
        // startedAt has whole seconds.
        assert!(
            app_started.as_second() >= issued.as_second(),
            "{}: the app started at {app_started}, before its certificate was issued at {issued}",
            pod.name_any()
        );
    }

    // Each Pod's files: its own names, its own key, verifying to step-ca; the key only in the Pod's tmpfs.
    let mut keys = Vec::new();
    for pod in &web {
        let files = pod_volume(&node, pod, "kubernetes.io~empty-dir", "kacme-tls");
        let leaf = leaf(&files)?;
        assert_eq!(leaf.dns_names, [format!("{}.web.apps.node.test", pod.name_any())]);
        let key_pem = std::fs::read_to_string(files.join("tls.key"))?;
        let key = kacme::pki::parse_private_key(key_pem.as_bytes())?;
        assert!(kacme::pki::key_matches_certificate(&key, &leaf), "{}: the key is the certificate's", pod.name_any());
        keys.push(key_pem);
    }
    assert_ne!(keys[0], keys[1], "distinct keys");
    for secret in Api::<Secret>::all(client.clone()).list(&ListParams::default()).await? {
        for value in secret.data.iter().flat_map(|d| d.values()) {
            let text = String::from_utf8_lossy(&value.0);
            for key in &keys {
                let line = key.lines().nth(1).unwrap_or_default();
                assert!(
                    !text.contains(line),
                    "Secret {}/{} holds a Pod's key",
                    secret.namespace().unwrap_or_default(),
                    secret.name_any()
                );
            }
        }
    }

    // Mutual TLS between the replicas, each naming the other Pod.
    let (a, b) = (&web[0], &web[1]);
    let a_files = pod_volume(&node, a, "kubernetes.io~empty-dir", "kacme-tls");
    let b_files = pod_volume(&node, b, "kubernetes.io~empty-dir", "kacme-tls");
    let (client_leaf, server_leaf) = handshake(&node, a, b).await?;
    assert_eq!((client_leaf, server_leaf.clone()), (leaf_digest(&a_files)?, leaf_digest(&b_files)?));
    assert_ne!(leaf_digest(&a_files)?, leaf_digest(&b_files)?, "distinct certificates");

    // A's token cannot buy B's name (the agent's own endpoint and environment, from the host).
    let spec = a.spec.as_ref().context("spec")?;
    let agent = spec.init_containers.iter().flatten().find(|c| c.name == AGENT_CONTAINER).context("the agent")?;
    let env: BTreeMap<String, String> =
        agent.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
    let token_path = pod_volume(&node, a, "kubernetes.io~projected", "kacme-agent-token").join("token");
    let token = std::fs::read_to_string(&token_path)?;
    let endpoint = EndpointClient::new(&AgentConfig {
        url: env["KACME_AGENT_URL"].clone(),
        connect: env.get("KACME_AGENT_CONNECT").cloned(),
        ca_pem: env["KACME_AGENT_CA"].clone(),
        token_path,
        dir: PathBuf::from("/nonexistent"),
        algorithm: kacme::api::KeyAlgorithm::Ecdsa,
    })?;
    let stolen = kacme::pki::CsrRequest {
        dns_names: vec![format!("{}.web.apps.node.test", b.name_any())],
        ..Default::default()
    };
    let key = kacme::pki::generate_private_key(&kacme::pki::KeySpec::from_spec(None))?;
    let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", kacme::pki::build_csr(&stolen, &key)?));
    let (status, answer, _) = endpoint.post(token.trim(), &csr).await.map_err(anyhow::Error::msg)?;
    let message = answer.message.unwrap_or_default();
    assert_eq!(status.as_u16(), 400, "{message}");
    assert!(message.contains("may not have"), "{message}");

    // Renewal in place: B's files change (new key), B keeps running, and handshakes present the new certificate.
    let renewal_started = Instant::now();
    poll_until("B's certificate renewed", Duration::from_secs(90), Duration::from_millis(500), || async {
        Ok(match leaf_digest(&b_files) {
            Ok(digest) if digest != server_leaf => Ok(()),
            _ => Err("not yet".to_string()),
        })
    })
    .await?;
    let renewed_after = renewal_started.elapsed();
    let (_, server_now) =
        poll_until("the renewed certificate served", Duration::from_secs(30), Duration::from_millis(500), || async {
            Ok(handshake(&node, a, b).await.map_err(|e| format!("{e:#}")))
        })
        .await?;
    // Renewals come every ~20 s: the one served is the renewed one or a later one, never the first.
    assert_ne!(server_now, server_leaf, "the first certificate is no longer served");
    let b_now = pods.get(&b.name_any()).await?;
    assert_eq!(b_now.metadata.uid, b.metadata.uid, "the same Pod");
    let restarts: i32 =
        b_now.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).map(|c| c.restart_count).sum();
    assert_eq!(restarts, 0, "no container restarted");

    // Deleting the Deployment leaves nothing: no Pod, no solver object, no Secret but the account key, no tmpfs.
    control_plane.kubectl(&["delete", "deployment", "web", "-n", "apps", "--wait=true"]).await?;
    poll_until("nothing left of the Pods", Duration::from_secs(60), Duration::from_millis(250), || async {
        let pods_left = pods.list(&ListParams::default()).await?.items.len();
        let solver_left = pods.list(&ListParams::default().labels("kacme.dev/solver")).await?.items.len()
            + Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(client.clone(), "apps")
                .list(&ListParams::default())
                .await?
                .items
                .len();
        Ok(if pods_left + solver_left == 0 && !a_files.exists() && !b_files.exists() {
            Ok(())
        } else {
            Err(format!(
                "{pods_left} Pods, {solver_left} solver objects, files {} {}",
                a_files.exists(),
                b_files.exists()
            ))
        })
    })
    .await?;
    let secrets: Vec<String> = Api::<Secret>::namespaced(client.clone(), "apps")
        .list(&ListParams::default())
        .await?
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(secrets, ["step-ca-account"], "only the ACME account key");
    let _ = pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    eprintln!(
        "per-Pod on a real node: two replicas running {:.1}s after kubectl apply; renewal seen {:.1}s later; test {:.1}s",
        replicas_running.as_secs_f64(),
        renewed_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(step_ca);
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}");
    let left = kacme_testenv::node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    Ok(())
}
