//! kacme-bench: how fast and how lean `kacme controller` issues certificates, on this machine.
//!
//! Starts a local control plane (with an apiserver audit log), an ACME CA (Pebble without validation
//! sleep, rejected nonces or authorization reuse; or step-ca), the solver-Pod stand-in and the operator as
//! a separate process under a user of its own; creates N Certificates and measures. Run it through `./bench`
//! at the repository root, which builds what it needs. See `kacme-bench --help` and BENCHMARKS.md.
//! `--against cert-manager` measures cert-manager's controller the same way, side by side.
#![forbid(unsafe_code)]

mod args;
mod env;
mod measure;
mod plot;
mod report;
mod storm;

use anyhow::{Context as _, Result, bail};
use args::{Args, OperatorKind, Scenario};
use env::{BenchEnv, OperatorFeatures};
use futures::StreamExt as _;
use kacme_testenv::{AuditReader, count_growth};
use kube::api::{Api, DynamicObject, PostParams};

use measure::{Counts, ReadyTimes, Sampler, operator_requests};
use report::{ApiserverCounts, IdleReport, Latency, LatencyPoint, Memory, Report, RequestCounts, RunReport};
use std::time::{Duration, Instant, SystemTime};

/// How long to let the operator settle after the last Certificate is Ready (trailing cleanups, Events)
/// before counting its requests and reading its steady memory.
const SETTLE: Duration = Duration::from_secs(10);
/// How long to wait after the last Ready for the solver objects to be deleted before settling anyway.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until no solver Pod, Service or Ingress of the operator (kacme's label `kacme.dev/solver`, or
/// cert-manager's `acme.cert-manager.io/http01-solver=true`) is left, at most `timeout`; how many are left.
async fn solver_objects_gone(client: &kube::Client, kind: OperatorKind, timeout: Duration) -> Result<usize> {
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{Api, ListParams};
    let solvers = match kind {
        OperatorKind::Kacme => kacme_testenv::SolverKind::Kacme,
        OperatorKind::CertManager => kacme_testenv::SolverKind::CertManager,
    };
    let params = ListParams::default().labels(&solvers.label_selector());
    let deadline = Instant::now() + timeout;
    loop {
        let left = Api::<Pod>::all(client.clone()).list_metadata(&params).await?.items.len()
            + Api::<Service>::all(client.clone()).list_metadata(&params).await?.items.len()
            + Api::<Ingress>::all(client.clone()).list_metadata(&params).await?.items.len();
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
/// How often the operator's memory and CPU time are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = args::parse(std::env::args().skip(1))? else {
        print!("{}", args::USAGE);
        return Ok(());
    };
    if !args.kacme.is_file() {
        bail!("the kacme binary {} does not exist (build it: cargo build --release)", args.kacme.display());
    }
    if args.operator == OperatorKind::Kacme && !args.crds.is_dir() {
        bail!("the CRD directory {} does not exist (run from the repository root or pass --crds)", args.crds.display());
    }
    let (features, operator_binary) = match args.operator {
        OperatorKind::Kacme => (OperatorFeatures::detect(&args.kacme)?, args.kacme.clone()),
        OperatorKind::CertManager => (OperatorFeatures { metrics_address: true }, env::cert_manager_paths(&args)?.0),
    };
    if !features.metrics_address {
        eprintln!("kacme-bench: this kacme has no --metrics-address: ACME requests are counted from the CA's log only");
    }
    // Before anything runs: how busy the machine is with other work.
    let machine = report::Machine::describe();
    let started_at_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut runs = Vec::new();
    let mut idle = None;
    let mut storm = None;
    match args.scenario {
        Scenario::Issue => runs.push(run(&args, features, false, false).await?.0),
        Scenario::Memory => {
            runs.push(run(&args, features, false, false).await?.0);
            runs.push(run(&args, features, true, false).await?.0);
        }
        Scenario::Idle | Scenario::Storm => {
            let (report, after) = run(&args, features, false, true).await?;
            runs.push(report);
            match after {
                Some(After::Idle(report)) => idle = Some(report),
                Some(After::Storm(report)) => storm = Some(*report),
                None => {}
            }
        }
    }
    let report = Report {
        tool: "kacme-bench",
        scenario: args.scenario.as_str().into(),
        ca: args.ca.as_str().into(),
        solvers: if args.node { "node".into() } else { "stand-in".into() },
        certificates: args.certificates,
        namespaces: args.namespaces,
        rate_per_second: args.rate,
        operator: args.operator.as_str().into(),
        operator_binary: operator_binary.display().to_string(),
        kacme_binary: args.kacme.display().to_string(),
        operator_args: args.operator_args.clone(),
        started_at_unix,
        machine,
        runs,
        idle,
        storm,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join(format!("{}.json", args.stem()));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = args.out.join(format!("{}.svg", args.stem()));
    let title = format!(
        "kacme-bench {}{}: {} Certificates, {} namespaces, {}{} ({} CPUs)",
        report.scenario,
        match args.operator {
            OperatorKind::Kacme => String::new(),
            OperatorKind::CertManager => " (cert-manager)".to_string(),
        },
        report.certificates,
        report.namespaces,
        report.ca,
        if args.node { ", real node" } else { "" },
        report.machine.cpus
    );
    std::fs::write(&svg_path, plot::render(&title, &report.runs))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = svg_path.with_extension("png");
    let png = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png_path)
        .arg(&svg_path)
        .status()
        .is_ok_and(|status| status.success());
    println!();
    print!("{}", report::table(&report));
    println!(
        "report: {}  plot: {}{}",
        json_path.display(),
        svg_path.display(),
        if png { format!(" and {}", png_path.display()) } else { " (install rsvg-convert for a PNG too)".into() }
    );
    Ok(())
}

/// What a run measured after all were Ready.
enum After {
    Idle(IdleReport),
    Storm(Box<storm::StormReport>),
}

/// One measured run on a fresh environment; with `noise`, unrelated Secrets and Pods exist before the
/// operator starts; with `then`, the scenario's second part follows (idle: the operator is watched for
/// `--idle-duration`; storm: all renew at once).
async fn run(args: &Args, features: OperatorFeatures, noise: bool, then: bool) -> Result<(RunReport, Option<After>)> {
    let label = if noise {
        format!("with {} Secrets + {} Pods", args.noise_secrets, args.noise_pods)
    } else if args.scenario == Scenario::Memory {
        "without unrelated objects".to_string()
    } else {
        args.scenario.as_str().to_string()
    };
    eprintln!("kacme-bench: run \"{label}\": starting the environment");
    let mut env = BenchEnv::start(args).await?;
    if noise {
        env.create_unrelated_objects(args.noise_secrets, args.noise_secret_bytes, args.noise_pods).await?;
    }
    let audit_path = env.control_plane().audit_log_path().context("the control plane has no audit log")?;
    let mut audit = AuditReader::from_end(audit_path)?;
    let operator_start = env.start_operator(args, features).await?;
    let pid = env.operator()?.pid();
    eprintln!(
        "kacme-bench: operator (pid {pid}) up and its ClusterIssuer Ready after {:.2}s",
        operator_start.as_secs_f64()
    );
    // Let the operator's caches and the first reconciles settle before measuring.
    let kind = env.kind;
    let (ready, watch_task) = ReadyTimes::watch(env.client.clone(), kind);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let startup_requests = operator_requests(&mut audit, kind)?;
    let before = Counts::take(env.ca.pebble(), env.metrics_addr, kind, pid).await?;

    let cpu_at_origin = (
        kacme_testenv::machine_busy_seconds()?,
        kacme_testenv::tree_cpu_seconds_by_command(std::process::id()),
        containers_cpu_seconds(),
    );
    let origin = Instant::now();
    let sampler = Sampler::start(pid, origin, SAMPLE_INTERVAL, ready.clone());
    let applied = create_certificates(&env, args).await?;
    eprintln!("kacme-bench: {} Certificates created in {:.2}s", applied.len(), origin.elapsed().as_secs_f64());
    let mut last_progress = Instant::now();
    while ready.count() < args.certificates {
        env.operator()?.ensure_running()?;
        if origin.elapsed() > args.timeout {
            bail!(
                "only {}/{} Certificates Ready after {:?}; operator log:\n{}",
                ready.count(),
                args.certificates,
                args.timeout,
                env.operator()?.log_tail(30)
            );
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "kacme-bench: {}/{} Ready after {:.0}s",
                ready.count(),
                args.certificates,
                origin.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_ready = origin.elapsed().as_secs_f64();
    let at_ready = kacme_testenv::sample_process(pid)?;
    let machine_cpu = kacme_testenv::machine_busy_seconds()? - cpu_at_origin.0;
    let cpu_by_command: std::collections::BTreeMap<String, f64> =
        kacme_testenv::tree_cpu_seconds_by_command(std::process::id())
            .into_iter()
            .map(|(command, seconds)| {
                let before = cpu_at_origin.1.get(&command).copied().unwrap_or(0.0);
                (command, ((seconds - before) * 100.0).round() / 100.0)
            })
            .chain(
                // On a real node the containers (solver Pods) are not the benchmark's children: count them by
                // their cgroups.
                containers_cpu_seconds()
                    .zip(cpu_at_origin.2)
                    .map(|(now, before)| (CONTAINERS.to_string(), ((now - before) * 100.0).round() / 100.0)),
            )
            .filter(|(_, seconds)| *seconds > 0.0)
            .collect();
    let benchmark_cpu: f64 = cpu_by_command.values().sum();
    let other_cpu = (machine_cpu - benchmark_cpu).max(0.0);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    if other_cpu > 0.05 * all_ready * cpus {
        eprintln!(
            "kacme-bench: WARNING: other processes used {other_cpu:.1} CPU seconds while the Certificates were issued \
             ({:.0}% of the machine): the figures are skewed; rerun on a quiet machine",
            100.0 * other_cpu / (all_ready * cpus)
        );
    }
    // Steady means after the cleanup too: with thousands issued at once, the garbage collector is still
    // deleting solver Ingresses (and the operator's caches still hold them) for a while after the last Ready.
    let leftovers = solver_objects_gone(&env.client, kind, CLEANUP_TIMEOUT).await?;
    let settle_from = origin.elapsed().as_secs_f64();
    match leftovers {
        0 => eprintln!(
            "kacme-bench: all {} Ready after {all_ready:.2}s, solver objects gone after {settle_from:.2}s; settling for {SETTLE:?}",
            args.certificates
        ),
        n => eprintln!(
            "kacme-bench: all {} Ready after {all_ready:.2}s; {n} solver objects still there after {CLEANUP_TIMEOUT:?}; settling for {SETTLE:?}",
            args.certificates
        ),
    }
    tokio::time::sleep(SETTLE).await;
    let after = Counts::take(env.ca.pebble(), env.metrics_addr, kind, pid).await?;
    let issuance_requests = operator_requests(&mut audit, kind)?;

    let mut latencies: Vec<LatencyPoint> = applied
        .iter()
        .filter_map(|(key, at)| {
            let ready_at = ready.get(key)?;
            Some(LatencyPoint {
                ready_at: ready_at.duration_since(origin).as_secs_f64(),
                latency: ready_at.saturating_duration_since(*at).as_secs_f64(),
            })
        })
        .collect();
    latencies.sort_by(|a, b| a.ready_at.total_cmp(&b.ready_at));
    let seconds: Vec<f64> = latencies.iter().map(|l| l.latency).collect();
    let settled = sampler.points_since(settle_from + SETTLE.as_secs_f64() / 2.0);
    let steady = if settled.is_empty() {
        after.process.map(|p| p.rss_kib).unwrap_or(0)
    } else {
        settled.iter().map(|p| p.rss_kib).sum::<u64>() / settled.len() as u64
    };
    let cpu_before = before.process.map(|p| p.cpu_seconds).unwrap_or(0.0);
    let n = args.certificates;
    let mut report = RunReport {
        label,
        certificates: n,
        unrelated_secrets: if noise { args.noise_secrets } else { 0 },
        unrelated_pods: if noise { args.noise_pods } else { 0 },
        operator_start_seconds: operator_start.as_secs_f64(),
        ready: ready.count(),
        latency_seconds: Latency::of(&seconds),
        all_ready_seconds: all_ready,
        certificates_per_second: n as f64 / all_ready.max(1e-9),
        memory: Memory {
            rss_before_kib: before.process.map(|p| p.rss_kib).unwrap_or(0),
            rss_peak_kib: after.process.map(|p| p.peak_rss_kib).unwrap_or(0),
            rss_steady_kib: steady,
        },
        cpu_seconds_issuance: at_ready.cpu_seconds - cpu_before,
        benchmark_cpu_seconds_issuance: benchmark_cpu,
        benchmark_cpu_seconds_by_command: cpu_by_command,
        other_processes_cpu_seconds_issuance: other_cpu,
        cpu_seconds_total: after.process.map(|p| p.cpu_seconds).unwrap_or(0.0),
        acme_requests_seen_by_ca: after
            .ca_requests
            .as_ref()
            .zip(before.ca_requests.as_ref())
            .map(|(a, b)| RequestCounts::new(count_growth(a, b), n)),
        acme_requests_seen_by_operator: after
            .metrics_requests
            .as_ref()
            .zip(before.metrics_requests.as_ref())
            .map(|(a, b)| RequestCounts::new(count_growth(a, b), n)),
        apiserver_startup: ApiserverCounts::of(&startup_requests, 1),
        apiserver: ApiserverCounts::of(&issuance_requests, n),
        latencies,
        timeline: Vec::new(),
    };

    let after = if then && args.scenario == Scenario::Storm {
        Some(After::Storm(Box::new(storm::run_storm(&env, args, &mut audit, pid, &ready).await?)))
    } else if then {
        eprintln!("kacme-bench: watching the idle operator for {:?}", args.idle_duration);
        let idle_started = Instant::now();
        while idle_started.elapsed() < args.idle_duration {
            env.operator()?.ensure_running()?;
            tokio::time::sleep(Duration::from_secs(1).min(args.idle_duration.saturating_sub(idle_started.elapsed())))
                .await;
        }
        let end = Counts::take(env.ca.pebble(), env.metrics_addr, kind, pid).await?;
        let requests = operator_requests(&mut audit, kind)?;
        let total = |a: &Option<std::collections::BTreeMap<String, u64>>,
                     b: &Option<std::collections::BTreeMap<String, u64>>| {
            a.as_ref().zip(b.as_ref()).map(|(a, b)| count_growth(a, b).values().sum::<u64>())
        };
        Some(After::Idle(IdleReport {
            duration_seconds: idle_started.elapsed().as_secs_f64(),
            writes_other_than_leases: report::writes_other_than_leases(&requests),
            apiserver: ApiserverCounts::of(&requests, n),
            acme_requests_seen_by_ca: total(&end.ca_requests, &after.ca_requests),
            acme_requests_seen_by_operator: total(&end.metrics_requests, &after.metrics_requests),
            cpu_seconds: end.process.map(|p| p.cpu_seconds).unwrap_or(0.0)
                - after.process.map(|p| p.cpu_seconds).unwrap_or(0.0),
            rss_start_kib: after.process.map(|p| p.rss_kib).unwrap_or(0),
            rss_end_kib: end.process.map(|p| p.rss_kib).unwrap_or(0),
        }))
    } else {
        None
    };
    report.timeline = sampler.points();
    drop(sampler);
    watch_task.abort();
    if let Some(operator) = env.operator.take() {
        operator.kill();
    }
    Ok((report, after))
}

/// The name under which the containers' CPU time is reported.
const CONTAINERS: &str = "containers (kubepods cgroups)";

/// The CPU time of everything in the kubelet's `kubepods` cgroups (cgroup v1 `cpuacct.usage`, or v2
/// `cpu.stat`), which keep the time of removed children: the solver Pods' containers on a real node. `None`
/// without a node.
fn containers_cpu_seconds() -> Option<f64> {
    kacme_testenv::host::cgroup_trees("kubepods").into_iter().find_map(|tree| {
        if let Ok(text) = std::fs::read_to_string(tree.join("cpuacct.usage")) {
            return text.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
        }
        let text = std::fs::read_to_string(tree.join("cpu.stat")).ok()?;
        let usec = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
        usec.trim().parse::<f64>().ok().map(|us| us / 1e6)
    })
}

/// Creates the Certificates, round-robin over the namespaces, all at once (16 requests in flight) or at
/// `--rate`; returns each one's `namespace/name` with the moment its create request was sent.
async fn create_certificates(env: &BenchEnv, args: &Args) -> Result<Vec<(String, Instant)>> {
    let api = |namespace: &str| -> Api<DynamicObject> {
        Api::namespaced_with(env.client.clone(), namespace, &env.kind.certificate_resource())
    };
    let create = |index: usize| {
        let namespace = env.namespaces[index % env.namespaces.len()].clone();
        let api = api(&namespace);
        async move {
            let certificate = env.kind.certificate(&namespace, index)?;
            let key = env::key_of(&certificate);
            let at = Instant::now();
            api.create(&PostParams::default(), &certificate).await.with_context(|| format!("creating {key}"))?;
            Ok::<_, anyhow::Error>((key, at))
        }
    };
    let started = tokio::time::Instant::now();
    let paced = |index: usize| async move {
        if let Some(rate) = args.rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(index as f64 / rate)).await;
        }
        create(index).await
    };
    // Paced creates wait for their moment in order; let enough of them wait at once.
    let in_flight = if args.rate.is_some() { 256 } else { 16 };
    futures::stream::iter((0..args.certificates).map(paced))
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}
