//! The arguments and the result of one call of a SQL function, in PostgreSQL's version-1 C
//! interface: [`Args`] reads an argument by its [`Param`] (NULL answered with 22004, sizes and
//! domains checked with 22023), checks the call's argument count against the function's
//! declaration in `signature`, and builds the result rows from the declared columns. The
//! entry points themselves (the guard, counting, logging) are `functions.rs`, on top.

use idempotency_core::decision::Micros;
use pgrx::pg_sys;

use crate::datum::{jsonb_bytes, text_str};
use crate::errors::IdemError;
use crate::signature::{Param, Signature, Type};

/// The arguments of one call.
pub struct Args {
    fcinfo: pg_sys::FunctionCallInfo,
    signature: &'static Signature,
}

const MICROS_PER_DAY: i128 = 86_400_000_000;

impl Args {
    /// Refuses a call whose argument count is not the declared one: the SQL objects were
    /// created by another version of the extension than this library's.
    pub(crate) fn new(
        fcinfo: pg_sys::FunctionCallInfo,
        signature: &'static Signature,
    ) -> Result<Self, IdemError> {
        // SAFETY: the function manager's call info.
        let nargs = usize::try_from(unsafe { (*fcinfo).nargs }).unwrap_or(0);
        if nargs != signature.params.len() {
            return Err(IdemError::VersionMismatch {
                function: signature.name,
                given: nargs,
                declared: signature.params.len(),
            });
        }
        Ok(Args { fcinfo, signature })
    }

    /// The function's name, for messages.
    pub fn function(&self) -> &'static str {
        self.signature.name
    }

    /// The raw datum of argument `p`, or None for SQL NULL.
    pub fn datum(&self, p: Param) -> Option<pg_sys::Datum> {
        debug_assert_eq!(
            self.signature.params.get(p.pos).map(|q| q.name),
            Some(p.name),
            "{} has no argument {} at {}",
            self.signature.name,
            p.name,
            p.pos
        );
        // SAFETY: `Args::new` checked that the call has as many arguments as the signature,
        // and `p` is one of the signature's parameters; defaults are filled in by PostgreSQL.
        unsafe {
            let args = (*self.fcinfo).args.as_slice(self.signature.params.len());
            let arg = args[p.pos];
            (!arg.isnull).then_some(arg.value)
        }
    }

    /// The datum of an argument of a STRICT function, which PostgreSQL never calls with NULL.
    pub fn strict(&self, p: Param) -> pg_sys::Datum {
        debug_assert!(self.signature.strict);
        // SAFETY: as in `datum`.
        unsafe { (*self.fcinfo).args.as_slice(self.signature.params.len())[p.pos].value }
    }

    /// A required argument: SQL NULL is 22004.
    pub fn required(&self, p: Param) -> Result<pg_sys::Datum, IdemError> {
        self.datum(p).ok_or(IdemError::NullArgument {
            function: self.function(),
            argument: p.name,
        })
    }

    /// A scope or key: not NULL (22004), not empty, at most 255 bytes, no control characters
    /// (22023).
    pub fn key_text(&self, p: Param) -> Result<(pg_sys::Datum, &str), IdemError> {
        debug_assert_eq!(p.ty, Type::Text);
        let d = self.required(p)?;
        // SAFETY: a text argument.
        let s = unsafe { text_str(d) }?;
        let name = p.name;
        let invalid = |why: String| IdemError::InvalidArgument {
            message: format!("invalid {name} for {}", self.function()),
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
    /// uncompressed size is over the limit of `limit` (a size and the setting that sets it).
    pub fn jsonb(
        &self,
        p: Param,
        limit: Option<(usize, &'static str)>,
    ) -> Result<Option<(pg_sys::Datum, &[u8])>, IdemError> {
        debug_assert_eq!(p.ty, Type::Jsonb);
        let Some(d) = self.datum(p) else {
            return Ok(None);
        };
        if let Some(limit) = limit {
            self.check_size(d, p, limit)?;
        }
        // SAFETY: a jsonb argument; detoasted in the function's memory context.
        Ok(Some(unsafe { jsonb_bytes(d) }))
    }

    /// Refuses a varlena argument larger than `limit` bytes (uncompressed), with 22023 and a
    /// hint naming the setting.
    fn check_size(
        &self,
        d: pg_sys::Datum,
        p: Param,
        (limit, setting): (usize, &'static str),
    ) -> Result<(), IdemError> {
        // SAFETY: a varlena argument; reads its header (or toast pointer) only.
        let size = unsafe { pg_sys::toast_raw_datum_size(d) }.saturating_sub(pg_sys::VARHDRSZ);
        if size > limit {
            return Err(IdemError::TooLarge {
                function: self.function(),
                argument: p.name,
                size,
                limit,
                setting,
            });
        }
        Ok(())
    }

    /// An optional text argument with a size limit.
    pub fn text(
        &self,
        p: Param,
        limit: (usize, &'static str),
    ) -> Result<Option<pg_sys::Datum>, IdemError> {
        debug_assert_eq!(p.ty, Type::Text);
        match self.datum(p) {
            Some(d) => self.check_size(d, p, limit).map(|()| Some(d)),
            None => Ok(None),
        }
    }

    pub fn i32(&self, p: Param) -> Option<i32> {
        debug_assert_eq!(p.ty, Type::Integer);
        self.datum(p).map(|d| d.value() as i32)
    }

    /// A required boolean: SQL NULL is 22004.
    pub fn bool(&self, p: Param) -> Result<bool, IdemError> {
        debug_assert_eq!(p.ty, Type::Boolean);
        self.required(p).map(|d| d.value() != 0)
    }

    /// An HTTP status: required, 100 to 599.
    pub fn http_status(&self, p: Param) -> Result<i32, IdemError> {
        debug_assert_eq!(p.ty, Type::Integer);
        let status = self.required(p)?.value() as i32;
        if !(100..=599).contains(&status) {
            return Err(IdemError::InvalidArgument {
                message: format!("invalid http_status for {}", self.function()),
                detail: Some(format!(
                    "It is {status}; an HTTP status is between 100 and 599."
                )),
            });
        }
        Ok(status)
    }

    /// An interval argument in microseconds (a month counts 30 days, a day 24 hours), or the
    /// setting's value when NULL (`default` reads it: a setting holding an invalid value is an
    /// error only when it is used). `min` is the smallest value accepted (1 for "positive", 0
    /// for "not negative"); below it is 22023.
    pub fn duration(
        &self,
        p: Param,
        default: fn() -> Result<Micros, IdemError>,
        min: Micros,
    ) -> Result<Micros, IdemError> {
        debug_assert_eq!(p.ty, Type::Interval);
        let Some(d) = self.datum(p) else {
            return default();
        };
        // SAFETY: an interval argument is a pointer to a pg_sys::Interval.
        let iv = unsafe { *d.cast_mut_ptr::<pg_sys::Interval>() };
        let micros = i128::from(iv.month) * 30 * MICROS_PER_DAY
            + i128::from(iv.day) * MICROS_PER_DAY
            + i128::from(iv.time);
        let micros = micros.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        if micros < min {
            let name = p.name;
            return Err(IdemError::InvalidArgument {
                message: format!("invalid {name} for {}", self.function()),
                detail: Some(if min > 0 {
                    format!("The {name} must be positive.")
                } else {
                    format!("The {name} must not be negative.")
                }),
            });
        }
        Ok(micros)
    }

    /// The result row of a function declared with OUT parameters or a composite result type,
    /// its values in the order of the declared columns (the `values()` of the function's
    /// `Out`; each version's SQL calls the C symbol whose `Out` has its columns).
    pub fn row<const N: usize>(
        &self,
        values: [Option<pg_sys::Datum>; N],
    ) -> Result<pg_sys::Datum, IdemError> {
        let mut datums = values.map(|v| v.unwrap_or(pg_sys::Datum::from(0)));
        let mut nulls = values.map(|v| v.is_none());
        let desc = self.result_desc(N)?;
        // SAFETY: `desc` is a blessed descriptor of N columns whose types are the declared
        // ones (checked against pg_proc by the signature test).
        unsafe {
            let tuple = pg_sys::heap_form_tuple(desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            Ok(pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data))
        }
    }

    /// The result of a set-returning function declared with OUT parameters: every row, in
    /// materialize mode (a tuplestore in the query's memory).
    pub fn rows<const N: usize>(
        &self,
        rows: impl IntoIterator<Item = [Option<pg_sys::Datum>; N]>,
    ) -> Result<pg_sys::Datum, IdemError> {
        // SAFETY: the function manager's call info of a set-returning function; the
        // tuplestore and its descriptor live in the per-query memory context, as the executor
        // expects of SFRM_Materialize.
        unsafe {
            let rsinfo = (*self.fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
            if rsinfo.is_null()
                || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
                || (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32
                    == 0
            {
                return Err(IdemError::Internal(format!(
                    "{} was called in a context that cannot accept a set",
                    self.function()
                )));
            }
            let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
            let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
            let class = pg_sys::get_call_result_type(self.fcinfo, std::ptr::null_mut(), &mut desc);
            if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || (*desc).natts as usize != N {
                pg_sys::MemoryContextSwitchTo(old);
                return Err(IdemError::Internal(format!(
                    "{} must return records of {} columns",
                    self.function(),
                    N
                )));
            }
            let random = (*rsinfo).allowedModes
                & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
                != 0;
            let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
            (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
            (*rsinfo).setResult = store;
            (*rsinfo).setDesc = desc;
            pg_sys::MemoryContextSwitchTo(old);
            for values in rows {
                let mut datums = values.map(|v| v.unwrap_or(pg_sys::Datum::from(0)));
                let mut nulls = values.map(|v| v.is_none());
                pg_sys::tuplestore_putvalues(store, desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            }
            (*self.fcinfo).isnull = true;
        }
        Ok(pg_sys::Datum::from(0))
    }

    /// The blessed row descriptor of the function's result, built once per backend and
    /// function: `get_call_result_type` builds it from the catalog on every call (about
    /// 12,000 instructions, 5% of a begin + complete), and the executor gives each execution
    /// of a statement a new `FmgrInfo`, so `fn_extra` would not keep it across calls. Keyed
    /// by the function's oid: a changed result type needs a new function, hence a new oid.
    /// For a composite result type this is the type's descriptor (its `tdtypeid`, so rows are
    /// of that type); for OUT parameters a blessed record descriptor.
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
                    self.function(),
                    columns
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
