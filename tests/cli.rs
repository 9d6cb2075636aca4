//! The user commands end to end: `kacme status`, `kacme inspect secret` and the `kubectl kacme` plugin, run
//! as a user would (the built binary, with the test control plane's kubeconfig) against a Certificate that
//! the operator issued from a real CA.

mod common;

use common::operator_env::{OperatorEnv, kacme_binary, user_command};
use kacme_testenv::{Binaries, PebbleOptions, TempDir};
use std::path::Path;
use std::time::Duration;

const NAMES: [&str; 2] = ["web.example.test", "api.example.test"];

/// Runs `program args` with the control plane's kubeconfig only ([`user_command`]); returns stdout, or fails
/// with stderr.
async fn run(program: &Path, args: &[&str], kubeconfig: &Path, path: Option<&Path>) -> String {
    let mut command = user_command(program, kubeconfig);
    command.args(args);
    if let Some(dir) = path {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&inherited));
        command.env("PATH", std::env::join_paths(paths).unwrap()).env("HOME", dir);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("finished within 60 s")
        .expect("ran");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {} failed ({}): {}\n{stdout}",
        program.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_inspect_tell_a_user_everything_about_a_certificate_for_two_names() {
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let names: String = NAMES.iter().map(|n| format!("  - {n}\n")).collect();
    env.apply(&format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  secretName: web-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n{names}"
    ))
    .await
    .unwrap();
    env.wait_ready("apps", "web", Duration::from_secs(60)).await.unwrap();
    let secret = env.secrets("apps").get("web-tls").await.unwrap();
    let serial = kacme::pki::parse_chain(&secret.data.unwrap()[kacme::api::names::TLS_CRT].0).unwrap().leaf.serial;
    let kubeconfig = env.control_plane.kubeconfig_path();

    // Events are written just after the status: give the last ones a moment.
    let mut text = String::new();
    for _ in 0..50 {
        text = run(&kacme_binary(), &["status", "web", "-n", "apps"], kubeconfig, None).await;
        if text.contains("Issued           Issued certificate serial") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("kacme status web -n apps:\n{text}");
    assert!(text.starts_with("Certificate apps/web: Ready\n"), "{text}");
    assert!(text.contains("  Ready    True "), "{text}");
    assert!(text.contains(&format!("  Serial:       {serial}\n")), "{text}");
    assert!(text.contains("  Names:        web.example.test, api.example.test\n"), "{text}");
    assert!(text.contains("  Checks:       tls.key matches; chain verifies to ca.crt"), "{text}");
    // An issuance's Events: the order and the outcome (the steps between are in the status).
    assert!(text.contains("OrderCreated     Created ACME order"), "{text}");
    assert!(text.contains(&format!("Issued           Issued certificate serial {serial}")), "{text}");
    assert!(!text.contains('\x1b'), "no colour when stdout is not a terminal: {text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    let json = run(&kacme_binary(), &["status", "web", "-n", "apps", "-o", "json"], kubeconfig, None).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["ready"], true);
    assert_eq!(json["secret"]["certificate"]["serial"], serial.as_str());
    assert_eq!(json["secret"]["certificate"]["dnsNames"], serde_json::json!(NAMES));
    assert!(json.get("order").is_none(), "no order in flight once Ready: {json}");
    let reasons: Vec<&str> = json["events"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        ["OrderCreated", "Issued"],
        "an issuance's Events; operator log:\n{}",
        env.operator().map(|o| o.log()).unwrap_or_default()
    );

    let inspected = run(&kacme_binary(), &["inspect", "secret", "web-tls", "-n", "apps"], kubeconfig, None).await;
    for expected in [
        "Secret apps/web-tls (kubernetes.io/tls)",
        "Names:            DNS:web.example.test, DNS:api.example.test",
        &format!("Serial:           {serial}"),
        "tls.key: matches the leaf certificate (never printed)",
        "Chain: tls.crt verifies to ca.crt",
    ] {
        assert!(inspected.contains(expected), "{expected:?} in:\n{inspected}");
    }
    assert!(!inspected.contains("PRIVATE KEY"), "{inspected}");

    // The kubectl plugin: the same binary as `kubectl-kacme` on PATH, found and run by kubectl itself.
    let plugin_dir = TempDir::new("kubectl-plugin").unwrap();
    std::os::unix::fs::symlink(kacme_binary(), plugin_dir.join("kubectl-kacme")).unwrap();
    let help = run(&plugin_dir.join("kubectl-kacme"), &["status", "--help"], kubeconfig, None).await;
    assert!(help.contains("Usage: kubectl kacme status"), "{help}");
    let kubectl = Binaries::locate().unwrap().path("kubectl").unwrap();
    let via_kubectl =
        run(&kubectl, &["kacme", "status", "web", "-n", "apps"], kubeconfig, Some(plugin_dir.path())).await;
    assert!(via_kubectl.starts_with("Certificate apps/web: Ready\n"), "{via_kubectl}");
    assert!(via_kubectl.contains(&format!("  Serial:       {serial}\n")), "{via_kubectl}");
}
