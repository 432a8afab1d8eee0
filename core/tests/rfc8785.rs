//! RFC 8785's own examples. Its numbers are doubles; ours are exact decimals, so the
//! outputs agree wherever the input is the shortest spelling of a double, and the one
//! place they part is pinned below.

mod common;

use common::canon;

#[test]
fn canonicalises_rfc_8785_example_object_with_shortest_double_spellings() {
    let input = r#"{
      "numbers": [333333333.3333333, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    assert_eq!(
        canon(input),
        "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
         \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
    );
}

#[test]
fn keeps_exact_digits_where_rfc_8785_rounds_to_a_double() {
    // RFC 8785 writes 333333333.33333329 as the double nearest to it, 333333333.3333333.
    // The contract keeps the exact decimal, so two commands that differ only past a
    // double's precision never share a fingerprint.
    assert_eq!(canon("[333333333.33333329]"), "[333333333.33333329]");
    assert_ne!(canon("333333333.33333329"), canon("333333333.3333333"));
}

#[test]
fn escapes_strings_as_rfc_8785_example() {
    assert_eq!(
        canon(r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#),
        "\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\""
    );
}

#[test]
fn sorts_keys_as_rfc_8785_utf16_example() {
    let input = r#"{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    assert_eq!(
        canon(input),
        "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
         \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
         \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
}

#[test]
fn writes_rfc_8785_appendix_b_numbers_as_ecmascript_does() {
    // (IEEE 754 bits, shortest spelling from toExponential(), String(x)) from node v20.
    let cases = [
        ("0000000000000000", "0e+0", "0"),
        ("8000000000000000", "-0e+0", "0"),
        ("0000000000000001", "5e-324", "5e-324"),
        ("8000000000000001", "-5e-324", "-5e-324"),
        (
            "7fefffffffffffff",
            "1.7976931348623157e+308",
            "1.7976931348623157e+308",
        ),
        (
            "ffefffffffffffff",
            "-1.7976931348623157e+308",
            "-1.7976931348623157e+308",
        ),
        (
            "4340000000000000",
            "9.007199254740992e+15",
            "9007199254740992",
        ),
        (
            "c340000000000000",
            "-9.007199254740992e+15",
            "-9007199254740992",
        ),
        (
            "4430000000000000",
            "2.9514790517935283e+20",
            "295147905179352830000",
        ),
        (
            "44b52d02c7e14af5",
            "9.999999999999997e+22",
            "9.999999999999997e+22",
        ),
        ("44b52d02c7e14af6", "1e+23", "1e+23"),
        (
            "44b52d02c7e14af7",
            "1.0000000000000001e+23",
            "1.0000000000000001e+23",
        ),
        (
            "444b1ae4d6e2ef4e",
            "9.999999999999997e+20",
            "999999999999999700000",
        ),
        (
            "444b1ae4d6e2ef4f",
            "9.999999999999999e+20",
            "999999999999999900000",
        ),
        ("444b1ae4d6e2ef50", "1e+21", "1e+21"),
        (
            "3eb0c6f7a0b5ed8c",
            "9.999999999999997e-7",
            "9.999999999999997e-7",
        ),
        ("3eb0c6f7a0b5ed8d", "1e-6", "0.000001"),
        (
            "41b3de4355555553",
            "3.333333333333332e+8",
            "333333333.3333332",
        ),
        (
            "41b3de4355555554",
            "3.3333333333333325e+8",
            "333333333.33333325",
        ),
        (
            "41b3de4355555555",
            "3.333333333333333e+8",
            "333333333.3333333",
        ),
        (
            "41b3de4355555556",
            "3.333333333333334e+8",
            "333333333.3333334",
        ),
        (
            "41b3de4355555557",
            "3.3333333333333343e+8",
            "333333333.33333343",
        ),
        (
            "becbf647612f3696",
            "-3.3333333333333333e-6",
            "-0.0000033333333333333333",
        ),
        (
            "43143ff3c1cb0959",
            "1.4249539237812062e+15",
            "1424953923781206.2",
        ),
    ];
    for (bits, shortest, expected) in cases {
        assert_eq!(canon(shortest), expected, "{bits}");
        // The expected text is itself a valid spelling and must be a fixed point.
        assert_eq!(canon(expected), expected, "{bits}");
    }
}
