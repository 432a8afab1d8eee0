//! The canonical text of a jsonb value: what the fingerprint is taken over.
//!
//! RFC 8785 (JCS) structure: no whitespace, object members sorted by key as UTF-16 code
//! units, arrays in order, JCS string escaping, and numbers as their exact decimal value in
//! ECMAScript layout ([`crate::numeric`]). The writer walks the jsonb with an explicit
//! stack, so nesting depth costs heap, never call stack, and it streams into a [`Sink`] so
//! the fingerprint never holds the whole text. This form is frozen once released: a record
//! written by one version must compare equal under every later one.

use std::cmp::Ordering;

use crate::jsonb::{self, Children, Container, FormatError, FormatErrorKind, Member, Value};

/// Where canonical text goes: a `Vec<u8>`, or a hasher.
pub trait Sink {
    fn write(&mut self, bytes: &[u8]);

    /// One byte of punctuation; sinks override it to avoid a copy call per comma.
    #[inline]
    fn write_byte(&mut self, byte: u8) {
        self.write(&[byte]);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn write_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

/// The canonical text of a jsonb datum (given without its varlena header).
pub fn canonical(jsonb: &[u8]) -> Result<Vec<u8>, FormatError> {
    // The text is rarely much longer than the binary form, which also carries JEntries.
    let mut out = Vec::with_capacity(jsonb.len() + 16);
    write_canonical(jsonb, &mut out)?;
    Ok(out)
}

enum Frame<'a> {
    Array {
        children: Children<'a>,
        written: usize,
    },
    /// The object's members sit in the scratch vector at `base..base + len`, sorted.
    Object {
        container: Container<'a>,
        base: usize,
        len: usize,
        next: usize,
    },
}

/// Writes the canonical text of a jsonb datum into `sink`. On error the sink holds a
/// prefix of the text, which the caller must discard.
pub fn write_canonical<S: Sink + ?Sized>(jsonb: &[u8], sink: &mut S) -> Result<(), FormatError> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    // Members of every object on the stack, innermost last: one allocation reused by all.
    let mut members: Vec<Member<'_>> = Vec::new();
    open(jsonb::root(jsonb)?, sink, &mut stack, &mut members)?;
    while let Some(frame) = stack.last_mut() {
        let value = match frame {
            Frame::Array { children, written } => match children.next() {
                None => {
                    sink.write_byte(b']');
                    stack.pop();
                    continue;
                }
                Some(child) => {
                    if *written > 0 {
                        sink.write_byte(b',');
                    }
                    *written += 1;
                    child?
                }
            },
            Frame::Object {
                container,
                base,
                len,
                next,
            } => {
                if *next == *len {
                    sink.write_byte(b'}');
                    members.truncate(*base);
                    stack.pop();
                    continue;
                }
                if *next > 0 {
                    sink.write_byte(b',');
                }
                let member = members.get(*base + *next).copied();
                *next += 1;
                let Some(member) = member else {
                    // The frame's range is always inside `members`; never reached.
                    return Err(FormatError::new(0, FormatErrorKind::Truncated));
                };
                write_string(member.key, sink);
                sink.write_byte(b':');
                container.value(member.value)?
            }
        };
        open(value, sink, &mut stack, &mut members)?;
    }
    Ok(())
}

/// Writes a scalar, or the opening bracket of a container and pushes its frame.
fn open<'a, S: Sink + ?Sized>(
    value: Value<'a>,
    sink: &mut S,
    stack: &mut Vec<Frame<'a>>,
    members: &mut Vec<Member<'a>>,
) -> Result<(), FormatError> {
    match value {
        Value::Null => sink.write(b"null"),
        Value::Bool(true) => sink.write(b"true"),
        Value::Bool(false) => sink.write(b"false"),
        Value::String(s) => write_string(s, sink),
        Value::Number(n) => n.write(sink),
        Value::Array(container) => {
            sink.write_byte(b'[');
            stack.push(Frame::Array {
                children: container.children(),
                written: 0,
            });
        }
        Value::Object(container) => {
            sink.write_byte(b'{');
            let base = members.len();
            container.members_into(members)?;
            let own = members.get_mut(base..).unwrap_or_default();
            // jsonb keeps keys sorted by length, then bytes; JCS wants UTF-16 order.
            own.sort_unstable_by(|a, b| compare_keys(a.key, b.key));
            if own.windows(2).any(|w| w[0].key == w[1].key) {
                return Err(FormatError::new(
                    container.offset(),
                    FormatErrorKind::DuplicateKey,
                ));
            }
            stack.push(Frame::Object {
                container,
                base,
                len: own.len(),
                next: 0,
            });
        }
    }
    Ok(())
}

/// Compares two keys (valid UTF-8) as sequences of UTF-16 code units, as RFC 8785 sorts
/// them.
///
/// UTF-8 byte order is code point order, and UTF-16 order differs from it only where a
/// character at or above U+10000 (a surrogate pair, 0xD800..) meets one in U+E000..U+FFFF.
/// The first differing byte of two valid UTF-8 strings is either inside one character
/// (both bytes are continuation bytes of the same lead byte, so the order is right) or at
/// the start of two different characters, whose lead bytes tell those two ranges apart:
/// 0xEE–0xEF begin U+E000..U+FFFF, 0xF0–0xF4 begin U+10000 and above.
pub fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let (x, y) = (a[i], b[i]);
    let high_bmp = |c: u8| (0xEE..=0xEF).contains(&c);
    let supplementary = |c: u8| c >= 0xF0;
    if high_bmp(x) && supplementary(y) {
        Ordering::Greater
    } else if supplementary(x) && high_bmp(y) {
        Ordering::Less
    } else {
        x.cmp(&y)
    }
}

/// 0: written as is; otherwise the byte after the backslash, or b'u' for `\u00xx`.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = b'u';
        c += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether any byte of an 8-byte word is `"`, `\` or below 0x20. The classic
/// has-zero-byte tricks: no false negatives, and a false positive only costs the slow path.
fn may_need_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash) & HIGHS != 0
}

/// Writes a JSON string with RFC 8785's escaping: only `"`, `\` and U+0000..U+001F are
/// escaped, the six with short forms use them, the rest `\u00xx` in lower case.
fn write_string<S: Sink + ?Sized>(bytes: &[u8], sink: &mut S) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    sink.write_byte(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Most text needs no escaping: skip it a word at a time.
        if let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            if !may_need_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape = ESCAPE[b as usize];
        if escape != 0 {
            sink.write(&bytes[run_start..i]);
            if escape == b'u' {
                sink.write(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xF) as usize],
                ]);
            } else {
                sink.write(&[b'\\', escape]);
            }
            run_start = i + 1;
        }
        i += 1;
    }
    sink.write(&bytes[run_start..]);
    sink.write_byte(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_keys_orders_surrogate_pairs_before_high_bmp() {
        assert_eq!(
            compare_keys("\u{1F600}".as_bytes(), "\u{FB33}".as_bytes()),
            Ordering::Less
        );
        assert_eq!(
            compare_keys("\u{FB33}".as_bytes(), "\u{1F600}".as_bytes()),
            Ordering::Greater
        );
        assert_eq!(
            compare_keys("\u{E000}".as_bytes(), "\u{10000}".as_bytes()),
            Ordering::Greater
        );
        assert_eq!(
            compare_keys("a\u{1F600}".as_bytes(), "a\u{FFFF}".as_bytes()),
            Ordering::Less
        );
    }

    #[test]
    fn compare_keys_orders_prefix_first() {
        assert_eq!(
            compare_keys("ab".as_bytes(), "abc".as_bytes()),
            Ordering::Less
        );
        assert_eq!(compare_keys("".as_bytes(), "a".as_bytes()), Ordering::Less);
        assert_eq!(
            compare_keys("abc".as_bytes(), "abc".as_bytes()),
            Ordering::Equal
        );
    }

    #[test]
    fn word_scan_finds_every_byte_that_needs_escaping() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = special;
                assert!(
                    may_need_escape(u64::from_le_bytes(word)),
                    "{special:#x} at {at}"
                );
            }
        }
        for plain in (0x20u8..=0xFF).filter(|&b| b != b'"' && b != b'\\') {
            assert!(
                !may_need_escape(u64::from_le_bytes([plain; 8])),
                "{plain:#x}"
            );
        }
    }

    #[test]
    fn write_string_escapes_per_rfc_8785() {
        let mut out = Vec::new();
        write_string(
            "\"\\\u{8}\t\n\u{c}\r\u{0}\u{1f}\u{7f}\u{2028}é".as_bytes(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"\\\"\\\\\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}\u{2028}é\""
        );
    }
}
