//! The answers the layer makes itself (docs/http.md, "The layer's answers"), as a neutral
//! [`Reply`] (status, headers, body) a framework turns into its response: problem documents
//! (RFC 9457 with `code`) through [`crate::http`], the in-progress answer with `Retry-After`
//! (202 for `Prefer: respond-async`), and a replay of a stored response.

use chrono::Utc;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::stored::StoredResponse;
use crate::calls::{Begun, Checked};
use crate::error::Error;
use crate::headers::{KeyError, Prefer};
use crate::http::{self as map, code, detail};

pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
pub const IDEMPOTENT_REPLAY_BODY: HeaderName = HeaderName::from_static("idempotent-replay-body");

/// A response the layer makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

/// A problem document to answer with: the layer's own, or one a tenant function gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
    /// More members (an object), merged into the document.
    pub extra: Option<Value>,
    /// `Retry-After: <seconds>`.
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: u16, code: &str, detail: &str) -> Problem {
        Problem {
            status,
            code: code.to_owned(),
            detail: detail.to_owned(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn extra(mut self, members: Value) -> Problem {
        self.extra = Some(members);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// The document: `type`, `title` (by code), `status`, `detail`, `code` and the extras.
    pub fn document(&self) -> Value {
        map::problem(
            self.status,
            &self.code,
            map::title(&self.code),
            &self.detail,
            self.extra.clone(),
        )
    }

    /// As `application/problem+json`.
    pub fn reply(&self) -> Reply {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static(map::PROBLEM_JSON))];
        if let Some(s) = self.retry_after {
            headers.push((RETRY_AFTER, HeaderValue::from(s)));
        }
        Reply {
            status: self.status,
            headers,
            body: self.document().to_string().into_bytes(),
        }
    }
}

/// 400 `idempotency_key_missing` / `idempotency_key_invalid`.
pub fn key_error(e: KeyError) -> Problem {
    match e {
        KeyError::Missing => Problem::new(400, code::IDEMPOTENCY_KEY_MISSING, detail::KEY_MISSING),
        KeyError::Invalid => Problem::new(400, code::IDEMPOTENCY_KEY_INVALID, detail::KEY_INVALID),
    }
}

/// 401 `unauthorized`: the tenant function answered nothing.
pub fn unauthorized() -> Problem {
    Problem::new(
        401,
        code::UNAUTHORIZED,
        "This request names no tenant the application knows.",
    )
}

/// 413 `payload_too_large`.
pub fn payload_too_large(max_body_bytes: usize) -> Problem {
    Problem::new(
        413,
        code::PAYLOAD_TOO_LARGE,
        &format!("The request body is larger than {max_body_bytes} bytes."),
    )
}

/// 500 `internal_error`: the route failed without an answer (a panic), or the layer did.
pub fn internal() -> Problem {
    Problem::new(500, code::INTERNAL_ERROR, detail::INTERNAL)
}

/// 503 `service_unavailable` with `Retry-After: 1`: transaction mode met `IK002` when it
/// stored the outcome (the key's ttl ran out during the transaction), so the whole transaction
/// rolled back and nothing happened; the retry executes.
pub fn expired() -> Problem {
    Problem::new(
        503,
        code::SERVICE_UNAVAILABLE,
        "The idempotency key expired while the request ran; nothing was done. Retry after Retry-After seconds.",
    )
    .retry_after(1)
}

/// An error of the crate: [`map::error_problem`].
pub fn error(e: &Error) -> Problem {
    let (a, doc) = map::error_problem(e);
    let code = a.code.unwrap_or_else(|| code::INTERNAL_ERROR.into());
    let mut p = Problem::new(a.status, &code, doc["detail"].as_str().unwrap_or_default());
    p.extra = doc
        .get("first_used_at")
        .map(|t| serde_json::json!({"first_used_at": t}));
    p.retry_after = a.retry_after;
    p
}

/// Another request holds the key: 409 `request_in_progress` with `Retry-After` (the seconds to
/// the holder's lease end, at least 1); for `Prefer: respond-async` 202 with the same document
/// and `Location` when the application gives one.
pub fn in_progress(checked: Option<&Checked>, prefer: Prefer, location: Option<String>) -> Reply {
    let a = map::for_in_progress(checked, Utc::now());
    let mut p = Problem::new(409, code::REQUEST_IN_PROGRESS, detail::IN_PROGRESS);
    p.retry_after = a.retry_after;
    let mut reply = p.reply();
    if prefer.respond_async {
        reply.status = 202;
        if let Some(v) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
            reply.headers.push((LOCATION, v));
        }
    }
    reply
}

/// A replay of a stored final outcome: its status, its stored headers in order, its body's
/// bytes, `Idempotent-Replayed: true`, and `Idempotent-Replay-Body: omitted` for a body that
/// was not stored. A record this layer did not write is 500.
pub fn replay(begun: &Begun) -> Reply {
    let a = map::for_replay(begun);
    let Some(stored) = begun.response.as_ref().and_then(StoredResponse::decode) else {
        return internal().reply();
    };
    let mut headers: Vec<(HeaderName, HeaderValue)> = stored
        .headers
        .iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::try_from(n.as_str()).ok()?,
                HeaderValue::try_from(v.as_str()).ok()?,
            ))
        })
        .collect();
    headers.push((IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")));
    if stored.body.is_none() {
        headers.push((IDEMPOTENT_REPLAY_BODY, HeaderValue::from_static("omitted")));
    }
    Reply {
        status: a.status,
        headers,
        body: stored.body.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Outcome, State};
    use serde_json::json;

    fn header<'a>(r: &'a Reply, name: &str) -> Vec<&'a str> {
        r.headers
            .iter()
            .filter(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap())
            .collect()
    }

    fn begun(status: i32, response: Value) -> Begun {
        Begun {
            outcome: Outcome::Replay,
            state: State::Completed,
            attempt: Some(1),
            recovery_point: None,
            recovery_data: None,
            http_status: Some(status),
            response: Some(response),
            resource: None,
            fingerprint: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn problems() {
        let r = key_error(KeyError::Missing).reply();
        assert_eq!(r.status, 400);
        assert_eq!(header(&r, "content-type"), ["application/problem+json"]);
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            doc,
            json!({"type": "urn:problem-type:idempotency_key_missing", "title": "Idempotency-Key missing",
                   "status": 400, "detail": detail::KEY_MISSING, "code": "idempotency_key_missing"})
        );
        assert_eq!(key_error(KeyError::Invalid).code, "idempotency_key_invalid");
        assert_eq!(
            (unauthorized().status, unauthorized().code.as_str()),
            (401, "unauthorized")
        );
        let p = payload_too_large(10);
        assert_eq!((p.status, p.code.as_str()), (413, "payload_too_large"));
        let r = error(&Error::ReadOnly(Default::default())).reply();
        assert_eq!((r.status, header(&r, "retry-after")), (503, vec!["1"]));
        let r = expired().reply();
        assert_eq!((r.status, header(&r, "retry-after")), (503, vec!["1"]));
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            doc,
            json!({"type": "urn:problem-type:service_unavailable", "title": "Service unavailable",
                   "status": 503, "code": "service_unavailable",
                   "detail": "The idempotency key expired while the request ran; nothing was done. Retry after Retry-After seconds."})
        );
    }

    #[test]
    fn in_progress_is_409_or_202_with_retry_after() {
        let r = in_progress(None, Prefer::default(), Some("/status/k".into()));
        assert_eq!(r.status, 409);
        assert_eq!(header(&r, "retry-after"), ["1"]);
        assert!(header(&r, "location").is_empty());
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["code"], json!("request_in_progress"));
        let prefer = Prefer {
            respond_async: true,
            wait: None,
        };
        let r2 = in_progress(None, prefer, Some("/status/k".into()));
        assert_eq!(r2.status, 202);
        assert_eq!(header(&r2, "location"), ["/status/k"]);
        assert_eq!(r2.body, r.body);
        assert!(header(&in_progress(None, prefer, None), "location").is_empty());
    }

    #[test]
    fn replays_the_stored_response() {
        let r = replay(&begun(
            201,
            json!({"v": 1, "headers": [["content-type", "text/plain"], ["location", "/things/1"]], "body": "aGk="}),
        ));
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hi");
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location", "idempotent-replayed"]);
        assert_eq!(header(&r, "idempotent-replayed"), ["true"]);
        let r = replay(&begun(200, json!({"v": 1, "headers": [], "omitted": true})));
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(header(&r, "idempotent-replay-body"), ["omitted"]);
        let r = replay(&begun(201, json!({"id": "payments/p1"})));
        assert_eq!(r.status, 500);
    }
}
