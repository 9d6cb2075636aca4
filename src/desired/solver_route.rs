//! The Gateway API flavour of the HTTP-01 solver objects: the HTTPRoute that routes one challenge path to
//! the solver Service, and whether its parent Gateways have taken it.
//!
//! The Pod and Service are those of the Ingress flavour ([`super::build_solver_pod`],
//! [`super::build_solver_service`]), built from [`solver_workload`]; the route shares their name, labels
//! and owner (the Certificate), so it is found, removed and garbage-collected like them.

use super::names::solver_name;
use super::solver_objects::{SolverContext, certificate_name, solver_metadata};
use crate::acme::{CHALLENGE_PATH_PREFIX, Http01Challenge};
use crate::api::{Certificate, Http01GatewayHttpRoute, Http01Ingress, ObjectMetaTemplate, SolverParentReference};
use crate::gateway_api::{
    CONDITION_ACCEPTED, CONDITION_RESOLVED_REFS, HTTPBackendRef, HTTPPathMatch, HTTPRoute, HTTPRouteMatch,
    HTTPRouteRule, HTTPRouteSpec, ParentReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::net::IpAddr;

/// The Pod and Service settings of a route solver, in the shape the Ingress flavour's builders take (they
/// read only `serviceType` and `podTemplate`).
pub fn solver_workload(route: &Http01GatewayHttpRoute) -> Http01Ingress {
    Http01Ingress { service_type: route.service_type, pod_template: route.pod_template.clone(), ..Default::default() }
}

/// The parent references of the solver route, each once: a namespace equal to the Certificate's is left
/// out (it is the default), exact repeats are dropped, and a reference to a whole Gateway (no sectionName,
/// no port) replaces every other reference to that Gateway (it already covers all of its listeners; the
/// Gateway API also refuses a route that names one parent both with and without a sectionName). The order
/// of first appearance is kept.
pub fn solver_parent_refs(route: &Http01GatewayHttpRoute, namespace: &str) -> Vec<ParentReference> {
    let normalized: Vec<SolverParentReference> = route
        .parent_refs
        .iter()
        .map(|r| SolverParentReference {
            namespace: r.namespace.clone().filter(|n| n != namespace && !n.is_empty()),
            ..r.clone()
        })
        .collect();
    let whole = |r: &SolverParentReference| r.section_name.is_none() && r.port.is_none();
    let mut kept: Vec<SolverParentReference> = Vec::new();
    for reference in normalized.iter() {
        let same_gateway =
            |other: &SolverParentReference| other.name == reference.name && other.namespace == reference.namespace;
        let covered = normalized.iter().any(|other| same_gateway(other) && whole(other)) && !whole(reference);
        if covered || kept.contains(reference) {
            continue;
        }
        kept.push(reference.clone());
    }
    kept.into_iter()
        .map(|r| ParentReference {
            group: None,
            kind: None,
            namespace: r.namespace,
            name: r.name,
            section_name: r.section_name,
            port: r.port,
        })
        .collect()
}

/// The HTTPRoute that routes `http://<identifier>/.well-known/acme-challenge/<token>` (an exact path match)
/// to the solver Service of `challenge`, attached to the parents of `route`, with its labels.
///
/// An IP address cannot be an HTTPRoute hostname, so for an IP identifier the route has no hostname and
/// matches the challenge path on every host its listeners accept.
pub fn build_solver_http_route(
    certificate: &Certificate,
    challenge: &Http01Challenge,
    route: &Http01GatewayHttpRoute,
    ctx: &SolverContext,
) -> HTTPRoute {
    let template = ObjectMetaTemplate { labels: route.labels.clone(), annotations: Default::default() };
    let name = solver_name(&certificate_name(certificate), challenge);
    let namespace = certificate.metadata.namespace.clone().unwrap_or_default();
    let hostnames = match challenge.identifier.parse::<IpAddr>() {
        Ok(_) => Vec::new(),
        Err(_) => vec![challenge.identifier.clone()],
    };
    HTTPRoute {
        metadata: solver_metadata(certificate, challenge, Some(&template), ctx),
        spec: HTTPRouteSpec {
            parent_refs: solver_parent_refs(route, &namespace),
            hostnames,
            rules: vec![HTTPRouteRule {
                matches: vec![HTTPRouteMatch {
                    path: Some(HTTPPathMatch {
                        type_: Some("Exact".into()),
                        value: Some(format!("{CHALLENGE_PATH_PREFIX}{}", challenge.token)),
                    }),
                }],
                backend_refs: vec![HTTPBackendRef {
                    group: None,
                    kind: None,
                    name,
                    namespace: None,
                    port: Some(i32::from(ctx.port)),
                }],
            }],
        },
        status: None,
    }
}

/// What the parents of a solver route say of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAcceptance {
    /// Every parent reports the route `Accepted` and `ResolvedRefs`: the challenge can be served.
    Accepted,
    /// Some parent has not (yet) reported on the route, or reports it accepted but with its backend not
    /// resolved yet: the message says which and what it said.
    Waiting(String),
}

/// Whether every parent of `route` (as [`solver_parent_refs`] lists them) has accepted it: an entry of
/// `status.parents` for that parent with the conditions `Accepted` and `ResolvedRefs` True. A parent that
/// refuses the route (`Accepted` False) is named with its reason and message; it is not final (a Gateway's
/// listeners can change), so the wait ends at the authorization deadline like any solver that does not
/// serve.
pub fn route_acceptance(route: &HTTPRoute) -> RouteAcceptance {
    let namespace = route.metadata.namespace.clone().unwrap_or_default();
    let name = route.metadata.name.clone().unwrap_or_default();
    let parents = route.status.as_ref().map(|s| s.parents.as_slice()).unwrap_or_default();
    let mut waits = Vec::new();
    for wanted in &route.spec.parent_refs {
        let described = describe_parent(wanted, &namespace);
        let entry = parents.iter().find(|p| same_parent(&p.parent_ref, wanted, &namespace));
        let Some(entry) = entry else {
            waits.push(format!("{described} has not reported on HTTPRoute {name} yet"));
            continue;
        };
        let condition = |type_: &str| entry.conditions.iter().find(|c| c.type_ == type_);
        match condition(CONDITION_ACCEPTED) {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                waits.push(format!("{described} does not accept HTTPRoute {name}: {}", verdict(c)));
                continue;
            }
            None => {
                waits.push(format!("{described} has not accepted HTTPRoute {name} yet"));
                continue;
            }
        }
        match condition(CONDITION_RESOLVED_REFS) {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                waits.push(format!("{described} cannot resolve the backend of HTTPRoute {name}: {}", verdict(c)))
            }
            None => waits.push(format!("{described} has not resolved the backend of HTTPRoute {name} yet")),
        }
    }
    if waits.is_empty() { RouteAcceptance::Accepted } else { RouteAcceptance::Waiting(waits.join("; ")) }
}

/// `reason: message` of a condition, as another controller (whoever may write the route's status) wrote it:
/// made safe and cut to a readable length like a CA's words ([`crate::acme::ca_text`]).
fn verdict(condition: &Condition) -> String {
    const MAX: usize = 300;
    let message = condition.message.trim();
    let text = if message.is_empty() { condition.reason.clone() } else { format!("{}: {message}", condition.reason) };
    crate::acme::ca_text(&text, MAX)
}

/// `Gateway ns/name` (with `listener x` and `port n` when given).
fn describe_parent(parent: &ParentReference, route_namespace: &str) -> String {
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    let mut out = format!("{} {namespace}/{}", parent.kind.as_deref().unwrap_or("Gateway"), parent.name);
    if let Some(section) = &parent.section_name {
        out.push_str(&format!(" listener {section}"));
    }
    if let Some(port) = parent.port {
        out.push_str(&format!(" port {port}"));
    }
    out
}

/// Whether a `status.parents[].parentRef` is the parent `wanted` of a route in `namespace` (controllers
/// write the reference with or without the defaults filled in).
fn same_parent(reported: &ParentReference, wanted: &ParentReference, namespace: &str) -> bool {
    let group = |r: &ParentReference| r.group.clone().unwrap_or_else(|| crate::gateway_api::GATEWAY_API_GROUP.into());
    let kind = |r: &ParentReference| r.kind.clone().unwrap_or_else(|| "Gateway".into());
    let ns = |r: &ParentReference| r.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.into());
    group(reported) == group(wanted)
        && kind(reported) == kind(wanted)
        && ns(reported) == ns(wanted)
        && reported.name == wanted.name
        && reported.section_name.as_deref().filter(|s| !s.is_empty()) == wanted.section_name.as_deref()
        && reported.port.filter(|p| *p != 0) == wanted.port
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::testing::{certificate, challenge};
    use crate::gateway_api::{RouteParentStatus, RouteStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn parent(name: &str, namespace: Option<&str>, section: Option<&str>, port: Option<i32>) -> SolverParentReference {
        SolverParentReference {
            name: name.into(),
            namespace: namespace.map(Into::into),
            section_name: section.map(Into::into),
            port,
        }
    }

    fn route_solver(parents: Vec<SolverParentReference>) -> Http01GatewayHttpRoute {
        Http01GatewayHttpRoute { parent_refs: parents, ..Default::default() }
    }

    fn ctx() -> SolverContext {
        SolverContext::new("registry.example.test/kacme:1.0")
    }

    #[test]
    fn a_solver_route_matches_the_challenge_path_exactly_for_the_name_and_goes_to_the_solver_service() {
        let mut solver = route_solver(vec![parent("web", None, Some("http"), None)]);
        solver.labels = [("gateway-routes".to_string(), "acme".to_string())].into();
        let challenge = challenge("web.example.test", "tok-123", "https://ca.example.test/authz/1");
        let route = build_solver_http_route(&certificate(), &challenge, &solver, &ctx());
        let name = solver_name("web", &challenge);
        let got = serde_json::to_value(&route).unwrap();
        assert_eq!(got["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(got["kind"], "HTTPRoute");
        assert_eq!(got["metadata"]["name"], json!(name));
        assert_eq!(got["metadata"]["namespace"], "apps");
        assert_eq!(got["metadata"]["labels"]["gateway-routes"], "acme");
        assert_eq!(got["metadata"]["labels"]["kacme.dev/solver"], "true");
        assert_eq!(got["metadata"]["ownerReferences"][0]["kind"], "Certificate");
        assert_eq!(
            got["spec"],
            json!({
                "parentRefs": [{"name": "web", "sectionName": "http"}],
                "hostnames": ["web.example.test"],
                "rules": [{
                    "matches": [{"path": {"type": "Exact", "value": "/.well-known/acme-challenge/tok-123"}}],
                    "backendRefs": [{"name": name, "port": 8089}],
                }],
            })
        );
    }

    #[test]
    fn a_solver_route_for_an_ip_address_has_no_hostname() {
        let solver = route_solver(vec![parent("web", None, None, None)]);
        let challenge = challenge("10.1.2.3", "tok", "https://ca.example.test/authz/1");
        let route = build_solver_http_route(&certificate(), &challenge, &solver, &ctx());
        assert!(route.spec.hostnames.is_empty());
    }

    #[test]
    fn parent_references_are_sent_once_and_a_whole_gateway_covers_its_listeners() {
        // (case, given, expected)
        let cases = [
            (
                "exact repeats",
                vec![parent("gw", None, None, None), parent("gw", None, None, None)],
                vec![parent("gw", None, None, None)],
            ),
            (
                "the Certificate's namespace is the default",
                vec![parent("gw", Some("apps"), None, None), parent("gw", None, None, None)],
                vec![parent("gw", None, None, None)],
            ),
            (
                "a whole Gateway covers its listeners, wherever it comes in the list",
                vec![
                    parent("gw", None, Some("http"), None),
                    parent("gw", None, None, None),
                    parent("gw", None, None, Some(80)),
                ],
                vec![parent("gw", None, None, None)],
            ),
            (
                "listeners of one Gateway and other Gateways stay",
                vec![
                    parent("gw", None, Some("http"), None),
                    parent("gw", None, Some("alt"), None),
                    parent("gw", Some("infra"), None, None),
                    parent("other", None, None, None),
                ],
                vec![
                    parent("gw", None, Some("http"), None),
                    parent("gw", None, Some("alt"), None),
                    parent("gw", Some("infra"), None, None),
                    parent("other", None, None, None),
                ],
            ),
        ];
        for (case, given, expected) in cases {
            let expected: Vec<ParentReference> = expected
                .into_iter()
                .map(|r| ParentReference {
                    namespace: r.namespace,
                    name: r.name,
                    section_name: r.section_name,
                    port: r.port,
                    ..Default::default()
                })
                .collect();
            assert_eq!(solver_parent_refs(&route_solver(given), "apps"), expected, "{case}");
        }
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        }
    }

    fn reported(reference: ParentReference, conditions: Vec<Condition>) -> RouteParentStatus {
        RouteParentStatus { parent_ref: reference, controller_name: "example.test/gateway".into(), conditions }
    }

    fn route_with(parents: Vec<ParentReference>, status: Vec<RouteParentStatus>) -> HTTPRoute {
        let mut route = HTTPRoute::new("web-abc", HTTPRouteSpec { parent_refs: parents, ..Default::default() });
        route.metadata.namespace = Some("apps".into());
        route.status = Some(RouteStatus { parents: status });
        route
    }

    fn gateway(name: &str) -> ParentReference {
        ParentReference { name: name.into(), ..Default::default() }
    }

    #[test]
    fn a_route_is_served_once_every_parent_accepted_it_and_resolved_its_backend() {
        let accepted = || {
            vec![condition("Accepted", "True", "Accepted", ""), condition("ResolvedRefs", "True", "ResolvedRefs", "")]
        };
        let filled_in = ParentReference {
            group: Some("gateway.networking.k8s.io".into()),
            kind: Some("Gateway".into()),
            namespace: Some("apps".into()),
            ..gateway("a")
        };
        // (case, status, expected)
        let cases = [
            (
                "no status yet",
                vec![],
                RouteAcceptance::Waiting(
                    "Gateway apps/a has not reported on HTTPRoute web-abc yet; Gateway apps/b has not reported on \
                     HTTPRoute web-abc yet"
                        .into(),
                ),
            ),
            (
                "both accepted, defaults filled in",
                vec![reported(filled_in.clone(), accepted()), reported(gateway("b"), accepted())],
                RouteAcceptance::Accepted,
            ),
            (
                "one refuses with its reason",
                vec![
                    reported(gateway("a"), accepted()),
                    reported(
                        gateway("b"),
                        vec![condition(
                            "Accepted",
                            "False",
                            "NotAllowedByListeners",
                            "no listener allows routes from apps",
                        )],
                    ),
                ],
                RouteAcceptance::Waiting(
                    "Gateway apps/b does not accept HTTPRoute web-abc: NotAllowedByListeners: no listener allows \
                     routes from apps"
                        .into(),
                ),
            ),
            (
                "accepted but the backend is not resolved",
                vec![
                    reported(gateway("a"), accepted()),
                    reported(
                        gateway("b"),
                        vec![
                            condition("Accepted", "True", "Accepted", ""),
                            condition("ResolvedRefs", "False", "BackendNotFound", "service apps/web-abc not found"),
                        ],
                    ),
                ],
                RouteAcceptance::Waiting(
                    "Gateway apps/b cannot resolve the backend of HTTPRoute web-abc: BackendNotFound: service \
                     apps/web-abc not found"
                        .into(),
                ),
            ),
        ];
        for (case, status, expected) in cases {
            let route = route_with(vec![gateway("a"), gateway("b")], status);
            assert_eq!(route_acceptance(&route), expected, "{case}");
        }
    }

    #[test]
    fn a_verdict_about_another_listener_of_the_same_gateway_does_not_count() {
        let wanted = ParentReference { section_name: Some("http".into()), ..gateway("a") };
        let other = ParentReference { section_name: Some("https".into()), ..gateway("a") };
        let accepted =
            vec![condition("Accepted", "True", "Accepted", ""), condition("ResolvedRefs", "True", "ResolvedRefs", "")];
        let route = route_with(vec![wanted], vec![reported(other, accepted)]);
        assert!(matches!(route_acceptance(&route), RouteAcceptance::Waiting(_)));
    }
}
