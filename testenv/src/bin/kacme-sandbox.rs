//! The kacme sandbox: a control plane, an ACME CA, the solver-Pod stand-in and `kacme controller` on this
//! machine (loopback only); applies config/samples with kubectl, waits for the sample Certificate, prints
//! what was issued, and stays up until Ctrl-C. Run it through `./sandbox` at the repository root.

use anyhow::{Context as _, Result, bail};
use kacme_testenv::{ChildProcess, ControlPlane, Pebble, PebbleOptions, SolverStandIn, StepCa, StepCaOptions, TempDir};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    kacme: PathBuf,
    ca: String,
    samples: PathBuf,
    crds: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        kacme: PathBuf::from("target/debug/kacme"),
        ca: "pebble".into(),
        samples: PathBuf::from("config/samples"),
        crds: PathBuf::from("crds"),
    };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kacme" => args.kacme = value()?.into(),
            "--ca" => args.ca = value()?,
            "--samples" => args.samples = value()?.into(),
            "--crds" => args.crds = value()?.into(),
            "-h" | "--help" => {
                println!("usage: kacme-sandbox [--ca pebble|step-ca] [--kacme PATH] [--samples DIR] [--crds DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.ca != "pebble" && args.ca != "step-ca" {
        bail!("--ca must be pebble or step-ca");
    }
    Ok(args)
}

enum Ca {
    Pebble(Pebble),
    StepCa(StepCa),
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    println!("Starting the kacme sandbox (everything on loopback, nothing leaves this machine)...");
    let ca = match args.ca.as_str() {
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
    let bundle: String = ca_bundle.lines().map(|l| format!("      {l}\n")).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.samples)
        .with_context(|| format!("reading {}", args.samples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        let text =
            std::fs::read_to_string(file)?.replace("${ACME_SERVER}", &directory_url).replace("${CA_BUNDLE}\n", &bundle);
        let rendered = dir.join(file.file_name().context("a file name")?);
        std::fs::write(&rendered, text)?;
        if file.file_name().is_some_and(|n| n.to_string_lossy().starts_with("00-")) {
            // The namespace first, then wait for its default ServiceAccount (Pods need it).
            control_plane.kubectl(&["apply", "-f", &rendered.display().to_string()]).await?;
            control_plane.create_namespace("sandbox").await.ok();
        } else {
            control_plane.kubectl(&["apply", "-f", &rendered.display().to_string()]).await?;
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
        args.ca
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
    println!("The sample Deployment `web` is annotated for a workload certificate (config/samples/30-workload.yaml):");
    println!("  kubectl get pods -n sandbox -l app=web -o yaml | grep -B2 -A3 kacme   # volume, mount, label");
    println!("  kubectl get kcert web-kacme -n sandbox                                # its Certificate");
    println!("The operator's log: {}", operator_log.display());
    println!("Its metrics: http://{metrics}/metrics (and /healthz, /readyz)");
    println!("Press Ctrl-C to stop the sandbox (everything it started is stopped).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = async { loop { tokio::time::sleep(Duration::from_secs(1)).await; if operator.ensure_running().is_err() { break; } } } => {
            eprintln!("the operator exited:\n{}", operator.log_tail(40));
        }
    }
    println!("Stopping the sandbox...");
    drop(operator);
    Ok(())
}
