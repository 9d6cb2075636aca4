//! The names a Pod may have in its own certificate: `kacme.dev/names` of a per-Pod template, with the Pod's
//! own facts put in for `${POD_NAME}`, `${POD_NAMESPACE}`, `${POD_IP}` and `${SERVICE_NAMES}`.

use crate::api::validation::{self, Invalid, MAX_NAMES, quoted};
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Placeholder for the Pod's name (inside a DNS name).
pub const POD_NAME: &str = "${POD_NAME}";
/// Placeholder for the Pod's namespace (inside a DNS name).
pub const POD_NAMESPACE: &str = "${POD_NAMESPACE}";
/// Placeholder for each of the Pod's IP addresses (a whole entry: an IP address).
pub const POD_IP: &str = "${POD_IP}";
/// Placeholder for `<service>.<namespace>.svc` of each Service that selects the Pod (a whole entry).
pub const SERVICE_NAMES: &str = "${SERVICE_NAMES}";

/// What a Pod is, as the apiserver has it: what the placeholders stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    /// The Pod's IP addresses (`status.podIPs`); empty until the Pod has one.
    pub ips: Vec<IpAddr>,
    /// The names of the Services in the Pod's namespace that select it ([`selecting_services`]).
    pub services: Vec<String>,
}

/// The DNS names and IP addresses of one certificate, in the template's order, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNames {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl PodNames {
    /// How many names in all.
    pub fn len(&self) -> usize {
        self.dns_names.len() + self.ip_addresses.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_dns(&mut self, name: String) {
        if !self.dns_names.contains(&name) {
            self.dns_names.push(name);
        }
    }

    fn push_ip(&mut self, ip: IpAddr) {
        if !self.ip_addresses.contains(&ip) {
            self.ip_addresses.push(ip);
        }
    }
}

/// Checks the templates of `kacme.dev/names` before any Pod exists (at admission): each entry is `${POD_IP}`,
/// an IP address, or a DNS name once the placeholders are filled with plausible values.
pub fn check_name_templates(value: &str) -> Result<(), Invalid> {
    let sample = PodFacts {
        name: "pod-0".into(),
        namespace: "ns".into(),
        ips: vec![IpAddr::from([10, 0, 0, 1])],
        services: vec!["svc".into()],
    };
    let names = expand_names(value, &sample)?;
    if names.is_empty() {
        return Err(Invalid("list at least one DNS name or IP address".into()));
    }
    Ok(())
}

/// The names of `kacme.dev/names` for the Pod `facts` describes. `${POD_IP}` stands for every address of the
/// Pod (none while it has none); a DNS name must be valid once filled in (a Pod name with dots makes several
/// labels, which is allowed; one that makes the name too long is refused).
pub fn expand_names(value: &str, facts: &PodFacts) -> Result<PodNames, Invalid> {
    let mut names = PodNames::default();
    for entry in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if entry == POD_IP {
            facts.ips.iter().for_each(|ip| names.push_ip(*ip));
            continue;
        }
        if entry == SERVICE_NAMES {
            for service in &facts.services {
                let name = format!("{service}.{}.svc", facts.namespace).to_ascii_lowercase();
                validation::dns_name(&name).map_err(|Invalid(e)| Invalid(format!("{SERVICE_NAMES} gives {e}")))?;
                names.push_dns(name);
            }
            continue;
        }
        if entry.contains(SERVICE_NAMES) {
            return Err(Invalid(format!(
                "{}: {SERVICE_NAMES} must be a whole entry (it stands for <service>.<namespace>.svc of each Service \
                 selecting the Pod)",
                quoted(entry)
            )));
        }
        if entry.contains(POD_IP) {
            return Err(Invalid(format!(
                "{}: {POD_IP} must be a whole entry (it stands for the Pod's IP addresses)",
                quoted(entry)
            )));
        }
        if let Ok(ip) = validation::ip_address(entry) {
            names.push_ip(ip);
            continue;
        }
        let filled = entry.replace(POD_NAME, &facts.name).replace(POD_NAMESPACE, &facts.namespace).to_ascii_lowercase();
        if filled.contains("${") {
            return Err(Invalid(format!(
                "{}: unknown placeholder (use {POD_NAME}, {POD_NAMESPACE}, {POD_IP} or {SERVICE_NAMES})",
                quoted(entry)
            )));
        }
        validation::dns_name(&filled).map_err(|Invalid(e)| Invalid(format!("{} becomes {e}", quoted(entry))))?;
        names.push_dns(filled);
    }
    if names.len() > MAX_NAMES {
        return Err(Invalid(format!("{} names: at most {MAX_NAMES}", names.len())));
    }
    Ok(names)
}

/// The names of the Services that select a Pod with `pod_labels`: a non-empty selector whose every label the Pod
/// carries; sorted.
pub fn selecting_services(pod_labels: &BTreeMap<String, String>, services: &[Service]) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter(|service| {
            let selector = service.spec.as_ref().and_then(|s| s.selector.as_ref());
            selector.is_some_and(|selector| {
                !selector.is_empty() && selector.iter().all(|(key, value)| pod_labels.get(key) == Some(value))
            })
        })
        .filter_map(|service| service.metadata.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts() -> PodFacts {
        PodFacts {
            name: "web-7d9c-abcde".into(),
            namespace: "apps".into(),
            ips: vec!["10.213.0.12".parse().unwrap(), "fd00::12".parse().unwrap()],
            services: vec!["web".into(), "web-headless".into()],
        }
    }

    #[test]
    fn placeholders_become_the_pods_own_name_namespace_and_addresses() {
        let names =
            expand_names("${POD_NAME}.web.${POD_NAMESPACE}.svc, web.apps.svc, ${POD_IP}, 10.0.0.9", &facts()).unwrap();
        assert_eq!(names.dns_names, vec!["web-7d9c-abcde.web.apps.svc", "web.apps.svc"]);
        let ips: Vec<String> = names.ip_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(ips, vec!["10.213.0.12", "fd00::12", "10.0.0.9"]);
    }

    #[test]
    fn a_pod_without_an_address_yet_gets_no_ip_names() {
        let facts = PodFacts { ips: vec![], ..facts() };
        let names = expand_names("${POD_NAME}.web.apps.svc, ${POD_IP}", &facts).unwrap();
        assert_eq!(names.dns_names, vec!["web-7d9c-abcde.web.apps.svc"]);
        assert!(names.ip_addresses.is_empty());
    }

    #[test]
    fn service_names_are_those_of_the_services_that_select_the_pod() {
        let names = expand_names("${POD_NAME}.web.apps.svc, ${SERVICE_NAMES}", &facts()).unwrap();
        assert_eq!(names.dns_names, vec!["web-7d9c-abcde.web.apps.svc", "web.apps.svc", "web-headless.apps.svc"]);
        let service = |name: &str, selector: &[(&str, &str)]| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"selector": selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            }))
            .unwrap()
        };
        let labels =
            BTreeMap::from([("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())]);
        let services = [
            service("web", &[("app", "web")]),
            service("front", &[("app", "web"), ("tier", "front")]),
            service("db", &[("app", "db")]),
            service("everything", &[]),
            service("narrower", &[("app", "web"), ("tier", "back")]),
        ];
        assert_eq!(selecting_services(&labels, &services), ["front", "web"]);
    }

    #[test]
    fn bad_templates_are_refused_with_the_entry_named() {
        let cases = [
            ("ip-${POD_IP}.apps.svc", "must be a whole entry"),
            ("${POD_UID}.apps.svc", "unknown placeholder"),
            ("x.${SERVICE_NAMES}", "must be a whole entry"),
            ("${POD_NAME}..svc", "becomes"),
            ("*.${POD_NAMESPACE}.svc", "becomes"),
        ];
        for (template, expected) in cases {
            let error = expand_names(template, &facts()).unwrap_err().0;
            assert!(error.contains(expected), "{template}: {error}");
        }
        assert!(check_name_templates(" , ").is_err(), "an empty list");
        assert!(check_name_templates("${POD_NAME}.web.apps.svc,${POD_IP}").is_ok());
    }

    proptest! {
        /// Whatever the Pod is called, its names hold its own name and nothing another Pod's name could add.
        #[test]
        fn two_pods_never_share_a_templated_name(a in "[a-z][a-z0-9-]{0,20}[a-z0-9]", b in "[a-z][a-z0-9-]{0,20}[a-z0-9]") {
            prop_assume!(a != b);
            let of = |name: &str| expand_names(
                "${POD_NAME}.web.${POD_NAMESPACE}.svc",
                &PodFacts { name: name.into(), namespace: "apps".into(), ips: vec![], services: vec![] },
            ).unwrap();
            let (first, second) = (of(&a), of(&b));
            prop_assert_eq!(&first.dns_names, &vec![format!("{a}.web.apps.svc")]);
            prop_assert!(first.dns_names.iter().all(|n| !second.dns_names.contains(n)));
        }

        /// Expansion never panics on any text, Pod name or namespace.
        #[test]
        fn expansion_never_panics(value in ".{0,200}", name in ".{0,80}", namespace in ".{0,40}") {
            let _ = expand_names(&value, &PodFacts { name, namespace, ips: vec![], services: vec![] });
        }
    }
}
