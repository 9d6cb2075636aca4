//! The renewal storm: every Certificate of the run renews within the same minute.
//!
//! Once all N are Ready, each Certificate's `renewBefore` is set so that its renewal time is one instant T
//! (`notAfter - renewBefore = T`); the operator's renewal jitter (`--renewal-jitter`, 60 s by default) is
//! then all that spreads the renewals. Its `duration` is set to twice the lifetime it has (Pebble honours
//! the order's notAfter): with the same lifetime, a renewBefore that close to it would make the renewed
//! certificate due again as soon as `T - notBefore` after its renewal, a second storm inside the first. A new Certificate is applied `--storm-new-after` after T: its
//! apply→Ready latency shows whether first issuances wait behind renewals. From T until every Certificate
//! is renewed (revision 2), the benchmark counts each second the ACME requests at the CA (Pebble's log)
//! and the operator's apiserver requests (audit log).

use crate::args::Args;
use crate::env::{self, BenchEnv, key_of};
use crate::measure::{ReadyTimes, operator_requests};
use crate::report::{ApiserverCounts, Latency};
use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use kacme_testenv::{ApiRequest, AuditReader};
use kube::ResourceExt as _;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the storm measured.
#[derive(Debug, Default, Serialize)]
pub struct StormReport {
    /// Seconds from the first renewBefore patch to T.
    pub lead_seconds: f64,
    /// Seconds the renewBefore patches took.
    pub patch_seconds: f64,
    pub renewed: usize,
    /// From T until the last Certificate was renewed.
    pub all_renewed_seconds: f64,
    /// When each renewal was seen done, in seconds after T.
    pub renewed_after_seconds: Latency,
    /// When the new Certificate was applied, in seconds after T.
    pub new_certificate_applied_after_seconds: f64,
    /// Its apply→Ready latency (None: not Ready before the storm ended).
    pub new_certificate_latency_seconds: Option<f64>,
    /// Renewals still waiting (not renewed) when the new Certificate was Ready.
    pub renewals_pending_when_new_was_ready: Option<usize>,
    /// ACME requests at the CA from T until settled (Pebble's log), by `METHOD /path`.
    pub acme_requests: BTreeMap<String, u64>,
    pub acme_requests_per_renewal: f64,
    /// New orders per renewal (1.00: no renewal ordered twice).
    pub orders_per_renewal: f64,
    pub acme_requests_per_second_mean: f64,
    pub acme_requests_per_second_max: u64,
    /// The operator's apiserver requests from T until settled.
    pub apiserver: ApiserverCounts,
    pub apiserver_requests_per_second_mean: f64,
    pub apiserver_requests_per_second_max: u64,
    /// Operator CPU seconds from T until the last renewal.
    pub operator_cpu_seconds: f64,
    /// CPU seconds of everything the benchmark runs, by command, from T until the last renewal.
    pub benchmark_cpu_seconds_by_command: BTreeMap<String, f64>,
    /// CPU seconds of other processes of the machine meanwhile.
    pub other_processes_cpu_seconds: f64,
    pub load_average_at_end: f64,
    /// Operator RSS at T and at the end (KiB), and its peak so far (VmHWM).
    pub rss_at_start_kib: u64,
    pub rss_at_end_kib: u64,
    pub rss_peak_kib: u64,
    /// One point per second from T.
    pub per_second: Vec<StormSecond>,
}

/// One second of the storm.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StormSecond {
    /// Seconds after T.
    pub t: f64,
    pub acme_requests: u64,
    pub apiserver_requests: u64,
    /// Renewed so far.
    pub renewed: usize,
}

/// Reads what a log file gained since the last call, line by line.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    fn from_end(path: &Path) -> Result<LogTail> {
        let offset = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        Ok(LogTail { path: path.to_path_buf(), offset, partial: String::new() })
    }

    /// The complete lines appended since the last call.
    fn new_lines(&mut self) -> Result<Vec<String>> {
        let mut file = std::fs::File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else { return Ok(Vec::new()) };
        let complete: String = self.partial.drain(..=end).collect();
        Ok(complete.lines().map(str::to_string).collect())
    }
}

/// `METHOD /path` of a Pebble request line (`... POST /order-plz -> calling handler()`).
fn pebble_request(line: &str) -> Option<String> {
    let before = line.strip_suffix(" -> calling handler()")?;
    let words: Vec<&str> = before.split_whitespace().collect();
    match words.as_slice() {
        [.., method, path] => Some(format!("{method} {path}")),
        _ => None,
    }
}

/// A Certificate renewed at least once: Ready, revision 2 or more, no order in flight.
fn renewed(object: &DynamicObject) -> bool {
    env::certificate_ready(object) && object.data["status"]["revision"].as_i64().unwrap_or(0) >= 2
}

/// Runs the storm over the `n` Ready Certificates of `env`; `ready` is the run's watch of Ready times (the
/// new Certificate's Ready is read from it).
pub async fn run_storm(
    env: &BenchEnv,
    args: &Args,
    audit: &mut AuditReader,
    pid: u32,
    ready: &ReadyTimes,
) -> Result<StormReport> {
    let n = args.certificates;
    let pebble = env.ca.pebble().context("the storm scenario needs Pebble")?;
    let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &env.kind.certificate_resource());
    let certificates = api.list(&ListParams::default()).await.context("listing Certificates")?.items;
    // Long enough to patch them all before T (about 150 patches per second here, more on a quiet machine).
    let lead = args.storm_lead.unwrap_or(Duration::from_secs(30) + Duration::from_millis(10 * n as u64));
    let patch_started = Instant::now();
    let renew_at = jiff::Timestamp::now() + lead;
    eprintln!("kacme-bench: storm: setting renewBefore so that all {n} renew at {renew_at} (in {lead:?})");
    let patches = certificates.iter().map(|certificate| {
        let namespace = certificate.namespace().unwrap_or_default();
        let name = certificate.name_any();
        let not_before = certificate.data["status"]["notBefore"].as_str().map(str::to_string);
        let not_after = certificate.data["status"]["notAfter"].as_str().map(str::to_string);
        let api: Api<DynamicObject> =
            Api::namespaced_with(env.client.clone(), &namespace, &env.kind.certificate_resource());
        async move {
            let not_after: jiff::Timestamp =
                not_after.with_context(|| format!("{namespace}/{name} has no notAfter"))?.parse()?;
            let not_before: jiff::Timestamp =
                not_before.with_context(|| format!("{namespace}/{name} has no notBefore"))?.parse()?;
            let before = not_after.duration_since(renew_at).as_secs().max(1);
            let lifetime_hours = not_after.duration_since(not_before).as_hours().max(1);
            let patch = serde_json::json!({"spec": {
                "renewBefore": format!("{before}s"),
                "duration": format!("{}h", 2 * lifetime_hours + 1),
            }});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patching renewBefore of {namespace}/{name}"))?;
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::stream::iter(patches)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<()>>()?;
    let patch_seconds = patch_started.elapsed().as_secs_f64();
    eprintln!("kacme-bench: storm: {} Certificates patched in {patch_seconds:.1}s", certificates.len());
    let until_t = renew_at.duration_since(jiff::Timestamp::now());
    if until_t.is_negative() {
        eprintln!("kacme-bench: WARNING: the patches took longer than the lead ({lead:?}): renewals began meanwhile");
    }
    let (renewals, renewals_task) = ReadyTimes::watch_where(env.client.clone(), env.kind, renewed);
    tokio::time::sleep(until_t.unsigned_abs()).await;

    // T: count from here.
    let origin = Instant::now();
    let _ = operator_requests(audit, env.kind)?;
    let mut pebble_log = LogTail::from_end(pebble.log_path())?;
    let cpu_at_t = (
        kacme_testenv::sample_process(pid)?,
        kacme_testenv::machine_busy_seconds()?,
        kacme_testenv::tree_cpu_seconds_by_command(std::process::id()),
    );
    let new_after = args.storm_new_after;
    let new_namespace = env.namespaces[0].clone();
    let new_certificate = env.kind.certificate(&new_namespace, n)?;
    let new_key = key_of(&new_certificate);
    let mut new_applied: Option<(Instant, f64)> = None;
    let mut pending_when_new_ready = None;
    let mut per_second = Vec::new();
    let mut requests: Vec<ApiRequest> = Vec::new();
    let mut acme: BTreeMap<String, u64> = BTreeMap::new();
    let mut all_renewed_at = None;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        env.operator()?.ensure_running()?;
        let t = origin.elapsed().as_secs_f64();
        if new_applied.is_none() && origin.elapsed() >= new_after {
            let api: Api<DynamicObject> =
                Api::namespaced_with(env.client.clone(), &new_namespace, &env.kind.certificate_resource());
            let at = Instant::now();
            api.create(&PostParams::default(), &new_certificate).await.context("creating the new Certificate")?;
            new_applied = Some((at, t));
            eprintln!("kacme-bench: storm: new Certificate {new_key} applied {t:.0}s after T");
        }
        if pending_when_new_ready.is_none() && ready.get(&new_key).is_some() {
            pending_when_new_ready = Some(n.saturating_sub(renewals.count()));
        }
        let second_requests = operator_requests(audit, env.kind)?;
        let mut second_acme = 0;
        for request in pebble_log.new_lines()?.iter().filter_map(|line| pebble_request(line)) {
            *acme.entry(request).or_insert(0) += 1;
            second_acme += 1;
        }
        per_second.push(StormSecond {
            t,
            acme_requests: second_acme,
            apiserver_requests: second_requests.len() as u64,
            renewed: renewals.count(),
        });
        requests.extend(second_requests);
        let renewed_count = renewals.count();
        if all_renewed_at.is_none() && renewed_count >= n {
            all_renewed_at = Some((origin.elapsed().as_secs_f64(), kacme_testenv::sample_process(pid)?));
        }
        let new_done = new_applied.is_some() && ready.get(&new_key).is_some();
        if let Some((at, _)) = all_renewed_at
            && new_done
            && origin.elapsed().as_secs_f64() >= at + 10.0
        {
            break;
        }
        if origin.elapsed() > args.timeout {
            bail!("storm: only {renewed_count}/{n} renewed after {:?}", args.timeout);
        }
        if per_second.len() % 10 == 0 {
            eprintln!("kacme-bench: storm: {renewed_count}/{n} renewed after {t:.0}s");
        }
    }
    renewals_task.abort();
    let (all_renewed_seconds, at_end) = all_renewed_at.context("the storm ended before all were renewed")?;
    let machine_cpu = kacme_testenv::machine_busy_seconds()? - cpu_at_t.1;
    let by_command: BTreeMap<String, f64> = kacme_testenv::tree_cpu_seconds_by_command(std::process::id())
        .into_iter()
        .map(|(command, seconds)| {
            let before = cpu_at_t.2.get(&command).copied().unwrap_or(0.0);
            (command, ((seconds - before) * 100.0).round() / 100.0)
        })
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    let benchmark_cpu: f64 = by_command.values().sum();
    let renewed_after: Vec<f64> = (0..n)
        .filter_map(|index| {
            let namespace = &env.namespaces[index % env.namespaces.len()];
            renewals.get(&format!("{namespace}/cert-{index}"))
        })
        .map(|at| at.saturating_duration_since(origin).as_secs_f64())
        .collect();
    let seconds = per_second.len().max(1) as f64;
    let acme_total: u64 = acme.values().sum();
    let orders = acme.iter().filter(|(k, _)| k.ends_with("/order-plz")).map(|(_, v)| *v).sum::<u64>();
    let (new_applied_at, new_applied_after) = new_applied.context("the new Certificate was never applied")?;
    let final_sample = kacme_testenv::sample_process(pid)?;
    Ok(StormReport {
        lead_seconds: lead.as_secs_f64(),
        patch_seconds,
        renewed: renewed_after.len(),
        all_renewed_seconds,
        renewed_after_seconds: Latency::of(&renewed_after),
        new_certificate_applied_after_seconds: new_applied_after,
        new_certificate_latency_seconds: ready
            .get(&new_key)
            .map(|at| at.saturating_duration_since(new_applied_at).as_secs_f64()),
        renewals_pending_when_new_was_ready: pending_when_new_ready,
        acme_requests_per_renewal: acme_total as f64 / n as f64,
        orders_per_renewal: orders as f64 / n as f64,
        acme_requests_per_second_mean: acme_total as f64 / seconds,
        acme_requests_per_second_max: per_second.iter().map(|s| s.acme_requests).max().unwrap_or(0),
        acme_requests: acme,
        apiserver_requests_per_second_mean: requests.len() as f64 / seconds,
        apiserver_requests_per_second_max: per_second.iter().map(|s| s.apiserver_requests).max().unwrap_or(0),
        apiserver: ApiserverCounts::of(&requests, n),
        operator_cpu_seconds: at_end.cpu_seconds - cpu_at_t.0.cpu_seconds,
        other_processes_cpu_seconds: (machine_cpu - benchmark_cpu).max(0.0),
        benchmark_cpu_seconds_by_command: by_command,
        load_average_at_end: crate::report::load_average(),
        rss_at_start_kib: cpu_at_t.0.rss_kib,
        rss_at_end_kib: final_sample.rss_kib,
        rss_peak_kib: final_sample.peak_rss_kib,
        per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pebble_request_lines_name_method_and_path() {
        let line = "Pebble 2026/11/28 12:00:01 POST /order-plz -> calling handler()";
        assert_eq!(pebble_request(line).as_deref(), Some("POST /order-plz"));
        assert_eq!(pebble_request("Pebble 2026/11/28 12:00:01 Issued certificate serial 1f"), None);
    }
}
