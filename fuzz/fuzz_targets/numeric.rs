//! PostgreSQL's binary numeric, two ways:
//! - the input's bytes as a numeric varlena and as a bare numeric body: never a panic, and
//!   whatever is accepted is written as a JSON number that is already canonical;
//! - a number spelling built from the input, stored as `numeric_in` would (the core's
//!   model), must read back and print as the model's exact-decimal canonical number.
#![no_main]

#[path = "gen.rs"]
mod gen;

use idempotency_core::model;
use idempotency_core::numeric::Numeric;
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fn check_written(n: &Numeric<'_>) {
    let text = n.to_string();
    // A JSON number on its own is a valid JSON text.
    match model::parse(&text) {
        model::Json::Number(spelling) => {
            assert_eq!(
                model::canonical_number(&spelling),
                text,
                "not canonical: {text}"
            )
        }
        other => panic!("numeric written as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = Numeric::from_varlena(data) {
        check_written(&n);
    }
    if let Ok(n) = Numeric::from_body(data) {
        check_written(&n);
    }

    let mut u = Unstructured::new(data);
    let Ok(spelling) = gen::number(&mut u) else {
        return;
    };
    let varlena = model::numeric_varlena(&spelling);
    let n = Numeric::from_varlena(&varlena).expect("numeric_in's bytes read back");
    assert_eq!(
        n.to_string(),
        model::canonical_number(&spelling),
        "spelling {spelling}"
    );
});
