//! Deep nesting costs heap, not stack: 100,000 levels canonicalise on a 256 KiB thread.

use idempotency_core::model;
use idempotency_core::{canonical, fingerprint, fingerprint_of_text};

const SMALL_STACK: usize = 256 * 1024;

/// `depth` arrays, each the only element of the one around it: built from the inside out
/// without recursion (the model's encoder recurses, and so does dropping a deep `Json`).
fn nested_arrays(depth: usize) -> Vec<u8> {
    let total = 4 + 8 * depth;
    let mut bytes = Vec::with_capacity(total);
    for level in 0..depth {
        let child_len = total - 8 * (level + 1);
        bytes.extend(0x4000_0001u32.to_le_bytes()); // array of one
        bytes.extend((0xD000_0000u32 | child_len as u32).to_le_bytes()); // container, end offset
    }
    bytes.extend(0x4000_0000u32.to_le_bytes()); // []
    bytes
}

/// `{"a":{"a":…{}…}}`: each level is a header, two JEntries, "a" and three bytes of padding.
fn nested_objects(depth: usize) -> Vec<u8> {
    let total = 4 + 16 * depth;
    let mut bytes = Vec::with_capacity(total);
    for level in 0..depth {
        let child_len = total - 16 * (level + 1);
        bytes.extend(0x2000_0001u32.to_le_bytes()); // object of one pair
        bytes.extend(0x8000_0001u32.to_le_bytes()); // key, end offset 1
        bytes.extend((0x5000_0000u32 | (3 + child_len) as u32).to_le_bytes()); // value
        bytes.extend([b'a', 0, 0, 0]);
    }
    bytes.extend(0x2000_0000u32.to_le_bytes()); // {}
    bytes
}

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow")
}

fn check(bytes: Vec<u8>, expected: String) {
    on_small_stack(move || {
        let text = canonical(&bytes).expect("well formed");
        assert!(text == expected.as_bytes(), "canonical text differs");
        assert_eq!(fingerprint(&bytes).unwrap(), fingerprint_of_text(&text));
    });
}

#[test]
fn deep_builders_match_the_model() {
    for depth in 0..40 {
        let arrays = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
        assert_eq!(
            nested_arrays(depth),
            model::to_jsonb(&model::parse(&arrays))
        );
        let objects = format!("{}{{}}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert_eq!(
            nested_objects(depth),
            model::to_jsonb(&model::parse(&objects))
        );
    }
}

#[test]
fn canonicalises_arrays_nested_10_000_deep_on_a_small_stack() {
    let depth = 10_000;
    check(
        nested_arrays(depth),
        format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1)),
    );
}

#[test]
fn canonicalises_arrays_nested_100_000_deep_on_a_small_stack() {
    let depth = 100_000;
    check(
        nested_arrays(depth),
        format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1)),
    );
}

#[test]
fn canonicalises_objects_nested_10_000_deep_on_a_small_stack() {
    let depth = 10_000;
    check(
        nested_objects(depth),
        format!("{}{{}}{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
    );
}

#[test]
fn canonicalises_objects_nested_100_000_deep_on_a_small_stack() {
    let depth = 100_000;
    check(
        nested_objects(depth),
        format!("{}{{}}{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
    );
}

#[test]
fn rejects_truncated_deep_nesting_on_a_small_stack() {
    let mut bytes = nested_arrays(100_000);
    bytes.truncate(bytes.len() - 1);
    on_small_stack(move || assert!(canonical(&bytes).is_err()));
}
