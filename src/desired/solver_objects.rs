//! The transient HTTP-01 solver objects of one challenge: a Pod running `kacme solver`, a Service in
//! front of it and an Ingress routing the challenge path to the Service.
//!
//! All three share one name ([`solver_name`]), carry kacme's solver labels and are owned by the
//! Certificate, so that deleting the Certificate garbage-collects them.

use super::names::{certificate_label_value, solver_name, token_hash};
use crate::acme::CHALLENGE_PATH_PREFIX;
use crate::acme::Http01Challenge;
use crate::api::names::{LABEL_CERTIFICATE, LABEL_MANAGED_BY, LABEL_SOLVER, LABEL_TOKEN_HASH, MANAGED_BY};
use crate::api::{Certificate, Http01Ingress, ObjectMetaTemplate, SolverPathType, SolverPodSpec, SolverServiceType};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The port the solver listens on inside its Pod.
pub const SOLVER_PORT: u16 = 8089;
/// The name of the solver container port and of the Service port.
pub const SOLVER_PORT_NAME: &str = "http";
/// The name of the solver container.
pub const SOLVER_CONTAINER_NAME: &str = "solver";
/// The user and group id the solver runs as (the conventional non-root id of distroless images).
pub const SOLVER_USER_ID: i64 = 65532;
/// Node selector label that keeps the solver on Linux nodes unless the pod template picks nodes.
const OS_LABEL: &str = "kubernetes.io/os";

/// What the solver objects need from the operator's own configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverContext {
    /// The image of the solver container: the operator's own image, which runs `kacme solver`.
    pub image: String,
    /// The image pull policy of the solver container; the cluster's default when `None`.
    pub image_pull_policy: Option<String>,
    /// Resources of the solver container when the pod template gives none.
    pub default_resources: ResourceRequirements,
    /// The port the solver listens on (container port, Service port and Ingress backend port).
    pub port: u16,
    /// Labels the operator puts on every solver object (for example the Helm release's labels). They
    /// win over the pod and ingress templates' labels; kacme's own solver labels win over them.
    pub labels: BTreeMap<String, String>,
}

impl SolverContext {
    /// A context with the given image and the defaults: port [`SOLVER_PORT`], [`default_solver_resources`],
    /// no pull policy and no extra labels.
    pub fn new(image: impl Into<String>) -> SolverContext {
        SolverContext {
            image: image.into(),
            image_pull_policy: None,
            default_resources: default_solver_resources(),
            port: SOLVER_PORT,
            labels: BTreeMap::new(),
        }
    }
}

/// The solver container's resources unless the pod template says otherwise: requests cpu 10m, memory
/// 16Mi; limits cpu 100m, memory 64Mi.
pub fn default_solver_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ]))
    };
    ResourceRequirements { requests: quantities("10m", "16Mi"), limits: quantities("100m", "64Mi"), claims: None }
}

/// The labels that tie a solver Service to its Pod (and select the solver objects of one challenge):
/// `kacme.dev/solver`, `kacme.dev/certificate` and `kacme.dev/token-hash`.
pub fn solver_selector_labels(certificate_name: &str, challenge: &Http01Challenge) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SOLVER.to_string(), "true".to_string()),
        (LABEL_CERTIFICATE.to_string(), certificate_label_value(certificate_name)),
        (LABEL_TOKEN_HASH.to_string(), token_hash(&challenge.token)),
    ])
}

/// The solver Pod of `challenge`: one hardened container running `kacme solver` for this challenge.
///
/// The pod template of `ingress` adds labels, annotations, scheduling settings, pull secrets and
/// resources; it cannot change the security settings (non-root user 65532, read-only root filesystem,
/// no capabilities, no privilege escalation, seccomp RuntimeDefault, no service account token).
/// The owner reference is set when the Certificate has a name and uid, as every Certificate read from
/// the apiserver has.
pub fn build_solver_pod(
    certificate: &Certificate,
    challenge: &Http01Challenge,
    ingress: &Http01Ingress,
    ctx: &SolverContext,
) -> Pod {
    let template = ingress.pod_template.as_ref();
    let template_meta = template.and_then(|t| t.metadata.as_ref());
    let template_spec = template.and_then(|t| t.spec.as_ref());
    Pod {
        metadata: solver_metadata(certificate, challenge, template_meta, ctx),
        spec: Some(solver_pod_spec(challenge, template_spec, ctx)),
        status: None,
    }
}

/// The Service in front of the solver Pod of `challenge`: `ClusterIP` or `NodePort` as `ingress` says,
/// port [`SolverContext::port`] to the Pod's `http` port, selecting the Pod by kacme's solver labels only.
pub fn build_solver_service(
    certificate: &Certificate,
    challenge: &Http01Challenge,
    ingress: &Http01Ingress,
    ctx: &SolverContext,
) -> Service {
    let service_type = match ingress.service_type.unwrap_or_default() {
        SolverServiceType::ClusterIP => "ClusterIP",
        SolverServiceType::NodePort => "NodePort",
    };
    Service {
        metadata: solver_metadata(certificate, challenge, None, ctx),
        spec: Some(ServiceSpec {
            type_: Some(service_type.to_string()),
            selector: Some(solver_selector_labels(&certificate_name(certificate), challenge)),
            ports: Some(vec![ServicePort {
                name: Some(SOLVER_PORT_NAME.to_string()),
                protocol: Some("TCP".to_string()),
                port: i32::from(ctx.port),
                target_port: Some(IntOrString::String(SOLVER_PORT_NAME.to_string())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Ingress that routes `http://<identifier>/.well-known/acme-challenge/<token>` to the solver
/// Service of `challenge`, with the ingress class, path type and ingress template of `ingress`.
///
/// An IP address cannot be an Ingress host, so for an IP identifier the rule has no host and matches
/// the challenge path on every host.
pub fn build_solver_ingress(
    certificate: &Certificate,
    challenge: &Http01Challenge,
    ingress: &Http01Ingress,
    ctx: &SolverContext,
) -> Ingress {
    let template_meta = ingress.ingress_template.as_ref().and_then(|t| t.metadata.as_ref());
    let name = solver_name(&certificate_name(certificate), challenge);
    let path = HTTPIngressPath {
        path: Some(format!("{CHALLENGE_PATH_PREFIX}{}", challenge.token)),
        path_type: path_type(ingress.path_type.unwrap_or_default()).to_string(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name,
                port: Some(ServiceBackendPort { number: Some(i32::from(ctx.port)), name: None }),
            }),
            resource: None,
        },
    };
    let host = challenge.identifier.parse::<IpAddr>().is_err().then(|| challenge.identifier.clone());
    Ingress {
        metadata: solver_metadata(certificate, challenge, template_meta, ctx),
        spec: Some(IngressSpec {
            ingress_class_name: ingress.ingress_class_name.clone(),
            rules: Some(vec![IngressRule { host, http: Some(HTTPIngressRuleValue { paths: vec![path] }) }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn path_type(path_type: SolverPathType) -> &'static str {
    match path_type {
        SolverPathType::Exact => "Exact",
        SolverPathType::Prefix => "Prefix",
        SolverPathType::ImplementationSpecific => "ImplementationSpecific",
    }
}

/// Name, namespace, labels, annotations and owner of a solver object. Labels layer up, later ones
/// winning: the template's, the operator's ([`SolverContext::labels`]), kacme's solver labels.
pub(super) fn solver_metadata(
    certificate: &Certificate,
    challenge: &Http01Challenge,
    template: Option<&ObjectMetaTemplate>,
    ctx: &SolverContext,
) -> ObjectMeta {
    let certificate_name = certificate_name(certificate);
    let mut labels = template.map(|t| t.labels.clone()).unwrap_or_default();
    labels.extend(ctx.labels.clone());
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels.extend(solver_selector_labels(&certificate_name, challenge));
    ObjectMeta {
        name: Some(solver_name(&certificate_name, challenge)),
        namespace: certificate.metadata.namespace.clone(),
        labels: Some(labels),
        annotations: template.map(|t| t.annotations.clone()).filter(|a| !a.is_empty()),
        owner_references: controller_owner_reference(certificate).map(|owner| vec![owner]),
        ..Default::default()
    }
}

/// Hands a solver Service or Ingress to its solver Pod: the Pod becomes its only owner (the controller), so
/// that deleting the Pod removes them too (the garbage collector of kube-controller-manager does), one delete
/// instead of three. The Pod is owned by the Certificate, so deleting the Certificate still removes all three.
/// Without blockOwnerDeletion, which would need the right to update the Pod's finalizers. Leaves `meta` as
/// it is and returns false when the Pod has no name or uid (one never read from the apiserver).
pub fn hand_to_solver_pod(meta: &mut ObjectMeta, pod: &Pod) -> bool {
    let Some(owner) = pod.controller_owner_ref(&()) else { return false };
    meta.owner_references = Some(vec![OwnerReference { block_owner_deletion: None, ..owner }]);
    true
}

/// The Certificate's name; empty only for a Certificate that never came from the apiserver.
pub(super) fn certificate_name(certificate: &Certificate) -> String {
    certificate.metadata.name.clone().unwrap_or_default()
}

/// An owner reference that makes the Certificate the controller of an object and keeps the Certificate
/// from disappearing before the object in a foreground deletion.
pub(super) fn controller_owner_reference(certificate: &Certificate) -> Option<OwnerReference> {
    let owner = certificate.controller_owner_ref(&())?;
    Some(OwnerReference { block_owner_deletion: Some(true), ..owner })
}

fn solver_pod_spec(challenge: &Http01Challenge, template: Option<&SolverPodSpec>, ctx: &SolverContext) -> PodSpec {
    let node_selector = match template.map(|t| &t.node_selector).filter(|s| !s.is_empty()) {
        Some(chosen) => chosen.clone(),
        None => BTreeMap::from([(OS_LABEL.to_string(), "linux".to_string())]),
    };
    let resources = template.and_then(|t| t.resources.clone()).unwrap_or_else(|| ctx.default_resources.clone());
    PodSpec {
        containers: vec![solver_container(challenge, resources, ctx)],
        restart_policy: Some("OnFailure".to_string()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(solver_pod_security_context()),
        node_selector: Some(node_selector),
        tolerations: template.map(|t| t.tolerations.clone()).filter(|t| !t.is_empty()),
        affinity: template.and_then(|t| t.affinity.clone()),
        priority_class_name: template.and_then(|t| t.priority_class_name.clone()),
        image_pull_secrets: template.map(|t| t.image_pull_secrets.clone()).filter(|s| !s.is_empty()),
        ..Default::default()
    }
}

fn solver_container(challenge: &Http01Challenge, resources: ResourceRequirements, ctx: &SolverContext) -> Container {
    let port = i32::from(ctx.port);
    Container {
        name: SOLVER_CONTAINER_NAME.to_string(),
        image: Some(ctx.image.clone()),
        image_pull_policy: ctx.image_pull_policy.clone(),
        args: Some(solver_args(challenge, ctx.port)),
        ports: Some(vec![ContainerPort {
            name: Some(SOLVER_PORT_NAME.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".to_string()),
                port: IntOrString::Int(port),
                ..Default::default()
            }),
            period_seconds: Some(1),
            ..Default::default()
        }),
        resources: Some(resources),
        security_context: Some(solver_container_security_context()),
        ..Default::default()
    }
}

/// The command line of `kacme solver` for one challenge (the image's entrypoint is `kacme`). Values are
/// attached with `=`: base64url tokens may start with `-`, which would otherwise read as a flag.
fn solver_args(challenge: &Http01Challenge, port: u16) -> Vec<String> {
    vec![
        "solver".to_string(),
        format!("--listen=0.0.0.0:{port}"),
        format!("--domain={}", challenge.identifier),
        format!("--token={}", challenge.token),
        format!("--key-authorization={}", challenge.key_authorization),
    ]
}

fn solver_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SOLVER_USER_ID),
        run_as_group: Some(SOLVER_USER_ID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }),
        ..Default::default()
    }
}

fn solver_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SolverIngressTemplate, SolverPodTemplate};
    use crate::desired::testing::{certificate, challenge};
    use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, NodeAffinity, Toleration};
    use serde_json::json;

    const AUTHZ: &str = "https://ca.example.test/authz/1";

    fn web_challenge() -> Http01Challenge {
        challenge("web.example.test", "tok-123", AUTHZ)
    }

    fn ctx() -> SolverContext {
        SolverContext::new("registry.example.test/kacme:1.0")
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn with_pod_template(metadata: Option<ObjectMetaTemplate>, spec: Option<SolverPodSpec>) -> Http01Ingress {
        Http01Ingress { pod_template: Some(SolverPodTemplate { metadata, spec }), ..Default::default() }
    }

    fn pod_spec(pod: &Pod) -> &PodSpec {
        pod.spec.as_ref().unwrap()
    }

    fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
        meta.labels.clone().unwrap_or_default()
    }

    #[test]
    fn a_solver_pod_without_template_is_exactly_the_hardened_solver() {
        let pod = build_solver_pod(&certificate(), &web_challenge(), &Http01Ingress::default(), &ctx());
        let name = solver_name("web", &web_challenge());
        let want = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "apps",
                "labels": {
                    "app.kubernetes.io/managed-by": "kacme",
                    "kacme.dev/certificate": "web",
                    "kacme.dev/solver": "true",
                    "kacme.dev/token-hash": token_hash("tok-123"),
                },
                "ownerReferences": [{
                    "apiVersion": "kacme.dev/v1alpha1",
                    "kind": "Certificate",
                    "name": "web",
                    "uid": "0b6b2c4e-1d1f-4c55-9a7e-3c1f00000001",
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "restartPolicy": "OnFailure",
                "nodeSelector": { "kubernetes.io/os": "linux" },
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "containers": [{
                    "name": "solver",
                    "image": "registry.example.test/kacme:1.0",
                    "args": [
                        "solver", "--listen=0.0.0.0:8089", "--domain=web.example.test",
                        "--token=tok-123", "--key-authorization=tok-123.thumbprint",
                    ],
                    "ports": [{ "name": "http", "containerPort": 8089, "protocol": "TCP" }],
                    "readinessProbe": { "httpGet": { "path": "/healthz", "port": 8089 }, "periodSeconds": 1 },
                    "resources": {
                        "requests": { "cpu": "10m", "memory": "16Mi" },
                        "limits": { "cpu": "100m", "memory": "64Mi" },
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true,
                        "capabilities": { "drop": ["ALL"] },
                    },
                }],
            },
        });
        let got = serde_json::to_value(&pod).unwrap();
        assert_eq!(got, want, "got {}", serde_json::to_string_pretty(&got).unwrap());
    }

    #[test]
    fn a_pod_template_adds_scheduling_and_metadata_but_never_weakens_security() {
        let toleration =
            Toleration { key: Some("dedicated".into()), operator: Some("Exists".into()), ..Default::default() };
        let affinity = Affinity { node_affinity: Some(NodeAffinity::default()), ..Default::default() };
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("50m".into()))])),
            ..Default::default()
        };
        let full_spec = SolverPodSpec {
            node_selector: map(&[("pool", "edge")]),
            tolerations: vec![toleration.clone()],
            affinity: Some(affinity.clone()),
            priority_class_name: Some("high".into()),
            image_pull_secrets: vec![LocalObjectReference { name: "pull".into() }],
            resources: Some(resources.clone()),
        };
        let metadata = ObjectMetaTemplate {
            labels: map(&[("team", "web"), ("kacme.dev/solver", "false"), ("app.kubernetes.io/managed-by", "me")]),
            annotations: map(&[("sidecar.istio.io/inject", "false")]),
        };
        let default_pod = build_solver_pod(&certificate(), &web_challenge(), &Http01Ingress::default(), &ctx());
        let pod = build_solver_pod(
            &certificate(),
            &web_challenge(),
            &with_pod_template(Some(metadata), Some(full_spec)),
            &ctx(),
        );
        let spec = pod_spec(&pod);
        let container = &spec.containers[0];
        let labels = labels_of(&pod.metadata);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();

        // (case, holds)
        let cases: Vec<(&str, bool)> = vec![
            ("the template's own label is added", labels.get("team").map(String::as_str) == Some("web")),
            ("kacme's solver label wins over the template's", labels[LABEL_SOLVER] == "true"),
            ("kacme's managed-by label wins over the template's", labels[LABEL_MANAGED_BY] == MANAGED_BY),
            ("the template's annotation is added", annotations.contains_key("sidecar.istio.io/inject")),
            ("the template's node selector replaces the default", spec.node_selector == Some(map(&[("pool", "edge")]))),
            ("the template's tolerations are used", spec.tolerations == Some(vec![toleration.clone()])),
            ("the template's affinity is used", spec.affinity == Some(affinity.clone())),
            ("the template's priority class is used", spec.priority_class_name.as_deref() == Some("high")),
            (
                "the template's pull secrets are used",
                spec.image_pull_secrets.as_ref().is_some_and(|s| s[0].name == "pull"),
            ),
            ("the template's resources replace the defaults", container.resources == Some(resources.clone())),
            ("the pod security context is unchanged", spec.security_context == pod_spec(&default_pod).security_context),
            (
                "the container security context is unchanged",
                container.security_context == pod_spec(&default_pod).containers[0].security_context,
            ),
            ("no service account token is mounted", spec.automount_service_account_token == Some(false)),
            (
                "the container and its arguments are unchanged",
                container.args == pod_spec(&default_pod).containers[0].args,
            ),
        ];
        for (case, holds) in cases {
            assert!(holds, "{case}: {pod:?}");
        }
    }

    #[test]
    fn an_empty_pod_template_keeps_every_default() {
        let default_pod = build_solver_pod(&certificate(), &web_challenge(), &Http01Ingress::default(), &ctx());
        // (case, template)
        let cases = [
            ("an empty template", with_pod_template(None, None)),
            (
                "empty metadata and spec",
                with_pod_template(Some(ObjectMetaTemplate::default()), Some(SolverPodSpec::default())),
            ),
        ];
        for (case, ingress) in cases {
            let pod = build_solver_pod(&certificate(), &web_challenge(), &ingress, &ctx());
            assert_eq!(pod, default_pod, "{case}");
        }
    }

    #[test]
    fn solver_labels_layer_template_then_operator_then_kacme() {
        let mut ctx = ctx();
        ctx.labels = map(&[("release", "kacme-prod"), ("team", "platform"), (LABEL_TOKEN_HASH, "forged")]);
        let template = ObjectMetaTemplate { labels: map(&[("team", "web"), ("tier", "edge")]), ..Default::default() };
        let pod = build_solver_pod(&certificate(), &web_challenge(), &with_pod_template(Some(template), None), &ctx);
        let labels = labels_of(&pod.metadata);
        // (case, label, expected value)
        let cases = [
            ("a template-only label is kept", "tier", "edge"),
            ("an operator label wins over the template", "team", "platform"),
            ("an operator-only label is added", "release", "kacme-prod"),
            ("kacme's token hash wins over the operator", LABEL_TOKEN_HASH, &token_hash("tok-123")),
        ];
        for (case, key, want) in cases {
            assert_eq!(labels.get(key).map(String::as_str), Some(want), "{case}");
        }
    }

    #[test]
    fn a_context_sets_image_pull_policy_and_port() {
        let ctx = SolverContext { image_pull_policy: Some("IfNotPresent".into()), port: 9000, ..ctx() };
        let ingress = Http01Ingress::default();
        let pod = build_solver_pod(&certificate(), &web_challenge(), &ingress, &ctx);
        let service = build_solver_service(&certificate(), &web_challenge(), &ingress, &ctx);
        let solver_ingress = build_solver_ingress(&certificate(), &web_challenge(), &ingress, &ctx);
        let container = &pod_spec(&pod).containers[0];
        let backend_port = solver_ingress.spec.unwrap().rules.unwrap()[0].http.as_ref().unwrap().paths[0]
            .backend
            .service
            .as_ref()
            .unwrap()
            .port
            .clone()
            .unwrap();
        // (case, holds)
        let cases = [
            ("the pull policy is set", container.image_pull_policy.as_deref() == Some("IfNotPresent")),
            ("the solver listens on the port", container.args.as_ref().unwrap()[1] == "--listen=0.0.0.0:9000"),
            ("the container port is the port", container.ports.as_ref().unwrap()[0].container_port == 9000),
            ("the Service port is the port", service.spec.unwrap().ports.unwrap()[0].port == 9000),
            ("the Ingress backend port is the port", backend_port.number == Some(9000)),
        ];
        for (case, holds) in cases {
            assert!(holds, "{case}");
        }
    }

    #[test]
    fn a_solver_service_selects_only_its_own_pod() {
        let template = ObjectMetaTemplate { labels: map(&[("team", "web")]), ..Default::default() };
        // (case, service type, expected type)
        let cases = [
            ("no service type gives ClusterIP", None, "ClusterIP"),
            ("ClusterIP gives ClusterIP", Some(SolverServiceType::ClusterIP), "ClusterIP"),
            ("NodePort gives NodePort", Some(SolverServiceType::NodePort), "NodePort"),
        ];
        for (case, service_type, want) in cases {
            let ingress = Http01Ingress { service_type, ..with_pod_template(Some(template.clone()), None) };
            let pod = build_solver_pod(&certificate(), &web_challenge(), &ingress, &ctx());
            let service = build_solver_service(&certificate(), &web_challenge(), &ingress, &ctx());
            let spec = service.spec.clone().unwrap();
            let selector = spec.selector.clone().unwrap();
            let pod_labels = labels_of(&pod.metadata);
            assert_eq!(spec.type_.as_deref(), Some(want), "{case}");
            assert_eq!(service.metadata.name, pod.metadata.name, "{case}: same name as the Pod");
            assert_eq!(service.metadata.owner_references, pod.metadata.owner_references, "{case}: same owner");
            assert_eq!(
                selector.keys().collect::<Vec<_>>(),
                vec![LABEL_CERTIFICATE, LABEL_SOLVER, LABEL_TOKEN_HASH],
                "{case}: selects by kacme's labels only"
            );
            assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "{case}: selects the Pod");
            assert!(!labels_of(&service.metadata).contains_key("team"), "{case}: the pod template is the Pod's");
            let port = &spec.ports.unwrap()[0];
            assert_eq!(
                (port.name.as_deref(), port.port, port.target_port.clone()),
                (Some("http"), 8089, Some(IntOrString::String("http".into()))),
                "{case}"
            );
        }
    }

    #[test]
    fn solver_objects_of_two_challenges_do_not_select_each_other() {
        let ingress = Http01Ingress::default();
        let first = build_solver_service(&certificate(), &web_challenge(), &ingress, &ctx());
        let other = challenge("api.example.test", "tok-456", "https://ca.example.test/authz/2");
        let second = build_solver_pod(&certificate(), &other, &ingress, &ctx());
        let selector = first.spec.unwrap().selector.unwrap();
        let labels = labels_of(&second.metadata);
        assert!(!selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        assert_ne!(first.metadata.name, second.metadata.name);
    }

    #[test]
    fn a_solver_ingress_routes_the_challenge_path_to_the_service() {
        let ingress_with = |class: Option<&str>, path_type: Option<SolverPathType>| Http01Ingress {
            ingress_class_name: class.map(String::from),
            path_type,
            ..Default::default()
        };
        // (case, identifier, ingress config, expected host, class, path type)
        let cases = [
            (
                "a DNS name is the host",
                "web.example.test",
                ingress_with(None, None),
                Some("web.example.test"),
                None,
                "Exact",
            ),
            ("an IPv4 address gives no host", "10.1.2.3", ingress_with(None, None), None, None, "Exact"),
            ("an IPv6 address gives no host", "fd00::1", ingress_with(None, None), None, None, "Exact"),
            (
                "the ingress class is taken from the solver",
                "web.example.test",
                ingress_with(Some("nginx"), None),
                Some("web.example.test"),
                Some("nginx"),
                "Exact",
            ),
            (
                "pathType Prefix is taken from the solver",
                "web.example.test",
                ingress_with(None, Some(SolverPathType::Prefix)),
                Some("web.example.test"),
                None,
                "Prefix",
            ),
            (
                "pathType ImplementationSpecific is taken from the solver",
                "web.example.test",
                ingress_with(None, Some(SolverPathType::ImplementationSpecific)),
                Some("web.example.test"),
                None,
                "ImplementationSpecific",
            ),
        ];
        for (case, identifier, ingress, host, class, path_type) in cases {
            let challenge = challenge(identifier, "tok-123", AUTHZ);
            let built = build_solver_ingress(&certificate(), &challenge, &ingress, &ctx());
            let service = build_solver_service(&certificate(), &challenge, &ingress, &ctx());
            let spec = built.spec.unwrap();
            let rules = spec.rules.unwrap();
            assert_eq!(rules.len(), 1, "{case}: one rule");
            let paths = &rules[0].http.as_ref().unwrap().paths;
            assert_eq!(paths.len(), 1, "{case}: one path");
            let backend = paths[0].backend.service.clone().unwrap();
            assert_eq!(rules[0].host.as_deref(), host, "{case}");
            assert_eq!(spec.ingress_class_name.as_deref(), class, "{case}");
            assert_eq!(paths[0].path_type, path_type, "{case}");
            assert_eq!(paths[0].path.as_deref(), Some("/.well-known/acme-challenge/tok-123"), "{case}");
            assert_eq!(Some(backend.name), service.metadata.name, "{case}: the backend is the solver Service");
            assert_eq!(backend.port.unwrap().number, Some(8089), "{case}");
        }
    }

    #[test]
    fn an_ingress_template_adds_labels_and_annotations_but_not_over_kacme_labels() {
        let ingress = Http01Ingress {
            ingress_template: Some(SolverIngressTemplate {
                metadata: Some(ObjectMetaTemplate {
                    labels: map(&[("team", "web"), (LABEL_CERTIFICATE, "someone-else")]),
                    annotations: map(&[("nginx.ingress.kubernetes.io/whitelist-source-range", "0.0.0.0/0")]),
                }),
            }),
            ..Default::default()
        };
        let built = build_solver_ingress(&certificate(), &web_challenge(), &ingress, &ctx());
        let pod = build_solver_pod(&certificate(), &web_challenge(), &ingress, &ctx());
        let labels = labels_of(&built.metadata);
        assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(labels[LABEL_CERTIFICATE], "web");
        assert!(built.metadata.annotations.unwrap().contains_key("nginx.ingress.kubernetes.io/whitelist-source-range"));
        assert_eq!(built.metadata.owner_references, pod.metadata.owner_references);
        assert!(!labels_of(&pod.metadata).contains_key("team"), "the ingress template is the Ingress's");
    }

    #[test]
    fn a_solver_service_and_ingress_are_handed_to_the_solver_pod_alone() {
        let certificate = crate::desired::testing::certificate();
        let ingress = Http01Ingress::default();
        let mut pod = build_solver_pod(&certificate, &web_challenge(), &ingress, &ctx());
        let mut service = build_solver_service(&certificate, &web_challenge(), &ingress, &ctx());
        assert!(!hand_to_solver_pod(&mut service.metadata, &pod), "a Pod not yet created has no uid");
        assert_eq!(service.metadata.owner_references, pod.metadata.owner_references, "still the Certificate's");
        pod.metadata.uid = Some("pod-uid".into());
        assert!(hand_to_solver_pod(&mut service.metadata, &pod));
        let owners = service.metadata.owner_references.expect("an owner");
        assert_eq!(owners.len(), 1, "the Pod alone: the collector removes an object only once all owners are gone");
        let owner = &owners[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Pod", pod.metadata.name.as_deref().unwrap(), "pod-uid", Some(true), None)
        );
    }

    #[test]
    fn a_certificate_without_uid_gives_objects_without_owner_instead_of_failing() {
        let mut certificate = certificate();
        certificate.metadata.uid = None;
        let ingress = Http01Ingress::default();
        // (case, owner references)
        let cases = [
            ("the Pod", build_solver_pod(&certificate, &web_challenge(), &ingress, &ctx()).metadata.owner_references),
            (
                "the Service",
                build_solver_service(&certificate, &web_challenge(), &ingress, &ctx()).metadata.owner_references,
            ),
            (
                "the Ingress",
                build_solver_ingress(&certificate, &web_challenge(), &ingress, &ctx()).metadata.owner_references,
            ),
        ];
        for (case, owners) in cases {
            assert_eq!(owners, None, "{case}");
        }
    }

    #[test]
    fn a_long_certificate_name_gives_valid_labels_and_names() {
        let mut certificate = certificate();
        certificate.metadata.name = Some(format!("{}.example", "w".repeat(200)));
        let pod = build_solver_pod(&certificate, &web_challenge(), &Http01Ingress::default(), &ctx());
        let labels = labels_of(&pod.metadata);
        assert!(labels[LABEL_CERTIFICATE].len() <= 63);
        assert!(crate::desired::testing::is_dns_1035_label(pod.metadata.name.as_deref().unwrap()));
        assert_eq!(pod.metadata.owner_references.unwrap()[0].name, certificate.metadata.name.unwrap());
    }
}
