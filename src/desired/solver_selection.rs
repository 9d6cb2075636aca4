//! Which of an issuer's solvers serves an identifier, with cert-manager's precedence.

use crate::api::{AcmeIssuer, AcmeSolver, SolverSelector};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The solver of `acme` that serves `identifier` (a DNS name or an IP address) of a Certificate with
/// `certificate_labels`, or `None` when no solver applies.
///
/// A solver is a candidate only when every one of its `matchLabels` is on the Certificate and its names
/// match: it lists the identifier in `dnsNames`, or a zone of it in `dnsZones` (the name equals the
/// zone or ends with `.` + zone), or it has neither. Among candidates, in this order:
/// 1. a `dnsNames` match beats a `dnsZones` match, which beats a solver without names;
/// 2. among `dnsZones` matches, the longest zone wins;
/// 3. then the solver with more `matchLabels` wins;
/// 4. then the first in the list.
///
/// An IP address is matched only by solvers without `dnsNames` and `dnsZones`. Names compare
/// case-insensitively.
pub fn select_solver<'a>(
    acme: &'a AcmeIssuer,
    certificate_labels: &BTreeMap<String, String>,
    identifier: &str,
) -> Option<&'a AcmeSolver> {
    let mut best: Option<(Rank, &AcmeSolver)> = None;
    for solver in &acme.solvers {
        let Some(rank) = rank(solver, certificate_labels, identifier) else {
            continue;
        };
        // Strictly better only: on a tie the earlier solver stays.
        if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
            best = Some((rank, solver));
        }
    }
    best.map(|(_, solver)| solver)
}

/// How specifically a candidate solver matches; greater is better. Field order is precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    names: NameMatch,
    labels: usize,
}

/// How a solver's `dnsNames` and `dnsZones` match an identifier; later variants are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NameMatch {
    /// The solver has neither `dnsNames` nor `dnsZones`: it applies to every identifier.
    Unrestricted,
    /// A zone of this length matches.
    Zone(usize),
    /// `dnsNames` lists the identifier.
    Exact,
}

fn rank(solver: &AcmeSolver, certificate_labels: &BTreeMap<String, String>, identifier: &str) -> Option<Rank> {
    let Some(selector) = &solver.selector else {
        return Some(Rank { names: NameMatch::Unrestricted, labels: 0 });
    };
    let labels = matching_label_count(&selector.match_labels, certificate_labels)?;
    let names = name_match(selector, identifier)?;
    Some(Rank { names, labels })
}

/// The number of `match_labels`, if the Certificate carries all of them.
fn matching_label_count(
    match_labels: &BTreeMap<String, String>,
    certificate_labels: &BTreeMap<String, String>,
) -> Option<usize> {
    let all_match = match_labels.iter().all(|(key, value)| certificate_labels.get(key) == Some(value));
    all_match.then_some(match_labels.len())
}

fn name_match(selector: &SolverSelector, identifier: &str) -> Option<NameMatch> {
    if selector.dns_names.is_empty() && selector.dns_zones.is_empty() {
        return Some(NameMatch::Unrestricted);
    }
    if identifier.parse::<IpAddr>().is_ok() {
        return None;
    }
    if selector.dns_names.iter().any(|name| name.eq_ignore_ascii_case(identifier)) {
        return Some(NameMatch::Exact);
    }
    selector.dns_zones.iter().filter(|zone| is_in_zone(identifier, zone)).map(|zone| NameMatch::Zone(zone.len())).max()
}

/// Whether `name` is `zone` or a name below it.
fn is_in_zone(name: &str, zone: &str) -> bool {
    let (name, zone) = (name.to_ascii_lowercase(), zone.to_ascii_lowercase());
    name == zone || name.strip_suffix(&zone).is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Http01Ingress, Http01Solver, SecretKeySelector};

    /// A solver told apart by its ingress class, with the given selector.
    fn solver(id: &str, selector: Option<SolverSelector>) -> AcmeSolver {
        AcmeSolver {
            selector,
            http01: Http01Solver {
                ingress: Some(Http01Ingress { ingress_class_name: Some(id.into()), ..Default::default() }),
                gateway_http_route: None,
            },
        }
    }

    fn names(names: &[&str]) -> SolverSelector {
        SolverSelector { dns_names: names.iter().map(|n| n.to_string()).collect(), ..Default::default() }
    }

    fn zones(zones: &[&str]) -> SolverSelector {
        SolverSelector { dns_zones: zones.iter().map(|z| z.to_string()).collect(), ..Default::default() }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn with_labels(mut selector: SolverSelector, pairs: &[(&str, &str)]) -> SolverSelector {
        selector.match_labels = labels(pairs);
        selector
    }

    fn issuer(solvers: Vec<AcmeSolver>) -> AcmeIssuer {
        AcmeIssuer {
            server: "https://ca.example.test/directory".into(),
            email: None,
            ca_bundle: None,
            issuing_ca_bundle: None,
            skip_tls_verify: None,
            private_key_secret_ref: SecretKeySelector { name: "account".into(), key: None },
            external_account_binding: None,
            account_per_namespace: None,
            send_lifetime: None,
            profile: None,
            revocation: None,
            solvers,
        }
    }

    fn selected(acme: &AcmeIssuer, certificate_labels: &[(&str, &str)], identifier: &str) -> Option<String> {
        let solver = select_solver(acme, &labels(certificate_labels), identifier)?;
        solver.http01.ingress.as_ref()?.ingress_class_name.clone()
    }

    #[test]
    fn the_most_specific_solver_serves_each_identifier() {
        let team = [("team", "web")];
        let team_tier = [("team", "web"), ("tier", "front")];
        // (case, solvers, Certificate labels, identifier, expected solver)
        let cases: Vec<(&str, Vec<AcmeSolver>, &[(&str, &str)], &str, Option<&str>)> = vec![
            (
                "a lone solver without selector serves everything",
                vec![solver("any", None)],
                &[],
                "a.example.test",
                Some("any"),
            ),
            (
                "an exact dnsNames match beats a zone match listed first",
                vec![solver("zone", Some(zones(&["example.test"]))), solver("name", Some(names(&["a.example.test"])))],
                &[],
                "a.example.test",
                Some("name"),
            ),
            (
                "an exact dnsNames match beats a zone match with more labels",
                vec![
                    solver("zone", Some(with_labels(zones(&["example.test"]), &team))),
                    solver("name", Some(names(&["a.example.test"]))),
                ],
                &team,
                "a.example.test",
                Some("name"),
            ),
            (
                "the longest matching zone wins",
                vec![
                    solver("short", Some(zones(&["test"]))),
                    solver("long", Some(zones(&["sys.example.test"]))),
                    solver("middle", Some(zones(&["example.test"]))),
                ],
                &[],
                "www.sys.example.test",
                Some("long"),
            ),
            (
                "a zone matches the zone's own name",
                vec![solver("any", None), solver("zone", Some(zones(&["example.test"])))],
                &[],
                "example.test",
                Some("zone"),
            ),
            (
                "a zone does not match a name that merely ends with its text",
                vec![solver("any", None), solver("zone", Some(zones(&["example.test"])))],
                &[],
                "badexample.test",
                Some("any"),
            ),
            (
                "a zone match beats a solver without names",
                vec![solver("any", None), solver("zone", Some(zones(&["example.test"])))],
                &[],
                "a.example.test",
                Some("zone"),
            ),
            (
                "names compare case-insensitively",
                vec![solver("any", None), solver("name", Some(names(&["A.Example.Test"])))],
                &[],
                "a.example.test",
                Some("name"),
            ),
            (
                "a solver whose names do not match is no candidate",
                vec![solver("name", Some(names(&["b.example.test"]))), solver("zone", Some(zones(&["other.test"])))],
                &[],
                "a.example.test",
                None,
            ),
            (
                "a solver whose labels the Certificate lacks is no candidate",
                vec![solver("labelled", Some(with_labels(names(&["a.example.test"]), &team))), solver("any", None)],
                &[],
                "a.example.test",
                Some("any"),
            ),
            (
                "a solver with one wrong label value is no candidate",
                vec![solver("labelled", Some(with_labels(SolverSelector::default(), &team)))],
                &[("team", "api")],
                "a.example.test",
                None,
            ),
            (
                "more matching labels win among equal name matches",
                vec![
                    solver("one", Some(with_labels(zones(&["example.test"]), &team))),
                    solver("two", Some(with_labels(zones(&["example.test"]), &team_tier))),
                ],
                &team_tier,
                "a.example.test",
                Some("two"),
            ),
            (
                "a labels-only selector beats a solver without selector",
                vec![solver("any", None), solver("labelled", Some(with_labels(SolverSelector::default(), &team)))],
                &team,
                "a.example.test",
                Some("labelled"),
            ),
            (
                "a longer zone beats a shorter one with more labels",
                vec![
                    solver("labelled", Some(with_labels(zones(&["example.test"]), &team_tier))),
                    solver("long", Some(zones(&["sys.example.test"]))),
                ],
                &team_tier,
                "a.sys.example.test",
                Some("long"),
            ),
            (
                "on a full tie the first solver wins",
                vec![solver("first", Some(zones(&["example.test"]))), solver("second", Some(zones(&["example.test"])))],
                &[],
                "a.example.test",
                Some("first"),
            ),
            (
                "on a tie between solvers without selector the first wins",
                vec![solver("first", None), solver("second", Some(SolverSelector::default()))],
                &[],
                "a.example.test",
                Some("first"),
            ),
            (
                "an IP address skips solvers with names",
                vec![solver("name", Some(names(&["10.0.0.1"]))), solver("any", None)],
                &[],
                "10.0.0.1",
                Some("any"),
            ),
            (
                "an IPv6 address skips solvers with zones",
                vec![
                    solver("zone", Some(zones(&["1"]))),
                    solver("labelled", Some(with_labels(SolverSelector::default(), &team))),
                ],
                &team,
                "fd00::1",
                Some("labelled"),
            ),
            (
                "an IP address finds no solver when all have names",
                vec![solver("name", Some(names(&["10.0.0.1"])))],
                &[],
                "10.0.0.1",
                None,
            ),
            ("no solvers select nothing", vec![], &[], "a.example.test", None),
        ];
        for (case, solvers, certificate_labels, identifier, want) in cases {
            let got = selected(&issuer(solvers), certificate_labels, identifier);
            assert_eq!(got.as_deref(), want, "{case}");
        }
    }
}
