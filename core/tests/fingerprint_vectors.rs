//! The frozen fingerprint vectors: tests/vectors/fingerprints-v1.tsv.
//!
//! Made by `gen_fingerprints.js`, an RFC 8785 implementation in ECMAScript that shares no
//! code with the core, so the file is an oracle. Every row's command goes the way PostgreSQL
//! hands it to us (JSON text → jsonb bytes, by the core's model of `jsonb_in`), and the
//! canonical text and the fingerprint must equal the file's byte for byte. The file itself
//! is pinned by its SHA-256: editing it is a breaking change of the fingerprint.

use idempotency_core::model;
use idempotency_core::{canonical, fingerprint, fingerprint_of_text};

const VECTORS: &str = include_str!("vectors/fingerprints-v1.tsv");

/// SHA-256 of fingerprints-v1.tsv as frozen. Never update it: add a new file instead.
const FROZEN_SHA256: &str = "8caa304c555645dc8c752fcaac7a58fa04f8130731b944937c702c5ddf3e976b";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rows as (line number, command, canonical, fingerprint hex).
fn rows() -> Vec<(usize, &'static str, &'static str, &'static str)> {
    VECTORS
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#'))
        .map(|(i, line)| {
            let mut cols = line.split('\t');
            let row = (i + 1, cols.next(), cols.next(), cols.next(), cols.next());
            match row {
                (n, Some(c), Some(t), Some(h), None) => (n, c, t, h),
                _ => panic!("line {}: expected three tab-separated columns", i + 1),
            }
        })
        .collect()
}

#[test]
fn vector_file_is_frozen() {
    assert_eq!(
        hex(&fingerprint_of_text(VECTORS.as_bytes())),
        FROZEN_SHA256,
        "fingerprints-v1.tsv changed: that breaks every stored fingerprint"
    );
    assert!(VECTORS.starts_with("# Frozen fingerprint vectors, version 1. DO NOT EDIT"));
}

#[test]
fn reproduces_every_frozen_canonical_text_and_fingerprint() {
    let rows = rows();
    assert!(rows.len() >= 400, "only {} vectors", rows.len());
    let mut failures = Vec::new();
    for (line, command, expected_text, expected_hash) in rows {
        let jsonb = model::to_jsonb(&model::parse(command));
        let text = canonical(&jsonb).expect("model jsonb is well formed");
        let hash = hex(&fingerprint(&jsonb).expect("model jsonb is well formed"));
        if text != expected_text.as_bytes() || hash != expected_hash {
            failures.push(format!(
                "line {line}: {command}\n  canonical {}\n  expected  {expected_text}\n  fingerprint {hash}\n  expected    {expected_hash}",
                String::from_utf8_lossy(&text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors differ:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[test]
fn frozen_fingerprints_are_sha256_of_frozen_canonical_texts() {
    for (line, _, text, hash) in rows() {
        assert_eq!(
            hex(&fingerprint_of_text(text.as_bytes())),
            hash,
            "line {line}"
        );
    }
}
