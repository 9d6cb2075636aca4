//! The benchmark's world: a control plane with an audit log, a CA, the solver stand-in (or, with `--node`,
//! a real node whose containers run the solver Pods and whose Traefik routes HTTP-01), unrelated objects
//! when asked, a ClusterIssuer, and `kacme controller` as a separate process under a user of its own.

use crate::args::{Args, CaKind};
use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};
use kacme_testenv::{
    BRIDGE_ADDRESS, ChildProcess, ControlPlane, ControlPlaneOptions, KACME_IMAGE_REPOSITORY, Node, NodeOptions, Pebble,
    PebbleOptions, SolverStandIn, StepCa, StepCaOptions, TRAEFIK_HTTP_PORT, TRAEFIK_INGRESS_CLASS, TempDir,
    kacme_image, poll_until,
};
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::{Client, ResourceExt as _};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The user `kacme controller` authenticates as; the audit log's lines of this user are its requests.
pub const OPERATOR_USER: &str = "kacme-operator";
/// The ClusterIssuer every benchmark Certificate uses.
pub const ISSUER: &str = "bench";
/// Where ClusterIssuers keep their Secrets.
pub const OPERATOR_NAMESPACE: &str = "kacme";

pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "kacme.dev".into(),
        version: "v1alpha1".into(),
        api_version: "kacme.dev/v1alpha1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

fn cluster_issuer_resource() -> ApiResource {
    ApiResource {
        group: "kacme.dev".into(),
        version: "v1alpha1".into(),
        api_version: "kacme.dev/v1alpha1".into(),
        kind: "ClusterIssuer".into(),
        plural: "clusterissuers".into(),
    }
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
        let (ca, cluster) = if args.node {
            let node = Node::start(NodeOptions {
                images: vec![kacme_image(&args.kacme, NODE_IMAGE_TAG)?],
                crds_dir: Some(args.crds.clone()),
                traefik: true,
                audit_log: true,
                users: vec![OPERATOR_USER.into()],
                ..NodeOptions::default()
            })
            .await?;
            let ca = start_ca(args.ca, Some((node.address(), TRAEFIK_HTTP_PORT))).await?;
            (ca, Cluster::Node(Box::new(node)))
        } else {
            let ca = start_ca(args.ca, None).await?;
            let control_plane = ControlPlane::start_with_options(ControlPlaneOptions {
                crds_dir: Some(args.crds.clone()),
                audit_log: true,
                users: vec![OPERATOR_USER.into()],
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
        let all: Vec<&str> = std::iter::once(OPERATOR_NAMESPACE).chain(namespaces.iter().map(String::as_str)).collect();
        futures::stream::iter(all.iter().map(|name| control_plane.create_namespace(name)))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(BenchEnv {
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
            self.stand_in = Some(SolverStandIn::start(self.client.clone(), &args.kacme, http01).await?);
        }
        let ingress_class = if on_node { TRAEFIK_INGRESS_CLASS } else { "bench" };
        let issuer: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "kacme.dev/v1alpha1",
            "kind": "ClusterIssuer",
            "metadata": {"name": ISSUER},
            "spec": {"acme": {
                "server": directory_url,
                "caBundle": bundle,
                "privateKeySecretRef": {"name": "bench-account"},
                "solvers": [{"http01": {"ingress": {"ingressClassName": ingress_class}}}],
            }},
        }))?;
        let issuers: Api<DynamicObject> = Api::all_with(self.client.clone(), &cluster_issuer_resource());
        issuers.create(&PostParams::default(), &issuer).await.context("creating the ClusterIssuer")?;

        let solver_image =
            if on_node { format!("{KACME_IMAGE_REPOSITORY}:{NODE_IMAGE_TAG}") } else { "kacme:bench".to_string() };
        let mut operator_args: Vec<String> =
            ["controller", "--cluster-resource-namespace", OPERATOR_NAMESPACE, "--solver-image", &solver_image]
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
        if features.metrics_address {
            let address = self.control_plane().address();
            let addr = address.socket_addr(address.free_port()?);
            operator_args.extend(["--metrics-address".to_string(), addr.to_string()]);
            self.metrics_addr = Some(addr);
        }
        operator_args.extend(args.operator_args.iter().cloned());
        let mut envs = self.control_plane().child_env_as(OPERATOR_USER)?;
        envs.push(("RUST_LOG", std::ffi::OsStr::new("info")));
        let started = Instant::now();
        let operator = ChildProcess::spawn(
            "kacme-controller",
            &args.kacme,
            &operator_args,
            &envs,
            self.dir.join("kacme-controller.log"),
        )?;
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

/// Whether a Certificate is issued and Ready (a revision, Ready=True, no order in flight).
pub fn certificate_ready(object: &DynamicObject) -> bool {
    let status = &object.data["status"];
    condition_true(object, "Ready") && status["order"].is_null() && status["revision"].as_i64().unwrap_or(0) >= 1
}

/// The Certificate that the benchmark creates as number `index`.
pub fn certificate(namespace: &str, index: usize) -> Result<DynamicObject> {
    let name = format!("cert-{index}");
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "kacme.dev/v1alpha1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "secretName": format!("{name}-tls"),
            "issuerRef": {"name": ISSUER, "kind": "ClusterIssuer"},
            "dnsNames": [format!("{name}.{namespace}.bench.test")],
        },
    }))?)
}

/// `namespace/name` of an object.
pub fn key_of(object: &DynamicObject) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}
