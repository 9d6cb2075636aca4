//! The stand-in sandbox (`./sandbox --stand-in`, and where this machine cannot run containers): a control
//! plane, an ACME CA, the solver-Pod stand-in and `kacme controller` on loopback; nothing runs in containers.

use crate::{Args, render_samples, wait_for_stop_signal};
use anyhow::{Result, bail};
use kacme_testenv::{ChildProcess, ControlPlane, Pebble, PebbleOptions, SolverStandIn, StepCa, StepCaOptions, TempDir};
use std::time::{Duration, Instant};

enum Ca {
    Pebble(Pebble),
    StepCa(StepCa),
}

pub async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    println!("Starting the kacme sandbox (everything on loopback, nothing leaves this machine)...");
    let ca = match args.ca() {
        "step-ca" => Ca::StepCa(StepCa::start(StepCaOptions::default()).await?),
        _ => Ca::Pebble(Pebble::start(PebbleOptions::default()).await?),
    };
    let (directory_url, ca_bundle, http01) = match &ca {
        Ca::Pebble(p) => (p.directory_url().to_string(), p.ca_bundle_pem(), p.http01_addr()),
        Ca::StepCa(s) => (s.directory_url().to_string(), s.root_pem().to_string(), s.http01_addr()),
    };
    let control_plane = ControlPlane::start().await?;
    control_plane.install_crds(&args.crds).await?;
    control_plane.create_namespace("kacme").await?;
    let client = control_plane.client().await?;
    let _stand_in = SolverStandIn::start(client, &args.kacme, http01).await?;
    let dir = TempDir::new("sandbox")?;
    let operator_log = dir.join("kacme-controller.log");
    let mut envs = control_plane.child_env();
    envs.push(("RUST_LOG", std::ffi::OsStr::new("info")));
    let metrics = control_plane.address().socket_addr(control_plane.address().free_port()?);
    // The Pod admission webhook, which the apiserver calls at this loopback URL.
    let webhook = control_plane.address().socket_addr(control_plane.address().free_port()?);
    let operator = ChildProcess::spawn(
        "kacme-controller",
        &args.kacme,
        [
            "controller".to_string(),
            "--cluster-resource-namespace=kacme".into(),
            "--solver-image=kacme:sandbox".into(),
            format!("--metrics-address={metrics}"),
            format!("--webhook-address={webhook}"),
            format!("--webhook-url=https://{webhook}/mutate-pods"),
        ],
        &envs,
        &operator_log,
    )?;

    // Pods of the sample Deployment must find the webhook configured.
    let configured = kacme_testenv::poll_until(
        "the webhook configuration",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            Ok(match control_plane.kubectl(&["get", "mutatingwebhookconfiguration", "kacme", "-o", "name"]).await {
                Ok(_) => Ok(()),
                Err(error) => Err(error.to_string()),
            })
        },
    )
    .await;
    if let Err(error) = configured {
        bail!("{error:#}\noperator log:\n{}", operator.log_tail(40));
    }

    // Apply the samples, with the CA's URL and bundle filled in.
    for (file, rendered) in render_samples(&args.samples, dir.path(), &directory_url, &ca_bundle)? {
        control_plane.kubectl(&["apply", "-f", &rendered.display().to_string()]).await?;
        if file.file_name().is_some_and(|n| n.to_string_lossy().starts_with("00-")) {
            // The namespace first, then wait for its default ServiceAccount (Pods need it).
            control_plane.create_namespace("sandbox").await.ok();
        }
        println!("applied {}", file.display());
    }

    let applied = Instant::now();
    let waited = control_plane
        .kubectl(&["wait", "--for=condition=Ready", "certificate.kacme.dev/sample", "-n", "sandbox", "--timeout=120s"])
        .await;
    if let Err(error) = waited {
        operator.ensure_running().ok();
        bail!("the sample Certificate did not become Ready: {error:#}\noperator log:\n{}", operator.log_tail(40));
    }
    let ready_in = applied.elapsed();
    let json = control_plane.kubectl(&["get", "certificate.kacme.dev/sample", "-n", "sandbox", "-o", "json"]).await?;
    let certificate: serde_json::Value = serde_json::from_str(&json)?;
    let spec = &certificate["spec"];
    let status = &certificate["status"];
    let names: Vec<&str> = spec["dnsNames"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    let kubeconfig = control_plane.kubeconfig_path().display().to_string();
    println!();
    println!(
        "The sample Certificate is Ready ({:.2}s after apply, {:.1}s after start).",
        ready_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("  names:    {}", names.join(", "));
    println!(
        "  issuer:   Issuer sandbox/{} ({}, {directory_url})",
        spec["issuerRef"]["name"].as_str().unwrap_or("?"),
        args.ca()
    );
    println!("  notAfter: {}", status["notAfter"].as_str().unwrap_or("?"));
    println!("  renewal:  {}", status["renewalTime"].as_str().unwrap_or("?"));
    println!("  Secret:   sandbox/{} (tls.crt, tls.key, ca.crt)", spec["secretName"].as_str().unwrap_or("?"));
    println!();
    println!("Use kubectl against the sandbox (and only it):");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  export PATH=\"{}:$PATH\"", kacme_testenv::Binaries::locate()?.dir().display());
    println!("  kubectl get kcert -A");
    println!("  kubectl describe kcert sample -n sandbox");
    println!(
        "  kubectl get secret sample-tls -n sandbox -o jsonpath='{{.data.tls\\.crt}}' | base64 -d | openssl x509 -noout -text"
    );
    println!("  {} renew sample -n sandbox      # renew now", args.kacme.display());
    println!("The sample Deployment `web` is annotated for a workload certificate (config/samples/30-workload.yaml);");
    println!(
        "in the stand-in no kubelet runs it (its Pods stay Pending): `./sandbox` on a machine that can run containers does."
    );
    println!("  kubectl get pods -n sandbox -l app=web -o yaml | grep -B2 -A3 kacme   # volume, mount, label");
    println!("  kubectl get kcert web-kacme -n sandbox                                # its Certificate");
    println!("The operator's log: {}", operator_log.display());
    println!("Its metrics: http://{metrics}/metrics (and /healthz, /readyz)");
    if !args.exit_when_ready {
        println!("Press Ctrl-C to stop the sandbox (everything it started is stopped).");
    }
    tokio::select! {
        _ = async { if !args.exit_when_ready { wait_for_stop_signal().await } } => {}
        _ = async { loop { tokio::time::sleep(Duration::from_secs(1)).await; if operator.ensure_running().is_err() { break; } } } => {
            eprintln!("the operator exited:\n{}", operator.log_tail(40));
        }
    }
    println!("Stopping the sandbox...");
    drop(operator);
    Ok(())
}
