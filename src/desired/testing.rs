//! Fixtures and validity checks shared by the tests of this module.

use crate::acme::Http01Challenge;
use crate::api::{Certificate, CertificateSpec, IssuerKind, IssuerRef};

/// A Certificate `web` in namespace `apps` for `web.example.test`, from Issuer `ca`, as read from the
/// apiserver (it has a uid).
pub fn certificate() -> Certificate {
    let mut c = Certificate::new(
        "web",
        CertificateSpec {
            secret_name: "web-tls".into(),
            issuer_ref: IssuerRef { name: "ca".into(), kind: IssuerKind::Issuer },
            dns_names: vec!["web.example.test".into()],
            ip_addresses: vec![],
            common_name: None,
            duration: None,
            renew_before: None,
            renew_before_percentage: None,
            private_key: None,
            usages: vec![],
            secret_template: None,
            profile: None,
            additional_output_formats: vec![],
            keystores: None,
        },
    );
    c.metadata.namespace = Some("apps".into());
    c.metadata.uid = Some("0b6b2c4e-1d1f-4c55-9a7e-3c1f00000001".into());
    c.metadata.generation = Some(1);
    c
}

/// An HTTP-01 challenge for `identifier`.
pub fn challenge(identifier: &str, token: &str, authorization_url: &str) -> Http01Challenge {
    Http01Challenge {
        identifier: identifier.into(),
        token: token.into(),
        key_authorization: format!("{token}.thumbprint"),
        authorization_url: authorization_url.into(),
    }
}

/// Whether `name` is a DNS-1035 label: up to 63 lowercase letters, digits and `-`, starting with a
/// letter and ending with a letter or digit.
pub fn is_dns_1035_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `name` is a DNS subdomain as Kubernetes checks object names (`IsDNS1123Subdomain`): up to
/// 253 characters, dot-separated parts of lowercase letters, digits and `-` that begin and end with a
/// letter or digit. Like Kubernetes, it does not limit the length of each part.
pub fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}
