//! Arbitrary JSON values, stored the way PostgreSQL stores them (the core's jsonb model),
//! then canonicalised. Checks:
//! - the streaming writer agrees with the model's naive canonical form;
//! - the canonical text is valid JSON that re-parses to the same (normalised) value;
//! - canonicalising that text again gives the same text (idempotence);
//! - the fingerprint is SHA-256 of the canonical text;
//! - member order and the jsonb offset stride do not change the canonical text.
#![no_main]

#[path = "gen.rs"]
mod gen;

use idempotency_core::model::{self, Json};
use idempotency_core::{canonical, fingerprint};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn canon(value: &Json) -> String {
    let bytes = canonical(&model::to_jsonb(value)).expect("model jsonb is well formed");
    String::from_utf8(bytes).expect("canonical text is UTF-8")
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(value) = gen::json(&mut u) else {
        return;
    };
    let bytes = model::to_jsonb(&value);
    let text = canon(&value);
    assert_eq!(
        text,
        value.canonical_text(),
        "streaming writer and model disagree"
    );

    let reparsed = model::parse(&text);
    let normalized = value.normalized();
    assert_eq!(
        reparsed, normalized,
        "canonical text does not re-parse to the value"
    );
    assert_eq!(canon(&reparsed), text, "canonicalisation is not idempotent");

    let hash = fingerprint(&bytes).expect("model jsonb is well formed");
    let expected: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    assert_eq!(
        hash, expected,
        "fingerprint is not sha256 of the canonical text"
    );

    assert_eq!(
        canon(&gen::reversed(&normalized)),
        text,
        "member order changed the text"
    );
    for stride in [1, 7, usize::MAX] {
        let other = canonical(&model::to_jsonb_with_stride(&value, stride))
            .expect("model jsonb is well formed");
        assert_eq!(
            other,
            text.as_bytes(),
            "offset stride {stride} changed the text"
        );
    }
});
