//! Issuer policy where no watch cache holds the issuer: the admission webhook and the Ingress controller
//! read the issuer (and, when its policy selects namespaces, the namespace) through the client, then apply
//! the same pure check as the Certificate reconciler ([`crate::decision::policy`]). A request is refused
//! before its Certificate exists, where its owner looks: the Pod's admission, an Event on the Ingress.

use crate::api::{Certificate, ClusterIssuer, Issuer, IssuerKind, IssuerPolicy};
use crate::decision::policy::{check_certificate, needs_namespace_labels};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::{Client, ResourceExt};
use std::time::Duration;

/// The longest the reads of one check may take (the webhook answers the apiserver within its timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a Certificate may not be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    /// The issuer's policy refuses it (the message names the value and the rule).
    #[error("{0}")]
    NotPermitted(String),
    /// The issuer or the namespace could not be read, so the policy could not be checked.
    #[error("the issuer's policy could not be checked: {0}")]
    Unchecked(String),
}

/// Checks `certificate` against the policy of the issuer it names. An issuer that does not exist has no policy
/// to check here: the Certificate then says `IssuerNotFound`, and the reconciler checks again before issuing.
pub async fn check_certificate_policy(client: &Client, certificate: &Certificate) -> Result<(), PolicyRefusal> {
    match tokio::time::timeout(READ_TIMEOUT, check(client, certificate)).await {
        Ok(result) => result,
        Err(_) => Err(PolicyRefusal::Unchecked(format!("no answer from the apiserver within {READ_TIMEOUT:?}"))),
    }
}

async fn check(client: &Client, certificate: &Certificate) -> Result<(), PolicyRefusal> {
    let namespace = certificate.namespace().unwrap_or_default();
    let reference = &certificate.spec.issuer_ref;
    let unchecked = |e: kube::Error| PolicyRefusal::Unchecked(e.to_string());
    let (described, policy): (String, Option<IssuerPolicy>) = match reference.kind {
        IssuerKind::Issuer => {
            let api: Api<Issuer> = Api::namespaced(client.clone(), &namespace);
            match api.get_opt(&reference.name).await.map_err(unchecked)? {
                Some(issuer) => (format!("Issuer {namespace}/{}", reference.name), issuer.spec.policy),
                None => return Ok(()),
            }
        }
        IssuerKind::ClusterIssuer => {
            let api: Api<ClusterIssuer> = Api::all(client.clone());
            match api.get_opt(&reference.name).await.map_err(unchecked)? {
                Some(issuer) => (format!("ClusterIssuer {}", reference.name), issuer.spec.policy),
                None => return Ok(()),
            }
        }
    };
    let labels = if needs_namespace_labels(policy.as_ref()) {
        let api: Api<Namespace> = Api::all(client.clone());
        let meta = api.get_metadata_opt(&namespace).await.map_err(unchecked)?;
        Some(meta.and_then(|m| m.metadata.labels).unwrap_or_default())
    } else {
        None
    };
    check_certificate(&described, policy.as_ref(), certificate, labels.as_ref())
        .map_err(|refused| PolicyRefusal::NotPermitted(refused.0))
}
