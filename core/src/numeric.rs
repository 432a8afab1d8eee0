//! PostgreSQL's binary numeric, read exactly and written in ECMAScript's number layout.
//!
//! A numeric is base-10000 digits with a weight (`numeric.c`). We never go through a
//! double: the canonical text is the exact decimal value, stripped of leading and trailing
//! zeros (so `1.50`, `1.5` and `15e-1` agree), laid out the way ECMA-262 `Number::toString`
//! lays out its digits (which is what RFC 8785 uses for the shortest digits of a double).
//! Output length stays proportional to the number of significant digits plus 21.

use std::fmt;

use crate::canonical::Sink;
use crate::jsonb::{FormatError, FormatErrorKind};

const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NBASE_MAX_DIGIT: u16 = 9999;

/// The largest exponent ECMAScript writes without switching to `e` notation.
const MAX_PLAIN_EXPONENT: i64 = 21;
/// The smallest exponent ECMAScript writes as `0.000…` (that is `n > -6`).
const MIN_PLAIN_EXPONENT: i64 = -5;

/// An exact decimal read from a numeric: `±digits × 10000^(weight - i)` summed over the
/// base-10000 digits, with zero digits at both ends already dropped.
#[derive(Debug, Clone, Copy)]
pub struct Numeric<'a> {
    negative: bool,
    weight: i32,
    /// Little-endian int16 digits, each 0..=9999, first and last non-zero (empty for zero).
    digits: &'a [u8],
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([pair[0], pair[1]]))
}

impl<'a> Numeric<'a> {
    /// Reads a complete numeric varlena: a 4-byte header (or a 1-byte short one) whose
    /// size must equal the slice's length, then the numeric itself.
    pub fn from_varlena(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let header_error = FormatError::new(0, FormatErrorKind::NumericHeader);
        let first = *bytes
            .first()
            .ok_or(FormatError::new(0, FormatErrorKind::NumericLength))?;
        let (header_len, size) = if first & 0x03 == 0 {
            let h = bytes
                .get(0..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(FormatError::new(0, FormatErrorKind::NumericLength))?;
            (4, (h >> 2) as usize)
        } else if first & 0x01 == 0x01 && first != 0x01 {
            (1, (first >> 1) as usize)
        } else {
            // Compressed (0b10) or an external TOAST pointer (0x01): never inside a jsonb.
            return Err(header_error);
        };
        if size != bytes.len() {
            return Err(header_error);
        }
        let body = bytes.get(header_len..).ok_or(header_error)?;
        Self::from_body(body).map_err(|e| e.shifted(header_len))
    }

    /// Reads a numeric without its varlena header, starting at `n_header`.
    pub fn from_body(body: &'a [u8]) -> Result<Self, FormatError> {
        let too_short = FormatError::new(0, FormatErrorKind::NumericLength);
        let n_header = le_u16(body, 0).ok_or(too_short)?;
        let (negative, mut weight, digits_at) = match n_header & NUMERIC_SIGN_MASK {
            NUMERIC_SHORT => {
                let magnitude = i32::from(n_header & NUMERIC_SHORT_WEIGHT_MASK);
                let weight = if n_header & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
                    magnitude | !i32::from(NUMERIC_SHORT_WEIGHT_MASK)
                } else {
                    magnitude
                };
                (n_header & NUMERIC_SHORT_SIGN_MASK != 0, weight, 2)
            }
            sign @ (NUMERIC_POS | NUMERIC_NEG) => {
                let weight = le_u16(body, 2).ok_or(too_short)? as i16;
                (sign == NUMERIC_NEG, i32::from(weight), 4)
            }
            _ => return Err(FormatError::new(0, FormatErrorKind::NumericSpecial)),
        };
        let mut digits = body.get(digits_at..).ok_or(too_short)?;
        if digits.len() % 2 != 0 {
            return Err(FormatError::new(
                body.len() - 1,
                FormatErrorKind::NumericLength,
            ));
        }
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let d = u16::from_le_bytes([pair[0], pair[1]]);
            if d > NBASE_MAX_DIGIT {
                return Err(FormatError::new(
                    digits_at + 2 * i,
                    FormatErrorKind::NumericDigit(d),
                ));
            }
        }
        // PostgreSQL strips zero digits itself; doing it again costs nothing and keeps
        // the canonical text independent of how the numeric was produced.
        while let [0, 0, rest @ ..] = digits {
            digits = rest;
            weight -= 1;
        }
        while let [rest @ .., 0, 0] = digits {
            digits = rest;
        }
        if digits.is_empty() {
            return Ok(Numeric {
                negative: false,
                weight: 0,
                digits,
            });
        }
        Ok(Numeric {
            negative,
            weight,
            digits,
        })
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    fn group(&self, i: usize) -> u16 {
        le_u16(self.digits, 2 * i).unwrap_or(0)
    }

    /// Writes the canonical text: `-`, then the significant digits laid out by
    /// ECMAScript's `Number::toString` rules for `0.d1…dk × 10^n`.
    pub fn write<S: Sink + ?Sized>(&self, sink: &mut S) {
        let groups = self.digits.len() / 2;
        if groups == 0 {
            sink.write(b"0");
            return;
        }
        let first = self.group(0);
        let last = self.group(groups - 1);
        let leading_zeros = match first {
            1000.. => 0,
            100.. => 1,
            10.. => 2,
            _ => 3,
        };
        let mut trailing_zeros = 0;
        let mut l = last;
        while l.is_multiple_of(10) && trailing_zeros < 3 {
            l /= 10;
            trailing_zeros += 1;
        }
        let k = 4 * groups - leading_zeros - trailing_zeros;
        let n = 4 * (i64::from(self.weight) + 1) - leading_zeros as i64;

        let mut out = DigitWriter {
            numeric: self,
            leading_zeros,
            buf: [0; 64],
            len: 0,
            sink,
        };
        if self.negative {
            out.byte(b'-');
        }
        let k_i = k as i64;
        if k_i <= n && n <= MAX_PLAIN_EXPONENT {
            out.digits(0, k);
            out.zeros((n - k_i) as usize);
        } else if 0 < n && n <= MAX_PLAIN_EXPONENT {
            out.digits(0, n as usize);
            out.byte(b'.');
            out.digits(n as usize, k);
        } else if (MIN_PLAIN_EXPONENT..=0).contains(&n) {
            out.bytes(b"0.");
            out.zeros(n.unsigned_abs() as usize);
            out.digits(0, k);
        } else {
            out.digits(0, 1);
            if k > 1 {
                out.byte(b'.');
                out.digits(1, k);
            }
            let e = n - 1;
            out.bytes(if e < 0 { b"e-" } else { b"e+" });
            out.decimal(e.unsigned_abs());
        }
        out.flush();
    }
}

/// Collects output in a small stack buffer so a long number is not written byte by byte.
struct DigitWriter<'n, 's, S: Sink + ?Sized> {
    numeric: &'n Numeric<'n>,
    leading_zeros: usize,
    buf: [u8; 64],
    len: usize,
    sink: &'s mut S,
}

impl<S: Sink + ?Sized> DigitWriter<'_, '_, S> {
    fn byte(&mut self, b: u8) {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn flush(&mut self) {
        self.sink.write(&self.buf[..self.len]);
        self.len = 0;
    }

    fn zeros(&mut self, count: usize) {
        for _ in 0..count {
            self.byte(b'0');
        }
    }

    /// Significant digits `from..to` (0-based, the first significant digit is 0).
    fn digits(&mut self, from: usize, to: usize) {
        const POW: [u16; 4] = [1000, 100, 10, 1];
        for p in from..to {
            let at = p + self.leading_zeros;
            let group = self.numeric.group(at / 4);
            self.byte(b'0' + (group / POW[at % 4] % 10) as u8);
        }
    }

    fn decimal(&mut self, mut value: u64) {
        let mut text = [0u8; 20];
        let mut at = text.len();
        loop {
            at -= 1;
            text[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.bytes(&text[at..]);
    }
}

struct FmtSink<'f, 'g> {
    f: &'f mut fmt::Formatter<'g>,
    result: fmt::Result,
}

impl Sink for FmtSink<'_, '_> {
    fn write(&mut self, bytes: &[u8]) {
        if self.result.is_ok() {
            // Only ASCII digits, signs, '.' and 'e' are ever written.
            self.result = std::str::from_utf8(bytes)
                .map_err(|_| fmt::Error)
                .and_then(|text| self.f.write_str(text));
        }
    }
}

/// The canonical text, as [`Numeric::write`] produces it.
impl fmt::Display for Numeric<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sink = FmtSink { f, result: Ok(()) };
        self.write(&mut sink);
        sink.result
    }
}
