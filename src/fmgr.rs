//! The calling convention of the SQL functions: PostgreSQL's version-1 C interface, written
//! by hand rather than through `#[pg_extern]` for three reasons: the contract's own SQLSTATEs
//! (raised from the outermost frame, see `errors.rs`), NULL arguments answered with 22004
//! (so the functions cannot be STRICT), and jsonb read in its binary form without pgrx
//! converting it to serde_json first.

use idempotency_core::decision::Micros;
use pgrx::{pg_sys, IntoDatum};

use crate::errors::IdemError;
use crate::store::{text_str, varlena_bytes};

/// Declares SQL-callable functions: for each, the `pg_finfo_` record and the entry point that
/// runs the body under pgrx's guard and raises its error, if any, after everything is dropped.
macro_rules! sql_functions {
    ($($name:ident, $finfo:ident => $body:path;)*) => {$(
        #[no_mangle]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1: ::pgrx::pg_sys::Pg_finfo_record = ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        /// # Safety
        /// Called by PostgreSQL's function manager only.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name(fcinfo: ::pgrx::pg_sys::FunctionCallInfo) -> ::pgrx::pg_sys::Datum {
            const NAME: &::std::ffi::CStr =
                match ::std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("function name"),
                };
            let mut pending = $crate::errors::Pending::default();
            // SAFETY: the guard turns panics and PostgreSQL errors raised inside into
            // PostgreSQL errors; the closure owns nothing that outlives it.
            let datum = unsafe {
                ::pgrx::pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
                    let args = $crate::fmgr::Args::new(fcinfo, stringify!($name));
                    match $body(&args) {
                        Ok(datum) => datum,
                        Err(e) => {
                            pending.set(&e);
                            ::pgrx::pg_sys::Datum::from(0)
                        }
                    }
                })
            };
            // Only `pending` (plain pointers) and `datum` are alive here.
            unsafe { pending.raise_if_set(NAME) };
            datum
        }
    )*};
}
pub(crate) use sql_functions;

/// The arguments of one call.
pub struct Args {
    fcinfo: pg_sys::FunctionCallInfo,
    function: &'static str,
}

const MICROS_PER_DAY: i128 = 86_400_000_000;

impl Args {
    pub fn new(fcinfo: pg_sys::FunctionCallInfo, function: &'static str) -> Self {
        Args { fcinfo, function }
    }

    /// The raw datum of argument `i`, or None for SQL NULL.
    pub fn datum(&self, i: usize) -> Option<pg_sys::Datum> {
        // SAFETY: `i` is below the function's declared argument count (callers pass their own
        // signature's positions); defaults are filled in by PostgreSQL.
        unsafe {
            let arg = (*self.fcinfo).args.as_slice(i + 1)[i];
            (!arg.isnull).then_some(arg.value)
        }
    }

    /// A required argument: SQL NULL is 22004.
    pub fn required(&self, i: usize, name: &'static str) -> Result<pg_sys::Datum, IdemError> {
        self.datum(i).ok_or(IdemError::NullArgument {
            function: self.function,
            argument: name,
        })
    }

    /// A scope or key: not NULL (22004), not empty, at most 255 bytes, no control characters
    /// (22023).
    pub fn key_text(
        &self,
        i: usize,
        name: &'static str,
    ) -> Result<(pg_sys::Datum, &str), IdemError> {
        let d = self.required(i, name)?;
        // SAFETY: a text argument.
        let s = unsafe { text_str(d) }?;
        let invalid = |why: String| IdemError::InvalidArgument {
            message: format!("invalid {name} for {}", self.function),
            detail: Some(why),
        };
        if s.is_empty() {
            return Err(invalid(format!("The {name} is empty.")));
        }
        if s.len() > 255 {
            return Err(invalid(format!(
                "The {name} is {} bytes long; the limit is 255 bytes.",
                s.len()
            )));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(invalid(format!(
                "The {name} holds the control character U+{:04X}.",
                c as u32
            )));
        }
        Ok((d, s))
    }

    /// A jsonb argument's binary form (after its varlena header), refused with 22023 when its
    /// uncompressed size is over `limit`.
    pub fn jsonb(
        &self,
        i: usize,
        name: &'static str,
        limit: Option<usize>,
    ) -> Result<Option<(pg_sys::Datum, &[u8])>, IdemError> {
        let Some(d) = self.datum(i) else {
            return Ok(None);
        };
        if let Some(limit) = limit {
            self.check_size(d, name, limit)?;
        }
        // SAFETY: a jsonb argument; detoasted in the function's memory context.
        unsafe {
            let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            let d = pg_sys::Datum::from(v);
            Ok(Some((d, varlena_bytes(d))))
        }
    }

    /// Refuses a varlena argument larger than `limit` bytes (uncompressed), with 22023.
    pub fn check_size(
        &self,
        d: pg_sys::Datum,
        name: &'static str,
        limit: usize,
    ) -> Result<(), IdemError> {
        // SAFETY: a varlena argument; reads its header (or toast pointer) only.
        let size = unsafe { pg_sys::toast_raw_datum_size(d) }.saturating_sub(pg_sys::VARHDRSZ);
        if size > limit {
            return Err(IdemError::InvalidArgument {
                message: format!("{name} of {} is too large", self.function),
                detail: Some(format!("It is {size} bytes; the limit is {limit} bytes.")),
            });
        }
        Ok(())
    }

    /// An optional text argument with a size limit.
    pub fn text(
        &self,
        i: usize,
        name: &'static str,
        limit: usize,
    ) -> Result<Option<pg_sys::Datum>, IdemError> {
        match self.datum(i) {
            Some(d) => self.check_size(d, name, limit).map(|()| Some(d)),
            None => Ok(None),
        }
    }

    pub fn i32(&self, i: usize) -> Option<i32> {
        self.datum(i).map(|d| d.value() as i32)
    }

    pub fn bool(&self, i: usize) -> Option<bool> {
        self.datum(i).map(|d| d.value() != 0)
    }

    /// An HTTP status: required, 100 to 599.
    pub fn http_status(&self, i: usize) -> Result<i32, IdemError> {
        let status = self.required(i, "http_status")?.value() as i32;
        if !(100..=599).contains(&status) {
            return Err(IdemError::InvalidArgument {
                message: format!("invalid http_status for {}", self.function),
                detail: Some(format!(
                    "It is {status}; an HTTP status is between 100 and 599."
                )),
            });
        }
        Ok(status)
    }

    /// An interval argument in microseconds (a month counts 30 days, a day 24 hours, as
    /// PostgreSQL's EXTRACT(EPOCH ...) does), or the setting's value when NULL. `min` is the
    /// smallest value accepted (1 for "positive", 0 for "not negative"); below it is 22023.
    pub fn duration(
        &self,
        i: usize,
        name: &'static str,
        default: Micros,
        min: Micros,
    ) -> Result<Micros, IdemError> {
        let Some(d) = self.datum(i) else {
            return Ok(default);
        };
        // SAFETY: an interval argument is a pointer to a pg_sys::Interval.
        let iv = unsafe { *d.cast_mut_ptr::<pg_sys::Interval>() };
        let micros = i128::from(iv.month) * 30 * MICROS_PER_DAY
            + i128::from(iv.day) * MICROS_PER_DAY
            + i128::from(iv.time);
        let micros = micros.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        if micros < min {
            return Err(IdemError::InvalidArgument {
                message: format!("invalid {name} for {}", self.function),
                detail: Some(if min > 0 {
                    format!("The {name} must be positive.")
                } else {
                    format!("The {name} must not be negative.")
                }),
            });
        }
        Ok(micros)
    }

    /// The composite result of a function declared with OUT parameters.
    pub fn composite(&self, values: &[Option<pg_sys::Datum>]) -> Result<pg_sys::Datum, IdemError> {
        let mut datums: Vec<pg_sys::Datum> = values
            .iter()
            .map(|v| v.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
        let desc = self.result_desc(values.len())?;
        // SAFETY: `desc` is a blessed descriptor of `values.len()` columns whose types match
        // the datums (see the OUT parameters in sql/idempotency.sql).
        unsafe {
            let tuple = pg_sys::heap_form_tuple(desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            Ok(pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data))
        }
    }

    /// The blessed row descriptor of the function's result, built once per backend and
    /// function: `get_call_result_type` builds it from the catalog on every call (about
    /// 12,000 instructions, 5% of a begin + complete), and the executor gives each execution
    /// of a statement a new `FmgrInfo`, so `fn_extra` would not keep it across calls. Keyed
    /// by the function's oid: a changed result type needs a new function, hence a new oid.
    fn result_desc(&self, columns: usize) -> Result<pg_sys::TupleDesc, IdemError> {
        thread_local! {
            static DESCS: std::cell::RefCell<Vec<(pg_sys::Oid, pg_sys::TupleDesc)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        // SAFETY: called by the function manager, so flinfo is set.
        let oid = unsafe { (*(*self.fcinfo).flinfo).fn_oid };
        let cached = DESCS.with_borrow(|d| d.iter().find(|(o, _)| *o == oid).map(|(_, t)| *t));
        if let Some(desc) = cached {
            // SAFETY: a descriptor kept in TopMemoryContext.
            if unsafe { (*desc).natts } as usize == columns {
                return Ok(desc);
            }
        }
        // SAFETY: the catalog's result type of this call, copied into TopMemoryContext and
        // registered (blessed) so that its rows can be returned as records.
        unsafe {
            let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
            let class = pg_sys::get_call_result_type(self.fcinfo, std::ptr::null_mut(), &mut desc);
            if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
                || (*desc).natts as usize != columns
            {
                return Err(IdemError::Internal(format!(
                    "{} must return a record of {} columns",
                    self.function, columns
                )));
            }
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let kept = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
            pg_sys::MemoryContextSwitchTo(old);
            DESCS.with_borrow_mut(|d| {
                d.retain(|(o, _)| *o != oid);
                d.push((oid, kept));
            });
            Ok(kept)
        }
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
