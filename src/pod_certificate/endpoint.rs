//! The operator's side of per-Pod certificates: `POST /pod-certificate` on the webhook's HTTPS server.
//!
//! The agent first GETs the names its Pod may have (`{"names": [...]}`: the Pod's annotation with its name,
//! namespace, addresses and the Services selecting it put in), then sends `{"csr": "<PEM>"}` for exactly those,
//! each time with its projected token as a bearer token. Each request is checked
//! afresh (TokenReview, the Pod as the apiserver has it, its names, the CSR, the issuer's policy); then the
//! order runs in the background and the agent asks again with the same CSR: `202` while it runs, `200` with
//! the chain once issued, an error with the reason once it failed (the next request starts over).
//!
//! State is a small in-memory map by (Pod UID, CSR digest): after a restart, or on another replica, the
//! agent's next request simply starts a new order. Entries are dropped after [`KEEP_RESULTS`].

use super::csr::{CheckedCsr, check_csr, csr_der_from_pem};
use super::identity::{IdentityRefusal, bound_pod, check_pod_is_bound};
use super::names::{PodFacts, PodNames, SERVICE_NAMES, expand_names, selecting_services};
use super::sidecar::{AGENT_PATH, PodRequest, parse_pod_request};
use super::solver::PodSolver;
use crate::acme::{AdvanceOptions, IssueOptions, OrderOptions, OrderSession, issue_with_csr};
use crate::api::{Certificate, IssuerKind, KeyUsage};
use crate::automatic::certificate::{build_certificate, spec_from_annotations};
use crate::controller::{Context, ControllerConfig, Observers, Stores};
use crate::controller::{IssuerInfo, ensure_account};
use crate::issuer_policy::{PolicyRefusal, check_certificate_policy};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a finished request's answer is kept for the agent to collect.
pub const KEEP_RESULTS: Duration = Duration::from_secs(600);
/// Orders in flight (and answers kept) at most, over all Pods.
const MAX_ENTRIES: usize = 1024;
/// The longest body accepted.
const MAX_BODY: usize = 256 * 1024;
/// How long one Pod's order may take before it fails.
const ISSUE_DEADLINE: Duration = Duration::from_secs(300);

/// What the agent sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRequest {
    /// The CSR, PEM.
    pub csr: String,
}

/// What the agent gets back (every status code carries one).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentResponse {
    /// `issued`, `pending`, `refused`, or `names` (the answer to a GET).
    pub status: String,
    /// The chain, leaf first (PEM), when issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The issuer's CA bundle for `ca.crt` (PEM), when issued and known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The names the Pod may have now (the answer to a GET): DNS names, then IP addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Why pending or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug)]
enum State {
    Issuing,
    Issued { certificate: String, ca: Option<String> },
    Failed(String),
}

#[derive(Clone, Debug)]
struct Entry {
    state: State,
    since: Instant,
}

/// How agents run: their image and the audience of their tokens (from the operator's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRun {
    /// The agent's image: the operator's own.
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The audience of the projected token that the endpoint accepts.
    pub audience: String,
}

/// The namespaces whose Pods may ask: those the webhook serves (as for workload certificates).
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceScope {
    /// The webhook's namespace selector.
    pub selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    /// Namespaces never served (kacme's own, kube-system).
    pub excluded: Vec<String>,
}

/// The endpoint's state and what it needs to issue.
pub struct PodCertificates {
    ctx: Arc<Context>,
    agent: AgentRun,
    scope: NamespaceScope,
    /// Orders running at once (`--concurrency`, like the Certificate reconciler's workers): a scale-up of many
    /// replicas queues here rather than flooding the CA and the cluster with solver objects.
    orders: Arc<tokio::sync::Semaphore>,
    /// By (Pod UID, hex SHA-256 of the CSR).
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl std::fmt::Debug for PodCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCertificates").field("agent", &self.agent).finish_non_exhaustive()
    }
}

/// A refusal as the agent sees it.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

impl From<IdentityRefusal> for Refusal {
    fn from(refusal: IdentityRefusal) -> Refusal {
        let status = match refusal {
            IdentityRefusal::NotAuthenticated { .. } => StatusCode::UNAUTHORIZED,
            IdentityRefusal::NotThePod(_) => StatusCode::FORBIDDEN,
        };
        Refusal::new(status, refusal.to_string())
    }
}

/// What a checked request asks to be issued.
struct Checked {
    pod: Pod,
    request: PodRequest,
    names: PodNames,
    csr: CheckedCsr,
    certificate: Certificate,
}

impl PodCertificates {
    /// The endpoint, issuing with `config`'s rules through `client`, for agents that run as `agent` says.
    /// Only Pods in namespaces of `scope` may ask.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        observers: Observers,
        agent: AgentRun,
        scope: NamespaceScope,
    ) -> PodCertificates {
        PodCertificates {
            orders: Arc::new(tokio::sync::Semaphore::new(usize::from(config.concurrency.max(1)))),
            ctx: Arc::new(Context::new(client, config, observers, Stores::empty())),
            agent,
            scope,
            entries: Mutex::default(),
        }
    }

    /// Whether the webhook serves `namespace` (read now: a namespace that leaves the selection stops at once).
    async fn check_namespace(&self, namespace: &str) -> Result<(), Refusal> {
        use kube::core::{Selector, SelectorExt};
        let outside = || {
            Refusal::new(
                StatusCode::FORBIDDEN,
                format!("namespace {namespace} is not one whose Pods kacme serves (the webhook's namespace selector)"),
            )
        };
        if self.scope.excluded.iter().any(|n| n == namespace) {
            return Err(outside());
        }
        let selector = Selector::try_from(self.scope.selector.clone())
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("the namespace selector: {e}")))?;
        let labels = self.ctx.namespace_labels(namespace).await.map_err(|e| {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("reading namespace {namespace}: {e}"))
        })?;
        if selector.matches(&labels) { Ok(()) } else { Err(outside()) }
    }

    /// How agents run.
    pub fn agent(&self) -> &AgentRun {
        &self.agent
    }

    /// Answers one HTTP request for [`AGENT_PATH`].
    pub async fn respond(self: &Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.answer(request).await {
            Ok((status, body)) => json_response(status, &body),
            Err(refusal) => {
                tracing::info!(status = refusal.status.as_u16(), message = %refusal.message, "pod certificate request refused");
                json_response(
                    refusal.status,
                    &AgentResponse { status: "refused".into(), message: Some(refusal.message), ..Default::default() },
                )
            }
        }
    }

    async fn answer(self: &Arc<Self>, request: Request<Incoming>) -> Result<(StatusCode, AgentResponse), Refusal> {
        if request.uri().path() != AGENT_PATH {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "not found"));
        }
        if request.method() != Method::POST && request.method() != Method::GET {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET the Pod's names, or POST {\"csr\": \"<PEM>\"}",
            ));
        }
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::new(StatusCode::UNAUTHORIZED, "no bearer token (the Pod's projected token)"))?;
        if request.method() == Method::GET {
            let pod = self.identify(&token).await?;
            let (_, _, names) = self.permitted_names(&pod).await?;
            let names = names.dns_names.iter().cloned().chain(names.ip_addresses.iter().map(ToString::to_string));
            let body = AgentResponse { status: "names".into(), names: Some(names.collect()), ..Default::default() };
            return Ok((StatusCode::OK, body));
        }
        let body = Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
            .to_bytes();
        let body: AgentRequest = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("expected {{\"csr\": \"<PEM>\"}}: {e}")))?;
        let pod = self.identify(&token).await?;
        match self.check_request(pod.clone(), &body.csr).await {
            Ok(checked) => Ok(self.issue_or_report(checked)),
            Err(refusal) => {
                // The Pod's owner sees why in `kubectl describe pod` (the agent logs it too).
                if matches!(refusal.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN) {
                    self.publish(&pod, true, "CertificateRefused", refusal.message.clone()).await;
                }
                Err(refusal)
            }
        }
    }

    /// An Event about `pod` (reporting action `PodCertificate`).
    async fn publish(&self, pod: &Pod, warning: bool, reason: &str, message: String) {
        let regarding = kube::Resource::object_ref(pod, &());
        self.ctx.events.publish_to(&regarding, "PodCertificate", warning, reason, message).await;
    }

    /// The Pod the bearer token speaks for: a TokenReview for kacme's audience, then the very Pod it is bound to.
    async fn identify(&self, token: &str) -> Result<Pod, Refusal> {
        let client = &self.ctx.client;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.agent.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed =
            Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await.map_err(|e| {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("the token could not be reviewed: {e}"))
            })?;
        let bound = bound_pod(&reviewed.status.unwrap_or_default(), &self.agent.audience)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &bound.namespace);
        let pod = pods
            .get_opt(&bound.pod_name)
            .await
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("reading the Pod: {e}")))?
            .ok_or_else(|| {
                IdentityRefusal::NotThePod(format!("Pod {}/{} does not exist", bound.namespace, bound.pod_name))
            })?;
        check_pod_is_bound(&pod, &bound)?;
        Ok(pod)
    }

    /// Everything else that decides whether this Pod may have this CSR signed, from scratch.
    async fn check_request(&self, pod: Pod, csr_pem: &str) -> Result<Checked, Refusal> {
        let client = &self.ctx.client;
        let forbidden = |message: String| Refusal::new(StatusCode::FORBIDDEN, message);
        let (request, facts, names) = self.permitted_names(&pod).await?;
        let der = csr_der_from_pem(csr_pem).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.0))?;
        let csr = check_csr(&der, &names).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.0))?;
        let certificate = pod_certificate(&facts, &request, &names);
        check_certificate_policy(client, &certificate).await.map_err(|refusal| match refusal {
            PolicyRefusal::NotPermitted(message) => forbidden(message),
            unchecked @ PolicyRefusal::Unchecked(_) => {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, unchecked.to_string())
            }
        })?;
        Ok(Checked { pod, request, names, csr, certificate })
    }

    /// What the Pod asks for and the names it may have now: its namespace served, its annotations, its facts
    /// (addresses, the Services that select it) as the apiserver has them.
    async fn permitted_names(&self, pod: &Pod) -> Result<(PodRequest, PodFacts, PodNames), Refusal> {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        self.check_namespace(&namespace).await?;
        let forbidden = |message: String| Refusal::new(StatusCode::FORBIDDEN, message);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let request =
            parse_pod_request(&annotations)
                .map_err(|e| forbidden(format!("Pod {namespace}/{name}: {e}")))?
                .ok_or_else(|| forbidden(format!("Pod {namespace}/{name} does not ask for per-Pod certificates")))?;
        let services = if request.names.contains(SERVICE_NAMES) {
            let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &namespace);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("listing Services: {e}")))?;
            selecting_services(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()), &list.items)
        } else {
            Vec::new()
        };
        let facts = pod_facts(pod, services);
        let names = expand_names(&request.names, &facts).map_err(|e| forbidden(format!("kacme.dev/names: {}", e.0)))?;
        if names.is_empty() {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "the Pod has no names yet (no IP address, no Service selecting it): retry",
            ));
        }
        Ok((request, facts, names))
    }

    /// The answer for a checked request: the result kept for it, or a new order started in the background.
    fn issue_or_report(self: &Arc<Self>, checked: Checked) -> (StatusCode, AgentResponse) {
        let uid = checked.pod.metadata.uid.clone().unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &checked.csr.der);
        let key = (uid.clone(), digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>());
        let pending = |message: &str| AgentResponse {
            status: "pending".into(),
            message: Some(message.into()),
            ..Default::default()
        };
        let Ok(mut entries) = self.entries.lock() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, pending("internal error: retry"));
        };
        // An order ends within ISSUE_DEADLINE (plus a minute), well before KEEP_RESULTS: nothing stays forever.
        entries.retain(|_, entry| entry.since.elapsed() < KEEP_RESULTS);
        match entries.get(&key).map(|e| e.state.clone()) {
            Some(State::Issuing) => return (StatusCode::ACCEPTED, pending("the certificate is being issued")),
            Some(State::Issued { certificate, ca }) => {
                let body =
                    AgentResponse { status: "issued".into(), certificate: Some(certificate), ca, ..Default::default() };
                return (StatusCode::OK, body);
            }
            Some(State::Failed(message)) => {
                entries.remove(&key);
                let body = AgentResponse { status: "refused".into(), message: Some(message), ..Default::default() };
                return (StatusCode::BAD_GATEWAY, body);
            }
            None => {}
        }
        if entries.iter().any(|((pod, _), e)| pod == &uid && matches!(e.state, State::Issuing)) {
            let body = AgentResponse {
                status: "refused".into(),
                message: Some("another CSR of this Pod is being issued; retry when it is done".into()),
                ..Default::default()
            };
            return (StatusCode::CONFLICT, body);
        }
        if entries.len() >= MAX_ENTRIES {
            return (StatusCode::SERVICE_UNAVAILABLE, pending("too many certificates in flight: retry"));
        }
        entries.insert(key.clone(), Entry { state: State::Issuing, since: Instant::now() });
        drop(entries);
        let this = self.clone();
        tokio::spawn(async move {
            let namespace = checked.pod.namespace().unwrap_or_default();
            let name = checked.pod.name_any();
            // Waiting for a turn counts against the deadline: the agent starts over after a failure anyway.
            let turn_and_order = async {
                let _turn = this.orders.acquire().await.map_err(|e| e.to_string())?;
                issue_for_pod(&this.ctx, &checked).await
            };
            let issued = tokio::time::timeout(ISSUE_DEADLINE + Duration::from_secs(60), turn_and_order)
                .await
                .unwrap_or_else(|_| Err(format!("no certificate within {ISSUE_DEADLINE:?}")));
            let state = match issued {
                Ok((certificate, ca)) => {
                    tracing::info!(%namespace, pod = %name, "issued a per-Pod certificate");
                    let names = checked.names.dns_names.iter().cloned();
                    let names: Vec<String> =
                        names.chain(checked.names.ip_addresses.iter().map(ToString::to_string)).collect();
                    let message = format!("Issued the Pod's certificate for {}", names.join(", "));
                    this.publish(&checked.pod, false, "CertificateIssued", message).await;
                    State::Issued { certificate, ca }
                }
                Err(message) => {
                    tracing::warn!(%namespace, pod = %name, %message, "per-Pod certificate not issued");
                    this.publish(&checked.pod, true, "CertificateFailed", format!("No certificate: {message}")).await;
                    State::Failed(message)
                }
            };
            if let Ok(mut entries) = this.entries.lock() {
                entries.insert(key, Entry { state, since: Instant::now() });
            }
        });
        (StatusCode::ACCEPTED, pending("the order was started"))
    }
}

fn json_response(status: StatusCode, body: &AgentResponse) -> Response<Full<Bytes>> {
    let json = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::ACCEPTED || status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::CONFLICT {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("2"));
    }
    response
}

/// What the placeholders stand for, from the Pod as read and the Services that select it.
pub fn pod_facts(pod: &Pod, services: Vec<String>) -> PodFacts {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> =
        status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|ip| ip.ip.parse().ok()).collect();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    PodFacts { name: pod.name_any(), namespace: pod.namespace().unwrap_or_default(), ips, services }
}

/// The in-memory Certificate describing a Pod's request (for the policy check and the solver objects'
/// names; never written): named `kacme-pod-<pod name>`, server and client auth.
pub fn pod_certificate(facts: &PodFacts, request: &PodRequest, names: &PodNames) -> Certificate {
    let spec = spec_from_annotations(
        "",
        &request.issuance,
        names.dns_names.clone(),
        names.ip_addresses.iter().map(ToString::to_string).collect(),
        vec![KeyUsage::ServerAuth, KeyUsage::ClientAuth],
    );
    build_certificate(&facts.namespace, &format!("kacme-pod-{}", facts.name), BTreeMap::new(), None, spec)
}

/// Runs the Pod's order to its chain, checks the chain, and returns it with the `ca.crt` bundle.
async fn issue_for_pod(ctx: &Context, checked: &Checked) -> Result<(String, Option<String>), String> {
    let namespace = checked.pod.namespace().unwrap_or_default();
    let reference = &checked.request.issuance.issuer_ref;
    let issuer = match reference.kind {
        IssuerKind::Issuer => Api::<crate::api::Issuer>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&reference.name)
            .await
            .map_err(|e| format!("reading Issuer {namespace}/{}: {e}", reference.name))?
            .and_then(|i| IssuerInfo::from_issuer(&i)),
        IssuerKind::ClusterIssuer => Api::<crate::api::ClusterIssuer>::all(ctx.client.clone())
            .get_opt(&reference.name)
            .await
            .map_err(|e| format!("reading ClusterIssuer {}: {e}", reference.name))?
            .and_then(|i| IssuerInfo::from_cluster_issuer(&i, &ctx.config.cluster_resource_namespace)),
    }
    .ok_or_else(|| format!("{:?} {} not found", reference.kind, reference.name))?;
    if !issuer.ready {
        return Err(format!("{} is not Ready", issuer.describe()));
    }
    let account = ensure_account(ctx, &issuer, &issuer.account_for(&namespace)).await.map_err(|e| e.to_string())?;
    let duration = checked.request.issuance.duration.map(Duration::from);
    let options = OrderOptions {
        not_after: duration
            .filter(|_| issuer.acme.send_lifetime != Some(false))
            .map(|d| std::time::SystemTime::now() + d),
        profile: checked.request.issuance.profile.clone().or_else(|| issuer.acme.profile.clone()),
        replaces: None,
    };
    let names = &checked.names;
    // Solver objects of an earlier order of this Pod that a restart interrupted (only one order per Pod runs).
    if let Err(errors) = remove_pod_solver_objects(&ctx.client, &checked.pod, &checked.certificate).await {
        tracing::warn!(errors = ?errors, "removing leftover solver objects of the Pod failed");
    }
    let session = OrderSession::create(&account, &names.dns_names, &names.ip_addresses, &options)
        .await
        .map_err(|e| e.to_string())?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: checked.pod.name_any(),
        uid: checked.pod.metadata.uid.clone().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: None,
    };
    let solver = PodSolver {
        client: ctx.client.clone(),
        certificate: &checked.certificate,
        acme: &issuer.acme,
        context: &ctx.solver_context,
        owner,
    };
    let issue_options = IssueOptions {
        advance: AdvanceOptions { self_check: ctx.config.self_check.clone(), max_wait: Duration::from_secs(2) },
        deadline: ISSUE_DEADLINE,
        bad_nonce_retries: 10,
    };
    let issued = issue_with_csr(session, &account, &checked.csr.der, &solver, &issue_options)
        .await
        .map_err(|e| e.to_string())?;
    let chain = crate::pki::parse_chain(issued.chain_pem.as_bytes()).map_err(|e| format!("the CA's chain: {e}"))?;
    if chain.leaf.public_key_raw != checked.csr.public_key_raw {
        return Err("the CA issued a certificate for another key than the CSR's".into());
    }
    let mut leaf_dns: Vec<String> = chain.leaf.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let mut leaf_ips = chain.leaf.ip_addresses.clone();
    let (mut want_dns, mut want_ips) = (names.dns_names.clone(), names.ip_addresses.clone());
    leaf_dns.sort();
    leaf_ips.sort();
    want_dns.sort();
    want_ips.sort();
    if leaf_dns != want_dns || leaf_ips != want_ips {
        return Err("the CA issued a certificate whose names differ from the order's".into());
    }
    let ca = issuer.issuing_trust().ca_crt_for(&chain, jiff::Timestamp::now())?;
    Ok((issued.chain_pem, ca))
}

/// Deletes the solver Pods, Services and Ingresses of the Pod's earlier orders: those with the label of its
/// in-memory Certificate and the Pod as owner. Tries all; returns every failure.
async fn remove_pod_solver_objects(client: &Client, pod: &Pod, certificate: &Certificate) -> Result<(), Vec<String>> {
    use crate::api::names::{LABEL_CERTIFICATE, LABEL_SOLVER};
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::DeleteParams;
    let namespace = pod.namespace().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let label = crate::desired::certificate_label_value(&certificate.name_any());
    let params = ListParams::default().labels(&format!("{LABEL_SOLVER},{LABEL_CERTIFICATE}={label}"));
    let owned = |meta: &kube::api::ObjectMeta| meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    let mut errors = Vec::new();
    macro_rules! sweep {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), &namespace);
            match api.list_metadata(&params).await {
                Ok(list) => {
                    for object in list.items.iter().filter(|o| owned(&o.metadata)) {
                        if let Err(e) = api.delete(&object.name_any(), &DeleteParams::background()).await
                            && !crate::kube_errors::is_not_found(&e)
                        {
                            errors.push(format!(
                                "deleting {} {}: {e}",
                                <$kind as kube::Resource>::kind(&()),
                                object.name_any()
                            ));
                        }
                    }
                }
                Err(e) => errors.push(format!("listing solver {}s: {e}", <$kind as kube::Resource>::kind(&()))),
            }
        }};
    }
    sweep!(Ingress);
    sweep!(Service);
    sweep!(Pod);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}
