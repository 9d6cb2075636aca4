//! Who is asking: a TokenReview's verdict on the agent's projected ServiceAccount token, and the Pod it is
//! bound to as the apiserver has it. Only a token issued for kacme's audience and bound to a Pod that exists
//! now (same UID, same ServiceAccount, not being deleted, asking for per-Pod certificates) counts.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;

/// The `extra` key of a Pod-bound token's user: the Pod's name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key of a Pod-bound token's user: the Pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The Pod a token speaks for, as the TokenReview says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Why a request is not taken as a Pod's (an HTTP 401 or 403; never quotes the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRefusal {
    /// The token does not authenticate (for kacme's audience).
    #[error("the token is not valid for audience {audience}: {reason}")]
    NotAuthenticated { audience: String, reason: String },
    /// It authenticates, but not as a Pod's projected token, or not as that Pod.
    #[error("{0}")]
    NotThePod(String),
}

/// The Pod the token of a TokenReview is bound to: the review must say authenticated, list `audience`, and
/// name a ServiceAccount user with the Pod's name and UID in `extra`.
pub fn bound_pod(status: &TokenReviewStatus, audience: &str) -> Result<BoundPod, IdentityRefusal> {
    let refused = |reason: &str| IdentityRefusal::NotAuthenticated { audience: audience.into(), reason: reason.into() };
    if status.authenticated != Some(true) {
        return Err(refused(status.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("not authenticated")));
    }
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(refused("the token was issued for another audience"));
    }
    let user = status.user.as_ref().ok_or_else(|| refused("the review names no user"))?;
    let username = user.username.as_deref().unwrap_or_default();
    let Some((namespace, service_account)) =
        username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'))
    else {
        return Err(IdentityRefusal::NotThePod("the token is not a ServiceAccount's".into()));
    };
    let extra = |key: &str| -> Option<String> {
        let values = user.extra.as_ref()?.get(key)?;
        match values.as_slice() {
            [value] if !value.is_empty() => Some(value.clone()),
            _ => None,
        }
    };
    let (Some(pod_name), Some(pod_uid)) = (extra(EXTRA_POD_NAME), extra(EXTRA_POD_UID)) else {
        return Err(IdentityRefusal::NotThePod(
            "the token is not bound to a Pod (use a projected serviceAccountToken volume)".into(),
        ));
    };
    Ok(BoundPod { namespace: namespace.into(), service_account: service_account.into(), pod_name, pod_uid })
}

/// Whether `pod`, read by name from the bound namespace, is the very Pod the token is bound to and may ask:
/// same UID (a Pod deleted and recreated under the same name is another Pod), same ServiceAccount, not being
/// deleted.
pub fn check_pod_is_bound(pod: &Pod, bound: &BoundPod) -> Result<(), IdentityRefusal> {
    let not = |why: &str| Err(IdentityRefusal::NotThePod(format!("Pod {}/{}: {why}", bound.namespace, bound.pod_name)));
    if pod.metadata.uid.as_deref() != Some(bound.pod_uid.as_str()) {
        return not("the token is bound to another Pod of that name");
    }
    if pod.metadata.namespace.as_deref() != Some(bound.namespace.as_str()) {
        return not("the Pod is in another namespace than the token's ServiceAccount");
    }
    let service_account = pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
    if service_account != bound.service_account {
        return not("the Pod runs as another ServiceAccount than the token's");
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return not("the Pod is being deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn review(authenticated: bool, audiences: &[&str], username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(
                    extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const SA: &str = "system:serviceaccount:apps:web";
    const POD: [(&str, &str); 2] = [(EXTRA_POD_NAME, "web-0"), (EXTRA_POD_UID, "uid-0")];

    #[test]
    fn a_pod_bound_token_for_kacme_names_its_pod() {
        let bound = bound_pod(&review(true, &["kacme"], SA, &POD), "kacme").unwrap();
        assert_eq!(
            bound,
            BoundPod {
                namespace: "apps".into(),
                service_account: "web".into(),
                pod_name: "web-0".into(),
                pod_uid: "uid-0".into()
            }
        );
    }

    #[test]
    fn other_tokens_are_refused() {
        let cases = [
            ("not authenticated", review(false, &["kacme"], SA, &POD), "not valid"),
            ("another audience", review(true, &["https://kubernetes.default.svc"], SA, &POD), "another audience"),
            ("a user, not a ServiceAccount", review(true, &["kacme"], "alice", &POD), "not a ServiceAccount"),
            ("a ServiceAccount token bound to no Pod", review(true, &["kacme"], SA, &[]), "not bound to a Pod"),
            ("a token bound to a Secret", review(true, &["kacme"], SA, &[(EXTRA_POD_NAME, "web-0")]), "not bound"),
        ];
        for (case, status, expected) in cases {
            let error = bound_pod(&status, "kacme").unwrap_err().to_string();
            assert!(error.contains(expected), "{case}: {error}");
        }
    }

    fn pod(uid: &str, service_account: Option<&str>, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "apps", "uid": uid},
            "spec": {"containers": [], "serviceAccountName": service_account},
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        }
        pod
    }

    #[test]
    fn only_the_very_pod_the_token_is_bound_to_counts() {
        let bound = bound_pod(&review(true, &["kacme"], SA, &POD), "kacme").unwrap();
        assert!(check_pod_is_bound(&pod("uid-0", Some("web"), false), &bound).is_ok());
        let cases = [
            ("a new Pod of the same name", pod("uid-1", Some("web"), false), "another Pod"),
            ("another ServiceAccount", pod("uid-0", None, false), "another ServiceAccount"),
            ("a Pod being deleted", pod("uid-0", Some("web"), true), "being deleted"),
        ];
        for (case, pod, expected) in cases {
            let error = check_pod_is_bound(&pod, &bound).unwrap_err().to_string();
            assert!(error.contains(expected), "{case}: {error}");
        }
    }
}
