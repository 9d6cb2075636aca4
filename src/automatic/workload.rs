//! Workload certificates: what the admission webhook adds to a Pod, and the Certificate per workload that
//! the controller keeps from the Pods the webhook marked.

use super::annotations::{
    ANNOTATION_CONTAINERS, ANNOTATION_NAMES, AnnotationError, IssuanceAnnotations, LABEL_SOURCE, LABEL_WORKLOAD,
    SOURCE_WORKLOAD, parse_containers, parse_issuance, parse_names,
};
use super::certificate::{build_certificate, spec_from_annotations};
use crate::api::{Certificate, KeyUsage};
use crate::desired::certificate_label_value;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Where the workload's Secret is mounted in each selected container (tls.crt, tls.key, ca.crt).
pub const MOUNT_PATH: &str = "/var/run/kacme";
/// Name of the volume the webhook adds.
pub const VOLUME_NAME: &str = "kacme-tls";

/// What a pod template's annotations ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRequest {
    /// Issuer and options.
    pub issuance: IssuanceAnnotations,
    /// DNS names to certify.
    pub dns_names: Vec<String>,
    /// IP addresses to certify.
    pub ip_addresses: Vec<String>,
    /// Containers that get the mount; `None` for all.
    pub containers: Option<Vec<String>>,
}

/// The workload certificate request of a Pod's annotations; `None` when the Pod asks for nothing
/// (neither `kacme.dev/names` nor an issuer annotation).
pub fn parse_workload_request(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<WorkloadRequest>, AnnotationError> {
    let names = annotations.get(ANNOTATION_NAMES);
    let issuance = parse_issuance(annotations)?;
    let (names, issuance) = match (names, issuance) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(AnnotationError {
                annotation: ANNOTATION_NAMES,
                problem: "needs an issuer: add kacme.dev/issuer or kacme.dev/cluster-issuer".into(),
            });
        }
        (None, Some(_)) => {
            return Err(AnnotationError {
                annotation: ANNOTATION_NAMES,
                problem: "missing: list the DNS names and IP addresses to certify, comma-separated".into(),
            });
        }
        (Some(names), Some(issuance)) => (parse_names(names)?, issuance),
    };
    let containers = annotations.get(ANNOTATION_CONTAINERS).map(|v| parse_containers(v)).transpose()?;
    Ok(Some(WorkloadRequest { issuance, dns_names: names.dns_names, ip_addresses: names.ip_addresses, containers }))
}

/// The name of the workload a Pod belongs to, from its controller: a ReplicaSet's Deployment (the
/// ReplicaSet name without the pod-template-hash), a StatefulSet, DaemonSet or Job, else the Pod itself (its
/// name, or its generateName without the trailing dash when the apiserver has not named it yet).
pub fn workload_name(metadata: &ObjectMeta) -> String {
    let owner: Option<&OwnerReference> =
        metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if let Some(owner) = owner {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let hash = metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
                if let Some(base) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                    return base.to_string();
                }
                return match owner.name.rsplit_once('-') {
                    Some((base, _)) if !base.is_empty() => base.to_string(),
                    _ => owner.name.clone(),
                };
            }
            "StatefulSet" | "DaemonSet" | "Job" | "Deployment" => return owner.name.clone(),
            _ => {}
        }
    }
    match (&metadata.name, &metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => prefix.trim_end_matches('-').to_string(),
        _ => "pod".into(),
    }
}

/// The value of the `kacme.dev/workload` label for a workload name (a label value: 63 characters at most).
pub fn workload_label_value(workload: &str) -> String {
    certificate_label_value(workload).to_ascii_lowercase()
}

/// The name of a workload's Certificate: `<workload label value>-kacme`.
pub fn workload_certificate_name(label_value: &str) -> String {
    format!("{label_value}-kacme")
}

/// The name of a workload's Secret: `<workload label value>-kacme-tls`.
pub fn workload_secret_name(label_value: &str) -> String {
    format!("{label_value}-kacme-tls")
}

/// How the webhook answers for one Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAdmission {
    /// Leave the Pod as it is.
    Untouched,
    /// Apply this JSON patch.
    Patch(Patch),
    /// Refuse the Pod with this message.
    Deny(String),
}

/// What the webhook does with a Pod being created: nothing unless it carries the annotations; with them, a
/// read-only Secret volume at [`MOUNT_PATH`] in each selected container and the `kacme.dev/workload` label.
/// Invalid annotations deny the Pod with a message that names the annotation.
pub fn admit_pod(pod: &Pod) -> PodAdmission {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let request = match parse_workload_request(&annotations) {
        Ok(None) => return PodAdmission::Untouched,
        Ok(Some(request)) => request,
        Err(error) => return PodAdmission::Deny(format!("kacme: {error}")),
    };
    match pod_patch(pod, &request) {
        Ok(patch) => PodAdmission::Patch(patch),
        Err(error) => PodAdmission::Deny(format!("kacme: {error}")),
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// The JSON patch that adds the volume, the mounts and the label to `pod`.
pub fn pod_patch(pod: &Pod, request: &WorkloadRequest) -> Result<Patch, AnnotationError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let selected: Vec<usize> = match &request.containers {
        None => (0..spec.containers.len()).collect(),
        Some(names) => {
            let mut indexes = Vec::new();
            for name in names {
                let Some(index) = spec.containers.iter().position(|c| &c.name == name) else {
                    let known: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                    return Err(AnnotationError {
                        annotation: ANNOTATION_CONTAINERS,
                        problem: format!("the Pod has no container {name:?} (containers: {})", known.join(", ")),
                    });
                };
                indexes.push(index);
            }
            indexes
        }
    };
    let workload = workload_label_value(&workload_name(&pod.metadata));
    let mut operations = Vec::new();
    if pod.metadata.labels.is_none() {
        operations.push(add(pointer(&["metadata", "labels"]), json!({ LABEL_WORKLOAD: workload })));
    } else {
        operations.push(add(pointer(&["metadata", "labels", LABEL_WORKLOAD]), json!(workload)));
    }
    if spec.volumes.iter().flatten().any(|v| v.name == VOLUME_NAME) {
        return Err(AnnotationError {
            annotation: ANNOTATION_NAMES,
            problem: format!("the Pod already has a volume named {VOLUME_NAME}, which kacme would add"),
        });
    }
    let volume = json!({
        "name": VOLUME_NAME,
        "secret": {"secretName": workload_secret_name(&workload)},
    });
    if spec.volumes.is_none() {
        operations.push(add(pointer(&["spec", "volumes"]), json!([volume])));
    } else {
        operations.push(add(pointer(&["spec", "volumes", "-"]), volume));
    }
    let mount = json!({"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": true});
    for index in selected {
        let container = &spec.containers[index];
        if container.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH) {
            return Err(AnnotationError {
                annotation: ANNOTATION_NAMES,
                problem: format!("container {:?} already mounts something at {MOUNT_PATH}", container.name),
            });
        }
        let index = index.to_string();
        if container.volume_mounts.is_none() {
            operations.push(add(pointer(&["spec", "containers", &index, "volumeMounts"]), json!([mount])));
        } else {
            operations.push(add(pointer(&["spec", "containers", &index, "volumeMounts", "-"]), mount.clone()));
        }
    }
    Ok(Patch(operations))
}

/// The metadata of a Pod as the workload controller sees it (a metadata-only watch).
#[derive(Debug, Clone)]
pub struct MarkedPod {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's metadata: labels (with `kacme.dev/workload`), annotations, creation time.
    pub metadata: ObjectMeta,
}

/// The Certificates the marked Pods need: one per (namespace, workload), from the annotations of the
/// workload's newest Pod (so that a rollout with new names moves the Certificate along). Pods whose
/// annotations no longer parse are ignored (the webhook refused such Pods at creation).
pub fn desired_workload_certificates(pods: &[MarkedPod]) -> Vec<Certificate> {
    let mut newest: BTreeMap<(String, String), &MarkedPod> = BTreeMap::new();
    for pod in pods {
        let Some(workload) = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_WORKLOAD)) else { continue };
        if parse_workload_request(pod.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()))
            .ok()
            .flatten()
            .is_none()
        {
            continue;
        }
        let key = (pod.namespace.clone(), workload.clone());
        let replace = newest.get(&key).is_none_or(|current| {
            let created = |p: &MarkedPod| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.metadata.name.clone());
            created(pod) > created(current)
        });
        if replace {
            newest.insert(key, pod);
        }
    }
    let mut certificates = Vec::new();
    for ((namespace, workload), pod) in newest {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let Ok(Some(request)) = parse_workload_request(&annotations) else { continue };
        certificates.push(build_workload_certificate(&namespace, &workload, &request));
    }
    certificates
}

/// The Certificate of one workload: server auth and client auth, the names and issuer of its annotations.
pub fn build_workload_certificate(namespace: &str, workload_label: &str, request: &WorkloadRequest) -> Certificate {
    let labels = BTreeMap::from([
        (LABEL_SOURCE.to_string(), SOURCE_WORKLOAD.to_string()),
        (LABEL_WORKLOAD.to_string(), workload_label.to_string()),
    ]);
    let spec = spec_from_annotations(
        &workload_secret_name(workload_label),
        &request.issuance,
        request.dns_names.clone(),
        request.ip_addresses.clone(),
        vec![KeyUsage::ServerAuth, KeyUsage::ClientAuth],
    );
    build_certificate(namespace, &workload_certificate_name(workload_label), labels, None, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automatic::annotations::{ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER};
    use k8s_openapi::api::core::v1::{Container, PodSpec, Volume, VolumeMount};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn meta(owner: Option<OwnerReference>, labels: &[(&str, &str)], name: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: name.map(str::to_string),
            generate_name: Some("web-5d8f7b-".into()),
            owner_references: owner.map(|o| vec![o]),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_workload_is_named_after_the_pods_controller() {
        let cases = [
            (
                "a Deployment's ReplicaSet loses its hash",
                meta(Some(owner("ReplicaSet", "web-5d8f7b")), &[("pod-template-hash", "5d8f7b")], None),
                "web",
            ),
            (
                "a ReplicaSet without the hash label loses its last part",
                meta(Some(owner("ReplicaSet", "api-v2-abc12")), &[], None),
                "api-v2",
            ),
            ("a StatefulSet", meta(Some(owner("StatefulSet", "db")), &[], Some("db-0")), "db"),
            ("a DaemonSet", meta(Some(owner("DaemonSet", "agent")), &[], None), "agent"),
            ("a Job", meta(Some(owner("Job", "migrate")), &[], None), "migrate"),
            ("a bare Pod with a name", meta(None, &[], Some("debug")), "debug"),
            ("a bare Pod with only generateName", meta(None, &[], None), "web-5d8f7b"),
            ("an unknown controller", meta(Some(owner("Rollout", "r")), &[], Some("x")), "x"),
        ];
        for (case, metadata, expected) in cases {
            assert_eq!(workload_name(&metadata), expected, "{case}");
        }
    }

    fn pod(annotations: &[(&str, &str)], containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..meta(Some(owner("ReplicaSet", "web-5d8f7b")), &[("pod-template-hash", "5d8f7b")], None)
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container { name: n.to_string(), ..Container::default() })
                    .collect(),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn patched(pod: &Pod) -> Pod {
        let PodAdmission::Patch(patch) = admit_pod(pod) else { panic!("expected a patch: {:?}", admit_pod(pod)) };
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn mounts(pod: &Pod, container: usize) -> Vec<(String, String, Option<bool>)> {
        pod.spec.as_ref().unwrap().containers[container]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect()
    }

    const ANNOTATED: &[(&str, &str)] = &[(ANNOTATION_NAMES, "web.apps.test"), (ANNOTATION_ISSUER, "ca")];

    #[test]
    fn a_pod_without_annotations_is_untouched() {
        assert_eq!(admit_pod(&pod(&[("other", "x")], &["app"])), PodAdmission::Untouched);
    }

    #[test]
    fn an_annotated_pod_gets_the_volume_the_mounts_and_the_label_and_nothing_else() {
        let original = pod(ANNOTATED, &["app", "sidecar"]);
        let pod = patched(&original);
        let ours = (VOLUME_NAME.to_string(), MOUNT_PATH.to_string(), Some(true));
        assert_eq!(mounts(&pod, 0), std::slice::from_ref(&ours));
        assert_eq!(mounts(&pod, 1), [ours]);
        let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("web-kacme-tls"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[LABEL_WORKLOAD], "web");
        // Undo our three changes: what remains is the original Pod.
        let mut undone = pod.clone();
        undone.metadata.labels.as_mut().unwrap().remove(LABEL_WORKLOAD);
        undone.spec.as_mut().unwrap().volumes = None;
        for container in &mut undone.spec.as_mut().unwrap().containers {
            container.volume_mounts = None;
        }
        assert_eq!(undone, original);
    }

    #[test]
    fn existing_volumes_mounts_and_labels_are_kept() {
        let mut original = pod(
            &[(ANNOTATION_NAMES, "10.1.2.3"), (ANNOTATION_CLUSTER_ISSUER, "corp"), (ANNOTATION_CONTAINERS, "b")],
            &["a", "b"],
        );
        let spec = original.spec.as_mut().unwrap();
        spec.volumes = Some(vec![Volume { name: "data".into(), ..Volume::default() }]);
        spec.containers[1].volume_mounts =
            Some(vec![VolumeMount { name: "data".into(), mount_path: "/data".into(), ..VolumeMount::default() }]);
        let pod = patched(&original);
        assert!(mounts(&pod, 0).is_empty(), "container a was not selected");
        assert_eq!(mounts(&pod, 1).len(), 2);
        assert_eq!(pod.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(), 2);
        assert_eq!(pod.metadata.labels.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn bad_annotations_deny_the_pod_with_the_annotation_and_the_problem() {
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("names without issuer", &[(ANNOTATION_NAMES, "a.test")], "annotation kacme.dev/names: needs an issuer"),
            ("issuer without names", &[(ANNOTATION_ISSUER, "ca")], "annotation kacme.dev/names: missing"),
            (
                "a bad name",
                &[(ANNOTATION_NAMES, "a b"), (ANNOTATION_ISSUER, "ca")],
                "annotation kacme.dev/names: \"a b\"",
            ),
            (
                "an unknown container",
                &[(ANNOTATION_NAMES, "a.test"), (ANNOTATION_ISSUER, "ca"), (ANNOTATION_CONTAINERS, "nope")],
                "annotation kacme.dev/containers: the Pod has no container \"nope\"",
            ),
        ];
        for (case, annotations, expected) in cases {
            match admit_pod(&pod(annotations, &["app"])) {
                PodAdmission::Deny(message) => assert!(message.contains(expected), "{case}: {message}"),
                other => panic!("{case}: {other:?}"),
            }
        }
    }

    fn marked(namespace: &str, workload: &str, names: &str, created: i64, name: &str) -> MarkedPod {
        MarkedPod {
            namespace: namespace.into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(LABEL_WORKLOAD.to_string(), workload.to_string())])),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_NAMES.to_string(), names.to_string()),
                    (ANNOTATION_ISSUER.to_string(), "ca".to_string()),
                ])),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
        }
    }

    #[test]
    fn one_certificate_per_workload_from_its_newest_pod() {
        let pods = [
            marked("apps", "web", "old.test", 100, "web-a"),
            marked("apps", "web", "new.test, 10.0.0.1", 200, "web-b"),
            marked("apps", "api", "api.test", 100, "api-a"),
            marked("other", "web", "web.other.test", 100, "web-c"),
        ];
        let certificates = desired_workload_certificates(&pods);
        let summary: Vec<(String, String, Vec<String>, Vec<String>)> = certificates
            .iter()
            .map(|c| {
                (
                    c.metadata.namespace.clone().unwrap(),
                    c.metadata.name.clone().unwrap(),
                    c.spec.dns_names.clone(),
                    c.spec.ip_addresses.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("apps".into(), "api-kacme".into(), vec!["api.test".to_string()], vec![]),
                ("apps".into(), "web-kacme".into(), vec!["new.test".to_string()], vec!["10.0.0.1".to_string()]),
                ("other".into(), "web-kacme".into(), vec!["web.other.test".to_string()], vec![]),
            ]
        );
        for certificate in &certificates {
            assert_eq!(certificate.spec.usages, [KeyUsage::ServerAuth, KeyUsage::ClientAuth]);
            assert_eq!(certificate.spec.secret_name, format!("{}-tls", certificate.metadata.name.as_deref().unwrap()));
            assert!(certificate.metadata.owner_references.is_none());
        }
    }

    #[test]
    fn no_marked_pods_means_no_certificates() {
        assert!(desired_workload_certificates(&[]).is_empty());
    }
}
