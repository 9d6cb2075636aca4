//! kacme on a real node ([`kacme_testenv::Node`]): solver Pods run in containers, Traefik routes the CA's
//! HTTP-01 requests (every name resolves to the node's bridge address, port 80) through the solver Service
//! and Ingress, and Pebble and step-ca listen where Pods reach them.
//!
//! These tests need root and `tests/env/install node`; elsewhere (or with `KACME_SKIP_NODE_TESTS=1`) they
//! print `SKIPPED ...: reason` and pass. One node per machine: the tests of this binary take turns.

mod common;

use anyhow::{Context as _, Result, bail};
use common::helm::{Helm, chart_dir};
use common::operator_env::{condition, kacme_binary, user_command};
use k8s_openapi::api::core::v1::Pod;
use kacme::api::Certificate;
use kacme::api::names::{CA_CRT, TLS_CRT};
use kacme::pki::{parse_ca_bundle, parse_chain, verify_chain};
use kacme_testenv::{
    ChildProcess, KACME_IMAGE_REPOSITORY, Node, NodeOptions, Pebble, PebbleOptions, StepCa, StepCaOptions,
    TLS_PROBE_IMAGE, TRAEFIK_HTTP_PORT, TRAEFIK_HTTPS_PORT, TRAEFIK_INGRESS_CLASS, TempDir, kacme_image,
    node_tests_skip_reason, poll_until, tls_probe_image,
};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `kacme controller` as a local process against the node's control plane (the chart's in-cluster run is the
/// helm test's): its solver Pods use the local image, and its self-check dials Traefik, which routes a solver
/// only once its Service has a ready endpoint and its configuration reached the router (without it the CA asks
/// before the route exists: 404).
fn start_local_operator(node: &Node, dir: &TempDir) -> Result<ChildProcess> {
    let control_plane = node.control_plane();
    let metrics = node.address().socket_addr(node.address().free_port()?);
    ChildProcess::spawn(
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
            "--self-check-deadline=60s".into(),
            format!("--self-check-address={}:{TRAEFIK_HTTP_PORT}", kacme_testenv::BRIDGE_ADDRESS),
        ],
        &[("KUBECONFIG", control_plane.kubeconfig_path().as_os_str()), ("RUST_LOG", "info,kacme=debug".as_ref())],
        dir.join("kacme-controller.log"),
    )
}

/// The tests of this binary take turns: there is one node per machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the node tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    node_tests_skip_reason()
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
        // A Certificate that kacme creates (for an annotated Gateway) may not exist yet.
        let certificate = certificates.get_opt(name).await?;
        if let Some(certificate) = &certificate {
            let ready = condition(certificate, "Ready").is_some_and(|(status, _, _)| status == "True");
            if ready && certificate.status.as_ref().is_some_and(|s| s.order.is_none()) {
                return Ok(certificate.clone());
            }
        }
        if Instant::now() > deadline {
            let status = match &certificate {
                Some(certificate) => serde_json::to_string(&certificate.status)?,
                None => "it does not exist".into(),
            };
            bail!(
                "Certificate {namespace}/{name} not Ready within 180s: {status}\noperator log:\n{}",
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
    let image = kacme_image(&common::image_binary(), IMAGE_TAG)?;
    let node = Node::start(NodeOptions {
        images: vec![image],
        crds_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")),
        gateway_api: false,
        traefik: true,
        ..NodeOptions::default()
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

    let dir = TempDir::new("node-e2e")?;
    let operator = start_local_operator(&node, &dir)?;

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

/// Traefik's Gateway API provider on the real node: a GatewayClass for Traefik's controller, a Gateway on its
/// web entry point, and a Certificate issued through the `gatewayHTTPRoute` solver, its route accepted by
/// Traefik itself.
#[tokio::test]
async fn a_certificate_is_issued_through_a_solver_httproute_on_traefiks_gateway() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED a_certificate_is_issued_through_a_solver_httproute_on_traefiks_gateway: {reason}");
        return Ok(());
    }
    let started = Instant::now();
    let node = Node::start(NodeOptions {
        images: vec![kacme_image(&common::image_binary(), IMAGE_TAG)?],
        crds_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")),
        gateway_api: true,
        traefik: true,
        ..NodeOptions::default()
    })
    .await?;
    let node_ready = started.elapsed();
    let pebble = Pebble::start(PebbleOptions {
        address: Some(node.address()),
        http01_port: Some(TRAEFIK_HTTP_PORT),
        ..PebbleOptions::default()
    })
    .await?;
    let control_plane = node.control_plane();
    control_plane.create_namespace("kacme").await?;
    control_plane.create_namespace("apps").await?;
    let client = control_plane.client().await?;
    let dir = TempDir::new("node-gateway")?;
    let operator = start_local_operator(&node, &dir)?;
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: traefik\nspec:\n  controllerName: traefik.io/gateway-controller\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  gatewayClassName: traefik\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: {TRAEFIK_HTTP_PORT}\n"
    );
    apply(&node, &dir, &gateway).await?;
    let issuer = issuer_yaml("apps", "pebble", pebble.directory_url(), &pebble.ca_bundle_pem());
    let ingress_solver = format!("        ingress:\n          ingressClassName: {TRAEFIK_INGRESS_CLASS}\n");
    anyhow::ensure!(issuer.contains(&ingress_solver), "the node's issuer solves through Traefik's IngressClass");
    let issuer = issuer.replace(
        &ingress_solver,
        "        gatewayHTTPRoute:\n          parentRefs:\n          - name: web\n            sectionName: http\n",
    );
    apply(&node, &dir, &issuer).await?;
    let issuance_started = Instant::now();
    apply(&node, &dir, &certificate_yaml("apps", "web-gateway", "pebble", "web.gateway.node.test")).await?;
    let mut solver_containers = BTreeSet::new();
    let certificate = wait_ready_watching_solvers(&client, "apps", "web-gateway", &mut solver_containers, &operator)
        .await
        .with_context(|| {
            let log = std::fs::read_to_string(node.dir().join("traefik.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!("Traefik's log (last lines, newest first):\n{}", tail.join("\n"))
        })?;
    let issued_after = issuance_started.elapsed();
    let secret =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "apps").get("web-gateway-tls").await?;
    let chain = parse_chain(&secret.data.context("the Secret has data")?[TLS_CRT].0)?;
    verify_chain(&chain, &parse_ca_bundle(pebble.issuing_root_pem().as_bytes())?, jiff::Timestamp::now())?;
    assert_eq!(chain.leaf.dns_names, ["web.gateway.node.test"]);
    assert!(certificate.status.is_some_and(|s| s.revision == Some(1)));
    let routes: Api<kacme::gateway_api::HTTPRoute> = Api::namespaced(client.clone(), "apps");
    poll_until("the solver HTTPRoute to be removed", Duration::from_secs(30), Duration::from_millis(200), || async {
        let left = routes.list(&ListParams::default()).await?.items;
        Ok(if left.is_empty() { Ok(()) } else { Err(format!("{} left", left.len())) })
    })
    .await?;

    // The user's path for a Gateway's own certificate: annotate the Gateway and give it an HTTPS listener
    // naming a Secret; kacme issues it (through the same Gateway's HTTP listener) and Traefik serves it.
    let annotated_started = Instant::now();
    let annotated = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: web\n  namespace: apps\n  annotations:\n    kacme.dev/issuer: pebble\nspec:\n  gatewayClassName: traefik\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: {TRAEFIK_HTTP_PORT}\n  - name: https\n    protocol: HTTPS\n    port: {TRAEFIK_HTTPS_PORT}\n    hostname: secure.gateway.node.test\n    tls:\n      certificateRefs:\n      - name: secure-tls\n"
    );
    apply(&node, &dir, &annotated).await?;
    wait_ready_watching_solvers(&client, "apps", "secure-tls", &mut solver_containers, &operator).await?;
    let secret =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "apps").get("secure-tls").await?;
    let data = secret.data.context("the Secret has data")?;
    let issued = leaf_fingerprint(&data[TLS_CRT].0)?;
    let address = std::net::SocketAddr::from((kacme_testenv::BRIDGE_ADDRESS, TRAEFIK_HTTPS_PORT));
    let ca_crt = data[CA_CRT].0.clone();
    // Traefik loads the Secret from its watch: until then it presents its own default certificate, which
    // does not verify against ca.crt.
    let served = poll_until(
        "Traefik to serve the issued certificate",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(match served_leaf(address, "secure.gateway.node.test", &ca_crt).await {
                Ok(served) if served == issued => Ok(served),
                Ok(other) => Err(format!("Traefik presents {other}, not the issued {issued}")),
                Err(e) => Err(format!("{e:#}")),
            })
        },
    )
    .await?;
    eprintln!(
        "node gateway e2e: node with Traefik and the Gateway API Ready after {:.1}s; issued through Traefik's \
         Gateway {:.1}s after the Certificate was created; the annotated Gateway's listener served its issued \
         certificate (leaf {served}, verified against ca.crt for secure.gateway.node.test) {:.1}s after the \
         annotation; solver containers: {solver_containers:?}",
        node_ready.as_secs_f64(),
        issued_after.as_secs_f64(),
        annotated_started.elapsed().as_secs_f64(),
    );
    drop(operator);
    drop(pebble);
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}");
    let left = kacme_testenv::node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    Ok(())
}

/// The SHA-256 of the leaf certificate that the TLS server at `address` presents for `server_name`, after
/// verifying its chain and name against the PEM roots `ca_pem` (no client certificate).
async fn served_leaf(address: std::net::SocketAddr, server_name: &str, ca_pem: &[u8]) -> Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(certificate?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let handshake = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        anyhow::Ok(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await?)
    };
    let tls = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .with_context(|| format!("the TLS handshake with {address} timed out"))??;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).context("no server certificate")?;
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.to_vec()));
    leaf_fingerprint(pem.as_bytes())
}

/// The probe binary of kacme-testenv, built beside this test (`cargo test --workspace` builds it; alone:
/// `cargo build -p kacme-testenv --bin kacme-tls-probe`).
fn tls_probe_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.join("kacme-tls-probe")).filter(|p| p.is_file())
}

/// The SHA-256 of the leaf certificate (the first PEM block of `tls.crt`), as kacme-tls-probe prints it.
fn leaf_fingerprint(tls_crt: &[u8]) -> Result<String> {
    let first = pem::parse_many(tls_crt)?.into_iter().next().context("tls.crt holds a certificate")?;
    Ok(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, first.contents())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The leaf fingerprint of the Secret `namespace/name`, if it exists.
async fn secret_fingerprint(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<String>> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(name).await? else { return Ok(None) };
    match secret.data.as_ref().and_then(|d| d.get(TLS_CRT)) {
        Some(tls_crt) => Ok(Some(leaf_fingerprint(&tls_crt.0)?)),
        None => Ok(None),
    }
}

/// A Deployment of the probe image serving mutual TLS on 8443 with the files kacme mounts, annotated for a
/// workload certificate for `dns_name` from the Issuer `issuer`.
fn probe_deployment_yaml(name: &str, dns_name: &str, issuer: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: apps
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
        kacme.dev/names: {dns_name}
        kacme.dev/issuer: {issuer}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: probe
        image: {TLS_PROBE_IMAGE}
        imagePullPolicy: Never
        args: [serve, --listen, "0.0.0.0:8443"]
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: apps
spec:
  selector: {{app: {name}}}
  ports:
  - port: 8443
    targetPort: 8443
"#
    )
}

/// The one running Pod of the Deployment `app` in `apps`.
async fn running_pod(client: &kube::Client, app: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    poll_until(&format!("a running Pod of {app}"), Duration::from_secs(180), Duration::from_millis(200), || async {
        let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        Ok(match running.as_slice() {
            [pod] => Ok(pod.clone()),
            other => Err(format!("{} running", other.len())),
        })
    })
    .await
}

/// `kacme-tls-probe connect` run inside the client Pod against the server's Service: the handshake line,
/// `client=<sha256> server=<sha256>`.
async fn handshake(node: &Node, client_pod: &str, server_ip: &str, server_name: &str) -> Result<(String, String)> {
    let line = node
        .control_plane()
        .kubectl(&[
            "exec",
            "-n",
            "apps",
            client_pod,
            "--",
            "/kacme-tls-probe",
            "connect",
            &format!("{server_ip}:8443"),
            "--server-name",
            server_name,
        ])
        .await?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [client, server] => Ok((
            client.strip_prefix("client=").context("client=")?.to_string(),
            server.strip_prefix("server=").context("server=")?.to_string(),
        )),
        _ => bail!("unexpected handshake line {line:?}"),
    }
}

#[tokio::test]
async fn the_chart_runs_kacme_in_the_cluster_and_workloads_get_renewed_certificates_for_mutual_tls() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let test_name = "the_chart_runs_kacme_in_the_cluster_and_workloads_get_renewed_certificates_for_mutual_tls";
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED {test_name}: {reason}");
        return Ok(());
    }
    let Some(probe) = tls_probe_binary() else {
        eprintln!(
            "SKIPPED {test_name}: no kacme-tls-probe beside this test (cargo build -p kacme-testenv --bin kacme-tls-probe)"
        );
        return Ok(());
    };
    let started = Instant::now();
    let node = Node::start(NodeOptions {
        images: vec![kacme_image(&common::image_binary(), IMAGE_TAG)?, tls_probe_image(&probe)?],
        crds_dir: None,
        gateway_api: false,
        traefik: true,
        ..NodeOptions::default()
    })
    .await?;
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
    let client = control_plane.client().await?;
    let dir = TempDir::new("node-e2e-helm")?;

    // helm install: the real chart and image, in-cluster configuration, two replicas, the Lease, the webhook.
    let helm = Helm::for_cluster(control_plane.kubeconfig_path())?;
    let chart = chart_dir().display().to_string();
    let values = format!(
        "image.tag={IMAGE_TAG},image.pullPolicy=Never,replicaCount=2,webhook.enabled=true,logFormat=text,\
         backoff.initial=2s,backoff.max=8s,renewalJitter=1s,selfCheckDeadline=60s,\
         selfCheckAddress={}:{TRAEFIK_HTTP_PORT}",
        kacme_testenv::BRIDGE_ADDRESS
    );
    helm.run(&["install", "kacme", &chart, "--namespace", "kacme", "--create-namespace", "--set", &values]).await?;
    let installed = Instant::now();
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), "kacme");
    let operator_logs = || async {
        control_plane
            .kubectl(&["logs", "-n", "kacme", "-l", "app.kubernetes.io/name=kacme", "--tail=40", "--prefix"])
            .await
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let ready_pods =
        poll_until("two Ready operator Pods", Duration::from_secs(120), Duration::from_millis(250), || async {
            let list = operator_pods.list(&ListParams::default().labels("app.kubernetes.io/name=kacme")).await?;
            let ready: Vec<String> = list
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .map(|p| p.name_any())
                .collect();
            Ok(if ready.len() == 2 { Ok(ready) } else { Err(format!("{} Ready of {}", ready.len(), list.items.len())) })
        })
        .await;
    let ready_pods = match ready_pods {
        Ok(pods) => pods,
        Err(error) => return Err(error.context(operator_logs().await)),
    };
    let operators_ready = installed.elapsed();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kacme");
    let holder = poll_until("the leader Lease held", Duration::from_secs(60), Duration::from_millis(250), || async {
        Ok(match leases.get_opt("kacme-controller").await? {
            Some(lease) => match lease.spec.and_then(|s| s.holder_identity) {
                Some(holder) => Ok(holder),
                None => Err("no holder".to_string()),
            },
            None => Err("no Lease".to_string()),
        })
    })
    .await?;
    assert!(ready_pods.contains(&holder), "the Lease holder {holder} is one of the operator Pods {ready_pods:?}");

    // Issuers for both CAs; the namespace selected by the webhook.
    control_plane.create_namespace("apps").await?;
    control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await?;
    apply(&node, &dir, &issuer_yaml("apps", "pebble", pebble.directory_url(), &pebble.ca_bundle_pem())).await?;
    apply(&node, &dir, &issuer_yaml("apps", "step-ca", step_ca.directory_url(), step_ca.root_pem())).await?;

    // A Certificate from each CA, through a solver Pod, Service and Ingress routed by Traefik.
    let issuance_started = Instant::now();
    apply(&node, &dir, &certificate_yaml("apps", "web-pebble", "pebble", "web.pebble.node.test")).await?;
    apply(&node, &dir, &certificate_yaml("apps", "web-step-ca", "step-ca", "web.step-ca.node.test")).await?;
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), "apps");
    for name in ["web-pebble", "web-step-ca"] {
        let ready = poll_until(
            &format!("Certificate {name} Ready"),
            Duration::from_secs(180),
            Duration::from_millis(250),
            || async {
                let certificate = certificates.get(name).await?;
                let ready = condition(&certificate, "Ready").is_some_and(|(status, _, _)| status == "True");
                Ok(if ready { Ok(()) } else { Err(serde_json::to_string(&certificate.status)?) })
            },
        )
        .await;
        if let Err(error) = ready {
            return Err(error.context(operator_logs().await));
        }
        assert!(secret_fingerprint(&client, "apps", &format!("{name}-tls")).await?.is_some(), "{name}'s Secret");
    }
    let issued_after = issuance_started.elapsed();

    // Two annotated workloads (the webhook, reached by the apiserver through its Service, mounts their
    // Secrets), completing a mutual-TLS handshake from inside their Pods with the mounted files. From step-ca:
    // Pebble, like Let's Encrypt, issues `serverAuth` only, whatever the CSR asks, so its certificates cannot
    // authenticate a TLS client.
    let workloads_started = Instant::now();
    apply(&node, &dir, &probe_deployment_yaml("server", "server.apps.node.test", "step-ca")).await?;
    apply(&node, &dir, &probe_deployment_yaml("client", "client.apps.node.test", "step-ca")).await?;
    let server_pod = running_pod(&client, "server").await.map_err(|e| e.context("server"))?;
    let client_pod = running_pod(&client, "client").await.map_err(|e| e.context("client"))?;
    let workloads_running = workloads_started.elapsed();
    for pod in [&server_pod, &client_pod] {
        let mounted = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .any(|m| m.mount_path.trim_end_matches('/') == "/var/run/kacme");
        assert!(mounted, "{} has the Secret mounted at /var/run/kacme", pod.name_any());
    }
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "apps");
    let server_ip = services.get("server").await?.spec.and_then(|s| s.cluster_ip).context("the server's ClusterIP")?;
    let server_secret = secret_fingerprint(&client, "apps", "server-kacme-tls").await?.context("server-kacme-tls")?;
    let client_secret = secret_fingerprint(&client, "apps", "client-kacme-tls").await?.context("client-kacme-tls")?;
    let (client_pod_name, server_pod_name) = (client_pod.name_any(), server_pod.name_any());
    let first = poll_until(
        "a mutual-TLS handshake between the workloads",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            Ok(handshake(&node, &client_pod_name, &server_ip, "server.apps.node.test")
                .await
                .map_err(|e| format!("{e:#}")))
        },
    )
    .await;
    let first = match first {
        Ok(first) => first,
        Err(error) => {
            let logs = control_plane.kubectl(&["logs", "-n", "apps", &server_pod_name]).await.unwrap_or_default();
            return Err(error.context(format!("the server Pod's log:\n{logs}")));
        }
    };
    assert_eq!(
        first,
        (client_secret.clone(), server_secret.clone()),
        "the handshake presents the Secrets' certificates"
    );

    // Renewal: the Secret changes, the kubelet refreshes the files in the running Pods, and new handshakes
    // present the new certificates.
    let renewal_started = Instant::now();
    let kacme_renew = user_command(&kacme_binary(), control_plane.kubeconfig_path())
        .args(["renew", "server-kacme", "-n", "apps"])
        .output()
        .await?;
    assert!(kacme_renew.status.success(), "kacme renew: {}", String::from_utf8_lossy(&kacme_renew.stderr));
    let renewed =
        poll_until("the server's Secret renewed", Duration::from_secs(120), Duration::from_millis(250), || async {
            Ok(match secret_fingerprint(&client, "apps", "server-kacme-tls").await? {
                Some(fingerprint) if fingerprint != server_secret => Ok(fingerprint),
                _ => Err("not yet".to_string()),
            })
        })
        .await?;
    let secret_renewed = renewal_started.elapsed();
    let after = poll_until(
        "the renewed certificate in the server Pod's handshakes",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            Ok(match handshake(&node, &client_pod_name, &server_ip, "server.apps.node.test").await {
                Ok((_, server)) if server == renewed => Ok(server),
                Ok((_, server)) => Err(format!("server presents {server}")),
                Err(error) => Err(format!("{error:#}")),
            })
        },
    )
    .await?;
    assert_eq!(after, renewed);
    let files_refreshed = renewal_started.elapsed();
    let same_pod = running_pod(&client, "server").await?;
    assert_eq!(same_pod.name_any(), server_pod_name, "the renewal reached the running Pod: no restart");

    // helm uninstall removes the operator, its Services, RBAC and webhook configuration.
    helm.run(&["uninstall", "kacme", "--namespace", "kacme"]).await?;
    poll_until("the operator Pods gone", Duration::from_secs(60), Duration::from_millis(250), || async {
        let left = operator_pods.list(&ListParams::default().labels("app.kubernetes.io/name=kacme")).await?;
        Ok(if left.items.is_empty() { Ok(()) } else { Err(format!("{} left", left.items.len())) })
    })
    .await?;
    for (kind, name) in [
        ("deployment", "kacme"),
        ("service", "kacme-webhook"),
        ("service", "kacme-metrics"),
        ("mutatingwebhookconfiguration", "kacme"),
        ("clusterrole", "kacme"),
        ("clusterrolebinding", "kacme"),
    ] {
        let found =
            control_plane.kubectl(&["get", kind, name, "-n", "kacme", "--ignore-not-found", "-o", "name"]).await?;
        assert!(found.trim().is_empty(), "helm uninstall left {kind} {name}");
    }
    // ... and keeps the CRDs (helm never deletes a chart's crds/) and the users' data.
    for (kind, name, namespace) in [
        ("crd", "certificates.kacme.dev", "default"),
        ("certificate", "web-pebble", "apps"),
        ("secret", "web-pebble-tls", "apps"),
        ("secret", "server-kacme-tls", "apps"),
    ] {
        let found = control_plane.kubectl(&["get", kind, name, "-n", namespace, "-o", "name"]).await?;
        assert!(!found.trim().is_empty(), "helm uninstall kept {kind} {name}");
    }
    eprintln!(
        "helm e2e: node Ready after {:.1}s; two operator Pods Ready {:.1}s after helm install; both Certificates \
         {:.1}s; workloads running {:.1}s; renewed Secret {:.1}s and files in the running Pod {:.1}s after \
         kacme renew; test {:.1}s",
        (installed - started).as_secs_f64(),
        operators_ready.as_secs_f64(),
        issued_after.as_secs_f64(),
        workloads_running.as_secs_f64(),
        secret_renewed.as_secs_f64(),
        files_refreshed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop((pebble, step_ca));
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}");
    let left = kacme_testenv::node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    Ok(())
}
