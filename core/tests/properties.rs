//! Properties of the canonical text and fingerprint over generated JSON values: what must
//! not change it, what must change it, and what it must look like.

mod common;

use std::cmp::Ordering;

use common::*;
use idempotency_core::canonical::compare_keys;
use idempotency_core::model::{self, Json};
use idempotency_core::{canonical, fingerprint, fingerprint_of_text};
use proptest::prelude::*;

fn assert_same_command(a: &Json, b: &Json) -> Result<(), TestCaseError> {
    prop_assert_eq!(canon_json(a), canon_json(b));
    prop_assert_eq!(fingerprint_json(a), fingerprint_json(b));
    Ok(())
}

fn assert_other_command(a: &Json, b: &Json) -> Result<(), TestCaseError> {
    // The model agrees that the meaning changed; otherwise the edit itself is wrong.
    prop_assert_ne!(a.normalized(), b.normalized());
    prop_assert_ne!(canon_json(a), canon_json(b));
    prop_assert_ne!(fingerprint_json(a), fingerprint_json(b));
    Ok(())
}

proptest! {
    // Wide values are slow to generate; fewer cases still cover every stride position.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn canonical_text_equals_the_models_past_the_offset_stride(value in arb_wide_json()) {
        prop_assert_eq!(canon_json(&value), value.canonical_text());
    }

    #[test]
    fn reader_follows_offset_flags_not_the_stride(
        value in prop_oneof![arb_json(), arb_wide_json()],
        stride in prop_oneof![
            Just(1usize), Just(2), Just(3), Just(7), Just(31), Just(33), Just(usize::MAX)
        ],
    ) {
        let bytes = model::to_jsonb_with_stride(&value, stride);
        let text = canonical(&bytes).expect("well formed");
        prop_assert_eq!(String::from_utf8(text).unwrap(), canon_json(&value));
    }
}

proptest! {
    #[test]
    fn canonical_text_equals_the_models(value in arb_json()) {
        prop_assert_eq!(canon_json(&value), value.canonical_text());
    }

    #[test]
    fn fingerprint_is_sha256_of_canonical_text(value in arb_json()) {
        let bytes = model::to_jsonb(&value);
        let text = canonical(&bytes).unwrap();
        prop_assert_eq!(fingerprint(&bytes).unwrap(), fingerprint_of_text(&text));
    }

    #[test]
    fn permuting_members_keeps_canonical_text(value in arb_json(), seed in any::<u64>()) {
        let value = without_duplicates(&value);
        let permuted = shuffle_members(&value, &mut Seeded::new(seed));
        assert_same_command(&value, &permuted)?;
    }

    #[test]
    fn respelling_numbers_keeps_canonical_text(value in arb_json(), seed in any::<u64>()) {
        let respelled = respell_numbers(&value, &mut Seeded::new(seed));
        assert_same_command(&value, &respelled)?;
    }

    #[test]
    fn respelling_one_number_keeps_its_text(number in arb_number(), seed in any::<u64>()) {
        let mut rng = Seeded::new(seed);
        for _ in 0..8 {
            let other = respell(&number, &mut rng);
            prop_assert_eq!(
                canon(&number), canon(&other), "{} respelled as {}", number, other
            );
        }
    }

    #[test]
    fn earlier_duplicate_keys_do_not_change_canonical_text(
        value in arb_json(),
        seed in any::<u64>(),
    ) {
        let shadowed = add_earlier_duplicates(&value, &mut Seeded::new(seed));
        assert_same_command(&value, &shadowed)?;
    }

    #[test]
    fn changing_a_scalar_changes_canonical_text(
        value in arb_json(),
        pick in any::<usize>(),
        replacement in arb_scalar(),
    ) {
        let value = without_duplicates(&value);
        let scalars = count_nodes(&value, &is_scalar);
        prop_assume!(scalars > 0);
        let mut changed = value.clone();
        let mut old = Json::Null;
        edit_nth(&mut changed, pick % scalars, &is_scalar, &mut |node| {
            old = std::mem::replace(node, replacement.clone());
        });
        prop_assume!(old.normalized() != replacement.normalized());
        assert_other_command(&value, &changed)?;
    }

    #[test]
    fn changing_a_key_changes_canonical_text(
        value in arb_json(),
        pick in any::<usize>(),
        suffix in arb_char(),
    ) {
        let value = without_duplicates(&value);
        let is_object = |v: &Json| matches!(v, Json::Object(m) if !m.is_empty());
        let objects = count_nodes(&value, &is_object);
        prop_assume!(objects > 0);
        let mut changed = value.clone();
        edit_nth(&mut changed, pick % objects, &is_object, &mut |node| {
            if let Json::Object(members) = node {
                let at = pick % members.len();
                let mut key = format!("{}{suffix}", members[at].0);
                while members.iter().any(|(k, _)| *k == key) {
                    key.push(suffix);
                }
                members[at].0 = key;
            }
        });
        assert_other_command(&value, &changed)?;
    }

    #[test]
    fn changing_a_type_changes_canonical_text(value in arb_json(), pick in any::<usize>()) {
        let value = without_duplicates(&value);
        let nodes = count_nodes(&value, &|_| true);
        let mut changed = value.clone();
        edit_nth(&mut changed, pick % nodes, &|_| true, &mut |node| {
            *node = match node {
                Json::Null => Json::Bool(false),
                Json::Bool(b) => Json::String(b.to_string()),
                Json::Number(n) => Json::String(n.clone()),
                Json::String(s) if s.is_empty() => Json::Null,
                Json::String(_) => Json::Number("0".into()),
                Json::Array(items) => Json::Object(
                    items.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
                ),
                Json::Object(members) => {
                    Json::Array(members.iter().map(|(_, v)| v.clone()).collect())
                }
            };
        });
        assert_other_command(&value, &changed)?;
    }

    #[test]
    fn reordering_an_array_changes_canonical_text(
        value in arb_json(),
        pick in any::<usize>(),
        seed in any::<u64>(),
    ) {
        let value = without_duplicates(&value);
        let is_array = |v: &Json| matches!(v, Json::Array(items) if items.len() >= 2);
        let arrays = count_nodes(&value, &is_array);
        prop_assume!(arrays > 0);
        let mut changed = value.clone();
        let mut swapped = false;
        let mut rng = Seeded::new(seed);
        edit_nth(&mut changed, pick % arrays, &is_array, &mut |node| {
            if let Json::Array(items) = node {
                let i = rng.below(items.len());
                let j = rng.below(items.len());
                if items[i].normalized() != items[j].normalized() {
                    items.swap(i, j);
                    swapped = true;
                }
            }
        });
        prop_assume!(swapped);
        assert_other_command(&value, &changed)?;
    }

    #[test]
    fn canonical_text_parses_back_to_the_same_value(value in arb_json()) {
        let text = canon_json(&value);
        let parsed = model::parse(&text);
        prop_assert_eq!(parsed.normalized(), value.normalized());
        // And it is already canonical: parsing it back changes nothing.
        prop_assert_eq!(canon_json(&parsed), text);
    }

    #[test]
    fn canonical_text_has_no_control_bytes(value in arb_json()) {
        let text = canon_json(&value);
        prop_assert!(text.bytes().all(|b| b >= 0x20), "{}", text);
    }

    #[test]
    fn fast_key_comparison_equals_utf16_comparison(a in arb_string(), b in arb_string()) {
        let utf16 = a.encode_utf16().cmp(b.encode_utf16());
        prop_assert_eq!(compare_keys(a.as_bytes(), b.as_bytes()), utf16);
        prop_assert_eq!(compare_keys(b.as_bytes(), a.as_bytes()), utf16.reverse());
    }

    #[test]
    fn fast_key_comparison_equals_utf16_comparison_on_shared_prefixes(
        prefix in arb_string(), a in arb_string(), b in arb_string(),
    ) {
        let (a, b) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
        prop_assert_eq!(
            compare_keys(a.as_bytes(), b.as_bytes()),
            a.encode_utf16().cmp(b.encode_utf16())
        );
        prop_assert_eq!(compare_keys(a.as_bytes(), a.as_bytes()), Ordering::Equal);
    }
}

#[test]
fn equal_commands_share_a_fingerprint_as_the_contract_says() {
    let a = model::parse(r#"{"b":1,"a":2.0}"#);
    let b = model::parse(r#"{ "a": 2, "b": 1.00 }"#);
    assert_eq!(canon_json(&a), r#"{"a":2,"b":1}"#);
    assert_eq!(fingerprint_json(&a), fingerprint_json(&b));
    let big = model::parse("12345678901234567891");
    let other = model::parse("12345678901234567890");
    assert_ne!(fingerprint_json(&big), fingerprint_json(&other));
}

#[test]
fn fingerprint_of_empty_object_is_sha256_of_braces() {
    let expected: [u8; 32] = [
        0x44, 0x13, 0x6f, 0xa3, 0x55, 0xb3, 0x67, 0x8a, 0x11, 0x46, 0xad, 0x16, 0xf7, 0xe8, 0x64,
        0x9e, 0x94, 0xfb, 0x4f, 0xc2, 0x1f, 0xe7, 0x7e, 0x83, 0x10, 0xc0, 0x60, 0xf6, 0x1c, 0xaa,
        0xff, 0x8a,
    ];
    assert_eq!(fingerprint_json(&model::parse("{}")), expected);
    assert_eq!(fingerprint_of_text(b"{}"), expected);
}

#[test]
fn fingerprint_streams_texts_longer_than_its_buffer() {
    // Strings longer than the hash sink's buffer, and many small pieces around them.
    let long = "x".repeat(10_000);
    let items: Vec<Json> = (0..3000)
        .map(|i| {
            if i % 1000 == 0 {
                Json::String(long.clone())
            } else {
                Json::Number(i.to_string())
            }
        })
        .collect();
    let value = Json::Array(items);
    let bytes = model::to_jsonb(&value);
    let text = canonical(&bytes).unwrap();
    assert!(text.len() > 40_000);
    assert_eq!(fingerprint(&bytes).unwrap(), fingerprint_of_text(&text));
}
