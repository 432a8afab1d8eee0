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
    /// A string's bytes, already checked to be valid UTF-8. Bytes rather than `&str` so the
    /// check can skip `from_utf8` for ASCII, which is most of what commands hold.
    String(&'a [u8]),
    Number(Numeric<'a>),
    Array(Container<'a>),
    Object(Container<'a>),
}

/// An array or object whose header has been checked: its JEntries and data area lie
/// inside the input.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    /// The input up to the end of this container.
    input: &'a [u8],
    /// Offset of the first JEntry (the header is the four bytes before).
    entries: usize,
    /// Offset of the data area; children's offsets are relative to it.
    data: usize,
    /// Elements of an array, pairs of an object.
    count: usize,
    /// JEntries: `count` for an array, `2 * count` for an object.
    entry_count: usize,
}

/// Where one child lies, before its value is read: the JEntry, its index, and its data's
/// bounds relative to the data area (checked to lie inside it).
#[derive(Debug, Clone, Copy)]
pub struct Child {
    entry: u32,
    index: u32,
    start: u32,
    end: u32,
}

/// One object member: its key (valid UTF-8) and where its value lies, so sorting members
/// moves 32 bytes each and a value is read only when it is written.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub key: &'a [u8],
    pub value: Child,
}

/// Reads the root of a jsonb datum. A raw scalar (`jsonb '5'`) comes back as the scalar.
pub fn root(jsonb: &[u8]) -> Result<Value<'_>, FormatError> {
    parse_container(jsonb, 0)
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

fn check_utf8(bytes: &[u8], at: usize) -> Result<(), FormatError> {
    if bytes.is_ascii() {
        return Ok(());
    }
    std::str::from_utf8(bytes)
        .map(|_| ())
        .map_err(|e| FormatError::new(at + e.valid_up_to(), FormatErrorKind::InvalidUtf8))
}

/// Reads the container that starts at `start` and ends where `input` ends.
fn parse_container(input: &[u8], start: usize) -> Result<Value<'_>, FormatError> {
    let truncated = FormatError::new(start, FormatErrorKind::Truncated);
    let header = read_u32(input, start).ok_or(truncated)?;
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
        .filter(|&d| d <= input.len())
        .ok_or(truncated)?;
    let container = Container {
        input,
        entries,
        data,
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
        self.entries - 4
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
            let child = children.next_child()?;
            match self.value(child)? {
                Value::String(key) => out.push(Member { key, value: child }),
                _ => {
                    return Err(FormatError::new(
                        self.entry_offset(child.index),
                        FormatErrorKind::KeyNotString,
                    ))
                }
            }
        }
        for member in out.iter_mut().skip(base) {
            member.value = children.next_child()?;
        }
        Ok(())
    }

    fn entry_offset(&self, index: u32) -> usize {
        self.entries + 4 * index as usize
    }

    /// Reads the value of one of this container's children.
    pub fn value(&self, child: Child) -> Result<Value<'a>, FormatError> {
        let (start, end) = (child.start as usize, child.end as usize);
        let entry_at = self.entry_offset(child.index);
        let abs_start = self.data.saturating_add(start);
        let out_of_bounds = FormatError::new(abs_start, FormatErrorKind::ChildBounds);
        let abs_end = self.data.checked_add(end).ok_or(out_of_bounds)?;
        // Numerics and containers start at the next int boundary; the padding is counted
        // in the child's length.
        let aligned = || {
            int_align(start)
                .filter(|&a| a <= end)
                .map(|a| self.data + a)
                .ok_or(out_of_bounds)
        };
        let bytes_from = |at: usize| self.input.get(at..abs_end).ok_or(out_of_bounds);
        match child.entry & JENTRY_TYPEMASK {
            JENTRY_ISSTRING => {
                let bytes = bytes_from(abs_start)?;
                check_utf8(bytes, abs_start)?;
                Ok(Value::String(bytes))
            }
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
            JENTRY_ISCONTAINER => {
                let at = aligned()?;
                let input = self.input.get(..abs_end).ok_or(out_of_bounds)?;
                parse_container(input, at)
            }
            _ => Err(FormatError::new(
                entry_at,
                FormatErrorKind::EntryType(child.entry),
            )),
        }
    }
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
    /// Where the next child lies; an error past the last one or if its bounds are wrong.
    fn next_child(&mut self) -> Result<Child, FormatError> {
        let c = &self.container;
        let entry_at = c.entries + 4 * self.index;
        let truncated = FormatError::new(entry_at, FormatErrorKind::Truncated);
        if self.index >= c.entry_count {
            return Err(truncated);
        }
        let entry = read_u32(c.input, entry_at).ok_or(truncated)?;
        let offlen = (entry & JENTRY_OFFLENMASK) as usize;
        let start = self.offset;
        // With HAS_OFF the field is this child's end offset, otherwise its length.
        let end = if entry & JENTRY_HAS_OFF != 0 {
            offlen
        } else {
            start + offlen
        };
        let data_len = c.input.len() - c.data;
        let bounds = FormatError::new(entry_at, FormatErrorKind::ChildBounds);
        if end < start || end > data_len {
            return Err(bounds);
        }
        let child = Child {
            entry,
            index: u32::try_from(self.index).map_err(|_| bounds)?,
            start: u32::try_from(start).map_err(|_| bounds)?,
            end: u32::try_from(end).map_err(|_| bounds)?,
        };
        self.offset = end;
        self.index += 1;
        Ok(child)
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Value<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.container.entry_count {
            return None;
        }
        let result = self
            .next_child()
            .and_then(|child| self.container.value(child));
        if result.is_err() {
            // After an error the offsets that follow mean nothing: stop.
            self.index = self.container.entry_count;
        }
        Some(result)
    }
}
