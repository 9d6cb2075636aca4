//! The operator's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the reconcile loops make
//! progress: see [`crate::liveness`]; a standby, which runs none, is always live) and `/readyz` (a standby
//! waiting for the Lease, or a leader whose caches are synced).

use crate::acme::{AcmeAction, AcmeObserver, AcmeOutcome};
use crate::controller::{Caches, ControllerKind, ReconcileError, ReconcileObserver};
use crate::http_server::ServeOptions;
use crate::liveness::Progress;
use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Where the operator stands, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connecting, or setting up leader election.
    Starting,
    /// Waiting for the leader Lease: ready (it can take over at any time), but not reconciling.
    Standby,
    /// Reconciling; ready once the caches of Certificates and issuers are synced.
    Leading { caches_synced: bool },
}

/// The health of the process, updated as it starts, waits for the Lease, and leads.
#[derive(Debug)]
pub struct Health {
    role: Mutex<Role>,
    /// The progress of the reconcile loops (liveness).
    pub progress: Progress,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Progress::default())
    }
}

impl Health {
    /// A process starting up, whose loops report to `progress`.
    pub fn new(progress: Progress) -> Health {
        Health { role: Mutex::new(Role::Starting), progress }
    }

    pub fn role(&self) -> Role {
        self.role.lock().map(|r| *r).unwrap_or(Role::Starting)
    }

    pub fn set_role(&self, role: Role) {
        if let Ok(mut current) = self.role.lock() {
            *current = role;
        }
    }

    fn caches_synced(&self) {
        if let Ok(mut current) = self.role.lock()
            && let Role::Leading { .. } = *current
        {
            *current = Role::Leading { caches_synced: true };
        }
    }

    /// Whether the process is ready, and why (the body of `/readyz`).
    pub fn readiness(&self) -> (bool, &'static str) {
        match self.role() {
            Role::Starting => (false, "starting\n"),
            Role::Standby => (true, "ok: standby, waiting for the leader Lease\n"),
            Role::Leading { caches_synced: false } => (false, "leading; caches not synced yet\n"),
            Role::Leading { caches_synced: true } => (true, "ok: leading\n"),
        }
    }

    /// Whether the process is live at `now`, and why (the body of `/healthz`): not when a reconcile loop
    /// has had work in flight without finishing any for longer than the stall threshold.
    pub fn liveness(&self, now: Instant) -> (bool, String) {
        let stalls = self.progress.stalls(now);
        if stalls.is_empty() {
            return (true, "ok\n".into());
        }
        let stalls: Vec<String> = stalls.iter().map(ToString::to_string).collect();
        (false, format!("stalled: {}\n", stalls.join("; ")))
    }
}

/// Metrics and health together: the observer the controller reports to, and what the endpoints serve.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
}

impl Telemetry {
    /// Telemetry whose liveness fails when a busy loop finishes no reconcile for `stall_threshold`.
    pub fn new(stall_threshold: Duration) -> Telemetry {
        Telemetry { metrics: Metrics::default(), health: Health::new(Progress::new(stall_threshold)) }
    }

    /// Records the role in `/readyz` and in the leader gauge.
    pub fn set_role(&self, role: Role) {
        self.health.set_role(role);
        self.metrics.set_leader(matches!(role, Role::Leading { .. }));
    }
}

impl AcmeObserver for Telemetry {
    fn request_finished(&self, action: AcmeAction, outcome: AcmeOutcome, elapsed: Duration) {
        self.metrics.request_finished(action, outcome, elapsed);
    }
}

impl ReconcileObserver for Telemetry {
    fn reconcile_started(&self, controller: ControllerKind) {
        self.health.progress.started(controller, Instant::now());
    }

    fn reconcile_cancelled(&self, controller: ControllerKind) {
        self.health.progress.cancelled(controller);
    }

    fn reconcile_finished(&self, controller: ControllerKind, elapsed: Duration, error: Option<&ReconcileError>) {
        self.health.progress.finished(controller, Instant::now());
        self.metrics.reconcile_finished(controller, elapsed, error);
    }

    fn caches_synced(&self, caches: Caches) {
        self.metrics.caches_synced(caches);
        self.health.caches_synced();
    }
}

/// The answer to a request: status, content type and body.
fn respond(telemetry: &Telemetry, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => {
            let now = Instant::now();
            telemetry
                .metrics
                .set_progress(&telemetry.health.progress.snapshot(now), telemetry.health.progress.threshold());
            (StatusCode::OK, crate::metrics::CONTENT_TYPE, telemetry.metrics.encode())
        }
        "/healthz" | "/livez" => match telemetry.health.liveness(Instant::now()) {
            (true, body) => (StatusCode::OK, TEXT, body),
            (false, body) => {
                tracing::warn!(health = %body.trim_end(), "liveness check failed: the kubelet restarts a process that keeps failing it");
                (StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        },
        "/readyz" => match telemetry.health.readiness() {
            (true, body) => (StatusCode::OK, TEXT, body.into()),
            (false, body) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, body.into()),
        },
        _ => (StatusCode::NOT_FOUND, TEXT, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, shutdown: impl Future<Output = ()>) {
    let options = ServeOptions { max_connections: 64, ..ServeOptions::plain("metrics endpoint") };
    let handler = move |request: Request<Incoming>| {
        let (status, content_type, body) = respond(&telemetry, request.method(), request.uri().path());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        async move { response }
    };
    crate::http_server::serve(listener, options, handler, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_role() {
        let telemetry = Telemetry::default();
        let ready = |t: &Telemetry| respond(t, &Method::GET, "/readyz").0;
        assert_eq!(ready(&telemetry), StatusCode::SERVICE_UNAVAILABLE, "starting");
        telemetry.set_role(Role::Standby);
        assert_eq!(ready(&telemetry), StatusCode::OK, "a standby is ready to take over");
        telemetry.set_role(Role::Leading { caches_synced: false });
        assert_eq!(ready(&telemetry), StatusCode::SERVICE_UNAVAILABLE, "a leader syncing its caches");
        telemetry.health.caches_synced();
        assert_eq!(ready(&telemetry), StatusCode::OK, "a leader with synced caches");
        assert_eq!(respond(&telemetry, &Method::GET, "/healthz").0, StatusCode::OK);
        assert_eq!(respond(&telemetry, &Method::GET, "/nope").0, StatusCode::NOT_FOUND);
        assert_eq!(respond(&telemetry, &Method::POST, "/metrics").0, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn synced_caches_do_not_make_a_standby_a_leader() {
        let health = Health::default();
        health.set_role(Role::Standby);
        health.caches_synced();
        assert_eq!(health.role(), Role::Standby);
    }

    #[test]
    fn healthz_fails_while_a_loop_is_stalled_and_names_it() {
        let telemetry = Telemetry::new(Duration::from_secs(600));
        telemetry.set_role(Role::Leading { caches_synced: true });
        let t0 = Instant::now();
        assert_eq!(telemetry.health.liveness(t0), (true, "ok\n".into()), "no loop ran yet");
        telemetry.health.progress.started(ControllerKind::Certificate, t0);
        let later = t0 + Duration::from_secs(601);
        let (live, body) = telemetry.health.liveness(later);
        assert!(!live);
        assert_eq!(
            body,
            "stalled: the certificate controller has 1 reconcile(s) in flight and finished none for 601s \
             (threshold 600s)\n"
        );
        telemetry.health.progress.finished(ControllerKind::Certificate, later);
        assert_eq!(telemetry.health.liveness(later), (true, "ok\n".into()), "recovered");
    }

    #[test]
    fn healthz_answers_503_for_a_stalled_loop() {
        let telemetry = Telemetry::new(Duration::ZERO);
        telemetry.reconcile_started(ControllerKind::Issuer);
        std::thread::sleep(Duration::from_millis(5));
        let (status, _, body) = respond(&telemetry, &Method::GET, "/healthz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("the issuer controller"), "{body}");
        let (_, _, metrics) = respond(&telemetry, &Method::GET, "/metrics");
        assert!(metrics.lines().any(|l| l == "kacme_controller_stalled{controller=\"issuer\"} 1"), "{metrics}");
        assert!(metrics.lines().any(|l| l == "kacme_controller_stalled{controller=\"certificate\"} 0"), "{metrics}");
        telemetry.reconcile_finished(ControllerKind::Issuer, Duration::from_millis(5), None);
        assert_eq!(respond(&telemetry, &Method::GET, "/healthz").0, StatusCode::OK);
    }

    #[test]
    fn metrics_are_served_in_the_prometheus_text_format() {
        let telemetry = Telemetry::default();
        telemetry.set_role(Role::Leading { caches_synced: true });
        let (status, content_type, body) = respond(&telemetry, &Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.lines().any(|l| l == "kacme_leader_election_is_leader 1"), "{body}");
    }
}
