//! What the operator lets namespaced Issuers do: which ACME servers they may use and whether they may skip
//! TLS verification. A ClusterIssuer is written by a cluster administrator and is not restricted; an Issuer
//! may be written by any tenant allowed to create one, and kacme would otherwise send requests (with its
//! own network position) to whatever server the tenant names.

use crate::api::{AcmeIssuer, IssuerReason};
use std::fmt;

/// The operator's rules for namespaced Issuers (`--issuer-allowed-servers`,
/// `--issuer-allow-skip-tls-verify`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacedIssuerRules {
    /// Servers an Issuer may use; empty: any. An entry with `://` is a URL prefix that the directory URL
    /// must start with (compared without case in scheme and host); any other entry is a host (`ca.internal`,
    /// or `*.ca.internal` for its subdomains), compared without case and port.
    pub allowed_servers: Vec<String>,
    /// Whether an Issuer may set `skipTLSVerify: true`.
    pub allow_skip_tls_verify: bool,
}

/// Why the operator refuses a namespaced Issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerRefusal {
    /// The server is not on `--issuer-allowed-servers`.
    ServerNotAllowed { server: String, allowed: Vec<String> },
    /// `skipTLSVerify` is set and `--issuer-allow-skip-tls-verify` is not.
    SkipTlsVerifyNotAllowed,
}

impl IssuerRefusal {
    /// The reason of the Issuer's Ready condition.
    pub fn reason(&self) -> IssuerReason {
        match self {
            IssuerRefusal::ServerNotAllowed { .. } => IssuerReason::ServerNotAllowed,
            IssuerRefusal::SkipTlsVerifyNotAllowed => IssuerReason::SkipTlsVerifyNotAllowed,
        }
    }
}

impl fmt::Display for IssuerRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerRefusal::ServerNotAllowed { server, allowed } => write!(
                f,
                "the operator does not allow namespaced Issuers to use the ACME server {} (allowed: {}; \
                 --issuer-allowed-servers); use a ClusterIssuer or an allowed server",
                crate::api::validation::quoted(server),
                allowed.join(", ")
            ),
            IssuerRefusal::SkipTlsVerifyNotAllowed => f.write_str(
                "the operator does not allow namespaced Issuers to skip TLS verification \
                 (--issuer-allow-skip-tls-verify); set caBundle to the CA that serves the ACME endpoint instead",
            ),
        }
    }
}

/// Whether the operator's `rules` let a namespaced Issuer use `acme` (checked before any request to its
/// server).
pub fn check_namespaced_issuer(acme: &AcmeIssuer, rules: &NamespacedIssuerRules) -> Result<(), IssuerRefusal> {
    if acme.skip_tls_verify == Some(true) && !rules.allow_skip_tls_verify {
        return Err(IssuerRefusal::SkipTlsVerifyNotAllowed);
    }
    if !rules.allowed_servers.is_empty()
        && !rules.allowed_servers.iter().any(|entry| server_matches(entry, &acme.server))
    {
        return Err(IssuerRefusal::ServerNotAllowed {
            server: acme.server.clone(),
            allowed: rules.allowed_servers.clone(),
        });
    }
    Ok(())
}

/// Whether `server` (a directory URL) is what `entry` of `--issuer-allowed-servers` allows.
fn server_matches(entry: &str, server: &str) -> bool {
    if entry.contains("://") {
        // The scheme and host are case-insensitive; the path is compared as written. A prefix that ends in
        // its host must not allow a longer host (`https://ca.internal` against `https://ca.internal.evil`).
        let (entry_authority, entry_path) = split_url(entry);
        let (server_authority, server_path) = split_url(server);
        return match entry_path {
            None => server_authority.eq_ignore_ascii_case(&entry_authority),
            Some(path) => {
                server_authority.eq_ignore_ascii_case(&entry_authority)
                    && server_path.is_some_and(|p| p.starts_with(&path))
            }
        };
    }
    let Some(host) = host_of(server) else { return false };
    let entry = entry.to_ascii_lowercase();
    match entry.strip_prefix("*.") {
        Some(parent) => host.strip_suffix(parent).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => host == entry,
    }
}

/// `scheme://authority` and the rest (from the first `/` after the authority), if any.
fn split_url(url: &str) -> (String, Option<String>) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.find(['/', '?', '#']) {
        Some(at) => (format!("{scheme}://{}", &rest[..at]), Some(rest[at..].to_string())),
        None => (format!("{scheme}://{rest}"), None),
    }
}

/// The host of a directory URL, lowercase, without port or brackets.
fn host_of(server: &str) -> Option<String> {
    let uri: http::Uri = server.parse().ok()?;
    Some(uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
}

/// Reads `--issuer-allowed-servers`: comma-separated URL prefixes (`https://...`) or hosts.
pub fn parse_allowed_servers(text: &str) -> Result<Vec<String>, String> {
    let entries: Vec<String> = text.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    for entry in &entries {
        if entry.chars().any(char::is_whitespace) {
            return Err(format!("{entry:?} holds whitespace"));
        }
        if entry.contains("://") && !entry.to_ascii_lowercase().starts_with("https://") {
            return Err(format!("{entry:?}: ACME servers are https:// URLs"));
        }
        if entry.contains("://") && split_url(entry).0.len() <= "https://".len() {
            return Err(format!("{entry:?} has no host"));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeySelector;

    fn acme(server: &str, skip_tls_verify: Option<bool>) -> AcmeIssuer {
        AcmeIssuer {
            account_per_namespace: None,
            send_lifetime: None,
            profile: None,
            revocation: None,
            server: server.into(),
            email: None,
            ca_bundle: None,
            issuing_ca_bundle: None,
            skip_tls_verify,
            private_key_secret_ref: SecretKeySelector { name: "key".into(), key: None },
            external_account_binding: None,
            solvers: vec![],
        }
    }

    fn rules(allowed: &[&str], allow_skip: bool) -> NamespacedIssuerRules {
        NamespacedIssuerRules {
            allowed_servers: allowed.iter().map(|s| s.to_string()).collect(),
            allow_skip_tls_verify: allow_skip,
        }
    }

    #[test]
    fn an_issuer_may_use_only_the_servers_the_operator_allows() {
        let allowed = ["https://ca.internal/acme/", "step.internal", "*.pki.internal", "https://[fd00::1]:9000"];
        // (case, server, accepted)
        let cases = [
            ("a server under an allowed URL prefix", "https://ca.internal/acme/acme/directory", true),
            ("the prefix's host in upper case", "https://CA.internal/acme/acme/directory", true),
            ("another path on the prefix's host", "https://ca.internal/other/directory", false),
            ("a longer host than the prefix's", "https://ca.internal.evil.test/acme/directory", false),
            ("the prefix's host with another port", "https://ca.internal:8443/acme/directory", false),
            ("a prefix's host with user info", "https://ca.internal@evil.test/acme/directory", false),
            ("an allowed host", "https://step.internal/acme/acme/directory", true),
            ("an allowed host with a port", "https://step.internal:9000/directory", true),
            ("an allowed host in upper case", "https://STEP.internal/directory", true),
            ("a subdomain of an allowed host", "https://a.step.internal/directory", false),
            ("a subdomain of an allowed zone", "https://ca.pki.internal/directory", true),
            ("a deeper subdomain of an allowed zone", "https://a.b.pki.internal/directory", true),
            ("the allowed zone itself", "https://pki.internal/directory", false),
            ("a host ending like the zone", "https://evilpki.internal/directory", false),
            ("an IPv6 prefix", "https://[fd00::1]:9000/dir", true),
            ("an IPv6 prefix with another port", "https://[fd00::1]:9001/dir", false),
            ("anything else", "https://acme.example.com/directory", false),
        ];
        for (case, server, accepted) in cases {
            let result = check_namespaced_issuer(&acme(server, None), &rules(&allowed, false));
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
            if let Err(refusal) = result {
                assert_eq!(refusal.reason(), IssuerReason::ServerNotAllowed, "{case}");
                assert!(refusal.to_string().contains(server), "{case}: names the server: {refusal}");
            }
        }
    }

    #[test]
    fn skipping_tls_verification_needs_the_operators_consent() {
        // (case, skipTLSVerify, operator allows, accepted)
        let cases = [
            ("verification kept", None, false, true),
            ("verification explicitly kept", Some(false), false, true),
            ("verification skipped without consent", Some(true), false, false),
            ("verification skipped with consent", Some(true), true, true),
        ];
        for (case, skip, allow, accepted) in cases {
            let result = check_namespaced_issuer(&acme("https://ca.internal/dir", skip), &rules(&[], allow));
            assert_eq!(result.is_ok(), accepted, "{case}");
            if let Err(refusal) = result {
                assert_eq!(refusal.reason(), IssuerReason::SkipTlsVerifyNotAllowed, "{case}");
            }
        }
    }

    #[test]
    fn without_rules_every_server_is_allowed() {
        let result = check_namespaced_issuer(&acme("https://anything.example/dir", None), &rules(&[], false));
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn allowed_servers_are_read_from_a_comma_separated_flag() {
        // (text, accepted)
        let cases = [
            ("", true),
            ("ca.internal, *.pki.internal", true),
            ("https://ca.internal/acme/", true),
            ("http://ca.internal/acme/", false),
            ("https://", false),
            ("ca internal", false),
        ];
        for (text, accepted) in cases {
            assert_eq!(parse_allowed_servers(text).is_ok(), accepted, "{text:?}");
        }
    }
}
