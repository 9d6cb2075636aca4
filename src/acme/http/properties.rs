//! Properties of what kacme does to a CA's answers before instant-acme reads them: any error body becomes a
//! problem document that keeps the HTTP status, and instant-acme never sees a `Retry-After` beyond an hour
//! (it panics adding a huge one to the clock).

use super::{MAX_RETRY_AFTER, clamp_retry_after, problem_document_for};
use crate::testing::properties::{config, hostile_text};
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

/// A `Retry-After` value as a CA might send it: seconds of any size, HTTP dates of any time, garbage.
fn retry_after_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|s| s.to_string()),
        (0..10_000u64).prop_map(|s| s.to_string()),
        "[0-9]{20,40}",
        "[ \t]*-?[0-9]{1,6}[ \t]*",
        (0..253_402_300_799u64).prop_map(|s| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s))),
        (-7_200..7_200i64).prop_map(|offset| {
            let now = SystemTime::now();
            let at = if offset < 0 {
                now - Duration::from_secs(offset.unsigned_abs())
            } else {
                now + Duration::from_secs(offset.unsigned_abs())
            };
            httpdate::fmt_http_date(at)
        }),
        hostile_text(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn instant_acme_never_sees_a_retry_after_beyond_an_hour(value in retry_after_value()) {
        let Ok(header) = http::HeaderValue::from_str(&value) else { return Ok(()) };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, header);
        clamp_retry_after(&mut headers);
        let Some(kept) = headers.get(http::header::RETRY_AFTER) else { return Ok(()) };
        let text = kept.to_str().map_err(|e| TestCaseError::fail(e.to_string()))?.trim();
        let wait = match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => {
                let at = httpdate::parse_http_date(text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
                at.duration_since(SystemTime::now()).unwrap_or_default()
            }
        };
        prop_assert!(wait <= MAX_RETRY_AFTER, "{value:?} was kept as {text:?}");
    }

    #[test]
    fn any_error_body_becomes_a_problem_document_that_keeps_the_status(
        status in 400..600u16,
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3_000),
            hostile_text().prop_map(String::into_bytes),
            Just(br#"{"type":"urn:ietf:params:acme:error:malformed","detail":"no"}"#.to_vec()),
            Just(b"[1, 2]".to_vec()),
            Just(b"\"a string\"".to_vec()),
        ],
    ) {
        let status = http::StatusCode::from_u16(status).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let is_object = serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object());
        match problem_document_for(status, &body) {
            None => prop_assert!(is_object, "a body that is not a JSON object was passed on"),
            Some(document) => {
                let problem: instant_acme::Problem =
                    serde_json::from_slice(&document).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(problem.status, Some(status.as_u16()));
                let detail = problem.detail.unwrap_or_default();
                prop_assert!(detail.starts_with(&format!("HTTP {status}")), "{detail}");
                prop_assert!(detail.chars().count() <= 260, "{} characters", detail.chars().count());
                prop_assert!(!detail.chars().any(char::is_control), "control characters reach status: {detail:?}");
            }
        }
    }

    #[test]
    fn any_problem_a_ca_sends_is_shown_bounded_and_without_control_characters(
        kind in hostile_text(),
        detail in hostile_text(),
        subproblems in proptest::collection::vec(hostile_text(), 0..12),
    ) {
        let subproblems: Vec<serde_json::Value> =
            subproblems.into_iter().map(|d| serde_json::json!({"type": d.clone(), "detail": d})).collect();
        let document = serde_json::json!({"type": kind, "detail": detail, "status": 400, "subproblems": subproblems});
        let Ok(problem) = serde_json::from_value::<instant_acme::Problem>(document) else { return Ok(()) };
        let shown = crate::acme::ProblemDetail::from_problem(&problem).to_string();
        prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
        prop_assert!(shown.len() <= 8 * 1024, "{} bytes", shown.len());
    }
}
