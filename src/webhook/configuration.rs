//! The MutatingWebhookConfiguration through which the apiserver calls kacme for Pods.

use crate::automatic::annotations::{ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER, ANNOTATION_NAMES};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use std::collections::BTreeMap;

/// The name of kacme's webhook inside the configuration.
pub const WEBHOOK_NAME: &str = "pods.kacme.dev";
/// The HTTP path the webhook serves.
pub const WEBHOOK_PATH: &str = "/mutate-pods";
/// The label every namespace carries with its own name (set by the apiserver).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// A URL, for example `https://127.0.0.5:9443/mutate-pods` (outside a cluster, and in tests).
    Url(String),
    /// A Service in front of the operator's Pods.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service's port.
        port: i32,
    },
}

impl WebhookEndpoint {
    /// The names the serving certificate must carry for this endpoint.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            WebhookEndpoint::Url(url) => url
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()))
                .into_iter()
                .collect(),
            WebhookEndpoint::Service { namespace, name, .. } => {
                vec![format!("{name}.{namespace}.svc"), format!("{name}.{namespace}.svc.cluster.local")]
            }
        }
    }

    fn client_config(&self, ca_bundle: &str) -> WebhookClientConfig {
        let ca_bundle = Some(k8s_openapi::ByteString(ca_bundle.as_bytes().to_vec()));
        match self {
            WebhookEndpoint::Url(url) => WebhookClientConfig { url: Some(url.clone()), ca_bundle, service: None },
            WebhookEndpoint::Service { namespace, name, port } => WebhookClientConfig {
                url: None,
                ca_bundle,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(WEBHOOK_PATH.into()),
                    port: Some(*port),
                }),
            },
        }
    }
}

/// What the configuration says besides the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookPolicy {
    /// `Fail` (Pods in selected namespaces wait for kacme) or `Ignore` (they start without certificates).
    pub failure_policy: String,
    /// Namespaces never mutated: kacme's own and kube-system.
    pub excluded_namespaces: Vec<String>,
    /// Further namespace selection (matchLabels and matchExpressions), see [`parse_label_selector`].
    pub namespace_selector: LabelSelector,
    /// How long the apiserver waits for an answer.
    pub timeout_seconds: i32,
}

/// Parses a label selector in kubectl's equality form: comma-separated `key=value`, `key!=value`, `key`
/// (exists) and `!key` (does not exist). The empty string selects everything.
pub fn parse_label_selector(text: &str) -> Result<LabelSelector, String> {
    let mut labels = BTreeMap::new();
    let mut expressions = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
            key: key.trim().to_string(),
            operator: operator.into(),
            values,
        };
        if let Some((key, value)) = item.split_once("!=") {
            expressions.push(requirement(key, "NotIn", Some(vec![value.trim().to_string()])));
        } else if let Some((key, value)) = item.split_once("==").or_else(|| item.split_once('=')) {
            labels.insert(key.trim().to_string(), value.trim().to_string());
        } else if let Some(key) = item.strip_prefix('!') {
            expressions.push(requirement(key, "DoesNotExist", None));
        } else if item.contains(|c: char| c.is_whitespace() || c == '(') {
            return Err(format!("{item:?}: only key=value, key!=value, key and !key are supported"));
        } else {
            expressions.push(requirement(item, "Exists", None));
        }
    }
    Ok(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

/// The CEL condition of the Pods the webhook is called for: those with any of kacme's workload annotations.
pub fn annotated_pod_expression() -> String {
    let any_of = [ANNOTATION_NAMES, ANNOTATION_ISSUER, ANNOTATION_CLUSTER_ISSUER]
        .map(|annotation| format!("'{annotation}' in object.metadata.annotations"))
        .join(" || ");
    format!("has(object.metadata.annotations) && ({any_of})")
}

/// The whole configuration as kacme manages it (server-side applied).
pub fn build_webhook_configuration(
    name: &str,
    endpoint: &WebhookEndpoint,
    ca_bundle: &str,
    policy: &WebhookPolicy,
) -> MutatingWebhookConfiguration {
    let mut selector = policy.namespace_selector.clone();
    let mut excluded = policy.excluded_namespaces.clone();
    excluded.sort();
    excluded.dedup();
    selector.match_expressions.get_or_insert_with(Vec::new).push(LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.into(),
        operator: "NotIn".into(),
        values: Some(excluded),
    });
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                crate::api::names::LABEL_MANAGED_BY.to_string(),
                crate::api::names::MANAGED_BY.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: endpoint.client_config(ca_bundle),
            failure_policy: Some(policy.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(selector),
            reinvocation_policy: Some("Never".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            side_effects: "None".into(),
            timeout_seconds: Some(policy.timeout_seconds),
            // Only Pods that carry kacme's annotations reach the webhook: with failurePolicy Fail, an
            // operator that is down or slow then never blocks any other Pod of a selected namespace.
            match_conditions: Some(vec![MatchCondition {
                name: "carries-kacme-annotations".into(),
                expression: annotated_pod_expression(),
            }]),
            ..MutatingWebhook::default()
        }]),
    }
}

/// The caBundle the configuration currently gives kacme's webhook.
pub fn current_ca_bundle(configuration: &MutatingWebhookConfiguration) -> Option<String> {
    configuration
        .webhooks
        .iter()
        .flatten()
        .find(|w| w.name == WEBHOOK_NAME)
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_in_kubectls_equality_form() {
        let selector = parse_label_selector("kacme.dev/webhook=enabled, tier!=infra, team, !legacy").unwrap();
        assert_eq!(selector.match_labels.unwrap()["kacme.dev/webhook"], "enabled");
        let operators: Vec<String> = selector.match_expressions.unwrap().into_iter().map(|e| e.operator).collect();
        assert_eq!(operators, ["NotIn", "Exists", "DoesNotExist"]);
        assert_eq!(parse_label_selector("").unwrap(), LabelSelector::default());
        assert!(parse_label_selector("tier in (a,b)").is_err());
    }

    #[test]
    fn the_configuration_never_selects_kacmes_namespace_or_kube_system() {
        let policy = WebhookPolicy {
            failure_policy: "Fail".into(),
            excluded_namespaces: vec!["kube-system".into(), "kacme".into()],
            namespace_selector: parse_label_selector("kacme.dev/webhook=enabled").unwrap(),
            timeout_seconds: 5,
        };
        let endpoint = WebhookEndpoint::Url("https://127.0.0.5:9443/mutate-pods".into());
        let configuration = build_webhook_configuration("kacme", &endpoint, "PEM", &policy);
        let webhook = &configuration.webhooks.as_ref().unwrap()[0];
        let expressions = webhook.namespace_selector.as_ref().unwrap().match_expressions.clone().unwrap();
        assert_eq!(expressions[0].values.as_deref(), Some(&["kacme".to_string(), "kube-system".to_string()][..]));
        assert_eq!(webhook.side_effects, "None");
        let conditions = webhook.match_conditions.as_deref().unwrap_or_default();
        assert_eq!(conditions.len(), 1, "only annotated Pods are sent to the webhook");
        assert_eq!(
            conditions[0].expression,
            "has(object.metadata.annotations) && ('kacme.dev/names' in object.metadata.annotations || \
             'kacme.dev/issuer' in object.metadata.annotations || 'kacme.dev/cluster-issuer' in object.metadata.annotations)"
        );
        assert_eq!(current_ca_bundle(&configuration).as_deref(), Some("PEM"));
        assert_eq!(endpoint.hosts(), ["127.0.0.5"]);
        let service = WebhookEndpoint::Service { namespace: "kacme".into(), name: "kacme-webhook".into(), port: 443 };
        assert_eq!(service.hosts()[0], "kacme-webhook.kacme.svc");
    }
}
