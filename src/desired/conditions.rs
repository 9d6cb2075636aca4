//! Status conditions, and whether a new status is worth writing.

use crate::api::{CertificateStatus, ConditionType};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The longest condition message the apiserver accepts (`metav1.Condition`).
const MAX_MESSAGE_LENGTH: usize = 32768;

/// The status of a condition: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known whether the condition holds.
    Unknown,
}

impl ConditionStatus {
    /// The status as a condition spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> ConditionStatus {
        if holds { ConditionStatus::True } else { ConditionStatus::False }
    }
}

/// Sets the condition of type `type_` in `conditions`, replacing any condition of that type in place
/// (or appending one).
///
/// `lastTransitionTime` stays what it was when the status did not change, and becomes `now` (in whole
/// seconds, as the apiserver stores it) when it did or the condition is new. A message longer than the
/// apiserver accepts is cut.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: impl Into<ConditionStatus>,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let status = status.into().as_str();
    let type_ = type_.as_str();
    let position = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match position.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(whole_seconds(now)),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: cut(message, MAX_MESSAGE_LENGTH).to_string(),
        observed_generation,
        last_transition_time,
    };
    // Duplicates of the type (which only a foreign writer can have made) go; the first one's place stays.
    conditions.retain(|c| c.type_ != type_);
    let position = position.unwrap_or(conditions.len()).min(conditions.len());
    conditions.insert(position, condition);
}

/// Removes every condition of type `type_`.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
    conditions.retain(|c| c.type_ != type_.as_str());
}

/// The condition of type `type_`, if any.
pub fn find_condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of type `type_` has this status and reason.
pub fn condition_is(
    conditions: &[Condition],
    type_: ConditionType,
    status: impl Into<ConditionStatus>,
    reason: &str,
) -> bool {
    let status = status.into().as_str();
    find_condition(conditions, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// Whether `new` differs meaningfully from `old`, that is, whether it is worth a status write.
///
/// Ignored: the `lastTransitionTime` of conditions, the order of conditions (they are a map keyed by
/// type), and sub-second parts of times (the apiserver stores whole seconds).
pub fn status_changed(old: &CertificateStatus, new: &CertificateStatus) -> bool {
    comparable(old) != comparable(new)
}

/// `status` without what [`status_changed`] ignores.
fn comparable(status: &CertificateStatus) -> CertificateStatus {
    let seconds = |time: &Option<Time>| time.as_ref().map(|t| Time(whole_seconds(t.0)));
    let mut conditions = status.conditions.clone();
    for condition in &mut conditions {
        condition.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    CertificateStatus {
        conditions,
        not_before: seconds(&status.not_before),
        not_after: seconds(&status.not_after),
        renewal_time: seconds(&status.renewal_time),
        last_failure_time: seconds(&status.last_failure_time),
        ..status.clone()
    }
}

/// `time` without its sub-second part.
fn whole_seconds(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OrderStatus;
    use jiff::ToSpan;

    fn t0() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str, at: Timestamp) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} is {status}"),
            observed_generation: Some(1),
            last_transition_time: Time(at),
        }
    }

    /// (type, status, reason, lastTransitionTime) of each condition, in order.
    fn summary(conditions: &[Condition]) -> Vec<(String, String, String, Timestamp)> {
        conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.last_transition_time.0))
            .collect()
    }

    fn row(type_: &str, status: &str, reason: &str, at: Timestamp) -> (String, String, String, Timestamp) {
        (type_.into(), status.into(), reason.into(), at)
    }

    #[test]
    fn setting_a_condition_keeps_its_transition_time_only_while_the_status_holds() {
        let later = t0() + 1.hour();
        let ready = || vec![condition("Ready", "True", "Issued", t0())];
        // (case, before, status to set, reason, expected conditions)
        let cases = [
            (
                "a new condition is stamped now",
                vec![],
                ConditionStatus::True,
                "Issued",
                vec![row("Ready", "True", "Issued", later)],
            ),
            (
                "the same status keeps the transition time",
                ready(),
                ConditionStatus::True,
                "Issued",
                vec![row("Ready", "True", "Issued", t0())],
            ),
            (
                "a new reason with the same status keeps the transition time",
                ready(),
                ConditionStatus::True,
                "Renewed",
                vec![row("Ready", "True", "Renewed", t0())],
            ),
            (
                "a new status is stamped now",
                ready(),
                ConditionStatus::False,
                "Failed",
                vec![row("Ready", "False", "Failed", later)],
            ),
            (
                "Unknown is a status of its own",
                ready(),
                ConditionStatus::Unknown,
                "Pending",
                vec![row("Ready", "Unknown", "Pending", later)],
            ),
            (
                "other conditions and their order are kept",
                vec![condition("Ready", "False", "Pending", t0()), condition("Issuing", "True", "DoesNotExist", t0())],
                ConditionStatus::True,
                "Issued",
                vec![row("Ready", "True", "Issued", later), row("Issuing", "True", "DoesNotExist", t0())],
            ),
            (
                "duplicates of the type collapse into the first one's place",
                vec![
                    condition("Ready", "True", "Old", t0()),
                    condition("Issuing", "True", "Expiring", t0()),
                    condition("Ready", "False", "Older", t0()),
                ],
                ConditionStatus::True,
                "Issued",
                vec![row("Ready", "True", "Issued", t0()), row("Issuing", "True", "Expiring", t0())],
            ),
        ];
        for (case, mut conditions, status, reason, want) in cases {
            set_condition(&mut conditions, ConditionType::Ready, status, reason, "message", Some(2), later);
            assert_eq!(summary(&conditions), want, "{case}");
            let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            assert_eq!((ready.message.as_str(), ready.observed_generation), ("message", Some(2)), "{case}");
        }
    }

    #[test]
    fn a_boolean_is_a_condition_status() {
        let mut conditions = vec![];
        set_condition(&mut conditions, ConditionType::Ready, true, "Issued", "", None, t0());
        set_condition(&mut conditions, ConditionType::Issuing, false, "Done", "", None, t0());
        assert_eq!(
            summary(&conditions),
            vec![row("Ready", "True", "Issued", t0()), row("Issuing", "False", "Done", t0())]
        );
    }

    #[test]
    fn transition_times_are_whole_seconds_and_messages_fit_the_apiserver() {
        let mut conditions = vec![];
        let long = "é".repeat(20_000); // 40,000 bytes
        set_condition(&mut conditions, ConditionType::Ready, false, "Failed", &long, None, t0() + 1500.milliseconds());
        assert_eq!(conditions[0].last_transition_time.0, t0() + 1.second());
        assert!(conditions[0].message.len() <= 32768 && conditions[0].message.starts_with("éé"));
    }

    #[test]
    fn removing_a_condition_removes_every_copy_and_nothing_else() {
        let mut conditions = vec![
            condition("Issuing", "True", "Expiring", t0()),
            condition("Ready", "True", "Issued", t0()),
            condition("Issuing", "False", "Old", t0()),
        ];
        remove_condition(&mut conditions, ConditionType::Issuing);
        assert_eq!(summary(&conditions), vec![row("Ready", "True", "Issued", t0())]);
        remove_condition(&mut conditions, ConditionType::Issuing);
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn only_meaningful_differences_count_as_a_status_change() {
        let base = CertificateStatus {
            conditions: vec![condition("Ready", "True", "Issued", t0()), condition("Issuing", "False", "Done", t0())],
            not_after: Some(Time(t0() + 24.hours())),
            renewal_time: Some(Time(t0() + 16.hours())),
            revision: Some(1),
            ..Default::default()
        };
        let edit = |f: &dyn Fn(&mut CertificateStatus)| {
            let mut s = base.clone();
            f(&mut s);
            s
        };
        // (case, new status, expected change)
        let cases = [
            ("an identical status", base.clone(), false),
            (
                "only a transition time moved",
                edit(&|s| s.conditions[0].last_transition_time = Time(t0() + 1.hour())),
                false,
            ),
            ("only the order of conditions differs", edit(&|s| s.conditions.reverse()), false),
            (
                "only a sub-second part of a time differs",
                edit(&|s| s.not_after = Some(Time(t0() + 24.hours() + 300.milliseconds()))),
                false,
            ),
            ("a condition status changed", edit(&|s| s.conditions[0].status = "False".into()), true),
            ("a condition reason changed", edit(&|s| s.conditions[0].reason = "Renewed".into()), true),
            ("a condition message changed", edit(&|s| s.conditions[0].message = "other".into()), true),
            (
                "a condition's observed generation changed",
                edit(&|s| s.conditions[1].observed_generation = Some(2)),
                true,
            ),
            ("a condition was added", edit(&|s| s.conditions.push(condition("Other", "True", "X", t0()))), true),
            (
                "a condition was removed",
                edit(&|s| {
                    s.conditions.pop();
                }),
                true,
            ),
            ("the renewal time changed", edit(&|s| s.renewal_time = Some(Time(t0() + 17.hours()))), true),
            ("the revision changed", edit(&|s| s.revision = Some(2)), true),
            ("a failure was counted", edit(&|s| s.failed_issuance_attempts = Some(1)), true),
            ("a failure time was set", edit(&|s| s.last_failure_time = Some(Time(t0()))), true),
            (
                "an order started",
                edit(&|s| s.order = Some(OrderStatus { url: "https://ca/order/1".into(), ..Default::default() })),
                true,
            ),
            (
                "a next-key Secret was recorded",
                edit(&|s| s.next_private_key_secret_name = Some("web-next-key".into())),
                true,
            ),
        ];
        for (case, new, want) in cases {
            assert_eq!(status_changed(&base, &new), want, "{case}");
            assert_eq!(status_changed(&new, &base), want, "{case}, the other way round");
        }
    }
}
