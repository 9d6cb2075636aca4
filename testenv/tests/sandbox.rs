//! `./sandbox` on the real node: `kacme-sandbox --node --exit-when-ready` (what `./sandbox` runs where the
//! machine can run containers, stopping once everything is shown) must install kacme with helm, get the
//! sample Certificate Ready, run the sample workload with its certificate mounted, complete a mutual-TLS
//! handshake between its Pods, and leave nothing behind.
//!
//! Needs root, `tests/env/install node` and a kacme release binary (`KACME_IMAGE_BINARY`, else
//! `target/release/kacme`); elsewhere (or with `KACME_SKIP_NODE_TESTS=1`) it prints `SKIPPED ...: reason`
//! and passes.

use anyhow::Result;
use kacme_testenv::{node_leftovers, node_tests_skip_reason};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kacme_release_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KACME_IMAGE_BINARY").map(PathBuf::from),
        Some(workspace().join("target/release/kacme")),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/kacme")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Why the sandbox cannot run on a real node here, if it cannot.
fn skip_reason() -> Option<String> {
    if let Some(reason) = node_tests_skip_reason() {
        return Some(reason);
    }
    if kacme_release_binary().is_none() {
        return Some("no kacme release binary: `cargo build --release --bin kacme` or set KACME_IMAGE_BINARY".into());
    }
    None
}

#[test]
fn the_sandbox_shows_the_sample_ready_and_its_workload_talking_mutual_tls_on_a_real_node() -> Result<()> {
    let name = "the_sandbox_shows_the_sample_ready_and_its_workload_talking_mutual_tls_on_a_real_node";
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED {name}: {reason}");
        return Ok(());
    }
    let image_binary = kacme_release_binary().expect("checked by skip_reason");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kacme-sandbox"))
        .current_dir(workspace())
        .arg("--node")
        .arg("--exit-when-ready")
        .arg("--image-binary")
        .arg(&image_binary)
        .arg("--probe")
        .arg(env!("CARGO_BIN_EXE_kacme-tls-probe"))
        .stdin(std::process::Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(output.status.success(), "kacme-sandbox --node failed ({}):\n{stderr}", output.status);
    for expected in [
        "helm install kacme charts/kacme",
        "Certificate sandbox/sample: Ready=True",
        "Certificate sandbox/web-kacme: Ready=True",
        // A solver Pod ran in a container on the node.
        "solver Pod sandbox/kacme-sample-",
        "containerd://",
        "Secret mounted at /var/run/kacme",
        "export KUBECONFIG=",
        " -n k8s.io images ls",
        "Stopped; nothing left on this machine",
    ] {
        assert!(stdout.contains(expected), "the sandbox's output has {expected:?}:\n{stdout}\n{stderr}");
    }
    let handshake =
        stdout.lines().find(|l| l.trim_start().starts_with("client=") || l.contains("]   client=")).unwrap_or_default();
    assert!(handshake.contains("client=") && handshake.contains("server="), "a handshake line:\n{stdout}");
    let left = node_leftovers();
    assert!(left.is_empty(), "left on the host: {left:?}");
    Ok(())
}
