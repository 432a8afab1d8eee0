//! The mapping from the extension's answers to HTTP, as plain functions any framework can
//! call: an outcome or an error becomes a status, the `Idempotent-Replayed` and `Retry-After`
//! headers, and the problem document's `code` (RFC 9457). A client branches on `code`, never
//! on the text.
//!
//! | the extension says | status | code | headers |
//! |---|---|---|---|
//! | `replay` | the stored `http_status` | the stored problem's, for a failure | `Idempotent-Replayed: true` |
//! | `in_progress` | 409 | `request_in_progress` | `Retry-After`: seconds to the lease end, at least 1 |
//! | `IK001` | 422 | `idempotency_key_reused` | |
//! | `IK003` | 409 | `request_in_progress` | `Retry-After: 1` |
//! | `IK002` | 500 | `internal_error` | |
//! | `42501` | 403 | `forbidden` | |
//! | `22023`, `22004` | 400 | `invalid_request` | |
//! | `40001` (after the retries), `25006`, no connection | 503 | `service_unavailable` | `Retry-After: 1` |
//! | any other database error | 500 | `internal_error` | |

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::calls::{Begun, Checked, Outcome};
use crate::error::Error;

pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";
pub const RETRY_AFTER: &str = "Retry-After";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `code` values.
pub mod code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const IDEMPOTENCY_KEY_MISSING: &str = "idempotency_key_missing";
    pub const IDEMPOTENCY_KEY_INVALID: &str = "idempotency_key_invalid";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    pub const REQUEST_IN_PROGRESS: &str = "request_in_progress";
    pub const CARD_DECLINED: &str = "card_declined";
    pub const PROCESSOR_UNAVAILABLE: &str = "processor_unavailable";
    pub const REFUND_EXCEEDS_PAYMENT: &str = "refund_exceeds_payment";
    pub const NOT_FOUND: &str = "not_found";
    /// Beyond the service contract's list: answers no request of the contract should get.
    pub const FORBIDDEN: &str = "forbidden";
    pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
    pub const INTERNAL_ERROR: &str = "internal_error";
    /// The drop-in layer's: a request body over its limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
}

/// The `title` of each `code`.
pub fn title(code: &str) -> &'static str {
    match code {
        code::UNAUTHORIZED => "Unauthorized",
        code::INVALID_REQUEST => "Invalid request",
        code::IDEMPOTENCY_KEY_MISSING => "Idempotency-Key missing",
        code::IDEMPOTENCY_KEY_INVALID => "Idempotency-Key invalid",
        code::IDEMPOTENCY_KEY_REUSED => "Idempotency-Key reused",
        code::REQUEST_IN_PROGRESS => "Request in progress",
        code::CARD_DECLINED => "Card declined",
        code::PROCESSOR_UNAVAILABLE => "Processor unavailable",
        code::REFUND_EXCEEDS_PAYMENT => "Refund exceeds payment",
        code::NOT_FOUND => "Not found",
        code::FORBIDDEN => "Forbidden",
        code::SERVICE_UNAVAILABLE => "Service unavailable",
        code::PAYLOAD_TOO_LARGE => "Payload too large",
        _ => "Internal error",
    }
}

/// The `detail` of the answers about keys, the same wherever they are made.
pub mod detail {
    pub const KEY_MISSING: &str = "This route needs an Idempotency-Key header.";
    pub const KEY_INVALID: &str = "The Idempotency-Key must be one sf-string (\"k-123\") or a bare token of [A-Za-z0-9._~:+/=-], 1 to 255 bytes.";
    pub const KEY_REUSED: &str = "This Idempotency-Key was already used with another request (another body or endpoint). A retry must repeat the first request exactly; use a new key for a new request.";
    pub const IN_PROGRESS: &str = "Another request with this Idempotency-Key is being processed; retry after the time given in Retry-After.";
    pub const LEASE_LOST: &str = "Another request took this key over; retry to get its outcome.";
    pub const INVALID: &str = "The request is outside the limits of the idempotency layer.";
    pub const UNAVAILABLE: &str = "The database is not available; retry later.";
    pub const INTERNAL: &str = "Something went wrong on our side.";
}

/// A time as the problem documents spell it: RFC 3339, microseconds, `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The answer and problem document for an error of this crate: [`for_error`]'s status, code
/// and headers, [`detail`]'s text, and `first_used_at` for `IK001`.
pub fn error_problem(e: &Error) -> (Answer, Value) {
    let a = for_error(e);
    let code = a
        .code
        .clone()
        .unwrap_or_else(|| code::INTERNAL_ERROR.into());
    let (detail, extra) = match e {
        // Read after the refusal (the helpers do it); absent when that read did not run.
        Error::KeyReused(r) => (
            detail::KEY_REUSED,
            r.first_used_at
                .map(|t| json!({"first_used_at": rfc3339(t)})),
        ),
        Error::LeaseLost(_) => (detail::LEASE_LOST, None),
        Error::Invalid { .. } => (detail::INVALID, None),
        _ if a.status == 503 => (detail::UNAVAILABLE, None),
        _ => (detail::INTERNAL, None),
    };
    let body = problem(a.status, &code, title(&code), detail, extra);
    (a, body)
}

/// What to answer: status, problem code (for 4xx/5xx) and the two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub code: Option<String>,
    /// `Idempotent-Replayed: true`.
    pub replayed: bool,
    /// `Retry-After: <seconds>`.
    pub retry_after: Option<u64>,
}

impl Answer {
    fn error(status: u16, code: &str, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            code: Some(code.to_owned()),
            replayed: false,
            retry_after,
        }
    }
}

/// Seconds until `lease_end`, rounded up, at least 1 (also when there is no lease: the holder
/// is an uncommitted transaction, which is short).
pub fn retry_after_secs(lease_end: Option<DateTime<Utc>>, now: DateTime<Utc>) -> u64 {
    let Some(end) = lease_end else { return 1 };
    let ms = (end - now).num_milliseconds();
    if ms <= 0 {
        1
    } else {
        ((ms as u64).div_ceil(1000)).max(1)
    }
}

/// The answer for `idem_begin`'s row, or `None` for `execute` (the caller does the work).
/// `checked` is `idem_check`'s row read for an `in_progress` (for the lease end).
pub fn for_begun(begun: &Begun, checked: Option<&Checked>, now: DateTime<Utc>) -> Option<Answer> {
    match begun.outcome {
        Outcome::Execute => None,
        Outcome::Replay => Some(for_replay(begun)),
        Outcome::InProgress => Some(for_in_progress(checked, now)),
    }
}

/// A replay: the stored status; for a stored failure, the `code` of the stored problem.
pub fn for_replay(begun: &Begun) -> Answer {
    let status = begun.http_status.unwrap_or(200).clamp(100, 599) as u16;
    let code = (status >= 400)
        .then(|| {
            begun
                .response
                .as_ref()?
                .get("code")?
                .as_str()
                .map(str::to_owned)
        })
        .flatten();
    Answer {
        status,
        code,
        replayed: true,
        retry_after: None,
    }
}

/// Another request holds the key: 409 with `Retry-After`.
pub fn for_in_progress(checked: Option<&Checked>, now: DateTime<Utc>) -> Answer {
    let lease_end = checked.and_then(|c| c.lease_expires_at);
    Answer::error(
        409,
        code::REQUEST_IN_PROGRESS,
        Some(retry_after_secs(lease_end, now)),
    )
}

/// An error of this crate.
pub fn for_error(e: &Error) -> Answer {
    match e {
        Error::KeyReused(_) => Answer::error(422, code::IDEMPOTENCY_KEY_REUSED, None),
        // The stale holder must not report its own outcome: it is as if another request held
        // the key (it does, or it finished).
        Error::LeaseLost(_) => Answer::error(409, code::REQUEST_IN_PROGRESS, Some(1)),
        Error::NotInProgress(_) => Answer::error(500, code::INTERNAL_ERROR, None),
        Error::NotOwner(_) => Answer::error(403, code::FORBIDDEN, None),
        Error::Invalid { .. } => Answer::error(400, code::INVALID_REQUEST, None),
        Error::Serialization(_) | Error::ReadOnly(_) | Error::Pool(_) => {
            Answer::error(503, code::SERVICE_UNAVAILABLE, Some(1))
        }
        Error::Db(db) if db.as_db_error().is_none() => {
            Answer::error(503, code::SERVICE_UNAVAILABLE, Some(1))
        }
        Error::Db(_) => Answer::error(500, code::INTERNAL_ERROR, None),
    }
}

/// An RFC 9457 problem document with the `code` member. `extra` members (an object) are
/// merged in.
pub fn problem(status: u16, code: &str, title: &str, detail: &str, extra: Option<Value>) -> Value {
    let mut p = json!({
        "type": format!("urn:problem-type:{code}"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    });
    if let (Some(Value::Object(extra)), Value::Object(p)) = (extra, &mut p) {
        for (k, v) in extra {
            p.entry(k).or_insert(v);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::State;
    use crate::error::{DbText, KeyReused, LeaseLost, NotInProgress};
    use chrono::TimeZone;

    fn key_reused(first_used_at: Option<DateTime<Utc>>) -> KeyReused {
        KeyReused {
            scope: "s".into(),
            key: "k".into(),
            first_used_at,
            stored_fingerprint: None,
            given_fingerprint: Some(vec![0x11; 32]),
            loaded: first_used_at.is_some(),
            text: DbText::default(),
            command: None,
        }
    }

    fn begun(outcome: Outcome, status: Option<i32>, response: Option<Value>) -> Begun {
        Begun {
            outcome,
            state: State::Completed,
            attempt: Some(1),
            recovery_point: None,
            recovery_data: None,
            http_status: status,
            response,
            resource: Some("payments/p1".into()),
            fingerprint: vec![0; 32],
            expires_at: None,
        }
    }

    fn at(s: i64, ms: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(s, ms * 1_000_000).unwrap()
    }

    #[test]
    fn replay_keeps_the_stored_status_and_marks_it() {
        let a = for_replay(&begun(Outcome::Replay, Some(201), None));
        assert_eq!(
            a,
            Answer {
                status: 201,
                code: None,
                replayed: true,
                retry_after: None
            }
        );
        let failed = begun(
            Outcome::Replay,
            Some(402),
            Some(json!({"code": "card_declined", "status": 402})),
        );
        let a = for_replay(&failed);
        assert_eq!(
            (a.status, a.code.as_deref(), a.replayed),
            (402, Some("card_declined"), true)
        );
    }

    #[test]
    fn execute_has_no_answer() {
        assert_eq!(
            for_begun(&begun(Outcome::Execute, None, None), None, at(0, 0)),
            None
        );
    }

    #[test]
    fn in_progress_retry_after_rounds_up_to_the_lease_end() {
        let now = at(1000, 0);
        let checked = |end: Option<DateTime<Utc>>| Checked {
            state: State::InProgress,
            matches: None,
            attempt: Some(1),
            recovery_point: None,
            http_status: None,
            response: None,
            resource: None,
            created_at: None,
            expires_at: None,
            lease_expires_at: end,
        };
        let a = for_begun(
            &begun(Outcome::InProgress, Some(409), None),
            Some(&checked(Some(at(1029, 1)))),
            now,
        )
        .unwrap();
        assert_eq!(
            (a.status, a.code.as_deref(), a.retry_after),
            (409, Some("request_in_progress"), Some(30))
        );
        assert_eq!(
            for_in_progress(Some(&checked(Some(at(1030, 0)))), now).retry_after,
            Some(30)
        );
        assert_eq!(
            for_in_progress(Some(&checked(Some(at(1000, 200)))), now).retry_after,
            Some(1)
        );
        // Run out, or no lease (an uncommitted holder): at least 1.
        assert_eq!(
            for_in_progress(Some(&checked(Some(at(990, 0)))), now).retry_after,
            Some(1)
        );
        assert_eq!(
            for_in_progress(Some(&checked(None)), now).retry_after,
            Some(1)
        );
        assert_eq!(for_in_progress(None, now).retry_after, Some(1));
    }

    #[test]
    fn errors_map_by_sqlstate_variant() {
        let t = DbText::default();
        let reused = Error::KeyReused(Box::new(key_reused(None)));
        let cases: Vec<(Error, u16, &str, Option<u64>)> = vec![
            (reused, 422, "idempotency_key_reused", None),
            (
                Error::LeaseLost(Box::new(LeaseLost {
                    scope: "s".into(),
                    key: "k".into(),
                    current_attempt: Some(2),
                    given_attempt: Some(1),
                    loaded: true,
                    text: t.clone(),
                })),
                409,
                "request_in_progress",
                Some(1),
            ),
            (
                Error::NotInProgress(Box::new(NotInProgress {
                    scope: "s".into(),
                    key: "k".into(),
                    found: Some(State::Completed),
                    text: t.clone(),
                })),
                500,
                "internal_error",
                None,
            ),
            (Error::NotOwner(t.clone()), 403, "forbidden", None),
            (
                Error::Invalid {
                    sqlstate: "22023".into(),
                    text: t.clone(),
                },
                400,
                "invalid_request",
                None,
            ),
            (
                Error::Invalid {
                    sqlstate: "22004".into(),
                    text: t.clone(),
                },
                400,
                "invalid_request",
                None,
            ),
            (
                Error::Serialization(t.clone()),
                503,
                "service_unavailable",
                Some(1),
            ),
            (
                Error::ReadOnly(t.clone()),
                503,
                "service_unavailable",
                Some(1),
            ),
        ];
        for (e, status, code, retry) in cases {
            let a = for_error(&e);
            assert_eq!(
                (a.status, a.code.as_deref(), a.retry_after, a.replayed),
                (status, Some(code), retry, false),
                "{e}"
            );
        }
    }

    #[test]
    fn error_problem_documents() {
        let at = Utc.timestamp_opt(1_767_261_600, 500_000_000).unwrap();
        let reused = Error::KeyReused(Box::new(key_reused(Some(at))));
        let (a, p) = error_problem(&reused);
        assert_eq!((a.status, a.retry_after), (422, None));
        assert_eq!(
            p,
            json!({"type": "urn:problem-type:idempotency_key_reused", "title": "Idempotency-Key reused",
                   "status": 422, "detail": detail::KEY_REUSED, "code": "idempotency_key_reused",
                   "first_used_at": "2026-01-01T10:00:00.500000Z"})
        );
        // Not read (a plain call inside the caller's transaction, or the read failed): the
        // 422 without `first_used_at`.
        let (_, p) = error_problem(&Error::KeyReused(Box::new(key_reused(None))));
        assert_eq!(p["code"], "idempotency_key_reused");
        assert!(p.get("first_used_at").is_none());
        let (a, p) = error_problem(&Error::ReadOnly(DbText::default()));
        assert_eq!((a.status, a.retry_after), (503, Some(1)));
        assert_eq!(
            (
                p["code"].as_str(),
                p["title"].as_str(),
                p["detail"].as_str()
            ),
            (
                Some("service_unavailable"),
                Some("Service unavailable"),
                Some(detail::UNAVAILABLE)
            )
        );
        let (a, p) = error_problem(&Error::NotInProgress(Box::new(NotInProgress {
            scope: "s".into(),
            key: "k".into(),
            found: None,
            text: DbText::default(),
        })));
        assert_eq!(
            (a.status, p["code"].as_str(), p["title"].as_str()),
            (500, Some("internal_error"), Some("Internal error"))
        );
        assert_eq!(title(code::PAYLOAD_TOO_LARGE), "Payload too large");
    }

    #[test]
    fn problem_has_the_rfc9457_members_and_the_code() {
        let p = problem(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            "d",
            Some(json!({"first_used_at": "x", "code": "ignored"})),
        );
        assert_eq!(
            p,
            json!({"type": "urn:problem-type:idempotency_key_reused", "title": "Idempotency key reused",
                   "status": 422, "detail": "d", "code": "idempotency_key_reused", "first_used_at": "x"})
        );
    }
}
