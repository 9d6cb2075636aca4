//! The ACME engine against real CAs on loopback: Pebble (with its default 5% bad-nonce rejection left on)
//! and smallstep step-ca. Nothing Kubernetes here: challenges are served by an in-process responder.

mod common;

use common::challenge_server::ChallengeServer;
use kacme::acme::{
    AccountKey, AccountSpec, AcmeAccount, AcmeAction, Advance, AdvanceOptions, CaTrust, ExternalAccountBinding,
    IssueOptions, OrderOptions, OrderSession, RequestCounter, Retry, decode_eab_hmac_key, issue, issue_with,
};
use kacme::api::{KeyAlgorithm, KeyEncoding, KeyUsage};
use kacme::pki::{
    CsrRequest, KeySpec, PrivateKey, build_csr, generate_private_key, key_matches_certificate, parse_ca_bundle,
    parse_chain, verify_chain,
};
use kacme_testenv::{Pebble, PebbleOptions, StepCa, StepCaOptions};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bundle(pem: &str) -> Vec<Vec<u8>> {
    parse_ca_bundle(pem.as_bytes()).expect("a CA bundle")
}

fn spec(directory_url: &str, trust_pem: &str) -> AccountSpec {
    AccountSpec {
        directory_url: directory_url.into(),
        email: Some("ops@example.test".into()),
        external_account: None,
        trust: CaTrust::Bundle(bundle(trust_pem)),
    }
}

async fn register(spec: &AccountSpec, counter: &Arc<RequestCounter>) -> (AcmeAccount, AccountKey) {
    let registration = AcmeAccount::register(spec, None, counter.clone()).await.expect("account registration");
    assert!(registration.key_is_new);
    assert!(registration.key.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!format!("{:?}", registration.key).contains("BEGIN"), "Debug never shows the key");
    (registration.account, registration.key)
}

fn request(dns: &[&str], ips: &[&str], usages: &[KeyUsage]) -> CsrRequest {
    CsrRequest {
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        common_name: None,
        usages: usages.iter().copied().collect::<BTreeSet<_>>(),
    }
}

fn key(algorithm: KeyAlgorithm, size: u32) -> PrivateKey {
    generate_private_key(&KeySpec { algorithm, size, encoding: KeyEncoding::Pkcs8 }).unwrap()
}

/// Checks the chain: verifies to the CA, carries exactly the requested names, belongs to the key.
fn check_issued(chain_pem: &str, issuing_root: &str, request: &CsrRequest, key: &PrivateKey) {
    let chain = parse_chain(chain_pem.as_bytes()).expect("a PEM chain");
    verify_chain(&chain, &bundle(issuing_root), jiff::Timestamp::now()).expect("the chain verifies to the CA");
    let mut dns = chain.leaf.dns_names.clone();
    dns.sort();
    let mut wanted_dns = request.dns_names.clone();
    wanted_dns.sort();
    assert_eq!(dns, wanted_dns, "exactly the requested DNS names");
    let ips: BTreeSet<IpAddr> = chain.leaf.ip_addresses.iter().copied().collect();
    assert_eq!(ips, request.ip_addresses.iter().copied().collect(), "exactly the requested IP addresses");
    assert!(key_matches_certificate(key, &chain.leaf), "the certificate is for our key");
}

fn fast() -> IssueOptions {
    IssueOptions { deadline: Duration::from_secs(60), ..IssueOptions::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_issues_for_one_name_several_names_and_ips_and_every_key_type() {
    let pebble = Pebble::start(PebbleOptions::default()).await.unwrap();
    let responder = ChallengeServer::start(pebble.http01_addr()).await;
    let counter = Arc::new(RequestCounter::default());
    let (account, _) = register(&spec(pebble.directory_url(), pebble.listener_root_pem()), &counter).await;

    let server = [KeyUsage::DigitalSignature, KeyUsage::ServerAuth];
    let cases = [
        ("one name", request(&["one.example.test"], &[], &server), key(KeyAlgorithm::Ecdsa, 256)),
        (
            "several names and an IP",
            request(
                &["a.example.test", "b.example.test", "c.example.test"],
                &[&pebble.address().ip().to_string()],
                &server,
            ),
            key(KeyAlgorithm::Ecdsa, 384),
        ),
        ("RSA 2048", request(&["rsa.example.test"], &[], &server), key(KeyAlgorithm::Rsa, 2048)),
        ("RSA 4096", request(&["rsa4096.example.test"], &[], &server), key(KeyAlgorithm::Rsa, 4096)),
    ];
    for (case, request, key) in cases {
        let before = counter.total();
        let started = Instant::now();
        let issued =
            issue(&account, &request, &key, &responder, &fast()).await.unwrap_or_else(|e| panic!("{case}: {e}"));
        eprintln!(
            "pebble {case}: issued in {:.2}s with {} ACME requests",
            started.elapsed().as_secs_f64(),
            counter.total() - before
        );
        check_issued(&issued.chain_pem, pebble.issuing_root_pem(), &request, &key);
    }
    assert_eq!(responder.serving(), 0, "every challenge was cleaned up");
    assert!(counter.count(AcmeAction::Finalize) >= 4 && counter.count(AcmeAction::Certificate) >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_account_serves_many_orders_at_once_despite_bad_nonces() {
    // Half of all nonces rejected: the engine retries until every order is issued.
    let pebble = Pebble::start(PebbleOptions { nonce_reject_percent: 50, ..PebbleOptions::default() }).await.unwrap();
    let responder = Arc::new(ChallengeServer::start(pebble.http01_addr()).await);
    let counter = Arc::new(RequestCounter::default());
    let (account, _) = register(&spec(pebble.directory_url(), pebble.listener_root_pem()), &counter).await;
    let started = Instant::now();
    let orders = (0..8).map(|i| {
        let (account, responder) = (account.clone(), responder.clone());
        tokio::spawn(async move {
            let request = request(&[&format!("w{i}.example.test")], &[], &[KeyUsage::ServerAuth]);
            let key = key(KeyAlgorithm::Ecdsa, 256);
            let options = IssueOptions { bad_nonce_retries: 50, ..fast() };
            issue(&account, &request, &key, responder.as_ref(), &options).await.map(|i| (i, request, key))
        })
    });
    for order in futures::future::join_all(orders).await {
        let (issued, request, key) = order.unwrap().expect("issued despite bad nonces");
        check_issued(&issued.chain_pem, pebble.issuing_root_pem(), &request, &key);
    }
    eprintln!(
        "pebble, 50% bad nonces: 8 certificates in {:.2}s, {} ACME requests",
        started.elapsed().as_secs_f64(),
        counter.total()
    );
}

/// Advances an order until it waits for the CA or is issued, without the convenience loop.
async fn advance_until_submitted(
    session: &mut OrderSession,
    account: &AcmeAccount,
    responder: &ChallengeServer,
    csr: &[u8],
) {
    let options = AdvanceOptions { max_wait: Duration::ZERO, ..AdvanceOptions::default() };
    for _ in 0..20 {
        match session.advance(account, responder, csr, &options).await {
            Ok(Advance::Issued(_)) => panic!("issued before the test could interrupt it"),
            Ok(Advance::Wait { .. }) => {
                if session.progress().authorizations.iter().all(|a| a.step != kacme::acme::AuthorizationStep::Pending) {
                    return;
                }
            }
            Err(e) if e.retry == Retry::Immediately => {}
            Err(e) => panic!("advance: {e}"),
        }
    }
    panic!("the challenges were never submitted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_engine_resumes_an_order_by_url_instead_of_ordering_again() {
    let pebble = Pebble::start(PebbleOptions::default()).await.unwrap();
    let responder = ChallengeServer::start(pebble.http01_addr()).await;
    let counter = Arc::new(RequestCounter::default());
    let account_spec = spec(pebble.directory_url(), pebble.listener_root_pem());
    let (account, stored_key) = register(&account_spec, &counter).await;

    for (i, point) in ["after the order was created", "after the challenges were submitted"].into_iter().enumerate() {
        let names = [format!("resume{i}.example.test"), format!("resume{i}b.example.test")];
        let request = request(&[&names[0], &names[1]], &[], &[KeyUsage::ServerAuth]);
        let key = key(KeyAlgorithm::Ecdsa, 256);
        let csr = build_csr(&request, &key).unwrap();
        let mut session = loop {
            match OrderSession::create(&account, &request.dns_names, &request.ip_addresses, &OrderOptions::default())
                .await
            {
                Ok(session) => break session,
                Err(e) if e.retry == Retry::Immediately => continue,
                Err(e) => panic!("{e}"),
            }
        };
        if point.contains("submitted") {
            advance_until_submitted(&mut session, &account, &responder, &csr).await;
        }
        // The saved position goes through serde, as it does through the Certificate's status.
        let saved = serde_json::to_string(session.progress()).unwrap();
        drop(session);

        // A "new process": a fresh account handle from the stored key, and the order resumed by URL.
        let fresh = AcmeAccount::register(&account_spec, Some(&stored_key), counter.clone()).await.unwrap();
        assert!(!fresh.key_is_new);
        assert_eq!(fresh.account.uri(), account.uri(), "the stored key loads the same account");
        let progress: kacme::acme::OrderProgress = serde_json::from_str(&saved).unwrap();
        let orders_before = counter.count(AcmeAction::Order);
        let resumed = loop {
            match OrderSession::resume(&fresh.account, progress.clone()).await {
                Ok(session) => break session,
                Err(e) if e.retry == Retry::Immediately => continue,
                Err(e) => panic!("{e}"),
            }
        };
        let issued = issue_with(resumed, &fresh.account, &request, &key, &responder, &fast()).await.unwrap();
        assert_eq!(issued.order_url, progress.url, "{point}: the same order was finished");
        check_issued(&issued.chain_pem, pebble.issuing_root_pem(), &request, &key);
        assert!(counter.count(AcmeAction::Order) > orders_before, "the order was fetched, not created");
    }
    assert_eq!(responder.serving(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_answer_fails_for_good_with_the_cas_own_words() {
    let pebble = Pebble::start(PebbleOptions::default()).await.unwrap();
    let mut responder = ChallengeServer::start(pebble.http01_addr()).await;
    responder.wrong_answer = Some("not-the-key-authorization".into());
    let counter = Arc::new(RequestCounter::default());
    let (account, _) = register(&spec(pebble.directory_url(), pebble.listener_root_pem()), &counter).await;
    let request = request(&["wrong.example.test"], &[], &[KeyUsage::ServerAuth]);
    let error = issue(&account, &request, &key(KeyAlgorithm::Ecdsa, 256), &responder, &fast()).await.unwrap_err();
    assert_eq!(error.retry, Retry::Never, "{error}");
    assert!(error.to_string().contains("wrong.example.test"), "{error}");
    assert!(error.to_string().contains("not-the-key-authorization"), "the CA's detail is carried: {error}");
    assert_eq!(responder.serving(), 0, "the challenge was cleaned up after the failure");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_ca_gives_a_retryable_error() {
    let pebble = Pebble::start(PebbleOptions::default()).await.unwrap();
    let counter = Arc::new(RequestCounter::default());
    let account_spec = spec(pebble.directory_url(), pebble.listener_root_pem());
    let (account, key) = register(&account_spec, &counter).await;
    drop(pebble);
    let error =
        OrderSession::create(&account, &["down.example.test".into()], &[], &OrderOptions::default()).await.unwrap_err();
    assert!(matches!(error.retry, Retry::After(_)), "{error}");
    let error = AcmeAccount::register(&account_spec, Some(&key), counter.clone()).await.unwrap_err();
    assert!(matches!(error.retry, Retry::After(_)), "{error}");
    assert!(counter.snapshot().keys().any(|(_, outcome)| *outcome == kacme::acme::AcmeOutcome::NetworkError));
}

#[tokio::test(flavor = "multi_thread")]
async fn external_account_binding_is_required_and_accepted() {
    let pebble = Pebble::start(PebbleOptions { eab: true, ..PebbleOptions::default() }).await.unwrap();
    let responder = ChallengeServer::start(pebble.http01_addr()).await;
    let counter = Arc::new(RequestCounter::default());
    let mut account_spec = spec(pebble.directory_url(), pebble.listener_root_pem());
    let error = AcmeAccount::register(&account_spec, None, counter.clone()).await.unwrap_err();
    assert_eq!(error.retry, Retry::Never);
    assert!(error.is_problem("externalAccountRequired"), "{error}");

    let eab = pebble.eab().unwrap();
    account_spec.external_account = Some(ExternalAccountBinding {
        key_id: eab.key_id.clone(),
        hmac_key: decode_eab_hmac_key(&eab.hmac_key).unwrap(),
    });
    assert!(!format!("{account_spec:?}").contains(&eab.hmac_key), "Debug never shows the HMAC key");
    let (account, stored) = register(&account_spec, &counter).await;
    let request = request(&["eab.example.test"], &[], &[KeyUsage::ServerAuth]);
    let key = key(KeyAlgorithm::Ecdsa, 256);
    let issued = issue(&account, &request, &key, &responder, &fast()).await.unwrap();
    check_issued(&issued.chain_pem, pebble.issuing_root_pem(), &request, &key);
    // The stored key loads the bound account again, without EAB.
    account_spec.external_account = None;
    let again = AcmeAccount::register(&account_spec, Some(&stored), counter.clone()).await.unwrap();
    assert_eq!(again.account.uri(), account.uri());
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_issues_for_names_and_ips_with_every_key_type() {
    let step_ca = StepCa::start(StepCaOptions::default()).await.unwrap();
    let responder = ChallengeServer::start(step_ca.http01_addr()).await;
    let counter = Arc::new(RequestCounter::default());
    let (account, _) = register(&spec(step_ca.directory_url(), step_ca.root_pem()), &counter).await;
    let mtls = [KeyUsage::DigitalSignature, KeyUsage::ServerAuth, KeyUsage::ClientAuth];
    let ip = step_ca.address().ip().to_string();
    let cases = [
        ("one name", request(&["one.example.test"], &[], &mtls), key(KeyAlgorithm::Ecdsa, 256)),
        (
            "names and an IP",
            request(&["a.example.test", "b.example.test"], &[&ip], &mtls),
            key(KeyAlgorithm::Ecdsa, 384),
        ),
        ("RSA 3072", request(&["rsa.example.test"], &[], &mtls), key(KeyAlgorithm::Rsa, 3072)),
        ("Ed25519", request(&["ed.example.test"], &[], &mtls), key(KeyAlgorithm::Ed25519, 256)),
    ];
    for (case, request, key) in cases {
        let before = counter.total();
        let started = Instant::now();
        let issued =
            issue(&account, &request, &key, &responder, &fast()).await.unwrap_or_else(|e| panic!("{case}: {e}"));
        eprintln!(
            "step-ca {case}: issued in {:.2}s with {} ACME requests",
            started.elapsed().as_secs_f64(),
            counter.total() - before
        );
        check_issued(&issued.chain_pem, step_ca.root_pem(), &request, &key);
        let leaf = parse_chain(issued.chain_pem.as_bytes()).unwrap().leaf;
        let lifetime = leaf.not_after.duration_since(leaf.not_before);
        assert!(lifetime.as_secs() > 23 * 3600 && lifetime.as_secs() <= 25 * 3600, "{case}: step-ca's 24h default");
    }
    assert_eq!(responder.serving(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_name_is_refused_before_any_order() {
    let error = kacme::acme::AcmeError::fatal(AcmeAction::Order, "x");
    assert_eq!(error.retry, Retry::Never);
    let step_ca = StepCa::start(StepCaOptions::default()).await.unwrap();
    let counter = Arc::new(RequestCounter::default());
    let (account, _) = register(&spec(step_ca.directory_url(), step_ca.root_pem()), &counter).await;
    let orders_before = counter.count(AcmeAction::Order);
    let error =
        OrderSession::create(&account, &["*.example.test".into()], &[], &OrderOptions::default()).await.unwrap_err();
    assert_eq!(error.retry, Retry::Never);
    assert!(error.to_string().contains("wildcard"), "{error}");
    assert_eq!(counter.count(AcmeAction::Order), orders_before, "no order was placed");
}

/// A stored key's account is looked up (newAccount with `onlyReturnExisting` and the contact, signed by
/// kacme itself) and found; a key the CA has never seen is registered with the contact.
async fn a_stored_key_is_looked_up_and_an_unknown_one_registered(account_spec: AccountSpec, log: impl Fn() -> String) {
    let counter = Arc::new(RequestCounter::default());
    let (account, stored_key) = register(&account_spec, &counter).await;
    let found = AcmeAccount::register(&account_spec, Some(&stored_key), counter.clone())
        .await
        .unwrap_or_else(|e| panic!("looking the account up: {e}\n{}", log()));
    assert_eq!(found.account.uri(), account.uri());
    assert_eq!(found.account.origin(), kacme::acme::AccountOrigin::Found);

    // A key from another CA's registration: this CA has never seen it.
    let other = kacme::acme::AccountKey::from_pem(generate_account_key_pem());
    let registered = AcmeAccount::register(&account_spec, Some(&other), counter.clone())
        .await
        .unwrap_or_else(|e| panic!("registering a stored key: {e}\n{}", log()));
    assert_eq!(registered.account.origin(), kacme::acme::AccountOrigin::Registered);
    assert_ne!(registered.account.uri(), account.uri());
    // And it orders: the CA accepts what the account signs.
    OrderSession::create(&registered.account, &["looked-up.example.test".into()], &[], &OrderOptions::default())
        .await
        .unwrap_or_else(|e| panic!("an order with the registered account: {e}\n{}", log()));
}

/// A PKCS#8 PEM ECDSA P-256 key, as kacme stores account keys.
fn generate_account_key_pem() -> String {
    let (_, pkcs8) = instant_acme::Key::generate_pkcs8().expect("a key");
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("PRIVATE KEY", pkcs8.secret_pkcs8_der().to_vec()), config)
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_a_stored_key_is_looked_up_and_an_unknown_one_registered() {
    let pebble = Pebble::start(PebbleOptions::default()).await.unwrap();
    let account_spec = spec(pebble.directory_url(), pebble.listener_root_pem());
    a_stored_key_is_looked_up_and_an_unknown_one_registered(account_spec, String::new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_a_stored_key_is_looked_up_and_an_unknown_one_registered() {
    let step_ca = StepCa::start(StepCaOptions::default()).await.unwrap();
    let account_spec = spec(step_ca.directory_url(), step_ca.root_pem());
    let log = || std::fs::read_to_string(step_ca.dir().join("step-ca.log")).unwrap_or_default();
    a_stored_key_is_looked_up_and_an_unknown_one_registered(account_spec, log).await;
}
