//! The operator's Prometheus metrics: ACME requests and reconciles as they happen, and the state of every
//! Certificate, Issuer and ClusterIssuer read from the operator's caches at scrape time (so that the series
//! of a deleted object disappear with it).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kacme_certificate_expiration_timestamp_seconds` | gauge | namespace, name, issuer_name, issuer_kind |
//! | `kacme_certificate_renewal_timestamp_seconds` | gauge | namespace, name, issuer_name, issuer_kind |
//! | `kacme_certificate_ready_status` | gauge (1 for the current condition status) | namespace, name, issuer_name, issuer_kind, condition |
//! | `kacme_issuer_ready_status` | gauge | namespace, name, condition |
//! | `kacme_clusterissuer_ready_status` | gauge | name, condition |
//! | `kacme_acme_requests_total` | counter | action, outcome |
//! | `kacme_acme_request_duration_seconds` | histogram | action, outcome |
//! | `kacme_reconcile_total` | counter | controller |
//! | `kacme_reconcile_errors_total` | counter | controller, reason |
//! | `kacme_reconcile_duration_seconds` | histogram | controller |
//! | `kacme_controller_seconds_without_progress` | gauge (0 while idle) | controller |
//! | `kacme_controller_stalled` | gauge (1 while `/healthz` fails for this loop) | controller |
//! | `kacme_leader_election_is_leader` | gauge | |
//! | `kacme_build_info` | gauge (1) | version |

use crate::acme::{AcmeAction, AcmeObserver, AcmeOutcome};
use crate::api::{Certificate, ConditionType, IssuerKind};
use crate::controller::{Caches, ControllerKind, ReconcileError, ReconcileObserver};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::encode`]'s output: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The values a Ready condition's status can take, each a series of its own (as in cert-manager).
const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcmeLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileErrorLabels {
    controller: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    namespace: String,
    name: String,
    issuer_name: String,
    issuer_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateReadyLabels {
    namespace: String,
    name: String,
    issuer_name: String,
    issuer_kind: &'static str,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerReadyLabels {
    namespace: String,
    name: String,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterIssuerReadyLabels {
    name: String,
    condition: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 5 ms to about 80 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The operator's metrics. Register it as the [`AcmeObserver`] and [`ReconcileObserver`] of the
/// controller, and serve [`Metrics::encode`] at `/metrics`.
pub struct Metrics {
    registry: Registry,
    acme_requests: Family<AcmeLabels, Counter>,
    acme_request_duration: HistogramFamily<AcmeLabels>,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    leader: Gauge,
    without_progress: Family<ControllerLabels, Gauge>,
    stalled: Family<ControllerLabels, Gauge>,
    caches: Arc<RwLock<Option<Caches>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, none observed yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let acme_requests = Family::<AcmeLabels, Counter>::default();
        registry.register(
            "kacme_acme_requests",
            "ACME requests sent to CAs, by action and outcome",
            acme_requests.clone(),
        );
        let acme_request_duration: HistogramFamily<AcmeLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "kacme_acme_request_duration_seconds",
            "Latency of ACME requests, by action and outcome",
            acme_request_duration.clone(),
        );
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("kacme_reconcile", "Reconciles run, by controller", reconciles.clone());
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "kacme_reconcile_errors",
            "Reconciles that failed (and are retried), by controller and reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration: HistogramFamily<ControllerLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "kacme_reconcile_duration_seconds",
            "Duration of reconciles, by controller",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "kacme_leader_election_is_leader",
            "1 while this process holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        let without_progress = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "kacme_controller_seconds_without_progress",
            "Seconds a controller loop with reconciles in flight has finished none (0 while idle)",
            without_progress.clone(),
        );
        let stalled = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "kacme_controller_stalled",
            "1 while a controller loop has finished no reconcile for longer than the stall threshold (then \
             /healthz fails and the kubelet restarts the process), else 0",
            stalled.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("kacme_build_info", "The kacme version running (always 1)", build);
        // Every controller and error reason from 0, so that rates and alerts work before the first error.
        for controller in ControllerKind::ALL {
            let labels = ControllerLabels { controller: controller.as_str() };
            let _ = reconciles.get_or_create(&labels);
            let _ = without_progress.get_or_create(&labels);
            let _ = stalled.get_or_create(&labels);
            for reason in ReconcileError::METRIC_LABELS {
                let _ =
                    reconcile_errors.get_or_create(&ReconcileErrorLabels { controller: controller.as_str(), reason });
            }
        }
        let caches = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(ObjectCollector { caches: caches.clone() }));
        Metrics {
            registry,
            acme_requests,
            acme_request_duration,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            without_progress,
            stalled,
            caches,
        }
    }

    /// Records the progress of the controller loops (from [`crate::liveness::Progress::snapshot`]): how long
    /// each busy loop has finished no reconcile, and whether that exceeds `threshold`.
    pub fn set_progress(&self, loops: &[(ControllerKind, usize, Option<Duration>)], threshold: Duration) {
        for (controller, _, without_progress) in loops {
            let labels = ControllerLabels { controller: controller.as_str() };
            let seconds = without_progress.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.without_progress.get_or_create(&labels).set(seconds);
            let stalled = without_progress.is_some_and(|d| d > threshold);
            self.stalled.get_or_create(&labels).set(i64::from(stalled));
        }
    }

    /// Records whether this process leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Everything in the Prometheus text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        text
    }
}

impl AcmeObserver for Metrics {
    fn request_finished(&self, action: AcmeAction, outcome: AcmeOutcome, elapsed: Duration) {
        let labels = AcmeLabels { action: action.as_str(), outcome: outcome.as_str() };
        self.acme_requests.get_or_create(&labels).inc();
        self.acme_request_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

impl ReconcileObserver for Metrics {
    fn reconcile_finished(&self, controller: ControllerKind, elapsed: Duration, error: Option<&ReconcileError>) {
        let labels = ControllerLabels { controller: controller.as_str() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            let labels = ReconcileErrorLabels { controller: controller.as_str(), reason: error.metric_label() };
            self.reconcile_errors.get_or_create(&labels).inc();
        }
    }

    fn caches_synced(&self, caches: Caches) {
        if let Ok(mut slot) = self.caches.write() {
            *slot = Some(caches);
        }
    }
}

/// The per-object gauges, computed from the caches on each scrape.
struct ObjectCollector {
    caches: Arc<RwLock<Option<Caches>>>,
}

impl std::fmt::Debug for ObjectCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCollector").finish_non_exhaustive()
    }
}

/// The status of the Ready condition: "True", "False" or "Unknown" (also when absent).
fn ready_status(conditions: &[Condition]) -> &'static str {
    match conditions.iter().find(|c| c.type_ == ConditionType::Ready.as_str()).map(|c| c.status.as_str()) {
        Some("True") => "True",
        Some("False") => "False",
        _ => "Unknown",
    }
}

fn issuer_kind_label(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    }
}

fn encode_family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<L, M>,
) -> std::fmt::Result
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug,
    M: EncodeMetric + prometheus_client::metrics::TypedMetric,
{
    if family.is_empty() {
        return Ok(());
    }
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

/// The gauges of a set of Certificates.
struct CertificateGauges {
    expiration: Family<CertificateLabels, Gauge>,
    renewal: Family<CertificateLabels, Gauge>,
    ready: Family<CertificateReadyLabels, Gauge>,
}

impl CertificateGauges {
    fn of<'a>(certificates: impl IntoIterator<Item = &'a Certificate>) -> CertificateGauges {
        let gauges =
            CertificateGauges { expiration: Family::default(), renewal: Family::default(), ready: Family::default() };
        for certificate in certificates {
            let labels = CertificateLabels {
                namespace: certificate.namespace().unwrap_or_default(),
                name: certificate.name_any(),
                issuer_name: certificate.spec.issuer_ref.name.clone(),
                issuer_kind: issuer_kind_label(certificate.spec.issuer_ref.kind),
            };
            let status = certificate.status.as_ref();
            if let Some(not_after) = status.and_then(|s| s.not_after.as_ref()) {
                gauges.expiration.get_or_create(&labels).set(not_after.0.as_second());
            }
            if let Some(renewal) = status.and_then(|s| s.renewal_time.as_ref()) {
                gauges.renewal.get_or_create(&labels).set(renewal.0.as_second());
            }
            let current = ready_status(status.map(|s| s.conditions.as_slice()).unwrap_or_default());
            for condition in CONDITION_STATUSES {
                let ready = CertificateReadyLabels {
                    namespace: labels.namespace.clone(),
                    name: labels.name.clone(),
                    issuer_name: labels.issuer_name.clone(),
                    issuer_kind: labels.issuer_kind,
                    condition,
                };
                gauges.ready.get_or_create(&ready).set(i64::from(condition == current));
            }
        }
        gauges
    }
}

impl Collector for ObjectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Ok(caches) = self.caches.read() else { return Ok(()) };
        let Some(caches) = caches.as_ref() else { return Ok(()) };
        let certificates = caches.certificates.state();
        let gauges = CertificateGauges::of(certificates.iter().map(|c| c.as_ref()));
        encode_family(
            &mut encoder,
            "kacme_certificate_expiration_timestamp_seconds",
            "When the Certificate's current certificate expires (notAfter), in seconds since the Unix epoch",
            &gauges.expiration,
        )?;
        encode_family(
            &mut encoder,
            "kacme_certificate_renewal_timestamp_seconds",
            "When kacme will renew the Certificate, in seconds since the Unix epoch",
            &gauges.renewal,
        )?;
        encode_family(
            &mut encoder,
            "kacme_certificate_ready_status",
            "The status of the Certificate's Ready condition: 1 for the condition it has, else 0",
            &gauges.ready,
        )?;

        let issuers = Family::<IssuerReadyLabels, Gauge>::default();
        for issuer in caches.issuers.state() {
            let current = ready_status(issuer.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default());
            for condition in CONDITION_STATUSES {
                let labels = IssuerReadyLabels {
                    namespace: issuer.namespace().unwrap_or_default(),
                    name: issuer.name_any(),
                    condition,
                };
                issuers.get_or_create(&labels).set(i64::from(condition == current));
            }
        }
        encode_family(
            &mut encoder,
            "kacme_issuer_ready_status",
            "The status of the Issuer's Ready condition: 1 for the condition it has, else 0",
            &issuers,
        )?;

        let cluster_issuers = Family::<ClusterIssuerReadyLabels, Gauge>::default();
        for issuer in caches.cluster_issuers.state() {
            let current = ready_status(issuer.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default());
            for condition in CONDITION_STATUSES {
                let labels = ClusterIssuerReadyLabels { name: issuer.name_any(), condition };
                cluster_issuers.get_or_create(&labels).set(i64::from(condition == current));
            }
        }
        encode_family(
            &mut encoder,
            "kacme_clusterissuer_ready_status",
            "The status of the ClusterIssuer's Ready condition: 1 for the condition it has, else 0",
            &cluster_issuers,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateStatus, IssuerRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn certificate(name: &str, ready: Option<&str>, not_after: Option<i64>) -> Certificate {
        let mut certificate = crate::desired::testing::certificate();
        certificate.metadata.name = Some(name.into());
        certificate.spec.issuer_ref = IssuerRef { name: "step-ca".into(), kind: IssuerKind::ClusterIssuer };
        let when = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
        certificate.status = Some(CertificateStatus {
            conditions: ready
                .map(|status| Condition {
                    type_: "Ready".into(),
                    status: status.into(),
                    reason: "Ready".into(),
                    message: String::new(),
                    last_transition_time: when(0),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            not_after: not_after.map(when),
            renewal_time: not_after.map(|s| when(s - 100)),
            ..Default::default()
        });
        certificate
    }

    fn encoded(gauges: &CertificateGauges) -> String {
        let mut registry = Registry::default();
        registry.register("expiration", "", gauges.expiration.clone());
        registry.register("renewal", "", gauges.renewal.clone());
        registry.register("ready", "", gauges.ready.clone());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_ready_certificate_exports_its_expiry_renewal_and_ready_condition() {
        let gauges = CertificateGauges::of([&certificate("web", Some("True"), Some(2_000_000_000))]);
        let text = encoded(&gauges);
        let labels = r#"namespace="apps",name="web",issuer_name="step-ca",issuer_kind="ClusterIssuer""#;
        assert!(text.contains(&format!("expiration{{{labels}}} 2000000000")), "{text}");
        assert!(text.contains(&format!("renewal{{{labels}}} 1999999900")), "{text}");
        assert!(text.contains(&format!("ready{{{labels},condition=\"True\"}} 1")), "{text}");
        assert!(text.contains(&format!("ready{{{labels},condition=\"False\"}} 0")), "{text}");
        assert!(text.contains(&format!("ready{{{labels},condition=\"Unknown\"}} 0")), "{text}");
    }

    #[test]
    fn a_certificate_never_issued_has_no_expiry_and_an_unknown_ready_condition() {
        let gauges = CertificateGauges::of([&certificate("new", None, None)]);
        assert!(gauges.expiration.is_empty() && gauges.renewal.is_empty());
        let text = encoded(&gauges);
        assert!(text.contains(r#"condition="Unknown"} 1"#), "{text}");
        assert!(text.contains(r#"condition="True"} 0"#), "{text}");
    }

    #[test]
    fn requests_and_reconciles_are_counted_by_their_labels() {
        let metrics = Metrics::new();
        metrics.request_finished(AcmeAction::Order, AcmeOutcome::Success, Duration::from_millis(20));
        metrics.request_finished(AcmeAction::Order, AcmeOutcome::Success, Duration::from_millis(30));
        metrics.request_finished(AcmeAction::Finalize, AcmeOutcome::ClientError, Duration::from_millis(5));
        metrics.reconcile_finished(ControllerKind::Certificate, Duration::from_millis(40), None);
        let error = ReconcileError::MissingField("metadata.namespace");
        metrics.reconcile_finished(ControllerKind::Issuer, Duration::from_millis(1), Some(&error));
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            r#"kacme_acme_requests_total{action="order",outcome="success"} 2"#,
            r#"kacme_acme_requests_total{action="finalize",outcome="client_error"} 1"#,
            r#"kacme_acme_request_duration_seconds_count{action="order",outcome="success"} 2"#,
            r#"kacme_reconcile_total{controller="certificate"} 1"#,
            r#"kacme_reconcile_total{controller="issuer"} 1"#,
            r#"kacme_reconcile_errors_total{controller="issuer",reason="invalid_object"} 1"#,
            r#"kacme_reconcile_duration_seconds_count{controller="certificate"} 1"#,
            "kacme_leader_election_is_leader 1",
            "# TYPE kacme_acme_requests_total counter",
            "# TYPE kacme_reconcile_duration_seconds histogram",
            r#"kacme_reconcile_total{controller="clusterissuer"} 0"#,
            r#"kacme_reconcile_errors_total{controller="certificate",reason="kube"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"kacme_acme_request_duration_seconds_sum{action="order",outcome="success"} "#)
            })
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 0.05).abs() < 1e-9, "sum of order latencies: {sum}");
    }
}
