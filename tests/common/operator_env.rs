//! A whole kacme installation on loopback: control plane with the CRDs, an ACME CA, the solver-Pod
//! stand-in, and `kacme controller` running as a separate process against that control plane only.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kacme::api::Certificate;
use kacme_testenv::{
    AuditReader, ChildProcess, ControlPlane, ControlPlaneOptions, Pebble, PebbleOptions, SolverStandIn, StepCa,
    StepCaOptions, TempDir, poll_until,
};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which CA the environment runs.
pub enum Ca {
    Pebble(Pebble),
    StepCa(StepCa),
}

impl Ca {
    pub fn directory_url(&self) -> &str {
        match self {
            Ca::Pebble(p) => p.directory_url(),
            Ca::StepCa(s) => s.directory_url(),
        }
    }

    /// What an Issuer's caBundle holds: TLS trust for the ACME endpoint and the issuing root.
    pub fn ca_bundle_pem(&self) -> String {
        match self {
            Ca::Pebble(p) => p.ca_bundle_pem(),
            Ca::StepCa(s) => s.root_pem().to_string(),
        }
    }

    /// The environment's loopback IP: every name resolves to it, and the CA dials it for IP identifiers.
    pub fn ip(&self) -> std::net::IpAddr {
        self.http01_addr().ip()
    }

    pub fn http01_addr(&self) -> std::net::SocketAddr {
        match self {
            Ca::Pebble(p) => p.http01_addr(),
            Ca::StepCa(s) => s.http01_addr(),
        }
    }
}

pub struct OperatorEnv {
    pub stand_in: Option<SolverStandIn>,
    pub ca: Ca,
    pub control_plane: ControlPlane,
    pub client: Client,
    operator: Option<RunningOperator>,
    operator_runs: u32,
    pub extra_args: Vec<String>,
    dir: TempDir,
}

/// The user the operator authenticates as: its requests are the audit log's lines of this user.
pub const OPERATOR_USER: &str = "kacme-operator";

/// How to run one `kacme controller` process (beyond the environment's fixed arguments).
#[derive(Clone, Debug, Default)]
pub struct OperatorLaunch {
    /// The kubeconfig it uses; default: that of [`OPERATOR_USER`] (a `system:masters` user).
    pub kubeconfig: Option<PathBuf>,
    /// Take part in leader election (off by default: one operator per environment, restarted at once).
    pub leader_elect: bool,
    /// Further arguments (after the environment's `extra_args`).
    pub args: Vec<String>,
    /// Further environment variables, such as `POD_NAME` (its Lease identity and Event reporter instance).
    pub envs: Vec<(String, String)>,
}

/// A running `kacme controller`, killed on drop.
pub struct RunningOperator {
    pub name: String,
    process: ChildProcess,
    /// Where it serves /metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
}

impl RunningOperator {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILLs it (as a crash would).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Whether it has exited.
    pub fn exited(&self) -> bool {
        self.process.exit_status().is_some()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// `GET path` on its HTTP endpoints: (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_addr, path).await
    }
}

/// A plain HTTP/1.1 GET of `path` at `address` (on loopback): (status, body).
pub async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{address}{path} timed out"))?
        .with_context(|| format!("GET http://{address}{path}"))?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response has a head and a body")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("an HTTP status line")?;
    Ok((status, body.to_string()))
}

pub fn kacme_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kacme"))
}

/// `program` (kacme, or kubectl running the kacme plugin) pointed only at `kubeconfig`, the kubeconfig of a
/// control plane the test started: KUBECONFIG names it and HOME is its directory, so no kubeconfig of the
/// machine's user can be read, whatever the program's defaults.
pub fn user_command(program: &std::path::Path, kubeconfig: &std::path::Path) -> tokio::process::Command {
    let home = kubeconfig.parent().expect("a kubeconfig lives in a directory");
    let mut command = tokio::process::Command::new(program);
    command.env("KUBECONFIG", kubeconfig).env("HOME", home).env_remove("NO_COLOR").kill_on_drop(true);
    command
}

impl OperatorEnv {
    pub async fn with_pebble(options: PebbleOptions) -> Result<OperatorEnv> {
        let ca = Ca::Pebble(Pebble::start(options).await?);
        OperatorEnv::start(ca).await
    }

    pub async fn with_step_ca(options: StepCaOptions) -> Result<OperatorEnv> {
        let ca = Ca::StepCa(StepCa::start(options).await?);
        OperatorEnv::start(ca).await
    }

    async fn start(ca: Ca) -> Result<OperatorEnv> {
        OperatorEnv::start_with(ca, false).await
    }

    /// An environment around `ca`, with the operator running; with `audit_log`, the apiserver logs every
    /// request (see [`OperatorEnv::audit`]).
    pub async fn start_with(ca: Ca, audit_log: bool) -> Result<OperatorEnv> {
        let mut env = OperatorEnv::prepare(ca, audit_log).await?;
        env.start_operator()?;
        Ok(env)
    }

    /// An environment around `ca` with no operator running yet: start one with
    /// [`OperatorEnv::start_operator_with`] or [`OperatorEnv::launch_operator`].
    pub async fn prepare(ca: Ca, audit_log: bool) -> Result<OperatorEnv> {
        OperatorEnv::prepare_with(ca, audit_log, false).await
    }

    /// An environment around Pebble with the Gateway API CRDs installed and the stand-in acting as the
    /// controller of every Gateway, with the operator running (with `operator_args` besides the usual).
    pub async fn with_pebble_and_gateway_api(options: PebbleOptions, operator_args: &[&str]) -> Result<OperatorEnv> {
        let ca = Ca::Pebble(Pebble::start(options).await?);
        let mut env = OperatorEnv::prepare_with(ca, false, true).await?;
        env.extra_args.extend(operator_args.iter().map(|a| a.to_string()));
        if let Some(stand_in) = env.stand_in.as_mut() {
            stand_in.serve_gateway_api().await?;
        }
        env.start_operator()?;
        Ok(env)
    }

    async fn prepare_with(ca: Ca, audit_log: bool, gateway_api: bool) -> Result<OperatorEnv> {
        // CRDs before the controller-manager starts, so that its garbage collector knows them at once.
        let control_plane = ControlPlane::start_with_options(ControlPlaneOptions {
            crds_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/crds").into()),
            gateway_api,
            audit_log,
            users: vec![OPERATOR_USER.into()],
            ..ControlPlaneOptions::default()
        })
        .await?;
        let client = control_plane.client().await?;
        control_plane.create_namespace("kacme").await?;
        control_plane.create_namespace("apps").await?;
        let stand_in = SolverStandIn::start(client.clone(), kacme_binary(), ca.http01_addr()).await?;
        let env = OperatorEnv {
            stand_in: Some(stand_in),
            ca,
            control_plane,
            client,
            operator: None,
            operator_runs: 0,
            extra_args: Vec::new(),
            dir: TempDir::new("operator")?,
        };
        Ok(env)
    }

    /// Starts `kacme controller` against this control plane (and nothing else) as the environment's operator.
    pub fn start_operator(&mut self) -> Result<()> {
        self.start_operator_with(&OperatorLaunch::default())
    }

    /// Like [`OperatorEnv::start_operator`], as `launch` says.
    pub fn start_operator_with(&mut self, launch: &OperatorLaunch) -> Result<()> {
        self.operator = Some(self.launch_operator(launch)?);
        Ok(())
    }

    /// Starts one more `kacme controller` (the caller owns it: several may run at once), with its HTTP
    /// endpoints on a free port of the environment's loopback address.
    pub fn launch_operator(&mut self, launch: &OperatorLaunch) -> Result<RunningOperator> {
        self.operator_runs += 1;
        let metrics_addr = self.control_plane.address().socket_addr(self.control_plane.address().free_port()?);
        let mut args: Vec<String> = [
            "controller",
            "--cluster-resource-namespace",
            "kacme",
            "--solver-image",
            "kacme:test",
            "--backoff-initial",
            "2s",
            "--backoff-max",
            "8s",
            "--renewal-jitter",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--metrics-address={metrics_addr}"));
        args.push(format!("--leader-elect={}", launch.leader_elect));
        args.extend(self.extra_args.iter().cloned());
        args.extend(launch.args.iter().cloned());
        let name = format!("kacme-controller-{}", self.operator_runs);
        let log = self.dir.join(format!("{name}.log"));
        let mut envs: Vec<(&str, &std::ffi::OsStr)> = match &launch.kubeconfig {
            Some(kubeconfig) => vec![("KUBECONFIG", kubeconfig.as_os_str())],
            None => self.control_plane.child_env_as(OPERATOR_USER)?,
        };
        envs.push(("RUST_LOG", std::ffi::OsStr::new("info,kacme=debug")));
        envs.extend(launch.envs.iter().map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v))));
        let process = ChildProcess::spawn(&name, &kacme_binary(), args, &envs, log)?;
        Ok(RunningOperator { name, process, metrics_addr })
    }

    /// The environment's operator, when running.
    pub fn operator(&self) -> Option<&RunningOperator> {
        self.operator.as_ref()
    }

    /// SIGKILLs the operator (as a crash would).
    pub fn kill_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.kill();
        }
    }

    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(|o| o.pid())
    }

    /// A reader of the apiserver's audit log from its beginning (the environment must have been started
    /// with `audit_log`); the operator's requests are those of [`OPERATOR_USER`].
    pub fn audit(&self) -> Result<AuditReader> {
        let path = self.control_plane.audit_log_path().context("the environment was started without an audit log")?;
        Ok(AuditReader::new(path))
    }

    /// The lines of every operator run's log (oldest run first) that contain one of `needles`, each prefixed
    /// with its run.
    pub fn operator_log_lines(&self, needles: &[String]) -> String {
        let mut lines = Vec::new();
        for run in 0..=self.operator_runs {
            let path = self.dir.join(format!("kacme-controller-{run}.log"));
            let Ok(log) = std::fs::read_to_string(&path) else { continue };
            for line in log.lines().filter(|line| needles.iter().any(|n| line.contains(n.as_str()))) {
                lines.push(format!("[run {run}] {line}"));
            }
        }
        lines.join("\n")
    }

    pub fn operator_log(&self) -> String {
        self.operator.as_ref().map(|o| o.log_tail(60)).unwrap_or_default()
    }

    /// Applies YAML with the environment's kubectl.
    pub async fn apply(&self, yaml: &str) -> Result<()> {
        let path = self.dir.join(format!("apply-{}.yaml", Instant::now().elapsed().as_nanos() ^ rand_suffix()));
        std::fs::write(&path, yaml)?;
        self.control_plane.kubectl(&["apply", "-f", &path.display().to_string()]).await?;
        Ok(())
    }

    /// An Issuer for this CA in `namespace`.
    pub fn issuer_yaml(&self, namespace: &str, name: &str) -> String {
        let bundle: String = self.ca.ca_bundle_pem().lines().map(|l| format!("      {l}\n")).collect();
        format!(
            "apiVersion: kacme.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  acme:\n    server: {}\n    email: ops@example.test\n    caBundle: |\n{bundle}    privateKeySecretRef:\n      name: {name}-account\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: kacme-test\n",
            self.ca.directory_url()
        )
    }

    pub fn certificates(&self, namespace: &str) -> Api<Certificate> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Waits until `check` accepts the Certificate; fails with its status and the operator's log.
    pub async fn wait_certificate(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Certificate) -> bool,
    ) -> Result<Certificate> {
        let api = self.certificates(namespace);
        let result = poll_until(what, timeout, Duration::from_millis(50), || async {
            Ok(match api.get_opt(name).await? {
                Some(c) if check(&c) => Ok(c),
                Some(c) => Err(format!("status: {}", serde_json::to_string(&c.status).unwrap_or_default())),
                None => Err("the Certificate does not exist".into()),
            })
        })
        .await;
        result.with_context(|| format!("operator log:\n{}", self.operator_log()))
    }

    pub async fn wait_ready(&self, namespace: &str, name: &str, timeout: Duration) -> Result<Certificate> {
        self.wait_certificate(namespace, name, timeout, &format!("Certificate {namespace}/{name} Ready"), |c| {
            condition(c, "Ready").is_some_and(|(status, _, _)| status == "True")
                && c.status.as_ref().is_some_and(|s| s.order.is_none())
        })
        .await
    }

    /// Solver Pods, Services, Ingresses and HTTPRoutes that still exist in `namespace`.
    pub async fn solver_objects(&self, namespace: &str) -> Result<Vec<String>> {
        let params = ListParams::default().labels("kacme.dev/solver");
        let mut names = Vec::new();
        for pod in Api::<Pod>::namespaced(self.client.clone(), namespace).list_metadata(&params).await? {
            names.push(format!("pod/{}", pod.name_any()));
        }
        for service in Api::<Service>::namespaced(self.client.clone(), namespace).list_metadata(&params).await? {
            names.push(format!("service/{}", service.name_any()));
        }
        for ingress in Api::<Ingress>::namespaced(self.client.clone(), namespace).list_metadata(&params).await? {
            names.push(format!("ingress/{}", ingress.name_any()));
        }
        // HTTPRoutes where the Gateway API CRDs are installed (elsewhere the list is refused: none).
        let routes = Api::<kacme::gateway_api::HTTPRoute>::namespaced(self.client.clone(), namespace);
        for route in routes.list_metadata(&params).await.map(|l| l.items).unwrap_or_default() {
            names.push(format!("httproute/{}", route.name_any()));
        }
        Ok(names)
    }

    /// The `<name>-next-key` Secrets that exist in `namespace` (none once every issuance has ended).
    pub async fn next_key_secrets(&self, namespace: &str) -> Result<Vec<String>> {
        let secrets = self.secrets(namespace).list_metadata(&ListParams::default()).await?;
        Ok(secrets.items.into_iter().filter_map(|s| s.metadata.name).filter(|n| n.ends_with("-next-key")).collect())
    }

    /// Waits up to `timeout` until the Certificate `namespace/name` is gone (its finalizer ran).
    pub async fn wait_certificate_gone(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let api = self.certificates(namespace);
        poll_until(&format!("Certificate {name} to be gone"), timeout, Duration::from_millis(100), || async {
            Ok(match api.get_opt(name).await? {
                None => Ok(()),
                Some(c) => Err(format!("finalizers {:?}", c.metadata.finalizers)),
            })
        })
        .await
        .with_context(|| self.operator_log())
    }

    /// Waits until no solver object remains in `namespace`.
    pub async fn wait_no_solver_objects(&self, namespace: &str) -> Result<()> {
        poll_until("no solver objects left", Duration::from_secs(20), Duration::from_millis(100), || async {
            let left = self.solver_objects(namespace).await?;
            Ok(if left.is_empty() { Ok(()) } else { Err(left.join(", ")) })
        })
        .await
    }

    /// The reasons of Events about an object, in order.
    pub async fn event_reasons(&self, namespace: &str, name: &str) -> Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        let mut list: Vec<Event> = events.list(&params).await?.items;
        list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        Ok(list.into_iter().filter_map(|e| e.reason).collect())
    }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed) as u128
}

/// (status, reason, message) of a condition.
pub fn condition(certificate: &Certificate, type_: &str) -> Option<(String, String, String)> {
    certificate
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}
