//! Number layout checked against a real ECMAScript engine.
//!
//! tests/vectors/numbers.tsv comes from `node tests/vectors/gen_numbers.js`: for a few
//! thousand doubles, the shortest round-trip digits and `String(x)`. Fed through the whole
//! path (JSON text → jsonb bytes → canonical text), the first column must come out as the
//! second: for these values our exact-decimal form and RFC 8785's agree.

mod common;

const VECTORS: &str = include_str!("vectors/numbers.tsv");

#[test]
fn lays_out_numbers_as_ecmascript_number_to_string() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in VECTORS.lines() {
        let (input, expected) = line.split_once('\t').expect("two tab-separated columns");
        let expected = if expected == "-0" { "0" } else { expected };
        let got = common::canon(input);
        if got != expected {
            failures.push(format!("{input}: got {got}, ECMAScript {expected}"));
        }
        checked += 1;
    }
    assert!(checked >= 5000, "only {checked} vectors");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
