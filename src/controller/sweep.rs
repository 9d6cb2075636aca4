//! "Apply what is desired, then delete the leftovers": one round of a reconciler that owns a set of objects
//! (the Certificates of an Ingress, the Certificates of workloads, the CA bundle ConfigMaps). The plan is a
//! pure function of what is desired and what exists; the round tries every write and reports every failure.

use super::ReconcileError;
use kube::{Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;

/// What one round does.
#[derive(Debug)]
pub(crate) struct SweepPlan<'a, K> {
    /// Desired objects that do not exist, or differ from what exists.
    pub apply: Vec<&'a K>,
    /// Existing objects that nothing desires any more and that are not being deleted already.
    pub delete: Vec<&'a K>,
}

/// The plan for a round: objects are matched by namespace and name; `unchanged(desired, existing)` says
/// whether an existing object already is what is desired.
pub(crate) fn plan_sweep<'a, K: Resource>(
    desired: &'a [K],
    existing: &'a [Arc<K>],
    unchanged: impl Fn(&K, &K) -> bool,
) -> SweepPlan<'a, K> {
    let key = |object: &K| (object.namespace(), object.name_any());
    let apply = desired.iter().filter(|d| !existing.iter().any(|e| key(e) == key(d) && unchanged(d, e))).collect();
    let delete = existing
        .iter()
        .map(Arc::as_ref)
        .filter(|e| e.meta().deletion_timestamp.is_none() && !desired.iter().any(|d| key(d) == key(e)))
        .collect();
    SweepPlan { apply, delete }
}

/// Runs a round: `apply` every object to apply, then `delete` every leftover. A failure does not stop the
/// round; all failures are returned together.
pub(crate) async fn run_sweep<'a, K, A, AF, D, DF>(
    plan: SweepPlan<'a, K>,
    mut apply: A,
    mut delete: D,
) -> Result<(), ReconcileError>
where
    A: FnMut(&'a K) -> AF,
    AF: Future<Output = Result<(), ReconcileError>>,
    D: FnMut(&'a K) -> DF,
    DF: Future<Output = Result<(), ReconcileError>>,
{
    let mut failures = Vec::new();
    for object in plan.apply {
        if let Err(error) = apply(object).await {
            failures.push(error);
        }
    }
    for object in plan.delete {
        if let Err(error) = delete(object).await {
            failures.push(error);
        }
    }
    ReconcileError::all(failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    fn config_map(namespace: &str, name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
            ..ConfigMap::default()
        }
    }

    fn deleting(mut object: ConfigMap) -> ConfigMap {
        object.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        object
    }

    fn names(objects: &[&ConfigMap]) -> Vec<String> {
        objects.iter().map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())).collect()
    }

    #[test]
    fn a_round_applies_what_is_missing_or_different_and_deletes_what_nothing_desires() {
        let same = |a: &ConfigMap, b: &ConfigMap| a.data == b.data;
        // (case, desired, existing, expected apply, expected delete)
        let cases: Vec<(&str, Vec<ConfigMap>, Vec<ConfigMap>, Vec<&str>, Vec<&str>)> = vec![
            ("nothing exists", vec![config_map("a", "x", "1")], vec![], vec!["a/x"], vec![]),
            ("all up to date", vec![config_map("a", "x", "1")], vec![config_map("a", "x", "1")], vec![], vec![]),
            ("one differs", vec![config_map("a", "x", "2")], vec![config_map("a", "x", "1")], vec!["a/x"], vec![]),
            ("a leftover", vec![], vec![config_map("a", "x", "1")], vec![], vec!["a/x"]),
            (
                "the same name in another namespace is another object",
                vec![config_map("b", "x", "1")],
                vec![config_map("a", "x", "1")],
                vec!["b/x"],
                vec!["a/x"],
            ),
            ("a leftover being deleted already", vec![], vec![deleting(config_map("a", "x", "1"))], vec![], vec![]),
        ];
        for (case, desired, existing, apply, delete) in cases {
            let existing: Vec<Arc<ConfigMap>> = existing.into_iter().map(Arc::new).collect();
            let plan = plan_sweep(&desired, &existing, same);
            assert_eq!(names(&plan.apply), apply, "{case}: apply");
            assert_eq!(names(&plan.delete), delete, "{case}: delete");
        }
    }

    #[tokio::test]
    async fn a_round_tries_every_write_and_reports_every_failure() {
        let desired = vec![config_map("a", "x", "1"), config_map("a", "y", "1")];
        let existing = vec![Arc::new(config_map("a", "z", "1"))];
        let plan = plan_sweep(&desired, &existing, |_, _| false);
        let tried = std::sync::Mutex::new(Vec::new());
        let result = run_sweep(
            plan,
            |object| {
                tried.lock().unwrap().push(format!("apply {}", object.name_any()));
                async { Err(ReconcileError::MissingField("apply")) }
            },
            |object| {
                tried.lock().unwrap().push(format!("delete {}", object.name_any()));
                async { Err(ReconcileError::MissingField("delete")) }
            },
        )
        .await;
        assert_eq!(*tried.lock().unwrap(), ["apply x", "apply y", "delete z"]);
        let error = result.expect_err("three failures");
        assert_eq!(error.to_string(), "the object has no apply; the object has no apply; the object has no delete");
    }
}
