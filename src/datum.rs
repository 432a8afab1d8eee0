//! Values between PostgreSQL's datums and Rust: the bottom of the library, importing nothing
//! of it (as pgrx keeps its own conversions apart). Text and bytea read in place, jsonb's
//! binary form, datums built for results, and a timestamp as the session prints it.

use std::ffi::CStr;

use pgrx::{pg_sys, IntoDatum};

/// The bytes of a (possibly toasted or short-header) varlena datum.
///
/// # Safety
/// `d` must be a valid varlena datum that outlives the returned slice.
pub unsafe fn varlena_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let v = packed(d);
        let len = pgrx::varlena::varsize_any_exhdr(v);
        let data = pgrx::varlena::vardata_any(v) as *const u8;
        std::slice::from_raw_parts(data, len)
    }
}

/// What `pg_detoast_datum_packed` gives, without a call into PostgreSQL for a value that
/// is neither compressed nor stored out of line (the arguments of almost every call: a
/// short- or 4-byte-header value in place), which is given back as it is, as that function
/// does.
///
/// # Safety
/// As for [`varlena_bytes`].
unsafe fn packed(d: pg_sys::Datum) -> *mut pg_sys::varlena {
    let v = d.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: a valid varlena: its first byte tells which header it has.
    unsafe {
        if pgrx::varlena::varatt_is_4b_c(v) || pgrx::varlena::varatt_is_1b_e(v) {
            pg_sys::pg_detoast_datum_packed(v)
        } else {
            v
        }
    }
}

/// A text datum's contents as `&str` (the database is UTF8, checked at CREATE EXTENSION, and
/// the server validates text on input).
///
/// # Safety
/// As for [`varlena_bytes`].
pub unsafe fn text_str<'a>(d: pg_sys::Datum) -> Result<&'a str, std::str::Utf8Error> {
    std::str::from_utf8(unsafe { varlena_bytes(d) })
}

/// A jsonb value's binary form after its varlena header, detoasted in the current memory
/// context.
///
/// # Safety
/// `d` must be a jsonb datum.
pub unsafe fn jsonb_bytes<'a>(d: pg_sys::Datum) -> (pg_sys::Datum, &'a [u8]) {
    unsafe {
        let v = pg_sys::Datum::from(packed(d));
        (v, varlena_bytes(v))
    }
}

/// A text datum in the current memory context.
pub fn text(s: &str) -> pg_sys::Datum {
    s.into_datum().unwrap_or(pg_sys::Datum::from(0))
}

/// A bytea datum in the current memory context.
pub fn bytea(b: &[u8]) -> pg_sys::Datum {
    b.into_datum().unwrap_or(pg_sys::Datum::from(0))
}

/// A timestamp as the session shows it (DateStyle, TimeZone).
pub fn timestamptz_text(t: i64) -> String {
    // SAFETY: the type output function of timestamptz on a timestamptz value.
    unsafe {
        let mut out = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(pg_sys::TIMESTAMPTZOID, &mut out, &mut varlena);
        let s = pg_sys::OidOutputFunctionCall(out, pg_sys::Datum::from(t));
        CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

/// A `name` datum holding a C string.
pub fn name(s: *const std::ffi::c_char) -> pg_sys::Datum {
    // SAFETY: a NameData in the current memory context, filled with (at most NAMEDATALEN - 1
    // bytes of) the string.
    unsafe {
        let name =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::NameData>()).cast::<pg_sys::NameData>();
        pg_sys::namestrcpy(name, s);
        pg_sys::Datum::from(name)
    }
}
