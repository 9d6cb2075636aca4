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
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Label on a workload Certificate: the kind of the workload it is for (`Deployment`, `StatefulSet`,
/// `DaemonSet`, `Job`, `ReplicaSet` or `Pod`).
pub const LABEL_WORKLOAD_KIND: &str = "kacme.dev/workload-kind";
/// Label on a workload Certificate: the UID of the workload it is for. Another workload whose Pods would map
/// to the same Certificate name does not get it while this one has Pods.
pub const LABEL_WORKLOAD_UID: &str = "kacme.dev/workload-uid";

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
/// (neither `kacme.dev/names` nor an issuer annotation) or for per-Pod certificates (`kacme.dev/per-pod`).
pub fn parse_workload_request(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<WorkloadRequest>, AnnotationError> {
    // Per-Pod certificates are the agent's, not a Secret per workload.
    if crate::pod_certificate::sidecar::is_per_pod(annotations) {
        return Ok(None);
    }
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

/// A JSON pointer from its tokens (escaped as JSON pointers need).
pub(crate) fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// A JSON patch `add` operation.
pub(crate) fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// The operations that mount the volume [`VOLUME_NAME`] read-only at [`MOUNT_PATH`] in the containers of
/// `spec` at `selected`; the problem, naming the container, when one mounts something there already.
pub(crate) fn mount_in_containers(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    selected: impl IntoIterator<Item = usize>,
) -> Result<Vec<PatchOperation>, String> {
    let mut operations = Vec::new();
    let mount = json!({"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": true});
    for index in selected {
        let container = &spec.containers[index];
        if container.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH) {
            return Err(format!("container {:?} already mounts something at {MOUNT_PATH}", container.name));
        }
        let index = index.to_string();
        if container.volume_mounts.is_none() {
            operations.push(add(pointer(&["spec", "containers", &index, "volumeMounts"]), json!([mount])));
        } else {
            operations.push(add(pointer(&["spec", "containers", &index, "volumeMounts", "-"]), mount.clone()));
        }
    }
    Ok(operations)
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
    operations.extend(
        mount_in_containers(&spec, selected)
            .map_err(|problem| AnnotationError { annotation: ANNOTATION_NAMES, problem })?,
    );
    Ok(Patch(operations))
}

/// Kinds of controller whose pod template kacme reads to learn what a workload asks for (the Pods' own
/// annotations are not trusted for them: a Pod can claim any controller in its ownerReferences).
pub const TEMPLATE_OWNER_KINDS: [&str; 4] = ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"];

/// A workload as an object the cluster vouches for: the controller (Deployment, ReplicaSet, StatefulSet,
/// DaemonSet, Job) or, for a Pod without one of those, the Pod itself; recorded by UID on its Certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadIdentity {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job` or `Pod`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The object's UID.
    pub uid: String,
}

impl WorkloadIdentity {
    fn is_pod(&self) -> bool {
        self.kind == "Pod"
    }
}

/// The controller a Pod names in its ownerReferences, as the apiserver has it (read by the workload
/// controller).
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerFacts {
    /// The controller's kind, name and UID (the UID the Pod names, found on the object read).
    pub identity: WorkloadIdentity,
    /// The controller's own controller (a ReplicaSet's Deployment), as its ownerReference names it.
    pub controller: Option<OwnerReference>,
    /// The annotations of the controller's pod template: what the workload asks for.
    pub template_annotations: BTreeMap<String, String>,
}

/// What the workload controller knows about a Pod's controller.
#[derive(Debug, Clone, PartialEq)]
pub enum PodController {
    /// The Pod names no controller of a kind in [`TEMPLATE_OWNER_KINDS`]: the Pod is its own workload.
    None,
    /// The Pod's controller, read from the apiserver with the UID the Pod names.
    Found(ControllerFacts),
    /// The Pod names a controller that does not exist with that UID (or could not be read): the Pod counts
    /// for no workload.
    Unverified,
}

/// The metadata of a Pod as the workload controller sees it (a metadata-only watch), with its controller.
#[derive(Debug, Clone)]
pub struct MarkedPod {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's metadata: ownerReferences, annotations, creation time (its `kacme.dev/workload` label is an
    /// index only, never trusted).
    pub metadata: ObjectMeta,
    /// The Pod's controller, as read.
    pub controller: PodController,
}

/// The Pod's controller ownerReference when it is of a kind in [`TEMPLATE_OWNER_KINDS`]: the object whose
/// pod template the workload controller reads.
pub fn template_owner(metadata: &ObjectMeta) -> Option<&OwnerReference> {
    metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| TEMPLATE_OWNER_KINDS.contains(&o.kind.as_str()))
}

/// The workload of a Pod and the annotations that say what it asks for: a ReplicaSet's Deployment (from
/// the ReplicaSet's own controller reference), the controller itself, or the Pod (a Pod without a known
/// controller, whose annotations are its creator's); `None` for a Pod whose named controller was not found
/// with that UID, or a Pod without a UID.
pub fn workload_of(pod: &MarkedPod) -> Option<(WorkloadIdentity, &BTreeMap<String, String>)> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    match &pod.controller {
        PodController::Unverified => None,
        PodController::None => {
            let identity = WorkloadIdentity {
                kind: "Pod".into(),
                name: pod.metadata.name.clone()?,
                uid: pod.metadata.uid.clone().filter(|u| !u.is_empty())?,
            };
            Some((identity, pod.metadata.annotations.as_ref().unwrap_or(&EMPTY)))
        }
        PodController::Found(facts) => {
            let identity = match &facts.controller {
                Some(owner) if facts.identity.kind == "ReplicaSet" && owner.kind == "Deployment" => {
                    WorkloadIdentity { kind: owner.kind.clone(), name: owner.name.clone(), uid: owner.uid.clone() }
                }
                _ => facts.identity.clone(),
            };
            Some((identity, &facts.template_annotations))
        }
    }
}

/// The Certificates the marked Pods in `selected` namespaces need: one per (namespace, workload name as
/// the webhook names it, see [`workload_name`]), for the workload of the newest Pod, from the annotations
/// of that Pod's controller's template (of the Pod itself when it has none). Pods outside `selected`, Pods
/// whose controller is not found with the UID they name, and annotations that do not parse count for
/// nothing; the Pod's `kacme.dev/workload` label is ignored.
///
/// When workloads of different identity would share a Certificate (a bare Pod named like a Deployment,
/// say), the one `existing` records keeps it; without such a record, a controller wins over a bare Pod,
/// then the lowest UID. A Pod can thus neither attach itself to, nor take over, another workload's
/// Certificate.
pub fn desired_workload_certificates(
    pods: &[MarkedPod],
    selected: &BTreeSet<String>,
    existing: &[Certificate],
) -> Vec<Certificate> {
    // (namespace, Certificate name) -> workload -> (newest Pod's creation, its request)
    type Claims = BTreeMap<WorkloadIdentity, (Option<jiff::Timestamp>, Option<String>, WorkloadRequest)>;
    let mut claims: BTreeMap<(String, String), Claims> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selected.contains(&p.namespace)) {
        let Some((identity, annotations)) = workload_of(pod) else { continue };
        let Ok(Some(request)) = parse_workload_request(annotations) else { continue };
        let label = workload_label_value(&workload_name(&pod.metadata));
        let created = (pod.metadata.creation_timestamp.clone().map(|t| t.0), pod.metadata.name.clone());
        let workloads = claims.entry((pod.namespace.clone(), label)).or_default();
        let newer = workloads.get(&identity).is_none_or(|(at, name, _)| created > (*at, name.clone()));
        if newer {
            workloads.insert(identity, (created.0, created.1, request));
        }
    }
    let mut certificates = Vec::new();
    for ((namespace, label), workloads) in claims {
        let recorded = existing
            .iter()
            .find(|c| {
                c.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && c.metadata.name.as_deref() == Some(workload_certificate_name(&label).as_str())
            })
            .and_then(|c| c.labels().get(LABEL_WORKLOAD_UID).cloned());
        let chosen = workloads
            .iter()
            .find(|(identity, _)| recorded.as_deref() == Some(identity.uid.as_str()))
            .or_else(|| workloads.iter().min_by_key(|(identity, _)| (identity.is_pod(), identity.uid.clone())));
        if let Some((identity, (_, _, request))) = chosen {
            certificates.push(build_workload_certificate(&namespace, &label, identity, request));
        }
    }
    certificates
}

/// The Certificate of one workload: server auth and client auth, the names and issuer of its annotations,
/// labelled with the workload's kind and UID ([`LABEL_WORKLOAD_KIND`], [`LABEL_WORKLOAD_UID`]).
pub fn build_workload_certificate(
    namespace: &str,
    workload_label: &str,
    identity: &WorkloadIdentity,
    request: &WorkloadRequest,
) -> Certificate {
    let labels = BTreeMap::from([
        (LABEL_SOURCE.to_string(), SOURCE_WORKLOAD.to_string()),
        (LABEL_WORKLOAD.to_string(), workload_label.to_string()),
        (LABEL_WORKLOAD_KIND.to_string(), identity.kind.clone()),
        (LABEL_WORKLOAD_UID.to_string(), identity.uid.clone()),
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

    const UID_WEB: &str = "uid-deployment-web";

    /// A Pod `name` in `namespace`, created at `created`, controlled by `controller` (or bare), with its own
    /// annotations asking for `names` and the label `kacme.dev/workload: web` (which decides nothing).
    fn marked(namespace: &str, name: &str, names: &str, created: i64, controller: PodController) -> MarkedPod {
        let owner = match &controller {
            PodController::Found(facts) => Some(owner(&facts.identity.kind, &facts.identity.name)),
            PodController::Unverified => Some(owner("ReplicaSet", "web-5d8f7b")),
            PodController::None => None,
        };
        MarkedPod {
            namespace: namespace.into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-pod-{name}")),
                labels: Some(BTreeMap::from([
                    (LABEL_WORKLOAD.to_string(), "web".to_string()),
                    ("pod-template-hash".to_string(), "5d8f7b".to_string()),
                ])),
                annotations: Some(request_annotations(names)),
                owner_references: owner.map(|o| vec![o]),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            controller,
        }
    }

    fn request_annotations(names: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANNOTATION_NAMES.to_string(), names.to_string()),
            (ANNOTATION_ISSUER.to_string(), "ca".to_string()),
        ])
    }

    /// A ReplicaSet `name` of Deployment `deployment` (UID [`UID_WEB`] for `web`) whose template asks for
    /// `names`.
    fn replica_set(name: &str, deployment: &str, names: &str) -> PodController {
        let mut deployment_owner = owner("Deployment", deployment);
        deployment_owner.uid =
            if deployment == "web" { UID_WEB.into() } else { format!("uid-deployment-{deployment}") };
        PodController::Found(ControllerFacts {
            identity: WorkloadIdentity { kind: "ReplicaSet".into(), name: name.into(), uid: format!("uid-rs-{name}") },
            controller: Some(deployment_owner),
            template_annotations: request_annotations(names),
        })
    }

    fn stateful_set(name: &str, names: &str) -> PodController {
        PodController::Found(ControllerFacts {
            identity: WorkloadIdentity {
                kind: "StatefulSet".into(),
                name: name.into(),
                uid: format!("uid-sts-{name}"),
            },
            controller: None,
            template_annotations: request_annotations(names),
        })
    }

    fn selected(namespaces: &[&str]) -> BTreeSet<String> {
        namespaces.iter().map(|n| n.to_string()).collect()
    }

    /// (namespace, name, DNS names, workload kind, workload UID) of each desired Certificate.
    fn summary(certificates: &[Certificate]) -> Vec<(String, String, Vec<String>, String, String)> {
        certificates
            .iter()
            .map(|c| {
                (
                    c.metadata.namespace.clone().unwrap(),
                    c.metadata.name.clone().unwrap(),
                    c.spec.dns_names.clone(),
                    c.labels()[LABEL_WORKLOAD_KIND].clone(),
                    c.labels()[LABEL_WORKLOAD_UID].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn one_certificate_per_workload_from_its_newest_pods_controller_template() {
        let pods = [
            marked("apps", "web-5d8f7b-a", "ignored.test", 100, replica_set("web-5d8f7b", "web", "old.test")),
            marked("apps", "web-7c9d-b", "ignored.test", 200, replica_set("web-7c9d", "web", "new.test, 10.0.0.1")),
            marked("apps", "db-0", "ignored.test", 100, stateful_set("db", "db.test")),
            marked("other", "web-5d8f7b-c", "ignored.test", 100, replica_set("web-5d8f7b", "web", "web.other.test")),
        ];
        let certificates = desired_workload_certificates(&pods, &selected(&["apps", "other"]), &[]);
        assert_eq!(
            summary(&certificates),
            [
                ("apps".into(), "db-kacme".into(), vec!["db.test".into()], "StatefulSet".into(), "uid-sts-db".into()),
                ("apps".into(), "web-kacme".into(), vec!["new.test".into()], "Deployment".into(), UID_WEB.into()),
                (
                    "other".into(),
                    "web-kacme".into(),
                    vec!["web.other.test".into()],
                    "Deployment".into(),
                    UID_WEB.into()
                ),
            ]
        );
        for certificate in &certificates {
            assert_eq!(certificate.spec.usages, [KeyUsage::ServerAuth, KeyUsage::ClientAuth]);
            assert_eq!(certificate.spec.secret_name, format!("{}-tls", certificate.metadata.name.as_deref().unwrap()));
            assert!(certificate.metadata.owner_references.is_none());
        }
    }

    #[test]
    fn a_pod_can_neither_attach_itself_to_nor_take_over_another_workloads_certificate() {
        let deployment = marked("apps", "web-5d8f7b-a", "x", 100, replica_set("web-5d8f7b", "web", "web.apps.test"));
        let web_certificate = |recorded: Option<&str>| {
            let mut certificate = build_workload_certificate(
                "apps",
                "web",
                &WorkloadIdentity { kind: "Deployment".into(), name: "web".into(), uid: UID_WEB.into() },
                &parse_workload_request(&request_annotations("web.apps.test")).unwrap().unwrap(),
            );
            match recorded {
                Some(uid) => certificate.labels_mut().insert(LABEL_WORKLOAD_UID.into(), uid.into()),
                None => certificate.labels_mut().remove(LABEL_WORKLOAD_UID),
            };
            certificate
        };
        let web_only = vec![(
            "apps".to_string(),
            "web-kacme".to_string(),
            vec!["web.apps.test".to_string()],
            "Deployment".to_string(),
            UID_WEB.to_string(),
        )];
        // (case, Pods, existing Certificates, expected)
        let cases = [
            (
                "a bare Pod named like the workload, newer, and labelled as it",
                vec![deployment.clone(), marked("apps", "web", "evil.apps.test", 500, PodController::None)],
                vec![web_certificate(Some(UID_WEB))],
                web_only.clone(),
            ),
            (
                "the same before the workload's Certificate records its UID (a controller wins over a Pod)",
                vec![deployment.clone(), marked("apps", "web", "evil.apps.test", 500, PodController::None)],
                vec![web_certificate(None)],
                web_only.clone(),
            ),
            (
                "a Pod that names the workload's ReplicaSet, which has no such UID",
                vec![
                    deployment.clone(),
                    marked("apps", "web-5d8f7b-z", "evil.apps.test", 500, PodController::Unverified),
                ],
                vec![web_certificate(Some(UID_WEB))],
                web_only.clone(),
            ),
            (
                "a Pod that names the workload's real ReplicaSet gets the template's request, not its own",
                vec![
                    deployment.clone(),
                    marked(
                        "apps",
                        "web-5d8f7b-z",
                        "evil.apps.test",
                        500,
                        replica_set("web-5d8f7b", "web", "web.apps.test"),
                    ),
                ],
                vec![web_certificate(Some(UID_WEB))],
                web_only.clone(),
            ),
            (
                "a Pod in a namespace the webhook does not select",
                vec![deployment.clone(), marked("elsewhere", "web", "evil.apps.test", 500, PodController::None)],
                vec![web_certificate(Some(UID_WEB))],
                web_only.clone(),
            ),
            (
                "another Deployment whose Pods map to the same name",
                vec![
                    deployment.clone(),
                    marked(
                        "apps",
                        "web-99-a",
                        "evil.apps.test",
                        500,
                        replica_set("web-99", "web-other", "evil.apps.test"),
                    ),
                ],
                vec![web_certificate(Some(UID_WEB))],
                web_only.clone(),
            ),
        ];
        for (case, pods, existing, want) in cases {
            let certificates = desired_workload_certificates(&pods, &selected(&["apps"]), &existing);
            assert_eq!(summary(&certificates), want, "{case}");
        }
    }

    #[test]
    fn pods_outside_the_selected_namespaces_or_with_an_unverified_controller_need_no_certificate() {
        let pods = [
            marked("elsewhere", "debug", "debug.test", 100, PodController::None),
            marked("apps", "web-5d8f7b-a", "web.test", 100, PodController::Unverified),
        ];
        assert!(desired_workload_certificates(&pods, &selected(&["apps"]), &[]).is_empty());
    }

    #[test]
    fn a_bare_pod_is_its_own_workload_and_asks_with_its_own_annotations() {
        let pods = [marked("apps", "debug", "debug.test", 100, PodController::None)];
        let certificates = desired_workload_certificates(&pods, &selected(&["apps"]), &[]);
        assert_eq!(
            summary(&certificates),
            [("apps".into(), "debug-kacme".into(), vec!["debug.test".into()], "Pod".into(), "uid-pod-debug".into())]
        );
    }

    #[test]
    fn no_marked_pods_means_no_certificates() {
        assert!(desired_workload_certificates(&[], &selected(&["apps"]), &[]).is_empty());
    }
}
