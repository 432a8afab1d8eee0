//! Malformed jsonb: the reader answers with a typed error, never a panic or a read out of
//! bounds, whatever the bytes.

mod common;

use common::arb_json;
use idempotency_core::model::{self, Json};
use idempotency_core::{canonical, fingerprint, FormatError, FormatErrorKind};
use proptest::prelude::*;

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn error_of(bytes: &[u8]) -> FormatError {
    let err = canonical(bytes).expect_err("malformed input must be rejected");
    assert_eq!(
        fingerprint(bytes),
        Err(err),
        "fingerprint and canonical disagree"
    );
    err
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8(canonical(bytes).expect("well formed")).unwrap()
}

/// Words a jsonb is made of: container headers, JEntries of every type, small offsets.
fn arb_word() -> impl Strategy<Value = u32> {
    let flags = prop_oneof![
        Just(0x4000_0000u32),
        Just(0x2000_0000),
        Just(0x5000_0000),
        Just(0x1000_0000),
        Just(0x3000_0000),
        Just(0x0000_0000),
        Just(0x9000_0000),
        Just(0xD000_0000),
        Just(0x8000_0000),
        Just(0xC000_0000),
        Just(0x6000_0000),
        any::<u32>().prop_map(|w| w & 0xF000_0000),
    ];
    prop_oneof![
        4 => (flags, 0u32..40).prop_map(|(f, n)| f | n),
        1 => any::<u32>(),
        1 => Just(0x0000_8000u32), // a short numeric n_header and digit
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = canonical(&bytes);
        let _ = fingerprint(&bytes);
    }

    #[test]
    fn arbitrary_words_never_panic(words in proptest::collection::vec(arb_word(), 0..48)) {
        let bytes = le(&words);
        let _ = canonical(&bytes);
        let _ = fingerprint(&bytes);
    }

    #[test]
    fn truncated_encodings_are_rejected(value in arb_json()) {
        let bytes = model::to_jsonb(&value);
        for len in 0..bytes.len() {
            prop_assert!(canonical(&bytes[..len]).is_err(), "prefix of {} bytes accepted", len);
        }
    }

    #[test]
    fn mutated_encodings_never_panic(
        value in arb_json(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), arb_word()), 1..6),
    ) {
        let mut bytes = model::to_jsonb(&value);
        for (at, byte, word) in edits {
            let at = at % bytes.len();
            if byte & 1 == 0 {
                bytes[at] = byte;
            } else {
                let at = at & !3;
                let end = (at + 4).min(bytes.len());
                bytes[at..end].copy_from_slice(&word.to_le_bytes()[..end - at]);
            }
        }
        let _ = canonical(&bytes);
        let _ = fingerprint(&bytes);
    }
}

#[test]
fn rejects_empty_input_as_truncated() {
    let err = error_of(&[]);
    assert_eq!(err.kind, FormatErrorKind::Truncated);
    assert_eq!(err.offset, 0);
    assert_eq!(
        err.to_string(),
        "malformed jsonb at byte 0: data ends inside a container"
    );
}

#[test]
fn rejects_entries_that_do_not_fit() {
    // An array that claims 1000 elements in 8 bytes.
    assert_eq!(
        error_of(&le(&[0x4000_03E8, 0])).kind,
        FormatErrorKind::Truncated
    );
    // An object that claims 0x0FFFFFFF pairs.
    assert_eq!(
        error_of(&le(&[0x2FFF_FFFF])).kind,
        FormatErrorKind::Truncated
    );
}

#[test]
fn rejects_impossible_container_flags() {
    for header in [
        0x6000_0000u32,
        0x0000_0000,
        0x5000_0002,
        0x5000_0000,
        0x3000_0000,
        0xC000_0000,
    ] {
        let err = error_of(&le(&[header, 0x4000_0000, 0x4000_0000]));
        assert_eq!(
            err.kind,
            FormatErrorKind::ContainerHeader(header),
            "{header:#x}"
        );
        assert_eq!(err.offset, 0);
    }
}

#[test]
fn rejects_unknown_entry_types() {
    for entry in [0x6000_0000u32, 0x7000_0000, 0xE000_0000] {
        let err = error_of(&le(&[0x4000_0001, entry]));
        assert_eq!(err.kind, FormatErrorKind::EntryType(entry));
        assert_eq!(err.offset, 4);
    }
}

#[test]
fn rejects_children_outside_the_data_area() {
    // A string of length 5 in a data area of 2 bytes.
    let mut bytes = le(&[0x4000_0001, 0x0000_0005]);
    bytes.extend(b"ab");
    let err = error_of(&bytes);
    assert_eq!(err.kind, FormatErrorKind::ChildBounds);
    assert_eq!(err.offset, 4);
    // An end offset that goes backwards.
    let mut bytes = le(&[0x4000_0002, 0x8000_0002, 0x8000_0001]);
    bytes.extend(b"ab");
    assert_eq!(error_of(&bytes).kind, FormatErrorKind::ChildBounds);
    // A numeric whose padding alone overruns its length.
    let mut bytes = le(&[0x4000_0002, 0x0000_0001, 0x1000_0002]);
    bytes.extend(b"abc");
    assert_eq!(error_of(&bytes).kind, FormatErrorKind::ChildBounds);
}

#[test]
fn rejects_null_or_boolean_with_data() {
    let mut bytes = le(&[0x4000_0001, 0x4000_0001]);
    bytes.push(0);
    assert_eq!(error_of(&bytes).kind, FormatErrorKind::ScalarWithData);
}

#[test]
fn rejects_non_string_keys() {
    // {null: null}
    let err = error_of(&le(&[0x2000_0001, 0x4000_0000, 0x4000_0000]));
    assert_eq!(err.kind, FormatErrorKind::KeyNotString);
    assert_eq!(err.offset, 4);
}

#[test]
fn rejects_duplicate_keys() {
    let mut bytes = model::to_jsonb(&model::parse(r#"{"a":1,"b":2}"#));
    let at = bytes.iter().position(|&b| b == b'b').unwrap();
    bytes[at] = b'a';
    let err = error_of(&bytes);
    assert_eq!(err.kind, FormatErrorKind::DuplicateKey);
    assert_eq!(err.offset, 0);
}

#[test]
fn rejects_invalid_utf8_where_it_starts() {
    let mut bytes = le(&[0x4000_0001, 0x8000_0004]);
    bytes.extend([b'o', b'k', 0xC3, 0x28]);
    let err = error_of(&bytes);
    assert_eq!(err.kind, FormatErrorKind::InvalidUtf8);
    assert_eq!(err.offset, 10);
    // Also in keys, and for surrogates encoded in UTF-8 (CESU-8).
    let mut bytes = le(&[0x2000_0001, 0x8000_0003, 0x4000_0000]);
    bytes.extend([0xED, 0xA0, 0x80]);
    assert_eq!(error_of(&bytes).kind, FormatErrorKind::InvalidUtf8);
}

#[test]
fn rejects_nan_inside_jsonb() {
    // [NaN]: a numeric child with n_header 0xC000, at offset 8 of the datum.
    let bytes = le(&[0x4000_0001, 0x9000_0008, 0x18, 0x0000_C000]);
    let err = error_of(&bytes[..14]);
    assert_eq!(err.kind, FormatErrorKind::ChildBounds);
    let mut bytes = le(&[0x4000_0001, 0x9000_0006, 0x18]);
    bytes.extend([0x00, 0xC0]);
    let err = error_of(&bytes);
    assert_eq!(err.kind, FormatErrorKind::NumericSpecial);
    assert_eq!(err.offset, 12);
}

#[test]
fn rejects_a_raw_scalar_container_holding_a_container() {
    let err = error_of(&le(&[0x5000_0001, 0xD000_0004, 0x4000_0000]));
    assert_eq!(err.kind, FormatErrorKind::ScalarHoldsContainer);
}

#[test]
fn reads_a_nested_raw_scalar_container_as_its_element() {
    // PostgreSQL's output functions print a scalar-flagged container bare wherever they
    // meet one; [<raw scalar 5>] therefore reads as [5].
    let inner = model::to_jsonb(&model::parse("5"));
    let mut bytes = le(&[0x4000_0001, 0xD000_0000 | inner.len() as u32]);
    bytes.extend(&inner);
    assert_eq!(text_of(&bytes), "[5]");
}

#[test]
fn accepts_every_top_level_kind() {
    for (text, expected) in [
        ("null", "null"),
        ("true", "true"),
        ("false", "false"),
        ("\"s\"", "\"s\""),
        ("-1.0", "-1"),
        ("[]", "[]"),
        ("{}", "{}"),
        ("[[],{}]", "[[],{}]"),
    ] {
        let value: Json = model::parse(text);
        assert_eq!(text_of(&model::to_jsonb(&value)), expected, "{text}");
    }
}
