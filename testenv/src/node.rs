//! A real Kubernetes node on this machine: containerd, kubelet, kube-proxy and Pod networking on a bridge,
//! registered with a [`ControlPlane`] it starts itself (the apiserver on the bridge address). One per
//! machine, as root; torn down on drop, and after a crash by the next [`Node::start`] or
//! [`clean_up_crashed_node`]. DESIGN.md ("A real node on these machines") lists why each setting is there.

use crate::binaries::Binaries;
use crate::containerd::{self, Containerd};
use crate::control_plane::{ControlPlane, ControlPlaneOptions, NodeAccess};
use crate::host;
use crate::image::{ImageSpec, pause_image, write_image_archive};
use crate::loopback::LoopbackAddress;
use crate::process::{ChildProcess, poll_until};
use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use k8s_openapi::api::networking::v1::IngressClass;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything the node writes on disk lives under this directory (the lock and the state file too).
pub const NODE_ROOT: &str = "/var/lib/kacme-testenv";
/// The node's name in the cluster.
pub const NODE_NAME: &str = "kacme-node";
/// The Pod bridge.
pub const BRIDGE: &str = "kacme-node0";
/// The bridge's address: the host side of Pod networking, where the apiserver, the kubelet and NodePorts
/// listen.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The Pod subnet (on [`BRIDGE`]).
pub const POD_SUBNET: &str = "10.213.0.0/24";
/// The port of Traefik's `web` entry point on [`BRIDGE_ADDRESS`]: port 80, where the CAs dial HTTP-01 (their DNS
/// answers every name with [`BRIDGE_ADDRESS`]).
pub const TRAEFIK_HTTP_PORT: u16 = 80;
/// The port of Traefik's `websecure` entry point on [`BRIDGE_ADDRESS`]: Gateway listeners on this port (HTTPS,
/// TLS) are served there, with the certificates their `certificateRefs` name.
pub const TRAEFIK_HTTPS_PORT: u16 = 443;
/// The port of Traefik's `/ping` on [`BRIDGE_ADDRESS`] (its readiness check).
const TRAEFIK_PING_PORT: u16 = 9000;
/// The IngressClass the node creates for Traefik (the default class: Ingresses without a class get it).
pub const TRAEFIK_INGRESS_CLASS: &str = "traefik";
/// The chain in `FORWARD` that drops everything between the bridge and any other interface.
pub const GUARD_CHAIN: &str = "KACME-NODE-GUARD";
/// The CNI network name (CNI's result cache under `/var/lib/cni` is named after it).
const CNI_NETWORK: &str = "kacme-node";
/// Chains the node's parts create: kube-proxy's (and the kubelet's, should it make any) and the guard.
const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", GUARD_CHAIN];
/// Sysctls that the bridge plugin (`ip_forward`) and the kubelet (its "kernel defaults") change: restored on
/// teardown.
const SYSCTLS: [&str; 7] = [
    "net.ipv4.ip_forward",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];
/// Host directories that containerd, CNI or the kubelet create outside their configured paths: removed on
/// teardown if the node created them and they are empty again.
const HOST_DIRS: [&str; 9] = [
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/s",
    "/run/containerd",
    "/var/log/containers",
    // The kubelet's default FlexVolume directory, should it create it despite `--volume-plugin-dir`.
    "/usr/libexec/kubernetes/kubelet-plugins/volume/exec",
    "/usr/libexec/kubernetes/kubelet-plugins/volume",
    "/usr/libexec/kubernetes/kubelet-plugins",
    "/usr/libexec/kubernetes",
];
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn node_dir() -> PathBuf {
    Path::new(NODE_ROOT).join("node")
}

fn state_path() -> PathBuf {
    Path::new(NODE_ROOT).join("node-state.json")
}

fn lock_path() -> PathBuf {
    Path::new(NODE_ROOT).join("node.lock")
}

/// How to start a [`Node`].
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Images to import into containerd besides the pause image (for example [`crate::kacme_image`] and
    /// [`crate::tls_probe_image`]). Pods must use `imagePullPolicy: Never`: nothing is pulled.
    pub images: Vec<ImageSpec>,
    /// CRDs to install before the controller-manager starts (see [`ControlPlane::start_with_crds`]).
    pub crds_dir: Option<PathBuf>,
    /// Install the Gateway API CRDs too (see [`ControlPlaneOptions::gateway_api`]): Traefik then runs its
    /// Gateway API provider as well.
    pub gateway_api: bool,
    /// Run Traefik as a host process: its Kubernetes Ingress provider (and its Gateway API provider when the
    /// Gateway CRDs are installed), the web entry point on [`BRIDGE_ADDRESS`]:[`TRAEFIK_HTTP_PORT`], the
    /// default IngressClass [`TRAEFIK_INGRESS_CLASS`]. A CA on [`Node::address`] whose DNS answers every name
    /// with [`BRIDGE_ADDRESS`] and that dials port 80 validates HTTP-01 through it.
    pub traefik: bool,
    /// Have the apiserver write an audit log (see [`ControlPlaneOptions::audit_log`]; the benchmark counts
    /// the operator's requests with it).
    pub audit_log: bool,
    /// Further users with a token and a kubeconfig of their own (see [`ControlPlaneOptions::users`]).
    pub users: Vec<String>,
}

/// What a node created on the host, written to `NODE_ROOT/node-state.json` before each step so that a
/// later run can undo it after the test process was killed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct NodeState {
    /// The `KACME_TEST_RUN` mark of the test run that started it.
    test_run: Option<String>,
    /// The PID of the test process.
    owner: u32,
    /// Processes started, with a string their command line must contain (so a reused PID is not killed).
    processes: Vec<RecordedProcess>,
    bridge: bool,
    guard_chain: bool,
    /// Sysctls as they were before.
    sysctls: Vec<(String, String)>,
    /// Host directories that did not exist before (see `HOST_DIRS`).
    absent_host_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordedProcess {
    name: String,
    pid: u32,
    needle: String,
}

impl NodeState {
    fn save(&self) -> Result<()> {
        let tmp = state_path().with_extension("json.partial");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, state_path()).context("renaming the node state file")
    }

    fn record(&mut self, process: &ChildProcess, needle: impl Into<String>) -> Result<()> {
        self.processes.push(RecordedProcess { name: process.name().into(), pid: process.pid(), needle: needle.into() });
        self.save()
    }
}

/// A real node: containerd, kubelet and kube-proxy, with Pod networking on [`BRIDGE`], registered as
/// [`NODE_NAME`] with its own [`ControlPlane`] (see [`NodeAccess`]), Ready when [`Node::start`] returns.
///
/// On the host it creates: the bridge [`BRIDGE`] ([`BRIDGE_ADDRESS`]/24); the chain [`GUARD_CHAIN`], first
/// in `FORWARD`; kube-proxy's `KUBE-*` chains; the kubelet's cgroup trees `/kubepods` (cgroupfs); everything
/// else under `NODE_ROOT/node` (containerd's root, state and sockets, the kubelet's root dir and its mounts,
/// the Pods' network namespaces, CNI configuration and IPAM data, logs); CNI's result cache in
/// `/var/lib/cni/results`, shim sockets in `/run/containerd/s` and log links in `/var/log/containers`. It
/// changes `net.ipv4.ip_forward` (the bridge plugin) and the kubelet's kernel settings. Dropping it (or
/// [`clean_up_crashed_node`] after a crash) removes and restores all of that.
pub struct Node {
    traefik: Option<ChildProcess>,
    kube_proxy: Option<ChildProcess>,
    kubelet: Option<ChildProcess>,
    control_plane: Option<ControlPlane>,
    containerd: Option<Containerd>,
    state: NodeState,
    torn_down: bool,
    started: Instant,
    _lock: File,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &NODE_NAME).field("control_plane", &self.control_plane).finish()
    }
}

/// Why the tests that need a real node cannot run here, if they cannot: `KACME_SKIP_NODE_TESTS` is set, the
/// machine cannot start a [`Node`] ([`node_unavailable_reason`]), or `tests/env/install --check-node`
/// refuses it. Tests print it and skip.
pub fn node_tests_skip_reason() -> Option<String> {
    if std::env::var_os("KACME_SKIP_NODE_TESTS").is_some_and(|v| !v.is_empty() && v != "0") {
        return Some("KACME_SKIP_NODE_TESTS is set".into());
    }
    if let Some(reason) = node_unavailable_reason() {
        return Some(reason);
    }
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/env/install");
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

/// Why this machine cannot start a [`Node`] (not root, or the parts of `tests/env/install node` missing),
/// or `None` when it can. Tests print it and skip.
pub fn node_unavailable_reason() -> Option<String> {
    if !is_root() {
        return Some("not root (the real node needs root: containers, mounts, cgroups, a bridge)".into());
    }
    let binaries = match Binaries::locate() {
        Ok(binaries) => binaries,
        Err(error) => return Some(format!("{error:#}")),
    };
    for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        if !binaries.dir().join(name).exists() {
            return Some(format!("{name} is not installed: run `tests/env/install`"));
        }
    }
    for name in [
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "pause",
        "cni-plugins",
    ] {
        if !binaries.dir().join(name).exists() {
            return Some(format!("{name} is not installed: run `tests/env/install node`"));
        }
    }
    for tool in ["ip", "iptables", "ip6tables", "umount"] {
        if host::run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

impl Node {
    /// Starts a control plane serving a node and the node itself, and waits until the node is Ready and
    /// kube-proxy has written the `kubernetes` Service's rules. Waits for the machine's node lock first
    /// (one node per machine), and cleans up after a crashed earlier run.
    pub async fn start(options: NodeOptions) -> Result<Self> {
        if let Some(reason) = node_unavailable_reason() {
            bail!("cannot start a real node: {reason}");
        }
        std::fs::create_dir_all(NODE_ROOT).with_context(|| format!("creating {NODE_ROOT}"))?;
        let lock = tokio::task::spawn_blocking(|| -> Result<File> {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(lock_path())
                .with_context(|| format!("opening {}", lock_path().display()))?;
            if file.try_lock().is_err() {
                eprintln!("testenv: waiting for the node lock {} (another test has a node)", lock_path().display());
                file.lock().with_context(|| format!("locking {}", lock_path().display()))?;
            }
            Ok(file)
        })
        .await??;
        clean_up_with_lock_held();
        refuse_to_clash()?;

        let started = Instant::now();
        let mut state = NodeState {
            test_run: std::env::var("KACME_TEST_RUN").ok(),
            owner: std::process::id(),
            absent_host_dirs: HOST_DIRS.iter().map(PathBuf::from).filter(|d| !d.exists()).collect(),
            ..NodeState::default()
        };
        for name in SYSCTLS {
            state.sysctls.push((name.to_string(), host::read_sysctl(name)?));
        }
        state.save()?;
        let mut node = Node {
            traefik: None,
            kube_proxy: None,
            kubelet: None,
            control_plane: None,
            containerd: None,
            state,
            torn_down: false,
            started,
            _lock: lock,
        };
        // On any error from here on, dropping `node` tears down what was created.
        node.bring_up(options).await?;
        Ok(node)
    }

    async fn bring_up(&mut self, options: NodeOptions) -> Result<()> {
        let binaries = Binaries::locate()?;
        let dir = node_dir();
        for sub in ["containerd", "cni-conf", "cni-ipam", "kubelet", "pod-logs", "volume-plugins", "images"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }

        // The bridge first: the apiserver listens on its address.
        self.state.bridge = true;
        self.state.save()?;
        host::run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        host::run("ip", &["addr", "add", &format!("{BRIDGE_ADDRESS}/24"), "dev", BRIDGE])?;
        host::run("ip", &["link", "set", BRIDGE, "up"])?;
        self.state.guard_chain = true;
        self.state.save()?;
        install_guard_chain()?;

        // containerd, with the images.
        let cni_conf = dir.join("cni-conf");
        std::fs::write(cni_conf.join("10-kacme-node.conflist"), cni_config(&dir.join("cni-ipam")))?;
        let containerd = Containerd::start(&binaries, &dir.join("containerd"), &cni_conf)?;
        if let Some(pid) = containerd.pid() {
            self.state.processes.push(RecordedProcess {
                name: "containerd".into(),
                pid,
                needle: dir.display().to_string(),
            });
            self.state.save()?;
        }
        let containerd = self.containerd.insert(containerd);
        let images_started = Instant::now();
        let mut images = vec![pause_image(&binaries.path("pause")?)?];
        images.extend(options.images);
        for (index, image) in images.iter().enumerate() {
            let archive = write_image_archive(image, &dir.join("images").join(format!("{index}.tar")))?;
            containerd.import(&archive.path).with_context(|| format!("importing {}", archive.reference))?;
        }
        let images_took = images_started.elapsed();
        let containerd_socket = containerd.socket().to_path_buf();

        // The control plane, its apiserver on the bridge address.
        let control_plane = ControlPlane::start_with_options(ControlPlaneOptions {
            crds_dir: options.crds_dir,
            gateway_api: options.gateway_api,
            audit_log: options.audit_log,
            users: options.users,
            node: Some(NodeAccess { address: BRIDGE_ADDRESS, node_name: NODE_NAME.into() }),
            ..ControlPlaneOptions::default()
        })
        .await?;
        let cp_dir = control_plane.dir().display().to_string();
        for pid in control_plane.pids() {
            self.state.processes.push(RecordedProcess { name: "control plane".into(), pid, needle: cp_dir.clone() });
        }
        self.state.save()?;
        let control_plane = self.control_plane.insert(control_plane);

        // The kubelet.
        let kubelet_config = dir.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_yaml(&dir, &containerd_socket, &control_plane.dir().join("ca.crt")),
        )?;
        let kubelet = ChildProcess::spawn(
            "kubelet",
            &binaries.path("kubelet")?,
            [
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", control_plane.component_kubeconfig("kubelet")?.display()),
                format!("--root-dir={}", dir.join("kubelet").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={BRIDGE_ADDRESS}"),
                // A flag only (not in KubeletConfiguration); the default is /usr/libexec/kubernetes/...
                format!("--volume-plugin-dir={}", dir.join("volume-plugins").display()),
            ],
            &[],
            dir.join("kubelet.log"),
        )?;
        self.state.record(&kubelet, dir.display().to_string())?;
        let kubelet = self.kubelet.insert(kubelet);
        let kubelet_started = Instant::now();

        // kube-proxy (iptables), leaving the host's conntrack settings alone.
        let kube_proxy_kubeconfig = control_plane.component_kubeconfig("kube-proxy")?.display().to_string();
        let kube_proxy = ChildProcess::spawn(
            "kube-proxy",
            &binaries.path("kube-proxy")?,
            [
                format!("--kubeconfig={kube_proxy_kubeconfig}"),
                format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables".into(),
                format!("--cluster-cidr={POD_SUBNET}"),
                format!("--nodeport-addresses={POD_SUBNET}"),
                format!("--bind-address={BRIDGE_ADDRESS}"),
                format!("--healthz-bind-address={BRIDGE_ADDRESS}:10256"),
                format!("--metrics-bind-address={BRIDGE_ADDRESS}:10249"),
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--profiling=false".into(),
            ],
            &[],
            dir.join("kube-proxy.log"),
        )?;
        self.state.record(&kube_proxy, kube_proxy_kubeconfig)?;
        let kube_proxy = self.kube_proxy.insert(kube_proxy);

        let nodes: Api<NodeObject> = Api::all(control_plane.client().await?);
        poll_until(&format!("node {NODE_NAME} Ready"), READY_TIMEOUT, Duration::from_millis(100), || async {
            kubelet.ensure_running()?;
            Ok(match nodes.get_opt(NODE_NAME).await {
                Ok(Some(node)) if is_ready(&node) => Ok(()),
                Ok(Some(_)) => Err("registered, not Ready yet".to_string()),
                Ok(None) => Err("not registered yet".to_string()),
                Err(error) => Err(error.to_string()),
            })
        })
        .await
        .map_err(|e| kubelet.with_log_tail(e))?;
        let ready_after = kubelet_started.elapsed();
        poll_until(
            "kube-proxy's rules for the kubernetes Service",
            READY_TIMEOUT,
            Duration::from_millis(100),
            || async {
                kube_proxy.ensure_running()?;
                Ok(match host::run("iptables", &["-w", "-t", "nat", "-S", "KUBE-SERVICES"]) {
                    Ok(rules) if rules.contains("default/kubernetes:https") => Ok(()),
                    Ok(_) => Err("no rule for default/kubernetes yet".to_string()),
                    Err(error) => Err(format!("{error:#}")),
                })
            },
        )
        .await
        .map_err(|e| kube_proxy.with_log_tail(e))?;
        // kube-proxy put its jumps first in FORWARD: the guard goes back in front of them.
        install_guard_chain()?;
        let traefik_took = if options.traefik {
            let traefik_started = Instant::now();
            self.start_traefik(&binaries).await?;
            format!("; Traefik serving {:.1}s after its start", traefik_started.elapsed().as_secs_f64())
        } else {
            String::new()
        };
        let control_plane = self.control_plane();
        eprintln!(
            "testenv: node {NODE_NAME} Ready {:.1}s after the kubelet started, {:.1}s in all (images imported in \
             {:.1}s{traefik_took}; apiserver {}; logs in {})",
            ready_after.as_secs_f64(),
            self.started.elapsed().as_secs_f64(),
            images_took.as_secs_f64(),
            control_plane.server(),
            dir.display()
        );
        Ok(())
    }

    /// Starts Traefik on the host (see [`NodeOptions::traefik`]) with its own kubeconfig, records it in the
    /// state file, and waits until its `/ping` answers.
    async fn start_traefik(&mut self, binaries: &Binaries) -> Result<()> {
        let dir = node_dir();
        let control_plane = self.control_plane();
        let client = control_plane.client().await?;
        let class: IngressClass = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": TRAEFIK_INGRESS_CLASS,
                "annotations": { "ingressclass.kubernetes.io/is-default-class": "true" },
            },
            "spec": { "controller": "traefik.io/ingress-controller" },
        }))?;
        Api::<IngressClass>::all(client).create(&PostParams::default(), &class).await?;
        let gateway_crds = control_plane.kubectl(&["get", "crd", "gateways.gateway.networking.k8s.io"]).await.is_ok();
        let config = dir.join("traefik.yaml");
        std::fs::write(&config, traefik_config_yaml(gateway_crds))?;
        let kubeconfig = control_plane.component_kubeconfig("traefik")?.to_path_buf();
        let traefik = ChildProcess::spawn(
            "traefik",
            &binaries.path("traefik")?,
            [format!("--configFile={}", config.display())],
            // Traefik's Kubernetes providers read KUBECONFIG when not in a cluster.
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            dir.join("traefik.log"),
        )?;
        self.state.record(&traefik, dir.display().to_string())?;
        let traefik = self.traefik.insert(traefik);
        let ping = std::net::SocketAddr::from((BRIDGE_ADDRESS, TRAEFIK_PING_PORT));
        poll_until("Traefik's /ping", READY_TIMEOUT, Duration::from_millis(100), || async {
            traefik.ensure_running()?;
            Ok(match http_status(ping, "/ping").await {
                Ok(200) => Ok(()),
                Ok(status) => Err(format!("HTTP {status}")),
                Err(error) => Err(format!("{error:#}")),
            })
        })
        .await
        .map_err(|e| traefik.with_log_tail(e))?;
        Ok(())
    }

    /// The bridge address as an environment address: start [`crate::Pebble`] and [`crate::StepCa`] on it
    /// (`PebbleOptions::address`, `StepCaOptions::address`) and Pods reach them, their TLS certificates are
    /// valid for it, and their DNS answers every name with it (where Traefik listens).
    pub fn address(&self) -> LoopbackAddress {
        LoopbackAddress::held_by_caller(BRIDGE_ADDRESS)
    }

    /// The control plane the node is registered with (its apiserver listens on [`BRIDGE_ADDRESS`]).
    pub fn control_plane(&self) -> &ControlPlane {
        self.control_plane.as_ref().expect("a started node always has its control plane")
    }

    /// containerd's socket: `ctr -a <socket> -n k8s.io images ls` lists the node's images.
    pub fn containerd_socket(&self) -> PathBuf {
        node_dir().join("containerd").join("containerd.sock")
    }

    /// The directory with the node's logs (`kubelet.log`, `kube-proxy.log`, `containerd/containerd.log`).
    pub fn dir(&self) -> PathBuf {
        node_dir()
    }

    /// Stops everything and removes what the node created, in the order DESIGN.md gives; returns what could
    /// not be removed (empty when all went well). Dropping the node does the same and prints failures.
    pub fn stop(mut self) -> Vec<String> {
        self.tear_down()
    }

    fn tear_down(&mut self) -> Vec<String> {
        let started = Instant::now();
        if let Some(control_plane) = &self.control_plane {
            delete_workloads(control_plane, self.containerd.as_ref());
        }
        for process in [self.traefik.take(), self.kube_proxy.take(), self.kubelet.take()].into_iter().flatten() {
            process.kill();
        }
        // The scheduler, controller-manager, apiserver and etcd, in that order.
        drop(self.control_plane.take());
        // containerd and its shims; the containers, mounts and the rest go in `clean_up`.
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop();
        }
        let problems = clean_up(&self.state);
        self.torn_down = true;
        if problems.is_empty() {
            let _ = std::fs::remove_file(state_path());
        }
        eprintln!("testenv: node torn down in {:.1}s", started.elapsed().as_secs_f64());
        problems
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let problems = self.tear_down();
        if !problems.is_empty() {
            eprintln!("testenv: the node's teardown left: {problems:?}");
        }
    }
}

fn is_ready(node: &NodeObject) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Deletes every workload controller and Pod (the kubelet stops them, and CNI releases their addresses),
/// waiting up to 15 s for their containers to stop.
fn delete_workloads(control_plane: &ControlPlane, containerd: Option<&Containerd>) {
    let kubectl = |args: &[&str]| {
        std::process::Command::new(control_plane.kubectl_command().as_std().get_program())
            .arg(format!("--kubeconfig={}", control_plane.kubeconfig_path().display()))
            .args(args)
            .output()
    };
    // Their owners first, or the controller-manager replaces the Pods as they go.
    let _ = kubectl(&[
        "delete",
        "deployments,replicasets,statefulsets,daemonsets,jobs",
        "--all",
        "--all-namespaces",
        "--wait=false",
    ]);
    let kubectl =
        kubectl(&["delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force", "--wait=false"]);
    if kubectl.is_err() {
        return;
    }
    let Some(containerd) = containerd else { return };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match containerd.ctr(&["tasks", "ls"]) {
            Ok(tasks) if !tasks.lines().skip(1).any(|l| l.contains("RUNNING")) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => return,
        }
    }
}

/// Refuses to start where something else holds the names and addresses the node would use.
fn refuse_to_clash() -> Result<()> {
    if host::link_exists(BRIDGE) {
        bail!("the interface {BRIDGE} exists but no crashed node recorded it: not touching it");
    }
    let routes = host::run("ip", &["-4", "route", "show"])?;
    for line in routes.lines() {
        let Some(prefix) = line.split_whitespace().next() else { continue };
        if prefix != "default" && prefixes_overlap(prefix, POD_SUBNET) {
            bail!("the route {line:?} overlaps the node's Pod subnet {POD_SUBNET}: not starting a node");
        }
    }
    let chains = host::iptables_chains(&CHAIN_PREFIXES);
    if !chains.is_empty() {
        bail!("iptables already has Kubernetes chains (another node on this machine?): {chains:?}");
    }
    let trees = host::cgroup_trees("kubepods");
    if !trees.is_empty() {
        bail!("cgroups {trees:?} exist (another kubelet on this machine?): not starting a node");
    }
    Ok(())
}

/// Whether two IPv4 prefixes (`a.b.c.d/n`, or a bare address) share an address.
fn prefixes_overlap(a: &str, b: &str) -> bool {
    fn parse(prefix: &str) -> Option<(u32, u32)> {
        let (address, length) = prefix.split_once('/').unwrap_or((prefix, "32"));
        let address: Ipv4Addr = address.parse().ok()?;
        let length: u32 = length.parse().ok().filter(|l| *l <= 32)?;
        let mask = if length == 0 { 0 } else { u32::MAX << (32 - length) };
        Some((u32::from(address) & mask, mask))
    }
    match (parse(a), parse(b)) {
        (Some((a, mask_a)), Some((b, mask_b))) => {
            let common = mask_a & mask_b;
            a & common == b & common
        }
        _ => false,
    }
}

/// Puts [`GUARD_CHAIN`] (drop everything between the bridge and other interfaces) first in `FORWARD`.
fn install_guard_chain() -> Result<()> {
    if host::run("iptables", &["-w", "-S", GUARD_CHAIN]).is_err() {
        host::run("iptables", &["-w", "-N", GUARD_CHAIN])?;
        host::run("iptables", &["-w", "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"])?;
        host::run("iptables", &["-w", "-A", GUARD_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])?;
    }
    while host::run("iptables", &["-w", "-D", "FORWARD", "-j", GUARD_CHAIN]).is_ok() {}
    host::run("iptables", &["-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN])?;
    Ok(())
}

fn cni_config(ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": POD_SUBNET,
                    "rangeStart": "10.213.0.10",
                    "rangeEnd": "10.213.0.250",
                    "gateway": BRIDGE_ADDRESS.to_string(),
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir,
            },
        }],
    }))
    .expect("a JSON value always serializes")
}

/// Traefik's static configuration: the web and websecure entry points on the bridge address, `/ping` for readiness, the
/// Kubernetes Ingress provider (publishing the bridge address in Ingress status), the Gateway API provider
/// when `gateway_crds`, nothing sent home.
fn traefik_config_yaml(gateway_crds: bool) -> String {
    let mut providers = serde_json::json!({
        "kubernetesIngress": { "ingressEndpoint": { "ip": BRIDGE_ADDRESS.to_string() } },
    });
    if gateway_crds {
        providers["kubernetesGateway"] = serde_json::json!({});
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "global": { "checkNewVersion": false, "sendAnonymousUsage": false },
        "entryPoints": {
            "web": { "address": format!("{BRIDGE_ADDRESS}:{TRAEFIK_HTTP_PORT}") },
            "websecure": { "address": format!("{BRIDGE_ADDRESS}:{TRAEFIK_HTTPS_PORT}") },
            "traefik": { "address": format!("{BRIDGE_ADDRESS}:{TRAEFIK_PING_PORT}") },
        },
        "ping": { "entryPoint": "traefik" },
        "providers": providers,
        "log": { "level": "INFO" },
    }))
    .expect("a JSON value always serializes")
}

/// The status code of a plain HTTP/1.1 `GET path` at `address`.
async fn http_status(address: std::net::SocketAddr, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .with_context(|| format!("GET http://{address}{path} timed out"))??;
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line from {address}"))
}

fn kubelet_config_yaml(dir: &Path, containerd_socket: &Path, client_ca: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": BRIDGE_ADDRESS.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "failSwapOn": false,
        // Pods see a changed Secret in their volumes within seconds (the default, 1 minute, makes a renewal
        // test wait a minute).
        "syncFrequency": "5s",
        // Otherwise the kubelet installs machine-wide KUBE-FIREWALL chains that nothing removes.
        "makeIPTablesUtilChains": false,
        // Imported images must never be collected: nothing can pull them again.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // The test machines' disks are fuller than the default 10% free: no disk-pressure evictions.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "containerRuntimeEndpoint": format!("unix://{}", containerd_socket.display()),
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": client_ca },
        },
        "authorization": { "mode": "Webhook" },
        // No cluster DNS, and the host's resolver is not the Pods' business.
        "resolvConf": "",
        "podLogsDir": dir.join("pod-logs"),
    }))
    .expect("a JSON value always serializes")
}

/// The ids of the containers and sandboxes containerd knows under the node's directory.
fn container_ids(dir: &Path) -> Vec<String> {
    let containerd = dir.join("containerd");
    let mut ids = Vec::new();
    for listing in [
        containerd.join("state/io.containerd.runtime.v2.task/k8s.io"),
        containerd.join("root/io.containerd.grpc.v1.cri/sandboxes"),
        containerd.join("root/io.containerd.grpc.v1.cri/containers"),
    ] {
        for entry in std::fs::read_dir(listing).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Removes what a node recorded in `state`, in DESIGN.md's order, from the processes to the sysctls;
/// returns what could not be removed.
fn clean_up(state: &NodeState) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = node_dir();
    // The processes it started, if still there (a crashed test's children die with it; shims do not).
    for process in &state.processes {
        if host::command_line(process.pid).contains(&process.needle) {
            host::kill(process.pid);
        }
    }
    // The shims name the node's containerd socket (`-address`); a shell that merely reads a log under the
    // node's directory does not, and is left alone.
    let shims = dir.join("containerd").join("containerd.sock").display().to_string();
    for pid in host::kill_until_gone(Duration::from_secs(5), || host::processes_mentioning(&shims)) {
        problems.push(format!("process {pid} ({})", host::command_line(pid)));
    }
    // The containers: the processes in the kubelet's cgroups.
    let trees = host::cgroup_trees("kubepods");
    for tree in &trees {
        host::kill_until_gone(Duration::from_secs(5), || host::cgroup_processes(tree));
    }
    problems.extend(host::unmount_under(&dir));
    for tree in &trees {
        problems.extend(host::remove_cgroup_tree(tree));
    }
    problems.extend(host::remove_iptables_chains(&CHAIN_PREFIXES));
    if state.bridge
        && host::link_exists(BRIDGE)
        && let Err(error) = host::run("ip", &["link", "delete", BRIDGE])
    {
        problems.push(format!("{error:#}"));
    }
    for (name, value) in &state.sysctls {
        if host::read_sysctl(name).ok().as_ref() != Some(value)
            && let Err(error) = host::write_sysctl(name, value)
        {
            problems.push(format!("{error:#}"));
        }
    }
    // Outside the node's directory, named after its containers: CNI's result cache (this network's and the
    // loopback's) and the sockets of shims that were killed.
    let ids = container_ids(&dir);
    for entry in std::fs::read_dir("/var/lib/cni/results").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{CNI_NETWORK}-")) || ids.iter().any(|id| name.contains(id.as_str())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for id in &ids {
        let _ = std::fs::remove_file(
            Path::new(containerd::SHIM_SOCKET_DIR).join(containerd::shim_socket_name(&dir.join("containerd"), id)),
        );
    }
    for entry in std::fs::read_dir("/var/log/containers").into_iter().flatten().flatten() {
        if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(&dir)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for host_dir in HOST_DIRS {
        if state.absent_host_dirs.iter().any(|d| d == Path::new(host_dir)) {
            let _ = std::fs::remove_dir(host_dir);
        }
    }
    keep_logs(&dir);
    // The directory goes only when nothing is mounted under it (removing through a bind mount would reach
    // into whatever it shows).
    if host::mounts_under(&dir).is_empty()
        && let Err(error) = std::fs::remove_dir_all(&dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {error}", dir.display()));
    }
    problems
}

/// Where the logs of the last node are kept after its directory is removed.
pub fn last_node_logs_dir() -> PathBuf {
    std::env::temp_dir().join("kacme-testenv-node-logs")
}

/// Copies the node's logs (kubelet, kube-proxy, containerd) to [`last_node_logs_dir`], replacing the last
/// node's.
fn keep_logs(dir: &Path) {
    let keep = last_node_logs_dir();
    let _ = std::fs::remove_dir_all(&keep);
    let _ = std::fs::create_dir_all(&keep);
    for log in ["kubelet.log", "kube-proxy.log", "traefik.log", "containerd/containerd.log"] {
        let _ = std::fs::copy(dir.join(log), keep.join(Path::new(log).file_name().unwrap_or_default()));
    }
}

/// With the node lock held: undoes what a crashed node left, as its state file says.
fn clean_up_with_lock_held() -> Option<Vec<String>> {
    let text = std::fs::read(state_path()).ok()?;
    let state: NodeState = match serde_json::from_slice(&text) {
        Ok(state) => state,
        Err(error) => {
            eprintln!("testenv: unreadable node state {} ({error}): cleaning up by name", state_path().display());
            NodeState { bridge: true, guard_chain: true, ..NodeState::default() }
        }
    };
    eprintln!(
        "testenv: cleaning up after a crashed node (test process {}, run {:?})",
        state.owner,
        state.test_run.as_deref().unwrap_or("-")
    );
    let problems = clean_up(&state);
    if problems.is_empty() {
        let _ = std::fs::remove_file(state_path());
    } else {
        eprintln!("testenv: the crashed node's cleanup left: {problems:?}");
    }
    Some(problems)
}

/// What [`clean_up_crashed_node`] found.
#[derive(Debug)]
pub enum CrashedNodeCleanup {
    /// No state file: no node ran, or it was torn down.
    NothingToDo,
    /// A node is running (its lock is held): nothing was touched.
    NodeRunning,
    /// A crashed node was cleaned up; what could not be removed (empty when everything went).
    CleanedUp(Vec<String>),
}

/// Cleans up after a node whose test process was killed, unless a node is running now. `Node::start` does
/// this itself; this is for a leftover check or by hand (`kacme-node-cleanup`).
pub fn clean_up_crashed_node() -> Result<CrashedNodeCleanup> {
    if !state_path().exists() {
        return Ok(CrashedNodeCleanup::NothingToDo);
    }
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path())
        .with_context(|| format!("opening {}", lock_path().display()))?;
    if file.try_lock().is_err() {
        return Ok(CrashedNodeCleanup::NodeRunning);
    }
    Ok(match clean_up_with_lock_held() {
        None => CrashedNodeCleanup::NothingToDo,
        Some(problems) => CrashedNodeCleanup::CleanedUp(problems),
    })
}

/// Whether a node is running on this machine now (some process holds the node lock).
pub fn node_is_running() -> bool {
    let Ok(file) = File::options().read(true).open(lock_path()) else { return false };
    file.try_lock().is_err()
}

/// What a node may leave on the host, as found now: processes naming the node's directory, mounts under it,
/// the bridge, `KUBE-*` and guard chains, `kubepods` cgroups. Empty when the host is clean.
pub fn node_leftovers() -> Vec<String> {
    let dir = node_dir();
    let mut left = Vec::new();
    for pid in host::processes_mentioning(&dir.display().to_string()) {
        left.push(format!("process {pid} ({})", host::command_line(pid)));
    }
    left.extend(host::mounts_under(&dir).into_iter().map(|m| format!("mount {}", m.display())));
    if host::link_exists(BRIDGE) {
        left.push(format!("interface {BRIDGE}"));
    }
    left.extend(host::iptables_chains(&CHAIN_PREFIXES).into_iter().map(|(i, t, c)| format!("{i} -t {t} chain {c}")));
    left.extend(host::cgroup_trees("kubepods").into_iter().map(|t| format!("cgroup {}", t.display())));
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    if state_path().exists() {
        left.push(format!("state file {} of a crashed node", state_path().display()));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_that_share_an_address_with_the_pod_subnet_overlap_it() {
        assert!(prefixes_overlap("10.213.0.0/16", POD_SUBNET));
        assert!(prefixes_overlap("10.213.0.7", POD_SUBNET));
        assert!(prefixes_overlap("10.213.0.0/25", POD_SUBNET));
        assert!(!prefixes_overlap("10.213.1.0/24", POD_SUBNET));
        assert!(!prefixes_overlap("192.0.2.0/24", POD_SUBNET));
        assert!(!prefixes_overlap("garbage", POD_SUBNET));
    }

    #[test]
    fn the_cni_configuration_masquerades_nothing_and_keeps_its_addresses_in_the_node_dir() {
        let config: serde_json::Value = serde_json::from_str(&cni_config(Path::new("/n/cni-ipam"))).unwrap();
        let bridge = &config["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipam"]["dataDir"], "/n/cni-ipam");
    }
}
