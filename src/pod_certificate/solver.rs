//! HTTP-01 for a Pod's own order: the same solver Pod, Service and Ingress as a Certificate's (built by
//! [`crate::desired`]), but owned by the requesting Pod (deleting the Pod collects them) and read from the
//! apiserver rather than a watch cache (any replica may serve the agent, leader or not).

use crate::acme::{ChallengeSolver, Http01Challenge, Presentation, SolverError};
use crate::api::{AcmeIssuer, Certificate};
use crate::controller::kube_solver::{SolverPodState, solver_pod_state};
use crate::desired::{
    SolverContext, build_solver_ingress, build_solver_pod, build_solver_service, select_solver, solver_name,
};
use crate::kube_errors::{is_conflict, is_not_found};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// Serves the challenges of one Pod's order in the Pod's namespace.
pub struct PodSolver<'a> {
    pub client: Client,
    /// The in-memory Certificate that describes the Pod's request (never written to the apiserver).
    pub certificate: &'a Certificate,
    pub acme: &'a AcmeIssuer,
    pub context: &'a SolverContext,
    /// The requesting Pod, owner of every solver object.
    pub owner: OwnerReference,
}

impl PodSolver<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.certificate.namespace().unwrap_or_default())
    }

    /// Creates `object` (owned by the Pod) unless it exists; returns it when it existed.
    async fn ensure<K>(&self, mut object: K) -> Result<Option<K>, SolverError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    {
        let name = object.name_any();
        let kind = K::kind(&());
        match self.api::<K>().get_opt(&name).await {
            Ok(Some(existing)) => return Ok(Some(existing)),
            Ok(None) => {}
            Err(error) => return Err(SolverError(format!("reading {kind} {name}: {error}"))),
        }
        object.meta_mut().owner_references = Some(vec![self.owner.clone()]);
        match self.api::<K>().create(&PostParams::default(), &object).await {
            Ok(_) => Ok(None),
            Err(error) if is_conflict(&error) => Ok(None),
            Err(error) => Err(SolverError(format!("creating {kind} {name}: {error}"))),
        }
    }

    async fn delete<K>(&self, name: &str) -> Result<(), String>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned,
    {
        match self.api::<K>().delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(format!("deleting {} {name}: {error}", K::kind(&()))),
        }
    }
}

impl ChallengeSolver for PodSolver<'_> {
    async fn present(&self, challenge: &Http01Challenge) -> Result<Presentation, SolverError> {
        crate::acme::check_challenge(challenge).map_err(SolverError)?;
        let solver = select_solver(self.acme, self.certificate.labels(), &challenge.identifier)
            .ok_or_else(|| SolverError(format!("no solver of the issuer matches {}", challenge.identifier)))?;
        if solver.http01.gateway_http_route.is_some() {
            return Err(SolverError(
                "per-Pod certificates solve through Ingress solvers only (not gatewayHTTPRoute) for now".into(),
            ));
        }
        let workload = solver.http01.ingress.clone().unwrap_or_default();
        let pod = build_solver_pod(self.certificate, challenge, &workload, self.context);
        let name = pod.name_any();
        let existing = self.ensure(pod).await?;
        self.ensure(build_solver_service(self.certificate, challenge, &workload, self.context)).await?;
        self.ensure(build_solver_ingress(self.certificate, challenge, &workload, self.context)).await?;
        let Some(pod) = existing else {
            return Ok(Presentation::NotReady(format!("created solver Pod {name}")));
        };
        match solver_pod_state(&pod) {
            SolverPodState::Ready => Ok(Presentation::Ready),
            SolverPodState::NotReady(why) => Ok(Presentation::NotReady(why)),
            SolverPodState::Failed => {
                self.delete::<Pod>(&name).await.map_err(SolverError)?;
                Ok(Presentation::NotReady(format!("solver Pod {name} failed; replacing it")))
            }
        }
    }

    async fn cleanup(&self, challenge: &Http01Challenge) -> Result<(), SolverError> {
        let name = solver_name(&self.certificate.name_any(), challenge);
        let errors: Vec<String> =
            [self.delete::<Ingress>(&name).await, self.delete::<Service>(&name).await, self.delete::<Pod>(&name).await]
                .into_iter()
                .filter_map(Result::err)
                .collect();
        if errors.is_empty() { Ok(()) } else { Err(SolverError(errors.join("; "))) }
    }
}
