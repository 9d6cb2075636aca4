//! The kubelet and ingress controller that this machine lacks, for solver Pods only.
//!
//! Kubelet part: for every Pod labelled `kacme.dev/solver`, run the real `kacme` binary with the first
//! container's `args` (the image's entrypoint is `kacme`; without `args`, `command` minus its first word)
//! and its literal `env` values, listening on a free port of the environment's
//! address instead of the Pod's own; report the Pod Running and Ready (status subresource, podIP = the
//! environment's address), Failed when the process exits, and kill the process when the Pod goes away.
//! On request ([`SolverStandIn::start_for`] with [`SolverKind::CertManager`]) the same for cert-manager's
//! solver Pods (label `acme.cert-manager.io/http01-solver=true`): their acmesolver arguments
//! (`--listen-port=8089 --domain=D --token=T --key=K`) become `kacme solver --domain=D --token=T
//! --key-authorization=K`, which serves the same answer (the key at `/.well-known/acme-challenge/T` for
//! host D).
//!
//! Ingress part: serve HTTP on the address the CA dials and route each request like an ingress controller —
//! Ingress rule host and path (Exact, Prefix, ImplementationSpecific) → backend Service in the same
//! namespace → Pods matching its selector → proxy to that Pod's local process. No matching rule: 404.
//!
//! Gateway part (on request, [`SolverStandIn::serve_gateway_api`], when the Gateway API CRDs are installed):
//! act as the controller of every Gateway — write each HTTPRoute's `status.parents` (`Accepted` True for a
//! Gateway that exists, False with reason `NotAllowedByListeners` and the annotation's text when the Gateway
//! carries [`REFUSE_ROUTES_ANNOTATION`], `NoMatchingParent` for a sectionName it has no listener of;
//! `ResolvedRefs` True when every backend Service exists, else `BackendNotFound`), and route requests that
//! no Ingress rule matches by the hostnames and path matches (Exact, PathPrefix) of the routes that every
//! parent accepted.

use crate::process::{ChildProcess, TempDir};
use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, HostIP, Pod, PodCondition, PodIP,
    PodStatus, Service,
};
use k8s_openapi::api::networking::v1::{Ingress, ServiceBackendPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// An annotation on a Gateway that makes the stand-in refuse every route attached to it (Accepted False,
/// reason `NotAllowedByListeners`, the annotation's value as the message).
pub const REFUSE_ROUTES_ANNOTATION: &str = "testenv.kacme.dev/refuse-routes";
/// The controller name the stand-in writes into routes' `status.parents`.
pub const STAND_IN_GATEWAY_CONTROLLER: &str = "testenv.kacme.dev/stand-in";

/// The label that marks solver Pods (any value).
pub const SOLVER_LABEL: &str = "kacme.dev/solver";
/// The label that marks cert-manager's HTTP-01 solver Pods (its `SolverIdentificationLabelKey`, value `true`).
pub const CERT_MANAGER_SOLVER_LABEL: &str = "acme.cert-manager.io/http01-solver";

/// Whose solver Pods the stand-in runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SolverKind {
    /// kacme's: labelled [`SOLVER_LABEL`], the container's args are `kacme` arguments (`solver ...`).
    Kacme,
    /// cert-manager's: labelled [`CERT_MANAGER_SOLVER_LABEL`]`=true`, the container's args are its acmesolver's
    /// (`--listen-port=8089 --domain=D --token=T --key=K`), run as `kacme solver` with the same meaning.
    CertManager,
}

impl SolverKind {
    /// The label selector of this kind's solver Pods.
    pub fn label_selector(self) -> String {
        match self {
            SolverKind::Kacme => SOLVER_LABEL.to_string(),
            SolverKind::CertManager => format!("{CERT_MANAGER_SOLVER_LABEL}=true"),
        }
    }

    /// The `kacme` arguments that serve a Pod's challenge on `addr`, from the container's arguments.
    fn process_args(self, pod_args: &[String], addr: SocketAddr) -> Result<Vec<String>> {
        match self {
            SolverKind::Kacme => Ok(solver_args(pod_args, addr)),
            SolverKind::CertManager => acmesolver_args(pod_args, addr),
        }
    }
}

/// A solver process that the stand-in runs for a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningSolver {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub name: String,
    /// Where the process listens (the Pod's "podIP:port" on this host).
    pub addr: SocketAddr,
    /// The process id.
    pub pid: u32,
    /// The arguments the `kacme` binary was started with (the Pod's args, listen address rewritten).
    pub args: Vec<String>,
    /// Whether the process accepts connections (the Pod is reported Ready).
    pub ready: bool,
}

/// The solver-Pod kubelet and ingress controller stand-in; stops its processes and server on drop.
pub struct SolverStandIn {
    listen_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SolverStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolverStandIn").field("listen_addr", &self.listen_addr).finish()
    }
}

struct State {
    client: Client,
    kacme: PathBuf,
    ip: IpAddr,
    dir: TempDir,
    pods: Mutex<HashMap<String, Arc<SolverPod>>>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
    /// How long after its creation an Ingress is routed (see [`SolverStandIn::program_ingresses_after`]).
    programming_delay: Mutex<Duration>,
    /// HTTPRoutes, once [`SolverStandIn::serve_gateway_api`] runs.
    routes: Mutex<Option<Store<DynamicObject>>>,
}

struct SolverPod {
    kind: SolverKind,
    namespace: String,
    name: String,
    uid: String,
    labels: Mutex<BTreeMap<String, String>>,
    containers: Vec<(String, String)>,
    addr: SocketAddr,
    args: Vec<String>,
    process: ChildProcess,
    ready: AtomicBool,
    stopped: AtomicBool,
}

impl SolverStandIn {
    /// Starts watching solver Pods, Services and Ingresses through `client`, runs solver processes with
    /// `kacme_binary`, and serves HTTP on `listen_addr` (Pebble: [`crate::Pebble::http01_addr`]; step-ca:
    /// [`crate::StepCa::http01_addr`], port 80). Solver processes listen on free ports of
    /// `listen_addr`'s IP. Returns once the watches have listed everything and the server listens.
    pub async fn start(client: Client, kacme_binary: impl AsRef<Path>, listen_addr: SocketAddr) -> Result<Self> {
        Self::start_for(client, kacme_binary, listen_addr, &[SolverKind::Kacme]).await
    }

    /// Like [`SolverStandIn::start`], for the solver Pods of the given kinds (kacme's, cert-manager's, or
    /// both).
    pub async fn start_for(
        client: Client,
        kacme_binary: impl AsRef<Path>,
        listen_addr: SocketAddr,
        kinds: &[SolverKind],
    ) -> Result<Self> {
        let started = Instant::now();
        if kinds.is_empty() {
            bail!("the solver stand-in needs at least one kind of solver Pod to run");
        }
        let kacme = kacme_binary.as_ref().to_path_buf();
        if !kacme.is_file() {
            bail!("the kacme binary {} does not exist (build it first: cargo build)", kacme.display());
        }
        let listener = TcpListener::bind(listen_addr).await.with_context(|| {
            format!("the solver stand-in cannot listen on {listen_addr} (port 80 needs root or CAP_NET_BIND_SERVICE)")
        })?;
        let (services, services_writer) = reflector::store();
        let (ingresses, ingresses_writer) = reflector::store();
        let state = Arc::new(State {
            client: client.clone(),
            kacme,
            ip: listen_addr.ip(),
            dir: TempDir::new("solver-stand-in")?,
            pods: Mutex::new(HashMap::new()),
            services: services.clone(),
            ingresses: ingresses.clone(),
            programming_delay: Mutex::new(Duration::ZERO),
            routes: Mutex::new(None),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(drive(reflector::reflector(
            services_writer,
            watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).default_backoff(),
        ))));
        tasks.push(tokio::spawn(drive(reflector::reflector(
            ingresses_writer,
            watcher(Api::<Ingress>::all(client.clone()), watcher::Config::default()).default_backoff(),
        ))));
        let mut pods_listed = Vec::new();
        for kind in kinds {
            let (listed, listed_rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(watch_pods(state.clone(), *kind, listed)));
            pods_listed.push(listed_rx);
        }
        tasks.push(tokio::spawn(serve(state.clone(), listener)));
        let stand_in = SolverStandIn { listen_addr, state, tasks };

        let synced = async {
            services.wait_until_ready().await.context("the Service watch stopped")?;
            ingresses.wait_until_ready().await.context("the Ingress watch stopped")?;
            for listed in pods_listed {
                listed.await.context("a Pod watch stopped")?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), synced)
            .await
            .context("the solver stand-in's watches did not list Pods, Services and Ingresses within 30s")??;
        eprintln!(
            "testenv: solver stand-in ready in {:.1}s, serving HTTP on {listen_addr}",
            started.elapsed().as_secs_f64()
        );
        Ok(stand_in)
    }

    /// Routes an Ingress only `delay` after its creation (its `creationTimestamp`, to the second), as a real
    /// ingress controller takes a moment to program a new rule: until then its requests answer 404, as they
    /// would with no rule at all. Zero (the default) routes every Ingress at once.
    pub fn program_ingresses_after(&self, delay: Duration) {
        *lock(&self.state.programming_delay) = delay;
    }

    /// Acts as the controller of every Gateway from now on (see the module's doc): watches Gateways and
    /// HTTPRoutes, writes the routes' `status.parents`, and routes requests through accepted routes. Needs the
    /// Gateway API CRDs (`ControlPlaneOptions::gateway_api`). Returns once both watches have listed.
    pub async fn serve_gateway_api(&mut self) -> Result<()> {
        let client = self.state.client.clone();
        let routes_writer = reflector::store::Writer::new(route_resource());
        let routes = routes_writer.as_reader();
        let gateways_writer = reflector::store::Writer::new(gateway_resource());
        let gateways = gateways_writer.as_reader();
        let route_api: Api<DynamicObject> = Api::all_with(client.clone(), &route_resource());
        let gateway_api: Api<DynamicObject> = Api::all_with(client.clone(), &gateway_resource());
        self.tasks.push(tokio::spawn(drive(reflector::reflector(
            routes_writer,
            watcher(route_api, watcher::Config::default()).default_backoff(),
        ))));
        self.tasks.push(tokio::spawn(drive(reflector::reflector(
            gateways_writer,
            watcher(gateway_api, watcher::Config::default()).default_backoff(),
        ))));
        let synced = async {
            routes.wait_until_ready().await.context("the HTTPRoute watch stopped")?;
            gateways.wait_until_ready().await.context("the Gateway watch stopped")?;
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), synced)
            .await
            .context("the stand-in's Gateway and HTTPRoute watches did not list within 30s (Gateway API CRDs?)")??;
        *lock(&self.state.routes) = Some(routes.clone());
        self.tasks.push(tokio::spawn(write_route_statuses(self.state.clone(), routes, gateways)));
        Ok(())
    }

    /// Where the stand-in serves HTTP (the ingress controller's address).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The solver processes running now.
    pub fn running(&self) -> Vec<RunningSolver> {
        let pods = lock(&self.state.pods);
        let mut running: Vec<RunningSolver> = pods
            .values()
            .filter(|pod| pod.process.exit_status().is_none())
            .map(|pod| RunningSolver {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                addr: pod.addr,
                pid: pod.process.pid(),
                args: pod.args.clone(),
                ready: pod.ready.load(Ordering::SeqCst),
            })
            .collect();
        running.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        running
    }

    /// The temp dir with one log file per solver process.
    pub fn dir(&self) -> &Path {
        self.state.dir.path()
    }
}

impl Drop for SolverStandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let pods: Vec<Arc<SolverPod>> = lock(&self.state.pods).drain().map(|(_, pod)| pod).collect();
        for pod in pods {
            pod.stopped.store(true, Ordering::SeqCst);
            pod.process.kill();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn drive<S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>, K>(stream: S) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(error) = event {
            tracing::warn!(%error, "solver stand-in watch error");
        }
    }
}

// ---- kubelet part ---------------------------------------------------------------------------------------

async fn watch_pods(state: Arc<State>, kind: SolverKind, listed: tokio::sync::oneshot::Sender<()>) {
    let api: Api<Pod> = Api::all(state.client.clone());
    let stream = watcher(api, watcher::Config::default().labels(&kind.label_selector())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed = Some(listed);
    let mut seen = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => seen.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                seen.insert(pod.uid().unwrap_or_default());
                observe_pod(&state, kind, pod);
            }
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<String> = lock(&state.pods)
                    .iter()
                    .filter(|(uid, pod)| pod.kind == kind && !seen.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in gone {
                    stop_pod(&state, &uid);
                }
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            Ok(watcher::Event::Apply(pod)) => observe_pod(&state, kind, pod),
            Ok(watcher::Event::Delete(pod)) => stop_pod(&state, &pod.uid().unwrap_or_default()),
            Err(error) => tracing::warn!(%error, "solver stand-in Pod watch error"),
        }
    }
}

fn observe_pod(state: &Arc<State>, kind: SolverKind, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        stop_pod(state, &uid);
        return;
    }
    if let Some(running) = lock(&state.pods).get(&uid) {
        *lock(&running.labels) = pod.labels().clone();
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    match start_solver(state, kind, &pod) {
        Ok(solver) => {
            lock(&state.pods).insert(uid, solver.clone());
            tokio::spawn(supervise(state.clone(), solver));
        }
        Err(error) => {
            let message = format!("the solver stand-in could not start the solver: {error:#}");
            tracing::warn!(%namespace, %name, %message);
            let state = state.clone();
            let containers = containers_of(&pod);
            tokio::spawn(async move {
                let status = failed_status(&containers, 127, &message);
                let _ = patch_status(&state.client, &namespace, &name, status).await;
            });
        }
    }
}

fn containers_of(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect()
}

fn start_solver(state: &State, kind: SolverKind, pod: &Pod) -> Result<Arc<SolverPod>> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let container = pod.spec.as_ref().and_then(|s| s.containers.first()).context("the Pod has no container")?;
    let port = std::net::TcpListener::bind((state.ip, 0))?.local_addr()?.port();
    let addr = SocketAddr::new(state.ip, port);
    // The image's entrypoint is `kacme`, so `args` are kacme's arguments. A Pod that spells the whole
    // command line in `command` instead (`["kacme", "solver", ...]`) gets the same treatment.
    let pod_args = match (container.args.as_deref(), container.command.as_deref()) {
        (Some(args), _) if !args.is_empty() => args.to_vec(),
        (_, Some([_entrypoint, rest @ ..])) => rest.to_vec(),
        _ => Vec::new(),
    };
    let args = kind.process_args(&pod_args, addr)?;
    // Literal env values of the container (valueFrom needs a kubelet); the listen address is ours.
    let env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .filter(|e| e.name != "KACME_SOLVER_LISTEN")
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect();
    let env_refs: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (k.as_str(), OsStr::new(v))).collect();
    let short_uid: String = uid.chars().take(8).collect();
    let process = ChildProcess::spawn(
        &format!("solver {namespace}/{name}"),
        &state.kacme,
        &args,
        &env_refs,
        state.dir.join(format!("{namespace}_{name}_{short_uid}.log")),
    )?;
    Ok(Arc::new(SolverPod {
        kind,
        namespace,
        name,
        uid,
        labels: Mutex::new(pod.labels().clone()),
        containers: containers_of(pod),
        addr,
        args,
        process,
        ready: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
    }))
}

/// The Pod's args with `--listen` pointed at `addr` (added when absent).
fn solver_args(args: &[String], addr: SocketAddr) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut replaced = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--listen" {
            rest.next();
            out.extend(["--listen".to_string(), addr.to_string()]);
            replaced = true;
        } else if arg.starts_with("--listen=") {
            out.push(format!("--listen={addr}"));
            replaced = true;
        } else {
            out.push(arg.clone());
        }
    }
    if !replaced {
        out.extend(["--listen".to_string(), addr.to_string()]);
    }
    out
}

/// `kacme solver` arguments serving on `addr` what cert-manager's acmesolver would serve with `args`
/// (`--listen-port=P --domain=D --token=T --key=K`, each also as `--flag value`): the listen port is ours.
fn acmesolver_args(args: &[String], addr: SocketAddr) -> Result<Vec<String>> {
    let mut out = vec!["solver".to_string(), "--listen".to_string(), addr.to_string()];
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, value.to_string()),
            None => {
                (arg.as_str(), rest.next().with_context(|| format!("acmesolver argument {arg} has no value"))?.clone())
            }
        };
        let kacme_flag = match name {
            "--listen-port" => continue,
            "--domain" => "--domain",
            "--token" => "--token",
            "--key" => "--key-authorization",
            other => bail!("unknown acmesolver argument {other:?}"),
        };
        // One argument `--flag=value`: a token may begin with '-' (base64url), which as a separate argument
        // would read as a flag.
        out.push(format!("{kacme_flag}={value}"));
    }
    for needed in ["--domain", "--token", "--key-authorization"] {
        if !out.iter().any(|a| a.starts_with(&format!("{needed}="))) {
            bail!("the acmesolver arguments {args:?} lack the one that becomes {needed}");
        }
    }
    Ok(out)
}

/// Marks the Pod Ready once its process accepts connections, and Failed if the process exits.
async fn supervise(state: Arc<State>, pod: Arc<SolverPod>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if pod.stopped.load(Ordering::SeqCst) || pod.process.exit_status().is_some() {
            break;
        }
        if TcpStream::connect(pod.addr).await.is_ok() {
            pod.ready.store(true, Ordering::SeqCst);
            let status = running_status(&pod.containers, state.ip);
            if let Err(error) = patch_status(&state.client, &pod.namespace, &pod.name, status).await {
                tracing::warn!(namespace = %pod.namespace, name = %pod.name, error = %format!("{error:#}"), "marking the solver Pod Running failed");
            }
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(namespace = %pod.namespace, name = %pod.name, "the solver process does not accept connections");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        if pod.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Some(exit) = pod.process.exit_status() {
            pod.ready.store(false, Ordering::SeqCst);
            let message =
                format!("kacme solver exited ({exit}); last lines of its output:\n{}", pod.process.log_tail(10));
            let status = failed_status(&pod.containers, exit.code().unwrap_or(137), &message);
            if let Err(error) = patch_status(&state.client, &pod.namespace, &pod.name, status).await {
                tracing::warn!(namespace = %pod.namespace, name = %pod.name, error = %format!("{error:#}"), "marking the solver Pod Failed failed");
            }
            // Keep the entry (the Pod stays Failed, like a real one) until the Pod is deleted.
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop_pod(state: &State, uid: &str) {
    let removed = lock(&state.pods).remove(uid);
    if let Some(pod) = removed {
        debug_assert_eq!(pod.uid, uid);
        pod.stopped.store(true, Ordering::SeqCst);
        pod.process.kill();
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn condition(kind: &str, ready: bool, reason: Option<&str>, message: Option<&str>) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ready { "True" } else { "False" }.into(),
        last_transition_time: Some(now()),
        reason: reason.map(Into::into),
        message: message.map(Into::into),
        ..Default::default()
    }
}

fn running_status(containers: &[(String, String)], ip: IpAddr) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![
            condition("PodScheduled", true, None, None),
            condition("Initialized", true, None, None),
            condition("ContainersReady", true, None, None),
            condition("Ready", true, None, None),
        ]),
        host_ip: Some(ip.to_string()),
        host_ips: Some(vec![HostIP { ip: ip.to_string() }]),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(now()),
        container_statuses: Some(
            containers
                .iter()
                .map(|(name, image)| ContainerStatus {
                    name: name.clone(),
                    image: image.clone(),
                    image_id: String::new(),
                    ready: true,
                    started: Some(true),
                    restart_count: 0,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning { started_at: Some(now()) }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

fn failed_status(containers: &[(String, String)], exit_code: i32, message: &str) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some("SolverExited".into()),
        message: Some(message.into()),
        conditions: Some(vec![
            condition("PodScheduled", true, None, None),
            condition("Initialized", true, None, None),
            condition("ContainersReady", false, Some("ContainersNotReady"), Some(message)),
            condition("Ready", false, Some("ContainersNotReady"), Some(message)),
        ]),
        container_statuses: Some(
            containers
                .iter()
                .map(|(name, image)| ContainerStatus {
                    name: name.clone(),
                    image: image.clone(),
                    image_id: String::new(),
                    ready: false,
                    started: Some(false),
                    restart_count: 0,
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            reason: Some("Error".into()),
                            message: Some(message.into()),
                            finished_at: Some(now()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

async fn patch_status(client: &Client, namespace: &str, name: &str, status: PodStatus) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching the status of Pod {namespace}/{name}"))?;
    Ok(())
}

// ---- ingress part ---------------------------------------------------------------------------------------

async fn serve(state: Arc<State>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "the solver stand-in failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Where an Ingress sends a request: a Service port in a namespace.
#[derive(Clone, Debug, PartialEq)]
struct Backend {
    namespace: String,
    service: String,
    port: ServiceBackendPort,
}

async fn route(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(normalize_host)
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let delay = *lock(&state.programming_delay);
    let now = std::time::SystemTime::now();
    let programmed = |ingress: &Arc<Ingress>| {
        let created = ingress.metadata.creation_timestamp.as_ref().map(|t| std::time::SystemTime::from(t.0));
        delay.is_zero() || created.is_some_and(|created| now.duration_since(created).is_ok_and(|age| age >= delay))
    };
    let ingresses: Vec<Arc<Ingress>> = state.ingresses.state().into_iter().filter(programmed).collect();
    let routes = lock(&state.routes).as_ref().map(|r| r.state()).unwrap_or_default();
    let backend = find_backend(&ingresses, &host, &path).or_else(|| find_route_backend(&routes, &host, &path));
    let Some(backend) = backend else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no Ingress rule or accepted HTTPRoute matches host {host:?} and path {path:?}\n"),
        );
    };
    let Some(service) = state.services.get(&ObjectRef::new(&backend.service).within(&backend.namespace)) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service {}/{} of the Ingress does not exist\n", backend.namespace, backend.service),
        );
    };
    let spec = service.spec.clone().unwrap_or_default();
    let port_exists = spec.ports.iter().flatten().any(|p| match (&backend.port.number, &backend.port.name) {
        (Some(number), _) => p.port == *number,
        (None, Some(name)) => p.name.as_deref() == Some(name.as_str()),
        (None, None) => false,
    });
    if !port_exists {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service {}/{} has no port {:?}\n", backend.namespace, backend.service, backend.port),
        );
    }
    let selector = spec.selector.unwrap_or_default();
    let target = {
        let pods = lock(&state.pods);
        let mut candidates: Vec<&Arc<SolverPod>> = pods
            .values()
            .filter(|pod| pod.namespace == backend.namespace && pod.ready.load(Ordering::SeqCst))
            .filter(|pod| !selector.is_empty() && labels_match(&selector, &lock(&pod.labels)))
            .collect();
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        candidates.first().map(|pod| pod.addr)
    };
    let Some(target) = target else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service {}/{} has no ready solver Pod\n", backend.namespace, backend.service),
        );
    };
    match proxy(target, request).await {
        Ok(response) => response,
        Err(error) => text(StatusCode::BAD_GATEWAY, format!("proxying to {target} failed: {error:#}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `Name.Example:80` → `name.example`; `[::1]:80` → `::1`; trailing dots dropped.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The best Ingress rule for (host, path), as an ingress controller (nginx) picks it: the most specific
/// host first — an exact host beats a wildcard host beats rules without host, and a request never falls
/// back to a less specific host — then, among that host's paths, an Exact path beats a prefix, and a longer
/// path beats a shorter one.
fn find_backend(ingresses: &[Arc<Ingress>], host: &str, path: &str) -> Option<Backend> {
    let mut rules = Vec::new();
    for ingress in ingresses {
        let namespace = ingress.namespace().unwrap_or_default();
        for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let host_rank = match rule.host.as_deref().map(|h| h.to_ascii_lowercase()) {
                None => 0,
                Some(h) if h.is_empty() => 0,
                Some(h) if h == host => 2,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) if host.split_once('.').is_some_and(|(_, rest)| rest == suffix) => 1,
                    _ => continue,
                },
            };
            rules.push((host_rank, namespace.clone(), rule));
        }
    }
    let host_rank = rules.iter().map(|(rank, _, _)| *rank).max()?;
    let mut best: Option<((bool, usize), Backend)> = None;
    for (_, namespace, rule) in rules.iter().filter(|(rank, _, _)| *rank == host_rank) {
        for http_path in rule.http.iter().flat_map(|h| h.paths.iter()) {
            let rule_path = http_path.path.as_deref().unwrap_or("/");
            if !path_matches(&http_path.path_type, rule_path, path) {
                continue;
            }
            let Some(service) = &http_path.backend.service else { continue };
            let rank = (http_path.path_type == "Exact", rule_path.len());
            if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
                let port = service.port.clone().unwrap_or_default();
                best = Some((rank, Backend { namespace: namespace.clone(), service: service.name.clone(), port }));
            }
        }
    }
    best.map(|(_, backend)| backend)
}

fn path_matches(path_type: &str, rule_path: &str, path: &str) -> bool {
    match path_type {
        "Exact" => path == rule_path,
        "Prefix" => {
            let prefix = rule_path.trim_end_matches('/');
            prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
        }
        _ => path.starts_with(rule_path),
    }
}

// ---- gateway part ---------------------------------------------------------------------------------------

fn route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"))
}

fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"))
}

/// Every 200 ms, the `status.parents` each HTTPRoute should have, written where it differs.
async fn write_route_statuses(state: Arc<State>, routes: Store<DynamicObject>, gateways: Store<DynamicObject>) {
    loop {
        for route in routes.state() {
            let desired = route_parents_status(&route, &gateways, &state.services);
            let current = route.data.pointer("/status/parents").cloned().unwrap_or(serde_json::Value::Null);
            if verdicts(&current) == verdicts(&desired) {
                continue;
            }
            let namespace = route.namespace().unwrap_or_default();
            let api: Api<DynamicObject> = Api::namespaced_with(state.client.clone(), &namespace, &route_resource());
            let patch = serde_json::json!({"status": {"parents": desired}});
            if let Err(error) =
                api.patch_status(&route.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await
            {
                tracing::warn!(%error, route = %route.name_any(), "the stand-in could not write a route's status");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (parentRef, [(type, status, reason, message)]) of every entry: what a status says, without times.
fn verdicts(parents: &serde_json::Value) -> Vec<(String, Vec<(String, String, String, String)>)> {
    let field = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    parents
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let conditions = p["conditions"].as_array().into_iter().flatten();
            let conditions = conditions
                .map(|c| (field(c, "type"), field(c, "status"), field(c, "reason"), field(c, "message")))
                .collect();
            (p["parentRef"].to_string(), conditions)
        })
        .collect()
}

/// The `status.parents` the stand-in gives a route (see the module's doc).
fn route_parents_status(
    route: &DynamicObject,
    gateways: &Store<DynamicObject>,
    services: &Store<Service>,
) -> serde_json::Value {
    let namespace = route.namespace().unwrap_or_default();
    let generation = route.metadata.generation.unwrap_or(1);
    let now = now();
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
        serde_json::json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": generation,
        })
    };
    let backends = route.data.pointer("/spec/rules").and_then(|r| r.as_array()).into_iter().flatten();
    let missing: Vec<String> = backends
        .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
        .filter_map(|backend| {
            let name = backend["name"].as_str()?;
            let ns = backend["namespace"].as_str().unwrap_or(&namespace);
            services.get(&ObjectRef::new(name).within(ns)).is_none().then(|| format!("Service {ns}/{name} not found"))
        })
        .collect();
    let resolved = if missing.is_empty() {
        condition("ResolvedRefs", true, "ResolvedRefs", "")
    } else {
        condition("ResolvedRefs", false, "BackendNotFound", &missing.join("; "))
    };
    let parents = route.data.pointer("/spec/parentRefs").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for parent in parents {
        let Some(name) = parent["name"].as_str() else { continue };
        let ns = parent["namespace"].as_str().unwrap_or(&namespace);
        let Some(gateway) = gateways.get(&ObjectRef::new_with(name, gateway_resource()).within(ns)) else { continue };
        let refusal = gateway.annotations().get(REFUSE_ROUTES_ANNOTATION).cloned();
        let listeners = gateway.data.pointer("/spec/listeners").and_then(|l| l.as_array()).cloned().unwrap_or_default();
        let accepted = match (refusal, parent["sectionName"].as_str()) {
            (Some(message), _) => condition("Accepted", false, "NotAllowedByListeners", &message),
            (None, Some(section)) if !listeners.iter().any(|l| l["name"].as_str() == Some(section)) => {
                condition("Accepted", false, "NoMatchingParent", &format!("no listener named {section}"))
            }
            (None, _) => condition("Accepted", true, "Accepted", ""),
        };
        out.push(serde_json::json!({
            "parentRef": parent,
            "controllerName": STAND_IN_GATEWAY_CONTROLLER,
            "conditions": [accepted, resolved.clone()],
        }));
    }
    serde_json::Value::Array(out)
}

/// Whether every parent entry of a route says Accepted and ResolvedRefs True (and there is one).
fn route_is_accepted(route: &DynamicObject) -> bool {
    let parents = route.data.pointer("/status/parents").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let true_condition = |parent: &serde_json::Value, kind: &str| {
        parent["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == kind && c["status"] == "True")
    };
    !parents.is_empty() && parents.iter().all(|p| true_condition(p, "Accepted") && true_condition(p, "ResolvedRefs"))
}

/// The backend of the best accepted route for (host, path): a route naming the host beats one without
/// hostnames; then an Exact path beats a prefix, and a longer one a shorter one.
fn find_route_backend(routes: &[Arc<DynamicObject>], host: &str, path: &str) -> Option<Backend> {
    let mut best: Option<((bool, bool, usize), Backend)> = None;
    for route in routes.iter().filter(|r| route_is_accepted(r)) {
        let namespace = route.namespace().unwrap_or_default();
        let hostnames: Vec<String> = route.data["spec"]["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
            .collect();
        let host_named = hostnames.iter().any(|h| h == host);
        if !hostnames.is_empty() && !host_named {
            continue;
        }
        for rule in route.data["spec"]["rules"].as_array().into_iter().flatten() {
            let Some(backend) = rule["backendRefs"].as_array().and_then(|b| b.first()) else { continue };
            let matches = rule["matches"].as_array().cloned().unwrap_or_else(|| vec![serde_json::json!({})]);
            for matched in matches {
                let kind = matched["path"]["type"].as_str().unwrap_or("PathPrefix");
                let value = matched["path"]["value"].as_str().unwrap_or("/");
                let fits = match kind {
                    "Exact" => path == value,
                    _ => path_matches("Prefix", value, path),
                };
                if !fits {
                    continue;
                }
                let rank = (host_named, kind == "Exact", value.len());
                if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
                    let port = ServiceBackendPort { number: backend["port"].as_i64().map(|p| p as i32), name: None };
                    let service = backend["name"].as_str().unwrap_or_default().to_string();
                    let ns = backend["namespace"].as_str().map(String::from).unwrap_or_else(|| namespace.clone());
                    best = Some((rank, Backend { namespace: ns, service, port }));
                }
            }
        }
    }
    best.map(|(_, backend)| backend)
}

const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

async fn proxy(target: SocketAddr, request: Request<Incoming>) -> Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.context("reading the request body")?.to_bytes();
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
        .await
        .context("connecting timed out")?
        .context("connecting")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
    tokio::spawn(connection);
    let mut upstream =
        Request::builder().method(parts.method).uri(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream.body(Full::new(body)).context("building the proxied request")?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(upstream))
        .await
        .context("no response within 10s")?
        .context("sending the request")?;
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await.context("reading the response body")?.to_bytes();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    };
    use kube::api::ObjectMeta;

    fn ingress(namespace: &str, host: Option<&str>, paths: &[(&str, &str, &str)]) -> Arc<Ingress> {
        Arc::new(Ingress {
            metadata: ObjectMeta { namespace: Some(namespace.into()), name: Some("i".into()), ..Default::default() },
            spec: Some(IngressSpec {
                rules: Some(vec![IngressRule {
                    host: host.map(Into::into),
                    http: Some(HTTPIngressRuleValue {
                        paths: paths
                            .iter()
                            .map(|(path, path_type, service)| HTTPIngressPath {
                                path: Some((*path).into()),
                                path_type: (*path_type).into(),
                                backend: IngressBackend {
                                    service: Some(IngressServiceBackend {
                                        name: (*service).into(),
                                        port: Some(ServiceBackendPort { number: Some(8089), name: None }),
                                    }),
                                    resource: None,
                                },
                            })
                            .collect(),
                    }),
                }]),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn service_for(ingresses: &[Arc<Ingress>], host: &str, path: &str) -> Option<String> {
        find_backend(ingresses, host, path).map(|b| format!("{}/{}", b.namespace, b.service))
    }

    #[test]
    fn requests_are_routed_like_an_ingress_controller_routes_them() {
        let challenge = "/.well-known/acme-challenge/TOK";
        let ingresses = vec![
            ingress("a", Some("app.example.test"), &[(challenge, "Exact", "exact")]),
            ingress("b", Some("app.example.test"), &[("/.well-known", "Prefix", "prefix")]),
            ingress("c", Some("*.example.test"), &[("/", "Prefix", "wildcard")]),
            ingress("d", None, &[("/any", "ImplementationSpecific", "hostless")]),
        ];
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("exact path on its host", "app.example.test", challenge, Some("a/exact")),
            (
                "longer path than the exact one",
                "app.example.test",
                "/.well-known/acme-challenge/TOKEN",
                Some("b/prefix"),
            ),
            ("prefix by segment", "app.example.test", "/.well-known/x", Some("b/prefix")),
            ("prefix is not a string prefix", "app.example.test", "/.well-knownx", None),
            ("wildcard host", "other.example.test", challenge, Some("c/wildcard")),
            ("no fallback from an exact host to a wildcard", "app.example.test", "/elsewhere", None),
            ("wildcard covers one label only", "a.b.example.test", challenge, None),
            ("rule without host", "anything.test", "/anything", Some("d/hostless")),
            ("no rule", "anything.test", "/", None),
        ];
        for (case, host, path, expected) in cases {
            assert_eq!(service_for(&ingresses, host, path).as_deref(), *expected, "{case}");
        }
    }

    #[test]
    fn hosts_are_compared_without_port_case_or_trailing_dot() {
        assert_eq!(normalize_host("App.Example.TEST:5002"), "app.example.test");
        assert_eq!(normalize_host("app.example.test."), "app.example.test");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("127.0.1.1"), "127.0.1.1");
    }

    #[test]
    fn the_listen_address_of_a_pod_is_replaced_by_a_local_one() {
        let addr: SocketAddr = "127.0.1.1:40000".parse().unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            solver_args(&args(&["solver", "--listen", "0.0.0.0:8089", "--domain", "d"]), addr),
            args(&["solver", "--listen", "127.0.1.1:40000", "--domain", "d"])
        );
        assert_eq!(
            solver_args(&args(&["solver", "--listen=0.0.0.0:8089"]), addr),
            args(&["solver", "--listen=127.0.1.1:40000"])
        );
        assert_eq!(solver_args(&args(&["solver"]), addr), args(&["solver", "--listen", "127.0.1.1:40000"]));
    }

    #[test]
    fn cert_manager_solver_arguments_become_kacme_solver_arguments() {
        let addr: SocketAddr = "127.0.1.1:40000".parse().unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Tokens are base64url: one that begins with '-' must stay the value of --token.
        let expected = args(&[
            "solver",
            "--listen",
            "127.0.1.1:40000",
            "--domain=a.example.test",
            "--token=-TOK",
            "--key-authorization=-TOK.thumb",
        ]);
        // As cert-manager's buildDefaultPod writes them, and with values as separate arguments.
        let pod = args(&["--listen-port=8089", "--domain=a.example.test", "--token=-TOK", "--key=-TOK.thumb"]);
        assert_eq!(SolverKind::CertManager.process_args(&pod, addr).unwrap(), expected);
        let pod =
            args(&["--listen-port", "8089", "--domain", "a.example.test", "--token", "-TOK", "--key", "-TOK.thumb"]);
        assert_eq!(acmesolver_args(&pod, addr).unwrap(), expected);
        assert!(acmesolver_args(&args(&["--domain=d", "--token=t"]), addr).is_err(), "no key");
        assert!(acmesolver_args(&args(&["--domain=d", "--token=t", "--key=k", "--bogus=1"]), addr).is_err());
        assert_eq!(SolverKind::CertManager.label_selector(), "acme.cert-manager.io/http01-solver=true");
    }
}
