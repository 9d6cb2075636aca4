//! The mutating admission webhook for workload certificates, served by the operator over TLS.
//!
//! - [`admission_response`] (pure): the answer to one AdmissionReview — untouched, patched (the Secret
//!   volume, the mounts and the `kacme.dev/workload` label, see [`crate::automatic::workload`]) or denied with a
//!   message naming the annotation. No side effects: the controller creates the Certificates from the Pods
//!   the webhook marked.
//! - [`serving`]: the serving certificate (own CA, kept in a Secret, rotated before expiry).
//! - [`configuration`]: the MutatingWebhookConfiguration whose caBundle kacme keeps current.
//! - [`run`]: all of it together; every replica serves (the Service spreads calls), independent of the
//!   leader Lease.

pub mod configuration;
pub mod serving;

use crate::api::names::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::automatic::workload::{PodAdmission, admit_pod};
use crate::http_server::ServeOptions;
use crate::issuer_policy::check_certificate_policy;
use crate::pod_certificate::endpoint::PodCertificates;
use crate::pod_certificate::sidecar::{AGENT_PATH, AgentSettings, parse_pod_request, per_pod_patch};
use configuration::{
    WEBHOOK_NAME, WEBHOOK_PATH, WebhookEndpoint, WebhookPolicy, build_webhook_configuration, current_ca_bundle,
};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serving::{ServingMaterial, ServingPlan, ServingPolicy, next_check, renew_serving_material, serving_plan};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// The field manager of the webhook configuration.
const FIELD_MANAGER: &str = "kacme-webhook";
/// Largest AdmissionReview body accepted.
const MAX_BODY: usize = 8 << 20;

/// How the webhook runs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where to listen (HTTPS).
    pub listen: SocketAddr,
    /// Where the apiserver reaches the webhook (URL or Service); the serving certificate names its host.
    pub endpoint: WebhookEndpoint,
    /// The operator's namespace: holds the serving Secret; never mutated.
    pub namespace: String,
    /// The Secret with the serving CA and certificate.
    pub secret_name: String,
    /// The MutatingWebhookConfiguration to keep current.
    pub configuration_name: String,
    /// Whether kacme owns the whole configuration (server-side applied) or only patches the caBundle of an
    /// existing one (for example one a Helm chart installed).
    pub manage_configuration: bool,
    /// Failure policy, namespace selection and timeout of a managed configuration.
    pub policy: WebhookPolicy,
    /// Lifetimes of the serving CA and certificate.
    pub serving: ServingPolicy,
    /// Per-Pod certificates (`kacme.dev/per-pod`): the endpoint agents ask, and how their sidecar runs; `None`
    /// refuses Pods that ask for them.
    pub pod_certificates: Option<Arc<PodCertificates>>,
}

/// Errors of the webhook's setup (serving errors per request are answered, not returned).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Binding the listen address failed.
    #[error("listening on {address} (--webhook-address): {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing the serving Secret failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The cause.
        source: kube::Error,
    },
    /// Making the serving certificate failed.
    #[error(transparent)]
    Serving(#[from] serving::ServingError),
    /// The serving certificate could not be loaded into TLS.
    #[error("loading the serving certificate into TLS: {0}")]
    LoadServingCertificate(String),
    /// The TLS configuration could not be built.
    #[error("configuring TLS: {0}")]
    ConfigureTls(rustls::Error),
    /// Other replicas kept rewriting the serving Secret while this one tried to.
    #[error("writing Secret {0}: it kept changing under us (other replicas writing); retrying later")]
    ServingSecretContended(String),
    /// The MutatingWebhookConfiguration could not be turned into JSON.
    #[error("serializing the MutatingWebhookConfiguration: {0}")]
    SerializeConfiguration(serde_json::Error),
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> WebhookError {
    let action = action.into();
    move |source| WebhookError::Kube { action, source }
}

/// The answer to one admission request: Pods being created in a namespace other than `excluded` are
/// admitted untouched, patched, or denied as [`admit_pod`] says; anything else is admitted untouched.
pub fn admission_response(request: &AdmissionRequest<DynamicObject>, excluded: &[String]) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let is_pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.is_none();
    let excluded_namespace = request.namespace.as_ref().is_some_and(|ns| excluded.contains(ns));
    if !is_pod_create || excluded_namespace {
        return response;
    }
    let Some(object) = &request.object else { return response };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(error) => {
            tracing::warn!(%error, "admission: the Pod could not be read; admitting it untouched");
            return response;
        }
    };
    match admit_pod(&pod) {
        PodAdmission::Untouched => response,
        PodAdmission::Deny(message) => {
            tracing::info!(namespace = request.namespace.as_deref(), %message, "admission: Pod denied");
            response.deny(message)
        }
        PodAdmission::Patch(patch) => {
            tracing::debug!(namespace = request.namespace.as_deref(), "admission: Pod patched");
            response.with_patch(patch).unwrap_or_else(|error| {
                AdmissionResponse::from(request).deny(format!("kacme: internal error building the patch: {error}"))
            })
        }
    }
}

/// The serving certificate that TLS hands out, swapped in place on rotation.
#[derive(Debug)]
struct ServingCertResolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|key| key.clone())
    }
}

fn certified_key(material: &ServingMaterial) -> Result<Arc<CertifiedKey>, WebhookError> {
    let certificates: Vec<rustls_pki_types::CertificateDer<'static>> = pem::parse_many(&material.tls_crt)
        .map_err(|e| WebhookError::LoadServingCertificate(e.to_string()))?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| rustls_pki_types::CertificateDer::from(b.into_contents()))
        .collect();
    let key = pem::parse(&material.tls_key).map_err(|e| WebhookError::LoadServingCertificate(e.to_string()))?;
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.into_contents()));
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| WebhookError::LoadServingCertificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certificates, signing_key)))
}

/// Reads the serving Secret, renews what [`serving_plan`] says, and writes it back (optimistically: when
/// another replica wrote first, its material wins).
async fn ensure_serving_material(client: &Client, config: &WebhookConfig) -> Result<ServingMaterial, WebhookError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let hosts = config.endpoint.hosts();
    for _ in 0..3 {
        let existing = secrets
            .get_opt(&config.secret_name)
            .await
            .map_err(kube_error(format!("reading Secret {}/{}", config.namespace, config.secret_name)))?;
        let material = existing.as_ref().and_then(|s| s.data.as_ref()).and_then(ServingMaterial::from_secret_data);
        let now = jiff::Timestamp::now();
        let plan = serving_plan(material.as_ref(), &hosts, now);
        if plan == ServingPlan::Keep
            && let Some(material) = material
        {
            return Ok(material);
        }
        let renewed = renew_serving_material(plan, material.as_ref(), &hosts, now, &config.serving)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(config.secret_name.clone()),
                namespace: Some(config.namespace.clone()),
                labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())].into()),
                resource_version: existing.as_ref().and_then(|s| s.resource_version()),
                ..ObjectMeta::default()
            },
            data: Some(renewed.to_secret_data()),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let written = if existing.is_some() {
            secrets.replace(&config.secret_name, &PostParams::default(), &secret).await
        } else {
            secrets.create(&PostParams::default(), &secret).await
        };
        match written {
            Ok(_) => {
                tracing::info!(?plan, secret = %config.secret_name, hosts = ?hosts, "webhook serving certificate renewed");
                return Ok(renewed);
            }
            // Another replica wrote first: read again and use (or renew) what it wrote.
            Err(e) if crate::kube_errors::is_conflict(&e) => continue,
            Err(e) => return Err(kube_error(format!("writing Secret {}/{}", config.namespace, config.secret_name))(e)),
        }
    }
    Err(WebhookError::ServingSecretContended(format!("{}/{}", config.namespace, config.secret_name)))
}

/// Makes the configuration carry `ca_bundle` (and, when kacme manages it, everything else).
async fn ensure_configuration(client: &Client, config: &WebhookConfig, ca_bundle: &str) -> Result<(), WebhookError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &config.configuration_name;
    if config.manage_configuration {
        let mut desired = build_webhook_configuration(name, &config.endpoint, ca_bundle, &config.policy);
        desired.metadata.managed_fields = None;
        let mut value = serde_json::to_value(&desired).map_err(WebhookError::SerializeConfiguration)?;
        value["apiVersion"] = "admissionregistration.k8s.io/v1".into();
        value["kind"] = "MutatingWebhookConfiguration".into();
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value))
            .await
            .map_err(kube_error(format!("applying MutatingWebhookConfiguration {name}")))?;
    } else {
        let patch = serde_json::json!({
            "webhooks": [{"name": WEBHOOK_NAME, "clientConfig": {"caBundle": base64_encode(ca_bundle)}}]
        });
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(kube_error(format!("patching the caBundle of MutatingWebhookConfiguration {name}")))?;
    }
    tracing::info!(configuration = %name, "webhook configuration carries the current CA bundle");
    Ok(())
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// Runs the webhook until `shutdown` resolves: serving certificate, HTTPS server, rotation, and the
/// configuration's caBundle. Errors of the periodic upkeep are logged and retried; only setup errors
/// (the address cannot be bound) end it.
pub async fn run(
    client: Client,
    config: WebhookConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let listener = bind(&config).await?;
    run_on(listener, client, config, shutdown).await
}

/// Binds the webhook's listen address (separately from [`run_on`], so that a bad address fails at start).
pub async fn bind(config: &WebhookConfig) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(config.listen).await.map_err(|source| WebhookError::Listen { address: config.listen, source })
}

/// [`run`] on a listener already bound.
pub async fn run_on(
    listener: TcpListener,
    client: Client,
    config: WebhookConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    tokio::pin!(shutdown);
    let mut material = loop {
        match ensure_serving_material(&client, &config).await {
            Ok(material) => break material,
            Err(error) => {
                tracing::warn!(%error, "webhook serving certificate not ready; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    };
    let resolver = Arc::new(ServingCertResolver(RwLock::new(certified_key(&material)?)));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::ConfigureTls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut excluded = config.policy.excluded_namespaces.clone();
    excluded.push(config.namespace.clone());
    let ca_bundle = Arc::new(RwLock::new(material.ca_bundle.clone()));
    let (stop_server, server_stopped) = crate::shutdown::Shutdown::new();
    tracing::info!(address = %listener.local_addr().map_err(|source| WebhookError::Listen { address: config.listen, source })?, "serving the admission webhook");
    let shared = Arc::new(Shared { excluded, config: config.clone(), ca_bundle: ca_bundle.clone() });
    let server = tokio::spawn(serve(listener, Arc::new(tls), shared, client.clone(), server_stopped));

    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let watch_config = watcher::Config::default().fields(&format!("metadata.name={}", config.configuration_name));
    let mut changes = watcher(api, watch_config).default_backoff().applied_objects().boxed();
    let mut configured = false;
    loop {
        if !configured {
            match ensure_configuration(&client, &config, &material.ca_bundle).await {
                Ok(()) => configured = true,
                Err(error) => tracing::warn!(%error, "webhook configuration not updated; retrying"),
            }
        }
        let wait = if configured { next_check(&material, jiff::Timestamp::now()) } else { Duration::from_secs(5) };
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                match ensure_serving_material(&client, &config).await {
                    Ok(current) if current != material => {
                        match certified_key(&current) {
                            Ok(key) => {
                                if let Ok(mut slot) = resolver.0.write() {
                                    *slot = key;
                                }
                                configured = configured && current.ca_bundle == material.ca_bundle;
                                if let Ok(mut bundle) = ca_bundle.write() {
                                    bundle.clone_from(&current.ca_bundle);
                                }
                                material = current;
                            }
                            Err(error) => tracing::warn!(%error, "the renewed serving certificate does not load"),
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "checking the webhook serving certificate failed"),
                }
            }
            change = changes.next() => {
                if let Some(Ok(object)) = change
                    && current_ca_bundle(&object).as_deref() != Some(material.ca_bundle.as_str())
                {
                    tracing::info!("the webhook configuration's caBundle differs from ours; restoring it");
                    configured = false;
                }
            }
            () = &mut shutdown => break,
        }
    }
    stop_server.fire();
    let _ = server.await;
    Ok(())
}

/// What every request of the webhook's server may need.
struct Shared {
    /// Namespaces whose Pods are never mutated.
    excluded: Vec<String>,
    config: WebhookConfig,
    /// The serving CA (PEM), current: per-Pod agents trust it.
    ca_bundle: Arc<RwLock<String>>,
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    client: Client,
    shutdown: crate::shutdown::Shutdown,
) {
    // The apiserver gives a webhook 10 s by default; answer (or give up) well before.
    let options = ServeOptions {
        tls: Some(tokio_rustls::TlsAcceptor::from(tls)),
        drain: Duration::from_secs(5),
        max_connections: 512,
        request_timeout: Duration::from_secs(8),
        ..ServeOptions::plain("webhook")
    };
    let handler = move |request: Request<Incoming>| {
        let shared = shared.clone();
        let client = client.clone();
        async move {
            match &shared.config.pod_certificates {
                Some(endpoint) if request.uri().path() == AGENT_PATH => endpoint.respond(request).await,
                _ => respond(request, &shared, &client).await,
            }
        }
    };
    crate::http_server::serve(listener, options, handler, shutdown.stopped()).await;
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// [`admission_response`], then, for a Pod that asks for a workload certificate, the policy of its issuer:
/// a Pod that asks for names its namespace may not have is refused here, before any Certificate exists.
async fn admit(request: &AdmissionRequest<DynamicObject>, shared: &Shared, client: &Client) -> AdmissionResponse {
    let excluded = &shared.excluded;
    if let Some(response) = per_pod_admission(request, excluded, shared, client).await {
        return response;
    }
    let response = admission_response(request, excluded);
    if !response.allowed || response.patch.is_none() {
        return response;
    }
    let Some(certificate) = workload_certificate_of(request) else { return response };
    match check_certificate_policy(client, &certificate).await {
        Ok(()) => response,
        Err(refusal) => {
            let message = format!("kacme: {refusal}");
            tracing::info!(namespace = request.namespace.as_deref(), %message, "admission: Pod denied by issuer policy");
            AdmissionResponse::from(request).deny(message)
        }
    }
}

/// The workload Certificate a Pod being created asks for, as the workload controller will build it.
fn workload_certificate_of(request: &AdmissionRequest<DynamicObject>) -> Option<crate::api::Certificate> {
    use crate::automatic::workload::{
        WorkloadIdentity, build_workload_certificate, parse_workload_request, workload_label_value, workload_name,
    };
    let pod: Pod = serde_json::to_value(request.object.as_ref()?).and_then(serde_json::from_value).ok()?;
    let workload_request = parse_workload_request(pod.metadata.annotations.as_ref()?).ok()??;
    let namespace = request.namespace.clone().or_else(|| pod.metadata.namespace.clone())?;
    let label = workload_label_value(&workload_name(&pod.metadata));
    // The identity is the controller's as the Pod names it (the policy check does not look at it).
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let identity = WorkloadIdentity {
        kind: owner.map_or_else(|| "Pod".into(), |o| o.kind.clone()),
        name: owner.map_or_else(|| label.clone(), |o| o.name.clone()),
        uid: owner.map(|o| o.uid.clone()).unwrap_or_default(),
    };
    Some(build_workload_certificate(&namespace, &label, &identity, &workload_request))
}

/// The answer for a Pod being created that asks for per-Pod certificates (`None` for any other request):
/// patched with the agent sidecar as [`per_pod_patch`] says, or denied with the reason.
async fn per_pod_admission(
    request: &AdmissionRequest<DynamicObject>,
    excluded: &[String],
    shared: &Shared,
    client: &Client,
) -> Option<AdmissionResponse> {
    let is_pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.is_none();
    if !is_pod_create || request.namespace.as_ref().is_some_and(|ns| excluded.contains(ns)) {
        return None;
    }
    let pod: Pod = serde_json::to_value(request.object.as_ref()?).and_then(serde_json::from_value).ok()?;
    let deny = |message: String| {
        tracing::info!(namespace = request.namespace.as_deref(), %message, "admission: Pod denied");
        Some(AdmissionResponse::from(request).deny(message))
    };
    let pod_request = match parse_pod_request(pod.metadata.annotations.as_ref()?) {
        Ok(None) => return None,
        Ok(Some(pod_request)) => pod_request,
        Err(error) => return deny(format!("kacme: {error}")),
    };
    let Some(endpoint) = &shared.config.pod_certificates else {
        return deny("kacme: per-Pod certificates (kacme.dev/per-pod) are not enabled in this operator".into());
    };
    let ca_bundle = shared.ca_bundle.read().map(|b| b.clone()).unwrap_or_default();
    let settings = agent_settings(&shared.config.endpoint, endpoint, ca_bundle, client).await;
    match per_pod_patch(&pod, &pod_request, &settings) {
        Ok(patch) => Some(AdmissionResponse::from(request).with_patch(patch).unwrap_or_else(|error| {
            AdmissionResponse::from(request).deny(format!("kacme: internal error building the patch: {error}"))
        })),
        Err(error) => deny(format!("kacme: {error}")),
    }
}

/// How the agent reaches this webhook's server: its URL with the agent's path, and for a Service its cluster
/// IP (read now; agents then need no cluster DNS).
async fn agent_settings(
    endpoint: &WebhookEndpoint,
    pod_certificates: &PodCertificates,
    ca_bundle: String,
    client: &Client,
) -> AgentSettings {
    let (url, connect) = match endpoint {
        WebhookEndpoint::Url(url) => {
            let authority = url.parse::<http::Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string()));
            (format!("https://{}{AGENT_PATH}", authority.unwrap_or_default()), None)
        }
        WebhookEndpoint::Service { namespace, name, port } => {
            let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), namespace);
            let read = tokio::time::timeout(Duration::from_secs(2), services.get_opt(name)).await;
            let cluster_ip = match read {
                Ok(Ok(Some(service))) => service.spec.and_then(|s| s.cluster_ip).filter(|ip| ip != "None"),
                _ => None,
            };
            let connect = cluster_ip.map(|ip| match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
                _ => format!("{ip}:{port}"),
            });
            (format!("https://{name}.{namespace}.svc:{port}{AGENT_PATH}"), connect)
        }
    };
    let agent = pod_certificates.agent();
    AgentSettings {
        image: agent.image.clone(),
        image_pull_policy: agent.image_pull_policy.clone(),
        url,
        connect,
        ca_bundle,
        audience: agent.audience.clone(),
    }
}

async fn respond(request: Request<Incoming>, shared: &Shared, client: &Client) -> Response<Full<Bytes>> {
    if request.uri().path() != WEBHOOK_PATH {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return plain(StatusCode::BAD_REQUEST, &format!("reading the body: {error}\n")),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => return plain(StatusCode::BAD_REQUEST, &format!("not an AdmissionReview: {error}\n")),
    };
    let admission: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let response = match admission {
        Ok(admission) => admit(&admission, shared, client).await,
        Err(error) => AdmissionResponse::invalid(error.to_string()),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(json) => {
            let mut reply = Response::new(Full::new(Bytes::from(json)));
            reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            reply
        }
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automatic::annotations::{ANNOTATION_ISSUER, ANNOTATION_NAMES};

    fn review(namespace: &str, operation: &str, annotations: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "web-abc-", "namespace": namespace, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "app"}]}
                },
                "dryRun": false
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn excluded() -> Vec<String> {
        vec!["kacme".into(), "kube-system".into()]
    }

    #[test]
    fn annotated_pods_are_patched_and_others_untouched() {
        let annotated = serde_json::json!({ANNOTATION_NAMES: "web.test", ANNOTATION_ISSUER: "ca"});
        let cases = [
            ("an annotated Pod", review("apps", "CREATE", annotated.clone()), true, true),
            ("a Pod without annotations", review("apps", "CREATE", serde_json::json!({})), true, false),
            ("kacme's own namespace", review("kacme", "CREATE", annotated.clone()), true, false),
            ("kube-system", review("kube-system", "CREATE", annotated.clone()), true, false),
            ("an update", review("apps", "UPDATE", annotated), true, false),
        ];
        for (case, request, allowed, patched) in cases {
            let response = admission_response(&request, &excluded());
            assert_eq!(response.allowed, allowed, "{case}");
            assert_eq!(response.patch.is_some(), patched, "{case}");
            assert_eq!(response.uid, "u-1", "{case}");
        }
    }

    #[test]
    fn bad_annotations_are_denied_with_a_message_naming_the_annotation() {
        let request =
            review("apps", "CREATE", serde_json::json!({ANNOTATION_NAMES: "not a name", ANNOTATION_ISSUER: "ca"}));
        let response = admission_response(&request, &excluded());
        assert!(!response.allowed);
        assert!(response.result.message.contains("annotation kacme.dev/names"), "{}", response.result.message);
    }
}
