//! The fake's certificates: an issuing CA that signs leaves from CSRs, and a separate TLS root and
//! listener certificate for the HTTPS endpoint (as with Pebble, trusting the endpoint and trusting the
//! issued chains are two different things, so a test that mixes them up fails).

use crate::pki::testing::ca_params;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The issuing CA and the HTTPS listener's certificate.
pub(super) struct FakeCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    tls_root_der: Vec<u8>,
    listener_der: Vec<u8>,
    listener_key_der: Vec<u8>,
}

/// A name a certificate is for, as an order's identifier or a CSR's subjectAltName.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl Name {
    /// Reads an RFC 8555 identifier (`{"type": "dns"|"ip", "value": ...}`).
    pub(super) fn from_identifier(identifier: &serde_json::Value) -> Result<Name, String> {
        let value = identifier.get("value").and_then(|v| v.as_str()).ok_or("an identifier has no value")?;
        match identifier.get("type").and_then(|t| t.as_str()) {
            Some("dns") if !value.is_empty() => Ok(Name::Dns(value.to_ascii_lowercase())),
            Some("ip") => value.parse().map(Name::Ip).map_err(|_| format!("{value:?} is not an IP address")),
            other => Err(format!("identifier type {other:?} with value {value:?} is not supported")),
        }
    }

    /// The identifier as JSON.
    pub(super) fn to_identifier(&self) -> serde_json::Value {
        match self {
            Name::Dns(name) => serde_json::json!({"type": "dns", "value": name}),
            Name::Ip(ip) => serde_json::json!({"type": "ip", "value": ip.to_string()}),
        }
    }

    /// The name as text (a DNS name or an IP address).
    pub(super) fn text(&self) -> String {
        match self {
            Name::Dns(name) => name.clone(),
            Name::Ip(ip) => ip.to_string(),
        }
    }
}

/// A signed certificate: the PEM chain (leaf, then the CA) and the leaf's serial as lowercase hex.
pub(super) struct Signed {
    pub(super) chain_pem: String,
    pub(super) serial: String,
}

fn random_serial() -> SerialNumber {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes);
    // Positive and without a leading zero byte, so DER keeps all 16 bytes as they are.
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    SerialNumber::from_slice(&bytes)
}

impl FakeCa {
    /// A new CA and listener certificate (test-only: panics if rcgen cannot make them).
    pub(super) fn new() -> FakeCa {
        let issuer = CertifiedIssuer::self_signed(
            ca_params("kacme fake ACME issuing CA"),
            KeyPair::generate().expect("an issuing CA key"),
        )
        .expect("the issuing CA certificate");
        let tls_root = CertifiedIssuer::self_signed(
            ca_params("kacme fake ACME TLS root"),
            KeyPair::generate().expect("a TLS root key"),
        )
        .expect("the TLS root certificate");
        let mut listener = CertificateParams::new(vec!["localhost".to_string()]).expect("listener names");
        listener.subject_alt_names.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        let listener_key = KeyPair::generate().expect("a listener key");
        let listener_cert = listener.signed_by(&listener_key, &tls_root).expect("the listener certificate");
        FakeCa {
            tls_root_der: tls_root.der().to_vec(),
            listener_der: listener_cert.der().to_vec(),
            listener_key_der: listener_key.serialize_der(),
            issuer,
        }
    }

    /// The issuing CA certificate as PEM.
    pub(super) fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The TLS root that signed the listener certificate (DER).
    pub(super) fn tls_root_der(&self) -> Vec<u8> {
        self.tls_root_der.clone()
    }

    /// The listener's certificate chain and key, for rustls.
    pub(super) fn listener(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.listener_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.listener_key_der.clone())),
        )
    }

    /// Signs a leaf for the CSR if its names are exactly `names`; else the `badCSR` detail.
    /// The leaf ends at `not_after` and begins a minute ago.
    pub(super) fn sign(
        &self,
        csr_der: &[u8],
        names: &BTreeSet<Name>,
        not_after: time::OffsetDateTime,
    ) -> Result<Signed, String> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| format!("the CSR cannot be read: {e}"))?;
        let mut requested = BTreeSet::new();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(name) => requested.insert(Name::Dns(name.as_str().to_ascii_lowercase())),
                SanType::IpAddress(ip) => requested.insert(Name::Ip(*ip)),
                other => return Err(format!("the CSR asks for an unsupported name {other:?}")),
            };
        }
        if &requested != names {
            let list = |set: &BTreeSet<Name>| set.iter().map(Name::text).collect::<Vec<_>>().join(", ");
            return Err(format!(
                "the CSR's names [{}] are not the order's identifiers [{}]",
                list(&requested),
                list(names)
            ));
        }
        let mut params = csr.params.clone();
        let common_name = params.distinguished_name.get(&DnType::CommonName).cloned();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = common_name {
            let text = dn_text(&cn);
            if !names.iter().any(|n| n.text().eq_ignore_ascii_case(&text)) {
                return Err(format!("the CSR's common name {text:?} is not one of the order's identifiers"));
            }
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = not_after;
        let leaf = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(|e| format!("signing failed: {e}"))?;
        let serial = {
            use x509_parser::prelude::FromDer as _;
            let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf.der())
                .map_err(|e| format!("the signed leaf cannot be read back: {e}"))?;
            parsed.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(Signed { chain_pem: format!("{}{}", leaf.pem(), self.issuer.pem()), serial })
    }
}

/// The text of a distinguished name value (empty for the UCS encodings, which kacme never writes).
fn dn_text(value: &rcgen::DnValue) -> String {
    match value {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        _ => String::new(),
    }
}
