//! The benchmark's results: JSON-serialisable reports, statistics, and the short table on stdout.

use crate::measure::TimelinePoint;
use kacme_testenv::{ApiRequest, count_by, is_write_verb};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub scenario: String,
    pub ca: String,
    /// Where the solvers ran: `stand-in` (local `kacme solver` processes behind the stand-in's router) or
    /// `node` (solver Pods in containers on a real node, routed by Traefik).
    pub solvers: String,
    pub certificates: usize,
    pub namespaces: usize,
    pub rate_per_second: Option<f64>,
    /// `kacme`, or `cert-manager` (`--against cert-manager`).
    pub operator: String,
    /// The operator's binary.
    pub operator_binary: String,
    /// The kacme binary (the operator, or with cert-manager the solver processes the stand-in runs).
    pub kacme_binary: String,
    pub operator_args: Vec<String>,
    /// Seconds since the Unix epoch when the benchmark started.
    pub started_at_unix: u64,
    pub machine: Machine,
    pub runs: Vec<RunReport>,
    pub idle: Option<IdleReport>,
    pub storm: Option<crate::storm::StormReport>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_kib: u64,
    pub kernel: String,
    /// The 1-minute load average when the benchmark started: other work on the machine skews the figures.
    pub load_average_at_start: f64,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
                .unwrap_or("unknown")
                .to_string(),
            memory_total_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            load_average_at_start: load_average(),
        }
    }
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `seconds`.
    pub fn of(seconds: &[f64]) -> Latency {
        if seconds.is_empty() {
            return Latency::default();
        }
        let mut sorted = seconds.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Latency {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// One Certificate's apply→Ready latency and when (seconds after the first apply) it became Ready.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LatencyPoint {
    pub ready_at: f64,
    pub latency: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    /// Resident memory after the operator started and registered, before any Certificate.
    pub rss_before_kib: u64,
    /// The highest resident memory of the process's life (VmHWM).
    pub rss_peak_kib: u64,
    /// Resident memory once all were Ready and things settled (mean of the last seconds).
    pub rss_steady_kib: u64,
}

/// Requests counted by a key, in total and per issuance.
#[derive(Debug, Default, Serialize)]
pub struct RequestCounts {
    pub total: u64,
    pub per_issuance: f64,
    pub by_kind: BTreeMap<String, u64>,
}

impl RequestCounts {
    pub fn new(by_kind: BTreeMap<String, u64>, issuances: usize) -> RequestCounts {
        let total = by_kind.values().sum();
        RequestCounts { total, per_issuance: total as f64 / issuances.max(1) as f64, by_kind }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ApiserverCounts {
    pub total: u64,
    pub reads: u64,
    pub writes: u64,
    pub per_issuance: f64,
    pub reads_per_issuance: f64,
    pub writes_per_issuance: f64,
    /// 409 answers (conflicts, already exists).
    pub conflicts: u64,
    pub by_verb: BTreeMap<String, u64>,
    pub by_verb_and_resource: BTreeMap<String, u64>,
}

impl ApiserverCounts {
    pub fn of(requests: &[ApiRequest], issuances: usize) -> ApiserverCounts {
        let per = |n: u64| n as f64 / issuances.max(1) as f64;
        let writes = requests.iter().filter(|r| r.is_write()).count() as u64;
        let total = requests.len() as u64;
        ApiserverCounts {
            total,
            reads: total - writes,
            writes,
            per_issuance: per(total),
            reads_per_issuance: per(total - writes),
            writes_per_issuance: per(writes),
            conflicts: requests.iter().filter(|r| r.code == 409).count() as u64,
            by_verb: count_by(requests, |r| r.verb.clone()),
            by_verb_and_resource: count_by(requests, ApiRequest::verb_and_resource),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub label: String,
    pub certificates: usize,
    pub unrelated_secrets: usize,
    pub unrelated_pods: usize,
    /// From starting the operator until its ClusterIssuer was Ready.
    pub operator_start_seconds: f64,
    pub ready: usize,
    pub latency_seconds: Latency,
    /// From the first apply until the last Certificate was Ready.
    pub all_ready_seconds: f64,
    pub certificates_per_second: f64,
    pub memory: Memory,
    /// CPU time of the operator from the first apply until all were Ready.
    pub cpu_seconds_issuance: f64,
    /// CPU time of everything this benchmark runs (control plane, CA, stand-in and solvers, operator,
    /// itself) from the first apply until all were Ready.
    pub benchmark_cpu_seconds_issuance: f64,
    /// The same by command (`kacme` is the operator and the solver processes; exited solvers count under
    /// `kacme-bench`, which runs the solver stand-in).
    pub benchmark_cpu_seconds_by_command: BTreeMap<String, f64>,
    /// CPU time of every other process of the machine meanwhile: near 0 on a quiet machine.
    pub other_processes_cpu_seconds_issuance: f64,
    /// CPU time of the operator over its whole life in this run.
    pub cpu_seconds_total: f64,
    /// ACME requests as the CA counted them (Pebble's log), from the first apply until settled.
    pub acme_requests_seen_by_ca: Option<RequestCounts>,
    /// ACME requests as the operator counted them (`kacme_acme_requests_total`).
    pub acme_requests_seen_by_operator: Option<RequestCounts>,
    /// The operator's apiserver requests from its start until the first apply (caches, account).
    pub apiserver_startup: ApiserverCounts,
    /// The operator's apiserver requests from the first apply until settled.
    pub apiserver: ApiserverCounts,
    pub latencies: Vec<LatencyPoint>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Default, Serialize)]
pub struct IdleReport {
    pub duration_seconds: f64,
    pub apiserver: ApiserverCounts,
    /// Writes other than leader-election Lease renewals.
    pub writes_other_than_leases: u64,
    pub acme_requests_seen_by_ca: Option<u64>,
    pub acme_requests_seen_by_operator: Option<u64>,
    pub cpu_seconds: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn verbs_line(counts: &ApiserverCounts, issuances: usize) -> String {
    let order = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
    let mut verbs: Vec<(&String, &u64)> = counts.by_verb.iter().collect();
    verbs.sort_by_key(|(verb, _)| order.iter().position(|o| o == verb).unwrap_or(order.len()));
    verbs
        .iter()
        .map(|(verb, n)| format!("{verb} {:.2}", **n as f64 / issuances.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn writes_line(counts: &ApiserverCounts, issuances: usize) -> String {
    counts
        .by_verb_and_resource
        .iter()
        .filter(|(key, _)| key.split_whitespace().next().is_some_and(is_write_verb))
        .map(|(key, n)| format!("{key} {:.2}", *n as f64 / issuances.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The short table printed at the end.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "kacme-bench {}: {} Certificates over {} namespaces, operator {}, CA {}, solvers: {}{}",
        report.scenario,
        report.certificates,
        report.namespaces,
        report.operator,
        report.ca,
        report.solvers,
        report.rate_per_second.map(|r| format!(", created at {r}/s")).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), {:.1} GiB, Linux {}, load average {:.2} at the start; operator {}",
        m.cpus,
        m.cpu_model,
        m.memory_total_kib as f64 / 1024.0 / 1024.0,
        m.kernel,
        m.load_average_at_start,
        report.operator_binary
    );
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, value: &dyn Fn(&RunReport) -> String| {
        rows.push((name.to_string(), report.runs.iter().map(value).collect()));
    };
    row("", &|r| r.label.clone());
    row("Ready", &|r| format!("{}/{}", r.ready, r.certificates));
    row("apply→Ready p50/p90/p99/max (s)", &|r| {
        let l = r.latency_seconds;
        format!("{:.2} / {:.2} / {:.2} / {:.2}", l.p50, l.p90, l.p99, l.max)
    });
    row("all Ready after (s)", &|r| format!("{:.2}", r.all_ready_seconds));
    row("certificates per second", &|r| format!("{:.1}", r.certificates_per_second));
    row("operator RSS before/peak/steady (MiB)", &|r| {
        format!("{} / {} / {}", mib(r.memory.rss_before_kib), mib(r.memory.rss_peak_kib), mib(r.memory.rss_steady_kib))
    });
    row("operator CPU issuing (s; ms/cert)", &|r| {
        format!("{:.2}; {:.1}", r.cpu_seconds_issuance, 1000.0 * r.cpu_seconds_issuance / r.certificates.max(1) as f64)
    });
    row("CPU all of the benchmark; other processes (s)", &|r| {
        format!("{:.1}; {:.1}", r.benchmark_cpu_seconds_issuance, r.other_processes_cpu_seconds_issuance)
    });
    row("  by command (s)", &|r| {
        let mut commands: Vec<(&String, &f64)> = r.benchmark_cpu_seconds_by_command.iter().collect();
        commands.sort_by(|a, b| b.1.total_cmp(a.1));
        commands.iter().take(6).map(|(c, s)| format!("{c} {s:.1}")).collect::<Vec<_>>().join(", ")
    });
    row("ACME requests/issuance (CA; operator)", &|r| {
        let ca = r.acme_requests_seen_by_ca.as_ref().map(|c| format!("{:.2}", c.per_issuance));
        let op = r.acme_requests_seen_by_operator.as_ref().map(|c| format!("{:.2}", c.per_issuance));
        format!("{}; {}", ca.unwrap_or_else(|| "n/a".into()), op.unwrap_or_else(|| "n/a".into()))
    });
    row("apiserver requests/issuance", &|r| {
        format!(
            "{:.2} (reads {:.2}, writes {:.2})",
            r.apiserver.per_issuance, r.apiserver.reads_per_issuance, r.apiserver.writes_per_issuance
        )
    });
    row("  by verb", &|r| verbs_line(&r.apiserver, r.certificates));
    row("  writes", &|r| writes_line(&r.apiserver, r.certificates));
    let width = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
    for (name, values) in &rows {
        let _ = writeln!(out, "  {name:<width$}  {}", values.join("  |  "));
    }
    if let Some(idle) = &report.idle {
        let _ = writeln!(
            out,
            "idle for {:.0}s with {} Ready Certificates: {} apiserver requests ({} writes, {} other than Lease renewals; {}), \
             ACME requests {} (CA) / {} (operator), CPU {:.2}s, RSS {} → {} MiB",
            idle.duration_seconds,
            report.certificates,
            idle.apiserver.total,
            idle.apiserver.writes,
            idle.writes_other_than_leases,
            idle.apiserver.by_verb_and_resource.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
            idle.acme_requests_seen_by_ca.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
            idle.acme_requests_seen_by_operator.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
            idle.cpu_seconds,
            mib(idle.rss_start_kib),
            mib(idle.rss_end_kib)
        );
    }
    if let Some(storm) = &report.storm {
        let _ = writeln!(
            out,
            "renewal storm: {} renewals due at T (renewBefore patched in {:.0}s); all renewed {:.1}s after T \
             (renewed p50/p99 {:.1} / {:.1}s after T); a new Certificate applied {:.0}s after T Ready in {} \
             ({} renewals still pending then)",
            storm.renewed,
            storm.patch_seconds,
            storm.all_renewed_seconds,
            storm.renewed_after_seconds.p50,
            storm.renewed_after_seconds.p99,
            storm.new_certificate_applied_after_seconds,
            storm.new_certificate_latency_seconds.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "never".into()),
            storm.renewals_pending_when_new_was_ready.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
        );
        let _ = writeln!(
            out,
            "  ACME at the CA: {:.2} requests and {:.2} orders per renewal, {:.1}/s mean, {}/s max; apiserver \
             (operator): {:.2} per renewal (reads {:.2}, writes {:.2}), {:.1}/s mean, {}/s max",
            storm.acme_requests_per_renewal,
            storm.orders_per_renewal,
            storm.acme_requests_per_second_mean,
            storm.acme_requests_per_second_max,
            storm.apiserver.per_issuance,
            storm.apiserver.reads_per_issuance,
            storm.apiserver.writes_per_issuance,
            storm.apiserver_requests_per_second_mean,
            storm.apiserver_requests_per_second_max,
        );
        let mut commands: Vec<(&String, &f64)> = storm.benchmark_cpu_seconds_by_command.iter().collect();
        commands.sort_by(|a, b| b.1.total_cmp(a.1));
        let _ = writeln!(
            out,
            "  operator CPU {:.1}s ({:.1} ms per renewal), RSS {} → {} MiB (peak {}); CPU by command: {}; other \
             processes {:.1}s; load average {:.2} at the end",
            storm.operator_cpu_seconds,
            1000.0 * storm.operator_cpu_seconds / storm.renewed.max(1) as f64,
            mib(storm.rss_at_start_kib),
            mib(storm.rss_at_end_kib),
            mib(storm.rss_peak_kib),
            commands.iter().take(6).map(|(c, s)| format!("{c} {s:.1}")).collect::<Vec<_>>().join(", "),
            storm.other_processes_cpu_seconds,
            storm.load_average_at_end,
        );
        let _ = writeln!(out, "  apiserver by verb: {}", verbs_line(&storm.apiserver, storm.renewed.max(1)));
    }
    out
}

/// Writes other than the Lease renewals of leader election.
pub fn writes_other_than_leases(requests: &[ApiRequest]) -> u64 {
    requests.iter().filter(|r| is_write_verb(&r.verb) && r.resource != "leases").count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let latency = Latency::of(&values);
        assert_eq!((latency.p50, latency.p90, latency.p99, latency.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(latency.mean, 50.5);
        let one = Latency::of(&[0.4]);
        assert_eq!((one.p50, one.p99, one.max), (0.4, 0.4, 0.4));
        assert_eq!(Latency::of(&[]).max, 0.0);
    }
}
