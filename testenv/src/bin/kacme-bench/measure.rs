//! What the benchmark observes: when each Certificate became Ready, the operator's memory and CPU time over
//! time, and the requests it made (apiserver audit log, the CA's log, the operator's own /metrics).

use crate::args::OperatorKind;
use crate::env::key_of;
use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kacme_testenv::{
    ApiRequest, AuditReader, Pebble, ProcessSample, acme_request_counts, cert_manager_acme_request_counts,
    sample_process,
};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt as _, watcher};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When each Certificate was first seen issued and Ready, fed by a watch of all Certificates.
#[derive(Clone, Default)]
pub struct ReadyTimes {
    inner: Arc<Mutex<HashMap<String, Instant>>>,
}

impl ReadyTimes {
    /// Watches every Certificate of the operator until dropped (the task is aborted with the returned handle).
    pub fn watch(client: Client, kind: OperatorKind) -> (ReadyTimes, tokio::task::JoinHandle<()>) {
        ReadyTimes::watch_where(client, kind, kind.certificate_ready())
    }

    /// The same for another state than Ready: when each Certificate was first seen in a state `seen` tells.
    pub fn watch_where(
        client: Client,
        kind: OperatorKind,
        seen: fn(&DynamicObject) -> bool,
    ) -> (ReadyTimes, tokio::task::JoinHandle<()>) {
        let times = ReadyTimes::default();
        let recorder = times.clone();
        let api: Api<DynamicObject> = Api::all_with(client, &kind.certificate_resource());
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(object) = event
                    && seen(&object)
                    && let Ok(mut times) = recorder.inner.lock()
                {
                    times.entry(key_of(&object)).or_insert_with(Instant::now);
                }
            }
        });
        (times, task)
    }

    pub fn count(&self) -> usize {
        self.inner.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn get(&self, key: &str) -> Option<Instant> {
        self.inner.lock().ok()?.get(key).copied()
    }
}

/// One point of the timeline.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TimelinePoint {
    /// Seconds since the timeline started.
    pub t: f64,
    pub rss_kib: u64,
    pub cpu_seconds: f64,
    pub ready: usize,
}

/// Samples the operator every `interval` until stopped.
pub struct Sampler {
    points: Arc<Mutex<Vec<TimelinePoint>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, origin: Instant, interval: Duration, ready: ReadyTimes) -> Sampler {
        let points = Arc::new(Mutex::new(Vec::new()));
        let sink = points.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                let Ok(sample) = sample_process(pid) else { break };
                let point = TimelinePoint {
                    t: origin.elapsed().as_secs_f64(),
                    rss_kib: sample.rss_kib,
                    cpu_seconds: sample.cpu_seconds,
                    ready: ready.count(),
                };
                if let Ok(mut points) = sink.lock() {
                    points.push(point);
                }
            }
        });
        Sampler { points, task }
    }

    pub fn points(&self) -> Vec<TimelinePoint> {
        self.points.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The samples taken at or after `t` seconds.
    pub fn points_since(&self, t: f64) -> Vec<TimelinePoint> {
        self.points().into_iter().filter(|p| p.t >= t).collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts of requests at one moment, to subtract from a later one.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// The CA's count, by `METHOD /path` (Pebble's log).
    pub ca_requests: Option<BTreeMap<String, u64>>,
    /// The operator's own count: kacme's by `action outcome` (`kacme_acme_requests_total`), cert-manager's by
    /// `action status` (`certmanager_http_acme_client_request_count`).
    pub metrics_requests: Option<BTreeMap<String, u64>>,
    pub process: Option<ProcessSample>,
}

impl Counts {
    pub async fn take(
        pebble: Option<&Pebble>,
        metrics: Option<SocketAddr>,
        kind: OperatorKind,
        pid: u32,
    ) -> Result<Counts> {
        let ca_requests = match pebble {
            Some(pebble) => Some(pebble.request_counts()?),
            None => None,
        };
        let metrics_requests = match metrics {
            Some(addr) => Some(scrape_acme_requests(addr, kind).await?),
            None => None,
        };
        Ok(Counts { ca_requests, metrics_requests, process: sample_process(pid).ok() })
    }
}

/// The operator's requests among the audit log's new lines.
pub fn operator_requests(audit: &mut AuditReader, kind: OperatorKind) -> Result<Vec<ApiRequest>> {
    Ok(audit.read_new()?.into_iter().filter(|r| r.user == kind.user()).collect())
}

/// The operator's count of its ACME requests, from its /metrics (see [`Counts::metrics_requests`]).
pub async fn scrape_acme_requests(addr: SocketAddr, kind: OperatorKind) -> Result<BTreeMap<String, u64>> {
    let client: HttpClient<_, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri: hyper::Uri = format!("http://{addr}/metrics").parse()?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .context("GET /metrics: no answer within 10s")?
        .context("GET /metrics")?;
    if !response.status().is_success() {
        bail!("GET /metrics: HTTP {}", response.status());
    }
    let body = response.into_body().collect().await?.to_bytes();
    let exposition = String::from_utf8_lossy(&body);
    Ok(match kind {
        OperatorKind::Kacme => acme_request_counts(&exposition),
        OperatorKind::CertManager => cert_manager_acme_request_counts(&exposition),
    })
}
