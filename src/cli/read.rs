//! The reads behind `kacme status` and `kacme inspect secret`, with the user's kubeconfig and rights. Only
//! the Certificate (or the inspected Secret) must be readable; anything else that cannot be read is named
//! in the report instead of failing the command.

use super::status::{SecretRead, SolverObject, StatusInput};
use crate::api::Certificate;
use crate::api::names::{LABEL_CERTIFICATE, LABEL_SOLVER};
use crate::desired::certificate_label_value;
use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::PathBuf;

/// What went wrong reading the cluster; each variant names the read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the kubeconfig failed: {0}")]
    ReadKubeconfig(String),
    #[error("connecting to the Kubernetes API failed: {0}")]
    Connect(String),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound { kind: &'static str, namespace: String, name: String },
    #[error("reading {kind} {namespace}/{name} failed: {source}")]
    Read { kind: &'static str, namespace: String, name: String, source: kube::Error },
}

/// Where to connect: the kubeconfig kubectl would use (KUBECONFIG, else kubectl's default) unless `kubeconfig` names one, with
/// its current context unless `context` names another.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// A client for `connection`, and the namespace to use when none is given (the context's).
pub async fn connect(connection: &Connection) -> Result<Client, ReadError> {
    if connection.kubeconfig.is_none() && connection.context.is_none() {
        return Client::try_default().await.map_err(|e| ReadError::Connect(e.to_string()));
    }
    let kubeconfig = match &connection.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| ReadError::ReadKubeconfig(e.to_string()))?;
    let options = KubeConfigOptions { context: connection.context.clone(), ..KubeConfigOptions::default() };
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| ReadError::Connect(e.to_string()))?;
    Client::try_from(config).map_err(|e| ReadError::Connect(e.to_string()))
}

/// Reads what `kacme status` shows about Certificate `namespace/name`.
pub async fn read_status_input(client: &Client, namespace: &str, name: &str) -> Result<StatusInput, ReadError> {
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), namespace);
    let certificate = certificates
        .get_opt(name)
        .await
        .map_err(|source| ReadError::Read {
            kind: "Certificate",
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?
        .ok_or_else(|| ReadError::NotFound { kind: "Certificate", namespace: namespace.into(), name: name.into() })?;
    let uid = certificate.metadata.uid.clone().unwrap_or_default();
    let mut unread = Vec::new();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(&certificate.spec.secret_name).await {
        Ok(Some(secret)) => SecretRead::Found(Box::new(secret)),
        Ok(None) => SecretRead::NotFound,
        Err(error) => SecretRead::Unreadable(error_words(&error)),
    };

    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.kind=Certificate,involvedObject.name={name}"));
    let events = match events.list(&params).await {
        Ok(list) => list.items,
        Err(error) => {
            unread.push(format!("Events ({})", error_words(&error)));
            Vec::new()
        }
    };

    let selector = format!("{LABEL_SOLVER},{LABEL_CERTIFICATE}={}", certificate_label_value(name));
    let params = ListParams::default().labels(&selector);
    let mut solver_objects = Vec::new();
    match Api::<Pod>::namespaced(client.clone(), namespace).list(&params).await {
        Ok(list) => solver_objects.extend(list.items.iter().filter_map(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            solver_object("Pod", &pod.metadata, phase, &uid)
        })),
        Err(error) => unread.push(format!("solver Pods ({})", error_words(&error))),
    }
    match Api::<Service>::namespaced(client.clone(), namespace).list_metadata(&params).await {
        Ok(list) => {
            solver_objects.extend(list.items.iter().filter_map(|s| solver_object("Service", &s.metadata, None, &uid)))
        }
        Err(error) => unread.push(format!("solver Services ({})", error_words(&error))),
    }
    match Api::<Ingress>::namespaced(client.clone(), namespace).list(&params).await {
        Ok(list) => solver_objects.extend(
            list.items
                .iter()
                .filter_map(|ingress| solver_object("Ingress", &ingress.metadata, ingress_route(ingress), &uid)),
        ),
        Err(error) => unread.push(format!("solver Ingresses ({})", error_words(&error))),
    }
    Ok(StatusInput { certificate, secret, events, solver_objects, unread })
}

/// Reads Secret `namespace/name`.
pub async fn read_secret(client: &Client, namespace: &str, name: &str) -> Result<Secret, ReadError> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ReadError::Read { kind: "Secret", namespace: namespace.into(), name: name.into(), source })?
        .ok_or_else(|| ReadError::NotFound { kind: "Secret", namespace: namespace.into(), name: name.into() })
}

/// A solver object of the Certificate whose UID is `uid`: only when the Certificate owns it (a label alone
/// can be written by anyone).
pub fn solver_object(kind: &str, meta: &ObjectMeta, detail: Option<String>, uid: &str) -> Option<SolverObject> {
    let owned = meta.owner_references.iter().flatten().any(|owner| !uid.is_empty() && owner.uid == uid);
    owned.then(|| SolverObject { kind: kind.into(), name: meta.name.clone().unwrap_or_default(), detail })
}

fn ingress_route(ingress: &Ingress) -> Option<String> {
    let rule = ingress.spec.as_ref()?.rules.as_ref()?.first()?;
    let path = rule.http.as_ref()?.paths.first()?.path.clone().unwrap_or_default();
    Some(format!("{}{path}", rule.host.clone().unwrap_or_default()))
}

fn error_words(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!("forbidden: {}", status.message),
        other => other.to_string(),
    }
}

/// cert-manager's Issuers, ClusterIssuers and Certificates (of `namespace`, or of every namespace), and the
/// Ingresses and Gateways with annotations, as manifests for [`super::import::convert`]. A cluster without cert-manager's
/// CRDs has none of its objects: that is not an error.
pub async fn read_cert_manager_objects(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<serde_json::Value>, ReadError> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let mut out = Vec::new();
    // Gateways (gateway-shim annotations) only where the Gateway API is installed, like cert-manager's kinds.
    let kinds = [
        ("cert-manager.io", "Issuer", "issuers", true),
        ("cert-manager.io", "ClusterIssuer", "clusterissuers", false),
        ("cert-manager.io", "Certificate", "certificates", true),
        ("gateway.networking.k8s.io", "Gateway", "gateways", true),
    ];
    for (group, kind, plural, namespaced) in kinds {
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
        let api: Api<DynamicObject> = match (namespaced, namespace) {
            (true, Some(namespace)) => Api::namespaced_with(client.clone(), namespace, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(error) if crate::kube_errors::is_not_found(&error) => continue,
            Err(source) => {
                return Err(ReadError::Read {
                    kind,
                    namespace: namespace.unwrap_or("*").into(),
                    name: "*".into(),
                    source,
                });
            }
        };
        for item in list.items {
            let mut value = serde_json::to_value(&item).unwrap_or_default();
            value["apiVersion"] = format!("{group}/v1").into();
            value["kind"] = kind.into();
            out.push(value);
        }
    }
    let ingresses: Api<Ingress> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let list = ingresses.list(&ListParams::default()).await.map_err(|source| ReadError::Read {
        kind: "Ingress",
        namespace: namespace.unwrap_or("*").into(),
        name: "*".into(),
        source,
    })?;
    for item in list.items {
        let mut value = serde_json::to_value(&item).unwrap_or_default();
        value["apiVersion"] = "networking.k8s.io/v1".into();
        value["kind"] = "Ingress".into();
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(owner_uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("kacme-solver-abc".into()),
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    name: "web".into(),
                    kind: "Certificate".into(),
                    ..Default::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_solver_object_counts_only_when_the_certificate_owns_it() {
        assert!(solver_object("Pod", &meta(Some("uid-1")), None, "uid-1").is_some());
        assert!(solver_object("Pod", &meta(Some("uid-2")), None, "uid-1").is_none(), "another Certificate's");
        assert!(solver_object("Pod", &meta(None), None, "uid-1").is_none(), "labelled only");
        assert!(solver_object("Pod", &meta(Some("")), None, "").is_none(), "no UID matches nothing");
    }
}
