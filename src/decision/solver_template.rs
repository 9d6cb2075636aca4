//! Which labels and annotations an issuer's solver templates may put on the solver Pod and Ingress.
//!
//! kacme creates solver objects with its own rights, but the templates come from whoever writes the issuer
//! (a namespaced Issuer: any tenant allowed to create one). An annotation such as ingress-nginx's
//! `configuration-snippet` or `auth-url` would run the writer's configuration in a shared ingress
//! controller: a confused deputy. So template keys are limited to an operator-configured allow-list, minus
//! keys holding a refused word, checked before the issuer is used at all.

use crate::api::{AcmeIssuer, ObjectMetaTemplate};
use std::fmt;

/// The keys a solver template may set by default (`--solver-template-allowed-keys`): unprefixed labels and
/// annotations (`team`, `tier`), `app.kubernetes.io/*`, the legacy ingress class annotation, what
/// ingress-nginx and Traefik need to route plain HTTP to a challenge path, and the scheduling hints a
/// short-lived Pod may need.
pub const DEFAULT_ALLOWED_KEYS: &str = "*,app.kubernetes.io/*,kubernetes.io/ingress.class,\
nginx.ingress.kubernetes.io/whitelist-source-range,nginx.ingress.kubernetes.io/ssl-redirect,\
traefik.ingress.kubernetes.io/router.entrypoints,traefik.ingress.kubernetes.io/router.priority,\
sidecar.istio.io/inject,cluster-autoscaler.kubernetes.io/safe-to-evict";

/// Words that refuse a key even when a pattern allows it, compared without case
/// (`--solver-template-refused-words`): ingress controllers' configuration and code injection
/// (ingress-nginx `*-snippet`, `configuration-snippet`, `server-alias`, Lua plugins) and authentication
/// hooks (`auth-url`, `auth-signin`, `enable-global-auth`...).
pub const DEFAULT_REFUSED_WORDS: &str = "snippet,auth,configuration,lua,server-alias";

/// The operator's rules for solver template keys (`--solver-template-allowed-keys`,
/// `--solver-template-refused-words`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolverTemplateRules {
    /// Key patterns: `*` stands for any run of characters other than `/`, everything else matches itself.
    /// So `*` allows unprefixed keys, `example.com/*` every key of that prefix, `*/*` every prefixed key.
    pub allowed_keys: Vec<String>,
    /// A key containing one of these words (without case) is refused whatever the patterns say.
    pub refused_words: Vec<String>,
}

impl Default for SolverTemplateRules {
    fn default() -> SolverTemplateRules {
        SolverTemplateRules {
            allowed_keys: split_list(DEFAULT_ALLOWED_KEYS),
            refused_words: split_list(DEFAULT_REFUSED_WORDS),
        }
    }
}

/// Where a refused key was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplatePlace {
    /// `solvers[i].http01.ingress.podTemplate.metadata`.
    Pod,
    /// `solvers[i].http01.ingress.ingressTemplate.metadata`.
    Ingress,
    /// `solvers[i].http01.gatewayHTTPRoute.podTemplate.metadata`.
    RoutePod,
    /// `solvers[i].http01.gatewayHTTPRoute.labels`.
    Route,
}

/// A solver template key that the operator's rules refuse, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolverTemplateRefusal {
    /// The index of the solver in `spec.acme.solvers`.
    pub solver: usize,
    /// The template the key is in.
    pub place: TemplatePlace,
    /// `label` or `annotation`.
    pub kind: &'static str,
    /// The refused key.
    pub key: String,
    /// The refused word the key holds, if that is why; else no pattern allows it.
    pub word: Option<String>,
}

impl fmt::Display for SolverTemplateRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let template = match self.place {
            TemplatePlace::Pod => "ingress.podTemplate",
            TemplatePlace::Ingress => "ingress.ingressTemplate",
            TemplatePlace::RoutePod => "gatewayHTTPRoute.podTemplate",
            TemplatePlace::Route => "gatewayHTTPRoute.labels",
        };
        let key = crate::api::validation::quoted(&self.key);
        write!(f, "solvers[{}].http01.{template} sets the {} {key}, which ", self.solver, self.kind)?;
        match &self.word {
            Some(word) => write!(
                f,
                "holds {word:?}: kacme refuses such keys on the objects it creates (--solver-template-refused-words)"
            ),
            None => f.write_str(
                "the operator does not allow on solver objects (--solver-template-allowed-keys); remove it or ask \
                 the operator's administrator to allow it",
            ),
        }
    }
}

/// The first key of `acme`'s solver templates (labels and annotations of every solver's pod and ingress
/// templates) that `rules` refuse, if any.
pub fn check_solver_templates(acme: &AcmeIssuer, rules: &SolverTemplateRules) -> Result<(), SolverTemplateRefusal> {
    for (index, solver) in acme.solvers.iter().enumerate() {
        let route_labels = solver
            .http01
            .gateway_http_route
            .as_ref()
            .map(|r| ObjectMetaTemplate { labels: r.labels.clone(), annotations: Default::default() });
        let ingress = solver.http01.ingress.as_ref();
        let route = solver.http01.gateway_http_route.as_ref();
        let templates = [
            (TemplatePlace::Pod, ingress.and_then(|i| i.pod_template.as_ref()).and_then(|t| t.metadata.as_ref())),
            (
                TemplatePlace::Ingress,
                ingress.and_then(|i| i.ingress_template.as_ref()).and_then(|t| t.metadata.as_ref()),
            ),
            (TemplatePlace::RoutePod, route.and_then(|r| r.pod_template.as_ref()).and_then(|t| t.metadata.as_ref())),
            (TemplatePlace::Route, route_labels.as_ref()),
        ];
        for (place, metadata) in templates {
            let Some(metadata) = metadata else { continue };
            check_metadata(metadata, rules).map_err(|(kind, key, word)| SolverTemplateRefusal {
                solver: index,
                place,
                kind,
                key,
                word,
            })?;
        }
    }
    Ok(())
}

/// The first refused key of one template as (label or annotation, key, refused word).
fn check_metadata(
    metadata: &ObjectMetaTemplate,
    rules: &SolverTemplateRules,
) -> Result<(), (&'static str, String, Option<String>)> {
    let keys =
        metadata.labels.keys().map(|k| ("label", k)).chain(metadata.annotations.keys().map(|k| ("annotation", k)));
    for (kind, key) in keys {
        if let Some(word) = refused_word(key, &rules.refused_words) {
            return Err((kind, key.clone(), Some(word.to_string())));
        }
        if !rules.allowed_keys.iter().any(|pattern| key_matches(pattern, key)) {
            return Err((kind, key.clone(), None));
        }
    }
    Ok(())
}

fn refused_word<'a>(key: &str, words: &'a [String]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    words.iter().map(String::as_str).find(|word| !word.is_empty() && key.contains(&word.to_ascii_lowercase()))
}

/// Whether `key` matches `pattern`, where `*` matches any run of characters other than `/`.
pub fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == key,
        Some((prefix, rest)) => {
            let Some(tail) = key.strip_prefix(prefix) else { return false };
            // The star takes 0..n characters up to the first `/`; the rest of the pattern matches what follows.
            let reach = tail.find('/').unwrap_or(tail.len());
            (0..=reach).any(|taken| key_matches(rest, &tail[taken..]))
        }
    }
}

/// The entries of a comma-separated list, trimmed, without empty ones.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
}

/// Reads the patterns of `--solver-template-allowed-keys` (or the words of `--solver-template-refused-words`)
/// as the operator starts: comma-separated, without spaces.
pub fn parse_key_patterns(text: &str) -> Result<Vec<String>, String> {
    let patterns = split_list(text);
    match patterns.iter().find(|p| p.chars().any(char::is_whitespace)) {
        Some(bad) => Err(format!("the key pattern {bad:?} holds whitespace")),
        None => Ok(patterns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AcmeSolver, Http01Ingress, Http01Solver, SecretKeySelector, SolverIngressTemplate, SolverPodTemplate,
    };
    use std::collections::BTreeMap;

    fn acme_with(pod: &[(&str, &str)], ingress: &[(&str, &str)]) -> AcmeIssuer {
        let meta = |pairs: &[(&str, &str)]| {
            let (labels, annotations): (Vec<_>, Vec<_>) = pairs.iter().partition(|(kind, _)| *kind == "label");
            let keys = |list: Vec<&(&str, &str)>| -> BTreeMap<String, String> {
                list.into_iter().map(|(_, k)| (k.to_string(), "v".to_string())).collect()
            };
            Some(ObjectMetaTemplate { labels: keys(labels), annotations: keys(annotations) })
        };
        let plain = AcmeSolver { selector: None, http01: Http01Solver::default() };
        let templated = AcmeSolver {
            selector: None,
            http01: Http01Solver {
                ingress: Some(Http01Ingress {
                    pod_template: Some(SolverPodTemplate { metadata: meta(pod), spec: None }),
                    ingress_template: Some(SolverIngressTemplate { metadata: meta(ingress) }),
                    ..Default::default()
                }),
                gateway_http_route: None,
            },
        };
        AcmeIssuer {
            account_per_namespace: None,
            send_lifetime: None,
            profile: None,
            revocation: None,
            server: "https://ca.example.test/directory".into(),
            email: None,
            ca_bundle: None,
            issuing_ca_bundle: None,
            skip_tls_verify: None,
            private_key_secret_ref: SecretKeySelector { name: "key".into(), key: None },
            external_account_binding: None,
            solvers: vec![plain, templated],
        }
    }

    #[test]
    fn by_default_routing_keys_pass_and_snippets_and_auth_hooks_are_refused() {
        // (case, pod template keys, ingress template keys, refused key and place, or None)
        type Keys = Vec<(&'static str, &'static str)>;
        let cases: Vec<(&str, Keys, Keys, Option<(&str, TemplatePlace)>)> = vec![
            ("no template keys", vec![], vec![], None),
            ("an unprefixed label", vec![("label", "team")], vec![("label", "tier")], None),
            ("app.kubernetes.io labels", vec![("label", "app.kubernetes.io/part-of")], vec![], None),
            ("the legacy ingress class", vec![], vec![("annotation", "kubernetes.io/ingress.class")], None),
            (
                "nginx's source range (as cert-manager sets it)",
                vec![],
                vec![("annotation", "nginx.ingress.kubernetes.io/whitelist-source-range")],
                None,
            ),
            (
                "Traefik's entrypoints",
                vec![],
                vec![("annotation", "traefik.ingress.kubernetes.io/router.entrypoints")],
                None,
            ),
            ("istio sidecar off", vec![("annotation", "sidecar.istio.io/inject")], vec![], None),
            (
                "nginx's configuration snippet",
                vec![],
                vec![("annotation", "nginx.ingress.kubernetes.io/configuration-snippet")],
                Some(("nginx.ingress.kubernetes.io/configuration-snippet", TemplatePlace::Ingress)),
            ),
            (
                "nginx's server snippet",
                vec![],
                vec![("annotation", "nginx.ingress.kubernetes.io/server-snippet")],
                Some(("nginx.ingress.kubernetes.io/server-snippet", TemplatePlace::Ingress)),
            ),
            (
                "nginx's auth-url",
                vec![],
                vec![("annotation", "nginx.ingress.kubernetes.io/auth-url")],
                Some(("nginx.ingress.kubernetes.io/auth-url", TemplatePlace::Ingress)),
            ),
            (
                "Traefik middlewares (no pattern allows them)",
                vec![],
                vec![("annotation", "traefik.ingress.kubernetes.io/router.middlewares")],
                Some(("traefik.ingress.kubernetes.io/router.middlewares", TemplatePlace::Ingress)),
            ),
            (
                "an unprefixed snippet key",
                vec![("annotation", "server-snippet")],
                vec![],
                Some(("server-snippet", TemplatePlace::Pod)),
            ),
            (
                "a prefixed label of another project",
                vec![("label", "example.com/team")],
                vec![],
                Some(("example.com/team", TemplatePlace::Pod)),
            ),
            (
                "kacme's own labels",
                vec![("label", "kacme.dev/solver")],
                vec![],
                Some(("kacme.dev/solver", TemplatePlace::Pod)),
            ),
            (
                "a refused word in upper case",
                vec![],
                vec![("annotation", "nginx.ingress.kubernetes.io/Server-Snippet")],
                Some(("nginx.ingress.kubernetes.io/Server-Snippet", TemplatePlace::Ingress)),
            ),
        ];
        for (case, pod, ingress, refused) in cases {
            let result = check_solver_templates(&acme_with(&pod, &ingress), &SolverTemplateRules::default());
            let got = result.as_ref().err().map(|r| (r.key.as_str(), r.place));
            assert_eq!(got, refused, "{case}: {result:?}");
            if let Err(refusal) = result {
                assert_eq!(refusal.solver, 1, "{case}");
                let message = refusal.to_string();
                assert!(message.contains(&refusal.key), "{case}: the message names the key: {message}");
                assert!(message.starts_with("solvers[1].http01.ingress."), "{case}: {message}");
            }
        }
    }

    #[test]
    fn refused_words_win_over_an_operator_who_allows_a_whole_prefix() {
        let rules = SolverTemplateRules {
            allowed_keys: vec!["*".into(), "nginx.ingress.kubernetes.io/*".into()],
            ..SolverTemplateRules::default()
        };
        // (case, key, refused word or None)
        let cases = [
            ("a widened prefix allows rewrite settings", "nginx.ingress.kubernetes.io/proxy-body-size", None),
            ("a snippet stays refused", "nginx.ingress.kubernetes.io/configuration-snippet", Some("snippet")),
            ("an auth hook stays refused", "nginx.ingress.kubernetes.io/auth-signin", Some("auth")),
            ("global auth stays refused", "nginx.ingress.kubernetes.io/enable-global-auth", Some("auth")),
            ("server aliases stay refused", "nginx.ingress.kubernetes.io/server-alias", Some("server-alias")),
            ("lua stays refused", "nginx.ingress.kubernetes.io/lua-resty-waf", Some("lua")),
        ];
        for (case, key, word) in cases {
            let result = check_solver_templates(&acme_with(&[], &[("annotation", key)]), &rules);
            assert_eq!(result.err().and_then(|r| r.word), word.map(String::from), "{case}");
        }
        let everything = SolverTemplateRules { allowed_keys: vec!["*".into(), "*/*".into()], refused_words: vec![] };
        let snippet = acme_with(&[], &[("annotation", "nginx.ingress.kubernetes.io/server-snippet")]);
        assert_eq!(check_solver_templates(&snippet, &everything), Ok(()), "an operator may lift every limit");
    }

    #[test]
    fn a_star_matches_within_one_key_segment_only() {
        // (pattern, key, matches)
        let cases = [
            ("*", "team", true),
            ("*", "", true),
            ("*", "example.com/team", false),
            ("*/*", "example.com/team", true),
            ("*/*", "team", false),
            ("app.kubernetes.io/*", "app.kubernetes.io/name", true),
            ("app.kubernetes.io/*", "app.kubernetes.io.evil.com/name", false),
            ("app.kubernetes.io/*", "xapp.kubernetes.io/name", false),
            ("*.example.com/*", "team.example.com/owner", true),
            ("*.example.com/*", "example.com/owner", false),
            ("*.example.com/*", "a/b.example.com/owner", false),
            ("kubernetes.io/ingress.class", "kubernetes.io/ingress.class", true),
            ("kubernetes.io/ingress.class", "kubernetes.io/ingress.classes", false),
            ("example.com/a*b", "example.com/ab", true),
            ("example.com/a*b", "example.com/axxb", true),
            ("example.com/a*b", "example.com/axxbc", false),
        ];
        for (pattern, key, matches) in cases {
            assert_eq!(key_matches(pattern, key), matches, "{pattern} against {key}");
        }
    }

    #[test]
    fn key_patterns_are_read_from_a_comma_separated_flag() {
        // (text, patterns or error)
        let cases: [(&str, Result<Vec<&str>, ()>); 4] = [
            ("*,app.kubernetes.io/*", Ok(vec!["*", "app.kubernetes.io/*"])),
            (" * , example.com/x ,", Ok(vec!["*", "example.com/x"])),
            ("", Ok(vec![])),
            ("a b", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_key_patterns(text).map_err(|_| ());
            assert_eq!(got, want.map(|v| v.into_iter().map(String::from).collect()), "{text:?}");
        }
    }
}
