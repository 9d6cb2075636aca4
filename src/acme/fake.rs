//! An in-process ACME server (RFC 8555) for fast unit tests of the engine and of the reconcilers.
//!
//! [`FakeAcme::start`] serves HTTPS on `127.0.0.1:0` inside the test process; a full issuance through
//! the real engine and instant-acme takes a few hundred milliseconds, most of it instant-acme's fixed
//! polling delays. The test steers it while it runs:
//!
//! - how challenges validate: [`FakeAcme::set_validation`] with a [`Validation`] (valid at once, invalid
//!   with a detail, processing for a few polls, or a check of what a [`MemorySolver`] serves);
//! - faults: [`FakeAcme::fail_next`] answers the next requests to an [`Endpoint`] with a [`Fault`]
//!   before looking at them, [`FakeAcme::fail_next_after`] processes them and then loses the answer;
//!   [`FakeAcme::bad_nonce_rate`] rejects nonces at random; [`FakeAcme::forget_orders`] and
//!   [`FakeAcme::forget_accounts`] lose state as a CA restarted on an empty database would;
//! - CA behaviour: authorization reuse, required External Account Binding, profiles and a renewalInfo
//!   URL in the directory's `meta`, asynchronous signing, certificate lifetime.
//!
//! It observes: requests per endpoint, orders created, serials issued, the payload of every newOrder.
//!
//! What it checks: every POST is a flattened JWS whose ES256 signature verifies with the account key
//! (the `jwk` of a newAccount request, the key of the `kid` account otherwise), whose nonce is one it
//! issued and not yet used, and whose `url` is the request URL; EAB MACs verify with the configured
//! HMAC keys; a CSR's signature verifies and its names are exactly the order's identifiers (and its
//! common name, if any, one of them). What it does not do: HTTP-01 requests over the network (a
//! [`Validation`] decides instead), other challenge types, wildcards, key rollover, revocation,
//! authorization deactivation, ARI beyond advertising a URL, account orders lists, and expiry of
//! anything. Answers follow Pebble and Boulder: validation is asynchronous (the challenge POST answers
//! `processing`, the outcome shows at the next poll) unless [`FakeAcme::set_synchronous_validation`].
//!
//! Dropping the [`FakeAcme`] stops the server and closes every connection.

mod ca;
mod jws;
#[cfg(test)]
mod tests;

use super::account::{AccountKey, AccountSpec, AcmeAccount, ExternalAccountBinding};
use super::challenge::Http01Challenge;
use super::error::PROBLEM_PREFIX;
use super::http::CaTrust;
use super::observe::NoObserver;
use super::order::{ChallengeSolver, Presentation, SolverError};
use bytes::Bytes;
use ca::{FakeCa, Name};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use jws::Jws;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// An ACME resource of the fake, for fault injection and request counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Endpoint {
    Directory,
    Nonce,
    NewAccount,
    Account,
    NewOrder,
    Order,
    Authorization,
    Challenge,
    Finalize,
    Certificate,
}

impl Endpoint {
    const ALL: [Endpoint; 10] = [
        Endpoint::Directory,
        Endpoint::Nonce,
        Endpoint::NewAccount,
        Endpoint::Account,
        Endpoint::NewOrder,
        Endpoint::Order,
        Endpoint::Authorization,
        Endpoint::Challenge,
        Endpoint::Finalize,
        Endpoint::Certificate,
    ];

    /// The URL path of the endpoint; resources with an id end in `/` and the id follows.
    fn path(self) -> &'static str {
        match self {
            Endpoint::Directory => "/directory",
            Endpoint::Nonce => "/nonce",
            Endpoint::NewAccount => "/new-account",
            Endpoint::Account => "/account/",
            Endpoint::NewOrder => "/new-order",
            Endpoint::Order => "/order/",
            Endpoint::Authorization => "/authz/",
            Endpoint::Challenge => "/challenge/",
            Endpoint::Finalize => "/finalize/",
            Endpoint::Certificate => "/cert/",
        }
    }

    /// The endpoint of a request path, and the id in it (`None` for the fixed endpoints, or when the id
    /// is not a number: then the resource does not exist).
    fn of_path(path: &str) -> Option<(Endpoint, Option<u64>)> {
        Endpoint::ALL.into_iter().find_map(|endpoint| match endpoint.path().strip_suffix('/') {
            None => (path == endpoint.path()).then_some((endpoint, None)),
            Some(_) => path.strip_prefix(endpoint.path()).map(|id| (endpoint, id.parse().ok())),
        })
    }
}

/// A wrong answer to inject. Faults answer in place of the CA (before it looked at the request, or
/// after it processed it: see [`FakeAcme::fail_next_after`]). Add new kinds here and in
/// `Shared::fault_answer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A problem document (`application/problem+json`) with this HTTP status. `kind` is a short RFC 8555
    /// type such as `serverInternal` (the `urn:ietf:params:acme:error:` prefix is added) or a full URI.
    Problem { status: u16, kind: String, detail: String },
    /// This HTTP status with an empty body (and a fresh Replay-Nonce).
    Status(u16),
    /// Never answer: the request stays open until the client gives up or the fake stops.
    Hang,
    /// Exactly this answer and nothing else (no Replay-Nonce): for answers no sane CA gives.
    Raw { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
}

impl Fault {
    /// A problem document, for example `Fault::problem(500, "serverInternal", "the database is down")`.
    pub(crate) fn problem(status: u16, kind: &str, detail: &str) -> Fault {
        Fault::Problem { status, kind: kind.to_string(), detail: detail.to_string() }
    }
}

/// What a challenge validation would see: enough to check that a solver presents the right answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FakeChallenge {
    /// The DNS name or IP address being validated.
    pub(crate) identifier: String,
    pub(crate) token: String,
    /// What `http://<identifier>/.well-known/acme-challenge/<token>` must answer: the token, a dot and
    /// the base64url RFC 7638 thumbprint of the account key.
    pub(crate) key_authorization: String,
}

/// A check of a challenge: `Ok` validates it, `Err(detail)` fails it with that detail.
pub(crate) type ChallengeCheck = Arc<dyn Fn(&FakeChallenge) -> Result<(), String> + Send + Sync>;

/// How the fake validates a challenge once the client says it is ready.
#[derive(Clone)]
pub(crate) enum Validation {
    /// Valid at once (the default).
    Valid,
    /// Invalid: the challenge gets an `incorrectResponse` problem with this detail, the authorization
    /// and the order become invalid.
    Invalid(String),
    /// Processing for this many polls (POST-as-GET of the challenge, its authorization or its order),
    /// then valid.
    PendingFor(u32),
    /// Decided by the test when the client says the challenge is ready. It runs without the fake's lock
    /// held, so it may call the fake.
    Check(ChallengeCheck),
}

impl Validation {
    /// Valid when `solver` serves the key authorization for the token, else invalid with what a CA
    /// would report.
    pub(crate) fn served_by(solver: &MemorySolver) -> Validation {
        let solver = solver.clone();
        Validation::Check(Arc::new(move |challenge: &FakeChallenge| match solver.answer(&challenge.token) {
            Some(answer) if answer == challenge.key_authorization => Ok(()),
            Some(answer) => Err(format!(
                "The key authorization file from the server did not match this challenge \"{}\" != \"{answer}\"",
                challenge.key_authorization
            )),
            None => Err(format!(
                "Invalid response from http://{}/.well-known/acme-challenge/{}: 404",
                challenge.identifier, challenge.token
            )),
        }))
    }
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validation::Valid => f.write_str("Valid"),
            Validation::Invalid(detail) => f.debug_tuple("Invalid").field(detail).finish(),
            Validation::PendingFor(polls) => f.debug_tuple("PendingFor").field(polls).finish(),
            Validation::Check(_) => f.write_str("Check(..)"),
        }
    }
}

/// A [`ChallengeSolver`] that serves from memory: with [`Validation::served_by`] the fake validates
/// what it serves. Clones share their state.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemorySolver {
    answers: Arc<Mutex<BTreeMap<String, String>>>,
    /// Serve this instead of the key authorization.
    pub(crate) wrong_answer: Option<String>,
}

impl MemorySolver {
    /// A solver that serves the right answers.
    pub(crate) fn new() -> MemorySolver {
        MemorySolver::default()
    }

    /// What is served for `token`, if anything.
    pub(crate) fn answer(&self, token: &str) -> Option<String> {
        lock(&self.answers).get(token).cloned()
    }

    /// How many challenges are served right now.
    pub(crate) fn serving(&self) -> usize {
        lock(&self.answers).len()
    }
}

impl ChallengeSolver for MemorySolver {
    async fn present(&self, challenge: &Http01Challenge) -> Result<Presentation, SolverError> {
        let answer = self.wrong_answer.clone().unwrap_or_else(|| challenge.key_authorization.clone());
        lock(&self.answers).insert(challenge.token.clone(), answer);
        Ok(Presentation::Ready)
    }

    async fn cleanup(&self, challenge: &Http01Challenge) -> Result<(), SolverError> {
        lock(&self.answers).remove(&challenge.token);
        Ok(())
    }
}

/// Locks a mutex even after a panicking test poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake ACME server. Dropping it stops the server.
pub(crate) struct FakeAcme {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAcme {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakeAcme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAcme").field("base_url", &self.shared.base_url).finish_non_exhaustive()
    }
}

impl FakeAcme {
    /// Starts a fake CA on `127.0.0.1:0`, with a fresh issuing CA and listener certificate. Panics if it
    /// cannot (test-only).
    pub(crate) async fn start() -> FakeAcme {
        let ca = FakeCa::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let address = listener.local_addr().expect("the listener's address");
        let (chain, key) = ca.listener();
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("the listener certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let shared = Arc::new(Shared { base_url: format!("https://{address}"), ca, state: Mutex::new(State::new()) });
        let server = tokio::spawn(accept_connections(listener, acceptor, shared.clone()));
        FakeAcme { shared, server }
    }

    /// The directory URL, for [`AccountSpec::directory_url`].
    pub(crate) fn directory_url(&self) -> String {
        self.shared.url(Endpoint::Directory, None)
    }

    /// How to trust the fake's HTTPS listener: its own TLS root, which is not the issuing CA.
    pub(crate) fn trust(&self) -> CaTrust {
        CaTrust::Bundle(vec![self.shared.ca.tls_root_der()])
    }

    /// The issuing CA certificate (PEM): issued chains verify to it.
    pub(crate) fn ca_pem(&self) -> String {
        self.shared.ca.ca_pem()
    }

    /// An account spec for this CA: its directory, its trust, no email, no EAB.
    pub(crate) fn account_spec(&self) -> AccountSpec {
        AccountSpec { directory_url: self.directory_url(), email: None, external_account: None, trust: self.trust() }
    }

    /// Registers a new account with [`FakeAcme::account_spec`]; panics on failure (test-only).
    pub(crate) async fn register_account(&self) -> (AcmeAccount, AccountKey) {
        let registration = AcmeAccount::register(&self.account_spec(), None, Arc::new(NoObserver))
            .await
            .expect("registering an account with the fake CA");
        (registration.account, registration.key)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// How challenges validate from now on.
    pub(crate) fn set_validation(&self, validation: Validation) {
        self.state().settings.validation = validation;
    }

    /// Whether the challenge POST itself answers the outcome (`valid`, or `invalid` with its error), as a
    /// CA that validates within the request does, instead of `processing` (the default).
    pub(crate) fn set_synchronous_validation(&self, synchronous: bool) {
        self.state().settings.synchronous_validation = synchronous;
    }

    /// Answers a challenge POST whose [`Validation::Check`] fails as step-ca does for a route that refuses
    /// connections or answers an HTTP error: synchronously, leaving the challenge `pending` with a
    /// `connection` problem (the authorization and the order stay pending), so that the client may POST it
    /// again; a later POST that validates makes it valid. [`Validation::Invalid`] still invalidates the
    /// challenge at once, as step-ca does for a route that answers something other than the key
    /// authorization.
    pub(crate) fn leave_failed_challenges_pending(&self, leave: bool) {
        self.state().settings.leave_failed_challenges_pending = leave;
    }

    /// Answers the next `times` requests to `endpoint` with `fault`, before looking at them (nothing
    /// changes, the nonce is not used). Faults queue up in the order they were added.
    pub(crate) fn fail_next(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        self.state().faults.push(ScheduledFault { endpoint, fault, remaining: times, after_processing: false });
    }

    /// Processes the next `times` requests to `endpoint` and then answers `fault` instead of the result:
    /// the CA did the work and the answer was lost.
    pub(crate) fn fail_next_after(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        self.state().faults.push(ScheduledFault { endpoint, fault, remaining: times, after_processing: true });
    }

    /// Rejects this share (0 to 100) of otherwise good nonces with `badNonce`, as Pebble does.
    pub(crate) fn bad_nonce_rate(&self, percent: u8) {
        self.state().settings.bad_nonce_percent = percent.min(100);
    }

    /// Forgets every order and authorization: later requests for them get a 404 `malformed` problem.
    pub(crate) fn forget_orders(&self) {
        let mut state = self.state();
        state.orders.clear();
        state.authorizations.clear();
    }

    /// Forgets every account: requests signed by them get `accountDoesNotExist`.
    pub(crate) fn forget_accounts(&self) {
        self.state().accounts.clear();
    }

    /// Whether new orders reuse the account's valid authorizations for the same identifiers (an order
    /// whose identifiers all have one is `ready` at creation), as Pebble and Let's Encrypt do.
    pub(crate) fn reuse_authorizations(&self, reuse: bool) {
        self.state().settings.reuse_authorizations = reuse;
    }

    /// Requires an External Account Binding by one of these keys for new accounts (an empty list
    /// requires one that can never verify); `None` stops requiring it.
    pub(crate) fn require_external_account(&self, keys: Option<Vec<ExternalAccountBinding>>) {
        self.state().settings.external_accounts = keys;
    }

    /// The profiles (name, description) advertised in the directory's `meta`; a newOrder asking for
    /// another one gets `invalidProfile`.
    pub(crate) fn set_profiles(&self, profiles: &[(&str, &str)]) {
        self.state().settings.profiles = profiles.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
    }

    /// The `renewalInfo` URL advertised in the directory (nothing serves it).
    pub(crate) fn set_renewal_info_url(&self, url: Option<String>) {
        self.state().settings.renewal_info_url = url;
    }

    /// How many polls of an order see it `processing` after finalize before it is `valid` (0 by
    /// default: valid in the finalize answer), as a CA that signs asynchronously.
    pub(crate) fn set_signing_polls(&self, polls: u32) {
        self.state().settings.signing_polls = polls;
    }

    /// Refuses account lookups (newAccount with `onlyReturnExisting`) that carry no contact, answering
    /// "contact information is missing" as some CAs do.
    pub(crate) fn refuse_lookups_without_contact(&self) {
        self.state().settings.lookup_needs_contact = true;
    }

    /// Refuses account lookups (newAccount with `onlyReturnExisting`) that carry a contact, answering
    /// "onlyReturnExisting must be alone" as step-ca does.
    pub(crate) fn refuse_lookups_with_contact(&self) {
        self.state().settings.lookup_must_be_alone = true;
    }

    /// The lifetime of certificates issued from now on (24 hours by default, as step-ca).
    pub(crate) fn set_certificate_validity(&self, validity: Duration) {
        self.state().settings.certificate_validity = validity;
    }

    /// The longest lifetime an order may ask for with `notAfter`; longer asks are refused with a 403, as
    /// step-ca refuses a lifetime above its provisioner's maximum (none by default).
    pub(crate) fn set_max_lifetime(&self, max: Duration) {
        self.state().settings.max_lifetime = Some(max);
    }

    /// Requests received so far for `endpoint`, faulty answers included.
    pub(crate) fn requests(&self, endpoint: Endpoint) -> u64 {
        self.state().observed.requests.get(&endpoint).copied().unwrap_or_default()
    }

    /// Requests to every endpoint together.
    pub(crate) fn all_requests(&self) -> u64 {
        Endpoint::ALL.iter().map(|endpoint| self.requests(*endpoint)).sum()
    }

    /// Orders created so far.
    pub(crate) fn orders_created(&self) -> usize {
        self.state().observed.orders_created
    }

    /// The contact of the account at `url`, if the CA knows it.
    pub(crate) fn account_contact(&self, url: &str) -> Option<Value> {
        let id = url.strip_prefix(&self.shared.url(Endpoint::Account, None))?.parse::<u64>().ok()?;
        self.state().accounts.get(&id).map(|account| account.contact.clone())
    }

    /// Accounts created so far (also those forgotten since).
    pub(crate) fn accounts_created(&self) -> usize {
        self.state().observed.accounts_created
    }

    /// The serials (lowercase hex, as [`crate::pki::CertificateInfo::serial`]) of the certificates
    /// issued so far, in order.
    pub(crate) fn certificates_issued(&self) -> Vec<String> {
        self.state().observed.certificates.clone()
    }

    /// The payload of every newOrder request that got as far as being read, in order.
    pub(crate) fn new_order_payloads(&self) -> Vec<Value> {
        self.state().observed.new_order_payloads.clone()
    }
}

/// Accepts connections until aborted; aborting drops the set, which aborts every connection task.
async fn accept_connections(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request| serve(shared.clone(), request));
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let answer = match shared.answer(&parts.method, parts.uri.path(), &body) {
        Answer::Ready(answer) => answer,
        Answer::Validate(validate) => {
            let (outcome, polls) = match &validate.policy {
                Validation::Valid => (Ok(()), 0),
                Validation::Invalid(detail) => (Err(detail.clone()), 0),
                Validation::PendingFor(polls) => (Ok(()), *polls),
                Validation::Check(check) => (check(&validate.challenge), 0),
            };
            shared.finish_challenge_post(validate, outcome, polls)
        }
    };
    let (status, headers, body) = match answer {
        Finished::Reply(reply) => reply,
        Finished::Hang => std::future::pending().await,
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(&value))
        {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// What the server sends: status, headers, body; or nothing ever.
enum Finished {
    Reply((u16, Vec<(String, String)>, Vec<u8>)),
    Hang,
}

/// The first pass over a request: an answer, or a challenge to validate without the lock held.
enum Answer {
    Ready(Finished),
    Validate(PendingValidation),
}

/// A challenge POST waiting for its [`Validation`] to run.
struct PendingValidation {
    authorization: u64,
    challenge: FakeChallenge,
    policy: Validation,
}

struct ScheduledFault {
    endpoint: Endpoint,
    fault: Fault,
    remaining: u32,
    after_processing: bool,
}

struct Settings {
    validation: Validation,
    synchronous_validation: bool,
    leave_failed_challenges_pending: bool,
    bad_nonce_percent: u8,
    reuse_authorizations: bool,
    /// `Some` when new accounts need an External Account Binding by one of these keys.
    external_accounts: Option<Vec<ExternalAccountBinding>>,
    profiles: BTreeMap<String, String>,
    renewal_info_url: Option<String>,
    certificate_validity: Duration,
    max_lifetime: Option<Duration>,
    signing_polls: u32,
    /// Refuse newAccount with `onlyReturnExisting` but no contact, as some CAs do.
    lookup_needs_contact: bool,
    /// Refuse newAccount with `onlyReturnExisting` and a contact, as step-ca does.
    lookup_must_be_alone: bool,
}

#[derive(Default)]
struct Observed {
    requests: BTreeMap<Endpoint, u64>,
    orders_created: usize,
    accounts_created: usize,
    certificates: Vec<String>,
    new_order_payloads: Vec<Value>,
}

struct Account {
    jwk: Value,
    thumbprint: String,
    contact: Value,
    deactivated: bool,
}

struct Order {
    account: u64,
    /// The identifiers as the client sent them, deduplicated.
    identifiers: Vec<Name>,
    authorizations: Vec<u64>,
    profile: Option<String>,
    not_before: Option<Value>,
    not_after: Option<Value>,
    certificate: Option<u64>,
    /// After finalize: polls left that still see the order `processing`.
    signing_polls_left: Option<u32>,
    expires: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    /// Orders only: every authorization is valid.
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Ready => "ready",
            Status::Processing => "processing",
            Status::Valid => "valid",
            Status::Invalid => "invalid",
        }
    }
}

/// An authorization and its one http-01 challenge (the challenge has the authorization's id).
struct Authorization {
    account: u64,
    name: Name,
    status: Status,
    expires: String,
    token: String,
    challenge_status: Status,
    challenge_error: Option<Value>,
    validated: Option<String>,
    /// A decided outcome waiting for its polls: (outcome, polls left before it shows).
    outcome: Option<(Result<(), String>, u32)>,
}

struct Certificate {
    account: u64,
    chain_pem: String,
}

struct State {
    settings: Settings,
    observed: Observed,
    faults: Vec<ScheduledFault>,
    nonces: HashSet<String>,
    random: u64,
    next_id: u64,
    accounts: BTreeMap<u64, Account>,
    orders: BTreeMap<u64, Order>,
    authorizations: BTreeMap<u64, Authorization>,
    certificates: BTreeMap<u64, Certificate>,
}

/// An error answer as an RFC 8555 problem.
#[derive(Debug)]
struct Problem {
    status: u16,
    kind: String,
    detail: String,
}

impl Problem {
    fn new(status: u16, kind: &str, detail: impl Into<String>) -> Problem {
        Problem { status, kind: kind.to_string(), detail: detail.into() }
    }

    fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new(400, "malformed", detail)
    }

    fn not_found(what: &str) -> Problem {
        Problem::new(404, "malformed", format!("no such {what}"))
    }

    fn document(&self) -> Value {
        let kind = match self.kind.contains(':') {
            true => self.kind.clone(),
            false => format!("{PROBLEM_PREFIX}{}", self.kind),
        };
        json!({"type": kind, "detail": self.detail, "status": self.status})
    }
}

/// A successful answer before the nonce is added.
struct Reply {
    status: u16,
    location: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply { status, location: None, content_type: "application/json", body: value.to_string().into_bytes() }
    }

    fn created(location: String, value: &Value) -> Reply {
        Reply { location: Some(location), ..Reply::json(201, value) }
    }

    fn problem(problem: &Problem) -> Reply {
        Reply {
            status: problem.status,
            location: None,
            content_type: "application/problem+json",
            body: problem.document().to_string().into_bytes(),
        }
    }
}

fn timestamp_in(duration: Duration) -> String {
    let now = jiff::Timestamp::now();
    now.checked_add(jiff::SignedDuration::try_from(duration).unwrap_or_default()).unwrap_or(now).to_string()
}

impl State {
    fn new() -> State {
        State {
            settings: Settings {
                validation: Validation::Valid,
                synchronous_validation: false,
                leave_failed_challenges_pending: false,
                bad_nonce_percent: 0,
                reuse_authorizations: false,
                external_accounts: None,
                profiles: BTreeMap::new(),
                renewal_info_url: None,
                certificate_validity: Duration::from_secs(24 * 3600),
                max_lifetime: None,
                signing_polls: 0,
                lookup_needs_contact: false,
                lookup_must_be_alone: false,
            },
            observed: Observed::default(),
            faults: Vec::new(),
            nonces: HashSet::new(),
            random: 0x9e37_79b9_7f4a_7c15,
            next_id: 1,
            accounts: BTreeMap::new(),
            orders: BTreeMap::new(),
            authorizations: BTreeMap::new(),
            certificates: BTreeMap::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn fresh_nonce(&mut self) -> String {
        let nonce = jws::random_b64(16);
        self.nonces.insert(nonce.clone());
        nonce
    }

    /// A pseudo-random percentage (xorshift; reproducible for one sequence of requests).
    fn random_percent(&mut self) -> u8 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random % 100) as u8
    }

    /// Takes the next fault scheduled for `endpoint` at this point of processing.
    fn take_fault(&mut self, endpoint: Endpoint, after_processing: bool) -> Option<Fault> {
        let index = self
            .faults
            .iter()
            .position(|f| f.endpoint == endpoint && f.after_processing == after_processing && f.remaining > 0)?;
        let scheduled = &mut self.faults[index];
        scheduled.remaining -= 1;
        let fault = scheduled.fault.clone();
        self.faults.retain(|f| f.remaining > 0);
        Some(fault)
    }

    fn check_nonce(&mut self, jws: &Jws) -> Result<(), Problem> {
        let nonce = jws.protected.nonce.as_deref().ok_or_else(|| Problem::new(400, "badNonce", "no nonce"))?;
        if !self.nonces.remove(nonce) {
            return Err(Problem::new(400, "badNonce", format!("unknown or reused nonce {nonce:?}")));
        }
        let percent = self.settings.bad_nonce_percent;
        if percent > 0 && self.random_percent() < percent {
            return Err(Problem::new(400, "badNonce", "nonce rejected at random (fake CA's bad nonce rate)"));
        }
        Ok(())
    }

    /// Applies a decided outcome whose polls are over, counting one poll otherwise.
    fn poll_authorization(&mut self, id: u64) {
        let Some(authorization) = self.authorizations.get_mut(&id) else { return };
        match authorization.outcome.take() {
            Some((outcome, 0)) => settle(authorization, outcome),
            Some((outcome, polls)) => authorization.outcome = Some((outcome, polls - 1)),
            None => {}
        }
    }

    fn order_status(&self, order: &Order) -> Status {
        if order.certificate.is_some() {
            return match order.signing_polls_left {
                Some(_) => Status::Processing,
                None => Status::Valid,
            };
        }
        let statuses: Vec<Status> = order
            .authorizations
            .iter()
            .map(|id| self.authorizations.get(id).map(|a| a.status).unwrap_or(Status::Invalid))
            .collect();
        if statuses.contains(&Status::Invalid) {
            Status::Invalid
        } else if statuses.iter().all(|s| *s == Status::Valid) {
            Status::Ready
        } else {
            Status::Pending
        }
    }
}

fn settle(authorization: &mut Authorization, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            authorization.status = Status::Valid;
            authorization.challenge_status = Status::Valid;
            authorization.challenge_error = None;
            authorization.validated = Some(jiff::Timestamp::now().to_string());
        }
        Err(detail) => {
            authorization.status = Status::Invalid;
            authorization.challenge_status = Status::Invalid;
            authorization.challenge_error = Some(Problem::new(403, "incorrectResponse", detail).document());
        }
    }
}

/// The server's state and identity, shared with the connection tasks.
struct Shared {
    base_url: String,
    ca: FakeCa,
    state: Mutex<State>,
}

impl Shared {
    fn url(&self, endpoint: Endpoint, id: Option<u64>) -> String {
        match id {
            Some(id) => format!("{}{}{id}", self.base_url, endpoint.path()),
            None => format!("{}{}", self.base_url, endpoint.path()),
        }
    }

    /// The first pass over a request, under the lock.
    fn answer(&self, method: &Method, path: &str, body: &[u8]) -> Answer {
        let mut state = lock(&self.state);
        let Some((endpoint, id)) = Endpoint::of_path(path) else {
            return Answer::Ready(self.finish(&mut state, Reply::problem(&Problem::not_found("resource")), None));
        };
        *state.observed.requests.entry(endpoint).or_default() += 1;
        if let Some(fault) = state.take_fault(endpoint, false) {
            return Answer::Ready(self.fault_answer(&mut state, fault));
        }
        let reply = match self.process(&mut state, endpoint, id, method, path, body) {
            Ok(Step::Reply(reply)) => reply,
            Ok(Step::Validate(validate)) => return Answer::Validate(validate),
            Err(problem) => Reply::problem(&problem),
        };
        Answer::Ready(self.finish(&mut state, reply, Some(endpoint)))
    }

    /// Adds the nonce, or replaces the answer by a fault scheduled after processing.
    fn finish(&self, state: &mut State, reply: Reply, endpoint: Option<Endpoint>) -> Finished {
        if let Some(fault) = endpoint.and_then(|e| state.take_fault(e, true)) {
            return self.fault_answer(state, fault);
        }
        let mut headers = vec![
            ("Replay-Nonce".to_string(), state.fresh_nonce()),
            ("Cache-Control".to_string(), "no-store".to_string()),
            ("Content-Type".to_string(), reply.content_type.to_string()),
            ("Link".to_string(), format!("<{}>;rel=\"index\"", self.url(Endpoint::Directory, None))),
        ];
        if let Some(location) = reply.location {
            headers.push(("Location".to_string(), location));
        }
        Finished::Reply((reply.status, headers, reply.body))
    }

    fn fault_answer(&self, state: &mut State, fault: Fault) -> Finished {
        let nonce = ("Replay-Nonce".to_string(), state.fresh_nonce());
        match fault {
            Fault::Problem { status, kind, detail } => {
                let reply = Reply::problem(&Problem { status, kind, detail });
                let content_type = ("Content-Type".to_string(), reply.content_type.to_string());
                Finished::Reply((status, vec![nonce, content_type], reply.body))
            }
            Fault::Status(status) => Finished::Reply((status, vec![nonce], Vec::new())),
            Fault::Hang => Finished::Hang,
            Fault::Raw { status, headers, body } => Finished::Reply((status, headers, body)),
        }
    }

    /// The second pass of a challenge POST, once its validation was decided without the lock.
    fn finish_challenge_post(&self, validate: PendingValidation, outcome: Result<(), String>, polls: u32) -> Finished {
        let mut state = lock(&self.state);
        // step-ca validates within the challenge POST.
        let synchronous = state.settings.synchronous_validation || state.settings.leave_failed_challenges_pending;
        let leave_pending = state.settings.leave_failed_challenges_pending
            && matches!(validate.policy, Validation::Check(_) | Validation::Valid);
        let reply = match state.authorizations.get_mut(&validate.authorization) {
            None => Reply::problem(&Problem::not_found("challenge")),
            Some(authorization) => {
                // Another request may have started this validation meanwhile: the first one decides.
                if authorization.challenge_status == Status::Pending
                    && leave_pending
                    && let Err(detail) = &outcome
                {
                    authorization.challenge_error = Some(Problem::new(400, "connection", detail.clone()).document());
                } else if authorization.challenge_status == Status::Pending && leave_pending {
                    settle(authorization, outcome);
                } else if authorization.challenge_status == Status::Pending {
                    authorization.challenge_status = Status::Processing;
                    match (synchronous, polls) {
                        (true, 0) => settle(authorization, outcome),
                        _ => authorization.outcome = Some((outcome, polls)),
                    }
                }
                Reply::json(200, &self.challenge_json(validate.authorization, authorization))
            }
        };
        self.finish(&mut state, reply, Some(Endpoint::Challenge))
    }

    fn process(
        &self,
        state: &mut State,
        endpoint: Endpoint,
        id: Option<u64>,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Step, Problem> {
        match endpoint {
            Endpoint::Directory => return Ok(Step::Reply(Reply::json(200, &self.directory(state)))),
            Endpoint::Nonce => {
                let status = if method == Method::HEAD { 200 } else { 204 };
                return Ok(Step::Reply(Reply { status, location: None, content_type: "text/plain", body: Vec::new() }));
            }
            _ if method != Method::POST => {
                return Err(Problem::new(405, "malformed", "ACME resources take POST (RFC 8555 section 6.3)"));
            }
            _ => {}
        }
        let jws = Jws::parse(body).map_err(Problem::malformed)?;
        state.check_nonce(&jws)?;
        let request_url = format!("{}{path}", self.base_url);
        if jws.protected.url != request_url {
            return Err(Problem::new(
                401,
                "unauthorized",
                format!("the JWS url {:?} is not the request URL {request_url:?}", jws.protected.url),
            ));
        }
        if endpoint == Endpoint::NewAccount {
            return self.new_account(state, &jws).map(Step::Reply);
        }
        let account = self.authenticate(state, &jws)?;
        let id_of = |what: &str| id.ok_or_else(|| Problem::not_found(what));
        let reply = match endpoint {
            Endpoint::Account => self.account(state, account, id_of("account")?, &jws)?,
            Endpoint::NewOrder => self.new_order(state, account, &jws)?,
            Endpoint::Order => {
                let order = id_of("order")?;
                self.owned_order(state, account, order)?;
                let authorizations = state.orders.get(&order).map(|o| o.authorizations.clone()).unwrap_or_default();
                for authorization in authorizations {
                    state.poll_authorization(authorization);
                }
                if let Some(order) = state.orders.get_mut(&order) {
                    order.signing_polls_left = order.signing_polls_left.and_then(|left| left.checked_sub(1));
                }
                Reply::json(200, &self.order_json(state, order)?)
            }
            Endpoint::Authorization => {
                let authorization = id_of("authorization")?;
                self.owned_authorization(state, account, authorization)?;
                state.poll_authorization(authorization);
                Reply::json(200, &self.authorization_json(state, authorization)?)
            }
            Endpoint::Challenge => {
                let authorization = id_of("challenge")?;
                self.owned_authorization(state, account, authorization)?;
                return self.challenge_post(state, account, authorization, &jws);
            }
            Endpoint::Finalize => self.finalize(state, account, id_of("order")?, &jws)?,
            Endpoint::Certificate => {
                let certificate = state
                    .certificates
                    .get(&id_of("certificate")?)
                    .filter(|c| c.account == account)
                    .ok_or_else(|| Problem::not_found("certificate"))?;
                Reply {
                    status: 200,
                    location: None,
                    content_type: "application/pem-certificate-chain",
                    body: certificate.chain_pem.clone().into_bytes(),
                }
            }
            Endpoint::Directory | Endpoint::Nonce | Endpoint::NewAccount => {
                return Err(Problem::malformed("unreachable endpoint"));
            }
        };
        Ok(Step::Reply(reply))
    }

    fn directory(&self, state: &State) -> Value {
        let mut meta = serde_json::Map::new();
        if state.settings.external_accounts.is_some() {
            meta.insert("externalAccountRequired".into(), Value::Bool(true));
        }
        if !state.settings.profiles.is_empty() {
            meta.insert("profiles".into(), json!(state.settings.profiles));
        }
        let mut directory = json!({
            "newNonce": self.url(Endpoint::Nonce, None),
            "newAccount": self.url(Endpoint::NewAccount, None),
            "newOrder": self.url(Endpoint::NewOrder, None),
            "meta": meta,
        });
        if let Some(url) = &state.settings.renewal_info_url {
            directory["renewalInfo"] = Value::String(url.clone());
        }
        directory
    }

    /// The account that signed a `kid` request, after checking its signature.
    fn authenticate(&self, state: &State, jws: &Jws) -> Result<u64, Problem> {
        let kid = jws.protected.kid.as_deref().ok_or_else(|| Problem::malformed("only newAccount takes a jwk"))?;
        let unknown = || Problem::new(400, "accountDoesNotExist", format!("no account {kid}"));
        let id = kid
            .strip_prefix(&self.url(Endpoint::Account, None))
            .and_then(|id| id.parse::<u64>().ok())
            .ok_or_else(unknown)?;
        let account = state.accounts.get(&id).ok_or_else(unknown)?;
        jws.verify(&account.jwk).map_err(Problem::malformed)?;
        if account.deactivated {
            return Err(Problem::new(401, "unauthorized", "the account is deactivated"));
        }
        Ok(id)
    }

    fn account_json(&self, account: &Account) -> Value {
        json!({
            "status": if account.deactivated { "deactivated" } else { "valid" },
            "contact": account.contact,
            "termsOfServiceAgreed": true,
        })
    }

    fn new_account(&self, state: &mut State, jws: &Jws) -> Result<Reply, Problem> {
        let jwk = jws.protected.jwk.as_ref().ok_or_else(|| Problem::malformed("newAccount takes a jwk, not a kid"))?;
        jws.verify(jwk).map_err(Problem::malformed)?;
        let thumbprint = jws::thumbprint(jwk).map_err(|e| Problem::new(400, "badPublicKey", e))?;
        let payload = jws.payload.clone().unwrap_or_default();
        let lookup = payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true);
        let no_contact = payload.get("contact").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if lookup && no_contact && state.settings.lookup_needs_contact {
            return Err(Problem::malformed("contact information is missing"));
        }
        if lookup && !no_contact && state.settings.lookup_must_be_alone {
            return Err(Problem::malformed("incompatible input; onlyReturnExisting must be alone"));
        }
        if let Some((id, account)) = state.accounts.iter().find(|(_, a)| a.thumbprint == thumbprint) {
            let reply = Reply::json(200, &self.account_json(account));
            return Ok(Reply { location: Some(self.url(Endpoint::Account, Some(*id))), ..reply });
        }
        if lookup {
            return Err(Problem::new(400, "accountDoesNotExist", "no account for this key"));
        }
        if let Some(keys) = &state.settings.external_accounts {
            let binding = payload.get("externalAccountBinding").ok_or_else(|| {
                Problem::new(401, "externalAccountRequired", "this CA requires an external account binding")
            })?;
            self.check_binding(binding, jwk, keys)?;
        }
        let id = state.id();
        state.accounts.insert(
            id,
            Account {
                jwk: jwk.clone(),
                thumbprint,
                contact: payload.get("contact").cloned().unwrap_or_else(|| json!([])),
                deactivated: false,
            },
        );
        state.observed.accounts_created += 1;
        let account = &state.accounts[&id];
        Ok(Reply::created(self.url(Endpoint::Account, Some(id)), &self.account_json(account)))
    }

    fn check_binding(&self, binding: &Value, jwk: &Value, keys: &[ExternalAccountBinding]) -> Result<(), Problem> {
        let unauthorized = |detail: String| Problem::new(401, "unauthorized", detail);
        let eab = Jws::parse(binding.to_string().as_bytes())
            .map_err(|e| Problem::malformed(format!("externalAccountBinding: {e}")))?;
        if eab.protected.nonce.is_some() {
            return Err(Problem::malformed("externalAccountBinding: the protected header must not have a nonce"));
        }
        if eab.protected.url != self.url(Endpoint::NewAccount, None) {
            return Err(unauthorized("externalAccountBinding: the url is not the newAccount URL".into()));
        }
        let kid = eab.protected.kid.as_deref().unwrap_or_default();
        let key =
            keys.iter().find(|k| k.key_id == kid).ok_or_else(|| unauthorized(format!("unknown EAB key ID {kid:?}")))?;
        eab.verify_hmac(&key.hmac_key).map_err(unauthorized)?;
        if eab.payload.as_ref() != Some(jwk) {
            return Err(unauthorized("externalAccountBinding: the payload is not the account key".into()));
        }
        Ok(())
    }

    fn account(&self, state: &mut State, account: u64, id: u64, jws: &Jws) -> Result<Reply, Problem> {
        if id != account {
            return Err(Problem::new(403, "unauthorized", "this is another account"));
        }
        let entry = state.accounts.get_mut(&id).ok_or_else(|| Problem::not_found("account"))?;
        if let Some(payload) = &jws.payload {
            if let Some(contact) = payload.get("contact") {
                entry.contact = contact.clone();
            }
            if payload.get("status").and_then(Value::as_str) == Some("deactivated") {
                entry.deactivated = true;
            }
        }
        Ok(Reply::json(200, &self.account_json(entry)))
    }

    fn new_order(&self, state: &mut State, account: u64, jws: &Jws) -> Result<Reply, Problem> {
        let payload = jws.payload.clone().ok_or_else(|| Problem::malformed("newOrder needs a payload"))?;
        state.observed.new_order_payloads.push(payload.clone());
        let identifiers = payload
            .get("identifiers")
            .and_then(Value::as_array)
            .filter(|list| !list.is_empty())
            .ok_or_else(|| Problem::malformed("newOrder needs a non-empty identifiers list"))?;
        let mut names: Vec<Name> = Vec::new();
        for identifier in identifiers {
            let name = Name::from_identifier(identifier).map_err(|e| Problem::new(400, "rejectedIdentifier", e))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let profile = payload.get("profile").and_then(Value::as_str).map(str::to_string);
        if let Some(profile) = &profile
            && !state.settings.profiles.contains_key(profile)
        {
            return Err(Problem::new(400, "invalidProfile", format!("no profile {profile:?} here")));
        }
        let not_after = payload.get("notAfter").map(requested_not_after).transpose()?;
        if let (Some(not_after), Some(max)) = (not_after, state.settings.max_lifetime) {
            let asked = not_after - time::OffsetDateTime::now_utc();
            if asked > max {
                return Err(Problem::new(
                    403,
                    "unauthorized",
                    format!(
                        "requested duration of {}s is more than the authorized maximum certificate duration of {}s",
                        asked.whole_seconds(),
                        max.as_secs()
                    ),
                ));
            }
        }
        let mut authorizations = Vec::new();
        for name in &names {
            let reusable = state
                .authorizations
                .iter()
                .find(|(_, a)| a.account == account && &a.name == name && a.status == Status::Valid)
                .map(|(id, _)| *id);
            let id = match reusable {
                Some(id) if state.settings.reuse_authorizations => id,
                _ => {
                    let id = state.id();
                    let authorization = Authorization {
                        account,
                        name: name.clone(),
                        status: Status::Pending,
                        expires: timestamp_in(Duration::from_secs(7 * 24 * 3600)),
                        token: jws::random_b64(32),
                        challenge_status: Status::Pending,
                        challenge_error: None,
                        validated: None,
                        outcome: None,
                    };
                    state.authorizations.insert(id, authorization);
                    id
                }
            };
            authorizations.push(id);
        }
        let id = state.id();
        let order = Order {
            account,
            identifiers: names,
            authorizations,
            profile,
            not_before: payload.get("notBefore").cloned(),
            not_after: payload.get("notAfter").cloned(),
            certificate: None,
            signing_polls_left: None,
            expires: timestamp_in(Duration::from_secs(7 * 24 * 3600)),
        };
        state.orders.insert(id, order);
        state.observed.orders_created += 1;
        Ok(Reply::created(self.url(Endpoint::Order, Some(id)), &self.order_json(state, id)?))
    }

    fn owned_order(&self, state: &State, account: u64, id: u64) -> Result<(), Problem> {
        match state.orders.get(&id) {
            Some(order) if order.account == account => Ok(()),
            _ => Err(Problem::not_found("order")),
        }
    }

    fn owned_authorization(&self, state: &State, account: u64, id: u64) -> Result<(), Problem> {
        match state.authorizations.get(&id) {
            Some(authorization) if authorization.account == account => Ok(()),
            _ => Err(Problem::not_found("authorization")),
        }
    }

    fn order_json(&self, state: &State, id: u64) -> Result<Value, Problem> {
        let order = state.orders.get(&id).ok_or_else(|| Problem::not_found("order"))?;
        let status = state.order_status(order).as_str();
        let mut value = json!({
            "status": status,
            "expires": order.expires,
            "identifiers": order.identifiers.iter().map(Name::to_identifier).collect::<Vec<_>>(),
            "authorizations": order.authorizations.iter().map(|a| self.url(Endpoint::Authorization, Some(*a))).collect::<Vec<_>>(),
            "finalize": self.url(Endpoint::Finalize, Some(id)),
        });
        if let Some(certificate) = order.certificate.filter(|_| order.signing_polls_left.is_none()) {
            value["certificate"] = Value::String(self.url(Endpoint::Certificate, Some(certificate)));
        }
        if let Some(profile) = &order.profile {
            value["profile"] = Value::String(profile.clone());
        }
        for (field, given) in [("notBefore", &order.not_before), ("notAfter", &order.not_after)] {
            if let Some(given) = given {
                value[field] = given.clone();
            }
        }
        Ok(value)
    }

    fn challenge_json(&self, id: u64, authorization: &Authorization) -> Value {
        let mut challenge = json!({
            "type": "http-01",
            "url": self.url(Endpoint::Challenge, Some(id)),
            "token": authorization.token,
            "status": authorization.challenge_status.as_str(),
        });
        if let Some(error) = &authorization.challenge_error {
            challenge["error"] = error.clone();
        }
        if let Some(validated) = &authorization.validated {
            challenge["validated"] = Value::String(validated.clone());
        }
        challenge
    }

    fn authorization_json(&self, state: &State, id: u64) -> Result<Value, Problem> {
        let authorization = state.authorizations.get(&id).ok_or_else(|| Problem::not_found("authorization"))?;
        Ok(json!({
            "status": authorization.status.as_str(),
            "expires": authorization.expires,
            "identifier": authorization.name.to_identifier(),
            "challenges": [self.challenge_json(id, authorization)],
        }))
    }

    fn challenge_post(&self, state: &mut State, account: u64, id: u64, jws: &Jws) -> Result<Step, Problem> {
        if jws.payload.is_none() {
            state.poll_authorization(id);
        }
        let authorization = state.authorizations.get(&id).ok_or_else(|| Problem::not_found("challenge"))?;
        if jws.payload.is_none() || authorization.challenge_status != Status::Pending {
            return Ok(Step::Reply(Reply::json(200, &self.challenge_json(id, authorization))));
        }
        let thumbprint = state.accounts.get(&account).map(|a| a.thumbprint.clone()).unwrap_or_default();
        Ok(Step::Validate(PendingValidation {
            authorization: id,
            challenge: FakeChallenge {
                identifier: authorization.name.text(),
                key_authorization: format!("{}.{thumbprint}", authorization.token),
                token: authorization.token.clone(),
            },
            policy: state.settings.validation.clone(),
        }))
    }

    fn finalize(&self, state: &mut State, account: u64, id: u64, jws: &Jws) -> Result<Reply, Problem> {
        self.owned_order(state, account, id)?;
        let order = &state.orders[&id];
        let status = state.order_status(order);
        if status != Status::Ready {
            let status = status.as_str();
            return Err(Problem::new(403, "orderNotReady", format!("the order is {status}, not ready")));
        }
        let csr = jws
            .payload
            .as_ref()
            .and_then(|p| p.get("csr"))
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("finalize needs a csr"))?;
        let csr = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(csr)
                .map_err(|_| Problem::new(400, "badCSR", "the csr is not base64url"))?
        };
        let names: BTreeSet<Name> = order.identifiers.iter().cloned().collect();
        // The lifetime the order asked for (checked when it was created), else the default.
        let not_after = order.not_after.as_ref().map(requested_not_after).transpose()?;
        let not_after =
            not_after.unwrap_or_else(|| time::OffsetDateTime::now_utc() + state.settings.certificate_validity);
        let signed = self.ca.sign(&csr, &names, not_after).map_err(|e| Problem::new(400, "badCSR", e))?;
        let certificate = state.id();
        state.certificates.insert(certificate, Certificate { account, chain_pem: signed.chain_pem });
        state.observed.certificates.push(signed.serial);
        let signing_polls = state.settings.signing_polls;
        if let Some(order) = state.orders.get_mut(&id) {
            order.certificate = Some(certificate);
            order.signing_polls_left = (signing_polls > 0).then_some(signing_polls);
        }
        Ok(Reply::json(200, &self.order_json(state, id)?))
    }
}

/// The outcome of processing a request under the lock.
enum Step {
    Reply(Reply),
    Validate(PendingValidation),
}

/// An order's `notAfter`: an RFC 3339 timestamp in the future.
fn requested_not_after(value: &Value) -> Result<time::OffsetDateTime, Problem> {
    let text = value.as_str().ok_or_else(|| Problem::malformed("notAfter is not a string"))?;
    let at: jiff::Timestamp =
        text.parse().map_err(|e| Problem::malformed(format!("notAfter {text:?} is not an RFC 3339 time: {e}")))?;
    let at = time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|_| Problem::malformed(format!("notAfter {text:?} is out of range")))?;
    if at <= time::OffsetDateTime::now_utc() {
        return Err(Problem::malformed(format!("notAfter {text:?} is in the past")));
    }
    Ok(at)
}
