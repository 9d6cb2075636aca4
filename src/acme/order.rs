//! The ACME order as a resumable state machine.
//!
//! [`OrderSession::advance`] moves an order as far as it can without waiting: it presents challenges
//! through a [`ChallengeSolver`], tells the CA they are ready, finalizes with the caller's CSR and
//! downloads the chain. Where it must wait (a solver not up yet, the CA validating or signing), it returns
//! [`Advance::Wait`]. Its position is [`OrderProgress`], a plain serialisable value: a new process resumes
//! an order from it with [`OrderSession::resume`] instead of creating a new one.

use super::account::AcmeAccount;
use super::challenge::Http01Challenge;
use super::error::AcmeError;
use super::observe::{AcmeAction, labelled};
use super::resubmission::{SubmittedChallenge, resubmit_delay, submitted_challenge};
use super::selfcheck::SelfCheck;
use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

/// Whether a solver is serving a challenge yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presentation {
    /// Serving: the CA may validate now.
    Ready,
    /// Being set up (for example a solver Pod starting); the message says what is awaited.
    NotReady(String),
}

/// A failure of a solver; always worth retrying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SolverError(pub String);

/// Serves HTTP-01 challenges. Both methods must be idempotent: they are called again after restarts.
pub trait ChallengeSolver: Sync {
    /// Makes the challenge answerable (or checks on it) and says whether it is served yet.
    fn present(&self, challenge: &Http01Challenge) -> impl Future<Output = Result<Presentation, SolverError>> + Send;
    /// Stops serving the challenge and removes what `present` made.
    fn cleanup(&self, challenge: &Http01Challenge) -> impl Future<Output = Result<(), SolverError>> + Send;
}

/// Where an order stands, as the CA last said (`pending`, `ready`, `processing`, `valid`, `invalid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderState {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl OrderState {
    fn from_acme(status: OrderStatus) -> OrderState {
        match status {
            OrderStatus::Pending => OrderState::Pending,
            OrderStatus::Ready => OrderState::Ready,
            OrderStatus::Processing => OrderState::Processing,
            OrderStatus::Valid => OrderState::Valid,
            OrderStatus::Invalid => OrderState::Invalid,
        }
    }

    /// The RFC 8555 name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Ready => "ready",
            OrderState::Processing => "processing",
            OrderState::Valid => "valid",
            OrderState::Invalid => "invalid",
        }
    }
}

/// Where kacme stands with one authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthorizationStep {
    /// The CA waits for the challenge; nothing presented yet.
    Pending,
    /// The solver was asked to serve the challenge; not yet announced to the CA.
    Presented,
    /// The CA was told the challenge is ready and is validating.
    Submitted,
    /// The CA validated the identifier.
    Valid,
    /// Validation failed (final).
    Invalid,
    /// Expired, revoked or deactivated at the CA (final).
    Gone,
}

/// The position of one authorization of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationProgress {
    pub identifier: String,
    pub url: String,
    pub challenge_url: Option<String>,
    pub token: Option<String>,
    pub step: AuthorizationStep,
    /// When the challenge was first presented (seconds since the epoch), for the self-check deadline.
    pub presented_at: Option<u64>,
    /// The last message: what the solver awaits, or the CA's reason for an invalid challenge.
    pub message: Option<String>,
}

impl AuthorizationProgress {
    /// An authorization nothing has been done for yet.
    fn pending(identifier: String, url: String) -> AuthorizationProgress {
        AuthorizationProgress {
            identifier,
            url,
            challenge_url: None,
            token: None,
            step: AuthorizationStep::Pending,
            presented_at: None,
            message: None,
        }
    }

    /// Whether solver objects may exist for this authorization.
    pub fn solver_may_exist(&self) -> bool {
        matches!(self.step, AuthorizationStep::Presented | AuthorizationStep::Submitted)
    }
}

/// The position of an order: everything needed to resume it in another process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderProgress {
    pub url: String,
    pub state: OrderState,
    /// The identifiers of the order, DNS names then IP addresses, as the CSR must carry them.
    pub identifiers: Vec<String>,
    pub authorizations: Vec<AuthorizationProgress>,
}

/// What a new order asks for besides its identifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderOptions {
    /// When the certificate should end (RFC 8555 `notAfter`; no `notBefore`, so that the CA may backdate it).
    pub not_after: Option<SystemTime>,
    /// The ACME profile to ask for (draft-ietf-acme-profiles `profile`).
    pub profile: Option<String>,
    /// The ARI certificate identifier (`base64url(AKI).base64url(serial)`) of the certificate this order
    /// replaces (RFC 9773 `replaces`).
    pub replaces: Option<String>,
}

/// Options of [`OrderSession::advance`].
#[derive(Clone, Debug)]
pub struct AdvanceOptions {
    /// Check that each challenge answers over HTTP before telling the CA (optional).
    pub self_check: Option<SelfCheck>,
    /// How long `advance` may wait in place for the CA (validation, signing) before returning
    /// [`Advance::Wait`]; zero returns at once.
    pub max_wait: Duration,
}

impl Default for AdvanceOptions {
    fn default() -> Self {
        AdvanceOptions { self_check: None, max_wait: Duration::from_secs(5) }
    }
}

/// What happened in one [`OrderSession::advance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    /// Call `advance` again after `after`; `reason` says what is awaited.
    Wait { after: Duration, reason: String },
    /// The certificate chain (PEM, leaf first).
    Issued(String),
}

/// An order in progress, with its instant-acme handle.
pub struct OrderSession {
    order: Order,
    progress: OrderProgress,
    fresh: bool,
    /// Challenges the CA could not validate yet and left `pending`, by authorization URL: when to ask
    /// again (kept in memory only: after a restart kacme asks again at once).
    resubmissions: HashMap<String, Resubmission>,
}

/// A challenge the CA could not validate yet, to be POSTed again on the same order.
#[derive(Clone, Copy, Debug)]
struct Resubmission {
    /// Validations that failed without invalidating the challenge.
    failed_attempts: u32,
    /// When to ask the CA again.
    ask_again_at: Instant,
}

impl std::fmt::Debug for OrderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderSession").field("progress", &self.progress).finish_non_exhaustive()
    }
}

/// The identifiers of an order: DNS names then IP addresses, in the order given.
pub fn order_identifiers(dns_names: &[String], ip_addresses: &[IpAddr]) -> Vec<Identifier> {
    dns_names
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .chain(ip_addresses.iter().map(|ip| Identifier::Ip(*ip)))
        .collect()
}

fn identifier_text(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Dns(name) => name.clone(),
        Identifier::Ip(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl OrderSession {
    /// Places a new order for exactly these identifiers and reads its authorizations. `options` may ask
    /// for a lifetime, a profile, and name the certificate the order replaces.
    pub async fn create(
        account: &AcmeAccount,
        dns_names: &[String],
        ip_addresses: &[IpAddr],
        options: &OrderOptions,
    ) -> Result<OrderSession, AcmeError> {
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(AcmeError::fatal(AcmeAction::Order, "an order needs at least one DNS name or IP address"));
        }
        if let Some(wildcard) = dns_names.iter().find(|n| n.starts_with("*.")) {
            return Err(AcmeError::fatal(
                AcmeAction::Order,
                format!("{wildcard} is a wildcard name: only DNS-01 can validate it, and kacme solves HTTP-01"),
            ));
        }
        let identifiers = order_identifiers(dns_names, ip_addresses);
        let order = match options.not_after {
            None => {
                let mut new_order = NewOrder::new(&identifiers);
                if let Some(profile) = &options.profile {
                    new_order = new_order.profile(profile);
                }
                if let Some(replaces) =
                    options.replaces.as_deref().and_then(super::renewal_info::certificate_identifier)
                {
                    new_order = new_order.replaces(replaces);
                }
                labelled(AcmeAction::Order, account.inner.new_order(&new_order))
                    .await
                    .map_err(|e| AcmeError::classify(AcmeAction::Order, e))?
            }
            Some(not_after) => {
                let url = account.lifetime_orders.new_order(account.uri(), &identifiers, not_after, options).await?;
                labelled(AcmeAction::Order, account.inner.order(url))
                    .await
                    .map_err(|e| AcmeError::classify(AcmeAction::Order, e))?
            }
        };
        let mut session = OrderSession {
            progress: OrderProgress {
                url: order.url().to_string(),
                state: OrderState::Pending,
                identifiers: identifiers.iter().map(identifier_text).collect(),
                authorizations: Vec::new(),
            },
            order,
            fresh: true,
            resubmissions: HashMap::new(),
        };
        session.progress.state = OrderState::from_acme(session.order.state().status);
        session.progress.authorizations = session
            .order
            .state()
            .authorizations
            .iter()
            .map(|a| AuthorizationProgress::pending(String::new(), a.url.clone()))
            .collect();
        if session.progress.state != OrderState::Pending {
            // The CA reused valid authorizations of the account: nothing to solve.
            for entry in &mut session.progress.authorizations {
                entry.step = AuthorizationStep::Valid;
            }
        }
        Ok(session)
    }

    /// Picks up an order from its saved position (for example after a restart), without a new order.
    pub async fn resume(account: &AcmeAccount, progress: OrderProgress) -> Result<OrderSession, AcmeError> {
        let order = labelled(AcmeAction::Order, account.inner.order(progress.url.clone()))
            .await
            .map_err(|e| AcmeError::classify(AcmeAction::Order, e))?;
        let mut session = OrderSession { order, progress, fresh: true, resubmissions: HashMap::new() };
        session.progress.state = OrderState::from_acme(session.order.state().status);
        Ok(session)
    }

    /// The order's current position: persist it after every `advance`.
    pub fn progress(&self) -> &OrderProgress {
        &self.progress
    }

    /// The challenges that may still have solver objects, for cleanup after a failure or a deletion.
    pub fn challenges_to_clean_up(&self, account: &AcmeAccount) -> Vec<Http01Challenge> {
        challenges_with_solvers(&self.progress, account)
    }

    /// Moves the order as far as it goes without waiting longer than `options.max_wait`.
    ///
    /// `csr_der` is the CSR to finalize with: its names must be exactly the order's identifiers, and the
    /// caller must have stored its private key before calling (a crash must never lose the key of an
    /// issued certificate). On a final error every solver object of the order has been cleaned up.
    pub async fn advance<S: ChallengeSolver>(
        &mut self,
        account: &AcmeAccount,
        solver: &S,
        csr_der: &[u8],
        options: &AdvanceOptions,
    ) -> Result<Advance, AcmeError> {
        let result = self.advance_inner(account, solver, csr_der, options).await;
        if let Err(error) = &result
            && !error.is_retryable()
        {
            self.clean_up_all(account, solver).await;
        }
        result
    }

    async fn advance_inner<S: ChallengeSolver>(
        &mut self,
        account: &AcmeAccount,
        solver: &S,
        csr_der: &[u8],
        options: &AdvanceOptions,
    ) -> Result<Advance, AcmeError> {
        let fresh = std::mem::take(&mut self.fresh);
        // While kacme's own solvers are not serving yet, nothing changes at the CA: look at the solvers
        // only, and ask the CA again (order, authorizations) once they serve.
        if !fresh && let Some(wait) = Box::pin(self.wait_for_own_solvers(account, solver, options)).await {
            return Ok(wait);
        }
        if !fresh {
            self.refresh().await?;
        }
        if self.progress.state == OrderState::Pending {
            if let Some(wait) = self.work_on_authorizations(account, solver, options).await? {
                return Ok(wait);
            }
            // Every authorization is submitted or valid: give the CA a moment to validate.
            let policy = poll_policy(options.max_wait);
            let polled = labelled(AcmeAction::Order, self.order.poll_ready(&policy)).await;
            match polled {
                Ok(status) => self.progress.state = OrderState::from_acme(status),
                Err(instant_acme::Error::Timeout(_)) => {
                    return Ok(Advance::Wait {
                        after: Duration::from_millis(500),
                        reason: "the CA is validating".into(),
                    });
                }
                Err(error) => {
                    // An order error usually means a failed authorization: report the CA's reason.
                    let error = AcmeError::classify(AcmeAction::Order, error);
                    if !error.is_retryable() {
                        self.progress.state = OrderState::Invalid;
                        self.fresh = false;
                        return Err(self.invalid_order_error(account, solver, Some(error)).await);
                    }
                    return Err(error);
                }
            }
        }
        match self.progress.state {
            OrderState::Pending => unreachable_wait("the order is still pending"),
            OrderState::Invalid => Err(self.invalid_order_error(account, solver, None).await),
            OrderState::Ready => {
                self.clean_up_all(account, solver).await;
                labelled(AcmeAction::Finalize, self.order.finalize_csr(csr_der))
                    .await
                    .map_err(|e| AcmeError::classify(AcmeAction::Finalize, e))?;
                self.progress.state = OrderState::from_acme(self.order.state().status);
                self.download(options).await
            }
            OrderState::Processing | OrderState::Valid => {
                self.clean_up_all(account, solver).await;
                self.download(options).await
            }
        }
    }

    async fn refresh(&mut self) -> Result<(), AcmeError> {
        let state = labelled(AcmeAction::Order, self.order.refresh())
            .await
            .map_err(|e| AcmeError::classify(AcmeAction::Order, e))?;
        self.progress.state = OrderState::from_acme(state.status);
        Ok(())
    }

    /// A pass that only waits for kacme's own solvers, without a request to the CA: when every
    /// authorization of a pending order is valid or presented (its challenge known from an earlier pass of
    /// this session) and a presented one's solver does not serve yet (or its self-check fails, within the
    /// self-check's deadline), `Some(wait)`. `None` when the CA must be asked: nothing awaited of a solver,
    /// a solver serves, or a self-check is overdue (the full pass reports it).
    async fn wait_for_own_solvers<S: ChallengeSolver>(
        &mut self,
        account: &AcmeAccount,
        solver: &S,
        options: &AdvanceOptions,
    ) -> Option<Advance> {
        let authorizations = &self.progress.authorizations;
        let only_solvers_awaited = self.progress.state == OrderState::Pending
            && authorizations.iter().any(|a| a.step == AuthorizationStep::Presented)
            && authorizations.iter().all(|a| match a.step {
                AuthorizationStep::Valid => true,
                AuthorizationStep::Presented => a.token.is_some() && a.challenge_url.is_some(),
                _ => false,
            });
        if !only_solvers_awaited {
            return None;
        }
        let mut waits = Vec::new();
        for entry in &mut self.progress.authorizations {
            if entry.step != AuthorizationStep::Presented {
                continue;
            }
            let identifier = entry.identifier.clone();
            let http01 = challenge_of(entry, account);
            let problem = match solver.present(&http01).await {
                Ok(Presentation::Ready) => match &options.self_check {
                    None => None,
                    Some(check) => match check.check(&http01).await {
                        Ok(()) => None,
                        Err(problem) => {
                            let since =
                                Duration::from_secs(now_seconds().saturating_sub(entry.presented_at.unwrap_or(0)));
                            if since >= check.deadline {
                                return None;
                            }
                            Some(format!("self-check: {problem}"))
                        }
                    },
                },
                Ok(Presentation::NotReady(reason)) => Some(reason),
                Err(error) => Some(error.0),
            };
            if let Some(problem) = problem {
                waits.push(format!("{identifier}: {problem}"));
                entry.message = Some(problem);
            }
        }
        if waits.is_empty() {
            return None;
        }
        Some(Advance::Wait { after: Duration::from_secs(1), reason: waits.join("; ") })
    }

    /// Presents and submits every pending authorization; `Some(wait)` when one is not ready yet.
    async fn work_on_authorizations<S: ChallengeSolver>(
        &mut self,
        account: &AcmeAccount,
        solver: &S,
        options: &AdvanceOptions,
    ) -> Result<Option<Advance>, AcmeError> {
        let mut waits = Vec::new();
        // Whether a solver is not serving yet, and the soonest time to ask the CA again about a challenge.
        let mut solvers_awaited = false;
        let mut ask_again_in: Option<Duration> = None;
        // Challenges whose submission the CA answered with a problem, to look at once more below.
        let mut refused = Vec::new();
        let mut authorizations = self.order.authorizations();
        while let Some(handle) = labelled(AcmeAction::Authorization, authorizations.next()).await {
            let mut handle = handle.map_err(|e| AcmeError::classify(AcmeAction::Authorization, e))?;
            let url = handle.url().to_string();
            let identifier = handle.identifier().to_string();
            // The identifier becomes the host of a solver route: only what kacme ordered.
            if !handle.wildcard {
                super::challenge::check_identifier(&identifier, &self.progress.identifiers)
                    .map_err(|problem| AcmeError::fatal(AcmeAction::Authorization, problem))?;
            }
            let index = match self.progress.authorizations.iter().position(|a| a.url == url) {
                Some(index) => index,
                None => {
                    self.progress.authorizations.push(AuthorizationProgress::pending(identifier.clone(), url.clone()));
                    self.progress.authorizations.len() - 1
                }
            };
            let entry = &mut self.progress.authorizations[index];
            entry.identifier = identifier.clone();
            match handle.status {
                AuthorizationStatus::Valid => {
                    if entry.solver_may_exist() {
                        cleanup_quietly(solver, &challenge_of(entry, account)).await;
                    }
                    entry.step = AuthorizationStep::Valid;
                    entry.message = None;
                    continue;
                }
                AuthorizationStatus::Invalid => {
                    if entry.solver_may_exist() {
                        cleanup_quietly(solver, &challenge_of(entry, account)).await;
                    }
                    let detail = handle
                        .challenges
                        .iter()
                        .find_map(|c| c.error.as_ref())
                        .map(|p| super::error::ProblemDetail::from_problem(p).to_string());
                    entry.step = AuthorizationStep::Invalid;
                    entry.message = Some(detail.unwrap_or_else(|| "the CA marked the authorization invalid".into()));
                    continue;
                }
                AuthorizationStatus::Pending => {}
                other => {
                    entry.step = AuthorizationStep::Gone;
                    entry.message = Some(format!("the authorization is {other:?} at the CA"));
                    continue;
                }
            }
            if handle.wildcard {
                return Err(AcmeError::fatal(
                    AcmeAction::Authorization,
                    format!("*.{identifier} is a wildcard name: only DNS-01 can validate it, and kacme solves HTTP-01"),
                ));
            }
            if entry.step == AuthorizationStep::Submitted {
                let submitted = handle.challenges.iter().find(|c| c.r#type == ChallengeType::Http01);
                let Some(submitted) = submitted else { continue };
                let ask_again_at = self.resubmissions.get(&url).map(|r| r.ask_again_at);
                match submitted_challenge(submitted.status, ask_again_at, Instant::now()) {
                    SubmittedChallenge::CaIsValidating => {
                        // The CA may retry by itself and say why its last attempt failed.
                        if let Some(problem) = &submitted.error {
                            let detail = super::error::ProblemDetail::from_problem(problem);
                            entry.message = Some(format!("the CA is validating; its last attempt failed: {detail}"));
                        }
                        continue;
                    }
                    SubmittedChallenge::AskAgainAfter(delay) => {
                        ask_again_in = Some(ask_again_in.map_or(delay, |d: Duration| d.min(delay)));
                        let message = entry.message.clone().unwrap_or_else(|| "asking the CA again".into());
                        waits.push(format!("{identifier}: {message}"));
                        continue;
                    }
                    SubmittedChallenge::AskAgain => {}
                }
            }
            let offered: Vec<String> = handle.challenges.iter().map(|c| format!("{:?}", c.r#type)).collect();
            let Some(mut challenge) = handle.challenge(ChallengeType::Http01) else {
                return Err(AcmeError::fatal(
                    AcmeAction::Authorization,
                    format!("the CA offers no HTTP-01 challenge for {identifier} (it offers {})", offered.join(", ")),
                ));
            };
            // The token becomes the path of a solver route and an argument of the solver Pod.
            super::challenge::check_token(&challenge.token)
                .map_err(|problem| AcmeError::fatal(AcmeAction::Authorization, format!("{identifier}: {problem}")))?;
            entry.challenge_url = Some(challenge.url.clone());
            entry.token = Some(challenge.token.clone());
            let http01 = challenge_of(entry, account);
            let presentation = solver.present(&http01).await;
            if entry.presented_at.is_none() {
                entry.presented_at = Some(now_seconds());
            }
            entry.step = AuthorizationStep::Presented;
            match presentation {
                Ok(Presentation::Ready) => {}
                Ok(Presentation::NotReady(reason)) => {
                    entry.message = Some(reason.clone());
                    waits.push(format!("{identifier}: {reason}"));
                    solvers_awaited = true;
                    continue;
                }
                Err(error) => {
                    entry.message = Some(error.0.clone());
                    waits.push(format!("{identifier}: {error}"));
                    solvers_awaited = true;
                    continue;
                }
            }
            if let Some(check) = &options.self_check
                && let Err(problem) = check.check(&http01).await
            {
                let since = Duration::from_secs(now_seconds().saturating_sub(entry.presented_at.unwrap_or(0)));
                if since >= check.deadline {
                    return Err(AcmeError::fatal(
                        AcmeAction::Challenge,
                        format!("self-check of {identifier} failed for {since:?}: {problem}"),
                    ));
                }
                entry.message = Some(format!("self-check: {problem}"));
                waits.push(format!("{identifier}: self-check: {problem}"));
                solvers_awaited = true;
                continue;
            }
            let submitted = labelled(AcmeAction::Challenge, challenge.set_ready()).await;
            let Err(error) = submitted else {
                entry.step = AuthorizationStep::Submitted;
                entry.message = None;
                continue;
            };
            refused.push((index, http01, error));
        }
        // instant-acme reports a challenge answered with an `error` as a failure whatever its status: read the
        // authorization again to learn whether the CA gave up (invalid) or may be asked again (a challenge left
        // pending with an error, as step-ca leaves it while the route is not serving yet).
        for (index, http01, error) in refused {
            let url = http01.authorization_url.clone();
            let identifier = http01.identifier.clone();
            let still_pending = match error {
                instant_acme::Error::Api(_) => self.challenge_left_pending(&url).await,
                _ => None,
            };
            let entry = &mut self.progress.authorizations[index];
            if let Some((status, detail)) = still_pending {
                entry.step = AuthorizationStep::Submitted;
                if status == instant_acme::ChallengeStatus::Processing {
                    entry.message = Some(format!("the CA is validating; its last attempt failed: {detail}"));
                    continue;
                }
                let failed_attempts = self.resubmissions.get(&url).map_or(0, |r| r.failed_attempts) + 1;
                let delay = resubmit_delay(failed_attempts);
                self.resubmissions.insert(url, Resubmission { failed_attempts, ask_again_at: Instant::now() + delay });
                let message = format!(
                    "the CA could not validate it yet (attempt {failed_attempts}), asking again in {}s: {detail}",
                    delay.as_secs()
                );
                tracing::info!(%identifier, failed_attempts, %detail, "the CA left the challenge pending; asking again");
                waits.push(format!("{identifier}: {message}"));
                entry.message = Some(message);
                ask_again_in = Some(ask_again_in.map_or(delay, |d: Duration| d.min(delay)));
                continue;
            }
            let mut error = AcmeError::classify(AcmeAction::Challenge, error);
            if !error.is_retryable() {
                // The CA validated within the request and refused: the authorization is invalid.
                // Say which name failed, as for an authorization found invalid later.
                cleanup_quietly(solver, &http01).await;
                let detail = error.problem.as_ref().map(ToString::to_string).unwrap_or(error.message.clone());
                entry.step = AuthorizationStep::Invalid;
                entry.message = Some(detail.clone());
                error.message = format!("{identifier}: {detail}");
            }
            return Err(error);
        }
        if waits.is_empty() {
            return Ok(None);
        }
        // A solver being set up is looked at again after a second; a challenge to ask again about when due.
        let after = match (solvers_awaited, ask_again_in) {
            (true, Some(delay)) => delay.min(Duration::from_secs(1)),
            (true, None) => Duration::from_secs(1),
            (false, Some(delay)) => delay,
            (false, None) => Duration::from_secs(1),
        };
        Ok(Some(Advance::Wait { after, reason: waits.join("; ") }))
    }

    /// The status of the HTTP-01 challenge of the authorization at `url` and the CA's problem, when the CA
    /// left it pending or processing with an error (it may be asked again); `None` otherwise.
    async fn challenge_left_pending(
        &mut self,
        url: &str,
    ) -> Option<(instant_acme::ChallengeStatus, super::error::ProblemDetail)> {
        let mut authorizations = self.order.authorizations();
        while let Some(handle) = labelled(AcmeAction::Authorization, authorizations.next()).await {
            let mut handle = handle.ok()?;
            if handle.url() != url {
                continue;
            }
            // The order keeps the state it read before the challenge was submitted: read it afresh.
            let state = labelled(AcmeAction::Authorization, handle.refresh()).await.ok()?;
            let challenge = state.challenges.iter().find(|c| c.r#type == ChallengeType::Http01)?;
            let retryable = state.status == AuthorizationStatus::Pending
                && matches!(
                    challenge.status,
                    instant_acme::ChallengeStatus::Pending | instant_acme::ChallengeStatus::Processing
                );
            let problem = challenge.error.as_ref().filter(|_| retryable)?;
            return Some((challenge.status, super::error::ProblemDetail::from_problem(problem)));
        }
        None
    }

    /// How long until kacme asks the CA again about a challenge it could not validate yet, if it waits to.
    pub fn next_resubmission(&self) -> Option<Duration> {
        let now = Instant::now();
        let waiting = self.progress.authorizations.iter().filter(|a| a.step == AuthorizationStep::Submitted);
        waiting
            .filter_map(|a| self.resubmissions.get(&a.url))
            .map(|r| r.ask_again_at.saturating_duration_since(now))
            .min()
    }

    async fn download(&mut self, options: &AdvanceOptions) -> Result<Advance, AcmeError> {
        // The chain of an order known to be valid is fetched at once: polling waits before its first
        // request, so with a `max_wait` shorter than that wait it would never fetch it.
        let fetched = if self.order.state().status == OrderStatus::Valid {
            labelled(AcmeAction::Certificate, self.order.certificate())
                .await
                .and_then(|chain| chain.ok_or(instant_acme::Error::Timeout(None)))
        } else {
            let policy = poll_policy(options.max_wait);
            labelled(AcmeAction::Certificate, self.order.poll_certificate(&policy)).await
        };
        match fetched {
            Ok(chain) => {
                self.progress.state = OrderState::Valid;
                Ok(Advance::Issued(chain))
            }
            Err(instant_acme::Error::Timeout(until)) => {
                let after = until
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or(Duration::from_millis(500));
                Ok(Advance::Wait { after, reason: "the CA is signing the certificate".into() })
            }
            Err(error) => Err(AcmeError::classify(AcmeAction::Certificate, error)),
        }
    }

    /// The final error of an invalid order, with the CA's reasons for every failed authorization.
    async fn invalid_order_error<S: ChallengeSolver>(
        &mut self,
        account: &AcmeAccount,
        solver: &S,
        order_error: Option<AcmeError>,
    ) -> AcmeError {
        self.clean_up_all(account, solver).await;
        // Read the authorizations once more to learn why they failed.
        if self.progress.authorizations.iter().all(|a| a.step != AuthorizationStep::Invalid) {
            let mut authorizations = self.order.authorizations();
            while let Some(Ok(handle)) = labelled(AcmeAction::Authorization, authorizations.next()).await {
                if handle.status != AuthorizationStatus::Invalid {
                    continue;
                }
                let url = handle.url().to_string();
                let detail = handle
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref())
                    .map(|p| super::error::ProblemDetail::from_problem(p).to_string());
                if let Some(entry) = self.progress.authorizations.iter_mut().find(|a| a.url == url) {
                    entry.step = AuthorizationStep::Invalid;
                    entry.message = detail;
                }
            }
        }
        let reasons: Vec<String> = self
            .progress
            .authorizations
            .iter()
            .filter(|a| a.step == AuthorizationStep::Invalid)
            .map(|a| format!("{}: {}", a.identifier, a.message.as_deref().unwrap_or("invalid")))
            .collect();
        let mut error = order_error.unwrap_or_else(|| AcmeError::fatal(AcmeAction::Order, "the order is invalid"));
        error.retry = super::error::Retry::Never;
        if !reasons.is_empty() {
            error.message = format!("the order is invalid: {}", reasons.join("; "));
        }
        error
    }

    async fn clean_up_all<S: ChallengeSolver>(&mut self, account: &AcmeAccount, solver: &S) {
        let validated = matches!(self.progress.state, OrderState::Ready | OrderState::Processing | OrderState::Valid);
        for entry in self.progress.authorizations.iter_mut().filter(|a| a.solver_may_exist()) {
            cleanup_quietly(solver, &challenge_of(entry, account)).await;
            entry.step = match entry.step {
                AuthorizationStep::Submitted if validated => AuthorizationStep::Valid,
                AuthorizationStep::Submitted => AuthorizationStep::Gone,
                _ => AuthorizationStep::Pending,
            };
        }
    }
}

fn unreachable_wait(reason: &str) -> Result<Advance, AcmeError> {
    Ok(Advance::Wait { after: Duration::from_millis(500), reason: reason.to_string() })
}

fn poll_policy(max_wait: Duration) -> RetryPolicy {
    RetryPolicy::new().initial_delay(Duration::from_millis(100)).backoff(1.5).timeout(max_wait)
}

fn challenge_of(entry: &AuthorizationProgress, account: &AcmeAccount) -> Http01Challenge {
    let token = entry.token.clone().unwrap_or_default();
    Http01Challenge {
        identifier: entry.identifier.clone(),
        key_authorization: account.key_authorization(&token),
        token,
        authorization_url: entry.url.clone(),
    }
}

/// The challenges of an order position whose solver objects may still exist.
pub fn challenges_with_solvers(progress: &OrderProgress, account: &AcmeAccount) -> Vec<Http01Challenge> {
    progress
        .authorizations
        .iter()
        .filter(|a| a.solver_may_exist() && a.token.is_some())
        .map(|a| challenge_of(a, account))
        .collect()
}

async fn cleanup_quietly<S: ChallengeSolver>(solver: &S, challenge: &Http01Challenge) {
    if let Err(error) = solver.cleanup(challenge).await {
        tracing::warn!(identifier = %challenge.identifier, %error, "cleaning up a solver failed; it will be retried");
    }
}
