//! Structured inputs for the fuzz targets: JSON values and number spellings that PostgreSQL
//! would accept, built from the fuzzer's bytes, and the checks shared by the targets.

#![allow(dead_code)] // each target uses its own part

use idempotency_core::model::Json;
use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// Deep enough to cross several container levels, small enough to keep runs fast.
const MAX_DEPTH: usize = 8;
const MAX_CHILDREN: usize = 40;

/// A number spelling that `numeric_in` accepts: sign, integer and fraction digits, an
/// optional exponent (`e`/`E`, with or without a sign). The exponent stays within
/// PostgreSQL's ±1000 and the scale within its 16383.
pub fn number(u: &mut Unstructured<'_>) -> Result<String> {
    let mut s = String::new();
    if u.ratio(1, 3)? {
        s.push('-');
    }
    let int_len = u.int_in_range(0..=30usize)?;
    if int_len == 0 || u.ratio(1, 4)? {
        s.push('0');
    } else {
        s.push(char::from(b'1' + u.int_in_range(0..=8u8)?));
        for _ in 1..int_len {
            s.push(digit(u)?);
        }
    }
    if u.ratio(1, 2)? {
        s.push('.');
        let frac_len = u.int_in_range(1..=30usize)?;
        for _ in 0..frac_len {
            s.push(digit(u)?);
        }
    }
    if u.ratio(1, 3)? {
        s.push(if u.arbitrary()? { 'e' } else { 'E' });
        match u.int_in_range(0..=2u8)? {
            0 => s.push('+'),
            1 => s.push('-'),
            _ => {}
        }
        let exponent = u.int_in_range(0..=400u16)?;
        s.push_str(&exponent.to_string());
    }
    Ok(s)
}

fn digit(u: &mut Unstructured<'_>) -> Result<char> {
    // Zeros are over-represented: they are what stripping and layout are about.
    Ok(if u.ratio(1, 3)? {
        '0'
    } else {
        char::from(b'0' + u.int_in_range(0..=9u8)?)
    })
}

/// A character from every range that matters to escaping and UTF-16 ordering, never U+0000
/// (jsonb cannot hold it).
fn character(u: &mut Unstructured<'_>) -> Result<char> {
    let c = match u.int_in_range(0..=9u8)? {
        0..=3 => char::from(b'a' + u.int_in_range(0..=3u8)?),
        4 => char::from(u.int_in_range(1..=0x7Fu8)?),
        5 => ['"', '\\', '/', '\u{7f}', '\u{2028}'][u.int_in_range(0..=4usize)?],
        6 => char::from_u32(u.int_in_range(0x80..=0x7FFu32)?).unwrap_or('x'),
        7 => char::from_u32(u.int_in_range(0x800..=0xD7FFu32)?).unwrap_or('x'),
        8 => char::from_u32(u.int_in_range(0xE000..=0xFFFFu32)?).unwrap_or('x'),
        _ => char::from_u32(u.int_in_range(0x10000..=0x10FFFFu32)?).unwrap_or('x'),
    };
    Ok(c)
}

fn string(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let len = u.int_in_range(0..=max)?;
    (0..len).map(|_| character(u)).collect()
}

/// Keys from a small alphabet most of the time, so objects repeat keys and share prefixes.
fn key(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(2, 3)? {
        let len = u.int_in_range(0..=2usize)?;
        (0..len)
            .map(|_| Ok(['a', 'b', '\u{e9}', '\u{ff21}', '\u{1f600}'][u.int_in_range(0..=4usize)?]))
            .collect()
    } else {
        string(u, 12)
    }
}

pub fn json(u: &mut Unstructured<'_>) -> Result<Json> {
    value(u, 0)
}

fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<Json> {
    let kind = if depth >= MAX_DEPTH || u.is_empty() {
        u.int_in_range(0..=3u8)?
    } else {
        u.int_in_range(0..=5u8)?
    };
    Ok(match kind {
        0 => Json::Null,
        1 => Json::Bool(u.arbitrary()?),
        2 => Json::Number(number(u)?),
        3 => Json::String(string(u, 20)?),
        4 => {
            let n = u.int_in_range(0..=MAX_CHILDREN)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                if u.is_empty() {
                    break;
                }
                items.push(value(u, depth + 1)?);
            }
            Json::Array(items)
        }
        _ => {
            let n = u.int_in_range(0..=MAX_CHILDREN)?;
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                if u.is_empty() {
                    break;
                }
                members.push((key(u)?, value(u, depth + 1)?));
            }
            Json::Object(members)
        }
    })
}

/// Every object's members in reverse order (for values without duplicate keys, where the
/// order cannot change which member wins).
pub fn reversed(value: &Json) -> Json {
    match value {
        Json::Array(items) => Json::Array(items.iter().map(reversed).collect()),
        Json::Object(members) => Json::Object(
            members
                .iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
