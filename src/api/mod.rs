//! The `kacme.dev/v1alpha1` API: Certificate, Issuer and ClusterIssuer.
//!
//! These types are the single source of the CRDs in `crds/` (see [`crds`]). Every field carries a doc
//! comment, which becomes `kubectl explain` text; validation that the apiserver must enforce at admission
//! lives here as schema bounds and CEL rules.

mod certificate;
pub mod conditions;
pub mod duration;
#[cfg(test)]
mod duration_properties;
mod issuer;
pub mod names;
pub mod validation;

pub use certificate::*;
pub use conditions::{CertificateReason, ConditionType, IssuanceReason, IssuerReason, ReconcileReason};
pub use issuer::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of every kacme resource.
pub const GROUP: &str = "kacme.dev";
/// The API version of every kacme resource.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in a stable order (the order of `kacme crds` and of the files in `crds/`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Certificate::crd(), Issuer::crd(), ClusterIssuer::crd()]
}

/// The file name under `crds/` of a CRD, for example `certificates.kacme.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document, as it is stored in `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// All CRDs as one multi-document YAML stream, as `kacme crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// Labels and annotations to copy onto an object kacme creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMetaTemplate {
    /// Labels to add to the object (valid Kubernetes label keys and values, at most 64).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "labels_schema")]
    pub labels: BTreeMap<String, String>,
    /// Annotations to add to the object (valid Kubernetes annotation keys, at most 64, values of at most 4096
    /// characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotations_schema")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to one key of a Secret in the namespace of the referring object (for a ClusterIssuer: the
/// operator's cluster resource namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(schema_with = "dns_subdomain_schema")]
    pub name: String,
    /// Key inside the Secret's data. Defaults to the conventional key for the field (for example `tls.key`
    /// for an ACME account key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Pattern of a Kubernetes object name that must be a DNS subdomain (RFC 1123).
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Pattern of a lowercase DNS name as certificates carry it: labels of 1 to 63 letters, digits and hyphens.
pub(crate) const DNS_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

pub(crate) fn dns_subdomain_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": DNS_SUBDOMAIN_PATTERN,
    })
}

/// A label or annotation key as Kubernetes accepts it: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 characters (the prefix's length is bounded by the key's `maxLength`-like CEL size check).
const METADATA_KEY_RULE: &str = "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";

fn labels_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$",
        },
        "x-kubernetes-validations": [
            {
                "rule": METADATA_KEY_RULE,
                "message": "label keys must be valid Kubernetes label keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.'"
            }
        ]
    })
}

fn annotations_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "maxLength": 4096,
        },
        "x-kubernetes-validations": [
            {
                "rule": METADATA_KEY_RULE,
                "message": "annotation keys must be valid Kubernetes annotation keys: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.'"
            }
        ]
    })
}

/// Conditions as a list map keyed by `type`, so that server-side apply merges them per condition.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
