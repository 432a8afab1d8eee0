//! Arbitrary bytes as a jsonb datum: the reader, the canonical writer and the fingerprint
//! must never panic, loop or read outside the input; an error is a fine answer. Whatever
//! they accept must come out as valid JSON text whose SHA-256 is the fingerprint.
#![no_main]

use idempotency_core::model;
use idempotency_core::{canonical, fingerprint, fingerprint_of_text};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let text = canonical(data);
    let hash = fingerprint(data);
    match (text, hash) {
        (Ok(text), Ok(hash)) => {
            let expected: [u8; 32] = Sha256::digest(&text).into();
            assert_eq!(
                hash, expected,
                "fingerprint is not sha256 of the canonical text"
            );
            assert_eq!(fingerprint_of_text(&text), hash);
            let text = std::str::from_utf8(&text).expect("canonical text is UTF-8");
            // model::parse panics on anything that is not one valid JSON value.
            let value = model::parse(text);
            // Canonical text is already in canonical order and spelling.
            assert_eq!(
                value.canonical_text(),
                text,
                "canonical text is not a fixed point"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "canonical and fingerprint disagree on the error"),
        (a, b) => panic!("canonical {a:?} but fingerprint {b:?}"),
    }
});
