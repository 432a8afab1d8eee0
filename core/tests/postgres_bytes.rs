//! The model against bytes PostgreSQL itself stored.
//!
//! tests/vectors/jsonb_pg15.tsv holds `<JSON text>\t<hex of the stored jsonb after its
//! varlena header>`, read back from PostgreSQL 15.20 heap pages with pageinspect
//! (`get_raw_page` / `heap_page_items` on a table whose jsonb column has STORAGE PLAIN).
//! The rows cover raw scalars, numerics in short and long format (`1e300`, `-1e-64`,
//! `1e-16383`), duplicate keys, padding, containers wider than the offset stride, and
//! generated values. 3,022 such documents matched when the file was made; the extension's
//! own `#[pg_test]`s keep checking the model against the running server.

use idempotency_core::canonical;
use idempotency_core::model;

const VECTORS: &str = include_str!("vectors/jsonb_pg15.tsv");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn model_writes_the_bytes_postgresql_15_stores() {
    let mut checked = 0;
    for line in VECTORS.lines() {
        let (text, stored) = line.split_once('\t').expect("two tab-separated columns");
        let value = model::parse(text);
        assert_eq!(hex(&model::to_jsonb(&value)), stored, "{text}");
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} vectors");
}

#[test]
fn reads_the_bytes_postgresql_15_stores() {
    for line in VECTORS.lines() {
        let (text, stored) = line.split_once('\t').expect("two tab-separated columns");
        let bytes: Vec<u8> = (0..stored.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&stored[i..i + 2], 16).expect("hex"))
            .collect();
        let got = String::from_utf8(canonical(&bytes).expect("PostgreSQL's bytes read")).unwrap();
        assert_eq!(got, model::parse(text).canonical_text(), "{text}");
    }
}
