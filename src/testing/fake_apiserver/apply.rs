//! A small model of server-side apply: which field manager owns which fields, and what an apply does.
//!
//! A field is a path of object keys from the root. Objects merge key by key; a list or a scalar is one
//! field, replaced as a whole (the real apiserver merges some lists by key, such as `conditions` by
//! `type`; this model does not). Ownership is kept per (manager, subresource), as in `managedFields`.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A field: the object keys leading to it from the root.
pub(super) type FieldPath = Vec<String>;

/// Metadata that the server sets: never part of an apply configuration.
const SYSTEM_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of an object a request writes: the main resource (all but `.status`) or the status subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Part {
    Main,
    Status,
}

/// The fields each apply field manager owns, per subresource.
#[derive(Clone, Debug, Default)]
pub(super) struct Ownership(BTreeMap<(String, Part), BTreeSet<FieldPath>>);

/// Another manager owns a field that an apply would change.
pub(super) struct Conflicts(pub(super) Vec<(String, FieldPath)>);

impl Conflicts {
    /// The apiserver's wording: `Apply failed with 1 conflict: conflict with "other": .spec.x`.
    pub(super) fn message(&self) -> String {
        let each: Vec<String> =
            self.0.iter().map(|(manager, path)| format!("conflict with \"{manager}\": .{}", path.join("."))).collect();
        format!("Apply failed with {} conflict(s): {}", self.0.len(), each.join("; "))
    }
}

/// What an apply request sets in `part`: the request without `apiVersion`, `kind` and server-set metadata,
/// cut to `.status` for the status subresource and to everything else for the main resource.
pub(super) fn configuration(request: &Value, part: Part) -> Value {
    let mut configuration = Map::new();
    let Some(fields) = request.as_object() else { return Value::Object(configuration) };
    for (key, value) in fields {
        let wanted = match part {
            Part::Status => key == "status",
            Part::Main => !matches!(key.as_str(), "apiVersion" | "kind" | "status"),
        };
        if wanted {
            configuration.insert(key.clone(), value.clone());
        }
    }
    if let Some(metadata) = configuration.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|key, _| !SYSTEM_METADATA.contains(&key.as_str()));
        if metadata.is_empty() {
            configuration.remove("metadata");
        }
    }
    Value::Object(configuration)
}

/// The fields a configuration sets (its leaves: scalars, lists and empty objects).
pub(super) fn fields(configuration: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Some(map) = configuration.as_object() {
        for (key, value) in map {
            collect_fields(value, &mut vec![key.clone()], &mut out);
        }
    }
    out
}

fn collect_fields(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                collect_fields(child, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if any.
pub(super) fn value_at<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, key| value.get(key))
}

/// Removes the field at `path`, and the objects that it leaves empty.
fn remove_field(value: &mut Value, path: &[String]) {
    let (Some((first, rest)), Some(map)) = (path.split_first(), value.as_object_mut()) else { return };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_field(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            map.remove(first);
        }
    }
}

/// Merges `configuration` into `target`: objects merge key by key, anything else replaces.
pub(super) fn merge_into(target: &mut Value, configuration: &Value) {
    match (target.as_object_mut(), configuration.as_object()) {
        (Some(target), Some(configuration)) => {
            for (key, value) in configuration {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => merge_into(existing, value),
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *target = configuration.clone(),
    }
}

/// Whether one path is the other or lies under it.
fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Ownership {
    /// Ownership after `manager` created an object by applying `configuration` to `part`.
    pub(super) fn created_by(manager: &str, part: Part, configuration: &Value) -> Self {
        let mut ownership = Ownership::default();
        ownership.0.insert((manager.to_owned(), part), fields(configuration));
        ownership
    }

    /// Applies `configuration` by `manager` to `current`, returning the new object and updating ownership.
    ///
    /// Fields owned by another manager with a different value conflict; with `force` they change hands,
    /// without it nothing changes. Fields the manager set last time and no longer sets are removed, unless
    /// another manager owns them too.
    pub(super) fn apply(
        &mut self,
        current: &Value,
        configuration: &Value,
        manager: &str,
        part: Part,
        force: bool,
    ) -> Result<Value, Conflicts> {
        let owner = (manager.to_owned(), part);
        let applied = fields(configuration);
        let mut conflicts = Vec::new();
        for ((other, other_part), owned) in &self.0 {
            if (other, other_part) == (&owner.0, &owner.1) {
                continue;
            }
            for path in owned.intersection(&applied) {
                if value_at(current, path) != value_at(configuration, path) {
                    conflicts.push((other.clone(), path.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts));
        }
        for (other, path) in &conflicts {
            for ((manager, _), owned) in self.0.iter_mut() {
                if manager == other {
                    owned.remove(path);
                }
            }
        }
        let previous = self.0.remove(&owner).unwrap_or_default();
        let mut object = current.clone();
        for path in previous.difference(&applied) {
            let still_owned = self.0.values().flatten().any(|owned| related(owned, path));
            if !still_owned {
                remove_field(&mut object, path);
            }
        }
        merge_into(&mut object, configuration);
        self.0.insert(owner, applied);
        Ok(object)
    }

    /// Another kind of write (update, merge or JSON patch) changed `old` into `new`: like the apiserver, the
    /// apply managers lose the fields whose value changed.
    pub(super) fn forget_changed(&mut self, old: &Value, new: &Value) {
        for owned in self.0.values_mut() {
            owned.retain(|path| value_at(old, path) == value_at(new, path));
        }
        self.0.retain(|_, owned| !owned.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_configuration_leaves_out_server_metadata_and_the_other_part() {
        let request = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "a", "resourceVersion": "3", "labels": {"x": "1"}},
            "data": {"k": "dg=="}, "status": {"phase": "x"},
        });
        assert_eq!(
            configuration(&request, Part::Main),
            json!({"metadata": {"labels": {"x": "1"}}, "data": {"k": "dg=="}})
        );
        assert_eq!(configuration(&request, Part::Status), json!({"status": {"phase": "x"}}));
    }

    #[test]
    fn fields_are_the_leaves_with_lists_whole() {
        let set = fields(&json!({"spec": {"names": ["a", "b"], "empty": {}}, "data": {"k": "v"}}));
        let expected: BTreeSet<FieldPath> = [vec!["spec", "names"], vec!["spec", "empty"], vec!["data", "k"]]
            .into_iter()
            .map(|p| p.into_iter().map(String::from).collect())
            .collect();
        assert_eq!(set, expected);
    }

    #[test]
    fn a_field_the_manager_stops_setting_goes_with_the_objects_it_empties() {
        let mut ownership = Ownership::default();
        let first = json!({"status": {"order": {"url": "u", "state": "pending"}, "revision": 1}});
        let object = ownership.apply(&json!({}), &first, "kacme", Part::Status, false).ok().expect("no conflict");
        assert_eq!(object, first);
        let second = json!({"status": {"revision": 2}});
        let object = ownership.apply(&object, &second, "kacme", Part::Status, false).ok().expect("no conflict");
        assert_eq!(object, json!({"status": {"revision": 2}}));
    }
}
