//! HTTP-01 through Kubernetes: a transient solver Pod, Service and Ingress (or Gateway API HTTPRoute) per
//! challenge, owned by the Certificate, created when missing (also when deleted while still needed) and
//! removed when done.
//!
//! HTTPRoutes are not watched (the Gateway API CRDs may not be installed, and a solver route lives for
//! seconds): a route is read when its challenge is presented, and the order's solver wait looks again soon.

use super::Context;
use crate::acme::{ChallengeSolver, Http01Challenge, Presentation, SolverError};
use crate::api::names::{LABEL_CERTIFICATE, LABEL_SOLVER};
use crate::api::{AcmeIssuer, Certificate};
use crate::desired::{
    RouteAcceptance, build_solver_http_route, build_solver_ingress, build_solver_pod, build_solver_service,
    certificate_label_value, hand_to_solver_pod, route_acceptance, select_solver, solver_name, solver_workload,
};
use crate::gateway_api::HTTPRoute;
use crate::kube_errors::{is_conflict, is_forbidden, is_not_found};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashSet;
use std::fmt::Debug;

/// The Pod condition that says its containers are ready (a Kubernetes name, not one of kacme's).
const POD_READY: &str = "Ready";

/// What [`KubeSolver::ensure`] found or did.
enum Ensured<K> {
    /// The cache holds the object.
    Existing(std::sync::Arc<K>),
    /// Created now (as the apiserver returned it), or by someone else meanwhile (`None`).
    Created(Option<K>),
}

/// Caches of the solver objects (watched through the `kacme.dev/solver` label only).
#[derive(Clone)]
pub struct SolverStores {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
}

/// Serves the challenges of one Certificate with solver objects in its namespace.
pub struct KubeSolver<'a> {
    pub ctx: &'a Context,
    pub certificate: &'a Certificate,
    pub acme: &'a AcmeIssuer,
    /// The names of the solver objects this solver removed (the caches may still show them for a moment).
    removed: std::sync::Mutex<HashSet<String>>,
}

impl<'a> KubeSolver<'a> {
    /// A solver for the challenges of `certificate`, with the issuer's `acme` settings.
    pub fn new(ctx: &'a Context, certificate: &'a Certificate, acme: &'a AcmeIssuer) -> KubeSolver<'a> {
        KubeSolver { ctx, certificate, acme, removed: std::sync::Mutex::default() }
    }

    /// The names of the solver objects removed so far.
    pub fn removed(&self) -> HashSet<String> {
        self.removed.lock().map(|names| names.clone()).unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.certificate.namespace().unwrap_or_default()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.namespace())
    }

    /// Creates `object` unless the cache already has it; a concurrent creation counts as success.
    async fn ensure<K>(&self, store: &Store<K>, object: K) -> Result<Ensured<K>, SolverError>
    where
        K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let name = object.name_any();
        if let Some(existing) = store.get(&ObjectRef::new(&name).within(&self.namespace())) {
            return Ok(Ensured::Existing(existing));
        }
        match self.api::<K>().create(&PostParams::default(), &object).await {
            Ok(created) => Ok(Ensured::Created(Some(created))),
            Err(error) if is_conflict(&error) => Ok(Ensured::Created(None)),
            Err(error) => Err(SolverError(format!("creating {} {name}: {error}", K::kind(&())))),
        }
    }

    /// Makes `owner` (the solver Pod) the controller of an existing solver Service or Ingress that another
    /// owner controls: one left by an earlier solver Pod of the same name (a failed one replaced, a challenge
    /// presented again) that the garbage collector has not removed yet, and would remove once its Pod is
    /// gone, taking the route away while the CA validates. Whether it had to (the object is then patched,
    /// guarded by its resourceVersion; a conflict or a deletion meanwhile is for the next pass).
    async fn adopt<K>(&self, ensured: Ensured<K>, owner: &Pod) -> Result<bool, SolverError>
    where
        K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        let Ensured::Existing(existing) = ensured else { return Ok(false) };
        if !needs_handing_to(existing.meta(), owner) {
            return Ok(false);
        }
        let mut meta = kube::api::ObjectMeta::default();
        hand_to_solver_pod(&mut meta, owner);
        let patch = serde_json::json!({
            "metadata": {"ownerReferences": meta.owner_references, "resourceVersion": existing.resource_version()}
        });
        let name = existing.name_any();
        match self.api::<K>().patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) || is_not_found(&error) => Ok(true),
            Err(error) => Err(SolverError(format!("handing {} {name} to its solver Pod: {error}", K::kind(&())))),
        }
    }

    /// Reads the solver route (no cache: see the module's doc), creating it when missing; returns it when
    /// it existed.
    async fn ensure_route(&self, route: HTTPRoute) -> Result<Option<HTTPRoute>, SolverError> {
        let name = route.name_any();
        let api = self.api::<HTTPRoute>();
        match api.get_opt(&name).await {
            Ok(Some(existing)) => return Ok(Some(existing)),
            Ok(None) => {}
            Err(error) => return Err(SolverError(format!("reading HTTPRoute {name}: {error}"))),
        }
        match api.create(&PostParams::default(), &route).await {
            Ok(_) => Ok(None),
            Err(error) if is_conflict(&error) => Ok(None),
            Err(error) if is_not_found(&error) => Err(SolverError(format!(
                "creating HTTPRoute {name}: the cluster does not serve the Gateway API \
                 (gateway.networking.k8s.io/v1 HTTPRoute): install its CRDs, or use an ingress solver"
            ))),
            Err(error) => Err(SolverError(format!("creating HTTPRoute {name}: {error}"))),
        }
    }

    /// Whether any solver of the issuer serves challenges through HTTPRoutes.
    fn uses_routes(&self) -> bool {
        self.acme.solvers.iter().any(|s| s.http01.gateway_http_route.is_some())
    }

    async fn delete<K>(&self, name: &str) -> Result<(), String>
    where
        K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>().delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(format!("deleting {} {name}: {error}", K::kind(&()))),
        }
        if let Ok(mut removed) = self.removed.lock() {
            removed.insert(name.to_string());
        }
        Ok(())
    }
}

impl ChallengeSolver for KubeSolver<'_> {
    async fn present(&self, challenge: &Http01Challenge) -> Result<Presentation, SolverError> {
        // The order checked what the CA sent and the account the issuer's templates; checked once more
        // here, where they become a route and objects made with kacme's rights.
        crate::acme::check_challenge(challenge).map_err(SolverError)?;
        crate::decision::solver_template::check_solver_templates(self.acme, &self.ctx.config.solver_templates)
            .map_err(|refusal| SolverError(refusal.to_string()))?;
        let labels = self.certificate.labels();
        let solver = select_solver(self.acme, labels, &challenge.identifier)
            .ok_or_else(|| SolverError(format!("no solver of the issuer matches {}", challenge.identifier)))?;
        let route_config = solver.http01.gateway_http_route.as_ref();
        let workload = match route_config {
            Some(route) => solver_workload(route),
            None => solver.http01.ingress.clone().unwrap_or_default(),
        };
        let stores = &self.ctx.stores.solvers;
        let solver_ctx = &self.ctx.solver_context;
        let pod = build_solver_pod(self.certificate, challenge, &workload, solver_ctx);
        let name = pod.name_any();
        // The Service and Ingress belong to the Pod (one delete removes all three: see
        // [`hand_to_solver_pod`]), so they are created once the Pod's uid is known.
        let (existing_pod, owner) = match self.ensure(&stores.pods, pod).await? {
            Ensured::Existing(pod) => (Some(pod.clone()), pod.as_ref().clone()),
            Ensured::Created(Some(created)) => (None, created),
            Ensured::Created(None) => {
                return Ok(Presentation::NotReady(format!("solver Pod {name} was created meanwhile")));
            }
        };
        let mut service = build_solver_service(self.certificate, challenge, &workload, solver_ctx);
        hand_to_solver_pod(&mut service.metadata, &owner);
        let mut handed_on = self.adopt(self.ensure(&stores.services, service).await?, &owner).await?;
        let existing_route = match route_config {
            Some(route) => {
                let route = build_solver_http_route(self.certificate, challenge, route, solver_ctx);
                Some(self.ensure_route(route).await?)
            }
            None => {
                let mut ingress = build_solver_ingress(self.certificate, challenge, &workload, solver_ctx);
                hand_to_solver_pod(&mut ingress.metadata, &owner);
                handed_on |= self.adopt(self.ensure(&stores.ingresses, ingress).await?, &owner).await?;
                None
            }
        };
        if handed_on {
            return Ok(Presentation::NotReady(format!(
                "handed the solver Service and Ingress of an earlier solver Pod {name} to the new one"
            )));
        }
        let Some(pod) = existing_pod else {
            return Ok(Presentation::NotReady(format!("created solver Pod {name}")));
        };
        match solver_pod_state(&pod) {
            SolverPodState::Ready => {}
            SolverPodState::NotReady(why) => return Ok(Presentation::NotReady(why)),
            SolverPodState::Failed => {
                // A failed solver Pod is replaced; the next pass recreates it.
                self.delete::<Pod>(&name).await.map_err(SolverError)?;
                return Ok(Presentation::NotReady(format!("solver Pod {name} failed; replacing it")));
            }
        }
        // The CA is told only once every parent Gateway routes the challenge to the solver.
        match existing_route {
            None => Ok(Presentation::Ready),
            Some(None) => Ok(Presentation::NotReady(format!("created solver HTTPRoute {name}"))),
            Some(Some(route)) => match route_acceptance(&route) {
                RouteAcceptance::Accepted => Ok(Presentation::Ready),
                RouteAcceptance::Waiting(message) => Ok(Presentation::NotReady(message)),
            },
        }
    }

    async fn cleanup(&self, challenge: &Http01Challenge) -> Result<(), SolverError> {
        let name = solver_name(&self.certificate.name_any(), challenge);
        // The Service and Ingress belong to the Pod: the garbage collector removes them with it. The Service
        // is deleted at once all the same: it holds a ClusterIP, and the collector may lag behind by seconds
        // when the cluster is busy (1,000 issuances at once exhausted a /24 service range). An Ingress or
        // Service of an older kacme (owned by the Certificate) is removed by the sweep of leftovers.
        let route = if self.uses_routes() { self.delete::<HTTPRoute>(&name).await } else { Ok(()) };
        let errors: Vec<String> = [route, self.delete::<Service>(&name).await, self.delete::<Pod>(&name).await]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(SolverError(errors.join("; "))) }
    }
}

/// What an existing solver Pod's status says.
pub(crate) enum SolverPodState {
    /// It failed: delete it, and the next pass makes a new one.
    Failed,
    /// Not ready yet, and what its status tells of why.
    NotReady(String),
    /// Ready: it serves the challenge.
    Ready,
}

/// The state of an existing solver Pod, from its status.
pub(crate) fn solver_pod_state(pod: &Pod) -> SolverPodState {
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        return SolverPodState::Failed;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == POD_READY && c.status == "True"));
    if ready { SolverPodState::Ready } else { SolverPodState::NotReady(unready_pod_message(pod)) }
}

/// The longest piece of a Pod's status quoted in a message (the kubelet's messages can be long).
const MAX_QUOTED: usize = 300;

/// What is awaited of a solver Pod that is not ready, with what its status tells of why: its phase, why it
/// cannot be scheduled, why its container waits or ended (for example `ImagePullBackOff` and the kubelet's
/// message). Shown while waiting, and in the failure when the solver deadline passes.
fn unready_pod_message(pod: &Pod) -> String {
    let name = pod.name_any();
    let Some(status) = pod.status.as_ref() else {
        return format!("waiting for solver Pod {name} to be ready (no status yet)");
    };
    let quote = |text: &str| -> String {
        let text = text.trim();
        match text.char_indices().nth(MAX_QUOTED) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.to_string(),
        }
    };
    let mut why = Vec::new();
    if let Some(phase) = status.phase.as_deref() {
        why.push(phase.to_string());
    }
    for condition in status.conditions.iter().flatten() {
        if condition.type_ == "PodScheduled" && condition.status == "False" {
            let reason = condition.reason.as_deref().unwrap_or("not scheduled");
            match condition.message.as_deref() {
                Some(message) => why.push(format!("{reason}: {}", quote(message))),
                None => why.push(reason.to_string()),
            }
        }
    }
    for container in status.container_statuses.iter().flatten() {
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("waiting");
            match waiting.message.as_deref() {
                Some(message) => why.push(format!("container {}: {reason}: {}", container.name, quote(message))),
                None => why.push(format!("container {}: {reason}", container.name)),
            }
        } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = terminated.reason.as_deref().unwrap_or("terminated");
            why.push(format!("container {}: {reason} (exit code {})", container.name, terminated.exit_code));
        }
        if container.restart_count > 0 {
            why.push(format!("container {} restarted {} times", container.name, container.restart_count));
        }
    }
    if why.is_empty() {
        format!("waiting for solver Pod {name} to be ready")
    } else {
        format!("waiting for solver Pod {name} to be ready: {}", why.join("; "))
    }
}

/// Whether an existing solver Service or Ingress must be handed to the solver Pod `owner`: it is controlled
/// by something else (an earlier Pod of the same name, an older kacme's Certificate) or by nothing. A Pod
/// without a UID (never from the apiserver) owns nothing yet.
fn needs_handing_to(meta: &kube::api::ObjectMeta, owner: &Pod) -> bool {
    let Some(uid) = owner.metadata.uid.as_deref() else { return false };
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    controller.is_none_or(|o| o.uid != uid)
}

/// Whether the caches hold any solver object of a Certificate (by its label; no request) that still needs
/// deleting, leaving out the objects named in `just_removed`.
///
/// An object being deleted is left alone while its grace period runs (a running Pod stays, terminating, for
/// it), but not once the period is over: a DELETE whose client died half-way (the operator killed) can
/// leave an object marked for deletion that nothing removes, and deleting it again lets the apiserver finish.
/// A Service or Ingress that belongs to its solver Pod is the garbage collector's once the Pod goes.
pub fn has_cached_solver_objects(ctx: &Context, certificate: &Certificate, just_removed: &HashSet<String>) -> bool {
    let namespace = certificate.namespace();
    let label = certificate_label_value(&certificate.name_any());
    let now = jiff::Timestamp::now();
    let belongs = |meta: &kube::api::ObjectMeta| {
        !owned_by_pod(meta)
            && meta.namespace == namespace
            && meta.deletion_timestamp.as_ref().is_none_or(|deleted_at| deleted_at.0 <= now)
            && meta.labels.as_ref().and_then(|l| l.get(LABEL_CERTIFICATE)) == Some(&label)
            && meta.name.as_ref().is_none_or(|name| !just_removed.contains(name))
    };
    let stores = &ctx.stores.solvers;
    stores.pods.state().iter().any(|o| belongs(&o.metadata))
        || stores.services.state().iter().any(|o| belongs(&o.metadata))
        || stores.ingresses.state().iter().any(|o| belongs(&o.metadata))
}

/// Whether a solver object belongs to its solver Pod (see [`hand_to_solver_pod`]): the garbage collector
/// removes it with the Pod.
fn owned_by_pod(meta: &kube::api::ObjectMeta) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == "Pod")
}

/// The Certificate a solver object serves, for the watches that wake it: its owner, or its Pod's owner.
pub fn certificate_of_solver_object(meta: &kube::api::ObjectMeta, pods: &Store<Pod>) -> Option<ObjectRef<Certificate>> {
    let namespace = meta.namespace.as_deref()?;
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
    let certificate_kind = <Certificate as kube::Resource>::kind(&());
    if controller.kind == certificate_kind {
        return Some(ObjectRef::new(&controller.name).within(namespace));
    }
    if controller.kind != "Pod" {
        return None;
    }
    let pod = pods.get(&ObjectRef::new(&controller.name).within(namespace))?;
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
    (owner.kind == certificate_kind).then(|| ObjectRef::new(&owner.name).within(namespace))
}

/// Deletes every solver object of a Certificate (by label), trying all and reporting every failure.
pub async fn cleanup_all_solver_objects(ctx: &Context, certificate: &Certificate) -> Result<(), Vec<String>> {
    let namespace = certificate.namespace().unwrap_or_default();
    let selector = format!("{LABEL_SOLVER},{LABEL_CERTIFICATE}={}", certificate_label_value(&certificate.name_any()));
    let params = kube::api::ListParams::default().labels(&selector);
    let mut errors = Vec::new();
    let delete = DeleteParams::background();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(e) = ingresses.delete_collection(&delete, &params).await {
        errors.push(format!("deleting solver Ingresses: {e}"));
    }
    // Solver routes only where the issuer solves through routes (or is gone from the cache). Without the
    // Gateway API CRDs (not found), or without rights to HTTPRoutes (forbidden: the cluster's RBAC leaves
    // them out), there are none to delete; the owner reference collects any left anyway.
    let routes: Api<HTTPRoute> = Api::namespaced(ctx.client.clone(), &namespace);
    let issuer = ctx.cached_issuer(&certificate.spec.issuer_ref, &namespace);
    let may_have_routes = issuer.is_none_or(|i| i.acme.solvers.iter().any(|s| s.http01.gateway_http_route.is_some()));
    if may_have_routes
        && let Err(e) = routes.delete_collection(&delete, &params).await
        && !is_not_found(&e)
        && !is_forbidden(&e)
    {
        errors.push(format!("deleting solver HTTPRoutes: {e}"));
    }
    // Services have no deletecollection verb; delete them one by one.
    match services.list_metadata(&params).await {
        Ok(list) => {
            for service in list {
                if let Err(e) = services.delete(&service.name_any(), &delete).await
                    && !is_not_found(&e)
                {
                    errors.push(format!("deleting solver Service {}: {e}", service.name_any()));
                }
            }
        }
        Err(e) => errors.push(format!("listing solver Services: {e}")),
    }
    if let Err(e) = pods.delete_collection(&delete, &params).await {
        errors.push(format!("deleting solver Pods: {e}"));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn pod(status: Option<PodStatus>) -> Pod {
        let mut pod = Pod { status, ..Pod::default() };
        pod.metadata.name = Some("web-1a2b3c".into());
        pod
    }

    fn container(state: ContainerState, restart_count: i32) -> ContainerStatus {
        ContainerStatus { name: "solver".into(), state: Some(state), restart_count, ..ContainerStatus::default() }
    }

    #[test]
    fn an_unready_solver_pod_says_why_as_far_as_its_status_tells() {
        let waiting = |reason: &str, message: Option<&str>| ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: message.map(Into::into) }),
            ..ContainerState::default()
        };
        let unschedulable = PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
            ..PodCondition::default()
        };
        let crashed = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 2,
                reason: Some("Error".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        // (case, status, message)
        let cases = [
            ("no status yet", None, "waiting for solver Pod web-1a2b3c to be ready (no status yet)"),
            ("an empty status", Some(PodStatus::default()), "waiting for solver Pod web-1a2b3c to be ready"),
            (
                "an image that cannot be pulled",
                Some(PodStatus {
                    phase: Some("Pending".into()),
                    container_statuses: Some(vec![container(
                        waiting("ImagePullBackOff", Some("Back-off pulling image \"kacme:nope\"")),
                        0,
                    )]),
                    ..PodStatus::default()
                }),
                "waiting for solver Pod web-1a2b3c to be ready: Pending; container solver: ImagePullBackOff: \
                 Back-off pulling image \"kacme:nope\"",
            ),
            (
                "a Pod that cannot be scheduled",
                Some(PodStatus {
                    phase: Some("Pending".into()),
                    conditions: Some(vec![unschedulable]),
                    ..PodStatus::default()
                }),
                "waiting for solver Pod web-1a2b3c to be ready: Pending; Unschedulable: 0/3 nodes are available: \
                 3 Insufficient cpu.",
            ),
            (
                "a container that keeps crashing",
                Some(PodStatus {
                    phase: Some("Running".into()),
                    container_statuses: Some(vec![container(crashed, 4)]),
                    ..PodStatus::default()
                }),
                "waiting for solver Pod web-1a2b3c to be ready: Running; container solver: Error (exit code 2); \
                 container solver restarted 4 times",
            ),
        ];
        for (case, status, message) in cases {
            assert_eq!(unready_pod_message(&pod(status)), message, "{case}");
        }
    }

    #[test]
    fn a_solver_object_is_handed_to_the_pod_unless_that_pod_controls_it_already() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let pod = |uid: Option<&str>| Pod {
            metadata: kube::api::ObjectMeta { uid: uid.map(str::to_string), ..Default::default() },
            ..Default::default()
        };
        let owned_by = |uid: &str, controller: Option<bool>| kube::api::ObjectMeta {
            owner_references: Some(vec![OwnerReference { uid: uid.to_string(), controller, ..Default::default() }]),
            ..Default::default()
        };
        // (case, object, pod, handed on)
        let cases = [
            ("controlled by this Pod", owned_by("now", Some(true)), pod(Some("now")), false),
            ("controlled by an earlier Pod", owned_by("before", Some(true)), pod(Some("now")), true),
            ("only a non-controller reference to this Pod", owned_by("now", None), pod(Some("now")), true),
            ("no owner at all", kube::api::ObjectMeta::default(), pod(Some("now")), true),
            ("a Pod without a UID owns nothing yet", owned_by("before", Some(true)), pod(None), false),
        ];
        for (case, meta, pod, expected) in cases {
            assert_eq!(needs_handing_to(&meta, &pod), expected, "{case}");
        }
    }

    #[test]
    fn a_long_kubelet_message_is_cut() {
        let long = "x".repeat(5000);
        let status = PodStatus {
            container_statuses: Some(vec![container(
                ContainerState {
                    waiting: Some(ContainerStateWaiting { reason: Some("ErrImagePull".into()), message: Some(long) }),
                    ..ContainerState::default()
                },
                0,
            )]),
            ..PodStatus::default()
        };
        let message = unready_pod_message(&pod(Some(status)));
        assert!(message.len() < 400 && message.ends_with("..."), "{message}");
    }
}
