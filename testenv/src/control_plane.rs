//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

use crate::binaries::Binaries;
use crate::https::{HttpsClient, error_chain};
use crate::loopback::LoopbackAddress;
use crate::pki::{TestCa, random_hex, signing_key_pair};
use crate::process::{ChildProcess, TempDir, poll_until};
use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The field manager of everything the test environment applies.
pub const FIELD_MANAGER: &str = "kacme-testenv";

/// How long to wait for the control plane to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The apiserver's audit policy when [`ControlPlaneOptions::audit_log`] is on: every request at Metadata
/// level (who, verb, resource, response code; no bodies), once when a long-running request (a watch)
/// starts and once when any request completes.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [\"system:apiserver\"]
- level: Metadata
";

/// How to start a [`ControlPlane`].
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// The loopback address to run on; a fresh one when `None`.
    pub address: Option<LoopbackAddress>,
    /// CRDs (`*.yaml`) to install before the controller-manager starts (see [`ControlPlane::start_with_crds`]).
    pub crds_dir: Option<PathBuf>,
    /// Install the Gateway API CRDs too (the standard channel: GatewayClass, Gateway, HTTPRoute, GRPCRoute,
    /// ReferenceGrant, BackendTLSPolicy; and the experimental XListenerSet; pinned in `tests/env/install`; see [`Binaries::gateway_api_crds`]), before the controller-manager
    /// starts like `crds_dir`.
    pub gateway_api: bool,
    /// Have the apiserver write an audit log (JSON lines, Metadata level) to `audit.log` in the control
    /// plane's directory; read it with [`crate::AuditReader`] to count requests per user and verb.
    pub audit_log: bool,
    /// Further users (besides `admin`), each with a token, in group `system:masters`, and a kubeconfig of
    /// its own ([`ControlPlane::kubeconfig_of`]): give a process its own identity so that its requests can be
    /// told apart from the test's in the audit log.
    pub users: Vec<String>,
    /// Serve a real node ([`crate::Node`] sets this; see [`NodeAccess`]).
    pub node: Option<NodeAccess>,
}

/// What a control plane needs to serve a real node: the apiserver listens on and advertises the node's
/// bridge address (etcd stays on loopback), its serving certificate also names that address and the
/// `kubernetes` Service's ClusterIP ([`KUBERNETES_SERVICE_IP`]); authorization is `Node,RBAC` with the
/// `NodeRestriction` admission plugin; the default endpoint reconciler keeps the `kubernetes` Service's
/// endpoints; the apiserver reaches kubelets by InternalIP with a client certificate (group
/// `system:masters`); the controller-manager runs every controller, and kube-scheduler runs too. The
/// kubelet, kube-proxy and kube-scheduler each get a token and a kubeconfig of their own
/// ([`ControlPlane::component_kubeconfig`]).
#[derive(Clone, Debug)]
pub struct NodeAccess {
    /// The node's bridge address: the apiserver listens there only.
    pub address: Ipv4Addr,
    /// The node's name: the kubelet authenticates as `system:node:<name>`.
    pub node_name: String,
}

/// The ClusterIP of the `kubernetes` Service (the first address of `--service-cluster-ip-range`).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// etcd + kube-apiserver + kube-controller-manager, all on one loopback address, stopped on drop.
///
/// The apiserver authenticates an `admin` user (group `system:masters`) with a bearer token, authorizes with
/// RBAC, and signs service-account tokens (TokenRequest works). The controller-manager runs the garbage
/// collector, namespace, service-account, service-account-token, deployment and replicaset controllers.
/// Nothing runs Pods: see [`crate::SolverStandIn`].
pub struct ControlPlane {
    // Field order is drop order: processes first (apiserver before etcd), the directory last.
    scheduler: Option<ChildProcess>,
    controller_manager: ChildProcess,
    apiserver: ChildProcess,
    etcd: ChildProcess,
    kubectl: PathBuf,
    server: String,
    ca_pem: String,
    admin_token: String,
    kubeconfig: PathBuf,
    user_kubeconfigs: Vec<(String, PathBuf)>,
    component_kubeconfigs: Vec<(String, PathBuf)>,
    audit_log: Option<PathBuf>,
    address: LoopbackAddress,
    dir: TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("server", &self.server).field("dir", &self.dir.path()).finish()
    }
}

impl ControlPlane {
    /// Starts a control plane on a loopback address of its own and waits until it serves requests (apiserver
    /// `/readyz`) and the controller-manager works (the `default` ServiceAccount of namespace `default`
    /// exists).
    pub async fn start() -> Result<Self> {
        Self::start_with(LoopbackAddress::allocate()?, None).await
    }

    /// Like [`ControlPlane::start`], with the CRDs of `crds_dir` installed (and Established) before the
    /// controller-manager starts, so that its garbage collector watches them from the start. CRDs installed
    /// later with [`ControlPlane::install_crds`] are only noticed by the garbage collector at its next
    /// discovery sync (every 30 s): until then, deleting a custom-resource owner does not collect what it owns.
    pub async fn start_with_crds(crds_dir: impl AsRef<Path>) -> Result<Self> {
        Self::start_with(LoopbackAddress::allocate()?, Some(crds_dir.as_ref())).await
    }

    /// Starts a control plane on the given loopback address, with the CRDs of `crds_dir` installed before the
    /// controller-manager starts when given (see [`ControlPlane::start_with_crds`]).
    pub async fn start_with(address: LoopbackAddress, crds_dir: Option<&Path>) -> Result<Self> {
        Self::start_with_options(ControlPlaneOptions {
            address: Some(address),
            crds_dir: crds_dir.map(Path::to_path_buf),
            ..ControlPlaneOptions::default()
        })
        .await
    }

    /// Starts a control plane as `options` say (address, CRDs, audit log, extra users).
    pub async fn start_with_options(options: ControlPlaneOptions) -> Result<Self> {
        let started = Instant::now();
        let address = match options.address {
            Some(address) => address,
            None => LoopbackAddress::allocate()?,
        };
        let crds_dir = options.crds_dir.as_deref();
        let binaries = Binaries::locate()?;
        let gateway_api_crds = if options.gateway_api { Some(binaries.gateway_api_crds()?) } else { None };
        let [etcd_bin, apiserver_bin, kcm_bin, kubectl] =
            binaries.paths(["etcd", "kube-apiserver", "kube-controller-manager", "kubectl"])?;
        let dir = TempDir::new("control-plane")?;
        let node = options.node.as_ref();
        let ports = address.free_ports(3)?;
        let (etcd_client_port, etcd_peer_port) = (ports[0], ports[1]);
        // The apiserver's address: the loopback one, or the node's bridge address.
        let (ip, apiserver_port) = match node {
            None => (address.ip(), ports[2]),
            Some(node) => {
                let listener = TcpListener::bind((node.address, 0))
                    .with_context(|| format!("binding a free port on the node address {}", node.address))?;
                (node.address, listener.local_addr()?.port())
            }
        };
        let etcd_ip = address.ip();

        // Credentials: a serving certificate, static tokens, service-account signing keys.
        let ca = TestCa::root("kacme-testenv control plane CA")?;
        let mut serving_names = vec![ip.to_string()];
        if node.is_some() {
            serving_names.push(KUBERNETES_SERVICE_IP.to_string());
        }
        let serving = ca.issue_server(
            &[
                serving_names,
                vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "kubernetes".into(),
                    "kubernetes.default".into(),
                    "kubernetes.default.svc".into(),
                ],
            ]
            .concat(),
        )?;
        let (sa_key, sa_public) = signing_key_pair()?;
        let admin_token = random_hex(24)?;
        let kcm_token = random_hex(24)?;
        let mut users = Vec::new();
        for user in &options.users {
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
                bail!("user name {user:?}: use letters, digits and - _ . : only");
            }
            users.push((user.clone(), random_hex(24)?));
        }
        // The node's components: (kubeconfig name, user, group).
        let components: Vec<(&str, String, &str)> = match node {
            None => Vec::new(),
            Some(node) => vec![
                ("kubelet", format!("system:node:{}", node.node_name), "system:nodes"),
                ("kube-proxy", "system:kube-proxy".into(), "system:node-proxier"),
                ("kube-scheduler", "system:kube-scheduler".into(), "system:kube-scheduler"),
                // The node's ingress controller (test infrastructure, not under test: no RBAC of its own).
                ("traefik", "kacme-testenv:traefik".into(), "system:masters"),
            ],
        };
        let mut component_tokens = Vec::new();
        for (name, user, group) in &components {
            component_tokens.push((name.to_string(), user.clone(), group.to_string(), random_hex(24)?));
        }
        write(&dir, "ca.crt", &ca.cert_pem)?;
        write(&dir, "apiserver.crt", &serving.cert_pem)?;
        write(&dir, "apiserver.key", &serving.key_pem)?;
        write(&dir, "sa.key", &sa_key)?;
        write(&dir, "sa.pub", &sa_public)?;
        write(
            &dir,
            "tokens.csv",
            &format!(
                "{admin_token},admin,admin,\"system:masters\"\n\
                 {kcm_token},system:kube-controller-manager,kube-controller-manager,\"system:masters\"\n{}",
                users
                    .iter()
                    .map(|(user, token)| format!("{token},{user},{user},\"system:masters\"\n"))
                    .chain(
                        component_tokens
                            .iter()
                            .map(|(_, user, group, token)| format!("{token},{user},{user},\"{group}\"\n"))
                    )
                    .collect::<String>()
            ),
        )?;
        let server = format!("https://{ip}:{apiserver_port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &ca.cert_pem, "admin", &admin_token))?;
        let mut user_kubeconfigs = Vec::new();
        for (user, token) in &users {
            let path = dir.join(format!("{user}.kubeconfig"));
            std::fs::write(&path, kubeconfig_yaml(&server, &ca.cert_pem, user, token))?;
            user_kubeconfigs.push((user.clone(), path));
        }
        let mut component_kubeconfigs = Vec::new();
        for (name, user, _, token) in &component_tokens {
            let path = dir.join(format!("{name}.kubeconfig"));
            std::fs::write(&path, kubeconfig_yaml(&server, &ca.cert_pem, user, token))?;
            component_kubeconfigs.push((name.clone(), path));
        }
        let mut node_args = Vec::new();
        if node.is_some() {
            let kubelet_client = ca.issue_client("kube-apiserver-kubelet-client", "system:masters")?;
            write(&dir, "kubelet-client.crt", &kubelet_client.cert_pem)?;
            write(&dir, "kubelet-client.key", &kubelet_client.key_pem)?;
            node_args.extend([
                "--authorization-mode=Node,RBAC".to_string(),
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement".into(),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-client-certificate={}", dir.join("kubelet-client.crt").display()),
                format!("--kubelet-client-key={}", dir.join("kubelet-client.key").display()),
            ]);
        } else {
            node_args.extend([
                "--authorization-mode=RBAC".to_string(),
                // No kubelet and a loopback advertise address: do not maintain the `kubernetes` Endpoints.
                "--endpoint-reconciler-type=none".into(),
                // As stricter clusters do: setting blockOwnerDeletion on an owner reference needs the right
                // to update the owner's finalizers (kacme's solver objects are owned by their Certificate).
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
            ]);
        }
        let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        std::fs::write(
            &kcm_kubeconfig,
            kubeconfig_yaml(&server, &ca.cert_pem, "system:kube-controller-manager", &kcm_token),
        )?;

        let etcd_client_url = format!("http://{etcd_ip}:{etcd_client_port}");
        let etcd_peer_url = format!("http://{etcd_ip}:{etcd_peer_port}");
        let etcd = ChildProcess::spawn(
            "etcd",
            &etcd_bin,
            [
                "--name=testenv".to_string(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_client_url}"),
                format!("--advertise-client-urls={etcd_client_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=testenv={etcd_peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &[],
            dir.join("etcd.log"),
        )?;

        let path = |name: &str| dir.join(name).display().to_string();
        let mut audit_args = Vec::new();
        let audit_log = if options.audit_log {
            write(&dir, "audit-policy.yaml", AUDIT_POLICY)?;
            audit_args.extend([
                format!("--audit-policy-file={}", path("audit-policy.yaml")),
                format!("--audit-log-path={}", path("audit.log")),
                "--audit-log-format=json".to_string(),
                "--audit-log-mode=blocking".to_string(),
                // 0 does not turn rotation off: the apiserver's log writer (lumberjack) then rotates at its
                // default of 100 MB, which a 10,000-Certificate bench passes, and a reader following
                // `audit.log` loses the rest. 1 TiB (the flag is in megabytes): never.
                "--audit-log-maxsize=1048576".to_string(),
            ]);
            Some(dir.join("audit.log"))
        } else {
            None
        };
        let apiserver = ChildProcess::spawn(
            "kube-apiserver",
            &apiserver_bin,
            [
                format!("--etcd-servers={etcd_client_url}"),
                format!("--bind-address={ip}"),
                format!("--advertise-address={ip}"),
                format!("--secure-port={apiserver_port}"),
                format!("--cert-dir={}", path("apiserver-certs")),
                format!("--tls-cert-file={}", path("apiserver.crt")),
                format!("--tls-private-key-file={}", path("apiserver.key")),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", path("sa.pub")),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
            ]
            .into_iter()
            .chain(node_args)
            .chain(audit_args),
            &[],
            dir.join("kube-apiserver.log"),
        )?;

        let https = HttpsClient::trusting(&ca.cert_pem)?;
        let readyz = format!("{server}/readyz");
        poll_until("kube-apiserver /readyz", READY_TIMEOUT, Duration::from_millis(100), || async {
            etcd.ensure_running()?;
            apiserver.ensure_running()?;
            Ok(match https.get_with_bearer(&readyz, Some(&admin_token)).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!(
                    "HTTP {}: {}",
                    r.status,
                    r.body.lines().filter(|l| l.contains("failed")).collect::<Vec<_>>().join("; ")
                )),
                Err(e) => Err(error_chain(&e)),
            })
        })
        .await
        .map_err(|e| apiserver.with_log_tail(e))?;
        let apiserver_ready = started.elapsed();
        if let Some(crds_dir) = crds_dir {
            apply_crds(client_from_kubeconfig(&kubeconfig).await?, crds_dir).await?;
        }
        if let Some(gateway_api_crds) = &gateway_api_crds {
            apply_crds(client_from_kubeconfig(&kubeconfig).await?, gateway_api_crds).await?;
        }

        let controller_manager = ChildProcess::spawn(
            "kube-controller-manager",
            &kcm_bin,
            [
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                "--leader-elect=false".into(),
                if node.is_some() {
                    // A real node: every controller (root-ca-cert-publisher for projected service-account
                    // volumes, endpoints for Services, node lifecycle, ...).
                    "--controllers=*".into()
                } else {
                    // Deployments and ReplicaSets too, so that workloads get Pods (nothing runs them).
                    "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,\
                     serviceaccount-token-controller,deployment-controller,replicaset-controller"
                        .into()
                },
                format!("--service-account-private-key-file={}", path("sa.key")),
                format!("--root-ca-file={}", path("ca.crt")),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--profiling=false".into(),
            ],
            &[],
            dir.join("kube-controller-manager.log"),
        )?;

        let scheduler = match component_kubeconfigs.iter().find(|(name, _)| name == "kube-scheduler") {
            None => None,
            Some((_, kubeconfig)) => Some(ChildProcess::spawn(
                "kube-scheduler",
                &binaries.path("kube-scheduler")?,
                [
                    format!("--kubeconfig={}", kubeconfig.display()),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--profiling=false".into(),
                ],
                &[],
                dir.join("kube-scheduler.log"),
            )?),
        };

        let control_plane = ControlPlane {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            kubectl,
            server,
            ca_pem: ca.cert_pem,
            admin_token,
            kubeconfig,
            user_kubeconfigs,
            component_kubeconfigs,
            audit_log,
            address,
            dir,
        };
        let client = control_plane.client().await?;
        control_plane
            .wait_for_default_service_account(&client, "default")
            .await
            .map_err(|e| control_plane.controller_manager.with_log_tail(e))?;
        eprintln!(
            "testenv: control plane ready in {:.1}s (kube-apiserver ready after {:.1}s) at {} (kubeconfig {})",
            started.elapsed().as_secs_f64(),
            apiserver_ready.as_secs_f64(),
            control_plane.server,
            control_plane.kubeconfig.display()
        );
        Ok(control_plane)
    }

    /// The apiserver URL, `https://<ip>:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The PEM CA certificate that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of the `admin` user (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The kubeconfig of the `admin` user for this control plane. Tests and child processes must use this
    /// file (`--kubeconfig` or `KUBECONFIG` for a child), never an ambient kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig of a user given in [`ControlPlaneOptions::users`].
    pub fn kubeconfig_of(&self, user: &str) -> Result<&Path> {
        self.user_kubeconfigs
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, path)| path.as_path())
            .with_context(|| format!("the control plane has no user {user:?} (see ControlPlaneOptions::users)"))
    }

    /// The kubeconfig of a node component (`kubelet`, `kube-proxy`, `kube-scheduler`, `traefik`) when the control plane
    /// serves a node ([`ControlPlaneOptions::node`]).
    pub fn component_kubeconfig(&self, component: &str) -> Result<&Path> {
        self.component_kubeconfigs
            .iter()
            .find(|(name, _)| name == component)
            .map(|(_, path)| path.as_path())
            .with_context(|| format!("the control plane has no kubeconfig for {component:?} (it serves no node)"))
    }

    /// The PIDs of its processes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), for a
    /// record of what to stop should the test process die.
    pub fn pids(&self) -> Vec<u32> {
        [Some(&self.etcd), Some(&self.apiserver), Some(&self.controller_manager), self.scheduler.as_ref()]
            .into_iter()
            .flatten()
            .map(ChildProcess::pid)
            .collect()
    }

    /// Like [`ControlPlane::child_env`], as a user given in [`ControlPlaneOptions::users`].
    pub fn child_env_as(&self, user: &str) -> Result<Vec<(&'static str, &OsStr)>> {
        Ok(vec![("KUBECONFIG", self.kubeconfig_of(user)?.as_os_str())])
    }

    /// The apiserver's audit log (JSON lines), when [`ControlPlaneOptions::audit_log`] was set.
    pub fn audit_log_path(&self) -> Option<&Path> {
        self.audit_log.as_deref()
    }

    /// The loopback address everything listens on.
    pub fn address(&self) -> &LoopbackAddress {
        &self.address
    }

    /// The temp dir holding the logs (`etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`),
    /// credentials and etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for the `admin` user, built from [`ControlPlane::kubeconfig_path`].
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Server-side applies every `*.yaml` CustomResourceDefinition in `dir` and waits until each is
    /// Established. Returns the CRD names. The garbage collector notices CRDs installed after the start only
    /// at its next discovery sync (up to 30 s later); prefer [`ControlPlane::start_with_crds`] when a test
    /// relies on owner references from custom resources.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        apply_crds(self.client().await?, dir.as_ref()).await
    }
    /// Creates a namespace and waits until its `default` ServiceAccount exists (before that, the apiserver
    /// rejects Pods in it).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        let namespace =
            Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        self.wait_for_default_service_account(&client, name).await
    }

    async fn wait_for_default_service_account(&self, client: &Client, namespace: &str) -> Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        poll_until(
            &format!("ServiceAccount {namespace}/default (made by kube-controller-manager)"),
            READY_TIMEOUT,
            Duration::from_millis(100),
            || async {
                self.controller_manager.ensure_running()?;
                self.apiserver.ensure_running()?;
                Ok(match api.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not created yet".to_string()),
                    Err(e) => Err(e.to_string()),
                })
            },
        )
        .await
    }

    /// A `kubectl` command with `--kubeconfig` set to this control plane's kubeconfig (and `KUBECONFIG` too,
    /// for plugins), killed if dropped. Add arguments and run it.
    pub fn kubectl_command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.kubectl);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl <args>` against this control plane (60 s at most); returns stdout, or fails with stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = tokio::time::timeout(Duration::from_secs(60), self.kubectl_command().args(args).output())
            .await
            .with_context(|| format!("kubectl {} did not finish within 60s", args.join(" ")))?
            .context("running kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Environment variables that point a child process (the operator, helm, kubectl) at this control plane.
    pub fn child_env(&self) -> Vec<(&'static str, &OsStr)> {
        vec![("KUBECONFIG", self.kubeconfig.as_os_str())]
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(scheduler) = &self.scheduler {
            scheduler.kill();
        }
        self.controller_manager.kill();
        self.apiserver.kill();
        self.etcd.kill();
    }
}

/// Server-side applies every `*.yaml` CRD in `dir` and waits until each is Established.
async fn apply_crds(client: Client, dir: &Path) -> Result<Vec<String>> {
    let started = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the CRD directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    if files.is_empty() {
        bail!("no *.yaml CRD files in {}", dir.display());
    }
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut names = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {} as a CRD", file.display()))?;
        let name = crd.metadata.name.clone().with_context(|| format!("{} has no metadata.name", file.display()))?;
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying the CRD {name} from {}", file.display()))?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established after 30s"))?
            .with_context(|| format!("watching CRD {name}"))?;
    }
    eprintln!("testenv: {} CRDs Established in {:.1}s", names.len(), started.elapsed().as_secs_f64());
    Ok(names)
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).context("reading the test kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the test kubeconfig")?;
    Client::try_from(config).context("building a kube client")
}

fn write(dir: &TempDir, name: &str, contents: &str) -> Result<()> {
    std::fs::write(dir.join(name), contents).with_context(|| format!("writing {}", dir.join(name).display()))
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kacme-testenv", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kacme-testenv", "context": {"cluster": "kacme-testenv", "user": user, "namespace": "default"}}],
        "current-context": "kacme-testenv",
    }))
    .expect("a JSON value always serializes")
}
