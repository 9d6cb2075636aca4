//! `kacme inspect secret`: what a `kubernetes.io/tls` Secret holds, decoded as cmctl does (pure: a Secret and
//! the time in, a report out). The private key is parsed only to say whether it matches the leaf; it is
//! never part of the report.

use super::style::Style;
use super::x509::{CertificateFacts, certificate_facts};
use crate::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use crate::pki::{key_matches_certificate, parse_ca_bundle, parse_chain, parse_private_key, verify_chain};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use std::fmt::Write as _;

/// The decoded Secret (the JSON of `kacme inspect secret -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretReport {
    pub namespace: String,
    pub name: String,
    /// The Secret's type (`kubernetes.io/tls` for kacme's).
    #[serde(rename = "type")]
    pub type_: String,
    /// Each certificate of tls.crt, leaf first.
    pub certificates: Vec<CertificateFacts>,
    /// Why tls.crt could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates_error: Option<String>,
    /// Whether tls.key is the leaf's key: `matches`, `doesNotMatch`, `absent` or `unreadable`.
    pub private_key: KeyCheck,
    /// Each certificate of ca.crt.
    pub ca_certificates: Vec<CertificateFacts>,
    /// Why ca.crt could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates_error: Option<String>,
    /// Whether the chain of tls.crt verifies to ca.crt now: `verifies`, `doesNotVerify` or `noCaCrt`.
    pub chain: ChainCheck,
    /// Why the chain does not verify, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_error: Option<String>,
}

/// Whether tls.key belongs to the leaf of tls.crt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyCheck {
    Matches,
    DoesNotMatch,
    Absent,
    Unreadable,
}

/// Whether tls.crt verifies to ca.crt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChainCheck {
    Verifies,
    DoesNotVerify,
    NoCaCrt,
}

/// Decodes `secret` as of `now`.
pub fn inspect_secret(secret: &Secret, now: Timestamp) -> SecretReport {
    let data = secret.data.clone().unwrap_or_default();
    let field = |key: &str| data.get(key).map(|b| b.0.as_slice()).filter(|b| !b.is_empty());
    let (certificates, certificates_error, chain) = match field(TLS_CRT) {
        None => (Vec::new(), Some(format!("{TLS_CRT} is absent or empty")), None),
        Some(pem) => match parse_chain(pem) {
            Ok(chain) => {
                let (facts, error) = all_facts(&chain.certificates);
                (facts, error, Some(chain))
            }
            Err(e) => (Vec::new(), Some(e.to_string()), None),
        },
    };
    let private_key = match (field(TLS_KEY), &chain) {
        (None, _) => KeyCheck::Absent,
        (Some(pem), chain) => match (parse_private_key(pem), chain) {
            (Err(_), _) => KeyCheck::Unreadable,
            (Ok(key), Some(chain)) if key_matches_certificate(&key, &chain.leaf) => KeyCheck::Matches,
            (Ok(_), _) => KeyCheck::DoesNotMatch,
        },
    };
    let (ca_certificates, ca_certificates_error, bundle) = match field(CA_CRT) {
        None => (Vec::new(), None, None),
        Some(text) => match parse_ca_bundle(text) {
            Ok(bundle) => {
                let (facts, error) = all_facts(&bundle);
                (facts, error, Some(bundle))
            }
            Err(e) => (Vec::new(), Some(e.to_string()), None),
        },
    };
    let (chain, chain_error) = match (&chain, &bundle) {
        (_, None) => (ChainCheck::NoCaCrt, None),
        (None, Some(_)) => (ChainCheck::DoesNotVerify, Some(format!("{TLS_CRT} holds no readable certificate"))),
        (Some(chain), Some(bundle)) => match verify_chain(chain, bundle, now) {
            Ok(()) => (ChainCheck::Verifies, None),
            Err(e) => (ChainCheck::DoesNotVerify, Some(e.to_string())),
        },
    };
    SecretReport {
        namespace: secret.metadata.namespace.clone().unwrap_or_default(),
        name: secret.metadata.name.clone().unwrap_or_default(),
        type_: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
        certificates,
        certificates_error,
        private_key,
        ca_certificates,
        ca_certificates_error,
        chain,
        chain_error,
    }
}

fn all_facts(ders: &[Vec<u8>]) -> (Vec<CertificateFacts>, Option<String>) {
    let mut facts = Vec::new();
    for (index, der) in ders.iter().enumerate() {
        match certificate_facts(der) {
            Ok(f) => facts.push(f),
            Err(e) => return (facts, Some(format!("certificate {index}: {e}"))),
        }
    }
    (facts, None)
}

/// The report as text for people.
pub fn render_secret(report: &SecretReport, style: Style, now: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}/{} ({})", style.bold("Secret"), report.namespace, report.name, report.type_);
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", style.bold(&format!("{TLS_CRT}: {} certificate(s)", report.certificates.len())));
    for (index, facts) in report.certificates.iter().enumerate() {
        let role = if index == 0 { "leaf" } else { "chain" };
        render_facts(&mut out, &format!("[{index}] {role}"), facts, style, now);
    }
    if let Some(error) = &report.certificates_error {
        let _ = writeln!(out, "  {}", style.bad(error));
    }
    let key = match report.private_key {
        KeyCheck::Matches => style.good("matches the leaf certificate"),
        KeyCheck::DoesNotMatch => style.bad("does NOT match the leaf certificate"),
        KeyCheck::Absent => style.bad("absent"),
        KeyCheck::Unreadable => style.bad("present but not a readable private key"),
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "{} {key} (never printed)", style.bold(&format!("{TLS_KEY}:")));
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", style.bold(&format!("{CA_CRT}: {} certificate(s)", report.ca_certificates.len())));
    for (index, facts) in report.ca_certificates.iter().enumerate() {
        render_facts(&mut out, &format!("[{index}]"), facts, style, now);
    }
    if let Some(error) = &report.ca_certificates_error {
        let _ = writeln!(out, "  {}", style.bad(error));
    }
    let chain = match report.chain {
        ChainCheck::Verifies => style.good(&format!("{TLS_CRT} verifies to {CA_CRT}")),
        ChainCheck::DoesNotVerify => style.bad(&format!(
            "{TLS_CRT} does NOT verify to {CA_CRT}: {}",
            report.chain_error.as_deref().unwrap_or("unknown reason")
        )),
        ChainCheck::NoCaCrt => style.warn(&format!("no {CA_CRT}: the chain was not verified")),
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "{} {chain}", style.bold("Chain:"));
    out
}

/// One certificate's facts as indented lines under `title`.
pub(crate) fn render_facts(out: &mut String, title: &str, facts: &CertificateFacts, style: Style, now: Timestamp) {
    let _ = writeln!(out, "  {title}");
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "      {:<18}{value}", format!("{label}:"));
    };
    line("Subject", if facts.subject.is_empty() { "(empty)".into() } else { facts.subject.clone() });
    let mut names: Vec<String> = facts.dns_names.iter().map(|n| format!("DNS:{n}")).collect();
    names.extend(facts.ip_addresses.iter().map(|ip| format!("IP:{ip}")));
    if !names.is_empty() {
        line("Names", names.join(", "));
    }
    line("Issuer", facts.issuer.clone());
    line("Serial", facts.serial.clone());
    line("Not before", facts.not_before.to_string());
    let expiry = if facts.not_after <= now {
        style.bad(&format!("{} (expired)", facts.not_after))
    } else if facts.not_before > now {
        style.warn(&format!("{} (not valid yet)", facts.not_after))
    } else {
        format!("{} ({} left)", facts.not_after, super::status::human_duration(facts.not_after.duration_since(now)))
    };
    line("Not after", expiry);
    line("Public key", facts.public_key.clone());
    if !facts.key_usages.is_empty() {
        line("Key usage", facts.key_usages.join(", "));
    }
    if !facts.extended_key_usages.is_empty() {
        line("Extended usage", facts.extended_key_usages.join(", "));
    }
    if facts.is_ca {
        line("CA", "yes".into());
    }
    line("SHA-256", facts.sha256_fingerprint.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KeyAlgorithm, KeyEncoding};
    use crate::pki::testing::TestCa;
    use crate::pki::{KeySpec, generate_private_key};
    use k8s_openapi::ByteString;

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_003_600).unwrap()
    }

    fn tls_secret(fields: &[(&str, String)]) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("web-tls".into());
        secret.metadata.namespace = Some("apps".into());
        secret.type_ = Some("kubernetes.io/tls".into());
        secret.data = Some(fields.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect());
        secret
    }

    fn spec() -> KeySpec {
        KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 256, encoding: KeyEncoding::Pkcs8 }
    }

    #[test]
    fn a_good_secret_reads_as_leaf_and_chain_with_a_matching_key_verifying_to_ca_crt() {
        let ca = TestCa::new("Inspect");
        let key = generate_private_key(&spec()).unwrap();
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let chain =
            ca.issue(&key, &["a.example", "b.example"], &[], None, start, start + jiff::SignedDuration::from_hours(24));
        let secret = tls_secret(&[(TLS_CRT, chain), (TLS_KEY, key.pem().to_string()), (CA_CRT, ca.root_pem())]);

        let report = inspect_secret(&secret, now());
        let text = render_secret(&report, Style::plain(), now());

        assert_eq!(report.certificates.len(), 2);
        assert_eq!(report.certificates[0].dns_names, ["a.example", "b.example"]);
        assert_eq!(report.certificates[1].subject, "CN=Inspect Intermediate CA");
        assert_eq!(report.ca_certificates[0].subject, "CN=Inspect Root CA");
        assert_eq!((report.private_key, report.chain), (KeyCheck::Matches, ChainCheck::Verifies));
        for expected in [
            "Secret apps/web-tls (kubernetes.io/tls)",
            "tls.crt: 2 certificate(s)",
            "Names:            DNS:a.example, DNS:b.example",
            &format!("Serial:           {}", report.certificates[0].serial),
            "tls.key: matches the leaf certificate (never printed)",
            "Chain: tls.crt verifies to ca.crt",
            "Not after:        2023-11-15T22:13:20Z (23h0m left)",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert!(!text.contains("PRIVATE KEY") && !text.contains(key.pem().lines().nth(1).unwrap()), "never the key");
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "never the key: {json}");
    }

    #[test]
    fn a_foreign_key_and_a_wrong_ca_are_reported_plainly() {
        let ca = TestCa::new("One");
        let other = TestCa::new("Other");
        let key = generate_private_key(&spec()).unwrap();
        let stranger = generate_private_key(&spec()).unwrap();
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let chain = ca.issue(&key, &["a.example"], &[], None, start, start + jiff::SignedDuration::from_hours(24));
        let secret = tls_secret(&[(TLS_CRT, chain), (TLS_KEY, stranger.pem().to_string()), (CA_CRT, other.root_pem())]);

        let report = inspect_secret(&secret, now());
        let text = render_secret(&report, Style::plain(), now());

        assert_eq!((report.private_key, report.chain), (KeyCheck::DoesNotMatch, ChainCheck::DoesNotVerify));
        assert!(text.contains("tls.key: does NOT match the leaf certificate"), "{text}");
        assert!(text.contains("Chain: tls.crt does NOT verify to ca.crt"), "{text}");
    }

    #[test]
    fn an_empty_secret_says_what_is_missing() {
        let report = inspect_secret(&tls_secret(&[]), now());
        assert_eq!((report.private_key, report.chain), (KeyCheck::Absent, ChainCheck::NoCaCrt));
        assert_eq!(report.certificates_error.as_deref(), Some("tls.crt is absent or empty"));
    }

    #[test]
    fn the_json_shape_names_its_fields_in_camel_case() {
        let value = serde_json::to_value(inspect_secret(&tls_secret(&[]), now())).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["caCertificates", "certificates", "certificatesError", "chain", "name", "namespace", "privateKey", "type"]
        );
        assert_eq!(value["privateKey"], "absent");
        assert_eq!(value["chain"], "noCaCrt");
    }
}
