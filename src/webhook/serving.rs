//! The webhook's serving certificate: a small CA of the operator's own (rcgen) and a leaf it signs, kept in
//! a Secret so that every replica serves the same certificate, rotated well before expiry.
//!
//! The Secret holds `ca.crt` (the CA bundle the apiserver trusts: the current CA, plus the previous one
//! while it is still valid, so that a CA rotation never breaks a call in flight), `ca.key`, `tls.crt` and
//! `tls.key`. Deciding what to renew is pure ([`serving_plan`]); building uses rcgen.

use crate::pki::{CertificateInfo, parse_ca_bundle, parse_chain, verify_chain};
use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Secret key of the CA's private key.
pub const CA_KEY: &str = "ca.key";

/// Lifetimes of the serving certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingPolicy {
    /// Lifetime of the CA. A new CA is made when less than a fifth of it remains.
    pub ca_lifetime: Duration,
    /// Lifetime of the serving certificate. A new one is made when less than a third of it remains.
    pub leaf_lifetime: Duration,
}

impl Default for ServingPolicy {
    fn default() -> Self {
        ServingPolicy {
            ca_lifetime: Duration::from_secs(5 * 365 * 24 * 3600),
            leaf_lifetime: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// The serving material as stored in the Secret (PEM text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServingMaterial {
    /// The CA bundle: current CA first, then older CAs that are still valid.
    pub ca_bundle: String,
    /// The current CA's private key.
    pub ca_key: String,
    /// The serving certificate.
    pub tls_crt: String,
    /// Its private key.
    pub tls_key: String,
}

impl ServingMaterial {
    /// Reads the material from a Secret's data; `None` when a key is missing or not UTF-8.
    pub fn from_secret_data(data: &BTreeMap<String, k8s_openapi::ByteString>) -> Option<ServingMaterial> {
        let text = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok());
        Some(ServingMaterial {
            ca_bundle: text(crate::api::names::CA_CRT)?,
            ca_key: text(CA_KEY)?,
            tls_crt: text(crate::api::names::TLS_CRT)?,
            tls_key: text(crate::api::names::TLS_KEY)?,
        })
    }

    /// The Secret data of the material.
    pub fn to_secret_data(&self) -> BTreeMap<String, k8s_openapi::ByteString> {
        [
            (crate::api::names::CA_CRT, &self.ca_bundle),
            (CA_KEY, &self.ca_key),
            (crate::api::names::TLS_CRT, &self.tls_crt),
            (crate::api::names::TLS_KEY, &self.tls_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

/// What to make anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingPlan {
    /// Everything is valid for a good while.
    Keep,
    /// Sign a new serving certificate with the current CA.
    NewLeaf,
    /// Make a new CA (and a serving certificate signed by it).
    NewCa,
}

fn remaining_fraction_below(info: &CertificateInfo, now: Timestamp, denominator: i32) -> bool {
    let lifetime = info.not_after.duration_since(info.not_before);
    let left = info.not_after.duration_since(now);
    left < lifetime / denominator
}

/// What to renew, given the stored material (if any), the names the certificate must carry, and now.
pub fn serving_plan(material: Option<&ServingMaterial>, hosts: &[String], now: Timestamp) -> ServingPlan {
    let Some(material) = material else { return ServingPlan::NewCa };
    let ca = match parse_chain(material.ca_bundle.as_bytes()) {
        Ok(chain) => chain.leaf,
        Err(_) => return ServingPlan::NewCa,
    };
    if KeyPair::from_pem(&material.ca_key).is_err() || remaining_fraction_below(&ca, now, 5) {
        return ServingPlan::NewCa;
    }
    let Ok(leaf) = parse_chain(material.tls_crt.as_bytes()) else { return ServingPlan::NewLeaf };
    let Ok(bundle) = parse_ca_bundle(material.ca_bundle.as_bytes()) else { return ServingPlan::NewCa };
    // The leaf must chain to the current (first) CA of the bundle.
    let signed_by_current =
        bundle.first().is_some_and(|ca_der| verify_chain(&leaf, std::slice::from_ref(ca_der), now).is_ok());
    let mut names: Vec<String> = leaf.leaf.dns_names.clone();
    names.extend(leaf.leaf.ip_addresses.iter().map(|ip| ip.to_string()));
    names.sort();
    let mut wanted = hosts.to_vec();
    wanted.sort();
    wanted.dedup();
    if !signed_by_current
        || names != wanted
        || KeyPair::from_pem(&material.tls_key).is_err()
        || remaining_fraction_below(&leaf.leaf, now, 3)
    {
        return ServingPlan::NewLeaf;
    }
    ServingPlan::Keep
}

/// Errors making serving certificates.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// rcgen failed.
    #[error("generating the webhook serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A time outside of what certificates can carry.
    #[error("certificate validity out of range")]
    Time,
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, ServingError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| ServingError::Time)
}

fn validity(params: &mut CertificateParams, now: Timestamp, lifetime: Duration) -> Result<(), ServingError> {
    // Backdate a little for clocks that lag behind ours.
    params.not_before = offset(now - SignedDuration::from_mins(5))?;
    let lifetime = SignedDuration::try_from(lifetime).map_err(|_| ServingError::Time)?;
    params.not_after = offset(now + lifetime)?;
    Ok(())
}

fn ca_params(now: Timestamp, policy: &ServingPolicy) -> Result<CertificateParams, ServingError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("kacme webhook CA {}", now.as_second()));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, now, policy.ca_lifetime)?;
    Ok(params)
}

/// Carries out `plan` on `material`: a new CA (keeping the previous CAs that are still valid in the
/// bundle) and/or a new serving certificate for `hosts` (DNS names or IP addresses).
pub fn renew_serving_material(
    plan: ServingPlan,
    material: Option<&ServingMaterial>,
    hosts: &[String],
    now: Timestamp,
    policy: &ServingPolicy,
) -> Result<ServingMaterial, ServingError> {
    let mut out = material.cloned().unwrap_or_default();
    if plan == ServingPlan::Keep {
        return Ok(out);
    }
    let issuer = if plan == ServingPlan::NewCa {
        let key = KeyPair::generate()?;
        let params = ca_params(now, policy)?;
        let certificate = params.self_signed(&key)?;
        let mut bundle = certificate.pem();
        for old in pem::parse_many(&out.ca_bundle).unwrap_or_default() {
            let old_pem = pem::encode(&old);
            let still_valid = parse_chain(old_pem.as_bytes()).is_ok_and(|c| c.leaf.not_after > now);
            if old.tag() == "CERTIFICATE" && still_valid {
                bundle.push_str(&old_pem);
            }
        }
        out.ca_bundle = bundle;
        out.ca_key = key.serialize_pem();
        Issuer::new(params, key)
    } else {
        let key = KeyPair::from_pem(&out.ca_key)?;
        let first = pem::parse_many(&out.ca_bundle).ok().and_then(|b| b.into_iter().next());
        let ca_pem = first.map(|b| pem::encode(&b)).unwrap_or_default();
        Issuer::from_ca_cert_pem(&ca_pem, key)?
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "kacme webhook");
    params.distinguished_name = name;
    for host in hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, now, policy.leaf_lifetime)?;
    let key = KeyPair::generate()?;
    out.tls_crt = params.signed_by(&key, &issuer)?.pem();
    out.tls_key = key.serialize_pem();
    Ok(out)
}

/// How long until the stored serving certificate should be looked at again: when a third of its lifetime
/// remains (at least a minute from now, at most an hour: another replica may have rotated it).
pub fn next_check(material: &ServingMaterial, now: Timestamp) -> Duration {
    let Ok(leaf) = parse_chain(material.tls_crt.as_bytes()) else { return Duration::from_secs(60) };
    let lifetime = leaf.leaf.not_after.duration_since(leaf.leaf.not_before);
    let due = leaf.leaf.not_after - lifetime / 3;
    let wait = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO);
    wait.clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["127.0.0.5".into(), "kacme-webhook.kacme.svc".into()]
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn fresh(policy: &ServingPolicy) -> ServingMaterial {
        renew_serving_material(ServingPlan::NewCa, None, &hosts(), now(), policy).unwrap()
    }

    #[test]
    fn nothing_stored_means_a_new_ca() {
        assert_eq!(serving_plan(None, &hosts(), now()), ServingPlan::NewCa);
    }

    #[test]
    fn fresh_material_is_kept_and_names_the_hosts() {
        let material = fresh(&ServingPolicy::default());
        assert_eq!(serving_plan(Some(&material), &hosts(), now()), ServingPlan::Keep);
        let leaf = parse_chain(material.tls_crt.as_bytes()).unwrap();
        assert_eq!(leaf.leaf.dns_names, ["kacme-webhook.kacme.svc"]);
        assert_eq!(leaf.leaf.ip_addresses, ["127.0.0.5".parse::<IpAddr>().unwrap()]);
        let bundle = parse_ca_bundle(material.ca_bundle.as_bytes()).unwrap();
        verify_chain(&leaf, &bundle, now()).unwrap();
    }

    #[test]
    fn the_leaf_is_renewed_when_a_third_of_its_life_remains_or_the_hosts_change() {
        let policy = ServingPolicy { leaf_lifetime: Duration::from_secs(3000), ..ServingPolicy::default() };
        let material = fresh(&policy);
        assert_eq!(serving_plan(Some(&material), &hosts(), now() + SignedDuration::from_secs(1500)), ServingPlan::Keep);
        assert_eq!(
            serving_plan(Some(&material), &hosts(), now() + SignedDuration::from_secs(2300)),
            ServingPlan::NewLeaf
        );
        assert_eq!(serving_plan(Some(&material), &["other.svc".to_string()], now()), ServingPlan::NewLeaf);
        let renewed = renew_serving_material(ServingPlan::NewLeaf, Some(&material), &hosts(), now(), &policy).unwrap();
        assert_eq!(renewed.ca_bundle, material.ca_bundle, "the CA stays");
        assert_ne!(renewed.tls_crt, material.tls_crt);
        assert_eq!(serving_plan(Some(&renewed), &hosts(), now()), ServingPlan::Keep);
    }

    #[test]
    fn a_new_ca_keeps_the_old_one_in_the_bundle_while_it_is_valid() {
        let policy =
            ServingPolicy { ca_lifetime: Duration::from_secs(10_000), leaf_lifetime: Duration::from_secs(1000) };
        let material = fresh(&policy);
        let later = now() + SignedDuration::from_secs(9_000);
        assert_eq!(serving_plan(Some(&material), &hosts(), later), ServingPlan::NewCa);
        let rotated = renew_serving_material(ServingPlan::NewCa, Some(&material), &hosts(), later, &policy).unwrap();
        assert_eq!(parse_ca_bundle(rotated.ca_bundle.as_bytes()).unwrap().len(), 2);
        assert_eq!(serving_plan(Some(&rotated), &hosts(), later), ServingPlan::Keep);
    }

    #[test]
    fn material_survives_the_round_trip_through_secret_data() {
        let material = fresh(&ServingPolicy::default());
        assert_eq!(ServingMaterial::from_secret_data(&material.to_secret_data()), Some(material));
    }
}
