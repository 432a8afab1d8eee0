//! The request headers the extension's HTTP use gives meaning to, parsed from their raw field
//! values (any framework hands them over as bytes): `Idempotency-Key` (an RFC 8941 sf-string or
//! a Stripe-style bare token) and `Prefer` (RFC 7240: `respond-async`, `wait=N`).

/// Why a request has no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No `Idempotency-Key` field.
    Missing,
    /// More than one field, or a value that is neither form, or a key out of its limits.
    Invalid,
}

pub const MAX_KEY_BYTES: usize = 255;

/// The characters of a bare (Stripe-style) key: `[A-Za-z0-9._~:+/=-]+`.
fn is_bare_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_~:+/=".contains(&b)
}

/// An RFC 8941 sf-string, the whole of `raw`: `"` then printable ASCII with `\"` and `\\` as
/// the only escapes, then `"`. `None` for anything else (parameters after it included: a key
/// has none).
fn sf_string(raw: &[u8]) -> Option<String> {
    let inner = raw.strip_prefix(b"\"")?;
    let mut out = String::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' => return bytes.as_slice().is_empty().then_some(out),
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e as char),
                _ => return None,
            },
            0x20..=0x7e => out.push(b as char),
            _ => return None,
        }
    }
    None
}

/// The key of one `Idempotency-Key` field value: an sf-string (`"k-123"`, without parameters)
/// or a bare token. `"k-1"` and `k-1` are the same key. 1 to 255 bytes. Spaces around an
/// sf-string are ignored (RFC 8941's parsing); a bare key is taken as it is.
pub fn parse_key_value(raw: &[u8]) -> Result<String, KeyError> {
    let start = raw.iter().position(|&b| b != b' ').unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let trimmed = &raw[start..end];
    let key = if trimmed.starts_with(b"\"") {
        sf_string(trimmed).ok_or(KeyError::Invalid)?
    } else {
        if raw.is_empty() || !raw.iter().all(|&b| is_bare_key_char(b)) {
            return Err(KeyError::Invalid);
        }
        // Only ASCII: the bytes are the string.
        raw.iter().map(|&b| b as char).collect()
    };
    valid_key(&key).then_some(key).ok_or(KeyError::Invalid)
}

/// A key as the extension may store it: 1 to 255 bytes of visible ASCII or space (what an
/// sf-string can carry).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The request's key from the values of its `Idempotency-Key` fields: exactly one field.
pub fn idempotency_key<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<String, KeyError> {
    let mut values = values.into_iter();
    let Some(first) = values.next() else {
        return Err(KeyError::Missing);
    };
    if values.next().is_some() {
        return Err(KeyError::Invalid);
    }
    parse_key_value(first)
}

/// [`idempotency_key`] of a request's headers.
#[cfg(feature = "axum")]
pub fn idempotency_key_of(headers: &http::HeaderMap) -> Result<String, KeyError> {
    idempotency_key(
        headers
            .get_all("idempotency-key")
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// [`prefer`] of a request's headers.
#[cfg(feature = "axum")]
pub fn prefer_of(headers: &http::HeaderMap, max_wait_secs: u64) -> Prefer {
    prefer(
        headers.get_all("prefer").iter().map(|v| v.as_bytes()),
        max_wait_secs,
    )
}

/// The preferences honoured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    pub respond_async: bool,
    /// `wait=N` in seconds, capped at the caller's maximum.
    pub wait: Option<u64>,
}

/// RFC 7240 `Prefer` fields (any number, comma-separated preferences, parameters after `;`
/// ignored), `wait` capped at `max_wait_secs`. Preferences that are not understood, or
/// malformed, are ignored, as RFC 7240 says.
pub fn prefer<'a>(values: impl IntoIterator<Item = &'a [u8]>, max_wait_secs: u64) -> Prefer {
    let mut p = Prefer::default();
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
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
                    p.wait = Some(n.min(max_wait_secs));
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

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
            b"\"k\"x",
            b"\"a\" \"b\"",
            b"k;a=1",
            b"a b",
            b" k",
            b"a,b",
            b"*tok",
            b"\"bad \\x escape\"",
            b"\"trailing \\\"",
            b"?1",
            "\"caf\u{e9}\"".as_bytes(),
            "caf\u{e9}".as_bytes(),
            b"\"tab\there\"",
            b"\t\"k\"",
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
        assert_eq!(idempotency_key([]), Err(KeyError::Missing));
        assert_eq!(
            idempotency_key([&b"a"[..], &b"b"[..]]),
            Err(KeyError::Invalid)
        );
        assert_eq!(idempotency_key([&b"\"a\""[..]]), Ok("a".into()));
    }

    fn p(values: &[&str]) -> Prefer {
        prefer(values.iter().map(|v| v.as_bytes()), 10)
    }

    #[test]
    fn prefer_respond_async_and_wait() {
        assert_eq!(p(&[]), Prefer::default());
        assert_eq!(
            p(&["respond-async"]),
            Prefer {
                respond_async: true,
                wait: None
            }
        );
        assert_eq!(
            p(&["wait=5"]),
            Prefer {
                respond_async: false,
                wait: Some(5)
            }
        );
        assert_eq!(
            p(&["respond-async, wait=100"]),
            Prefer {
                respond_async: true,
                wait: Some(10)
            }
        );
        assert_eq!(
            p(&["handling=lenient", "WAIT = 3; x=y"]),
            Prefer {
                respond_async: false,
                wait: Some(3)
            }
        );
        assert_eq!(
            p(&["wait=-1, wait=abc", "respond-async=1"]),
            Prefer::default()
        );
        assert_eq!(prefer([&b"wait=100"[..]], 30).wait, Some(30));
    }
}
