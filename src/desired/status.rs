//! What a Certificate's status says after each step of the issuance path: pure transitions of
//! [`CertificateStatus`], one per outcome, so that the reconciler only picks the outcome.
//!
//! The rules, in words:
//! - `Ready` reflects the Secret. While a still-valid certificate is renewed (Expiring, ManuallyTriggered)
//!   Ready stays True; after a failed attempt Ready keeps the failure and the CA's words until an issuance
//!   succeeds.
//! - `Issuing` is True while an order is in flight, False with the reason when an attempt failed or was
//!   abandoned, and absent when nothing is to be done.
//! - A failure counts an attempt and stamps `lastFailureTime` (the backoff reads both); a success clears them.

use super::conditions::{ConditionStatus, condition_is, find_condition, remove_condition, set_condition};
use crate::api::{CertificateReason, CertificateStatus, ConditionType, IssuanceReason, OrderStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The message of `Ready=True`.
pub const UP_TO_DATE_MESSAGE: &str = "The certificate is up to date and has not expired";

/// The reasons [`StatusTransition::failed_because`] shows: Ready keeps them until an issuance succeeds.
const FAILURE_REASONS: [CertificateReason; 5] = [
    CertificateReason::Failed,
    CertificateReason::SolverNotReady,
    CertificateReason::DurationNotAllowed,
    CertificateReason::ProfileNotOffered,
    CertificateReason::KeystorePasswordUnavailable,
];

/// Why an issuer cannot be used yet: a condition reason and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerWait {
    /// IssuerNotFound, IssuerNotReady or IssuerUnavailable.
    pub reason: CertificateReason,
    /// What is wrong, in words.
    pub message: String,
}

/// The validity of an issued certificate, as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The certificate's notBefore.
    pub not_before: Timestamp,
    /// The certificate's notAfter.
    pub not_after: Timestamp,
    /// When kacme renews it.
    pub renewal_time: Timestamp,
}

/// Changes one Certificate's status for one pass: every method is one outcome of a step.
pub struct StatusTransition<'a> {
    status: &'a mut CertificateStatus,
    generation: Option<i64>,
    now: Timestamp,
}

impl<'a> StatusTransition<'a> {
    /// Transitions of `status`, for the Certificate's `generation`, at `now`.
    pub fn new(status: &'a mut CertificateStatus, generation: Option<i64>, now: Timestamp) -> StatusTransition<'a> {
        StatusTransition { status, generation, now }
    }

    fn set(&mut self, type_: ConditionType, holds: bool, reason: &str, message: &str) {
        set_condition(&mut self.status.conditions, type_, holds, reason, message, self.generation, self.now);
    }

    fn is(&self, type_: ConditionType, status: ConditionStatus, reason: &str) -> bool {
        condition_is(&self.status.conditions, type_, status, reason)
    }

    fn ready(&self) -> bool {
        self.is(ConditionType::Ready, ConditionStatus::True, CertificateReason::Ready.as_str())
    }

    /// Sets `Ready=False` unless it is True: a certificate that is still valid stays Ready.
    fn not_ready_unless_ready(&mut self, reason: &str, message: &str) {
        if !self.ready() {
            self.set(ConditionType::Ready, false, reason, message);
        }
    }

    /// The reason of the `Issuing=True` condition, or `Issuing` when there is none.
    pub fn issuing_reason(&self) -> String {
        find_condition(&self.status.conditions, ConditionType::Issuing)
            .filter(|c| c.status == ConditionStatus::True.as_str())
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| CertificateReason::Issuing.as_str().into())
    }

    /// The Secret belongs to something else. Returns whether this is news (then an Event is due).
    pub fn secret_not_owned(&mut self, message: &str) -> bool {
        let reason = CertificateReason::SecretNotOwned.as_str();
        let news = !self.is(ConditionType::Ready, ConditionStatus::False, reason);
        self.set(ConditionType::Ready, false, reason, message);
        remove_condition(&mut self.status.conditions, ConditionType::Issuing);
        news
    }

    /// A foreign Secret took the place of the Certificate's Secret: Ready is no more.
    pub fn secret_taken_over(&mut self, message: &str) {
        self.set(ConditionType::Ready, false, CertificateReason::SecretNotOwned.as_str(), message);
    }

    /// The Secret holds a certificate that needs nothing.
    pub fn up_to_date(&mut self, validity: Validity) {
        self.set(ConditionType::Ready, true, CertificateReason::Ready.as_str(), UP_TO_DATE_MESSAGE);
        remove_condition(&mut self.status.conditions, ConditionType::Issuing);
        self.show_validity(validity);
    }

    fn show_validity(&mut self, validity: Validity) {
        self.status.not_before = Some(Time(validity.not_before));
        self.status.not_after = Some(Time(validity.not_after));
        self.status.renewal_time = Some(Time(validity.renewal_time));
    }

    /// A certificate is needed (now, or after the backoff). Ready shows the need unless the current
    /// certificate is still valid (Expiring, ManuallyTriggered) or Ready already shows a failure.
    pub fn needs_issuance(&mut self, reason: IssuanceReason, message: &str) {
        let still_valid = matches!(reason, IssuanceReason::Expiring | IssuanceReason::ManuallyTriggered)
            && self.status.not_after.as_ref().is_some_and(|t| t.0 > self.now);
        let failed = self.status.failed_issuance_attempts.unwrap_or(0) > 0
            && FAILURE_REASONS.iter().any(|r| self.is(ConditionType::Ready, ConditionStatus::False, r.as_str()));
        if !still_valid && !failed {
            self.set(ConditionType::Ready, false, reason.as_str(), message);
        }
    }

    /// The issuer cannot be used yet. Before an order exists, Issuing is False with the reason; with an
    /// order in flight, Issuing stays True and says what it waits for.
    pub fn waiting_for_issuer(&mut self, wait: &IssuerWait, order_in_flight: bool) {
        let reason = wait.reason.as_str();
        if order_in_flight {
            self.set(ConditionType::Issuing, true, reason, &format!("Waiting for the issuer: {}", wait.message));
        } else {
            self.set(ConditionType::Issuing, false, reason, &wait.message);
            self.not_ready_unless_ready(reason, &wait.message);
        }
    }

    /// The issuer's policy refuses the Certificate: no order, and `Ready=False` (whatever the Secret holds, the
    /// Certificate asks for what it may not have).
    pub fn not_permitted(&mut self, message: &str) {
        self.forget_order();
        self.set(ConditionType::Ready, false, CertificateReason::NotPermitted.as_str(), message);
        remove_condition(&mut self.status.conditions, ConditionType::Issuing);
    }

    /// A new order exists; its key is stored in `next_key_secret`. Any new order answers a renewal request
    /// made before it (`handled_renewal_request`, the annotation's value now), whatever the reason it was
    /// placed for: a request made while the Secret did not exist yet must not renew again after the first
    /// certificate is stored.
    pub fn order_created(
        &mut self,
        reason: IssuanceReason,
        message: &str,
        order: OrderStatus,
        next_key_secret: String,
        handled_renewal_request: Option<String>,
    ) {
        self.status.next_private_key_secret_name = Some(next_key_secret);
        self.status.order = Some(order);
        if handled_renewal_request.is_some() {
            self.status.last_renewal_request = handled_renewal_request;
        }
        self.set(ConditionType::Issuing, true, reason.as_str(), message);
    }

    /// The order advanced and waits (for the CA, or for a solver).
    pub fn order_waiting(&mut self, order: OrderStatus, why: &str) {
        self.status.order = Some(order);
        let reason = self.issuing_reason();
        self.set(ConditionType::Issuing, true, &reason, &format!("Waiting: {why}"));
    }

    /// The order ran into a problem worth retrying after `delay_seconds`; `order` is its position, when known.
    pub fn retrying(&mut self, order: Option<OrderStatus>, delay_seconds: u64, error: &str) {
        if let Some(order) = order {
            self.status.order = Some(order);
        }
        let reason = self.issuing_reason();
        self.set(ConditionType::Issuing, true, &reason, &format!("Retrying in {delay_seconds}s: {error}"));
    }

    /// The order in flight is given up (without counting a failure): the next pass starts a new one.
    pub fn order_abandoned(&mut self, reason: &str, message: &str) {
        self.forget_order();
        self.set(ConditionType::Issuing, false, reason, message);
    }

    fn forget_order(&mut self) {
        self.status.order = None;
        self.status.next_private_key_secret_name = None;
    }

    /// The issuance attempt failed for good: counts it, forgets the order, and returns the number of
    /// failed attempts (for the backoff) and the message shown.
    pub fn failed(&mut self, error: &str) -> (u32, String) {
        self.failed_because(CertificateReason::Failed, error)
    }

    /// [`StatusTransition::failed`], with a more precise reason than `Failed` in the conditions.
    pub fn failed_because(&mut self, reason: CertificateReason, error: &str) -> (u32, String) {
        let attempts = self.status.failed_issuance_attempts.unwrap_or(0).saturating_add(1);
        self.status.failed_issuance_attempts = Some(attempts);
        self.status.last_failure_time = Some(Time(self.now));
        self.forget_order();
        let message = format!("The issuance failed: {error}");
        let reason = reason.as_str();
        self.set(ConditionType::Issuing, false, reason, &message);
        self.not_ready_unless_ready(reason, &message);
        (u32::try_from(attempts).unwrap_or(u32::MAX), message)
    }

    /// A certificate was issued and stored.
    pub fn issued(&mut self, validity: Validity) {
        self.status.revision = Some(self.status.revision.unwrap_or(0) + 1);
        self.show_validity(validity);
        self.forget_order();
        self.status.failed_issuance_attempts = None;
        self.status.last_failure_time = None;
        self.set(ConditionType::Ready, true, CertificateReason::Ready.as_str(), UP_TO_DATE_MESSAGE);
        remove_condition(&mut self.status.conditions, ConditionType::Issuing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::ToSpan;

    fn t0() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn validity() -> Validity {
        Validity { not_before: t0(), not_after: t0() + 24.hours(), renewal_time: t0() + 16.hours() }
    }

    /// (type, status, reason) of each condition, in order.
    fn conditions(status: &CertificateStatus) -> Vec<(String, String, String)> {
        status.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
    }

    fn row(type_: &str, status: &str, reason: &str) -> (String, String, String) {
        (type_.into(), status.into(), reason.into())
    }

    fn ready_status() -> CertificateStatus {
        let mut status = CertificateStatus::default();
        StatusTransition::new(&mut status, Some(1), t0()).issued(validity());
        status
    }

    fn failed_status() -> CertificateStatus {
        let mut status = CertificateStatus::default();
        StatusTransition::new(&mut status, Some(1), t0()).failed("the CA said no");
        status
    }

    fn solver_not_ready_status() -> CertificateStatus {
        let mut status = CertificateStatus::default();
        StatusTransition::new(&mut status, Some(1), t0()).failed_because(CertificateReason::SolverNotReady, "no Pod");
        status
    }

    fn order() -> OrderStatus {
        OrderStatus { url: "https://ca/order/1".into(), ..OrderStatus::default() }
    }

    #[test]
    fn an_issued_certificate_is_ready_counts_a_revision_and_clears_failures_and_the_order() {
        let mut status = failed_status();
        status.order = Some(order());
        status.next_private_key_secret_name = Some("web-next-key".into());
        StatusTransition::new(&mut status, Some(1), t0()).issued(validity());
        assert_eq!(conditions(&status), vec![row("Ready", "True", "Ready")]);
        assert_eq!(status.revision, Some(1));
        assert_eq!(status.failed_issuance_attempts, None);
        assert_eq!(status.last_failure_time, None);
        assert_eq!(status.order, None);
        assert_eq!(status.next_private_key_secret_name, None);
        assert_eq!(status.renewal_time, Some(Time(t0() + 16.hours())));
        StatusTransition::new(&mut status, Some(1), t0()).issued(validity());
        assert_eq!(status.revision, Some(2));
    }

    #[test]
    fn a_needed_issuance_shows_in_ready_unless_the_certificate_is_still_valid_or_a_failure_is_shown() {
        // (case, status before, reason, now, expected Ready)
        let cases = [
            (
                "a missing Secret",
                CertificateStatus::default(),
                IssuanceReason::DoesNotExist,
                t0(),
                ("False", "DoesNotExist"),
            ),
            (
                "an expiring valid certificate",
                ready_status(),
                IssuanceReason::Expiring,
                t0() + 17.hours(),
                ("True", "Ready"),
            ),
            (
                "a manual renewal of a valid one",
                ready_status(),
                IssuanceReason::ManuallyTriggered,
                t0(),
                ("True", "Ready"),
            ),
            (
                "an expired certificate",
                ready_status(),
                IssuanceReason::Expiring,
                t0() + 25.hours(),
                ("False", "Expiring"),
            ),
            ("a changed spec", ready_status(), IssuanceReason::SpecChanged, t0(), ("False", "SpecChanged")),
            ("after a failure", failed_status(), IssuanceReason::DoesNotExist, t0(), ("False", "Failed")),
            (
                "after a solver that never became ready",
                solver_not_ready_status(),
                IssuanceReason::DoesNotExist,
                t0(),
                ("False", "SolverNotReady"),
            ),
        ];
        for (case, mut status, reason, now, (want_status, want_reason)) in cases {
            StatusTransition::new(&mut status, Some(1), now).needs_issuance(reason, "message");
            let ready = find_condition(&status.conditions, ConditionType::Ready).expect(case);
            assert_eq!((ready.status.as_str(), ready.reason.as_str()), (want_status, want_reason), "{case}");
        }
    }

    #[test]
    fn waiting_for_the_issuer_reads_differently_before_and_during_an_order() {
        let wait =
            IssuerWait { reason: CertificateReason::IssuerNotReady, message: "Issuer apps/ca is not Ready".into() };
        let mut before = CertificateStatus::default();
        StatusTransition::new(&mut before, Some(1), t0()).waiting_for_issuer(&wait, false);
        assert_eq!(
            conditions(&before),
            vec![row("Issuing", "False", "IssuerNotReady"), row("Ready", "False", "IssuerNotReady")]
        );
        let mut ready = ready_status();
        StatusTransition::new(&mut ready, Some(1), t0()).waiting_for_issuer(&wait, false);
        assert_eq!(conditions(&ready), vec![row("Ready", "True", "Ready"), row("Issuing", "False", "IssuerNotReady")]);
        let mut during = CertificateStatus::default();
        StatusTransition::new(&mut during, Some(1), t0()).waiting_for_issuer(&wait, true);
        assert_eq!(conditions(&during), vec![row("Issuing", "True", "IssuerNotReady")]);
        assert!(during.conditions[0].message.starts_with("Waiting for the issuer: "));
    }

    #[test]
    fn a_failure_counts_attempts_forgets_the_order_and_keeps_a_ready_certificate_ready() {
        let mut status = ready_status();
        status.order = Some(order());
        let (attempts, message) = StatusTransition::new(&mut status, Some(1), t0()).failed("no");
        assert_eq!((attempts, message.as_str()), (1, "The issuance failed: no"));
        assert_eq!(conditions(&status), vec![row("Ready", "True", "Ready"), row("Issuing", "False", "Failed")]);
        assert_eq!(status.order, None);
        assert_eq!(status.last_failure_time, Some(Time(t0())));
        let (attempts, _) = StatusTransition::new(&mut status, Some(1), t0()).failed("no");
        assert_eq!(attempts, 2);
        let mut fresh = CertificateStatus::default();
        StatusTransition::new(&mut fresh, Some(1), t0()).failed("no");
        assert_eq!(conditions(&fresh), vec![row("Issuing", "False", "Failed"), row("Ready", "False", "Failed")]);
    }

    #[test]
    fn an_order_keeps_its_issuing_reason_while_it_waits_and_retries() {
        let mut status = CertificateStatus::default();
        let mut transition = StatusTransition::new(&mut status, Some(1), t0());
        transition.order_created(
            IssuanceReason::ManuallyTriggered,
            "renew",
            order(),
            "web-next-key".into(),
            Some("now".into()),
        );
        transition.order_waiting(order(), "the CA validates");
        transition.retrying(None, 10, "ACME finalize failed: 500");
        assert_eq!(conditions(&status), vec![row("Issuing", "True", "ManuallyTriggered")]);
        assert_eq!(status.conditions[0].message, "Retrying in 10s: ACME finalize failed: 500");
        assert_eq!(status.last_renewal_request.as_deref(), Some("now"));
        assert_eq!(status.next_private_key_secret_name.as_deref(), Some("web-next-key"));
        let mut first = CertificateStatus::default();
        StatusTransition::new(&mut first, Some(1), t0()).order_created(
            IssuanceReason::DoesNotExist,
            "first",
            order(),
            "web-next-key".into(),
            Some("early".into()),
        );
        assert_eq!(first.last_renewal_request.as_deref(), Some("early"), "the first order answers an early request");
        StatusTransition::new(&mut first, Some(1), t0()).order_created(
            IssuanceReason::Expiring,
            "renew",
            order(),
            "web-next-key".into(),
            None,
        );
        assert_eq!(first.last_renewal_request.as_deref(), Some("early"), "no annotation keeps what was handled");
        StatusTransition::new(&mut status, Some(1), t0()).order_abandoned("SpecChanged", "names changed");
        assert_eq!(conditions(&status), vec![row("Issuing", "False", "SpecChanged")]);
        assert_eq!((status.order.as_ref(), status.next_private_key_secret_name.as_ref()), (None, None));
    }

    #[test]
    fn a_foreign_secret_is_news_only_the_first_time() {
        let mut status = CertificateStatus::default();
        assert!(StatusTransition::new(&mut status, Some(1), t0()).secret_not_owned("not ours"));
        assert!(!StatusTransition::new(&mut status, Some(1), t0()).secret_not_owned("not ours"));
        assert_eq!(conditions(&status), vec![row("Ready", "False", "SecretNotOwned")]);
    }
}
