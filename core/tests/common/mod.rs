//! Helpers shared by the integration tests: the path from JSON text to canonical text,
//! proptest strategies for JSON values, and edits that keep or change a value's meaning.

#![allow(dead_code)] // each test file uses its own part of this module

use idempotency_core::model::{self, Json};
use idempotency_core::{canonical, fingerprint};
use proptest::prelude::*;

/// JSON text → PostgreSQL's jsonb bytes (the model) → canonical text.
pub fn canon(text: &str) -> String {
    canon_json(&model::parse(text))
}

pub fn canon_json(value: &Json) -> String {
    let bytes = canonical(&model::to_jsonb(value)).expect("model jsonb is well formed");
    String::from_utf8(bytes).expect("canonical text is UTF-8")
}

pub fn fingerprint_json(value: &Json) -> [u8; 32] {
    fingerprint(&model::to_jsonb(value)).expect("model jsonb is well formed")
}

// ---------------------------------------------------------------------------------------
// Strategies.

/// Any JSON number spelling whose value PostgreSQL can store.
pub fn arb_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?",
        "-?(0|[1-9][0-9]{0,2})",
        "-?0\\.0{0,8}[1-9]",
    ]
}

/// Characters from every range that matters to escaping and UTF-16 ordering; never
/// U+0000, which jsonb cannot hold.
pub fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'e'),
        2 => proptest::char::range('\u{1}', '\u{7f}'),
        1 => Just('"'),
        1 => Just('\\'),
        1 => proptest::char::range('\u{80}', '\u{7ff}'),
        1 => proptest::char::range('\u{800}', '\u{d7ff}'),
        2 => proptest::char::range('\u{e000}', '\u{ffff}'),
        2 => proptest::char::range('\u{10000}', '\u{10ffff}'),
    ]
}

pub fn arb_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(arb_char(), 0..24).prop_map(|chars| chars.into_iter().collect())
}

/// Keys from a small alphabet, so that objects often repeat and share prefixes.
pub fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c]{0,2}",
        1 => proptest::collection::vec(
            prop_oneof![Just('a'), Just('\u{e9}'), Just('\u{ff21}'), Just('\u{1f600}')],
            0..3
        )
        .prop_map(|chars| chars.into_iter().collect()),
        1 => arb_string(),
    ]
}

pub fn arb_scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        arb_number().prop_map(Json::Number),
        arb_string().prop_map(Json::String),
    ]
}

pub fn arb_json() -> impl Strategy<Value = Json> {
    arb_scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((arb_key(), inner), 0..6).prop_map(Json::Object),
        ]
    })
}

/// Arrays and objects with more children than the offset stride (32).
pub fn arb_wide_json() -> impl Strategy<Value = Json> {
    prop_oneof![
        proptest::collection::vec(arb_scalar(), 30..80).prop_map(Json::Array),
        proptest::collection::vec((arb_key(), arb_scalar()), 30..80).prop_map(Json::Object),
        proptest::collection::vec((arb_string(), arb_small_json()), 30..50).prop_map(Json::Object),
        proptest::collection::vec(arb_small_json(), 30..50).prop_map(Json::Array),
    ]
}

/// Shallow values, so wide containers also hold containers past the stride.
pub fn arb_small_json() -> impl Strategy<Value = Json> {
    arb_scalar().prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            proptest::collection::vec((arb_key(), inner), 0..4).prop_map(Json::Object),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// Edits.

/// A small deterministic generator, seeded by proptest.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded(seed)
    }

    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// The value with duplicate keys resolved as jsonb does (the last wins), members kept in
/// the order of their last occurrence.
pub fn without_duplicates(value: &Json) -> Json {
    match value {
        Json::Array(items) => Json::Array(items.iter().map(without_duplicates).collect()),
        Json::Object(members) => {
            let mut kept: Vec<(String, Json)> = Vec::new();
            for (i, (key, v)) in members.iter().enumerate() {
                if !members[i + 1..].iter().any(|(k, _)| k == key) {
                    kept.push((key.clone(), without_duplicates(v)));
                }
            }
            Json::Object(kept)
        }
        other => other.clone(),
    }
}

/// Every object's members in a random order.
pub fn shuffle_members(value: &Json, rng: &mut Seeded) -> Json {
    match value {
        Json::Array(items) => Json::Array(items.iter().map(|v| shuffle_members(v, rng)).collect()),
        Json::Object(members) => {
            let mut members: Vec<(String, Json)> = members
                .iter()
                .map(|(k, v)| (k.clone(), shuffle_members(v, rng)))
                .collect();
            for i in (1..members.len()).rev() {
                members.swap(i, rng.below(i + 1));
            }
            Json::Object(members)
        }
        other => other.clone(),
    }
}

/// Another spelling of the same number: moved decimal point, extra zeros, exponent forms.
pub fn respell(spelling: &str, rng: &mut Seeded) -> String {
    let (negative, digits, n) = model::exact_decimal(spelling);
    if digits.is_empty() {
        let zeros = [
            "0", "-0", "0.0", "-0.000", "0e5", "0E-3", "-0.0e+2", "0.00E0",
        ];
        return zeros[rng.below(zeros.len())].to_owned();
    }
    let k = digits.len() as i64;
    // value = digits × 10^(n - k) = mantissa × 10^e
    let e = n - k - 5 + rng.below(11 + k as usize) as i64;
    let shift = n - k - e;
    let mut mantissa = if shift >= 0 {
        format!("{digits}{}", "0".repeat(shift as usize))
    } else {
        let p = (-shift) as usize;
        if p < digits.len() {
            format!(
                "{}.{}",
                &digits[..digits.len() - p],
                &digits[digits.len() - p..]
            )
        } else {
            format!("0.{}{digits}", "0".repeat(p - digits.len()))
        }
    };
    let extra_zeros = rng.below(4);
    if extra_zeros > 0 {
        if !mantissa.contains('.') {
            mantissa.push('.');
        }
        mantissa.push_str(&"0".repeat(extra_zeros));
    }
    let exponent = match (e, rng.below(3)) {
        (0, 0) => String::new(),
        (e, 0) => format!("e{e}"),
        (e, 1) => format!("E{e}"),
        (e, _) if e >= 0 => format!("e+{e}"),
        (e, _) => format!("E{e}"),
    };
    format!("{}{mantissa}{exponent}", if negative { "-" } else { "" })
}

pub fn respell_numbers(value: &Json, rng: &mut Seeded) -> Json {
    match value {
        Json::Number(n) => Json::Number(respell(n, rng)),
        Json::Array(items) => Json::Array(items.iter().map(|v| respell_numbers(v, rng)).collect()),
        Json::Object(members) => Json::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), respell_numbers(v, rng)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Adds, before every object's members, a member with the same key as a random existing
/// one and another value: jsonb keeps the later one, so the value does not change.
pub fn add_earlier_duplicates(value: &Json, rng: &mut Seeded) -> Json {
    match value {
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| add_earlier_duplicates(v, rng))
                .collect(),
        ),
        Json::Object(members) => {
            let mut out: Vec<(String, Json)> = Vec::new();
            if !members.is_empty() {
                let key = members[rng.below(members.len())].0.clone();
                out.push((key, Json::String("shadowed".into())));
            }
            out.extend(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), add_earlier_duplicates(v, rng))),
            );
            Json::Object(out)
        }
        other => other.clone(),
    }
}

/// Visits every node in pre-order; `f` returns true once it has made its edit.
pub fn edit_nodes(value: &mut Json, f: &mut dyn FnMut(&mut Json) -> bool) -> bool {
    if f(value) {
        return true;
    }
    match value {
        Json::Array(items) => items.iter_mut().any(|v| edit_nodes(v, f)),
        Json::Object(members) => members.iter_mut().any(|(_, v)| edit_nodes(v, f)),
        _ => false,
    }
}

pub fn count_nodes(value: &Json, pred: &dyn Fn(&Json) -> bool) -> usize {
    let own = usize::from(pred(value));
    own + match value {
        Json::Array(items) => items.iter().map(|v| count_nodes(v, pred)).sum(),
        Json::Object(members) => members.iter().map(|(_, v)| count_nodes(v, pred)).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the `n`-th node (pre-order) for which `pred` holds.
pub fn edit_nth(
    value: &mut Json,
    mut n: usize,
    pred: &dyn Fn(&Json) -> bool,
    edit: &mut dyn FnMut(&mut Json),
) {
    edit_nodes(value, &mut |node| {
        if !pred(node) {
            return false;
        }
        if n == 0 {
            edit(node);
            return true;
        }
        n -= 1;
        false
    });
}

pub fn is_scalar(value: &Json) -> bool {
    !matches!(value, Json::Array(_) | Json::Object(_))
}
