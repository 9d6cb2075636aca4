//! The real engine (and instant-acme under it) against the fake CA: the cases tests/acme_engine.rs runs
//! against Pebble and step-ca, plus the failures a real CA cannot be made to produce on demand.

use super::{Endpoint, FakeAcme, Fault, MemorySolver, Validation};
use crate::acme::{
    AccountOrigin, AccountRecord, AccountSpec, AcmeAccount, AcmeError, Advance, AdvanceOptions, AuthorizationStep,
    ExternalAccountBinding, IssueOptions, NoObserver, OrderOptions, OrderProgress, OrderSession, OrderState, Retry,
    issue, issue_with,
};
use crate::api::{KeyAlgorithm, KeyEncoding, KeyUsage};
use crate::pki::{
    CsrRequest, KeySpec, PrivateKey, build_csr, generate_private_key, key_matches_certificate, parse_ca_bundle,
    parse_chain, verify_chain,
};
use http::Method;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn request(dns: &[&str], ips: &[&str]) -> CsrRequest {
    CsrRequest {
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ip_addresses: ips.iter().map(|s| s.parse().expect("an IP address")).collect(),
        common_name: None,
        usages: BTreeSet::from([KeyUsage::DigitalSignature, KeyUsage::ServerAuth]),
    }
}

fn key() -> PrivateKey {
    generate_private_key(&KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 256, encoding: KeyEncoding::Pkcs8 })
        .expect("an ECDSA key")
}

fn options() -> IssueOptions {
    IssueOptions { deadline: Duration::from_secs(20), ..IssueOptions::default() }
}

/// One step of an order, without the convenience loop (which sleeps for seconds on retryable errors).
fn step_options() -> AdvanceOptions {
    AdvanceOptions { max_wait: Duration::from_secs(2), ..AdvanceOptions::default() }
}

/// The chain verifies to the fake's issuing CA, carries exactly the requested names, belongs to the key,
/// and the fake counted it.
fn check_issued(fake: &FakeAcme, chain_pem: &str, request: &CsrRequest, key: &PrivateKey) {
    let chain = parse_chain(chain_pem.as_bytes()).expect("a PEM chain");
    let ca = parse_ca_bundle(fake.ca_pem().as_bytes()).expect("the fake's CA certificate");
    verify_chain(&chain, &ca, jiff::Timestamp::now()).expect("the chain verifies to the fake's CA");
    assert_eq!(chain.certificates.len(), 2, "leaf and CA");
    let dns: BTreeSet<&String> = chain.leaf.dns_names.iter().collect();
    assert_eq!(dns, request.dns_names.iter().collect(), "exactly the requested DNS names");
    let ips: BTreeSet<IpAddr> = chain.leaf.ip_addresses.iter().copied().collect();
    assert_eq!(ips, request.ip_addresses.iter().copied().collect(), "exactly the requested IP addresses");
    assert!(key_matches_certificate(key, &chain.leaf), "the certificate is for our key");
    assert!(fake.certificates_issued().contains(&chain.leaf.serial), "the fake issued this serial");
}

async fn create_order(account: &AcmeAccount, request: &CsrRequest) -> OrderSession {
    OrderSession::create(account, &request.dns_names, &request.ip_addresses, &OrderOptions::default())
        .await
        .expect("a new order")
}

#[tokio::test]
async fn issues_a_certificate_for_one_name() {
    let started = Instant::now();
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    let request = request(&["one.example.test"], &[]);
    let key = key();

    let issued = issue(&account, &request, &key, &solver, &options()).await.expect("issued");

    check_issued(&fake, &issued.chain_pem, &request, &key);
    assert_eq!(fake.orders_created(), 1);
    assert_eq!(fake.requests(Endpoint::Finalize), 1);
    assert_eq!(solver.serving(), 0, "the challenge was cleaned up");
    let payloads = fake.new_order_payloads();
    assert_eq!(payloads[0]["identifiers"], serde_json::json!([{"type": "dns", "value": "one.example.test"}]));
    eprintln!("fake CA: one certificate in {:?} including the CA's start", started.elapsed());
}

#[tokio::test]
async fn issues_a_certificate_for_two_names_and_an_ip_address() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    fake.set_validation(Validation::served_by(&solver));
    let request = request(&["a.example.test", "b.example.test"], &["127.0.0.1"]);
    let key = key();

    let issued = issue(&account, &request, &key, &solver, &options()).await.expect("issued");

    check_issued(&fake, &issued.chain_pem, &request, &key);
    assert_eq!(fake.requests(Endpoint::Challenge), 3, "one challenge per identifier");
    assert_eq!(solver.serving(), 0);
}

#[tokio::test]
async fn the_same_key_registers_the_same_account_twice() {
    let fake = FakeAcme::start().await;
    let (account, stored_key) = fake.register_account().await;

    let again = AcmeAccount::register(&fake.account_spec(), Some(&stored_key), Arc::new(NoObserver))
        .await
        .expect("loading the account of the stored key");

    assert!(!again.key_is_new);
    assert_eq!(again.account.uri(), account.uri());
    assert_eq!(fake.accounts_created(), 1);
    assert_eq!(fake.requests(Endpoint::NewAccount), 2);
}

#[tokio::test]
async fn a_new_process_resumes_an_order_by_url_and_finishes_it() {
    let fake = FakeAcme::start().await;
    let (account, stored_key) = fake.register_account().await;
    let solver = MemorySolver::new();
    // Validation takes a few polls, so the first process can stop while the CA is validating.
    fake.set_validation(Validation::PendingFor(3));

    for (case, submit_first) in [("after creating the order", false), ("after submitting the challenges", true)] {
        let request = request(&[&format!("resume-{submit_first}.example.test")], &[]);
        let key = key();
        let csr = build_csr(&request, &key).expect("a CSR");
        let mut session = create_order(&account, &request).await;
        if submit_first {
            let options = AdvanceOptions { max_wait: Duration::ZERO, ..AdvanceOptions::default() };
            let advance = session.advance(&account, &solver, &csr, &options).await.expect("a first step");
            assert!(matches!(advance, Advance::Wait { .. }), "{case}: {advance:?}");
            assert!(session.progress().authorizations.iter().all(|a| a.step == AuthorizationStep::Submitted));
        }
        // The position goes through serde, as it does through the Certificate's status.
        let saved = serde_json::to_string(session.progress()).expect("the progress as JSON");
        drop(session);

        let fresh = AcmeAccount::register(&fake.account_spec(), Some(&stored_key), Arc::new(NoObserver))
            .await
            .expect("the account from the stored key");
        let progress: OrderProgress = serde_json::from_str(&saved).expect("the saved progress");
        let orders_before = fake.orders_created();
        let resumed = OrderSession::resume(&fresh.account, progress.clone()).await.expect("the order resumed");
        let issued = issue_with(resumed, &fresh.account, &request, &key, &solver, &options()).await.expect("issued");

        assert_eq!(issued.order_url, progress.url, "{case}: the same order was finished");
        assert_eq!(fake.orders_created(), orders_before, "{case}: no new order");
        check_issued(&fake, &issued.chain_pem, &request, &key);
    }
    assert_eq!(solver.serving(), 0);
}

#[tokio::test]
async fn an_invalid_authorization_fails_for_good_with_the_cas_detail() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    fake.set_validation(Validation::Invalid("connection refused by 192.0.2.1:80".into()));
    let request = request(&["invalid.example.test"], &[]);

    let error = issue(&account, &request, &key(), &solver, &options()).await.expect_err("an invalid order");

    assert_eq!(error.retry, Retry::Never, "{error}");
    assert!(error.to_string().contains("invalid.example.test"), "{error}");
    assert!(error.to_string().contains("connection refused by 192.0.2.1:80"), "the CA's detail is kept: {error}");
    assert_eq!(solver.serving(), 0, "the challenge was cleaned up after the failure");
    assert_eq!(fake.requests(Endpoint::Finalize), 0);
}

#[tokio::test]
async fn a_solver_serving_the_wrong_answer_fails_validation() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver { wrong_answer: Some("not-the-key-authorization".into()), ..MemorySolver::new() };
    fake.set_validation(Validation::served_by(&solver));
    let request = request(&["wrong.example.test"], &[]);

    let error = issue(&account, &request, &key(), &solver, &options()).await.expect_err("an invalid order");

    assert_eq!(error.retry, Retry::Never, "{error}");
    assert!(error.to_string().contains("not-the-key-authorization"), "{error}");
    assert!(error.to_string().contains("wrong.example.test"), "{error}");
}

#[tokio::test]
async fn a_ca_that_refuses_in_the_challenge_answer_gets_the_name_and_reason_recorded() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    fake.set_synchronous_validation(true);
    fake.set_validation(Validation::Invalid("the solver answered 404".into()));
    let solver = MemorySolver::new();
    let request = request(&["sync.example.test"], &[]);
    let csr = build_csr(&request, &key()).expect("a CSR");
    let mut session = create_order(&account, &request).await;

    let error = session.advance(&account, &solver, &csr, &step_options()).await.expect_err("an invalid challenge");

    assert_eq!(error.retry, Retry::Never, "{error}");
    assert!(error.is_problem("incorrectResponse"), "{error}");
    assert!(error.to_string().contains("sync.example.test: incorrectResponse: the solver answered 404"), "{error}");
    let authorization = &session.progress().authorizations[0];
    assert_eq!(authorization.step, AuthorizationStep::Invalid, "the status shows which authorization failed");
    assert_eq!(authorization.message.as_deref(), Some("incorrectResponse: the solver answered 404"));
    assert_eq!(solver.serving(), 0, "the challenge was cleaned up");
}

#[tokio::test]
async fn validation_that_takes_several_polls_still_issues() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    fake.set_validation(Validation::PendingFor(2));
    let request = request(&["slow.example.test"], &[]);
    let key = key();

    let issued = issue(&account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");

    check_issued(&fake, &issued.chain_pem, &request, &key);
}

#[tokio::test]
async fn a_ca_that_signs_after_a_few_polls_still_issues() {
    let fake = FakeAcme::start().await;
    fake.set_signing_polls(2);
    let (account, _) = fake.register_account().await;
    let request = request(&["signing.example.test"], &[]);
    let key = key();

    let issued = issue(&account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");

    check_issued(&fake, &issued.chain_pem, &request, &key);
    assert_eq!(fake.requests(Endpoint::Finalize), 1);
}

#[tokio::test]
async fn an_order_advanced_without_waiting_is_downloaded_once_signed() {
    let fake = FakeAcme::start().await;
    fake.set_signing_polls(2);
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    let request = request(&["signing.example.test"], &[]);
    let key = key();
    let csr = build_csr(&request, &key).expect("a CSR");
    let mut session = create_order(&account, &request).await;
    let options = AdvanceOptions { max_wait: Duration::ZERO, ..AdvanceOptions::default() };

    let mut waits = Vec::new();
    let chain = loop {
        match session.advance(&account, &solver, &csr, &options).await.expect("a step") {
            Advance::Issued(chain) => break chain,
            Advance::Wait { reason, .. } => waits.push(reason),
        }
        assert!(waits.len() < 10, "never issued: {waits:?}");
    };

    check_issued(&fake, &chain, &request, &key);
    assert!(waits.iter().any(|w| w.contains("signing")), "the engine waited for the CA to sign: {waits:?}");
    assert!(waits.len() <= 4, "downloaded as soon as the order was valid: {waits:?}");
    assert_eq!(fake.requests(Endpoint::Finalize), 1);
}

#[tokio::test]
async fn a_server_error_on_finalize_is_retried_and_the_next_attempt_issues() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    fake.fail_next(Endpoint::Finalize, Fault::problem(500, "serverInternal", "the signer is down"), 1);
    let request = request(&["retry.example.test"], &[]);
    let key = key();
    let csr = build_csr(&request, &key).expect("a CSR");
    let mut session = create_order(&account, &request).await;

    let error = session.advance(&account, &solver, &csr, &step_options()).await.expect_err("the finalize fault");
    assert!(matches!(error.retry, Retry::After(_)), "{error}");
    assert!(error.to_string().contains("the signer is down"), "{error}");

    let chain = match session.advance(&account, &solver, &csr, &step_options()).await.expect("the retry") {
        Advance::Issued(chain) => chain,
        other => panic!("not issued: {other:?}"),
    };
    check_issued(&fake, &chain, &request, &key);
    assert_eq!(fake.requests(Endpoint::Finalize), 2);
}

#[tokio::test]
async fn a_lost_finalize_answer_is_retried_without_finalizing_twice() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    fake.fail_next_after(Endpoint::Finalize, Fault::Status(502), 1);
    let request = request(&["lost.example.test"], &[]);
    let key = key();
    let csr = build_csr(&request, &key).expect("a CSR");
    let mut session = create_order(&account, &request).await;

    let error = session.advance(&account, &solver, &csr, &step_options()).await.expect_err("the lost answer");
    assert!(matches!(error.retry, Retry::After(_)), "{error}");
    assert!(error.to_string().contains("502"), "{error}");

    let chain = match session.advance(&account, &solver, &csr, &step_options()).await.expect("the retry") {
        Advance::Issued(chain) => chain,
        other => panic!("not issued: {other:?}"),
    };
    check_issued(&fake, &chain, &request, &key);
    assert_eq!(fake.requests(Endpoint::Finalize), 1, "the valid order was downloaded, not finalized again");
    assert_eq!(fake.certificates_issued().len(), 1);
}

#[tokio::test]
async fn half_the_nonces_rejected_still_issues() {
    let fake = FakeAcme::start().await;
    fake.bad_nonce_rate(50);
    let (account, _) = fake.register_account().await;
    let options = IssueOptions { bad_nonce_retries: 50, ..options() };
    for i in 0..3 {
        let request = request(&[&format!("nonce{i}.example.test")], &[]);
        let key = key();
        let issued = issue(&account, &request, &key, &MemorySolver::new(), &options).await.expect("issued");
        check_issued(&fake, &issued.chain_pem, &request, &key);
    }
}

#[tokio::test]
async fn a_forgotten_order_is_a_final_error_not_retried_forever() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    let request = request(&["forgotten.example.test"], &[]);
    let key = key();
    let session = create_order(&account, &request).await;
    let saved = session.progress().clone();
    fake.forget_orders();

    let started = Instant::now();
    let error = issue_with(session, &account, &request, &key, &solver, &options()).await.expect_err("gone");
    assert_eq!(error.retry, Retry::Never, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "given up at once, not after retries");
    assert_eq!(solver.serving(), 0);

    let error = OrderSession::resume(&account, saved).await.expect_err("an order the CA forgot");
    assert_eq!(error.retry, Retry::Never, "{error}");
    assert_eq!(error.problem.as_ref().and_then(|p| p.status), Some(404), "{error}");
}

#[tokio::test]
async fn a_forgotten_account_says_so_and_its_key_registers_again() {
    let fake = FakeAcme::start().await;
    let (account, stored_key) = fake.register_account().await;
    fake.forget_accounts();

    let error = OrderSession::create(&account, &["who.example.test".into()], &[], &OrderOptions::default())
        .await
        .expect_err("no account");
    assert!(error.is_problem("accountDoesNotExist"), "{error}");

    let again = AcmeAccount::register(&fake.account_spec(), Some(&stored_key), Arc::new(NoObserver))
        .await
        .expect("the stored key registers again");
    assert_ne!(again.account.uri(), account.uri(), "a new account at the CA");
    let request = request(&["who.example.test"], &[]);
    let key = key();
    let issued = issue(&again.account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");
    check_issued(&fake, &issued.chain_pem, &request, &key);
}

#[tokio::test]
async fn external_account_binding_is_required_and_accepted() {
    let fake = FakeAcme::start().await;
    let binding =
        ExternalAccountBinding { key_id: "kid-1".into(), hmac_key: b"a 32 byte secret of the fake CA!".to_vec() };
    fake.require_external_account(Some(vec![binding.clone()]));
    let register = |spec: AccountSpec| async move { AcmeAccount::register(&spec, None, Arc::new(NoObserver)).await };

    let error = register(fake.account_spec()).await.expect_err("EAB is required");
    assert_eq!(error.retry, Retry::Never);
    assert!(error.is_problem("externalAccountRequired"), "{error}");

    let wrong = ExternalAccountBinding { hmac_key: b"another secret".to_vec(), ..binding.clone() };
    let error = register(AccountSpec { external_account: Some(wrong), ..fake.account_spec() })
        .await
        .expect_err("a binding with the wrong key");
    assert!(error.is_problem("unauthorized"), "{error}");

    let registration = register(AccountSpec { external_account: Some(binding), ..fake.account_spec() })
        .await
        .expect("a bound account");
    let request = request(&["eab.example.test"], &[]);
    let key = key();
    let issued = issue(&registration.account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");
    check_issued(&fake, &issued.chain_pem, &request, &key);
    // The stored key loads the bound account again, without EAB.
    let again = AcmeAccount::register(&fake.account_spec(), Some(&registration.key), Arc::new(NoObserver))
        .await
        .expect("the bound account from its key");
    assert_eq!(again.account.uri(), registration.account.uri());
}

#[tokio::test]
async fn reused_authorizations_make_an_order_ready_at_creation() {
    let fake = FakeAcme::start().await;
    fake.reuse_authorizations(true);
    let (account, _) = fake.register_account().await;
    let solver = MemorySolver::new();
    let request = request(&["reuse.example.test", "reuse2.example.test"], &[]);
    issue(&account, &request, &key(), &solver, &options()).await.expect("the first certificate");
    let challenges_before = fake.requests(Endpoint::Challenge);

    let session = create_order(&account, &request).await;
    assert_eq!(session.progress().state, OrderState::Ready);
    assert!(session.progress().authorizations.iter().all(|a| a.step == AuthorizationStep::Valid));
    let key = key();
    let issued = issue_with(session, &account, &request, &key, &solver, &options()).await.expect("issued");

    check_issued(&fake, &issued.chain_pem, &request, &key);
    assert_eq!(fake.requests(Endpoint::Challenge), challenges_before, "nothing was validated again");
}

#[tokio::test]
async fn a_csr_with_other_names_than_the_order_is_refused_for_good() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    let ordered = request(&["ordered.example.test"], &[]);
    let key = key();
    let other_csr = build_csr(&request(&["ordered.example.test", "extra.example.test"], &[]), &key).expect("a CSR");
    let mut session = create_order(&account, &ordered).await;

    let error: AcmeError =
        session.advance(&account, &MemorySolver::new(), &other_csr, &step_options()).await.expect_err("badCSR");

    assert!(error.is_problem("badCSR"), "{error}");
    assert_eq!(error.retry, Retry::Never);
    assert!(fake.certificates_issued().is_empty());
}

#[tokio::test]
async fn certificates_live_as_long_as_the_test_says() {
    let fake = FakeAcme::start().await;
    fake.set_certificate_validity(Duration::from_secs(3600));
    let (account, _) = fake.register_account().await;
    let request = request(&["short.example.test"], &[]);
    let key = key();

    let issued = issue(&account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");

    let leaf = parse_chain(issued.chain_pem.as_bytes()).expect("a chain").leaf;
    let lifetime = leaf.not_after.duration_since(leaf.not_before);
    assert!((3600..=3660 + 5).contains(&lifetime.as_secs()), "an hour (and the minute of backdating): {lifetime:?}");
}

/// A bare ACME client that signs whatever the test asks, to check the fake's own protocol checks.
struct RawClient {
    http: crate::acme::http::MeteredHttp,
    key: aws_lc_rs::signature::EcdsaKeyPair,
    directory: Value,
    kid: Option<String>,
}

/// An answer: status, headers, body (JSON when it is JSON, else `Null`).
struct RawAnswer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl RawAnswer {
    fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    fn nonce(&self) -> Option<String> {
        self.headers.get("replay-nonce").and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

impl RawClient {
    async fn new(fake: &FakeAcme) -> RawClient {
        let http = crate::acme::http::MeteredHttp::new(&fake.trust(), &fake.directory_url(), Arc::new(NoObserver))
            .expect("an HTTP client");
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("a P-256 key");
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
        )
        .expect("the P-256 key");
        let mut client = RawClient { http, key, directory: Value::Null, kid: None };
        client.directory = client.send(Method::GET, &fake.directory_url(), Vec::new()).await.body;
        client
    }

    async fn send(&self, method: Method, url: &str, body: Vec<u8>) -> RawAnswer {
        use instant_acme::HttpClient as _;
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/jose+json")
            .body(instant_acme::BodyWrapper::from(body))
            .expect("a request");
        let mut response = self.http.request(request).await.expect("an answer");
        let bytes = response.body.into_bytes().await.expect("the body");
        RawAnswer {
            status: response.parts.status.as_u16(),
            headers: response.parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    fn url(&self, name: &str) -> String {
        self.directory[name].as_str().expect("a directory URL").to_string()
    }

    async fn nonce(&self) -> String {
        self.send(Method::HEAD, &self.url("newNonce"), Vec::new()).await.nonce().expect("a nonce")
    }

    fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair as _;
        let point = self.key.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    /// A JWS for `url` with `nonce`; `tamper` changes the payload after signing.
    fn jws(&self, url: &str, nonce: &str, payload: Option<&Value>, tamper: bool) -> Vec<u8> {
        let mut header = serde_json::json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => header["kid"] = Value::String(kid.clone()),
            None => header["jwk"] = self.jwk(),
        }
        let protected = b64(header.to_string().as_bytes());
        let payload = payload.map(|p| b64(p.to_string().as_bytes())).unwrap_or_default();
        let signature = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), format!("{protected}.{payload}").as_bytes())
            .expect("a signature");
        let payload = if tamper { b64(b"{\"tampered\":true}") } else { payload };
        serde_json::json!({"protected": protected, "payload": payload, "signature": b64(signature.as_ref())})
            .to_string()
            .into_bytes()
    }

    async fn post(&self, url: &str, payload: Option<&Value>) -> RawAnswer {
        let body = self.jws(url, &self.nonce().await, payload, false);
        self.send(Method::POST, url, body).await
    }

    async fn create_account(&mut self) -> RawAnswer {
        let answer = self.post(&self.url("newAccount"), Some(&serde_json::json!({"termsOfServiceAgreed": true}))).await;
        self.kid = answer.headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        answer
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn the_directory_advertises_what_the_test_set() {
    let fake = FakeAcme::start().await;
    let plain = RawClient::new(&fake).await.directory;
    assert_eq!(plain["meta"], serde_json::json!({}));
    assert!(plain.get("renewalInfo").is_none());

    fake.set_profiles(&[("shortlived", "six days"), ("classic", "ninety days")]);
    fake.set_renewal_info_url(Some("https://127.0.0.1:1/renewal-info".into()));
    fake.require_external_account(Some(Vec::new()));
    let directory = RawClient::new(&fake).await.directory;

    assert_eq!(directory["meta"]["externalAccountRequired"], true);
    assert_eq!(directory["meta"]["profiles"]["shortlived"], "six days");
    assert_eq!(directory["renewalInfo"], "https://127.0.0.1:1/renewal-info");
    assert_eq!(fake.requests(Endpoint::Directory), 2);
}

#[tokio::test]
async fn every_answer_has_a_fresh_nonce_and_a_used_or_unknown_nonce_is_refused() {
    let fake = FakeAcme::start().await;
    let client = RawClient::new(&fake).await;
    let url = client.url("newAccount");
    let payload = serde_json::json!({"termsOfServiceAgreed": true});
    let nonce = client.nonce().await;

    let created = client.send(Method::POST, &url, client.jws(&url, &nonce, Some(&payload), false)).await;
    assert_eq!(created.status, 201);
    assert!(created.nonce().is_some_and(|n| n != nonce));

    let replayed = client.send(Method::POST, &url, client.jws(&url, &nonce, Some(&payload), false)).await;
    assert_eq!((replayed.status, replayed.problem_type()), (400, "urn:ietf:params:acme:error:badNonce"));
    assert!(replayed.nonce().is_some(), "a problem answer carries a nonce too");

    let invented = client.send(Method::POST, &url, client.jws(&url, "made-up", Some(&payload), false)).await;
    assert_eq!(invented.problem_type(), "urn:ietf:params:acme:error:badNonce");
}

#[tokio::test]
async fn a_request_signed_for_another_url_or_tampered_with_is_refused() {
    let fake = FakeAcme::start().await;
    let client = RawClient::new(&fake).await;
    let url = client.url("newAccount");
    let payload = serde_json::json!({"termsOfServiceAgreed": true});

    let other_url = client.jws(&client.url("newOrder"), &client.nonce().await, Some(&payload), false);
    let answer = client.send(Method::POST, &url, other_url).await;
    assert_eq!((answer.status, answer.problem_type()), (401, "urn:ietf:params:acme:error:unauthorized"));

    let tampered = client.jws(&url, &client.nonce().await, Some(&payload), true);
    let answer = client.send(Method::POST, &url, tampered).await;
    assert_eq!((answer.status, answer.problem_type()), (400, "urn:ietf:params:acme:error:malformed"));
    assert!(answer.body["detail"].as_str().unwrap_or_default().contains("signature"), "{}", answer.body);
    assert_eq!(fake.accounts_created(), 0);
}

#[tokio::test]
async fn only_return_existing_finds_an_account_by_its_key_and_no_other() {
    let fake = FakeAcme::start().await;
    let mut client = RawClient::new(&fake).await;
    let lookup = serde_json::json!({"onlyReturnExisting": true});

    let unknown = client.post(&client.url("newAccount"), Some(&lookup)).await;
    assert_eq!((unknown.status, unknown.problem_type()), (400, "urn:ietf:params:acme:error:accountDoesNotExist"));

    let created = client.create_account().await;
    assert_eq!(created.status, 201);
    client.kid = None;
    let found = client.post(&client.url("newAccount"), Some(&lookup)).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.headers.get("location"), created.headers.get("location"));
}

#[tokio::test]
async fn new_orders_keep_their_payload_and_only_advertised_profiles_are_accepted() {
    let fake = FakeAcme::start().await;
    fake.set_profiles(&[("shortlived", "six days")]);
    let mut client = RawClient::new(&fake).await;
    client.create_account().await;
    let identifiers = serde_json::json!([{"type": "dns", "value": "p.example.test"}, {"type": "ip", "value": "::1"}]);

    let payload =
        serde_json::json!({"identifiers": identifiers, "profile": "shortlived", "notAfter": "2030-01-01T00:00:00Z"});
    let order = client.post(&client.url("newOrder"), Some(&payload)).await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["profile"], "shortlived");
    assert_eq!(order.body["status"], "pending");
    assert_eq!(order.body["authorizations"].as_array().map(Vec::len), Some(2));

    let unknown = serde_json::json!({"identifiers": identifiers, "profile": "tlsserver"});
    let refused = client.post(&client.url("newOrder"), Some(&unknown)).await;
    assert_eq!((refused.status, refused.problem_type()), (400, "urn:ietf:params:acme:error:invalidProfile"));

    let payloads = fake.new_order_payloads();
    assert_eq!(payloads.len(), 2, "refused orders are recorded too");
    assert_eq!(payloads[0]["notAfter"], "2030-01-01T00:00:00Z");
    assert_eq!(fake.orders_created(), 1);
}

#[tokio::test]
async fn raw_faults_answer_exactly_and_a_hanging_one_never_answers() {
    let fake = FakeAcme::start().await;
    let client = RawClient::new(&fake).await;
    let raw = Fault::Raw {
        status: 503,
        headers: vec![("Retry-After".into(), "31536000".into())],
        body: b"<html>down</html>".to_vec(),
    };
    // (A failed directory or nonce request is an error of kacme's HTTP client, not an answer: see
    // `a_failed_directory_or_nonce_request_keeps_what_the_ca_said`.)
    fake.fail_next(Endpoint::NewOrder, raw, 1);
    let answer = client.send(Method::POST, &client.url("newOrder"), Vec::new()).await;
    assert_eq!(answer.status, 503);
    // A year asked for; kacme's HTTP client clamps Retry-After to an hour before anything reads it.
    assert_eq!(answer.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"3600"[..]));
    assert!(answer.nonce().is_none(), "exactly the raw answer");

    fake.fail_next(Endpoint::Nonce, Fault::Hang, 1);
    let hung = tokio::time::timeout(Duration::from_millis(300), client.nonce()).await;
    assert!(hung.is_err(), "no answer to a hanging request");
    assert!(!client.nonce().await.is_empty(), "the next request is answered");
    assert_eq!(fake.requests(Endpoint::Nonce), 2);
}

// --- A hostile CA: answers too large, absurd Retry-After ------------------------------------------------

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused_not_read_and_the_next_request_works() {
    let fake = FakeAcme::start().await;
    let huge = vec![b'{'; crate::acme::http::MAX_ANSWER_BYTES + 1];
    fake.fail_next(Endpoint::Directory, Fault::Raw { status: 200, headers: Vec::new(), body: huge }, 1);
    let started = Instant::now();
    let error = AcmeAccount::register(&fake.account_spec(), None, Arc::new(NoObserver))
        .await
        .expect_err("a directory over the limit is an error");
    assert!(error.to_string().contains("longer than"), "{error}");
    assert!(error.is_retryable(), "a CA having trouble: retried later, not final: {error:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not read to the end");
    fake.register_account().await;
}

#[tokio::test]
async fn a_directory_that_points_elsewhere_is_not_followed() {
    let fake = FakeAcme::start().await;
    let directory = serde_json::json!({
        "newNonce": "https://169.254.169.254/latest/meta-data",
        "newAccount": "https://169.254.169.254/acct",
        "newOrder": "https://169.254.169.254/order",
    });
    let raw = Fault::Raw {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: directory.to_string().into_bytes(),
    };
    fake.fail_next(Endpoint::Directory, raw, 1);
    let error = AcmeAccount::register(&fake.account_spec(), None, Arc::new(NoObserver))
        .await
        .expect_err("a request to another host is refused");
    assert!(error.to_string().contains("refusing to follow it"), "{error}");
    assert!(error.to_string().contains("169.254.169.254"), "{error}");
}

// --- Accounts restored from their record, looked up with the contact ---------------------------------

/// The fake's account spec with a contact email.
fn spec_with_email(fake: &FakeAcme) -> AccountSpec {
    AccountSpec { email: Some("ops@example.test".into()), ..fake.account_spec() }
}

#[tokio::test]
async fn a_recorded_account_of_the_same_key_and_server_is_restored_without_any_account_request() {
    let fake = FakeAcme::start().await;
    let (account, stored_key) = fake.register_account().await;
    let record = account.record();
    let (requests_before, new_accounts_before) = (fake.all_requests(), fake.requests(Endpoint::NewAccount));

    let restored = AcmeAccount::load(&fake.account_spec(), Some(&stored_key), Some(&record), Arc::new(NoObserver))
        .await
        .expect("the recorded account");

    assert_eq!(restored.account.uri(), account.uri());
    assert_eq!(restored.account.origin(), AccountOrigin::Restored);
    assert_eq!(fake.requests(Endpoint::NewAccount), new_accounts_before, "no newAccount");
    let directory_reads = fake.requests(Endpoint::Directory);
    assert_eq!(fake.all_requests() - requests_before, 1, "only the directory is read ({directory_reads} reads in all)");
    // The CA accepts what the restored account signs.
    let request = request(&["restored.example.test"], &[]);
    let key = key();
    let issued = issue(&restored.account, &request, &key, &MemorySolver::new(), &options()).await.expect("issued");
    check_issued(&fake, &issued.chain_pem, &request, &key);
    assert_eq!(fake.accounts_created(), 1);
}

#[tokio::test]
async fn a_record_of_another_key_or_another_server_is_not_used_and_the_key_is_looked_up() {
    let fake = FakeAcme::start().await;
    let (account, stored_key) = fake.register_account().await;
    let (other, _) = fake.register_account().await;
    // (case, record)
    let cases = [
        ("another key's account", other.record()),
        ("another server", AccountRecord { directory_url: "https://elsewhere.test/dir".into(), ..account.record() }),
        ("a URL on another host", AccountRecord { url: "https://elsewhere.test/acct/1".into(), ..account.record() }),
    ];
    for (case, record) in cases {
        let before = fake.requests(Endpoint::NewAccount);
        let loaded = AcmeAccount::load(&fake.account_spec(), Some(&stored_key), Some(&record), Arc::new(NoObserver))
            .await
            .expect("the account of the stored key");
        assert_eq!(loaded.account.uri(), account.uri(), "{case}");
        assert_eq!(loaded.account.origin(), AccountOrigin::Found, "{case}");
        assert_eq!(fake.requests(Endpoint::NewAccount), before + 1, "{case}: one lookup");
    }
    assert_eq!(fake.accounts_created(), 2);
}

#[tokio::test]
async fn a_lookup_carries_the_contact_for_a_ca_that_refuses_lookups_without_one() {
    let fake = FakeAcme::start().await;
    fake.refuse_lookups_without_contact();
    let registration =
        AcmeAccount::register(&spec_with_email(&fake), None, Arc::new(NoObserver)).await.expect("registered");

    let found = AcmeAccount::register(&spec_with_email(&fake), Some(&registration.key), Arc::new(NoObserver))
        .await
        .expect("the lookup with the contact is answered");

    assert_eq!(found.account.uri(), registration.account.uri());
    assert_eq!(found.account.origin(), AccountOrigin::Found);
    assert_eq!(fake.accounts_created(), 1);
    // What instant-acme alone sends for a stored key (no contact) is refused by such a CA.
    let error = AcmeAccount::register(&fake.account_spec(), Some(&registration.key), Arc::new(NoObserver))
        .await
        .expect_err("a lookup without contact");
    assert!(error.to_string().contains("contact information is missing"), "{error}");
}

#[tokio::test]
async fn a_lookup_is_sent_again_without_the_contact_to_a_ca_that_wants_it_alone() {
    let fake = FakeAcme::start().await;
    fake.refuse_lookups_with_contact();
    let registration =
        AcmeAccount::register(&spec_with_email(&fake), None, Arc::new(NoObserver)).await.expect("registered");

    let found = AcmeAccount::register(&spec_with_email(&fake), Some(&registration.key), Arc::new(NoObserver))
        .await
        .expect("the lookup without the contact is answered");

    assert_eq!(found.account.uri(), registration.account.uri());
    assert_eq!(found.account.origin(), AccountOrigin::Found);
    assert_eq!(fake.requests(Endpoint::NewAccount), 3, "the registration, the lookup with contact, the one without");
}

#[tokio::test]
async fn a_stored_key_the_ca_does_not_know_registers_with_the_contact_and_the_binding() {
    let fake = FakeAcme::start().await;
    let binding =
        ExternalAccountBinding { key_id: "kid-1".into(), hmac_key: b"a 32 byte secret of the fake CA!".to_vec() };
    fake.require_external_account(Some(vec![binding.clone()]));
    let spec = AccountSpec { external_account: Some(binding), ..spec_with_email(&fake) };
    let first = AcmeAccount::register(&spec, None, Arc::new(NoObserver)).await.expect("registered");
    fake.forget_accounts();

    let again = AcmeAccount::load(&spec, Some(&first.key), Some(&first.account.record()), Arc::new(NoObserver))
        .await
        .expect("restored: the CA is not asked");
    assert_eq!(again.account.origin(), AccountOrigin::Restored);
    let error = OrderSession::create(&again.account, &["who.example.test".into()], &[], &OrderOptions::default())
        .await
        .expect_err("gone");
    assert!(error.is_problem("accountDoesNotExist"), "{error}");

    let registered =
        AcmeAccount::load(&spec, Some(&first.key), None, Arc::new(NoObserver)).await.expect("registered again");
    assert_eq!(registered.account.origin(), AccountOrigin::Registered);
    assert_ne!(registered.account.uri(), first.account.uri());
    assert_eq!(fake.accounts_created(), 2);
    let contact = fake.account_contact(registered.account.uri());
    assert_eq!(contact, Some(serde_json::json!(["mailto:ops@example.test"])));
}

/// A check that fails as step-ca reports a route that is not serving yet, `failures` times, then passes.
fn route_serving_after(failures: u32) -> (Validation, Arc<std::sync::atomic::AtomicU32>) {
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = attempts.clone();
    let check = Validation::Check(Arc::new(move |challenge: &super::FakeChallenge| {
        let attempt = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if attempt <= failures {
            Err(format!(
                "error doing http GET for url http://{}/.well-known/acme-challenge/{} with status code 404",
                challenge.identifier, challenge.token
            ))
        } else {
            Ok(())
        }
    }));
    (check, attempts)
}

/// Advances `session` until it issues, sleeping as long as it asks between steps; the waits it asked for.
async fn advance_until_issued(
    session: &mut OrderSession,
    account: &AcmeAccount,
    solver: &MemorySolver,
    csr: &[u8],
) -> (String, Vec<Duration>) {
    let mut waits = Vec::new();
    for _ in 0..20 {
        match session.advance(account, solver, csr, &step_options()).await.expect("no error on the same order") {
            Advance::Issued(chain) => return (chain, waits),
            Advance::Wait { after, .. } => {
                waits.push(after);
                tokio::time::sleep(after).await;
            }
        }
    }
    panic!("not issued after 20 steps: {:#?}", session.progress());
}

#[tokio::test]
async fn a_challenge_the_ca_leaves_pending_with_an_error_is_asked_again_on_the_same_order_until_the_route_serves() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    fake.leave_failed_challenges_pending(true);
    let (check, attempts) = route_serving_after(2);
    fake.set_validation(check);
    let solver = MemorySolver::new();
    let request = request(&["late.example.test"], &[]);
    let key = key();
    let csr = build_csr(&request, &key).expect("a CSR");
    let mut session = create_order(&account, &request).await;

    // The first attempt fails: the challenge stays submitted, with the CA's words and the next attempt.
    let first = session.advance(&account, &solver, &csr, &step_options()).await.expect("not a failure");
    let Advance::Wait { after, reason } = first else { panic!("a wait: {first:?}") };
    assert_eq!(after, Duration::from_secs(1), "asked again after a second");
    let authorization = &session.progress().authorizations[0];
    assert_eq!(authorization.step, AuthorizationStep::Submitted);
    let message = authorization.message.clone().expect("a message");
    assert!(message.contains("attempt 1") && message.contains("asking again in 1s"), "{message}");
    assert!(message.contains("connection: error doing http GET") && message.contains("404"), "{message}");
    assert!(reason.contains("late.example.test") && reason.contains("404"), "{reason}");
    assert_eq!(solver.serving(), 1, "the route keeps serving");

    let (chain, waits) = advance_until_issued(&mut session, &account, &solver, &csr).await;

    check_issued(&fake, &chain, &request, &key);
    assert_eq!(fake.orders_created(), 1, "the same order");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3, "two failed validations, then one that passed");
    assert_eq!(fake.requests(Endpoint::Challenge), 3, "one POST per validation");
    assert!(waits.contains(&Duration::from_secs(2)), "the second wait doubled: {waits:?}");
    assert_eq!(solver.serving(), 0, "cleaned up");
}

#[tokio::test]
async fn a_challenge_the_ca_invalidates_after_being_asked_again_ends_the_order_for_good_with_its_words() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    fake.leave_failed_challenges_pending(true);
    fake.set_validation(route_serving_after(u32::MAX).0);
    let solver = MemorySolver::new();
    let request = request(&["wrong.example.test"], &[]);
    let csr = build_csr(&request, &key()).expect("a CSR");
    let mut session = create_order(&account, &request).await;
    let first = session.advance(&account, &solver, &csr, &step_options()).await.expect("not a failure");
    let Advance::Wait { after, .. } = first else { panic!("a wait: {first:?}") };

    // The route now answers, but something else than the key authorization: step-ca invalidates.
    fake.set_validation(Validation::Invalid("keyAuthorization does not match".into()));
    tokio::time::sleep(after).await;
    let error = session.advance(&account, &solver, &csr, &step_options()).await.expect_err("an invalid order");

    assert_eq!(error.retry, Retry::Never, "a new order, after backoff: {error}");
    assert!(error.to_string().contains("wrong.example.test"), "{error}");
    assert!(error.to_string().contains("keyAuthorization does not match"), "{error}");
    assert_eq!(session.progress().authorizations[0].step, AuthorizationStep::Invalid);
    assert_eq!(fake.requests(Endpoint::Challenge), 2);
    assert_eq!(solver.serving(), 0, "cleaned up");
}

#[tokio::test]
async fn a_challenge_the_ca_is_still_processing_is_not_asked_about_again() {
    let fake = FakeAcme::start().await;
    let (account, _) = fake.register_account().await;
    fake.set_validation(Validation::PendingFor(4));
    let request = request(&["processing.example.test"], &[]);
    let key = key();
    let csr = build_csr(&request, &key).expect("a CSR");
    let mut session = create_order(&account, &request).await;
    let options = AdvanceOptions { max_wait: Duration::ZERO, ..AdvanceOptions::default() };

    let mut issued = None;
    for _ in 0..20 {
        match session.advance(&account, &MemorySolver::new(), &csr, &options).await.expect("no error") {
            Advance::Issued(chain) => {
                issued = Some(chain);
                break;
            }
            Advance::Wait { .. } => {}
        }
    }

    check_issued(&fake, &issued.expect("issued"), &request, &key);
    assert_eq!(fake.requests(Endpoint::Challenge), 1, "RFC 8555 section 8.2: the CA retries a processing challenge");
}
