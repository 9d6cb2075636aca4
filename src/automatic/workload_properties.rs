//! Properties of the admission webhook's answer to a Pod a tenant creates: whatever its annotations and
//! containers, the Pod is left alone, patched with a patch that applies, or denied with a message naming
//! the annotation; never a panic in the webhook.

use super::annotations::{
    ANNOTATION_CLUSTER_ISSUER, ANNOTATION_CONTAINERS, ANNOTATION_DURATION, ANNOTATION_ISSUER, ANNOTATION_NAMES,
    ANNOTATION_PRIVATE_KEY_ALGORITHM, ANNOTATION_RENEW_BEFORE,
};
use super::workload::{PodAdmission, admit_pod};
use crate::testing::properties::{config, hostile_text};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume, VolumeMount};
use proptest::prelude::*;
use std::collections::BTreeMap;

const KEYS: [&str; 7] = [
    ANNOTATION_ISSUER,
    ANNOTATION_CLUSTER_ISSUER,
    ANNOTATION_NAMES,
    ANNOTATION_CONTAINERS,
    ANNOTATION_DURATION,
    ANNOTATION_RENEW_BEFORE,
    ANNOTATION_PRIVATE_KEY_ALGORITHM,
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}(,[a-z0-9]{1,8}){0,3}",
        "(app|sidecar|web)(,(app|sidecar|web|other)){0,2}",
        "[0-9]{1,3}(m|h)",
        hostile_text(),
    ]
}

fn pod() -> impl Strategy<Value = Pod> {
    let annotations = proptest::collection::btree_map(proptest::sample::select(&KEYS[..]), value(), 0..7);
    let containers = proptest::collection::vec(
        (proptest::sample::select(&["app", "sidecar", "web"][..]), proptest::option::of("(/var/run/kacme/?|/data)")),
        0..4,
    );
    (annotations, containers, any::<bool>(), proptest::option::of("[a-z0-9-]{0,70}"), any::<bool>()).prop_map(
        |(annotations, containers, has_labels, name, has_volume)| {
            let mut pod = Pod::default();
            pod.metadata.name = name;
            pod.metadata.generate_name = Some("web-".into());
            pod.metadata.annotations = Some(annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            pod.metadata.labels = has_labels.then(|| BTreeMap::from([("app".to_string(), "web".to_string())]));
            let containers = containers
                .into_iter()
                .map(|(name, mount)| Container {
                    name: name.into(),
                    volume_mounts: mount
                        .map(|path| vec![VolumeMount { name: "v".into(), mount_path: path, ..Default::default() }]),
                    ..Default::default()
                })
                .collect();
            let volumes = has_volume.then(|| vec![Volume { name: "v".into(), ..Default::default() }]);
            pod.spec = Some(PodSpec { containers, volumes, ..Default::default() });
            pod
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_pod_is_left_alone_patched_with_a_patch_that_applies_or_denied_naming_the_annotation(pod in pod()) {
        match admit_pod(&pod) {
            PodAdmission::Untouched => {}
            PodAdmission::Deny(message) => {
                prop_assert!(message.starts_with("kacme: annotation kacme.dev/"), "{message}");
            }
            PodAdmission::Patch(patch) => {
                let mut value = serde_json::to_value(&pod).map_err(|e| TestCaseError::fail(e.to_string()))?;
                json_patch::patch(&mut value, &patch).map_err(|e| TestCaseError::fail(format!("{e}: {patch:?}")))?;
                let patched: Pod = serde_json::from_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let workload = patched.metadata.labels.as_ref().and_then(|l| l.get("kacme.dev/workload"));
                prop_assert!(workload.is_some_and(|w| w.len() <= 63), "{workload:?}");
            }
        }
    }
}
