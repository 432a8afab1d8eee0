//! What is stored of a route's response and how it is replayed (docs/http.md, "What is stored
//! and replayed").
//!
//! The status decides: 1xx–3xx and 4xx but 429 are completed with the response; 5xx and 429
//! fail the key retryably, nothing of the response stored. The stored response is
//! `{"v": 1, "headers": [[name, value], ...], "body": <base64>}`, or with `"omitted": true`
//! instead of the body when the body is over `max_stored_body`; [`SQL_STORE`] stores it, or
//! its omitted form when the server finds it over `idempotency.max_response_size`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderMap, HeaderName};
use serde_json::{json, Value};

/// The one statement that stores a route's response, in both modes: the server decides in the
/// same statement whether the document (`$3`) fits `idempotency.max_response_size` (the
/// extension's own measure: the jsonb's size without its 4-byte header) and stores it, or its
/// omitted form (`$4`). `$5` the status, `$6` the claim's attempt. No savepoint, no retry.
pub(crate) const SQL_STORE: &str = "SELECT idem_complete($1, $2, response => CASE \
     WHEN pg_column_size($3::jsonb) - 4 <= pg_size_bytes(current_setting('idempotency.max_response_size')) \
     THEN $3::jsonb ELSE $4::jsonb END, http_status => $5, attempt => $6)";

/// The stored response's format version.
pub const VERSION: i64 = 1;

/// The headers that describe the body, stored whenever present.
pub const BODY_HEADERS: [&str; 9] = [
    "content-type",
    "content-language",
    "content-encoding",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "vary",
];

/// What the layer does with a route's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `idem_complete(response, http_status)`: the next request replays it.
    Complete,
    /// `idem_fail(retryable => true)`: the next request executes again.
    FailRetryable,
}

/// The decision by status.
pub fn decide(status: u16) -> Decision {
    if status >= 500 || status == 429 {
        Decision::FailRetryable
    } else {
        Decision::Complete
    }
}

/// The response headers stored, in the response's order: those of [`BODY_HEADERS`] and those
/// the application names, never `Set-Cookie`/`Set-Cookie2`.
pub fn stored_headers(headers: &HeaderMap, replay_headers: &[HeaderName]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n != "set-cookie"
                && n != "set-cookie2"
                && (BODY_HEADERS.contains(&n) || replay_headers.iter().any(|r| r.as_str() == n))
        })
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A stored response: its headers and body, or no body (`omitted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub headers: Vec<(String, String)>,
    /// `None`: the body was over `max_stored_body` and is not stored.
    pub body: Option<Vec<u8>>,
}

impl StoredResponse {
    /// The JSON given to `idem_complete`.
    pub fn encode(&self) -> Value {
        let headers: Vec<Value> = self.headers.iter().map(|(n, v)| json!([n, v])).collect();
        match &self.body {
            Some(b) => json!({"v": VERSION, "headers": headers, "body": STANDARD.encode(b)}),
            None => json!({"v": VERSION, "headers": headers, "omitted": true}),
        }
    }

    /// The same without its body.
    pub fn omitted(&self) -> StoredResponse {
        StoredResponse {
            headers: self.headers.clone(),
            body: None,
        }
    }

    /// Reads a stored response back; `None` for anything that is not this format (another
    /// version, a record another writer stored).
    pub fn decode(v: &Value) -> Option<StoredResponse> {
        if v.get("v")?.as_i64()? != VERSION {
            return None;
        }
        let headers = v
            .get("headers")?
            .as_array()?
            .iter()
            .map(|pair| match pair.as_array()?.as_slice() {
                [Value::String(n), Value::String(v)] => Some((n.clone(), v.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let body = match (v.get("body"), v.get("omitted")) {
            (Some(Value::String(b)), None) => Some(STANDARD.decode(b).ok()?),
            (None, Some(Value::Bool(true))) => None,
            _ => return None,
        };
        Some(StoredResponse { headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_status_decides() {
        for s in [
            100, 101, 200, 201, 204, 301, 304, 399, 400, 401, 404, 409, 422, 428, 430, 499,
        ] {
            assert_eq!(decide(s), Decision::Complete, "{s}");
        }
        for s in [429, 500, 502, 503, 504, 599] {
            assert_eq!(decide(s), Decision::FailRetryable, "{s}");
        }
    }

    #[test]
    fn only_the_body_headers_and_the_named_ones_are_stored_in_order() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("location", "/things/1"),
            ("set-cookie", "s=1"),
            ("x-replayed-too", "yes"),
            ("x-not-stored", "no"),
            ("vary", "a"),
            ("vary", "b"),
            ("etag", "\"e\""),
            ("content-length", "11"),
            ("date", "now"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let named = [
            HeaderName::from_static("x-replayed-too"),
            HeaderName::from_static("set-cookie"),
        ];
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            stored_headers(&h, &named),
            pairs(&[
                ("content-type", "application/json"),
                ("location", "/things/1"),
                ("x-replayed-too", "yes"),
                ("vary", "a"),
                ("vary", "b"),
                ("etag", "\"e\""),
            ])
        );
        assert_eq!(
            stored_headers(&h, &[]),
            pairs(&[
                ("content-type", "application/json"),
                ("location", "/things/1"),
                ("vary", "a"),
                ("vary", "b"),
                ("etag", "\"e\""),
            ])
        );
    }

    #[test]
    fn encoding_and_decoding() {
        let r = StoredResponse {
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Some(b"status:201\x00\xff".to_vec()),
        };
        let v = r.encode();
        assert_eq!(
            v,
            json!({"v": 1, "headers": [["content-type", "text/plain"]], "body": "c3RhdHVzOjIwMQD/"})
        );
        assert_eq!(StoredResponse::decode(&v), Some(r.clone()));
        let o = r.omitted();
        assert_eq!(
            o.encode(),
            json!({"v": 1, "headers": [["content-type", "text/plain"]], "omitted": true})
        );
        assert_eq!(StoredResponse::decode(&o.encode()), Some(o));
        let empty = StoredResponse {
            headers: vec![],
            body: Some(vec![]),
        };
        assert_eq!(empty.encode(), json!({"v": 1, "headers": [], "body": ""}));
        for bad in [
            json!({"v": 2, "headers": [], "body": ""}),
            json!({"headers": [], "body": ""}),
            json!({"v": 1, "headers": [["a"]], "body": ""}),
            json!({"v": 1, "headers": [], "body": "!!"}),
            json!({"v": 1, "headers": [], "omitted": false}),
            json!({"v": 1, "headers": [], "body": "", "omitted": true}),
            json!({"v": 1, "headers": []}),
            json!("x"),
        ] {
            assert_eq!(StoredResponse::decode(&bad), None, "{bad}");
        }
    }
}
