//! Table tests of the issuance decision, on real keys and certificates from a throwaway CA.

use super::*;
use crate::api::names::*;
use crate::api::{Certificate, CertificateStatus, IssuerKind, KeyAlgorithm, KeyEncoding, KeyUsage, PrivateKeySpec};
use crate::desired::testing::certificate;
use crate::pki::testing::TestCa;
use crate::pki::{KeySpec, effective_usages, generate_private_key, parse_chain};
use jiff::{Timestamp, ToSpan};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::BTreeMap;

fn issued_at() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

/// A Secret as kacme writes it for `certificate`, with a 24h certificate issued at `issued_at()`.
fn secret_for(ca: &TestCa, certificate: &Certificate) -> Secret {
    let spec = &certificate.spec;
    let key_spec = KeySpec::from_spec(spec.private_key.as_ref());
    let key = generate_private_key(&key_spec).unwrap();
    let dns: Vec<&str> = spec.dns_names.iter().map(String::as_str).collect();
    let ips: Vec<&str> = spec.ip_addresses.iter().map(String::as_str).collect();
    let chain = ca.issue(&key, &dns, &ips, spec.common_name.as_deref(), issued_at(), issued_at() + 24.hours());
    let annotations = BTreeMap::from([
        (ANNOTATION_CERTIFICATE_NAME.to_string(), "web".to_string()),
        (ANNOTATION_CERTIFICATE_UID.to_string(), certificate.metadata.uid.clone().unwrap_or_default()),
        (ANNOTATION_ISSUER_NAME.to_string(), spec.issuer_ref.name.clone()),
        (ANNOTATION_ISSUER_KIND.to_string(), spec.issuer_ref.kind.to_string()),
        (
            ANNOTATION_USAGES.to_string(),
            issuance::usages_annotation(&effective_usages(&spec.usages, key_spec.algorithm)),
        ),
    ]);
    let mut secret = Secret::default();
    secret.metadata.name = Some(spec.secret_name.clone());
    secret.metadata.annotations = Some(annotations);
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(BTreeMap::from([
        (TLS_CRT.to_string(), ByteString(chain.into_bytes())),
        (TLS_KEY.to_string(), ByteString(key.pem().as_bytes().to_vec())),
        (CA_CRT.to_string(), ByteString(ca.root_pem().into_bytes())),
    ]));
    secret
}

fn with_data(mut secret: Secret, key: &str, value: Option<&[u8]>) -> Secret {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => data.insert(key.to_string(), ByteString(v.to_vec())),
        None => data.remove(key),
    };
    secret
}

fn with_annotation(mut secret: Secret, key: &str, value: Option<&str>) -> Secret {
    let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => annotations.insert(key.to_string(), v.to_string()),
        None => annotations.remove(key),
    };
    secret
}

fn decide(certificate: &Certificate, secret: Option<&Secret>, now: Timestamp) -> IssuanceDecision {
    issuance_decision(&Observed { certificate, secret, now }, &BackoffPolicy::default())
}

fn reason_of(decision: &IssuanceDecision) -> Option<IssuanceReason> {
    match decision {
        IssuanceDecision::Issue { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn every_reason_to_issue_is_recognised() {
    let ca = TestCa::new("Decide");
    let other_ca = TestCa::new("Other");
    let cert = certificate();
    let good = secret_for(&ca, &cert);
    let soon = issued_at() + 1.hour();
    let foreign_key = generate_private_key(&KeySpec::from_spec(None)).unwrap();

    let edit = |f: &dyn Fn(&mut Certificate)| {
        let mut c = certificate();
        f(&mut c);
        c
    };
    let rsa = edit(&|c| {
        c.spec.private_key = Some(PrivateKeySpec { algorithm: Some(KeyAlgorithm::Rsa), ..Default::default() })
    });
    let p384 = edit(&|c| c.spec.private_key = Some(PrivateKeySpec { size: Some(384), ..Default::default() }));
    let pkcs8 = edit(&|c| {
        c.spec.private_key = Some(PrivateKeySpec { encoding: Some(KeyEncoding::Pkcs8), ..Default::default() })
    });
    let more_names = edit(&|c| c.spec.dns_names.push("api.example.test".into()));
    let other_names = edit(&|c| c.spec.dns_names = vec!["other.example.test".into()]);
    let with_ip = edit(&|c| c.spec.ip_addresses = vec!["127.0.0.1".into()]);
    let with_cn = edit(&|c| c.spec.common_name = Some("web.example.test".into()));
    let other_issuer = edit(&|c| c.spec.issuer_ref.name = "other".into());
    let cluster_issuer = edit(&|c| c.spec.issuer_ref.kind = IssuerKind::ClusterIssuer);
    let mtls = edit(&|c| c.spec.usages = vec![KeyUsage::DigitalSignature, KeyUsage::ServerAuth, KeyUsage::ClientAuth]);
    let renew_requested = edit(&|c| {
        c.metadata.annotations =
            Some(BTreeMap::from([(ANNOTATION_RENEW_REQUESTED_AT.into(), "2026-06-01T01:00:00Z".into())]))
    });
    let pct = edit(&|c| c.spec.renew_before_percentage = Some(90));

    use IssuanceReason::*;
    // (case, certificate, secret, now, expected reason; None = no issuance)
    let cases: Vec<(&str, &Certificate, Option<Secret>, Timestamp, Option<IssuanceReason>)> = vec![
        ("a missing Secret", &cert, None, soon, Some(DoesNotExist)),
        ("a Secret without tls.crt", &cert, Some(with_data(good.clone(), TLS_CRT, None)), soon, Some(MissingData)),
        ("a Secret without tls.key", &cert, Some(with_data(good.clone(), TLS_KEY, None)), soon, Some(MissingData)),
        (
            "a Secret with an empty tls.crt",
            &cert,
            Some(with_data(good.clone(), TLS_CRT, Some(b""))),
            soon,
            Some(MissingData),
        ),
        ("a Secret with no data", &cert, Some(Secret { data: None, ..good.clone() }), soon, Some(MissingData)),
        (
            "a garbled tls.crt",
            &cert,
            Some(with_data(good.clone(), TLS_CRT, Some(b"garbage"))),
            soon,
            Some(InvalidKeyPair),
        ),
        (
            "a garbled tls.key",
            &cert,
            Some(with_data(good.clone(), TLS_KEY, Some(b"garbage"))),
            soon,
            Some(InvalidKeyPair),
        ),
        (
            "a key of another certificate",
            &cert,
            Some(with_data(good.clone(), TLS_KEY, Some(foreign_key.pem().as_bytes()))),
            soon,
            Some(InvalidKeyPair),
        ),
        ("an ECDSA key when RSA is asked", &rsa, Some(good.clone()), soon, Some(KeyMismatchesSpec)),
        ("a P-256 key when P-384 is asked", &p384, Some(good.clone()), soon, Some(KeyMismatchesSpec)),
        ("a SEC1 key when PKCS8 is asked", &pkcs8, Some(good.clone()), soon, Some(KeyMismatchesSpec)),
        ("a DNS name added", &more_names, Some(good.clone()), soon, Some(SpecChanged)),
        ("a DNS name replaced", &other_names, Some(good.clone()), soon, Some(SpecChanged)),
        ("an IP address added", &with_ip, Some(good.clone()), soon, Some(SpecChanged)),
        ("a common name added", &with_cn, Some(good.clone()), soon, Some(SpecChanged)),
        ("another issuer name", &other_issuer, Some(good.clone()), soon, Some(SpecChanged)),
        ("another issuer kind", &cluster_issuer, Some(good.clone()), soon, Some(SpecChanged)),
        ("other usages", &mtls, Some(good.clone()), soon, Some(SpecChanged)),
        (
            "a Secret that lost its issuer annotation",
            &cert,
            Some(with_annotation(good.clone(), ANNOTATION_ISSUER_NAME, None)),
            soon,
            Some(SpecChanged),
        ),
        ("a renewal request", &renew_requested, Some(good.clone()), soon, Some(ManuallyTriggered)),
        ("the renewal time reached", &cert, Some(good.clone()), issued_at() + 16.hours(), Some(Expiring)),
        ("an expired certificate", &cert, Some(good.clone()), issued_at() + 30.hours(), Some(Expiring)),
        ("90 percent before expiry reached", &pct, Some(good.clone()), issued_at() + 3.hours(), Some(Expiring)),
        ("a valid certificate just issued", &cert, Some(good.clone()), soon, None),
        (
            "a valid certificate a second before renewal",
            &cert,
            Some(good.clone()),
            issued_at() + 16.hours() - 1.second(),
            None,
        ),
        (
            "a chain from another CA is still a valid key pair",
            &cert,
            Some(with_data(good.clone(), CA_CRT, Some(other_ca.root_pem().as_bytes()))),
            soon,
            None,
        ),
    ];
    for (case, certificate, secret, now, want) in cases {
        let decision = decide(certificate, secret.as_ref(), now);
        assert_eq!(reason_of(&decision), want, "{case}: got {decision:?}");
        if let IssuanceDecision::Issue { reason, message } = &decision {
            assert!(!message.is_empty(), "{case}: {reason} has a message");
            assert!(!message.contains("BEGIN"), "{case}: the message holds no PEM");
        }
    }
}

#[test]
fn an_up_to_date_certificate_reports_its_validity_and_renewal_time() {
    let ca = TestCa::new("UpToDate");
    let cert = certificate();
    let secret = secret_for(&ca, &cert);
    let decision = decide(&cert, Some(&secret), issued_at() + 1.hour());
    assert_eq!(
        decision,
        IssuanceDecision::UpToDate {
            not_before: issued_at(),
            not_after: issued_at() + 24.hours(),
            renewal_time: issued_at() + 16.hours(),
            renewal_id: parse_chain(secret.data.as_ref().unwrap()[TLS_CRT].0.as_slice()).unwrap().leaf.renewal_id,
        }
    );
}

#[test]
fn a_handled_renewal_request_does_not_trigger_again() {
    let ca = TestCa::new("Handled");
    let mut cert = certificate();
    cert.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_RENEW_REQUESTED_AT.into(), "r1".into())]));
    cert.status = Some(CertificateStatus { last_renewal_request: Some("r1".into()), ..Default::default() });
    let secret = secret_for(&ca, &cert);
    assert!(matches!(decide(&cert, Some(&secret), issued_at() + 1.hour()), IssuanceDecision::UpToDate { .. }));
}

#[test]
fn a_secret_that_is_not_ours_is_never_taken_over() {
    let ca = TestCa::new("Foreign");
    let cert = certificate();
    let ours = secret_for(&ca, &cert);
    let cases = [
        ("no kacme annotation", with_annotation(ours.clone(), ANNOTATION_CERTIFICATE_NAME, None)),
        ("another Certificate's Secret", with_annotation(ours.clone(), ANNOTATION_CERTIFICATE_NAME, Some("api"))),
        (
            "a foreign Secret without data",
            with_data(with_annotation(ours, ANNOTATION_CERTIFICATE_NAME, None), TLS_CRT, None),
        ),
    ];
    for (case, secret) in cases {
        let decision = decide(&cert, Some(&secret), issued_at() + 30.hours());
        match decision {
            IssuanceDecision::SecretNotOwned { message } => assert!(message.contains("web-tls"), "{case}: {message}"),
            other => panic!("{case}: got {other:?}"),
        }
    }
}

fn failed(mut certificate: Certificate, attempts: i32, at: Timestamp, generation: i64) -> Certificate {
    certificate.status = Some(CertificateStatus {
        failed_issuance_attempts: Some(attempts),
        last_failure_time: Some(Time(at)),
        conditions: vec![Condition {
            type_: "Issuing".into(),
            status: "False".into(),
            reason: "Failed".into(),
            message: "the CA said no".into(),
            last_transition_time: Time(at),
            observed_generation: Some(generation),
        }],
        ..Default::default()
    });
    certificate
}

#[test]
fn failed_issuance_backs_off_unless_the_spec_changed_or_renewal_was_requested() {
    let failure = issued_at();
    let after_two = failed(certificate(), 2, failure, 1); // default policy: 60s after the 2nd failure
    let mut edited = failed(certificate(), 2, failure, 1);
    edited.metadata.generation = Some(2);
    let mut requested = failed(certificate(), 2, failure, 1);
    requested.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_RENEW_REQUESTED_AT.into(), "now".into())]));
    let ca = TestCa::new("Backoff");
    let secret = secret_for(&ca, &certificate());

    // (case, certificate, secret, now, expected)
    let cases: Vec<(&str, &Certificate, Option<&Secret>, Timestamp, &str)> = vec![
        ("just after the failure", &after_two, None, failure + 10.seconds(), "BackOff"),
        ("a second before the retry time", &after_two, None, failure + 59.seconds(), "BackOff"),
        ("at the retry time", &after_two, None, failure + 60.seconds(), "Issue"),
        ("after the spec was edited", &edited, None, failure + 10.seconds(), "Issue"),
        ("after a renewal request", &requested, Some(&secret), failure + 10.seconds(), "Issue"),
    ];
    for (case, certificate, secret, now, want) in cases {
        let decision = decide(certificate, secret, now);
        let got = match &decision {
            IssuanceDecision::BackOff { retry_at, .. } => {
                assert_eq!(*retry_at, failure + 60.seconds(), "{case}");
                "BackOff"
            }
            IssuanceDecision::Issue { .. } => "Issue",
            _ => "other",
        };
        assert_eq!(got, want, "{case}: {decision:?}");
    }
}

#[test]
fn an_issued_certificate_that_does_not_match_the_request_is_told_apart() {
    let ca = TestCa::new("decision");
    let key = generate_private_key(&KeySpec::from_spec(None)).unwrap();
    let requested = certificate();
    let spec = &requested.spec;
    let leaf = |dns: &[&str], ips: &[&str], cn: Option<&str>| {
        let chain = ca.issue(&key, dns, ips, cn, issued_at(), issued_at() + 24.hours());
        crate::pki::parse_chain(chain.as_bytes()).unwrap().leaf
    };
    let asked: Vec<&str> = spec.dns_names.iter().map(String::as_str).collect();
    let with_extra: Vec<&str> = asked.iter().copied().chain(["other.example.test"]).collect();
    let upper: Vec<String> = asked.iter().rev().map(|n| n.to_ascii_uppercase()).collect();
    // (case, leaf, the subject named in the difference, or None when it matches)
    let cases = [
        ("exactly what was asked for", leaf(&asked, &[], None), None),
        (
            "the same names in another case",
            leaf(&upper.iter().map(String::as_str).collect::<Vec<_>>(), &[], None),
            None,
        ),
        ("a name the CA added", leaf(&with_extra, &[], None), Some("DNS names")),
        ("an address the CA added", leaf(&asked, &["10.0.0.1"], None), Some("IP addresses")),
        ("a common name the CA added", leaf(&asked, &[], Some("web.example.test")), Some("common name")),
    ];
    for (case, leaf, subject) in cases {
        let difference = issuance::issued_differs_from_spec(spec, &leaf);
        match subject {
            None => assert_eq!(difference, None, "{case}"),
            Some(subject) => {
                let message = difference.unwrap_or_else(|| panic!("{case}: no difference found"));
                assert!(message.contains(&format!("({subject})")), "{case}: {message}");
            }
        }
    }
}

/// The certificate's RFC 9773 identifier, as the Secret holds it.
fn renewal_id_of(secret: &Secret) -> String {
    let chain = parse_chain(secret.data.as_ref().unwrap()[TLS_CRT].0.as_slice()).unwrap();
    chain.leaf.renewal_id.expect("ACME certificates carry an authority key identifier")
}

/// `cert` with the CA's renewal window `start`..`end` for the certificate `id` in its status.
fn with_window(mut cert: Certificate, id: &str, start: Timestamp, end: Timestamp) -> Certificate {
    cert.status.get_or_insert_with(Default::default).renewal_info = Some(crate::api::RenewalInfoStatus {
        certificate_id: id.to_string(),
        window_start: Some(Time(start)),
        window_end: Some(Time(end)),
        explanation_url: None,
        next_check: Time(issued_at() + 6.hours()),
        last_error: None,
    });
    cert
}

#[test]
fn the_cas_renewal_window_sets_the_renewal_time_for_its_own_certificate_only() {
    let ca = TestCa::new("ARI");
    let secret = secret_for(&ca, &certificate());
    let id = renewal_id_of(&secret);
    let renewal_of = |cert: &Certificate| match decide(cert, Some(&secret), issued_at() + 1.hour()) {
        IssuanceDecision::UpToDate { renewal_time, renewal_id, .. } => {
            assert_eq!(renewal_id.as_deref(), Some(id.as_str()));
            renewal_time
        }
        other => panic!("up to date, not {other:?}"),
    };
    let own = issued_at() + 16.hours();
    assert_eq!(renewal_of(&certificate()), own, "no window: 2/3 of the lifetime");

    // A window later than kacme's own schedule: renewal inside it, not at 2/3.
    let (start, end) = (issued_at() + 20.hours(), issued_at() + 22.hours());
    let at = renewal_of(&with_window(certificate(), &id, start, end));
    assert!(start <= at && at < end, "{at} inside {start}..{end}");
    // A window earlier than kacme's own schedule is followed too (the CA knows better).
    let (early_start, early_end) = (issued_at() + 2.hours(), issued_at() + 3.hours());
    let at = renewal_of(&with_window(certificate(), &id, early_start, early_end));
    assert!(early_start <= at && at < early_end, "{at} inside {early_start}..{early_end}");
    // A window for another certificate (the previous one) means nothing for this one.
    assert_eq!(renewal_of(&with_window(certificate(), "AAAA.AQ", start, end)), own);
    // An explicit renewBefore that asks for earlier than the window wins.
    let mut explicit = with_window(certificate(), &id, start, end);
    explicit.spec.renew_before = Some(std::time::Duration::from_secs(12 * 3600).into());
    assert_eq!(renewal_of(&explicit), issued_at() + 12.hours());
    // An invalid window (end before start) is no answer: kacme's own schedule.
    assert_eq!(renewal_of(&with_window(certificate(), &id, end, start)), own);
}

#[test]
fn a_window_that_has_begun_renews_at_once_and_the_order_names_the_certificate_it_replaces() {
    let ca = TestCa::new("ARI now");
    let secret = secret_for(&ca, &certificate());
    let id = renewal_id_of(&secret);
    // The CA moved the window into the past (as after a revocation).
    let cert = with_window(certificate(), &id, issued_at() - 2.hours(), issued_at() - 1.hour());
    let decision = decide(&cert, Some(&secret), issued_at() + 1.hour());
    let IssuanceDecision::Issue { reason, message } = &decision else { panic!("renew now, not {decision:?}") };
    assert_eq!(*reason, IssuanceReason::Expiring);
    assert!(message.contains("renewal window the CA suggests"), "{message}");
    assert_eq!(replaced_certificate(&cert, Some(&secret), *reason), Some(id.clone()));
    // Only renewals of the same names replace: a spec change orders a new certificate.
    assert_eq!(replaced_certificate(&cert, Some(&secret), IssuanceReason::SpecChanged), None);
    // Without a window from the CA (a CA without RFC 9773), nothing is named.
    assert_eq!(replaced_certificate(&certificate(), Some(&secret), IssuanceReason::Expiring), None);
}

#[test]
fn a_revoked_certificate_is_replaced_and_a_failed_or_earlier_revocation_changes_nothing() {
    let ca = TestCa::new("Revoked");
    let secret = secret_for(&ca, &certificate());
    let serial = parse_chain(secret.data.as_ref().unwrap()[TLS_CRT].0.as_slice()).unwrap().leaf.serial;
    let with_revocation = |serial: &str, revoked: bool| {
        let mut cert = certificate();
        cert.status = Some(CertificateStatus {
            revocation: Some(crate::api::RevocationStatus {
                request: Some("t1".into()),
                serial: serial.into(),
                reason: "keyCompromise".into(),
                revoked_at: revoked.then(|| Time(issued_at() + 1.hour())),
                error: (!revoked).then(|| "refused".to_string()),
            }),
            ..Default::default()
        });
        cert
    };
    let now = issued_at() + 2.hours();
    let decision = decide(&with_revocation(&serial, true), Some(&secret), now);
    let IssuanceDecision::Issue { reason, message } = &decision else { panic!("replace it, not {decision:?}") };
    assert_eq!(*reason, IssuanceReason::Revoked);
    assert!(message.contains(&serial) && message.contains("keyCompromise"), "{message}");
    // A revocation the CA refused, or one of an earlier certificate, leaves this one in place.
    assert!(matches!(decide(&with_revocation(&serial, false), Some(&secret), now), IssuanceDecision::UpToDate { .. }));
    assert!(matches!(
        decide(&with_revocation("0badc0de", true), Some(&secret), now),
        IssuanceDecision::UpToDate { .. }
    ));
}
