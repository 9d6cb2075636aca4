//! A harness that runs whole reconcile passes of the Certificate reconciler in memory: the operator's
//! [`Context`] over a [`FakeApiserver`], a [`FakeAcme`] as the CA, caches the test fills from the fake
//! apiserver as the watches would, and a stand-in for the kubelet that marks solver Pods ready.
//!
//! A test seeds objects, then drives passes one at a time ([`IssuanceHarness::pass`]) or until the
//! Certificate is Ready ([`IssuanceHarness::run_until_ready`]), injecting faults on either side between or
//! during passes. [`IssuanceHarness::restart`] plays a restarted operator: a new Context, which has lost the
//! orders in memory, the account cache and the record of its own writes.

use super::certificate::{FINALIZER, reconcile_certificate};
use super::{Context, ControllerConfig, NoReconcileObserver, Observers, ReconcileError, StoreWriters, Stores};
use crate::acme::fake::{FakeAcme, FakeChallenge, Validation};
use crate::acme::{CHALLENGE_PATH_PREFIX, CaTrust};
use crate::api::names::{
    LABEL_CERTIFICATE, LABEL_MANAGED_BY, LABEL_SOLVER, LABEL_TOKEN_HASH, MANAGED_BY, TLS_CRT, TLS_KEY,
};
use crate::api::{
    AcmeIssuer, AcmeSolver, Certificate, ClusterIssuer, Http01Solver, Issuer, IssuerSpec, IssuerStatus,
    SecretKeySelector,
};
use crate::desired::{certificate_label_value, next_key_secret_name, token_hash};
use crate::pki::{ParsedChain, PrivateKey, key_matches_certificate, parse_chain, parse_private_key};
use crate::testing::FakeApiserver;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::sync::Arc;

/// The namespace of the Certificate fixture and its Issuer.
pub(crate) const NAMESPACE: &str = "apps";
/// The Certificate fixture's name (see [`crate::desired::testing::certificate`]).
pub(crate) const CERTIFICATE: &str = "web";
/// The Certificate fixture's Secret.
pub(crate) const SECRET: &str = "web-tls";
/// The Issuer the Certificate fixture names.
pub(crate) const ISSUER: &str = "ca";
/// The Secret of the Issuer's ACME account key.
pub(crate) const ACCOUNT_KEY_SECRET: &str = "ca-account";

/// The operator's Certificate reconciler against an in-memory apiserver and CA.
pub(crate) struct IssuanceHarness {
    /// The apiserver the reconciler talks to.
    pub apiserver: FakeApiserver,
    /// The CA the Issuer points at.
    pub ca: FakeAcme,
    pub(crate) config: ControllerConfig,
    pub(crate) ctx: Arc<Context>,
    writers: StoreWriters,
}

impl IssuanceHarness {
    /// An empty apiserver, a fresh CA, and an operator with empty caches.
    pub async fn start() -> IssuanceHarness {
        let apiserver = FakeApiserver::new();
        let ca = FakeAcme::start().await;
        let config = ControllerConfig::new("kacme-system", "kacme:test");
        let (ctx, writers) = new_context(&apiserver, &config);
        IssuanceHarness { apiserver, ca, config, ctx, writers }
    }

    /// [`IssuanceHarness::start`], with the Issuer `apps/ca` Ready at the fake CA and the Certificate
    /// fixture `apps/web` (for `web.example.test`) as it is after its first pass: with the finalizer.
    pub async fn ready_to_issue() -> IssuanceHarness {
        let harness = IssuanceHarness::start().await;
        harness.apiserver.put(&harness.ready_issuer());
        harness.seed_certificate(crate::desired::testing::certificate());
        harness
    }

    /// A restarted operator: a new Context (no order handles, account cache or record of its own writes)
    /// whose caches start empty until the next [`IssuanceHarness::sync_caches`].
    pub fn restart(&mut self) {
        (self.ctx, self.writers) = new_context(&self.apiserver, &self.config);
    }

    // --- Seeding -------------------------------------------------------------------------------------

    /// The Issuer `apps/ca`, Ready, for the fake CA (see [`ready_issuer_at`]).
    pub fn ready_issuer(&self) -> Issuer {
        ready_issuer_at(ISSUER, &self.ca)
    }

    /// Stores `certificate` with kacme's finalizer (as the first pass leaves it); returns what was stored.
    pub fn seed_certificate(&self, mut certificate: Certificate) -> Certificate {
        let finalizers = certificate.metadata.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == FINALIZER) {
            finalizers.push(FINALIZER.into());
        }
        self.apiserver.put(&certificate)
    }

    /// Edits the Certificate's spec as a user would (a PUT of the whole object): the generation goes up.
    pub async fn edit_certificate_spec(&self, edit: impl FnOnce(&mut crate::api::CertificateSpec)) {
        let mut certificate = self.certificate();
        edit(&mut certificate.spec);
        self.certificates().replace(CERTIFICATE, &PostParams::default(), &certificate).await.expect("editing the spec");
    }

    /// Edits the Certificate's metadata (annotations, labels) as a user would: the generation stays.
    pub async fn edit_certificate_metadata(&self, edit: impl FnOnce(&mut kube::api::ObjectMeta)) {
        let mut certificate = self.certificate();
        edit(&mut certificate.metadata);
        self.certificates().replace(CERTIFICATE, &PostParams::default(), &certificate).await.expect("editing metadata");
    }

    /// Moves the last failure an hour back, as if the backoff had elapsed (the decision compares it with
    /// the clock, which the harness cannot move). Written to the status subresource, as an edit of status
    /// by someone else would be.
    pub async fn let_the_backoff_elapse(&self) {
        let mut certificate = self.certificate();
        let status = certificate.status.as_mut().expect("a Certificate that failed has a status");
        let failed_at = status.last_failure_time.as_ref().expect("the Certificate failed before").0;
        status.last_failure_time = Some(Time(failed_at - jiff::SignedDuration::from_hours(1)));
        let api = self.certificates();
        api.replace_status(CERTIFICATE, &PostParams::default(), &certificate).await.expect("moving the failure back");
    }

    fn certificates(&self) -> Api<Certificate> {
        Api::namespaced(self.apiserver.client(), NAMESPACE)
    }

    // --- The world around the reconciler -------------------------------------------------------------

    /// Replaces the content of every cache with what the fake apiserver holds, filtered as the operator's
    /// watches are: Secrets labelled `app.kubernetes.io/managed-by=kacme`, every Issuer and ClusterIssuer,
    /// solver Pods, Services and Ingresses labelled `kacme.dev/solver`.
    pub fn sync_caches(&mut self) {
        let managed = |meta: &kube::api::ObjectMeta| {
            meta.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY)
        };
        let solver = |meta: &kube::api::ObjectMeta| meta.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_SOLVER));
        let fake = &self.apiserver;
        self.writers.secrets.replace(fake.list::<Secret>().into_iter().filter(|s| managed(&s.metadata)));
        replace_cache(&mut self.writers.issuers, fake.list::<Issuer>(), |_| true);
        replace_cache(&mut self.writers.cluster_issuers, fake.list::<ClusterIssuer>(), |_| true);
        replace_cache(&mut self.writers.pods, fake.list::<Pod>(), |p| solver(&p.metadata));
        replace_cache(&mut self.writers.services, fake.list::<Service>(), |s| solver(&s.metadata));
        replace_cache(&mut self.writers.ingresses, fake.list::<Ingress>(), |i| solver(&i.metadata));
    }

    /// The kubelet's part: every solver Pod not yet Ready becomes Running and Ready. Returns how many.
    pub fn mark_solver_pods_ready(&self) -> usize {
        let mut marked = 0;
        for mut pod in self.apiserver.list::<Pod>() {
            let is_solver = pod.labels().contains_key(LABEL_SOLVER);
            if !is_solver || pod_is_ready(&pod) {
                continue;
            }
            let condition = |type_: &str| PodCondition {
                type_: type_.into(),
                status: "True".into(),
                last_transition_time: Some(Time(jiff::Timestamp::now())),
                ..PodCondition::default()
            };
            pod.status = Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![
                    condition("PodScheduled"),
                    condition("Initialized"),
                    condition("ContainersReady"),
                    condition("Ready"),
                ]),
                ..PodStatus::default()
            });
            self.apiserver.put(&pod);
            marked += 1;
        }
        marked
    }

    /// A [`Validation`] that validates a challenge only when the fake apiserver holds its solver objects
    /// as the CA's HTTP request would need them: a Ready solver Pod serving the key authorization for the
    /// token and name, a Service selecting it, an Ingress routing the challenge path on the host to it.
    /// Otherwise the challenge fails with what is missing.
    pub fn validation_through_solver_objects(&self) -> Validation {
        let apiserver = self.apiserver.clone();
        Validation::Check(Arc::new(move |challenge: &FakeChallenge| solver_objects_serve(&apiserver, challenge)))
    }

    // --- Passes --------------------------------------------------------------------------------------

    /// One reconcile pass over the Certificate as the fake apiserver holds it now; panics if it fails.
    pub async fn pass(&self) -> Action {
        self.try_pass().await.unwrap_or_else(|e| panic!("the pass failed: {e}"))
    }

    /// One reconcile pass over the Certificate as the fake apiserver holds it now.
    pub async fn try_pass(&self) -> Result<Action, ReconcileError> {
        // A pass is the requeue coming due: whatever a CA asked the Certificate to wait for has passed.
        self.ctx.retry_gate.release_all();
        let result = reconcile_certificate(Arc::new(self.certificate()), self.ctx.clone()).await;
        // The watch delivers what the pass wrote (the next pass reads the Certificate as it is now).
        if let Some(written) = self.apiserver.get::<Certificate>(NAMESPACE, CERTIFICATE) {
            self.ctx.certificate_delivered(&written);
        }
        result
    }

    /// Syncs the caches, runs a pass and plays the kubelet, until the Certificate is Ready with nothing
    /// in flight; returns the number of passes. Panics after `max_passes`, or when a pass fails.
    pub async fn run_until_ready(&mut self, max_passes: usize) -> usize {
        for passes in 1..=max_passes {
            self.sync_caches();
            self.pass().await;
            self.mark_solver_pods_ready();
            if self.is_ready_and_idle() {
                return passes;
            }
        }
        panic!("not Ready after {max_passes} passes; status: {:#?}", self.certificate().status)
    }

    /// [`IssuanceHarness::run_until_ready`] for another Certificate than the fixture: `namespace/name`.
    pub async fn run_until_ready_of(&mut self, namespace: &str, name: &str, max_passes: usize) -> usize {
        for passes in 1..=max_passes {
            self.sync_caches();
            self.ctx.retry_gate.release_all();
            let certificate: Certificate = self.apiserver.get(namespace, name).expect("the Certificate exists");
            reconcile_certificate(Arc::new(certificate), self.ctx.clone())
                .await
                .unwrap_or_else(|e| panic!("the pass over {namespace}/{name} failed: {e}"));
            if let Some(written) = self.apiserver.get::<Certificate>(namespace, name) {
                self.ctx.certificate_delivered(&written);
            }
            self.mark_solver_pods_ready();
            let certificate: Certificate = self.apiserver.get(namespace, name).expect("the Certificate exists");
            let status = certificate.status.unwrap_or_default();
            if status.order.is_none() && status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
                return passes;
            }
        }
        let certificate: Option<Certificate> = self.apiserver.get(namespace, name);
        panic!(
            "{namespace}/{name} not Ready after {max_passes} passes; status: {:#?}",
            certificate.and_then(|c| c.status)
        )
    }

    /// Syncs the caches, runs a pass and plays the kubelet, `passes` times.
    pub async fn run_passes(&mut self, passes: usize) {
        for _ in 0..passes {
            self.sync_caches();
            self.pass().await;
            self.mark_solver_pods_ready();
        }
    }

    // --- Observations --------------------------------------------------------------------------------

    /// The Certificate as the fake apiserver holds it.
    pub fn certificate(&self) -> Certificate {
        self.apiserver.get(NAMESPACE, CERTIFICATE).expect("the Certificate exists")
    }

    /// (status, reason, message) of a condition of the Certificate.
    pub fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let status = self.certificate().status?;
        let condition = status.conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((condition.status, condition.reason, condition.message))
    }

    /// (status, reason) of a condition of the Certificate.
    pub fn condition_reason(&self, type_: &str) -> Option<(String, String)> {
        self.condition(type_).map(|(status, reason, _)| (status, reason))
    }

    /// Whether the Certificate is Ready=True with no order in flight and no Issuing condition.
    pub fn is_ready_and_idle(&self) -> bool {
        let Some(status) = self.certificate().status else { return false };
        status.order.is_none()
            && status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            && !status.conditions.iter().any(|c| c.type_ == "Issuing")
    }

    /// A Secret in the Certificate's namespace.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.apiserver.get(NAMESPACE, name)
    }

    /// The next-key Secret of the Certificate, if it exists.
    pub fn next_key_secret(&self) -> Option<Secret> {
        self.secret(&next_key_secret_name(CERTIFICATE))
    }

    /// The chain and key the Certificate's Secret holds; panics unless both are there and readable.
    pub fn stored_certificate(&self) -> (ParsedChain, PrivateKey) {
        let secret = self.secret(SECRET).expect("the Certificate's Secret exists");
        let data = secret.data.expect("the Secret has data");
        let chain = parse_chain(&data.get(TLS_CRT).expect("tls.crt").0).expect("tls.crt holds a PEM chain");
        let key = parse_private_key(&data.get(TLS_KEY).expect("tls.key").0).expect("tls.key holds a PEM key");
        (chain, key)
    }

    /// Whether the Secret's key is the one of its certificate.
    pub fn stored_key_matches_certificate(&self) -> bool {
        let (chain, key) = self.stored_certificate();
        key_matches_certificate(&key, &chain.leaf)
    }

    /// `Kind/name` of every solver object of the Certificate in the fake apiserver.
    pub fn solver_objects(&self) -> Vec<String> {
        let label = certificate_label_value(CERTIFICATE);
        let ours =
            |meta: &kube::api::ObjectMeta| meta.labels.as_ref().and_then(|l| l.get(LABEL_CERTIFICATE)) == Some(&label);
        let name =
            |kind: &str, meta: &kube::api::ObjectMeta| format!("{kind}/{}", meta.name.clone().unwrap_or_default());
        let pods =
            self.apiserver.list::<Pod>().into_iter().filter(|o| ours(&o.metadata)).map(|o| name("Pod", &o.metadata));
        let services = self
            .apiserver
            .list::<Service>()
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .map(|o| name("Service", &o.metadata));
        let ingresses = self
            .apiserver
            .list::<Ingress>()
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .map(|o| name("Ingress", &o.metadata));
        pods.chain(services).chain(ingresses).collect()
    }

    /// The reasons of the Events published so far, oldest first.
    pub fn event_reasons(&self) -> Vec<String> {
        self.apiserver.events().into_iter().map(|e| e.reason).collect()
    }

    /// Every request the fake CA received so far.
    pub fn acme_requests(&self) -> u64 {
        self.ca.all_requests()
    }
}

/// An Issuer `apps/<name>`, Ready, for the fake CA `ca`, with its account key in Secret `<name>-account`.
pub(crate) fn ready_issuer_at(name: &str, ca: &FakeAcme) -> Issuer {
    let mut issuer =
        Issuer::new(name, IssuerSpec { acme: acme_issuer_at(ca, &format!("{name}-account")), policy: None });
    issuer.metadata.namespace = Some(NAMESPACE.into());
    issuer.status = Some(IssuerStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "AccountRegistered".into(),
            message: "The ACME account is registered".into(),
            last_transition_time: Time(jiff::Timestamp::now()),
            observed_generation: Some(1),
        }],
        acme: None,
    });
    issuer
}

/// A ClusterIssuer `<name>`, Ready, for the fake CA `ca`, with its account key in Secret `<name>-account`
/// (in the cluster resource namespace).
pub(crate) fn ready_cluster_issuer_at(name: &str, ca: &FakeAcme) -> ClusterIssuer {
    let issuer = ready_issuer_at(name, ca);
    let mut cluster_issuer =
        ClusterIssuer::new(name, crate::api::ClusterIssuerSpec { acme: issuer.spec.acme, policy: issuer.spec.policy });
    cluster_issuer.status = issuer.status;
    cluster_issuer
}

/// The `acme` spec of an issuer at the fake CA `ca`, with one solver for every name: its caBundle holds the
/// fake's TLS root (to reach the directory) and its issuing CA (so that issued chains verify to the
/// bundle, and `ca.crt` carries it).
pub(crate) fn acme_issuer_at(ca: &FakeAcme, account_key_secret: &str) -> AcmeIssuer {
    let CaTrust::Bundle(tls_roots) = ca.trust() else { panic!("the fake CA is trusted through a bundle") };
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let mut bundle: String =
        tls_roots.into_iter().map(|der| pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)).collect();
    bundle.push_str(&ca.ca_pem());
    AcmeIssuer {
        issuing_ca_bundle: None,
        server: ca.directory_url(),
        email: None,
        ca_bundle: Some(bundle),
        skip_tls_verify: None,
        private_key_secret_ref: SecretKeySelector { name: account_key_secret.into(), key: None },
        external_account_binding: None,
        account_per_namespace: None,
        send_lifetime: None,
        profile: None,
        revocation: None,
        solvers: vec![AcmeSolver { selector: None, http01: Http01Solver::default() }],
    }
}

fn new_context(apiserver: &FakeApiserver, config: &ControllerConfig) -> (Arc<Context>, StoreWriters) {
    let (stores, writers) = Stores::with_writers();
    (context_with_stores(apiserver, config, stores), writers)
}

/// A context over `apiserver` whose caches are `stores`, reporting to no observer.
pub(crate) fn context_with_stores(
    apiserver: &FakeApiserver,
    config: &ControllerConfig,
    stores: Stores,
) -> Arc<Context> {
    let observers = Observers { acme: Arc::new(crate::acme::NoObserver), reconcile: Arc::new(NoReconcileObserver) };
    Arc::new(Context::new(apiserver.client(), config.clone(), observers, stores))
}

/// Replaces a cache's content with `objects` that pass `keep`, as a watch that (re)lists does; managed
/// fields are dropped, as the operator's watches drop them.
fn replace_cache<K>(writer: &mut Writer<K>, objects: Vec<K>, keep: impl Fn(&K) -> bool)
where
    K: Resource<DynamicType = ()> + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for mut object in objects.into_iter().filter(|o| keep(o)) {
        object.meta_mut().managed_fields = None;
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

fn pod_is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the solver objects in `apiserver` would answer the CA's HTTP-01 request for `challenge`.
fn solver_objects_serve(apiserver: &FakeApiserver, challenge: &FakeChallenge) -> Result<(), String> {
    let hash = token_hash(&challenge.token);
    let of_token = |meta: &kube::api::ObjectMeta| {
        meta.labels.as_ref().and_then(|l| l.get(LABEL_TOKEN_HASH)).is_some_and(|h| *h == hash)
    };
    let url = format!("http://{}{CHALLENGE_PATH_PREFIX}{}", challenge.identifier, challenge.token);
    let pod = apiserver
        .list::<Pod>()
        .into_iter()
        .find(|p| of_token(&p.metadata))
        .ok_or_else(|| format!("Invalid response from {url}: no solver Pod for the token"))?;
    if !pod_is_ready(&pod) {
        return Err(format!("Invalid response from {url}: the solver Pod is not ready"));
    }
    let args: Vec<String> =
        pod.spec.iter().flat_map(|s| &s.containers).flat_map(|c| c.args.clone().unwrap_or_default()).collect();
    let wanted = [
        format!("--domain={}", challenge.identifier),
        format!("--token={}", challenge.token),
        format!("--key-authorization={}", challenge.key_authorization),
    ];
    if let Some(missing) = wanted.iter().find(|w| !args.contains(w)) {
        return Err(format!("The key authorization file from the server did not match: the solver lacks {missing}"));
    }
    let pod_labels = pod.labels().clone();
    let service = apiserver
        .list::<Service>()
        .into_iter()
        .find(|s| {
            let selector = s.spec.as_ref().and_then(|s| s.selector.as_ref());
            of_token(&s.metadata) && selector.is_some_and(|sel| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
        })
        .ok_or_else(|| format!("Invalid response from {url}: no Service selects the solver Pod"))?;
    let service_name = service.name_any();
    let routed = apiserver.list::<Ingress>().into_iter().filter(|i| of_token(&i.metadata)).any(|ingress| {
        let rules = ingress.spec.and_then(|s| s.rules).unwrap_or_default();
        rules.into_iter().any(|rule| {
            rule.host.as_deref() == Some(challenge.identifier.as_str())
                && rule.http.is_some_and(|http| {
                    http.paths.iter().any(|p| {
                        p.path.as_deref() == Some(&format!("{CHALLENGE_PATH_PREFIX}{}", challenge.token))
                            && p.backend.service.as_ref().is_some_and(|s| s.name == service_name)
                    })
                })
        })
    });
    if !routed {
        return Err(format!("Invalid response from {url}: no Ingress routes it to Service {service_name}"));
    }
    Ok(())
}
