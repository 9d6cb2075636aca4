//! What the admission webhook adds to a Pod whose template asks for per-Pod certificates
//! (`kacme.dev/per-pod: "true"` beside `kacme.dev/names` and an issuer annotation):
//!
//! - a native sidecar (an init container with `restartPolicy: Always`, so Jobs still complete) running
//!   `kacme agent`, hardened like the solver, whose startup probe holds the app containers back until the
//!   first certificate is written;
//! - a memory-backed `emptyDir` at [`MOUNT_PATH`], writable by the agent, read-only in the selected containers;
//! - a projected ServiceAccount token for kacme's audience, bound to the Pod, mounted in the agent only.

use crate::automatic::annotations::{
    ANNOTATION_CONTAINERS, ANNOTATION_NAMES, AnnotationError, IssuanceAnnotations, parse_containers, parse_issuance,
};
use crate::automatic::workload::{MOUNT_PATH, VOLUME_NAME, add, mount_in_containers, pointer};
use json_patch::Patch;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Pod template annotation: `"true"` gives each Pod its own key and certificate (see the module's doc).
pub const ANNOTATION_PER_POD: &str = "kacme.dev/per-pod";
/// Name of the agent's init container.
pub const AGENT_CONTAINER: &str = "kacme-agent";
/// Name of the projected token volume.
pub const TOKEN_VOLUME: &str = "kacme-agent-token";
/// Where the agent reads its token.
pub const TOKEN_DIR: &str = "/var/run/secrets/kacme.dev";
/// The token's file name in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";
/// The audience kacme checks tokens for, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "kacme.dev/agent";
/// The path of the operator endpoint that agents send their CSRs to.
pub const AGENT_PATH: &str = "/pod-certificate";
/// Lifetime of the projected token (the kubelet rotates it at 80%).
const TOKEN_SECONDS: i64 = 3600;

/// What a per-Pod template asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRequest {
    /// Issuer and options.
    pub issuance: IssuanceAnnotations,
    /// `kacme.dev/names`, placeholders and all (see [`super::names`]).
    pub names: String,
    /// Containers that get the files; `None` for all.
    pub containers: Option<Vec<String>>,
}

/// Whether annotations ask for per-Pod certificates.
pub fn is_per_pod(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(ANNOTATION_PER_POD).is_some_and(|v| v.trim() == "true")
}

/// The per-Pod request of `annotations`: `None` unless [`ANNOTATION_PER_POD`] is `"true"`; an error naming the
/// annotation when the rest does not parse.
pub fn parse_pod_request(annotations: &BTreeMap<String, String>) -> Result<Option<PodRequest>, AnnotationError> {
    match annotations.get(ANNOTATION_PER_POD).map(|v| v.trim()) {
        None => return Ok(None),
        Some("true") => {}
        Some("false") => return Ok(None),
        Some(other) => {
            return Err(AnnotationError {
                annotation: ANNOTATION_PER_POD,
                problem: format!("{other:?}: use \"true\" or \"false\""),
            });
        }
    }
    let issuance = parse_issuance(annotations)?.ok_or_else(|| AnnotationError {
        annotation: ANNOTATION_PER_POD,
        problem: "needs an issuer: add kacme.dev/issuer or kacme.dev/cluster-issuer".into(),
    })?;
    let names = annotations.get(ANNOTATION_NAMES).map(|n| n.trim().to_string()).unwrap_or_default();
    super::names::check_name_templates(&names)
        .map_err(|e| AnnotationError { annotation: ANNOTATION_NAMES, problem: e.0 })?;
    let containers = annotations.get(ANNOTATION_CONTAINERS).map(|v| parse_containers(v)).transpose()?;
    Ok(Some(PodRequest { issuance, names, containers }))
}

/// How the agent is run and reaches the operator (from the operator's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    /// The agent's image: the operator's own.
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The endpoint's URL, `https://<host>:<port>/pod-certificate`; its host is the name the serving
    /// certificate must carry.
    pub url: String,
    /// Where to connect instead of resolving the URL's host (the webhook Service's cluster IP and port:
    /// nothing depends on cluster DNS).
    pub connect: Option<String>,
    /// The CA that signs the endpoint's serving certificate (PEM).
    pub ca_bundle: String,
    /// The audience of the projected token.
    pub audience: String,
}

fn conflict(problem: String) -> AnnotationError {
    AnnotationError { annotation: ANNOTATION_PER_POD, problem }
}

/// The agent's init container.
pub fn agent_container(request: &PodRequest, settings: &AgentSettings) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    // The Pod's name for its logs; the names to certify come from the operator, which reads the Pod.
    let mut env = vec![field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace")];
    let mut plain = vec![
        ("KACME_AGENT_URL", settings.url.clone()),
        ("KACME_AGENT_CA", settings.ca_bundle.clone()),
        ("KACME_AGENT_DIR", MOUNT_PATH.to_string()),
        ("KACME_AGENT_TOKEN", format!("{TOKEN_DIR}/{TOKEN_FILE}")),
    ];
    if let Some(connect) = &settings.connect {
        plain.push(("KACME_AGENT_CONNECT", connect.clone()));
    }
    if let Some(name) =
        request.issuance.algorithm.and_then(|a| serde_json::to_value(a).ok()?.as_str().map(String::from))
    {
        plain.push(("KACME_AGENT_KEY_ALGORITHM", name));
    }
    env.extend(plain.into_iter().map(|(name, value)| json!({"name": name, "value": value})));
    let mut container = json!({
        "name": AGENT_CONTAINER,
        "image": settings.image,
        "args": ["agent"],
        "restartPolicy": "Always",
        "env": env,
        "volumeMounts": [
            {"name": VOLUME_NAME, "mountPath": MOUNT_PATH},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
        // The app containers start once this succeeds: the first certificate is on disk.
        "startupProbe": {
            "exec": {"command": ["/kacme", "agent", "--check"]},
            "periodSeconds": 1,
            "failureThreshold": 600,
        },
        "readinessProbe": {
            "exec": {"command": ["/kacme", "agent", "--check"]},
            "periodSeconds": 10,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "200m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if let Some(policy) = &settings.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    container
}

/// The JSON patch that adds the agent, its token, the shared volume and the read-only mounts to `pod`.
pub fn per_pod_patch(pod: &Pod, request: &PodRequest, settings: &AgentSettings) -> Result<Patch, AnnotationError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let selected: Vec<usize> = match &request.containers {
        None => (0..spec.containers.len()).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                spec.containers.iter().position(|c| &c.name == name).ok_or_else(|| AnnotationError {
                    annotation: ANNOTATION_CONTAINERS,
                    problem: format!("the Pod has no container {name:?}"),
                })
            })
            .collect::<Result<_, _>>()?,
    };
    for volume in [VOLUME_NAME, TOKEN_VOLUME] {
        if spec.volumes.iter().flatten().any(|v| v.name == volume) {
            return Err(conflict(format!("the Pod already has a volume named {volume}, which kacme would add")));
        }
    }
    if spec.init_containers.iter().flatten().chain(&spec.containers).any(|c| c.name == AGENT_CONTAINER) {
        return Err(conflict(format!("the Pod already has a container named {AGENT_CONTAINER}")));
    }
    let mut operations = Vec::new();
    let volumes = [
        json!({"name": VOLUME_NAME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": settings.audience, "expirationSeconds": TOKEN_SECONDS, "path": TOKEN_FILE,
        }}]}}),
    ];
    if spec.volumes.is_none() {
        operations.push(add(pointer(&["spec", "volumes"]), json!(volumes)));
    } else {
        operations.extend(volumes.into_iter().map(|v| add(pointer(&["spec", "volumes", "-"]), v)));
    }
    // First among the init containers, so that those after it may use the certificate too.
    let agent = agent_container(request, settings);
    if spec.init_containers.is_none() {
        operations.push(add(pointer(&["spec", "initContainers"]), json!([agent])));
    } else {
        operations.push(add(pointer(&["spec", "initContainers", "0"]), agent));
    }
    operations.extend(mount_in_containers(&spec, selected).map_err(conflict)?);
    Ok(Patch(operations))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automatic::annotations::ANNOTATION_ISSUER;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn settings() -> AgentSettings {
        AgentSettings {
            image: "ghcr.io/kacme/kacme:0.1.0".into(),
            image_pull_policy: Some("Never".into()),
            url: "https://kacme-webhook.kacme.svc:443/pod-certificate".into(),
            connect: Some("10.0.0.17:443".into()),
            ca_bundle: "-----BEGIN CERTIFICATE-----\n...".into(),
            audience: DEFAULT_AUDIENCE.into(),
        }
    }

    fn pod(init: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"generateName": "web-"},
            "spec": {
                "initContainers": if init { json!([{"name": "migrate", "image": "m"}]) } else { Value::Null },
                "containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "p", "volumeMounts": []}],
            }
        }))
        .unwrap()
    }

    fn patched(pod: &Pod, request: &PodRequest) -> Pod {
        let patch = per_pod_patch(pod, request, &settings()).unwrap();
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_per_pod_true_asks_and_bad_values_are_named() {
        let base = [(ANNOTATION_NAMES, "${POD_NAME}.web.apps.svc"), (ANNOTATION_ISSUER, "ca")];
        assert_eq!(parse_pod_request(&annotations(&base)).unwrap(), None);
        let off = annotations(&[base[0], base[1], (ANNOTATION_PER_POD, "false")]);
        assert_eq!(parse_pod_request(&off).unwrap(), None);
        let on = annotations(&[base[0], base[1], (ANNOTATION_PER_POD, "true")]);
        assert_eq!(parse_pod_request(&on).unwrap().unwrap().names, "${POD_NAME}.web.apps.svc");
        let cases = [
            (vec![(ANNOTATION_PER_POD, "yes"), base[0], base[1]], ANNOTATION_PER_POD),
            (vec![(ANNOTATION_PER_POD, "true"), base[0]], ANNOTATION_PER_POD),
            (vec![(ANNOTATION_PER_POD, "true"), (ANNOTATION_NAMES, "${POD}.x"), base[1]], ANNOTATION_NAMES),
            (vec![(ANNOTATION_PER_POD, "true"), base[1]], ANNOTATION_NAMES),
        ];
        for (pairs, annotation) in cases {
            let error = parse_pod_request(&annotations(&pairs)).unwrap_err();
            assert_eq!(error.annotation, annotation, "{pairs:?}: {error}");
        }
    }

    #[test]
    fn the_agent_runs_first_as_a_native_sidecar_and_only_it_sees_the_token() {
        let on =
            annotations(&[(ANNOTATION_PER_POD, "true"), (ANNOTATION_NAMES, "${POD_IP}"), (ANNOTATION_ISSUER, "ca")]);
        let request = parse_pod_request(&on).unwrap().unwrap();
        for init in [false, true] {
            let pod = patched(&pod(init), &request);
            let spec = pod.spec.unwrap();
            let inits = spec.init_containers.unwrap();
            assert_eq!(inits[0].name, AGENT_CONTAINER);
            assert_eq!(inits[0].restart_policy.as_deref(), Some("Always"));
            assert!(inits[0].startup_probe.is_some());
            assert_eq!(inits.len(), if init { 2 } else { 1 });
            let volumes = spec.volumes.unwrap();
            let shared = volumes.iter().find(|v| v.name == VOLUME_NAME).unwrap();
            assert_eq!(shared.empty_dir.as_ref().unwrap().medium.as_deref(), Some("Memory"));
            let token = volumes.iter().find(|v| v.name == TOKEN_VOLUME).unwrap().projected.clone().unwrap();
            let source = token.sources.unwrap()[0].service_account_token.clone().unwrap();
            assert_eq!(source.audience.as_deref(), Some(DEFAULT_AUDIENCE));
            for container in &spec.containers {
                let mounts = container.volume_mounts.clone().unwrap();
                assert!(
                    mounts.iter().any(|m| m.name == VOLUME_NAME && m.read_only == Some(true)),
                    "{}",
                    container.name
                );
                assert!(mounts.iter().all(|m| m.name != TOKEN_VOLUME), "{}", container.name);
            }
        }
    }

    #[test]
    fn a_pod_with_kacmes_names_taken_is_refused() {
        let on = annotations(&[(ANNOTATION_PER_POD, "true"), (ANNOTATION_NAMES, "a.test"), (ANNOTATION_ISSUER, "ca")]);
        let request = parse_pod_request(&on).unwrap().unwrap();
        let mut taken = pod(false);
        taken.spec.as_mut().unwrap().containers[0].name = AGENT_CONTAINER.into();
        assert!(per_pod_patch(&taken, &request, &settings()).unwrap_err().problem.contains(AGENT_CONTAINER));
        let only = PodRequest { containers: Some(vec!["nope".into()]), ..request };
        assert_eq!(per_pod_patch(&pod(false), &only, &settings()).unwrap_err().annotation, ANNOTATION_CONTAINERS);
    }
}
