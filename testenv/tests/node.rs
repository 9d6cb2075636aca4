//! The real node ([`kacme_testenv::Node`]): Pods run from locally imported images, a ClusterIP Service
//! answers another Pod, a Pod reaches the apiserver through the `kubernetes` Service, and after the node is
//! dropped nothing of it is left on the host. A second test kills a process that holds a node (SIGKILL) and
//! checks that the next start cleans up after it.
//!
//! These tests need root and `tests/env/install node`; elsewhere (or with `KACME_SKIP_NODE_TESTS=1`) they
//! print `SKIPPED ...: reason` and pass. One node per machine: they wait for each other on the node lock.

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kacme_testenv::{
    Node, NodeOptions, TLS_PROBE_IMAGE, host, node_is_running, node_leftovers, node_tests_skip_reason, poll_until,
    tls_probe_image,
};
use kube::api::{Api, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

/// Why the node tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    node_tests_skip_reason()
}

/// Host directories that containerd, CNI or the kubelet create outside the node's directory: which exist.
fn host_dirs_present() -> Vec<&'static str> {
    [
        "/var/lib/cni",
        "/run/containerd",
        "/var/log/containers",
        "/var/log/pods",
        "/usr/libexec/kubernetes",
        "/var/lib/kubelet",
    ]
    .into_iter()
    .filter(|d| Path::new(d).exists())
    .collect()
}

fn probe_image() -> Result<kacme_testenv::ImageSpec> {
    tls_probe_image(Path::new(env!("CARGO_BIN_EXE_kacme-tls-probe")))
}

/// A Secret with `ca.crt`, `tls.crt` and `tls.key` for `name` (server and client use), as kacme would mount.
fn probe_secret(name: &str) -> Result<Secret> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "node test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let mut leaf_params = CertificateParams::new(vec![name.to_string()])?;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "type": "kubernetes.io/tls",
        "stringData": { "ca.crt": ca_cert.pem(), "tls.crt": leaf.pem(), "tls.key": leaf_key.serialize_pem() },
    }))?)
}

/// A Pod of the probe image running `args`, with the Secret `secret` at `/certs` when given.
fn probe_pod(name: &str, labels: serde_json::Value, args: &[&str], secret: Option<&str>) -> Result<Pod> {
    let (volumes, mounts) = match secret {
        Some(secret) => (
            serde_json::json!([{ "name": "certs", "secret": { "secretName": secret } }]),
            serde_json::json!([{ "name": "certs", "mountPath": "/certs", "readOnly": true }]),
        ),
        None => (serde_json::json!([]), serde_json::json!([])),
    };
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "volumes": volumes,
            "containers": [{
                "name": "probe",
                "image": TLS_PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": args,
                "volumeMounts": mounts,
                "securityContext": {
                    "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?)
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, wanted: &str) -> Result<Pod> {
    poll_until(&format!("Pod {name} {wanted}"), Duration::from_secs(60), Duration::from_millis(100), || async {
        let pod = pods.get(name).await?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phase == wanted {
            return Ok(Ok(pod));
        }
        if phase == "Failed" || (phase == "Succeeded" && wanted != "Succeeded") {
            bail!("Pod {name} is {phase}: {:?}", pod.status);
        }
        Ok(Err(format!("{phase}: {:?}", pod.status.as_ref().and_then(|s| s.container_statuses.clone()))))
    })
    .await
}

/// The tests of this binary take turns (the node lock would serialize them too, but the crash test must
/// see the leftovers of its own child before any other start cleans them up).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Set for the child process of the crash test: it runs [`holds_a_node_until_killed`] only.
const HOLDER_ENV: &str = "KACME_NODE_TEST_HOLDER";
const HOLDING: &str = "NODE-HELD";

#[tokio::test]
async fn pods_run_services_answer_and_nothing_is_left_after_the_node_goes() -> Result<()> {
    if std::env::var_os(HOLDER_ENV).is_some() {
        return Ok(());
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED pods_run_services_answer_and_nothing_is_left_after_the_node_goes: {reason}");
        return Ok(());
    }
    let test_started = Instant::now();
    let ip_forward_before = host::read_sysctl("net.ipv4.ip_forward")?;
    let host_dirs_before = host_dirs_present();
    let node = Node::start(NodeOptions { images: vec![probe_image()?], ..NodeOptions::default() }).await?;
    let node_ready = test_started.elapsed();
    let client = node.control_plane().client().await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let create = PostParams::default();

    // A mutual-TLS server behind a ClusterIP Service, and a client Pod that goes through the Service.
    secrets.create(&create, &probe_secret("probe")?).await?;
    let pod_started = Instant::now();
    pods.create(
        &create,
        &probe_pod(
            "probe-server",
            serde_json::json!({ "app": "probe" }),
            &["serve", "--listen", "0.0.0.0:8443", "--dir", "/certs"],
            Some("probe"),
        )?,
    )
    .await?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "probe" },
        "spec": { "selector": { "app": "probe" }, "ports": [{ "port": 8443, "targetPort": 8443 }] },
    }))?;
    let service = services.create(&create, &service).await?;
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).context("the Service has a ClusterIP")?;
    let server = wait_for_phase(&pods, "probe-server", "Running").await?;
    let pod_running = pod_started.elapsed();
    let pod_ip = server.status.and_then(|s| s.pod_ip).context("the server Pod has an IP")?;
    assert!(pod_ip.starts_with("10.213.0."), "Pod IP {pod_ip} is on the node's bridge");

    let target = format!("{cluster_ip}:8443");
    // The Service's rules follow the endpoints; a client that comes too early is retried (a new Pod).
    let mut attempt = 0;
    let connected = loop {
        attempt += 1;
        let name = format!("probe-client-{attempt}");
        pods.create(
            &create,
            &probe_pod(
                &name,
                serde_json::json!({}),
                &["connect", &target, "--server-name", "probe", "--dir", "/certs"],
                Some("probe"),
            )?,
        )
        .await?;
        match wait_for_phase(&pods, &name, "Succeeded").await {
            Ok(_) => break name,
            Err(error) if attempt < 5 => {
                eprintln!("attempt {attempt}: {error:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => {
                let logs = node.control_plane().kubectl(&["logs", &name]).await.unwrap_or_default();
                return Err(error.context(format!("logs of {name}: {logs}")));
            }
        }
    };
    // kubectl logs: the apiserver reaches the kubelet on the node's InternalIP.
    let logs = node.control_plane().kubectl(&["logs", &connected]).await?;
    assert!(logs.starts_with("client=") && logs.contains(" server="), "the client's handshake line: {logs:?}");

    // A Pod reaches the apiserver through the `kubernetes` Service, with its service-account token.
    pods.create(&create, &probe_pod("apiserver-client", serde_json::json!({}), &["apiserver", "/version"], None)?)
        .await?;
    wait_for_phase(&pods, "apiserver-client", "Succeeded").await?;
    let logs = node.control_plane().kubectl(&["logs", "apiserver-client"]).await?;
    assert!(logs.contains("HTTP/1.1 200") && logs.contains("gitVersion"), "the apiserver's answer: {logs:?}");
    let checks_took = pod_started.elapsed();

    let node_dir = node.dir();
    let torn_down = Instant::now();
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}");
    let teardown_took = torn_down.elapsed();
    let left = node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    assert!(!node_dir.exists(), "{} removed", node_dir.display());
    assert_eq!(host::read_sysctl("net.ipv4.ip_forward")?, ip_forward_before, "ip_forward restored");
    assert_eq!(host_dirs_present(), host_dirs_before, "host directories as before");
    let cni_results: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kacme-node-"))
        .map(|e| e.path())
        .collect();
    assert!(cni_results.is_empty(), "CNI results left: {cni_results:?}");
    eprintln!(
        "node test: node Ready after {:.1}s, first Pod Running after {:.1}s, Service and apiserver checks {:.1}s, \
         teardown {:.1}s, test {:.1}s",
        node_ready.as_secs_f64(),
        pod_running.as_secs_f64(),
        checks_took.as_secs_f64(),
        teardown_took.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Not a test of its own: the child process of [`a_node_whose_test_process_was_killed_is_cleaned_up_by_the_next_start`]
/// starts a node with Traefik and a running Pod (shims, mounts, a network namespace, a veth), says so, and
/// waits to be killed.
#[tokio::test]
async fn holds_a_node_until_killed() -> Result<()> {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return Ok(());
    }
    // With Traefik: its process is recorded in the state file like the others and must go too.
    let node =
        Node::start(NodeOptions { images: vec![probe_image()?], traefik: true, ..NodeOptions::default() }).await?;
    let client = node.control_plane().client().await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    Api::<Secret>::default_namespaced(client).create(&PostParams::default(), &probe_secret("probe")?).await?;
    let server = probe_pod("probe-server", serde_json::json!({}), &["serve", "--dir", "/certs"], Some("probe"))?;
    pods.create(&PostParams::default(), &server).await?;
    wait_for_phase(&pods, "probe-server", "Running").await?;
    println!("{HOLDING}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(node);
    bail!("the holder was not killed within 10 minutes")
}

#[tokio::test]
async fn a_node_whose_test_process_was_killed_is_cleaned_up_by_the_next_start() -> Result<()> {
    if std::env::var_os(HOLDER_ENV).is_some() {
        return Ok(());
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED a_node_whose_test_process_was_killed_is_cleaned_up_by_the_next_start: {reason}");
        return Ok(());
    }
    // What the host looks like without a node: another test process on the machine may hold one now (it
    // turns ip_forward on while it runs), so wait for it to finish before taking the host's picture.
    let waiting = Instant::now();
    while node_is_running() && waiting.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ip_forward_before = host::read_sysctl("net.ipv4.ip_forward")?;
    let host_dirs_before = host_dirs_present();
    let mut holder = tokio::process::Command::new(std::env::current_exe()?)
        .args(["holds_a_node_until_killed", "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = holder.stdout.take().context("the holder's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let held = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await? {
            // The harness wrote `test holds_a_node_until_killed ... ` on the same line.
            if line.trim_end().ends_with(HOLDING) {
                return Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await
    .context("the holder did not start its node within 180 s")??;
    if !held {
        bail!("the holder exited before holding a node: {:?}", holder.wait().await?);
    }
    holder.start_kill()?;
    holder.wait().await?;

    let left = node_leftovers();
    eprintln!("after kill -9 of the holder: {left:#?}");
    assert!(left.iter().any(|l| l.starts_with("process")), "the Pod's shim outlives the holder: {left:?}");
    assert!(left.iter().any(|l| l.starts_with("mount")), "the Pod's mounts outlive the holder: {left:?}");
    assert!(left.iter().any(|l| l.starts_with("interface")), "the bridge outlives the holder: {left:?}");

    let started = Instant::now();
    let node = Node::start(NodeOptions::default()).await?;
    eprintln!("the next start (cleanup included) took {:.1}s", started.elapsed().as_secs_f64());
    let problems = node.stop();
    assert!(problems.is_empty(), "the teardown reported {problems:?}");
    let left = node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    assert_eq!(host::read_sysctl("net.ipv4.ip_forward")?, ip_forward_before, "ip_forward restored");
    assert_eq!(host_dirs_present(), host_dirs_before, "host directories as before");
    Ok(())
}
