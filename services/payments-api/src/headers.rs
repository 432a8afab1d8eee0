//! The request headers the contract gives meaning to: `Idempotency-Key` (parsed as an RFC 8941
//! structured field, or a Stripe-style bare token), `Authorization: Bearer <tenant>` and
//! `Prefer` (RFC 7240: `respond-async`, `wait=N`).

use axum::http::HeaderMap;

/// Why a request has no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Invalid,
}

pub const MAX_KEY_BYTES: usize = 255;

/// The characters of a bare (Stripe-style) key: `[A-Za-z0-9._~:+/=-]+`.
fn is_bare_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_~:+/=".contains(&b)
}

/// The key of one `Idempotency-Key` field value: an sf-string (`"k-123"`, without parameters)
/// or a bare token. `"k-1"` and `k-1` are the same key. 1 to 255 bytes.
pub fn parse_key_value(raw: &[u8]) -> Result<String, KeyError> {
    let key = match sfv::Parser::new(raw).parse::<sfv::Item>() {
        Ok(item) if item.params.is_empty() && item.bare_item.as_string().is_some() => item
            .bare_item
            .as_string()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        // Anything else the structured-field parser reads (a token, a number, a string with
        // parameters) or refuses is accepted only as a bare key.
        _ => {
            if raw.is_empty() || !raw.iter().all(|&b| is_bare_key_char(b)) {
                return Err(KeyError::Invalid);
            }
            String::from_utf8(raw.to_vec()).map_err(|_| KeyError::Invalid)?
        }
    };
    valid_key(&key).then_some(key).ok_or(KeyError::Invalid)
}

/// A key as the extension may store it: 1 to 255 bytes of visible ASCII or space (what an
/// sf-string can carry).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The request's key: exactly one `Idempotency-Key` field.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, KeyError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(first) = values.next() else {
        return Err(KeyError::Missing);
    };
    if values.next().is_some() {
        return Err(KeyError::Invalid);
    }
    parse_key_value(first.as_bytes())
}

/// The tenant named by `Authorization: Bearer <tenant>`, `[A-Za-z0-9_-]{1,64}`.
pub fn tenant(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all("authorization").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start_matches(' ');
    let ok = (1..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| token.to_owned())
}

/// The preferences this service honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    pub respond_async: bool,
    /// `wait=N` in seconds, capped at [`MAX_WAIT_SECS`].
    pub wait: Option<u64>,
}

pub const MAX_WAIT_SECS: u64 = 10;

/// RFC 7240 `Prefer` fields (any number, comma-separated preferences, parameters after `;`
/// ignored). Preferences that are not understood, or malformed, are ignored, as RFC 7240 says.
pub fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for pref in value.split(',') {
            let pref = pref.split(';').next().unwrap_or("").trim();
            let (name, val) = match pref.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (pref, None),
            };
            if name.eq_ignore_ascii_case("respond-async") && val.is_none() {
                p.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                if let Some(n) = val.and_then(|v| v.parse::<u64>().ok()) {
                    p.wait = Some(n.min(MAX_WAIT_SECS));
                }
            }
        }
    }
    p
}

/// Percent-encodes a key for a path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sf_string_and_bare_token_are_the_same_key() {
        assert_eq!(parse_key_value(b"\"k-1\""), Ok("k-1".into()));
        assert_eq!(parse_key_value(b"k-1"), Ok("k-1".into()));
        assert_eq!(parse_key_value(b"  \"k-1\"  "), Ok("k-1".into()));
    }

    #[test]
    fn accepts_stripe_style_keys_that_are_no_sf_token() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse_key_value(uuid.as_bytes()), Ok(uuid.into()));
        assert_eq!(parse_key_value(b"123"), Ok("123".into()));
        assert_eq!(
            parse_key_value(b"a.b_c~d:e+f/g=h"),
            Ok("a.b_c~d:e+f/g=h".into())
        );
        // An sf byte sequence is spelled with bare-key characters only: it is that bare key.
        assert_eq!(parse_key_value(b":aGVsbG8=:"), Ok(":aGVsbG8=:".into()));
    }

    #[test]
    fn sf_string_may_hold_what_a_bare_key_may_not() {
        assert_eq!(parse_key_value(br#""with space""#), Ok("with space".into()));
        assert_eq!(
            parse_key_value(br#""quote \" and \\""#),
            Ok(r#"quote " and \"#.into())
        );
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"unterminated",
            b"\"k\";a=1",
            b"k;a=1",
            b"a b",
            b"a,b",
            b"*tok",
            b"\"bad \\x escape\"",
            b"?1",
            "\"caf\u{e9}\"".as_bytes(),
            b"k\x01",
        ] {
            assert_eq!(
                parse_key_value(bad),
                Err(KeyError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits_keys_to_255_bytes() {
        let k255 = "a".repeat(255);
        assert_eq!(parse_key_value(k255.as_bytes()), Ok(k255.clone()));
        assert_eq!(parse_key_value(format!("\"{k255}\"").as_bytes()), Ok(k255));
        let k256 = "a".repeat(256);
        assert_eq!(parse_key_value(k256.as_bytes()), Err(KeyError::Invalid));
        assert_eq!(
            parse_key_value(format!("\"{k256}\"").as_bytes()),
            Err(KeyError::Invalid)
        );
    }

    #[test]
    fn header_missing_or_repeated() {
        assert_eq!(idempotency_key(&HeaderMap::new()), Err(KeyError::Missing));
        assert_eq!(
            idempotency_key(&headers("idempotency-key", &["a", "b"])),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            idempotency_key(&headers("idempotency-key", &["\"a\""])),
            Ok("a".into())
        );
    }

    #[test]
    fn bearer_tenant() {
        assert_eq!(
            tenant(&headers("authorization", &["Bearer acme_1-x"])),
            Some("acme_1-x".into())
        );
        assert_eq!(
            tenant(&headers("authorization", &["bearer acme"])),
            Some("acme".into())
        );
        assert_eq!(
            tenant(&headers(
                "authorization",
                &[&format!("Bearer {}", "a".repeat(64))]
            )),
            Some("a".repeat(64))
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic acme",
            "Bearer a.b",
            "Bearer a b",
            "acme",
        ] {
            assert_eq!(tenant(&headers("authorization", &[bad])), None, "{bad}");
        }
        assert_eq!(
            tenant(&headers(
                "authorization",
                &[&format!("Bearer {}", "a".repeat(65))]
            )),
            None
        );
        assert_eq!(tenant(&HeaderMap::new()), None);
    }

    #[test]
    fn prefer_respond_async_and_wait() {
        assert_eq!(prefer(&HeaderMap::new()), Prefer::default());
        assert_eq!(
            prefer(&headers("prefer", &["respond-async"])),
            Prefer {
                respond_async: true,
                wait: None
            }
        );
        assert_eq!(
            prefer(&headers("prefer", &["wait=5"])),
            Prefer {
                respond_async: false,
                wait: Some(5)
            }
        );
        assert_eq!(
            prefer(&headers("prefer", &["respond-async, wait=100"])),
            Prefer {
                respond_async: true,
                wait: Some(10)
            }
        );
        assert_eq!(
            prefer(&headers("prefer", &["handling=lenient", "WAIT = 3; x=y"])),
            Prefer {
                respond_async: false,
                wait: Some(3)
            }
        );
        assert_eq!(
            prefer(&headers("prefer", &["wait=-1, wait=abc"])),
            Prefer::default()
        );
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_segment("k-1._~"), "k-1._~");
        assert_eq!(encode_segment("a/b c\"%"), "a%2Fb%20c%22%25");
    }
}
