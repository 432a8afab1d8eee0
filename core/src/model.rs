//! A model of what PostgreSQL stores for a JSON text, so the core can be tested without a
//! database.
//!
//! [`to_jsonb`](crate::model::to_jsonb) follows `jsonb_in` → `convertToJsonb` (jsonb_util.c)
//! and `numeric_in` → `make_result` (numeric.c) step by step and must produce exactly
//! PostgreSQL's bytes; the extension checks that against real datums.
//! [`Json::canonical_text`](crate::model::Json::canonical_text) is a second, deliberately
//! naive implementation of the canonical form that the streaming writer is tested against.
//! Everything here panics on input PostgreSQL would reject: it is test code.

use std::collections::HashSet;
use std::fmt::Write as _;

/// A JSON value as written, duplicates and number spellings included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// Any JSON number spelling: `1.50`, `-0`, `1e1`, `12345678901234567891`.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in the order written; duplicates allowed (the last one wins in jsonb).
    Object(Vec<(String, Json)>),
}

// ---------------------------------------------------------------------------------------
// Parsing JSON text.

/// Parses JSON text, keeping number spellings and duplicate keys. Panics on invalid JSON.
pub fn parse(text: &str) -> Json {
    let mut p = Parser { text, at: 0 };
    let value = p.value();
    p.whitespace();
    assert!(p.at == text.len(), "trailing input at byte {}", p.at);
    value
}

struct Parser<'t> {
    text: &'t str,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &str) {
        assert!(
            self.text[self.at..].starts_with(literal),
            "expected {literal:?} at byte {}",
            self.at
        );
        self.at += literal.len();
    }

    fn value(&mut self) -> Json {
        self.whitespace();
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.whitespace();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Json::Object(members);
                }
                loop {
                    self.whitespace();
                    let key = self.string();
                    self.whitespace();
                    self.expect(":");
                    let value = self.value();
                    members.push((key, value));
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Json::Object(members);
                        }
                        _ => panic!("expected ',' or '}}' at byte {}", self.at),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Json::Array(items);
                }
                loop {
                    items.push(self.value());
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Json::Array(items);
                        }
                        _ => panic!("expected ',' or ']' at byte {}", self.at),
                    }
                }
            }
            Some(b'"') => Json::String(self.string()),
            Some(b't') => {
                self.expect("true");
                Json::Bool(true)
            }
            Some(b'f') => {
                self.expect("false");
                Json::Bool(false)
            }
            Some(b'n') => {
                self.expect("null");
                Json::Null
            }
            Some(b'-' | b'0'..=b'9') => Json::Number(self.number()),
            _ => panic!("unexpected input at byte {}", self.at),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> String {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        if self.peek() == Some(b'0') {
            self.at += 1;
        } else {
            assert!(self.digits() > 0, "expected digits at byte {}", self.at);
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            assert!(self.digits() > 0, "expected fraction at byte {}", self.at);
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            assert!(self.digits() > 0, "expected exponent at byte {}", self.at);
        }
        self.text[start..self.at].to_owned()
    }

    fn hex4(&mut self) -> u32 {
        let hex = self
            .text
            .get(self.at..self.at + 4)
            .expect("short \\u escape");
        self.at += 4;
        u32::from_str_radix(hex, 16).expect("bad \\u escape")
    }

    fn string(&mut self) -> String {
        self.expect("\"");
        let mut out = String::new();
        loop {
            let c = self.text[self.at..]
                .chars()
                .next()
                .expect("unterminated string");
            self.at += c.len_utf8();
            match c {
                '"' => return out,
                '\\' => {
                    let e = self.peek().expect("unterminated escape");
                    self.at += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4();
                            if (0xD800..0xDC00).contains(&code) {
                                self.expect("\\u");
                                let low = self.hex4();
                                assert!((0xDC00..0xE000).contains(&low), "lone surrogate");
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            char::from_u32(code).expect("lone surrogate")
                        }
                        _ => panic!("bad escape at byte {}", self.at),
                    });
                }
                c if (c as u32) < 0x20 => panic!("raw control character in string"),
                c => out.push(c),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing JSON text (any valid JSON; used to feed PostgreSQL the same value).

impl Json {
    /// Compact JSON text with members and number spellings as given.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_quoted(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_text(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_quoted(out, key);
                    out.push(':');
                    value.write_text(out);
                }
                out.push('}');
            }
        }
    }

    /// The same value as jsonb sees it and RFC 8785 orders it: numbers in canonical
    /// spelling, duplicate keys resolved (the last wins), members sorted by UTF-16 keys.
    /// Two values are the same command exactly when their normalized forms are equal.
    pub fn normalized(&self) -> Json {
        match self {
            Json::Number(n) => Json::Number(canonical_number(n)),
            Json::Array(items) => Json::Array(items.iter().map(Json::normalized).collect()),
            Json::Object(members) => {
                let mut seen = HashSet::new();
                let mut kept: Vec<(String, Json)> = members
                    .iter()
                    .rev()
                    .filter(|(key, _)| seen.insert(key.clone()))
                    .map(|(key, value)| (key.clone(), value.normalized()))
                    .collect();
                kept.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
                Json::Object(kept)
            }
            other => other.clone(),
        }
    }

    /// The canonical text, computed the simple way: normalize, then print.
    pub fn canonical_text(&self) -> String {
        let mut out = String::new();
        self.normalized().write_text(&mut out);
        out
    }
}

/// RFC 8785 string escaping, one character at a time.
fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// Numbers as decimal strings.

/// The exact decimal value of a JSON number spelling as `(negative, digits, n)`, meaning
/// `±0.digits × 10^n`, with digits free of leading and trailing zeros (empty for zero, which
/// is never negative).
pub fn exact_decimal(spelling: &str) -> (bool, String, i64) {
    let (negative, rest) = match spelling.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, spelling),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (
            &rest[..at],
            rest[at + 1..].parse::<i64>().expect("bad exponent"),
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = [int, frac].concat();
    let lead = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0').to_owned();
    if digits.is_empty() {
        return (false, digits, 0);
    }
    (negative, digits, int.len() as i64 - lead as i64 + exponent)
}

/// ECMA-262 `Number::toString` layout of `±0.digits × 10^n`.
pub fn js_layout(negative: bool, digits: &str, n: i64) -> String {
    if digits.is_empty() {
        return "0".to_owned();
    }
    let k = digits.len() as i64;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(-n as usize))
    } else {
        let mantissa = if k == 1 {
            digits.to_owned()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let e = n - 1;
        format!("{mantissa}e{}{}", if e < 0 { '-' } else { '+' }, e.abs())
    };
    if negative {
        format!("-{body}")
    } else {
        body
    }
}

/// The canonical text of one number spelling.
pub fn canonical_number(spelling: &str) -> String {
    let (negative, digits, n) = exact_decimal(spelling);
    js_layout(negative, &digits, n)
}

// ---------------------------------------------------------------------------------------
// numeric_in + make_result.

const DEC_DIGITS: i64 = 4;

/// The numeric varlena (4-byte header included) that `numeric_in` stores for a spelling.
/// Panics where PostgreSQL reports "value overflows numeric format".
pub fn numeric_varlena(spelling: &str) -> Vec<u8> {
    let bytes = spelling.as_bytes();
    let mut i = 0;
    let mut negative = false;
    match bytes.first() {
        Some(b'+') => i += 1,
        Some(b'-') => {
            negative = true;
            i += 1;
        }
        _ => {}
    }
    // set_var_from_str: decimal digits with DEC_DIGITS zeros of padding in front.
    let mut have_dp = false;
    let mut dweight: i64 = -1;
    let mut dscale: i64 = 0;
    let mut dec: Vec<i64> = vec![0; DEC_DIGITS as usize];
    while let Some(&c) = bytes.get(i) {
        match c {
            b'0'..=b'9' => {
                dec.push(i64::from(c - b'0'));
                if have_dp {
                    dscale += 1;
                } else {
                    dweight += 1;
                }
            }
            b'.' => {
                assert!(!have_dp, "two decimal points in {spelling:?}");
                have_dp = true;
            }
            _ => break,
        }
        i += 1;
    }
    let ddigits = dec.len() as i64 - DEC_DIGITS;
    assert!(ddigits > 0, "no digits in {spelling:?}");
    dec.extend([0; DEC_DIGITS as usize - 1]);
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let exponent: i64 = spelling[i + 1..]
            .trim_start_matches('+')
            .parse()
            .expect("bad exponent");
        i = bytes.len();
        dweight += exponent;
        dscale = (dscale - exponent).max(0);
    }
    assert!(i == bytes.len(), "trailing input in {spelling:?}");

    let mut weight = if dweight >= 0 {
        (dweight + 1 + DEC_DIGITS - 1) / DEC_DIGITS - 1
    } else {
        -((-dweight - 1) / DEC_DIGITS + 1)
    };
    let offset = (weight + 1) * DEC_DIGITS - (dweight + 1);
    let ndigits = (ddigits + offset + DEC_DIGITS - 1) / DEC_DIGITS;
    let at = |k: i64| dec.get(k as usize).copied().unwrap_or(0);
    let mut digits: Vec<i64> = (0..ndigits)
        .map(|g| {
            let k = DEC_DIGITS - offset + g * DEC_DIGITS;
            ((at(k) * 10 + at(k + 1)) * 10 + at(k + 2)) * 10 + at(k + 3)
        })
        .collect();

    // strip_var, then make_result (which strips again and forces zero positive).
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
        negative = false;
    }
    let short = dscale <= 63 && (-64..=63).contains(&weight);
    let mut out = Vec::new();
    let size = if short { 6 } else { 8 } + 2 * digits.len();
    out.extend(((size as u32) << 2).to_le_bytes());
    if short {
        let n_header: u16 = 0x8000
            | if negative { 0x2000 } else { 0 }
            | ((dscale as u16) << 7)
            | if weight < 0 { 0x0040 } else { 0 }
            | (weight as u16 & 0x003F);
        out.extend(n_header.to_le_bytes());
    } else {
        assert!(
            dscale <= 0x3FFF && i16::try_from(weight).is_ok(),
            "value overflows numeric format: {spelling:?}"
        );
        let sign_dscale: u16 = if negative { 0x4000 } else { 0 } | dscale as u16;
        out.extend(sign_dscale.to_le_bytes());
        out.extend((weight as i16).to_le_bytes());
    }
    for d in digits {
        out.extend((d as u16).to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------
// convertToJsonb.

const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
/// JB_OFFSET_STRIDE: every 32nd JEntry holds an end offset instead of a length.
pub const JB_OFFSET_STRIDE: usize = 32;

/// The bytes PostgreSQL stores for this value, without the datum's varlena header.
pub fn to_jsonb(value: &Json) -> Vec<u8> {
    to_jsonb_with_stride(value, JB_OFFSET_STRIDE)
}

/// [`to_jsonb`] with another offset stride (1: every JEntry an offset; `usize::MAX`: only
/// the first), to check that the reader follows the flags rather than the stride.
pub fn to_jsonb_with_stride(value: &Json, stride: usize) -> Vec<u8> {
    // Keep room for the varlena header so padding falls where PostgreSQL's does.
    let mut buf = vec![0u8; 4];
    match value {
        Json::Array(items) => convert_array(&mut buf, items, false, stride),
        Json::Object(members) => convert_object(&mut buf, members, stride),
        scalar => convert_array(&mut buf, std::slice::from_ref(scalar), true, stride),
    };
    buf.split_off(4)
}

fn pad_to_int(buf: &mut Vec<u8>) -> u32 {
    let pad = (4 - buf.len() % 4) % 4;
    buf.resize(buf.len() + pad, 0);
    pad as u32
}

fn checked_len(len: usize) -> u32 {
    assert!(
        len <= JENTRY_OFFLENMASK as usize,
        "total size exceeds the maximum"
    );
    len as u32
}

fn convert_value(buf: &mut Vec<u8>, value: &Json, stride: usize) -> u32 {
    match value {
        Json::Null => JENTRY_ISNULL,
        Json::Bool(false) => JENTRY_ISBOOL_FALSE,
        Json::Bool(true) => JENTRY_ISBOOL_TRUE,
        Json::String(s) => convert_string(buf, s),
        Json::Number(n) => {
            let numeric = numeric_varlena(n);
            let pad = pad_to_int(buf);
            buf.extend(&numeric);
            JENTRY_ISNUMERIC | (pad + checked_len(numeric.len()))
        }
        Json::Array(items) => convert_array(buf, items, false, stride),
        Json::Object(members) => convert_object(buf, members, stride),
    }
}

fn convert_string(buf: &mut Vec<u8>, s: &str) -> u32 {
    assert!(!s.contains('\0'), "jsonb cannot hold U+0000");
    buf.extend(s.as_bytes());
    checked_len(s.len())
}

fn set_entry(buf: &mut [u8], at: usize, entry: u32) {
    buf[at..at + 4].copy_from_slice(&entry.to_le_bytes());
}

/// Adds a child's JEntry to the running total, turning it into an end offset where the
/// stride says so (convertJsonbArray / convertJsonbObject).
fn place_entry(buf: &mut [u8], at: usize, meta: u32, index: usize, total: &mut u32, stride: usize) {
    *total = checked_len((*total + (meta & JENTRY_OFFLENMASK)) as usize);
    let meta = if index.is_multiple_of(stride) {
        (meta & JENTRY_TYPEMASK) | *total | JENTRY_HAS_OFF
    } else {
        meta
    };
    set_entry(buf, at, meta);
}

fn convert_array(buf: &mut Vec<u8>, items: &[Json], raw_scalar: bool, stride: usize) -> u32 {
    let base = buf.len();
    pad_to_int(buf);
    let mut header = items.len() as u32 | JB_FARRAY;
    if raw_scalar {
        header |= JB_FSCALAR;
    }
    buf.extend(header.to_le_bytes());
    let entries = buf.len();
    buf.resize(entries + 4 * items.len(), 0);
    let mut total = 0;
    for (i, item) in items.iter().enumerate() {
        let meta = convert_value(buf, item, stride);
        place_entry(buf, entries + 4 * i, meta, i, &mut total, stride);
    }
    JENTRY_ISCONTAINER | checked_len(buf.len() - base)
}

fn convert_object(buf: &mut Vec<u8>, members: &[(String, Json)], stride: usize) -> u32 {
    // uniqueifyJsonbObject: sort by key length, then bytes, the later of equal keys first,
    // and keep the first of each run: the last one written wins.
    let mut pairs: Vec<(usize, &str, &Json)> = members
        .iter()
        .enumerate()
        .map(|(order, (key, value))| (order, key.as_str(), value))
        .collect();
    pairs.sort_by(|a, b| {
        (a.1.len(), a.1.as_bytes())
            .cmp(&(b.1.len(), b.1.as_bytes()))
            .then(b.0.cmp(&a.0))
    });
    pairs.dedup_by(|later, kept| later.1 == kept.1);

    let n = pairs.len();
    let base = buf.len();
    pad_to_int(buf);
    buf.extend((n as u32 | JB_FOBJECT).to_le_bytes());
    let entries = buf.len();
    buf.resize(entries + 8 * n, 0);
    let mut total = 0;
    for (i, (_, key, _)) in pairs.iter().enumerate() {
        let meta = convert_string(buf, key);
        place_entry(buf, entries + 4 * i, meta, i, &mut total, stride);
    }
    for (i, (_, _, value)) in pairs.iter().enumerate() {
        let meta = convert_value(buf, value, stride);
        place_entry(buf, entries + 4 * (n + i), meta, n + i, &mut total, stride);
    }
    JENTRY_ISCONTAINER | checked_len(buf.len() - base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_in_stores_five_in_short_format() {
        // 4-byte varlena header (size 8), n_header 0x8000, one digit 5.
        assert_eq!(numeric_varlena("5"), [0x20, 0, 0, 0, 0x00, 0x80, 5, 0]);
    }

    #[test]
    fn numeric_in_keeps_dscale_as_written() {
        // 1.50: weight 0, dscale 2, digits [1, 5000].
        assert_eq!(
            numeric_varlena("1.50"),
            [0x28, 0, 0, 0, 0x00, 0x81, 1, 0, 0x88, 0x13]
        );
        // 1.5e-3: dscale 4, weight -1 (0x7F in the short weight field), digit 15.
        assert_eq!(
            numeric_varlena("1.5e-3"),
            [0x20, 0, 0, 0, 0x7F, 0x82, 15, 0]
        );
        // 1e1 has dscale 0; -0 and 0.00 are positive zero.
        assert_eq!(numeric_varlena("1e1"), [0x20, 0, 0, 0, 0x00, 0x80, 10, 0]);
        assert_eq!(numeric_varlena("-0"), [0x18, 0, 0, 0, 0x00, 0x80]);
        assert_eq!(numeric_varlena("-0.00"), [0x18, 0, 0, 0, 0x00, 0x81]);
    }

    #[test]
    fn numeric_in_uses_long_format_past_short_limits() {
        // 1e300: weight 75 does not fit the short format's 6 bits.
        assert_eq!(
            numeric_varlena("1e300"),
            [0x28, 0, 0, 0, 0x00, 0x00, 75, 0, 1, 0]
        );
        // -1e-64 written with dscale 64 > 63.
        assert_eq!(
            numeric_varlena("-1e-64"),
            [0x28, 0, 0, 0, 64, 0x40, 0xF0, 0xFF, 1, 0]
        );
    }

    #[test]
    fn to_jsonb_stores_raw_scalar_as_one_element_array() {
        assert_eq!(
            to_jsonb(&parse("5")),
            [1, 0, 0, 0x50, 8, 0, 0, 0x90, 0x20, 0, 0, 0, 0, 0x80, 5, 0]
        );
    }

    #[test]
    fn to_jsonb_sorts_keys_by_length_then_bytes_and_keeps_last_duplicate() {
        let bytes = to_jsonb(&parse(r#"{"bb":null,"a":true,"bb":false}"#));
        assert_eq!(
            bytes,
            [
                2, 0, 0, 0x20, // object, two pairs
                1, 0, 0, 0x80, // "a": end offset 1
                2, 0, 0, 0, // "bb": length 2
                0, 0, 0, 0x30, // true
                0, 0, 0, 0x20, // false (the later "bb")
                b'a', b'b', b'b',
            ]
        );
    }

    #[test]
    fn to_jsonb_pads_numerics_and_containers_to_int_boundaries() {
        let bytes = to_jsonb(&parse(r#"["x",1,[]]"#));
        assert_eq!(
            bytes,
            [
                3, 0, 0, 0x40, // array of three
                1, 0, 0, 0x80, // "x": end offset 1
                11, 0, 0, 0x10, // numeric: 3 padding + 8
                4, 0, 0, 0x50, // container: 0 padding + 4
                b'x', 0, 0, 0, // "x" and padding
                0x20, 0, 0, 0, 0x00, 0x80, 1, 0, // numeric 1
                0, 0, 0, 0x40, // empty array
            ]
        );
    }

    #[test]
    fn exact_decimal_strips_zeros_and_finds_exponent() {
        assert_eq!(exact_decimal("0.00120e2"), (false, "12".into(), 0));
        assert_eq!(exact_decimal("-120"), (true, "12".into(), 3));
        assert_eq!(exact_decimal("-0.0"), (false, String::new(), 0));
    }
}
