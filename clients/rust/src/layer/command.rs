//! The command a request means (docs/http.md, "The command"): what the extension fingerprints.
//!
//! `{"v": 1, "method", "path", "query", "headers", "body"}`: the method upper-case, the path
//! percent-decoded without the query, every query parameter decoded (`+` a space) as name →
//! values in order, the named request headers as name → values in order, and the body as
//! `null`, parsed JSON with its media type, or the media type and the SHA-256 of the bytes.
//!
//! The command is JSON text (a [`RawValue`]), not a [`Value`]: a JSON body goes into it as the
//! client's own text, so its numbers reach the extension exactly (`12345678901234567891` and
//! `12345678901234567890` are two commands; a `Value` would round both to one `f64`).

use http::{HeaderMap, HeaderName, Method};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The command format's version.
pub const VERSION: i64 = 1;

/// The command of a request, as JSON text (pass it as `tokio_postgres::types::Json`, a jsonb
/// parameter). `path` and `query` are as they came on the wire (percent-encoded; `query`
/// without the `?`).
pub fn command(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    command_headers: &[HeaderName],
    body: &[u8],
) -> Box<RawValue> {
    let head = json!({
        "v": VERSION,
        "method": method.as_str().to_ascii_uppercase(),
        "path": percent_decode(path, false),
        "query": query_members(query.unwrap_or("")),
        "headers": header_members(headers, command_headers),
    });
    // `{...}` without its closing brace, then the body member, which may embed raw JSON text.
    let mut text = head.to_string();
    text.pop();
    text.push_str(r#","body":"#);
    text.push_str(&body_member(headers, body));
    text.push('}');
    RawValue::from_string(text).expect("the command is JSON")
}

/// Percent-decoding (`+` a space when `plus` is true: the query's form encoding). A `%` not
/// followed by two hex digits stays as it is; bytes that are no UTF-8 become U+FFFD.
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `a=1&a=2&b` → `{"a": ["1", "2"], "b": [""]}`; empty pieces (`&&`) are skipped.
fn query_members(query: &str) -> Value {
    let mut members = Map::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let values = members
            .entry(percent_decode(name, true))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(v) = values {
            v.push(Value::String(percent_decode(value, true)));
        }
    }
    Value::Object(members)
}

fn header_members(headers: &HeaderMap, names: &[HeaderName]) -> Value {
    let mut members = Map::new();
    for name in names {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        if !values.is_empty() {
            members.insert(name.as_str().to_owned(), Value::Array(values));
        }
    }
    Value::Object(members)
}

/// The `type/subtype` of the request's (first) `Content-Type`, lower-cased, without
/// parameters; `None` without one.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?;
    let essence = String::from_utf8_lossy(v.as_bytes());
    let essence = essence.split(';').next().unwrap_or("").trim();
    (!essence.is_empty()).then(|| essence.to_ascii_lowercase())
}

/// `application/json` or any `*/*+json`.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || media_type
            .split_once('/')
            .is_some_and(|(_, sub)| sub.ends_with("+json"))
}

/// The body member as JSON text.
fn body_member(headers: &HeaderMap, body: &[u8]) -> String {
    if body.is_empty() {
        return "null".to_owned();
    }
    let media = media_type(headers);
    if let Some(m) = media.as_deref().filter(|m| is_json(m)) {
        // The client's own text once it parses as one JSON value (numbers stay exact). A
        // string holding U+0000 parses, but jsonb cannot hold it: such a body is hashed.
        if let Ok(parsed) = serde_json::from_slice::<&RawValue>(body) {
            if !escapes_nul(parsed.get()) {
                return format!(
                    r#"{{"media_type":{},"json":{}}}"#,
                    Value::from(m),
                    parsed.get()
                );
            }
        }
    }
    json!({"media_type": media, "sha256": sha256_hex(body)}).to_string()
}

/// True when valid JSON text holds the escape `\u0000` (in a string or a member name): the
/// only way U+0000 can be in it, a raw control character being invalid in JSON.
fn escapes_nul(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                return true;
            }
            i += 2; // the escaped character, which may be a backslash
        } else {
            i += 1;
        }
    }
    false
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// The command as a `Value` (for tests whose numbers a `Value` holds exactly).
    fn parsed(c: &RawValue) -> Value {
        serde_json::from_str(c.get()).unwrap()
    }

    #[test]
    fn the_documented_example() {
        let h = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("x-variant", "blue"),
            ("x-other", "ignored"),
        ]);
        let c = parsed(&command(
            &Method::POST,
            "/orders/42/items",
            Some("a=1&b=&a=2"),
            &h,
            &[HeaderName::from_static("x-variant")],
            br#"{"sku": "A-1", "qty": 2}"#,
        ));
        assert_eq!(
            c,
            json!({"v": 1, "method": "POST", "path": "/orders/42/items",
                   "query": {"a": ["1", "2"], "b": [""]},
                   "headers": {"x-variant": ["blue"]},
                   "body": {"media_type": "application/json", "json": {"sku": "A-1", "qty": 2}}})
        );
    }

    #[test]
    fn path_and_query_are_decoded() {
        let c = parsed(&command(
            &Method::PATCH,
            "/a%20b/%C3%A9/%zz/x+y",
            Some("q=a+b%2Bc&&flag&%C3%A9=%E2%82%AC&q=2"),
            &HeaderMap::new(),
            &[],
            b"",
        ));
        assert_eq!(c["path"], json!("/a b/é/%zz/x+y"));
        assert_eq!(
            c["query"],
            json!({"q": ["a b+c", "2"], "flag": [""], "é": ["€"]})
        );
        assert_eq!(c["method"], json!("PATCH"));
        assert_eq!(c["body"], Value::Null);
        assert_eq!(c["headers"], json!({}));
        let none = parsed(&command(
            &Method::POST,
            "/",
            None,
            &HeaderMap::new(),
            &[],
            b"",
        ));
        assert_eq!(none["query"], json!({}));
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%ff", false), "\u{fffd}");
    }

    #[test]
    fn named_headers_keep_their_values_in_order_and_absent_ones_are_left_out() {
        let h = headers(&[("x-variant", "a"), ("x-variant", "b")]);
        let c = parsed(&command(
            &Method::POST,
            "/",
            None,
            &h,
            &[
                HeaderName::from_static("x-variant"),
                HeaderName::from_static("x-absent"),
            ],
            b"",
        ));
        assert_eq!(c["headers"], json!({"x-variant": ["a", "b"]}));
    }

    #[test]
    fn bodies() {
        let body = |ct: Option<&str>, b: &[u8]| {
            let h = match ct {
                Some(ct) => headers(&[("content-type", ct)]),
                None => HeaderMap::new(),
            };
            parsed(&command(&Method::POST, "/", None, &h, &[], b))["body"].clone()
        };
        // JSON media types that parse: the value (spelling is the extension's to canonicalise).
        assert_eq!(
            body(Some("Application/Vnd.Api+JSON"), b"[1, 2]"),
            json!({"media_type": "application/vnd.api+json", "json": [1, 2]})
        );
        assert_eq!(
            body(Some("application/json"), b"null"),
            json!({"media_type": "application/json", "json": null})
        );
        // SHA-256 of "abc".
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            body(Some("application/json"), b"abc"),
            json!({"media_type": "application/json", "sha256": abc})
        );
        assert_eq!(
            body(Some("text/plain; charset=utf-8"), b"abc"),
            json!({"media_type": "text/plain", "sha256": abc})
        );
        assert_eq!(
            body(None, b"abc"),
            json!({"media_type": null, "sha256": abc})
        );
        assert_eq!(
            body(None, b"{}"),
            json!({"media_type": null, "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"})
        );
        // jsonb holds no U+0000: hashed, in a value or a member name, however deep.
        for nul in [&br#"{"a": ["x\u0000"]}"#[..], br#"{"\u0000": 1}"#] {
            let b = body(Some("application/json"), nul);
            assert_eq!(b["media_type"], json!("application/json"));
            assert_eq!(b["sha256"].as_str().map(str::len), Some(64), "{b}");
        }
        assert!(is_json("application/problem+json") && !is_json("application/jsonx"));
        assert!(!is_json("text/json") && !is_json("json"));
    }

    #[test]
    fn json_numbers_stay_the_clients_text() {
        let h = headers(&[("content-type", "application/json")]);
        let text = |b: &[u8]| {
            command(&Method::POST, "/echo", None, &h, &[], b)
                .get()
                .to_owned()
        };
        // A Value would round both to the nearest f64 (12345678901234567891.0 to
        // 12345678901234567168; 123456789012345678901 is over u64). The body member is the
        // command's last, the other members in serde_json's order.
        let big = text(br#"{"amount": 12345678901234567891.0, "over": 123456789012345678901}"#);
        assert!(
            big.ends_with(r#","body":{"media_type":"application/json","json":{"amount": 12345678901234567891.0, "over": 123456789012345678901}}}"#),
            "{big}"
        );
        let members: Value = serde_json::from_str(&big).unwrap();
        assert_eq!(
            (
                &members["v"],
                &members["method"],
                &members["path"],
                &members["query"],
                &members["headers"]
            ),
            (
                &json!(1),
                &json!("POST"),
                &json!("/echo"),
                &json!({}),
                &json!({})
            )
        );
        let spaced = text(b" [12345678901234567890, 1e400, -0.1000000000000000000001]\n");
        assert!(
            spaced
                .ends_with(r#""json":[12345678901234567890, 1e400, -0.1000000000000000000001]}}"#),
            "{spaced}"
        );
        // An escaped backslash before u0000 is no U+0000: the text is kept.
        let kept = text(br#"{"a": "\\u0000"}"#);
        assert!(kept.ends_with(r#""json":{"a": "\\u0000"}}}"#), "{kept}");
        // Not one JSON value, or not UTF-8: hashed.
        for bad in [&b"1 2"[..], b"{\"a\": \"\xff\"}", b"[1,]"] {
            let c = parsed(&command(&Method::POST, "/", None, &h, &[], bad));
            assert_eq!(c["body"]["sha256"].as_str().map(str::len), Some(64), "{c}");
        }
    }
}
