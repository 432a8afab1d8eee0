//! The request headers only this service gives meaning to: `Authorization: Bearer <tenant>`,
//! and the key as a path segment. `Idempotency-Key` and `Prefer` are parsed by
//! `idempotency_client::headers`; the extractors (extract.rs) use both.

use axum::http::HeaderMap;

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
    fn encodes_path_segments() {
        assert_eq!(encode_segment("k-1._~"), "k-1._~");
        assert_eq!(encode_segment("a/b c\"%"), "a%2Fb%20c%22%25");
    }
}
