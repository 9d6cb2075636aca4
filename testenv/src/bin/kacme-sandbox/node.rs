//! The sandbox on a real node: what a user of kacme sees in a cluster, on this machine.
//!
//! A [`Node`] with Traefik and two local images (kacme from the release binary, tagged with the chart's
//! appVersion; `kacme.test/tls-probe:1`, the sample workload), a CA on the node's address, `helm install
//! charts/kacme` (`pullPolicy: Never`, the webhook on, the self-check dialing Traefik), then config/samples
//! with kubectl. It prints each step as it happens, then how to look inside, and waits for Ctrl-C; the
//! node's teardown removes everything, which it checks.

use crate::{Args, render_samples, wait_for_stop_signal};
use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kacme_testenv::{
    BRIDGE, BRIDGE_ADDRESS, Binaries, Node, NodeOptions, Pebble, PebbleOptions, StepCa, StepCaOptions, TLS_PROBE_IMAGE,
    TRAEFIK_HTTP_PORT, TempDir, kacme_image, node_leftovers, poll_until, tls_probe_image,
};
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The sample namespace, Certificate and workload (config/samples).
const NAMESPACE: &str = "sandbox";
const SAMPLE_CERTIFICATE: &str = "sample";
const WORKLOAD: &str = "web";
const WORKLOAD_CERTIFICATE: &str = "web-kacme";
const WORKLOAD_NAME: &str = "web.sandbox.test";
/// Where kacme's webhook mounts the workload's Secret, and the volume's name.
const MOUNT_PATH: &str = "/var/run/kacme";
const VOLUME_NAME: &str = "kacme-tls";
/// The release and namespace of `helm install`.
const RELEASE: &str = "kacme";
const RELEASE_NAMESPACE: &str = "kacme";
/// How long the samples may take to be issued and running.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

enum Ca {
    Pebble(Pebble),
    StepCa(StepCa),
}

/// Prints a step with the time since the sandbox started.
struct Steps {
    started: Instant,
}

impl Steps {
    fn say(&self, text: impl AsRef<str>) {
        println!("[{:>6.1}s] {}", self.started.elapsed().as_secs_f64(), text.as_ref());
    }
}

/// Everything that runs while the sandbox is up.
struct Sandbox {
    node: Node,
    ca: Ca,
    directory_url: String,
    helm_home: TempDir,
    dir: TempDir,
}

pub async fn run(args: Args) -> Result<()> {
    let steps = Steps { started: Instant::now() };
    for (what, path) in [("--image-binary", &args.image_binary), ("--probe", &args.probe)] {
        if !path.is_file() {
            bail!("{what} {} does not exist (./sandbox builds it)", path.display());
        }
    }
    println!("Starting the kacme sandbox on a real node (this machine, as root; nothing leaves it).");
    let brought_up = tokio::select! {
        result = bring_up(&args, &steps) => Some(result),
        _ = wait_for_stop_signal() => None,
    };
    let sandbox = match brought_up {
        Some(Ok(sandbox)) => sandbox,
        Some(Err(error)) => {
            // The node went with the dropped future (its teardown prints what it could not remove).
            report_leftovers(&steps);
            return Err(error);
        }
        None => {
            steps.say("Interrupted while starting: everything it started is stopped");
            report_leftovers(&steps);
            return Ok(());
        }
    };
    if !args.exit_when_ready {
        println!("Press Ctrl-C to stop the sandbox (the node's teardown removes everything it made).");
        wait_for_stop_signal().await;
        println!();
    }
    steps.say("Stopping the sandbox: workloads, kacme, the node's processes, mounts, cgroups, chains, the bridge");
    let Sandbox { node, ca, helm_home, dir, .. } = sandbox;
    drop(ca);
    let problems = node.stop();
    drop((helm_home, dir));
    if !problems.is_empty() {
        bail!("the node's teardown could not remove: {problems:?}");
    }
    if !report_leftovers(&steps) {
        bail!("something was left on this machine (see above)");
    }
    Ok(())
}

/// Prints what the node left on the host (what `kacme-node-cleanup --check` checks); true when nothing.
fn report_leftovers(steps: &Steps) -> bool {
    let left = node_leftovers();
    if left.is_empty() {
        steps.say("Stopped; nothing left on this machine (no node process, mount, cgroup, chain or bridge)");
        true
    } else {
        steps.say(format!(
            "Left on this machine: {left:?}\n  (cargo run -p kacme-testenv --bin kacme-node-cleanup removes it)"
        ));
        false
    }
}

/// The chart's appVersion: the kacme image's tag that `helm install` uses by default.
fn chart_app_version(chart: &Path) -> Result<String> {
    let path = chart.join("Chart.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    chart["appVersion"].as_str().map(str::to_string).with_context(|| format!("no appVersion in {}", path.display()))
}

async fn bring_up(args: &Args, steps: &Steps) -> Result<Sandbox> {
    let version = chart_app_version(&args.chart)?;
    let kacme_reference = format!("{}:{version}", kacme_testenv::KACME_IMAGE_REPOSITORY);
    steps.say(format!(
        "Writing the images (no registry, no Docker): {kacme_reference} from {} and {TLS_PROBE_IMAGE} from {}",
        args.image_binary.display(),
        args.probe.display()
    ));
    let images = vec![kacme_image(&args.image_binary, &version)?, tls_probe_image(&args.probe)?];
    steps.say(format!(
        "Starting the node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, \
         kube-proxy and Traefik, Pods on the bridge {BRIDGE} ({BRIDGE_ADDRESS}/24; about 10 s)"
    ));
    let node = Node::start(NodeOptions { images, crds_dir: None, traefik: true, ..NodeOptions::default() }).await?;
    let control_plane = node.control_plane();
    steps.say(format!("Node Ready; apiserver {}", control_plane.server()));

    let ca = match args.ca() {
        "pebble" => Ca::Pebble(
            Pebble::start(PebbleOptions {
                address: Some(node.address()),
                http01_port: Some(TRAEFIK_HTTP_PORT),
                ..PebbleOptions::default()
            })
            .await?,
        ),
        _ => Ca::StepCa(
            StepCa::start(StepCaOptions {
                address: Some(node.address()),
                http01_port: Some(TRAEFIK_HTTP_PORT),
                ..StepCaOptions::default()
            })
            .await?,
        ),
    };
    let (directory_url, ca_bundle) = match &ca {
        Ca::Pebble(p) => (p.directory_url().to_string(), p.ca_bundle_pem()),
        Ca::StepCa(s) => (s.directory_url().to_string(), s.root_pem().to_string()),
    };
    steps.say(format!(
        "{} is up at {directory_url}; its HTTP-01 requests go to port {TRAEFIK_HTTP_PORT} of {BRIDGE_ADDRESS} \
         (Traefik), whatever the name",
        args.ca()
    ));

    let mut sandbox =
        Sandbox { node, ca, directory_url, helm_home: TempDir::new("sandbox-helm")?, dir: TempDir::new("sandbox")? };
    install_chart(args, steps, &sandbox).await?;
    apply_samples(args, steps, &sandbox, &ca_bundle).await?;
    let pods = watch_until_ready(steps, &sandbox).await?;
    let handshake = if args.ca() == "pebble" {
        let note = "none: Pebble, like Let's Encrypt, issues server-auth certificates only, which cannot \
                    authenticate a TLS client (the default CA, step-ca, issues both)";
        steps.say(format!("Mutual TLS between the web Pods: {note}"));
        note.to_string()
    } else {
        handshake_between(steps, &sandbox, &pods).await?
    };
    show(args, steps, &mut sandbox, &pods, &handshake).await?;
    Ok(sandbox)
}

/// `helm install` of the chart with the local image, and waits until the operator is Ready and its webhook
/// configured.
async fn install_chart(args: &Args, steps: &Steps, sandbox: &Sandbox) -> Result<()> {
    let control_plane = sandbox.node.control_plane();
    let values = format!(
        "image.pullPolicy=Never,replicaCount=1,webhook.enabled=true,logFormat=text,selfCheckDeadline=60s,\
         selfCheckAddress={BRIDGE_ADDRESS}:{TRAEFIK_HTTP_PORT}"
    );
    let chart = args.chart.display().to_string();
    steps.say(format!(
        "helm install {RELEASE} {chart} --namespace {RELEASE_NAMESPACE} --create-namespace --set {values}"
    ));
    steps.say(
        "  (pullPolicy Never: the image was imported, nothing is pulled; the self-check dials Traefik, which routes a \
         solver only once its Pod is ready)",
    );
    let helm = Binaries::locate()?.path("helm")?;
    let home = sandbox.helm_home.path();
    let output = tokio::process::Command::new(&helm)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", control_plane.kubeconfig_path())
        .arg(format!("--kubeconfig={}", control_plane.kubeconfig_path().display()))
        .args(["install", RELEASE, &chart, "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--set", &values])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running helm")?;
    if !output.status.success() {
        bail!(
            "helm install failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines().take(6) {
        println!("          | {line}");
    }

    let client = control_plane.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let mut last = String::new();
    let ready = poll_until("the kacme Pod Ready", Duration::from_secs(120), Duration::from_millis(250), || async {
        let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=kacme")).await?;
        Ok(match list.items.first() {
            Some(pod) if pod_ready(pod) => Ok(pod.name_any()),
            Some(pod) => Err(format!("{} {}", pod.name_any(), pod_phase(pod))),
            None => Err("no Pod yet".to_string()),
        })
    });
    let ready = tokio::select! {
        ready = ready => ready,
        _ = async {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(list) = pods.list(&ListParams::default().labels("app.kubernetes.io/name=kacme")).await {
                    for pod in &list.items {
                        let line = format!("kacme Pod {}/{}: {}", RELEASE_NAMESPACE, pod.name_any(), pod_phase(pod));
                        if line != last {
                            steps.say(&line);
                            last = line;
                        }
                    }
                }
            }
        } => unreachable!("the progress loop never ends"),
    };
    let operator = match ready {
        Ok(name) => name,
        Err(error) => bail!("{error:#}\n{}", operator_logs(sandbox).await),
    };
    poll_until("the webhook's caBundle", Duration::from_secs(60), Duration::from_millis(250), || async {
        let bundle = control_plane
            .kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                RELEASE,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .await?;
        Ok(if bundle.trim().is_empty() { Err("not patched yet".to_string()) } else { Ok(()) })
    })
    .await?;
    steps.say(format!(
        "kacme Pod {RELEASE_NAMESPACE}/{operator} Ready (container from {}), its webhook configured",
        format_args!("{}:{}", kacme_testenv::KACME_IMAGE_REPOSITORY, chart_app_version(&args.chart)?)
    ));
    Ok(())
}

/// `kubectl apply` of each sample, with the CA filled in; the Ingress class is `traefik` in the samples.
async fn apply_samples(args: &Args, steps: &Steps, sandbox: &Sandbox, ca_bundle: &str) -> Result<()> {
    let control_plane = sandbox.node.control_plane();
    for (file, rendered) in render_samples(&args.samples, sandbox.dir.path(), &sandbox.directory_url, ca_bundle)? {
        steps.say(format!("kubectl apply -f {}", file.display()));
        let output = control_plane.kubectl(&["apply", "-f", &rendered.display().to_string()]).await?;
        for line in output.lines() {
            println!("          | {line}");
        }
    }
    Ok(())
}

/// The running Pods of the sample workload, with their IPs.
#[derive(Clone, Debug)]
struct WorkloadPod {
    name: String,
    ip: String,
    uid: String,
}

/// Prints what changes (Certificates, solver Pods and Ingresses, the workload's Pods) until the sample
/// Certificate and the workload's Certificate are Ready and two Pods of the workload run with the mount.
async fn watch_until_ready(steps: &Steps, sandbox: &Sandbox) -> Result<Vec<WorkloadPod>> {
    let client = sandbox.node.control_plane().client().await?;
    let certificates: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &certificate_resource());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut report = |key: String, line: String| {
        if shown.get(&key) != Some(&line) {
            steps.say(&line);
            shown.insert(key, line);
        }
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut ready = BTreeMap::new();
        for certificate in certificates.list(&ListParams::default()).await? {
            let name = certificate.name_any();
            let (status, reason, message) = ready_condition(&certificate);
            ready.insert(name.clone(), status == "True" && certificate.data["status"]["order"].is_null());
            report(
                format!("certificate/{name}"),
                format!("Certificate {NAMESPACE}/{name}: Ready={status} {reason}: {}", shorten(&message, 110)),
            );
        }
        let mut running = Vec::new();
        for pod in pods.list(&ListParams::default()).await? {
            let name = pod.name_any();
            let solver = pod.labels().contains_key("kacme.dev/solver");
            let container = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .find_map(|c| c.container_id.clone())
                .map(|id| format!(" ({})", shorten(&id, 25)))
                .unwrap_or_default();
            let mounted = mounts_kacme_secret(&pod);
            let what = if solver { "solver Pod" } else { "Pod" };
            let mount = if !solver && mounted { format!(", Secret mounted at {MOUNT_PATH}") } else { String::new() };
            report(format!("pod/{name}"), format!("{what} {NAMESPACE}/{name}: {}{container}{mount}", pod_phase(&pod)));
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            if pod.labels().get("app").map(String::as_str) == Some(WORKLOAD)
                && pod_ready(&pod)
                && mounted
                && pod.metadata.deletion_timestamp.is_none()
                && let Some(ip) = ip
            {
                running.push(WorkloadPod { name, ip, uid: pod.uid().unwrap_or_default() });
            }
        }
        for ingress in ingresses.list(&ListParams::default()).await? {
            let rules: Vec<String> = ingress
                .spec
                .iter()
                .flat_map(|s| s.rules.iter().flatten())
                .flat_map(|r| {
                    let host = r.host.clone().unwrap_or_default();
                    r.http
                        .iter()
                        .flat_map(|h| h.paths.iter())
                        .map(move |p| format!("{host}{}", p.path.clone().unwrap_or_default()))
                })
                .collect();
            let class = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.clone()).unwrap_or_default();
            report(
                format!("ingress/{}", ingress.name_any()),
                format!("solver Ingress {NAMESPACE}/{} (class {class}): {}", ingress.name_any(), rules.join(", ")),
            );
        }
        let done = [SAMPLE_CERTIFICATE, WORKLOAD_CERTIFICATE].iter().all(|c| ready.get(*c) == Some(&true));
        if done && running.len() >= 2 {
            running.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!(
                "the samples were not Ready and Running within {READY_TIMEOUT:?} ({} workload Pods running)\n{}",
                running.len(),
                operator_logs(sandbox).await
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `kacme-tls-probe connect` in the first workload Pod against the second: the handshake line.
async fn handshake_between(steps: &Steps, sandbox: &Sandbox, pods: &[WorkloadPod]) -> Result<String> {
    let (client, server) = (&pods[0], &pods[1]);
    let command = handshake_command(&client.name, &format!("{}:8443", server.ip));
    steps.say(format!("Mutual TLS between the two web Pods, with the mounted files: {}", command.join(" ")));
    let control_plane = sandbox.node.control_plane();
    let line = poll_until("a mutual-TLS handshake", Duration::from_secs(30), Duration::from_millis(500), || async {
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        Ok(control_plane.kubectl(&args).await.map_err(|e| format!("{e:#}")))
    })
    .await?;
    steps.say(format!("  {} (SHA-256 of the client's and the server's certificate)", line.trim()));
    Ok(line.trim().to_string())
}

/// The kubectl command line that runs the probe's client in `pod` against `target`.
fn handshake_command(pod: &str, target: &str) -> Vec<String> {
    [
        "kubectl",
        "exec",
        "-n",
        NAMESPACE,
        pod,
        "--",
        "/kacme-tls-probe",
        "connect",
        target,
        "--server-name",
        WORKLOAD_NAME,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The summary and the ways to look inside.
async fn show(args: &Args, steps: &Steps, sandbox: &mut Sandbox, pods: &[WorkloadPod], handshake: &str) -> Result<()> {
    let control_plane = sandbox.node.control_plane();
    let json = control_plane.kubectl(&["get", "certificate.kacme.dev/sample", "-n", NAMESPACE, "-o", "json"]).await?;
    let certificate: serde_json::Value = serde_json::from_str(&json)?;
    let (spec, status) = (&certificate["spec"], &certificate["status"]);
    let names: Vec<&str> = spec["dnsNames"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    steps.say("The sample Certificate is Ready and the sample workload runs with its certificate:");
    println!("  names:    {}", names.join(", "));
    println!(
        "  issuer:   Issuer {NAMESPACE}/{} ({}, {})",
        spec["issuerRef"]["name"].as_str().unwrap_or("?"),
        args.ca(),
        sandbox.directory_url
    );
    println!("  notAfter: {}", status["notAfter"].as_str().unwrap_or("?"));
    println!("  renewal:  {}", status["renewalTime"].as_str().unwrap_or("?"));
    println!("  Secret:   {NAMESPACE}/{} (tls.crt, tls.key, ca.crt)", spec["secretName"].as_str().unwrap_or("?"));
    println!(
        "  workload: Deployment {NAMESPACE}/{WORKLOAD}, Pods {} ({MOUNT_PATH} from Secret web-kacme-tls); handshake: {handshake}",
        pods.iter().map(|p| format!("{} {}", p.name, p.ip)).collect::<Vec<_>>().join(", ")
    );
    let mounts = host_mounts_of(pods);
    if !mounts.is_empty() {
        println!("  on the host, the kubelet's tmpfs mounts of that Secret:");
        for mount in &mounts {
            println!("    {mount}");
        }
    }

    let binaries = Binaries::locate()?;
    let kubeconfig = control_plane.kubeconfig_path().display();
    let kacme = std::fs::canonicalize(&args.image_binary).unwrap_or_else(|_| args.image_binary.clone());
    let server_ip = control_plane
        .kubectl(&["get", "service", WORKLOAD, "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}"])
        .await
        .unwrap_or_default();
    println!();
    println!("Look inside (as root, in another shell; use kubectl against the sandbox only):");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  export PATH=\"{}:$PATH\"", binaries.dir().display());
    println!("  kubectl get pods -A -o wide                # kacme, the sample workload (solver Pods come and go)");
    println!("  kubectl get kcert -A; kubectl describe kcert {SAMPLE_CERTIFICATE} -n {NAMESPACE}");
    println!("  kubectl logs -n {RELEASE_NAMESPACE} deploy/kacme -f            # the operator");
    println!("  helm list -A                                # (with HOME={})", sandbox.helm_home.path().display());
    println!(
        "  ctr -a {} -n k8s.io images ls    # the images: no registry",
        sandbox.node.containerd_socket().display()
    );
    println!("  ctr -a {} -n k8s.io containers ls", sandbox.node.containerd_socket().display());
    println!(
        "  kubectl get pod -n {NAMESPACE} -l app={WORKLOAD} -o jsonpath='{{range .items[*]}}{{.metadata.name}}: {{.spec.volumes[?(@.name==\"{VOLUME_NAME}\")]}}{{\"\\n\"}}{{end}}'"
    );
    println!(
        "  grep {} /proc/mounts | grep {VOLUME_NAME}     # the Secret volumes on the host",
        sandbox.node.dir().display()
    );
    println!(
        "  ip route show dev {BRIDGE}; iptables -t nat -S KUBE-SERVICES | grep {NAMESPACE}/   # Pod network and Services"
    );
    println!(
        "  kubectl get ingress -A -w                   # solver Ingresses (Traefik routes them) while an order runs"
    );
    println!("  tail -f {}/traefik.log", sandbox.node.dir().display());
    if let Some(client) = pods.first().filter(|_| args.ca() != "pebble") {
        println!(
            "  {}   # mutual TLS through the Service",
            handshake_command(&client.name, &format!("{server_ip}:8443")).join(" ")
        );
    }
    println!(
        "  {} renew {SAMPLE_CERTIFICATE} -n {NAMESPACE}   # renew now; the Pods see a renewed Secret within seconds",
        kacme.display()
    );
    println!(
        "The node's logs are in {} (kept in {} after Ctrl-C).",
        sandbox.node.dir().display(),
        kacme_testenv::last_node_logs_dir().display()
    );
    Ok(())
}

/// The kubelet's mounts of the workload Pods' kacme Secret volume, from /proc/mounts.
fn host_mounts_of(pods: &[WorkloadPod]) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter(|line| pods.iter().any(|p| !p.uid.is_empty() && line.contains(&p.uid)) && line.contains(VOLUME_NAME))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} {}", fields.get(2)?, fields.get(1)?))
        })
        .collect()
}

async fn operator_logs(sandbox: &Sandbox) -> String {
    sandbox
        .node
        .control_plane()
        .kubectl(&["logs", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=kacme", "--tail=40", "--prefix"])
        .await
        .map(|logs| format!("the operator's log:\n{logs}"))
        .unwrap_or_else(|e| format!("(no operator log: {e:#})"))
}

fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "kacme.dev".into(),
        version: "v1alpha1".into(),
        api_version: "kacme.dev/v1alpha1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// The Ready condition's status, reason and message ("Unknown" without one).
fn ready_condition(certificate: &DynamicObject) -> (String, String, String) {
    certificate.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (field("status"), field("reason"), field("message"))
        })
        .unwrap_or_else(|| ("Unknown".into(), "Pending".into(), "no status yet".into()))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The phase, or the reason a container waits (ContainerCreating, CrashLoopBackOff, ...).
fn pod_phase(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let waiting = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    let ready = if pod_ready(pod) { ", Ready" } else { "" };
    match waiting {
        Some(reason) => format!("{phase} ({reason})"),
        None if pod.metadata.deletion_timestamp.is_some() => format!("{phase}, Terminating"),
        None => format!("{phase}{ready}"),
    }
}

/// Whether a container of the Pod mounts kacme's Secret at [`MOUNT_PATH`].
fn mounts_kacme_secret(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH)
}

fn shorten(text: &str, at: usize) -> String {
    match text.char_indices().nth(at) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}
