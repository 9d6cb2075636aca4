//! kacme on a real node ([`kacme_testenv::Node`]): solver Pods run in containers, Traefik routes the CA's
//! HTTP-01 requests (every name resolves to the node's bridge address, port 80) through the solver Service
//! and Ingress, and Pebble and step-ca listen where Pods reach them.
//!
//! These tests need root and `tests/env/install node`; elsewhere (or with `KACME_SKIP_NODE_TESTS=1`) they
//! print `SKIPPED ...: reason` and pass. One node per machine: the tests of this binary take turns.

mod common;

use anyhow::{Context as _, Result, bail};
use common::operator_env::condition;
use k8s_openapi::api::core::v1::Pod;
use kacme::api::Certificate;
use kacme::api::names::{CA_CRT, TLS_CRT};
use kacme::pki::{parse_ca_bundle, parse_chain, verify_chain};
use kacme_testenv::{
    ChildProcess, KACME_IMAGE_REPOSITORY, Node, NodeOptions, Pebble, PebbleOptions, StepCa, StepCaOptions,
    TRAEFIK_HTTP_PORT, TRAEFIK_INGRESS_CLASS, TempDir, kacme_image, node_unavailable_reason,
};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The tests of this binary take turns: there is one node per machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the node tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if std::env::var_os("KACME_SKIP_NODE_TESTS").is_some_and(|v| !v.is_empty() && v != "0") {
        return Some("KACME_SKIP_NODE_TESTS is set".into());
    }
    if let Some(reason) = node_unavailable_reason() {
        return Some(reason);
    }
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env/install");
    match std::process::Command::new(&install).arg("--check-node").output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "tests/env/install --check-node: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Some(format!("running {}: {error}", install.display())),
    }
}

/// The kacme binary of the image: `$KACME_IMAGE_BINARY`, else a release build, else this test's debug build
/// (larger, same behaviour).
fn image_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("KACME_IMAGE_BINARY").map(PathBuf::from),
        Some(workspace.join("target/release/kacme")),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/kacme")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).unwrap_or_else(|| {
        eprintln!("no kacme release binary (KACME_IMAGE_BINARY, target/release/kacme): the image has the debug build");
        PathBuf::from(env!("CARGO_BIN_EXE_kacme"))
    })
}

/// The tag of the local kacme image: the crate's version (the chart's default tag is its appVersion).
const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");

fn image_reference() -> String {
    format!("{KACME_IMAGE_REPOSITORY}:{IMAGE_TAG}")
}

/// Applies `yaml` with the node's kubectl.
async fn apply(node: &Node, dir: &TempDir, yaml: &str) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = dir.join(format!("apply-{}.yaml", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&path, yaml)?;
    node.control_plane().kubectl(&["apply", "-f", &path.display().to_string()]).await?;
    Ok(())
}

/// An Issuer in `namespace` for the CA at `directory_url`, trusting `ca_bundle`, solving HTTP-01 through
/// Traefik.
fn issuer_yaml(namespace: &str, name: &str, directory_url: &str, ca_bundle: &str) -> String {
    let bundle: String = ca_bundle.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  \
         acme:\n    server: {directory_url}\n    email: ops@example.test\n    caBundle: |\n{bundle}    \
         privateKeySecretRef:\n      name: {name}-account\n    solvers:\n    - http01:\n        ingress:\n          \
         ingressClassName: {TRAEFIK_INGRESS_CLASS}\n"
    )
}

fn certificate_yaml(namespace: &str, name: &str, issuer: &str, dns_name: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  secretName: {name}-tls\n  issuerRef:\n    name: {issuer}\n  dnsNames:\n  - {dns_name}\n"
    )
}

/// Waits until the Certificate is Ready with no order in flight, noting every solver Pod seen meanwhile and
/// the container ids its kubelet reported (proof that it ran in a container on the node).
async fn wait_ready_watching_solvers(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    solver_containers: &mut BTreeSet<String>,
    operator: &ChildProcess,
) -> Result<Certificate> {
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        operator.ensure_running()?;
        for pod in pods.list(&ListParams::default().labels("kacme.dev/solver")).await? {
            for status in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
                if let Some(id) = &status.container_id {
                    solver_containers.insert(format!("{}/{}", pod.name_any(), id));
                }
            }
        }
        let certificate = certificates.get(name).await?;
        let ready = condition(&certificate, "Ready").is_some_and(|(status, _, _)| status == "True");
        if ready && certificate.status.as_ref().is_some_and(|s| s.order.is_none()) {
            return Ok(certificate);
        }
        if Instant::now() > deadline {
            bail!(
                "Certificate {namespace}/{name} not Ready within 180s: {}\noperator log:\n{}",
                serde_json::to_string(&certificate.status)?,
                operator.log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn certificates_are_issued_through_solver_pods_and_traefik_on_pebble_and_step_ca() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED certificates_are_issued_through_solver_pods_and_traefik_on_pebble_and_step_ca: {reason}");
        return Ok(());
    }
    let started = Instant::now();
    let image = kacme_image(&image_binary(), IMAGE_TAG)?;
    let node = Node::start(NodeOptions {
        images: vec![image],
        crds_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")),
        traefik: true,
    })
    .await?;
    let node_ready = started.elapsed();
    // The CAs on the bridge address: their DNS answers every name with it, and they dial port 80 (Traefik).
    let pebble = Pebble::start(PebbleOptions {
        address: Some(node.address()),
        http01_port: Some(TRAEFIK_HTTP_PORT),
        ..PebbleOptions::default()
    })
    .await?;
    let step_ca = StepCa::start(StepCaOptions {
        address: Some(node.address()),
        http01_port: Some(TRAEFIK_HTTP_PORT),
        ..StepCaOptions::default()
    })
    .await?;
    let control_plane = node.control_plane();
    control_plane.create_namespace("kacme").await?;
    control_plane.create_namespace("apps").await?;
    let client = control_plane.client().await?;

    // kacme as a local process (the chart's in-cluster run is the helm test's); its solver Pods use the image.
    let dir = TempDir::new("node-e2e")?;
    let metrics = node.address().socket_addr(node.address().free_port()?);
    let operator = ChildProcess::spawn(
        "kacme-controller",
        Path::new(env!("CARGO_BIN_EXE_kacme")),
        [
            "controller".to_string(),
            "--cluster-resource-namespace=kacme".into(),
            format!("--solver-image={}", image_reference()),
            format!("--metrics-address={metrics}"),
            "--leader-elect=false".into(),
            "--backoff-initial=2s".into(),
            "--backoff-max=8s".into(),
            // Traefik routes a solver Ingress only once its Service has a ready endpoint (and then after its
            // configuration throttle): without the self-check, the CA asks before the route exists (404).
            "--self-check-deadline=60s".into(),
            format!("--self-check-address={}:{TRAEFIK_HTTP_PORT}", kacme_testenv::BRIDGE_ADDRESS),
        ],
        &[("KUBECONFIG", control_plane.kubeconfig_path().as_os_str()), ("RUST_LOG", "info,kacme=debug".as_ref())],
        dir.join("kacme-controller.log"),
    )?;

    apply(&node, &dir, &issuer_yaml("apps", "pebble", pebble.directory_url(), &pebble.ca_bundle_pem())).await?;
    apply(&node, &dir, &issuer_yaml("apps", "step-ca", step_ca.directory_url(), step_ca.root_pem())).await?;
    let issuance_started = Instant::now();
    apply(&node, &dir, &certificate_yaml("apps", "web-pebble", "pebble", "web.pebble.node.test")).await?;
    apply(&node, &dir, &certificate_yaml("apps", "web-step-ca", "step-ca", "web.step-ca.node.test")).await?;

    let mut solver_containers = BTreeSet::new();
    for (name, dns_name, bundle) in [
        ("web-pebble", "web.pebble.node.test", pebble.issuing_root_pem().to_string()),
        ("web-step-ca", "web.step-ca.node.test", step_ca.root_pem().to_string()),
    ] {
        wait_ready_watching_solvers(&client, "apps", name, &mut solver_containers, &operator).await?;
        let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "apps")
            .get(&format!("{name}-tls"))
            .await?;
        let data = secret.data.context("the Secret has data")?;
        let chain = parse_chain(&data[TLS_CRT].0)?;
        verify_chain(&chain, &parse_ca_bundle(bundle.as_bytes())?, jiff::Timestamp::now())
            .with_context(|| format!("{name}: tls.crt verifies to the CA's root"))?;
        verify_chain(&chain, &parse_ca_bundle(&data[CA_CRT].0)?, jiff::Timestamp::now())
            .with_context(|| format!("{name}: tls.crt verifies to ca.crt"))?;
        assert_eq!(chain.leaf.dns_names, [dns_name], "{name}: the leaf's names");
    }
    let issued_after = issuance_started.elapsed();
    assert!(
        solver_containers.iter().any(|c| c.contains("containerd://")),
        "solver Pods ran in containers on the node: {solver_containers:?}"
    );
    let traefik_log = std::fs::read_to_string(node.dir().join("traefik.log")).unwrap_or_default();
    eprintln!(
        "node e2e: node with Traefik Ready after {:.1}s; both Certificates issued {:.1}s after they were created; \
         solver containers: {solver_containers:?}",
        node_ready.as_secs_f64(),
        issued_after.as_secs_f64()
    );
    drop(operator);
    drop((pebble, step_ca));
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}; Traefik's log:\n{traefik_log}");
    let left = kacme_testenv::node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    Ok(())
}
