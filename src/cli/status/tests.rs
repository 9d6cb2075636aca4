use super::*;
use crate::api::names::{ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, CA_CRT, TLS_CRT, TLS_KEY};
use crate::api::{AuthorizationStatus, CertificateStatus, KeyAlgorithm, KeyEncoding, RenewalInfoStatus};
use crate::pki::testing::TestCa;
use crate::pki::{KeySpec, generate_private_key};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EventSeries, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

fn t(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

fn now() -> Timestamp {
    t(3600)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(t(60)),
        observed_generation: Some(1),
    }
}

/// A Certificate `apps/web` for a.example and b.example, Ready, with a renewal time set by default.
fn ready_certificate() -> Certificate {
    let mut certificate = crate::desired::testing::certificate();
    certificate.spec.dns_names = vec!["a.example".into(), "b.example".into()];
    certificate.status = Some(CertificateStatus {
        conditions: vec![
            condition("Issuing", "False", "Issued", "The certificate was issued"),
            condition("Ready", "True", "Ready", "Certificate is up to date and has not expired"),
        ],
        not_before: Some(Time(t(0))),
        not_after: Some(Time(t(86_400))),
        renewal_time: Some(Time(t(57_600))),
        revision: Some(1),
        ..CertificateStatus::default()
    });
    certificate
}

/// The Certificate's Secret (written by kacme for it) with a chain from `ca` for `key`; returns the Secret.
fn secret_for(certificate: &Certificate, ca: &TestCa, key: &crate::pki::PrivateKey) -> Secret {
    let chain = ca.issue(key, &["a.example", "b.example"], &[], None, t(0), t(86_400));
    let mut secret = Secret::default();
    secret.metadata.name = Some("web-tls".into());
    secret.metadata.namespace = Some("apps".into());
    secret.metadata.annotations = Some(
        [
            (ANNOTATION_CERTIFICATE_NAME.to_string(), "web".to_string()),
            (ANNOTATION_CERTIFICATE_UID.to_string(), certificate.metadata.uid.clone().unwrap()),
        ]
        .into(),
    );
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(
        [
            (TLS_CRT.to_string(), ByteString(chain.into_bytes())),
            (TLS_KEY.to_string(), ByteString(key.pem().as_bytes().to_vec())),
            (CA_CRT.to_string(), ByteString(ca.root_pem().into_bytes())),
        ]
        .into(),
    );
    secret
}

fn key() -> crate::pki::PrivateKey {
    generate_private_key(&KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 256, encoding: KeyEncoding::Pkcs1 }).unwrap()
}

fn event(uid: &str, reason: &str, message: &str, at: i64, count: Option<i32>) -> Event {
    Event {
        involved_object: ObjectReference {
            kind: Some("Certificate".into()),
            name: Some("web".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        },
        type_: Some(if reason == "Failed" { "Warning" } else { "Normal" }.into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        event_time: Some(MicroTime(t(at))),
        series: count.map(|count| EventSeries { count: Some(count), last_observed_time: Some(MicroTime(t(at + 5))) }),
        ..Event::default()
    }
}

fn input(certificate: Certificate, secret: SecretRead, events: Vec<Event>) -> StatusInput {
    StatusInput { certificate, secret, events, solver_objects: Vec::new(), unread: Vec::new() }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim_end).collect()
}

#[test]
fn a_ready_certificate_tells_its_whole_story_in_plain_lines() {
    let certificate = ready_certificate();
    let uid = certificate.metadata.uid.clone().unwrap();
    let ca = TestCa::new("Story");
    let key = key();
    let secret = secret_for(&certificate, &ca, &key);
    let events = vec![
        event(&uid, "Issued", "Issued certificate serial 01", 50, None),
        event(&uid, "Presented", "Presented the HTTP-01 challenge for b.example", 20, None),
        event(&uid, "Presented", "Presented the HTTP-01 challenge for a.example", 10, Some(2)),
        event("another-uid", "Failed", "of an earlier Certificate web", 5, None),
    ];

    let report = status_report(&input(certificate, SecretRead::Found(Box::new(secret)), events), now());
    let text = render_status(&report, Style::plain(), now());
    let serial = report.secret.certificate.as_ref().unwrap().serial.clone();

    let expected = vec![
        "Certificate apps/web: Ready".to_string(),
        "  Names:   a.example, b.example".into(),
        "  Issuer:  Issuer ca".into(),
        "  Secret:  web-tls".into(),
        "".into(),
        "Conditions".into(),
        "  Ready    True Ready: Certificate is up to date and has not expired  since 2023-11-14T22:14:20Z (59m0s ago)"
            .into(),
        "  Issuing  False Issued: The certificate was issued  since 2023-11-14T22:14:20Z (59m0s ago)".into(),
        "".into(),
        "Current certificate (Secret web-tls)".into(),
        "  Names:        a.example, b.example".into(),
        format!("  Serial:       {serial}"),
        "  Not before:   2023-11-14T22:13:20Z".into(),
        "  Not after:    2023-11-15T22:13:20Z (in 23h0m)".into(),
        "  Issuer chain: CN=Story Intermediate CA".into(),
        "  ca.crt:       CN=Story Root CA".into(),
        "  Key:          ECDSA P-256".into(),
        "  Checks:       tls.key matches; chain verifies to ca.crt".into(),
        "".into(),
        "Renewal".into(),
        "  Renews at 2023-11-15T14:13:20Z (in 15h0m)".into(),
        "  Why: when 2/3 of the lifetime has passed (the default)".into(),
        "".into(),
        "Order in flight".into(),
        "  none".into(),
        "".into(),
        "Events (3 of 3, oldest first)".into(),
        "   59m45s  Normal   Presented        Presented the HTTP-01 challenge for a.example (x2)".into(),
        "   59m40s  Normal   Presented        Presented the HTTP-01 challenge for b.example".into(),
        "   59m10s  Normal   Issued           Issued certificate serial 01".into(),
        "".into(),
        "Solver objects".into(),
        "  none".into(),
    ];
    assert_eq!(lines(&text), expected, "{text}");
    assert!(!text.contains("earlier Certificate"), "another Certificate's Events are left out");
    assert!(!text.contains('\x1b'), "plain text has no colour codes");
}

#[test]
fn an_order_in_flight_shows_each_authorization_with_the_cas_last_words() {
    let mut certificate = ready_certificate();
    let status = certificate.status.as_mut().unwrap();
    status.conditions =
        vec![condition("Ready", "False", "DoesNotExist", "Issuing certificate as Secret does not exist")];
    status.order = Some(OrderStatus {
        url: "https://ca/order/7".into(),
        state: Some("pending".into()),
        identifiers: vec!["a.example".into(), "b.example".into()],
        authorizations: vec![
            AuthorizationStatus {
                identifier: "a.example".into(),
                url: "https://ca/authz/a".into(),
                state: Some("valid".into()),
                ..AuthorizationStatus::default()
            },
            AuthorizationStatus {
                identifier: "b.example".into(),
                url: "https://ca/authz/b".into(),
                state: Some("submitted".into()),
                presented_at: Some(Time(t(3540))),
                solver_name: Some("kacme-solver-b".into()),
                message: Some("connection refused".into()),
                ..AuthorizationStatus::default()
            },
        ],
    });
    let mut input = input(certificate, SecretRead::NotFound, Vec::new());
    input.solver_objects =
        vec![SolverObject { kind: "Pod".into(), name: "kacme-solver-b".into(), detail: Some("Running".into()) }];
    input.unread = vec!["Events (forbidden: no)".into()];

    let text = render_status(&status_report(&input, now()), Style::plain(), now());

    for expected in [
        "Certificate apps/web: Not Ready",
        "  Ready    False DoesNotExist: Issuing certificate as Secret does not exist",
        "Current certificate (Secret web-tls)\n  none: the Secret does not exist (yet)",
        "Order in flight\n  https://ca/order/7 (pending)\n  - a.example: valid\n  - b.example: submitted, presented 1m0s ago, solver kacme-solver-b\n      last word: connection refused",
        "Solver objects\n  pod/kacme-solver-b (Running)",
        "Not shown: Events (forbidden: no)",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
}

#[test]
fn a_secret_of_something_else_shows_nothing_of_its_content() {
    let certificate = ready_certificate();
    let ca = TestCa::new("Foreign");
    let mut secret = secret_for(&certificate, &ca, &key());
    secret.metadata.annotations = None;

    let report = status_report(&input(certificate, SecretRead::Found(Box::new(secret)), Vec::new()), now());
    let text = render_status(&report, Style::plain(), now());

    assert_eq!(report.secret.state, SecretState::NotOwned);
    assert!(report.secret.certificate.is_none());
    assert!(text.contains("NotOwned: Secret \"web-tls\" exists and was not created by kacme"), "{text}");
    assert!(!text.contains("Serial:"), "{text}");
}

#[test]
fn the_renewal_says_why_and_shows_the_cas_window_and_a_revocation() {
    let mut certificate = ready_certificate();
    let status = certificate.status.as_mut().unwrap();
    status.renewal_info = Some(RenewalInfoStatus {
        certificate_id: "aki.serial".into(),
        window_start: Some(Time(t(50_000))),
        window_end: Some(Time(t(60_000))),
        explanation_url: Some("https://ca/why".into()),
        next_check: Time(t(7200)),
        last_error: None,
    });
    status.revocation = Some(RevocationStatus {
        request: Some("2023-11-14T22:00:00Z".into()),
        serial: "0a0b".into(),
        reason: "keyCompromise".into(),
        revoked_at: Some(Time(t(1800))),
        error: None,
    });
    let mut by_spec = ready_certificate();
    by_spec.spec.renew_before_percentage = Some(25);

    let text =
        render_status(&status_report(&input(certificate, SecretRead::NotFound, vec![]), now()), Style::plain(), now());
    let spec_text =
        render_status(&status_report(&input(by_spec, SecretRead::NotFound, vec![]), now()), Style::plain(), now());

    for expected in [
        "  Why: a time inside the renewal window that the CA suggests (ACME Renewal Information, RFC 9773)",
        "  CA's window: 2023-11-15T12:06:40Z to 2023-11-15T14:53:20Z",
        "  Next check of the window: 2023-11-15T00:13:20Z (in 1h0m)",
        "  CA's explanation: https://ca/why",
        "Revocation\n  Serial 0a0b (reason keyCompromise)\n  Revoked at 2023-11-14T22:43:20Z (30m0s ago)",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert!(spec_text.contains("  Why: 25% of the lifetime before expiry (spec.renewBeforePercentage)"), "{spec_text}");
}

#[test]
fn the_json_shape_is_stable_and_holds_no_key() {
    let certificate = ready_certificate();
    let key = key();
    let secret = secret_for(&certificate, &TestCa::new("Json"), &key);
    let uid = certificate.metadata.uid.clone().unwrap();
    let events = vec![event(&uid, "Presented", "Presented the HTTP-01 challenge for a.example", 10, Some(2))];

    let report = status_report(&input(certificate, SecretRead::Found(Box::new(secret)), events), now());
    let json = serde_json::to_value(&report).unwrap();

    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "conditions",
            "events",
            "name",
            "namespace",
            "ready",
            "renewal",
            "secret",
            "solverObjects",
            "spec",
            "unread",
            "version"
        ]
    );
    assert_eq!(json["version"], 1);
    assert_eq!(json["ready"], true);
    assert_eq!(json["spec"]["dnsNames"], serde_json::json!(["a.example", "b.example"]));
    assert_eq!(json["spec"]["issuer"], serde_json::json!({"kind": "Issuer", "name": "ca"}));
    assert_eq!(json["secret"]["state"], "current");
    assert_eq!(json["secret"]["privateKey"], "matches");
    assert_eq!(json["secret"]["chainCheck"], "verifies");
    assert_eq!(json["secret"]["certificate"]["dnsNames"], serde_json::json!(["a.example", "b.example"]));
    assert_eq!(json["secret"]["certificate"]["notAfter"], "2023-11-15T22:13:20Z");
    assert_eq!(json["renewal"]["renewalTime"], "2023-11-15T14:13:20Z");
    assert_eq!(json["conditions"][0]["type"], "Ready");
    assert_eq!(
        json["events"][0],
        serde_json::json!({"type": "Normal", "reason": "Presented", "message": "Presented the HTTP-01 challenge for a.example", "count": 2, "lastSeen": "2023-11-14T22:13:35Z"})
    );
    let text = json.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(key.pem().lines().nth(1).unwrap()), "never the key");
}

#[test]
fn durations_read_as_people_say_them() {
    for (seconds, expected) in [(0, "0s"), (59, "59s"), (61, "1m1s"), (3600, "1h0m"), (90_061, "1d1h"), (-120, "2m0s")]
    {
        assert_eq!(human_duration(SignedDuration::from_secs(seconds)), expected);
    }
}
