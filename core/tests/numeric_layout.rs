//! The canonical text of numbers: exact decimals in ECMAScript's layout, and the binary
//! numeric forms the reader accepts or rejects.

mod common;

use common::canon;
use idempotency_core::model::numeric_varlena;
use idempotency_core::numeric::Numeric;
use idempotency_core::FormatErrorKind;

/// The canonical text of a number spelling, both through the numeric reader alone and
/// through a whole jsonb document; the two must agree.
fn layout(spelling: &str) -> String {
    let direct = Numeric::from_varlena(&numeric_varlena(spelling))
        .expect("numeric_in output is well formed")
        .to_string();
    assert_eq!(canon(spelling), direct, "raw scalar path for {spelling}");
    assert_eq!(
        canon(&format!("[{spelling}]")),
        format!("[{direct}]"),
        "array path for {spelling}"
    );
    direct
}

#[test]
fn writes_integers_below_1e21_in_full() {
    assert_eq!(layout("0"), "0");
    assert_eq!(layout("7"), "7");
    assert_eq!(layout("100"), "100");
    assert_eq!(layout("10000"), "10000");
    assert_eq!(layout("123456789"), "123456789");
    assert_eq!(layout("1e20"), "100000000000000000000");
    assert_eq!(layout("999999999999999999999"), "999999999999999999999");
    assert_eq!(layout("12345678901234567891"), "12345678901234567891");
    assert_eq!(layout("12345678901234567890"), "12345678901234567890");
}

#[test]
fn switches_to_exponent_form_from_1e21() {
    assert_eq!(layout("1e21"), "1e+21");
    assert_eq!(layout("1000000000000000000000"), "1e+21");
    assert_eq!(
        layout("1234567890123456789012"),
        "1.234567890123456789012e+21"
    );
    assert_eq!(layout("1.5e300"), "1.5e+300");
    assert_eq!(layout("1E30"), "1e+30");
}

#[test]
fn writes_fractions_in_place_down_to_1e_minus_6() {
    assert_eq!(layout("0.1"), "0.1");
    assert_eq!(layout("0.5"), "0.5");
    assert_eq!(layout("123456.789"), "123456.789");
    assert_eq!(layout("0.00012345"), "0.00012345");
    assert_eq!(layout("1e-6"), "0.000001");
    assert_eq!(layout("0.000001"), "0.000001");
    assert_eq!(layout("0.0000012345"), "0.0000012345");
    assert_eq!(layout("1.5e-3"), "0.0015");
    assert_eq!(layout("2e-3"), "0.002");
    assert_eq!(layout("100000000000000000000.5"), "100000000000000000000.5");
}

#[test]
fn switches_to_exponent_form_below_1e_minus_6() {
    assert_eq!(layout("1e-7"), "1e-7");
    assert_eq!(layout("0.0000001"), "1e-7");
    assert_eq!(layout("0.00000012"), "1.2e-7");
    assert_eq!(layout("123e-20"), "1.23e-18");
    assert_eq!(layout("0.000000000000000000000000001"), "1e-27");
}

#[test]
fn drops_trailing_zeros_and_ignores_dscale() {
    assert_eq!(layout("1.50"), "1.5");
    assert_eq!(layout("1.5"), "1.5");
    assert_eq!(layout("10.0"), "10");
    assert_eq!(layout("10"), "10");
    assert_eq!(layout("1e1"), "10");
    assert_eq!(layout("4.50"), "4.5");
    assert_eq!(
        layout("2.000000000000000000000000000000000000000000000000000000000000000000000"),
        "2"
    );
    assert_eq!(
        layout("0.10000000000000000000000000000000000000000000000000000000000000000000000"),
        "0.1"
    );
}

#[test]
fn writes_every_zero_as_0() {
    for zero in ["-0", "0.0", "-0.000", "0e10", "0E-400", "-0.0e+2"] {
        assert_eq!(layout(zero), "0", "{zero}");
    }
}

#[test]
fn writes_negative_numbers_with_a_minus() {
    assert_eq!(layout("-1.5"), "-1.5");
    assert_eq!(layout("-1e21"), "-1e+21");
    assert_eq!(layout("-0.0000001"), "-1e-7");
    assert_eq!(layout("-0.000001"), "-0.000001");
    assert_eq!(layout("-12345678901234567891"), "-12345678901234567891");
}

#[test]
fn keeps_large_exponents_exact() {
    assert_eq!(layout("1e1000"), "1e+1000");
    assert_eq!(layout("-1e-1000"), "-1e-1000");
    let many = format!("1.{}1e1000", "0".repeat(998));
    assert_eq!(layout(&many), format!("1.{}1e+1000", "0".repeat(998)));
    let digits = "1234567890".repeat(50) + "1";
    assert_eq!(layout(&digits), format!("1.{}e+500", &digits[1..]));
}

#[test]
fn reads_the_one_byte_short_varlena_header() {
    // 5 in short numeric format behind a 1-byte header: size 5 → (5 << 1) | 1.
    let numeric = [0x0B, 0x00, 0x80, 5, 0];
    assert_eq!(Numeric::from_varlena(&numeric).unwrap().to_string(), "5");
}

#[test]
fn reads_numerics_with_unstripped_zero_digits() {
    // Long format, weight 1, digits [0, 5, 0]: 0×10000 + 5 + 0/10000 = 5.
    let numeric = [0x38, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0];
    assert_eq!(Numeric::from_varlena(&numeric).unwrap().to_string(), "5");
}

#[test]
fn rejects_nan_and_infinities() {
    for n_header in [0xC000u16, 0xD000, 0xF000] {
        let [lo, hi] = n_header.to_le_bytes();
        let numeric = [0x18, 0, 0, 0, lo, hi];
        let err = Numeric::from_varlena(&numeric).unwrap_err();
        assert_eq!(err.kind, FormatErrorKind::NumericSpecial);
        assert_eq!(err.offset, 4);
    }
}

#[test]
fn rejects_a_digit_above_9999() {
    let numeric = [0x20, 0, 0, 0, 0x00, 0x80, 0x10, 0x27]; // 10000
    let err = Numeric::from_varlena(&numeric).unwrap_err();
    assert_eq!(err.kind, FormatErrorKind::NumericDigit(10000));
    assert_eq!(err.offset, 6);
}

#[test]
fn rejects_toasted_or_mis_sized_numerics() {
    let bad: [&[u8]; 7] = [
        &[],                             // nothing
        &[0x01, 0, 0, 0],                // external TOAST pointer
        &[0x22, 0, 0, 0, 0, 0x80, 5, 0], // compressed
        &[0x24, 0, 0, 0, 0, 0x80, 5, 0], // header says 9 bytes, 8 given
        &[0x1C, 0, 0, 0, 0, 0x80, 5],    // half a digit
        &[0x10, 0, 0, 0],                // no n_header
        &[0x18, 0, 0, 0, 0, 0x00],       // long format without its weight
    ];
    for numeric in bad {
        let err = Numeric::from_varlena(numeric).unwrap_err();
        assert!(
            matches!(
                err.kind,
                FormatErrorKind::NumericHeader | FormatErrorKind::NumericLength
            ),
            "{numeric:?}: {err}"
        );
    }
}
