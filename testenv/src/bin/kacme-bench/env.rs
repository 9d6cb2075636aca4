//! The benchmark's world: a control plane with an audit log, a CA, the solver stand-in (or, with `--node`,
//! a real node whose containers run the solver Pods and whose Traefik routes HTTP-01), unrelated objects
//! when asked, a ClusterIssuer, and `kacme controller` as a separate process under a user of its own; with
//! `--against cert-manager`, cert-manager's CRDs, ClusterIssuer, Certificates and controller instead.

use crate::args::{Args, CaKind, OperatorKind};
use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};
use kacme_testenv::{
    BRIDGE_ADDRESS, Binaries, ChildProcess, ControlPlane, ControlPlaneOptions, KACME_IMAGE_REPOSITORY, Node,
    NodeOptions, Pebble, PebbleOptions, SolverKind, SolverStandIn, StepCa, StepCaOptions, TRAEFIK_HTTP_PORT,
    TRAEFIK_INGRESS_CLASS, TempDir, kacme_image, poll_until,
};
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::{Client, ResourceExt as _};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The ClusterIssuer every benchmark Certificate uses.
pub const ISSUER: &str = "bench";
/// The solver Ingresses' class (the stand-in routes every Ingress, whatever its class).
const STAND_IN_INGRESS_CLASS: &str = "bench";
/// cert-manager's controller in the bin dir of tests/env/install.
const CERT_MANAGER_BINARY: &str = "cert-manager-controller";
/// cert-manager's CRDs in that bin dir.
const CERT_MANAGER_CRDS: &str = "cert-manager-crds";

/// What differs between the operators: their API, the user they authenticate as, where their
/// ClusterIssuers keep Secrets, and when a Certificate counts as Ready.
impl OperatorKind {
    /// The user the operator authenticates as; the audit log's lines of this user are its requests.
    pub fn user(self) -> &'static str {
        match self {
            OperatorKind::Kacme => "kacme-operator",
            OperatorKind::CertManager => "cert-manager-operator",
        }
    }

    /// Where ClusterIssuers keep their Secrets (and cert-manager its leader-election Lease).
    pub fn namespace(self) -> &'static str {
        match self {
            OperatorKind::Kacme => "kacme",
            OperatorKind::CertManager => "cert-manager",
        }
    }

    fn api_resource(self, kind: &str, plural: &str) -> ApiResource {
        let (group, version) = match self {
            OperatorKind::Kacme => ("kacme.dev", "v1alpha1"),
            OperatorKind::CertManager => ("cert-manager.io", "v1"),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    pub fn certificate_resource(self) -> ApiResource {
        self.api_resource("Certificate", "certificates")
    }

    fn cluster_issuer_resource(self) -> ApiResource {
        self.api_resource("ClusterIssuer", "clusterissuers")
    }

    /// Whether a Certificate is issued and Ready. kacme: a revision, Ready=True, no order in flight.
    /// cert-manager: its Ready condition True (its readiness controller sets it once the Secret holds a
    /// certificate that matches the spec and is not due for renewal).
    pub fn certificate_ready(self) -> fn(&DynamicObject) -> bool {
        match self {
            OperatorKind::Kacme => certificate_ready,
            OperatorKind::CertManager => cert_manager_certificate_ready,
        }
    }

    /// The Certificate that the benchmark creates as number `index`: the same name, Secret name, issuer and DNS
    /// name for both operators.
    pub fn certificate(self, namespace: &str, index: usize) -> Result<DynamicObject> {
        let name = format!("cert-{index}");
        let api_version = self.certificate_resource().api_version;
        let issuer_ref = match self {
            OperatorKind::Kacme => serde_json::json!({"name": ISSUER, "kind": "ClusterIssuer"}),
            OperatorKind::CertManager => {
                serde_json::json!({"name": ISSUER, "kind": "ClusterIssuer", "group": "cert-manager.io"})
            }
        };
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": api_version,
            "kind": "Certificate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "secretName": format!("{name}-tls"),
                "issuerRef": issuer_ref,
                "dnsNames": [format!("{name}.{namespace}.bench.test")],
            },
        }))?)
    }

    /// The ClusterIssuer: ACME at the CA's directory, trusting its bundle, HTTP-01 through Ingresses of the
    /// stand-in's class. (cert-manager's `caBundle` is base64 of the PEM; kacme's is the PEM.)
    fn cluster_issuer(self, directory_url: &str, bundle: &str, ingress_class: &str) -> Result<DynamicObject> {
        let (api_version, ca_bundle) = match self {
            OperatorKind::Kacme => ("kacme.dev/v1alpha1", bundle.to_string()),
            OperatorKind::CertManager => {
                ("cert-manager.io/v1", base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes()))
            }
        };
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": api_version,
            "kind": "ClusterIssuer",
            "metadata": {"name": ISSUER},
            "spec": {"acme": {
                "server": directory_url,
                "caBundle": ca_bundle,
                "privateKeySecretRef": {"name": "bench-account"},
                "solvers": [{"http01": {"ingress": {"ingressClassName": ingress_class}}}],
            }},
        }))?)
    }

    /// The kind of solver Pods the stand-in runs for this operator.
    fn solver_kind(self) -> SolverKind {
        match self {
            OperatorKind::Kacme => SolverKind::Kacme,
            OperatorKind::CertManager => SolverKind::CertManager,
        }
    }
}

/// cert-manager's controller and CRD directory: from the arguments, else from tests/env/install's bin dir.
pub fn cert_manager_paths(args: &Args) -> Result<(PathBuf, PathBuf)> {
    let binaries = || Binaries::locate();
    let binary = match &args.cert_manager {
        Some(path) => path.clone(),
        None => binaries()?.dir().join(CERT_MANAGER_BINARY),
    };
    let crds = match &args.cert_manager_crds {
        Some(path) => path.clone(),
        None => binaries()?.dir().join(CERT_MANAGER_CRDS),
    };
    if !binary.is_file() {
        bail!(
            "cert-manager's controller {} does not exist (build it: tests/env/install cert-manager)",
            binary.display()
        );
    }
    if !crds.is_dir() {
        bail!("cert-manager's CRDs {} do not exist (copy them: tests/env/install cert-manager)", crds.display());
    }
    Ok((binary, crds))
}

pub enum Ca {
    Pebble(Pebble),
    StepCa(StepCa),
}

impl Ca {
    pub fn pebble(&self) -> Option<&Pebble> {
        match self {
            Ca::Pebble(pebble) => Some(pebble),
            Ca::StepCa(_) => None,
        }
    }
}

/// What the operator's binary supports (the metrics endpoint and leader election came later).
#[derive(Clone, Copy, Debug, Default)]
pub struct OperatorFeatures {
    pub metrics_address: bool,
}

impl OperatorFeatures {
    pub fn detect(kacme: &Path) -> Result<OperatorFeatures> {
        let output = std::process::Command::new(kacme)
            .args(["controller", "--help"])
            .output()
            .with_context(|| format!("running {} controller --help", kacme.display()))?;
        let help = String::from_utf8_lossy(&output.stdout);
        Ok(OperatorFeatures { metrics_address: help.contains("--metrics-address") })
    }
}

/// The tag of the kacme image on the real node: the solver Pods' image (`--solver-image`).
const NODE_IMAGE_TAG: &str = "bench";

/// Where the Certificates are issued: a control plane with the solver stand-in, or a real node.
pub enum Cluster {
    Local(Box<ControlPlane>),
    Node(Box<Node>),
}

pub struct BenchEnv {
    /// Which operator this environment runs.
    pub kind: OperatorKind,
    pub operator: Option<ChildProcess>,
    pub stand_in: Option<SolverStandIn>,
    pub ca: Ca,
    pub cluster: Cluster,
    pub client: Client,
    pub namespaces: Vec<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub dir: TempDir,
}

impl BenchEnv {
    /// Starts the CA and the control plane (with `--node`: the node, then the CA on its address, dialing
    /// Traefik for HTTP-01) and creates the namespaces (and nothing of kacme yet).
    pub async fn start(args: &Args) -> Result<BenchEnv> {
        let kind = args.operator;
        let crds_dir = match kind {
            OperatorKind::Kacme => args.crds.clone(),
            OperatorKind::CertManager => cert_manager_paths(args)?.1,
        };
        let (ca, cluster) = if args.node {
            let node = Node::start(NodeOptions {
                images: vec![kacme_image(&args.kacme, NODE_IMAGE_TAG)?],
                crds_dir: Some(crds_dir.clone()),
                traefik: true,
                audit_log: true,
                users: vec![kind.user().into()],
                ..NodeOptions::default()
            })
            .await?;
            let ca = start_ca(args.ca, Some((node.address(), TRAEFIK_HTTP_PORT))).await?;
            (ca, Cluster::Node(Box::new(node)))
        } else {
            let ca = start_ca(args.ca, None).await?;
            let control_plane = ControlPlane::start_with_options(ControlPlaneOptions {
                crds_dir: Some(crds_dir),
                audit_log: true,
                users: vec![kind.user().into()],
                ..ControlPlaneOptions::default()
            })
            .await?;
            (ca, Cluster::Local(Box::new(control_plane)))
        };
        let control_plane = match &cluster {
            Cluster::Local(control_plane) => control_plane,
            Cluster::Node(node) => node.control_plane(),
        };
        let client = control_plane.client().await?;
        let namespaces: Vec<String> = (0..args.namespaces).map(|i| format!("bench-{i}")).collect();
        let all: Vec<&str> = std::iter::once(kind.namespace()).chain(namespaces.iter().map(String::as_str)).collect();
        futures::stream::iter(all.iter().map(|name| control_plane.create_namespace(name)))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(BenchEnv {
            kind,
            operator: None,
            stand_in: None,
            ca,
            cluster,
            client,
            namespaces,
            metrics_addr: None,
            dir: TempDir::new("bench")?,
        })
    }

    /// The control plane (the node's, with `--node`).
    pub fn control_plane(&self) -> &ControlPlane {
        match &self.cluster {
            Cluster::Local(control_plane) => control_plane,
            Cluster::Node(node) => node.control_plane(),
        }
    }

    /// Creates `secrets` Secrets of `secret_bytes` each and `pods` Pods that have nothing to do with kacme,
    /// spread over the namespaces.
    pub async fn create_unrelated_objects(&self, secrets: usize, secret_bytes: usize, pods: usize) -> Result<()> {
        let started = Instant::now();
        let filler: Vec<u8> = (0..secret_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        let secret_creates = (0..secrets).map(|i| {
            let namespace = &self.namespaces[i % self.namespaces.len()];
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    labels: Some(BTreeMap::from([("app".to_string(), "unrelated".to_string())])),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([("blob".to_string(), ByteString(filler.clone()))])),
                ..Secret::default()
            };
            async move { api.create(&PostParams::default(), &secret).await.map(|_| ()) }
        });
        futures::stream::iter(secret_creates)
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .context("creating unrelated Secrets")?;
        let pod_creates = (0..pods).map(|i| {
            let namespace = &self.namespaces[i % self.namespaces.len()];
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    labels: Some(BTreeMap::from([("app".to_string(), "unrelated".to_string())])),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.invalid/unrelated:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
                ..Pod::default()
            };
            async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
        });
        futures::stream::iter(pod_creates)
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .context("creating unrelated Pods")?;
        eprintln!(
            "kacme-bench: created {secrets} unrelated Secrets ({secret_bytes} bytes each) and {pods} unrelated Pods in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Starts the solver stand-in (not on a node), creates the ClusterIssuer, starts the operator and waits
    /// until the ClusterIssuer is Ready (the operator is up and registered its ACME account).
    pub async fn start_operator(&mut self, args: &Args, features: OperatorFeatures) -> Result<Duration> {
        let (directory_url, bundle, http01) = match &self.ca {
            Ca::Pebble(p) => (p.directory_url().to_string(), p.ca_bundle_pem(), p.http01_addr()),
            Ca::StepCa(s) => (s.directory_url().to_string(), s.root_pem().to_string(), s.http01_addr()),
        };
        let on_node = matches!(self.cluster, Cluster::Node(_));
        if !on_node {
            let kinds = [self.kind.solver_kind()];
            self.stand_in = Some(SolverStandIn::start_for(self.client.clone(), &args.kacme, http01, &kinds).await?);
        }
        let ingress_class = if on_node { TRAEFIK_INGRESS_CLASS } else { STAND_IN_INGRESS_CLASS };
        let issuer = self.kind.cluster_issuer(&directory_url, &bundle, ingress_class)?;
        let issuers: Api<DynamicObject> = Api::all_with(self.client.clone(), &self.kind.cluster_issuer_resource());
        issuers.create(&PostParams::default(), &issuer).await.context("creating the ClusterIssuer")?;

        let address = self.control_plane().address();
        let metrics_addr = address.socket_addr(address.free_port()?);
        let (program, operator_args, extra_env) = match self.kind {
            OperatorKind::Kacme => {
                let operator_args = kacme_args(args, on_node, features.metrics_address.then_some(metrics_addr));
                if features.metrics_address {
                    self.metrics_addr = Some(metrics_addr);
                }
                (args.kacme.clone(), operator_args, vec![("RUST_LOG".to_string(), "info".to_string())])
            }
            OperatorKind::CertManager => {
                let (binary, _) = cert_manager_paths(args)?;
                let kubeconfig = self.control_plane().kubeconfig_of(self.kind.user())?.to_path_buf();
                self.metrics_addr = Some(metrics_addr);
                // Its HTTP-01 self-check GETs http://<name>/.well-known/acme-challenge/<token> with Go's
                // http.ProxyFromEnvironment: through the stand-in as a proxy it reaches the solver the way the
                // CA does (by Host and path), without DNS for the benchmark's names or port 80. Loopback
                // addresses (the apiserver, the CA) are never proxied.
                let proxy = format!("http://{http01}");
                (
                    binary,
                    cert_manager_args(self.kind, &kubeconfig, metrics_addr),
                    vec![("HTTP_PROXY".to_string(), proxy)],
                )
            }
        };
        let mut operator_args = operator_args;
        operator_args.extend(args.operator_args.iter().cloned());
        let mut envs: Vec<(&str, &std::ffi::OsStr)> = self.control_plane().child_env_as(self.kind.user())?;
        envs.extend(extra_env.iter().map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v))));
        let started = Instant::now();
        let log_name = format!("{}-controller", self.kind.as_str());
        let operator =
            ChildProcess::spawn(&log_name, &program, &operator_args, &envs, self.dir.join(format!("{log_name}.log")))?;
        let waited =
            poll_until("the ClusterIssuer Ready", Duration::from_secs(60), Duration::from_millis(50), || async {
                operator.ensure_running()?;
                let issuer = issuers.get(ISSUER).await?;
                Ok(if condition_true(&issuer, "Ready") {
                    Ok(())
                } else {
                    Err(format!("status: {}", issuer.data.get("status").cloned().unwrap_or_default()))
                })
            })
            .await;
        if let Err(error) = waited {
            bail!("{error:#}\noperator log:\n{}", operator.log_tail(30));
        }
        self.operator = Some(operator);
        Ok(started.elapsed())
    }

    pub fn operator(&self) -> Result<&ChildProcess> {
        self.operator.as_ref().context("the operator is not running")
    }
}

/// `kacme controller`'s arguments (before `--operator-arg`s): its defaults but for the namespace of
/// ClusterIssuer Secrets and the solver image (and on a real node, the self-check through Traefik).
fn kacme_args(args: &Args, on_node: bool, metrics_addr: Option<SocketAddr>) -> Vec<String> {
    let solver_image =
        if on_node { format!("{KACME_IMAGE_REPOSITORY}:{NODE_IMAGE_TAG}") } else { "kacme:bench".to_string() };
    let mut operator_args: Vec<String> = [
        "controller",
        "--cluster-resource-namespace",
        OperatorKind::Kacme.namespace(),
        "--solver-image",
        &solver_image,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if on_node {
        // As tests/node_e2e.rs: Traefik routes a solver Ingress only once its Pod is ready (and after its
        // configuration throttle); the self-check waits for that before the CA is told to validate.
        operator_args.extend([
            "--self-check-deadline=60s".to_string(),
            format!("--self-check-address={BRIDGE_ADDRESS}:{TRAEFIK_HTTP_PORT}"),
        ]);
    }
    if let Some(concurrency) = args.concurrency {
        operator_args.extend(["--concurrency".to_string(), concurrency.to_string()]);
    }
    if let Some(addr) = metrics_addr {
        operator_args.extend(["--metrics-address".to_string(), addr.to_string()]);
    }
    operator_args
}

/// cert-manager's arguments (before `--operator-arg`s): its defaults (leader election on, 5 workers per
/// controller, 60 challenges at once, the default controllers) but for the kubeconfig, the namespace of
/// ClusterIssuer Secrets and the Lease, the metrics address, and the client-side rate limit. On a cluster with
/// API Priority and Fairness (the default since Kubernetes 1.20) cert-manager turns its client-side limit off
/// (QPS and burst -1, `isAPFEnabled` in pkg/controller/context.go); the benchmark's apiserver runs without
/// APF, where cert-manager would fall back to 20 requests per second (burst 50), so the limit is turned off
/// as it would be on a real cluster. `--operator-arg=--kube-api-qps=20 --operator-arg=--kube-api-burst=50`
/// measures the fallback.
fn cert_manager_args(kind: OperatorKind, kubeconfig: &Path, metrics_addr: SocketAddr) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--cluster-resource-namespace={}", kind.namespace()),
        format!("--leader-election-namespace={}", kind.namespace()),
        format!("--metrics-listen-address={metrics_addr}"),
        "--kube-api-qps=-1".to_string(),
        "--kube-api-burst=-1".to_string(),
        "--acme-http01-solver-image=cert-manager-acmesolver:bench".to_string(),
    ]
}

/// The CA, on its own loopback address or, with `on`, at that address dialing that port for HTTP-01.
async fn start_ca(kind: CaKind, on: Option<(kacme_testenv::LoopbackAddress, u16)>) -> Result<Ca> {
    let (address, http01_port) = (on.as_ref().map(|(a, _)| a.clone()), on.as_ref().map(|(_, p)| *p));
    Ok(match kind {
        CaKind::Pebble => Ca::Pebble(
            Pebble::start(PebbleOptions {
                // A clean protocol cost: no rejected nonces, no authorization reuse.
                nonce_reject_percent: 0,
                authz_reuse_percent: Some(0),
                address,
                http01_port,
                ..PebbleOptions::default()
            })
            .await?,
        ),
        CaKind::StepCa => {
            Ca::StepCa(StepCa::start(StepCaOptions { address, http01_port, ..StepCaOptions::default() }).await?)
        }
    })
}

/// Whether a condition of the object's status holds.
pub fn condition_true(object: &DynamicObject, type_: &str) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

/// Whether a kacme Certificate is issued and Ready (a revision, Ready=True, no order in flight).
pub fn certificate_ready(object: &DynamicObject) -> bool {
    let status = &object.data["status"];
    condition_true(object, "Ready") && status["order"].is_null() && status["revision"].as_i64().unwrap_or(0) >= 1
}

/// Whether a cert-manager Certificate is Ready (its Ready condition True).
fn cert_manager_certificate_ready(object: &DynamicObject) -> bool {
    condition_true(object, "Ready")
}

/// `namespace/name` of an object.
pub fn key_of(object: &DynamicObject) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_operators_get_the_same_certificate_in_their_own_api() {
        let kacme = OperatorKind::Kacme.certificate("bench-3", 13).unwrap();
        let cert_manager = OperatorKind::CertManager.certificate("bench-3", 13).unwrap();
        assert_eq!(kacme.types.as_ref().unwrap().api_version, "kacme.dev/v1alpha1");
        assert_eq!(cert_manager.types.as_ref().unwrap().api_version, "cert-manager.io/v1");
        for certificate in [&kacme, &cert_manager] {
            assert_eq!(key_of(certificate), "bench-3/cert-13");
            assert_eq!(certificate.data["spec"]["secretName"], "cert-13-tls");
            assert_eq!(certificate.data["spec"]["dnsNames"][0], "cert-13.bench-3.bench.test");
            assert_eq!(certificate.data["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        }
    }

    #[test]
    fn cert_managers_issuer_carries_the_bundle_in_base64() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let issuer = OperatorKind::CertManager.cluster_issuer("https://127.0.0.1:14000/dir", pem, "bench").unwrap();
        let encoded = issuer.data["spec"]["acme"]["caBundle"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap(), pem.as_bytes());
        let kacme = OperatorKind::Kacme.cluster_issuer("https://127.0.0.1:14000/dir", pem, "bench").unwrap();
        assert_eq!(kacme.data["spec"]["acme"]["caBundle"], pem);
    }

    #[test]
    fn cert_manager_counts_ready_by_its_ready_condition() {
        let object = |status: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": "c", "namespace": "n"}, "status": status,
            }))
            .unwrap()
        };
        let ready = OperatorKind::CertManager.certificate_ready();
        assert!(ready(&object(serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}))));
        assert!(!ready(&object(serde_json::json!({"conditions": [{"type": "Ready", "status": "False"}]}))));
        assert!(!ready(&object(serde_json::json!({}))));
    }
}
