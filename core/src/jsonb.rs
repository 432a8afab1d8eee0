//! A bounds-checked reader of PostgreSQL's on-disk jsonb format.
//!
//! The input is the bytes of a Jsonb datum after its varlena header, that is the root
//! `JsonbContainer` (layout unchanged from PostgreSQL 9.4 through 18, see `utils/jsonb.h`).
//! The reader never panics, never reads outside the slice and never recurses: a container
//! hands out its children one at a time and the caller keeps its own stack. Anything that
//! PostgreSQL would not have written is a [`FormatError`], because a fingerprint taken over
//! misread data would silently match or mismatch the wrong commands.

use std::fmt;

use crate::numeric::Numeric;

// PostgreSQL writes these integers in the server's byte order and we read them as little
// endian; reading a big-endian server's datum would need every read below to swap.
#[cfg(target_endian = "big")]
compile_error!("idempotency-core reads jsonb in little-endian byte order only; big-endian servers are not supported");

const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;

const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;

/// Malformed jsonb (or numeric) data: where it was found and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatError {
    /// Byte offset into the slice that was handed to the reader.
    pub offset: usize,
    pub kind: FormatErrorKind,
}

/// What was wrong with the data at [`FormatError::offset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// A header, a JEntry or a child's data runs past the end of its container.
    Truncated,
    /// A container header with an impossible combination of flags (the header is given).
    ContainerHeader(u32),
    /// A JEntry with an unknown type (the JEntry is given).
    EntryType(u32),
    /// A child that ends before it starts or past the end of its container's data.
    ChildBounds,
    /// A null or boolean child that claims to have data.
    ScalarWithData,
    /// A raw-scalar container whose only child is itself a container.
    ScalarHoldsContainer,
    /// An object key that is not a string.
    KeyNotString,
    /// Two members of one object with the same key.
    DuplicateKey,
    /// A string or key that is not valid UTF-8.
    InvalidUtf8,
    /// A numeric whose varlena header is compressed, external, or disagrees with its length.
    NumericHeader,
    /// A numeric too short for its own header, or with half a digit.
    NumericLength,
    /// NaN or an infinity, which jsonb cannot hold.
    NumericSpecial,
    /// A base-10000 digit outside 0..=9999 (the raw value is given).
    NumericDigit(u16),
}

impl FormatError {
    pub(crate) fn new(offset: usize, kind: FormatErrorKind) -> Self {
        FormatError { offset, kind }
    }

    /// The same error, with its offset moved from a sub-slice into the enclosing slice.
    pub(crate) fn shifted(self, base: usize) -> Self {
        FormatError {
            offset: self.offset.saturating_add(base),
            kind: self.kind,
        }
    }
}

impl fmt::Display for FormatErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatErrorKind::Truncated => f.write_str("data ends inside a container"),
            FormatErrorKind::ContainerHeader(h) => write!(f, "invalid container header 0x{h:08x}"),
            FormatErrorKind::EntryType(e) => write!(f, "invalid entry type in JEntry 0x{e:08x}"),
            FormatErrorKind::ChildBounds => f.write_str("child data out of bounds"),
            FormatErrorKind::ScalarWithData => f.write_str("null or boolean with data"),
            FormatErrorKind::ScalarHoldsContainer => {
                f.write_str("raw scalar container holds a container")
            }
            FormatErrorKind::KeyNotString => f.write_str("object key is not a string"),
            FormatErrorKind::DuplicateKey => f.write_str("duplicate object key"),
            FormatErrorKind::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            FormatErrorKind::NumericHeader => f.write_str("unsupported numeric varlena header"),
            FormatErrorKind::NumericLength => f.write_str("numeric has an invalid length"),
            FormatErrorKind::NumericSpecial => {
                f.write_str("numeric NaN or infinity cannot appear in jsonb")
            }
            FormatErrorKind::NumericDigit(d) => write!(f, "numeric digit {d} out of range"),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed jsonb at byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for FormatError {}

/// One jsonb value. Containers are not read until their children are asked for.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    String(&'a str),
    Number(Numeric<'a>),
    Array(Container<'a>),
    Object(Container<'a>),
}

/// An array or object whose header has been checked: its JEntries and data area lie
/// inside the input.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    input: &'a [u8],
    /// Offset of the header, for error messages.
    start: usize,
    /// Offset of the first JEntry.
    entries: usize,
    /// Offset of the data area; children's offsets are relative to it.
    data: usize,
    /// End of this container's bytes (exclusive).
    end: usize,
    /// Elements of an array, pairs of an object.
    count: usize,
    /// JEntries: `count` for an array, `2 * count` for an object.
    entry_count: usize,
}

/// Reads the root of a jsonb datum. A raw scalar (`jsonb '5'`) comes back as the scalar.
pub fn root(jsonb: &[u8]) -> Result<Value<'_>, FormatError> {
    parse_container(jsonb, 0, jsonb.len())
}

fn read_u32(input: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let bytes = input.get(at..end)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// INTALIGN relative to the data area, as PostgreSQL pads numerics and containers.
fn int_align(offset: usize) -> Option<usize> {
    Some(offset.checked_add(3)? & !3)
}

fn parse_container(input: &[u8], start: usize, end: usize) -> Result<Value<'_>, FormatError> {
    let header = read_u32(input, start)
        .filter(|_| start + 4 <= end)
        .ok_or(FormatError::new(start, FormatErrorKind::Truncated))?;
    let count = (header & JB_CMASK) as usize;
    let flags = header & !JB_CMASK;
    let bad_header = FormatError::new(start, FormatErrorKind::ContainerHeader(header));
    let (is_object, is_scalar) = match flags {
        JB_FARRAY => (false, false),
        JB_FOBJECT => (true, false),
        f if f == JB_FARRAY | JB_FSCALAR && count == 1 => (false, true),
        _ => return Err(bad_header),
    };
    let entry_count = if is_object { count * 2 } else { count };
    let entries = start + 4;
    let data = entry_count
        .checked_mul(4)
        .and_then(|n| n.checked_add(entries))
        .filter(|&d| d <= end)
        .ok_or(FormatError::new(start, FormatErrorKind::Truncated))?;
    let container = Container {
        input,
        start,
        entries,
        data,
        end,
        count,
        entry_count,
    };
    if !is_scalar {
        return Ok(if is_object {
            Value::Object(container)
        } else {
            Value::Array(container)
        });
    }
    // PostgreSQL stores a top-level scalar as a one-element array flagged as scalar, and
    // prints such a container bare wherever it finds one, so it reads as its element.
    match container.children().next() {
        Some(Ok(Value::Array(_) | Value::Object(_))) => Err(FormatError::new(
            start,
            FormatErrorKind::ScalarHoldsContainer,
        )),
        Some(result) => result,
        None => Err(bad_header),
    }
}

impl<'a> Container<'a> {
    /// Elements of an array, or pairs of an object.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Offset of this container's header in the input.
    pub fn offset(&self) -> usize {
        self.start
    }

    /// The children in stored order: an array's elements, or an object's keys followed by
    /// its values (keys sorted by length, then bytes, as PostgreSQL stores them).
    pub fn children(&self) -> Children<'a> {
        Children {
            container: *self,
            index: 0,
            offset: 0,
        }
    }

    /// Appends an object's members to `out`, in stored order. Keys must be strings.
    pub fn members_into(&self, out: &mut Vec<Member<'a>>) -> Result<(), FormatError> {
        let base = out.len();
        out.reserve(self.count);
        let mut children = self.children();
        for _ in 0..self.count {
            let key_at = children.entry_offset();
            match children.next() {
                Some(Ok(Value::String(key))) => out.push(Member {
                    key,
                    value: Value::Null,
                }),
                Some(Ok(_)) => return Err(FormatError::new(key_at, FormatErrorKind::KeyNotString)),
                Some(Err(e)) => return Err(e),
                None => return Err(FormatError::new(key_at, FormatErrorKind::Truncated)),
            }
        }
        for slot in out.iter_mut().skip(base) {
            let value_at = children.entry_offset();
            slot.value = match children.next() {
                Some(result) => result?,
                None => return Err(FormatError::new(value_at, FormatErrorKind::Truncated)),
            };
        }
        Ok(())
    }
}

/// One object member: a key and its value.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub key: &'a str,
    pub value: Value<'a>,
}

/// Walks a container's JEntries in order, carrying the running offset the way
/// `JBE_ADVANCE_OFFSET` does, so each child costs O(1) whatever the offset stride.
#[derive(Debug, Clone)]
pub struct Children<'a> {
    container: Container<'a>,
    index: usize,
    /// End of the previous child, relative to the data area.
    offset: usize,
}

impl<'a> Children<'a> {
    fn entry_offset(&self) -> usize {
        self.container.entries + 4 * self.index
    }

    fn child(&mut self) -> Result<Value<'a>, FormatError> {
        let c = self.container;
        let entry_at = self.entry_offset();
        let entry = read_u32(c.input, entry_at)
            .ok_or(FormatError::new(entry_at, FormatErrorKind::Truncated))?;
        let offlen = (entry & JENTRY_OFFLENMASK) as usize;
        let start = self.offset;
        // With HAS_OFF the field is this child's end offset, otherwise its length.
        let end = if entry & JENTRY_HAS_OFF != 0 {
            offlen
        } else {
            start + offlen
        };
        let data_len = c.end - c.data;
        if end < start || end > data_len {
            return Err(FormatError::new(entry_at, FormatErrorKind::ChildBounds));
        }
        self.offset = end;
        let (abs_start, abs_end) = (c.data + start, c.data + end);
        let out_of_bounds = FormatError::new(abs_start, FormatErrorKind::ChildBounds);
        // Numerics and containers start at the next int boundary; the padding is counted
        // in the child's length.
        let aligned = || {
            int_align(start)
                .filter(|&a| a <= end)
                .map(|a| c.data + a)
                .ok_or(out_of_bounds)
        };
        let bytes_from = |at: usize| c.input.get(at..abs_end).ok_or(out_of_bounds);
        match entry & JENTRY_TYPEMASK {
            JENTRY_ISSTRING => std::str::from_utf8(bytes_from(abs_start)?)
                .map(Value::String)
                .map_err(|e| {
                    FormatError::new(abs_start + e.valid_up_to(), FormatErrorKind::InvalidUtf8)
                }),
            JENTRY_ISNUMERIC => {
                let at = aligned()?;
                Numeric::from_varlena(bytes_from(at)?)
                    .map(Value::Number)
                    .map_err(|e| e.shifted(at))
            }
            JENTRY_ISBOOL_FALSE | JENTRY_ISBOOL_TRUE | JENTRY_ISNULL if start != end => {
                Err(FormatError::new(entry_at, FormatErrorKind::ScalarWithData))
            }
            JENTRY_ISBOOL_FALSE => Ok(Value::Bool(false)),
            JENTRY_ISBOOL_TRUE => Ok(Value::Bool(true)),
            JENTRY_ISNULL => Ok(Value::Null),
            JENTRY_ISCONTAINER => parse_container(c.input, aligned()?, abs_end),
            _ => Err(FormatError::new(
                entry_at,
                FormatErrorKind::EntryType(entry),
            )),
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Value<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.container.entry_count {
            return None;
        }
        let result = self.child();
        // After an error the offsets that follow mean nothing: stop.
        self.index = if result.is_ok() {
            self.index + 1
        } else {
            self.container.entry_count
        };
        Some(result)
    }
}
