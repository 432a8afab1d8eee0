//! Every error the extension raises: one enum, each variant with exactly one SQLSTATE, and
//! messages in PostgreSQL's style (primary message in lower case without a period; DETAIL
//! and HINT as sentences).
//!
//! The contract's own codes (IK001..IK003) are not in pgrx's `PgSqlErrorCode`, and pgrx turns
//! any code it does not know into XX000. So errors are reported here through PostgreSQL's
//! `errstart`/`errcode`/`errmsg_internal`/`errfinish` directly, from the outermost frame of
//! each SQL function (see `functions.rs`), where no Rust value that needs dropping is alive.
//!
//! Errors that PostgreSQL raises inside a call (a lock timeout, a cancel, a serialization
//! failure, another extension's error) reach the client as PostgreSQL raised them: pgrx
//! catches them at its FFI boundary and unwinds, and [`Pending::set_caught`] raises them again
//! with their own SQLSTATE, message, DETAIL and HINT, without the Rust backtrace pgrx would add.

use std::any::Any;
use std::ffi::{c_char, c_int, CStr, CString};

use idempotency_core::decision::{Found, Micros, Refusal};
use idempotency_core::jsonb::FormatError;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReportWithLevel};

/// Builds PostgreSQL's integer form of a five-character SQLSTATE (MAKE_SQLSTATE).
const fn sqlstate(code: &[u8; 5]) -> c_int {
    let mut value = 0;
    let mut i = 0;
    while i < 5 {
        value += ((code[i].wrapping_sub(b'0') as c_int) & 0x3F) << (6 * i);
        i += 1;
    }
    value
}

pub const IK001: c_int = sqlstate(b"IK001");
pub const IK002: c_int = sqlstate(b"IK002");
pub const IK003: c_int = sqlstate(b"IK003");
const NULL_VALUE_NOT_ALLOWED: c_int = sqlstate(b"22004");
const INVALID_PARAMETER_VALUE: c_int = sqlstate(b"22023");
const INSUFFICIENT_PRIVILEGE: c_int = sqlstate(b"42501");
const READ_ONLY_SQL_TRANSACTION: c_int = sqlstate(b"25006");
const FEATURE_NOT_SUPPORTED: c_int = sqlstate(b"0A000");
const OBJECT_NOT_IN_PREREQUISITE_STATE: c_int = sqlstate(b"55000");
const DATA_CORRUPTED: c_int = sqlstate(b"XX001");
const SERIALIZATION_FAILURE: c_int = sqlstate(b"40001");
const INTERNAL_ERROR: c_int = sqlstate(b"XX000");

/// Which key an error is about, for its message.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub scope: String,
    pub key: String,
}

impl KeyRef {
    pub fn new(scope: &str, key: &str) -> Self {
        KeyRef {
            scope: scope.to_owned(),
            key: key.to_owned(),
        }
    }
}

#[derive(Debug)]
pub enum IdemError {
    /// IK001: the key is live and was first used with a different command.
    CommandMismatch {
        at: KeyRef,
        first_used: Micros,
        /// Both fingerprints (the message shows their first 8 hex digits: enough to tell two
        /// commands apart; the log line of `idempotency.log_refusals` shows them whole).
        stored: [u8; 32],
        given: [u8; 32],
    },
    /// IK002: complete, fail or checkpoint on a key that is not in progress.
    NotInProgress { at: KeyRef, found: Found },
    /// IK003: the attempt given is not the record's attempt.
    LeaseLost {
        at: KeyRef,
        given: i32,
        current: i32,
    },
    /// 42501: the record belongs to a role the caller may not act as (`evict`: nor administers,
    /// for idem_forget); see `api::owns`.
    NotOwner { at: KeyRef, evict: bool },
    /// 25006: a writing function on a hot standby (in a read-only transaction on a primary,
    /// PostgreSQL's own PreventCommandIfReadOnly reports the same code).
    DuringRecovery { function: &'static str },
    /// 22004: a required argument is NULL.
    NullArgument {
        function: &'static str,
        argument: &'static str,
    },
    /// 22023: an argument is out of its domain.
    InvalidArgument {
        message: String,
        detail: Option<String>,
    },
    /// 0A000: a call in a form or place that cannot keep the contract (on Citus: a call that
    /// runs on a node without the key's shard, see `citus.rs`).
    Unsupported {
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// 22023: a value over the size limit that `setting` sets.
    TooLarge {
        function: &'static str,
        argument: &'static str,
        size: usize,
        limit: usize,
        setting: &'static str,
    },
    /// 22023: a ttl, given or from `idempotency.ttl` (`from_setting`), beyond the ceiling that
    /// `idempotency.max_ttl` sets.
    TtlTooLong {
        ttl: Micros,
        max: Micros,
        from_setting: bool,
    },
    /// 22023: a duration setting holds a value that PostgreSQL let through unchecked (set
    /// before the library was loaded, or in the configuration file); see `settings`.
    InvalidSetting {
        name: &'static str,
        value: String,
        set_where: &'static str,
        reason: String,
        example: &'static str,
    },
    /// 55000: a function that needs the library in shared_preload_libraries.
    NotPreloaded { function: &'static str },
    /// 55000: the SQL objects declare a function with another number of arguments than this
    /// library does: they were created by another version of the extension.
    VersionMismatch {
        function: &'static str,
        given: usize,
        declared: usize,
    },
    /// 40001: under REPEATABLE READ or SERIALIZABLE, the record changed after the
    /// transaction's snapshot (the direct path's words are the executor's: store/direct.rs).
    SerializationFailure(&'static str),
    /// XX001: a jsonb value that does not follow PostgreSQL's format.
    Corrupted(FormatError),
    /// XX000: something that cannot happen did.
    Internal(String),
}

impl IdemError {
    /// The error for a refusal of the decision about the key `at`.
    pub fn from_refusal(refusal: Refusal, at: KeyRef) -> Self {
        match refusal {
            Refusal::NotOwner => IdemError::NotOwner { at, evict: false },
            Refusal::CommandMismatch {
                first_used,
                stored,
                given,
            } => IdemError::CommandMismatch {
                at,
                first_used,
                stored,
                given,
            },
            Refusal::NotInProgress(found) => IdemError::NotInProgress { at, found },
            Refusal::LeaseLost { given, current } => IdemError::LeaseLost { at, given, current },
        }
    }

    pub fn sqlstate(&self) -> c_int {
        match self {
            IdemError::CommandMismatch { .. } => IK001,
            IdemError::NotInProgress { .. } => IK002,
            IdemError::LeaseLost { .. } => IK003,
            IdemError::NotOwner { .. } => INSUFFICIENT_PRIVILEGE,
            IdemError::DuringRecovery { .. } => READ_ONLY_SQL_TRANSACTION,
            IdemError::NullArgument { .. } => NULL_VALUE_NOT_ALLOWED,
            IdemError::InvalidArgument { .. }
            | IdemError::TooLarge { .. }
            | IdemError::TtlTooLong { .. }
            | IdemError::InvalidSetting { .. } => INVALID_PARAMETER_VALUE,
            IdemError::VersionMismatch { .. } | IdemError::NotPreloaded { .. } => {
                OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            IdemError::Unsupported { .. } => FEATURE_NOT_SUPPORTED,
            IdemError::SerializationFailure(_) => SERIALIZATION_FAILURE,
            IdemError::Corrupted(_) => DATA_CORRUPTED,
            IdemError::Internal(_) => INTERNAL_ERROR,
        }
    }

    /// The primary message, DETAIL and HINT.
    pub fn texts(&self) -> (String, Option<String>, Option<String>) {
        match self {
            IdemError::CommandMismatch {
                at,
                first_used,
                stored,
                given,
            } => (
                format!(
                    "idempotency key \"{}\" was already used with a different command",
                    at.key
                ),
                Some(format!(
                    "Scope \"{}\", key \"{}\" was first used at {} with command fingerprint {}; \
                     this request's fingerprint is {}.",
                    at.scope,
                    at.key,
                    crate::datum::timestamptz_text(*first_used),
                    hex8(stored),
                    hex8(given)
                )),
                Some(
                    "Use a new idempotency key for a different command; a retry must repeat \
                     the first command exactly."
                        .into(),
                ),
            ),
            IdemError::NotInProgress { at, found } => (
                format!("idempotency key \"{}\" is not in progress", at.key),
                Some(format!(
                    "Scope \"{}\", key \"{}\" {}.",
                    at.scope,
                    at.key,
                    match found {
                        Found::Absent => "has no record",
                        Found::Expired => "has expired",
                        Found::Completed => "is completed",
                        Found::Failed => "has failed",
                    }
                )),
                Some(
                    "idem_complete, idem_fail and idem_checkpoint act only on a key that \
                     idem_begin answered with execute."
                        .into(),
                ),
            ),
            IdemError::LeaseLost { at, given, current } => (
                format!("lease on idempotency key \"{}\" was lost", at.key),
                Some(format!(
                    "Scope \"{}\", key \"{}\" is at attempt {}; this call is from attempt {}.",
                    at.scope, at.key, current, given
                )),
                Some(
                    "Another request took the key over after the lease ran out; this attempt's \
                     outcome must not be reported."
                        .into(),
                ),
            ),
            IdemError::NotOwner { at, evict } => (
                format!("permission denied for idempotency key \"{}\"", at.key),
                Some(format!(
                    "Scope \"{}\", key \"{}\" belongs to a role that the current role is not a \
                     member of{}.",
                    at.scope,
                    at.key,
                    if *evict {
                        " and has no ADMIN OPTION on"
                    } else {
                        ""
                    }
                )),
                None,
            ),
            IdemError::DuringRecovery { function } => (
                format!("cannot execute {function}() during recovery"),
                Some("This server is a hot standby: it cannot write idempotency records.".into()),
                Some(format!(
                    "Call {function}() on the primary; idem_check() reads keys on a standby."
                )),
            ),
            IdemError::NullArgument { function, argument } => (
                format!("argument \"{argument}\" of {function} must not be null"),
                None,
                None,
            ),
            IdemError::InvalidArgument { message, detail } => {
                (message.clone(), detail.clone(), None)
            }
            IdemError::Unsupported {
                message,
                detail,
                hint,
            } => (message.clone(), detail.clone(), hint.clone()),
            IdemError::TooLarge {
                function,
                argument,
                size,
                limit,
                setting,
            } => (
                format!("{argument} of {function} is too large"),
                Some(format!("It is {size} bytes; the limit is {limit} bytes.")),
                Some(format!(
                    "Raise idempotency.{setting}, or pass a smaller value."
                )),
            ),
            IdemError::TtlTooLong {
                ttl,
                max,
                from_setting,
            } => {
                let detail = Some(format!(
                    "It is {}; the limit is {}.",
                    duration_text(*ttl),
                    duration_text(*max)
                ));
                if *from_setting {
                    (
                        "idempotency.ttl is longer than idempotency.max_ttl".into(),
                        detail,
                        Some(
                            "Set idempotency.ttl to at most idempotency.max_ttl, or pass a \
                             shorter ttl; only a superuser can raise idempotency.max_ttl."
                                .into(),
                        ),
                    )
                } else {
                    (
                        "ttl of idem_begin() is longer than idempotency.max_ttl".into(),
                        detail,
                        Some(
                            "Pass a ttl of at most idempotency.max_ttl; only a superuser can \
                             raise idempotency.max_ttl."
                                .into(),
                        ),
                    )
                }
            }
            IdemError::InvalidSetting {
                name,
                value,
                set_where,
                reason,
                example,
            } => (
                format!("invalid value for parameter \"{name}\": \"{value}\""),
                Some(format!(
                    "It was set {set_where}, where PostgreSQL could not refuse it; rather than \
                     fall back to the default, the calls that need it fail. {reason}"
                )),
                Some(format!(
                    "Set {name} to a duration such as {example}, or RESET it."
                )),
            ),
            IdemError::NotPreloaded { function } => (
                format!("{function} needs the idempotency library to be loaded via \"shared_preload_libraries\""),
                Some("The counters live in shared memory, which a library can only reserve at server start.".into()),
                Some("Add idempotency to shared_preload_libraries and restart the server.".into()),
            ),
            IdemError::VersionMismatch {
                function,
                given,
                declared,
            } => (
                format!(
                    "{function} was called with {given} arguments, but the extension's library \
                     declares {declared}"
                ),
                Some(
                    "The extension's SQL objects were created by another version of the \
                     extension than the installed library."
                        .into(),
                ),
                Some(
                    "Run ALTER EXTENSION idempotency UPDATE, or install the library of the \
                     extension's version."
                        .into(),
                ),
            ),
            IdemError::Corrupted(e) => (format!("malformed jsonb value: {e}"), None, None),
            IdemError::SerializationFailure(m) => ((*m).into(), None, None),
            IdemError::Internal(m) => (format!("idempotency internal error: {m}"), None, None),
        }
    }
}

impl IdemError {
    /// The LOG line of `idempotency.log_refusals` for an IK001 or IK003 (nothing for other
    /// errors): scope, key and the fingerprints or attempts, never the command or a response.
    pub fn log(&self, function: &'static CStr) {
        match self {
            IdemError::CommandMismatch {
                at, stored, given, ..
            } => log(
                IK001,
                &format!(
                    "idempotency key \"{}\" was reused with a different command",
                    at.key
                ),
                Some(&format!(
                    "Scope \"{}\", key \"{}\": stored command fingerprint {}, this request's {}.",
                    at.scope,
                    at.key,
                    hex(stored),
                    hex(given)
                )),
                function,
            ),
            IdemError::LeaseLost { at, given, current } => log(
                IK003,
                &format!("lease on idempotency key \"{}\" was lost", at.key),
                Some(&format!(
                    "Scope \"{}\", key \"{}\" is at attempt {}; a call from attempt {} was refused.",
                    at.scope, at.key, current, given
                )),
                function,
            ),
            _ => {}
        }
    }
}

/// The LOG line of `idempotency.log_refusals` for a takeover: `idem_begin` answered execute
/// at `attempt` because the previous holder's lease ran out.
pub fn log_takeover(scope: &str, key: &str, attempt: i32, lease_expired_at: Option<Micros>) {
    log(
        0,
        &format!("idempotency key \"{key}\" was taken over at attempt {attempt}"),
        Some(&format!(
            "Scope \"{scope}\", key \"{key}\": the lease of attempt {} ran out{}.",
            attempt.saturating_sub(1),
            lease_expired_at.map_or(String::new(), |t| format!(
                " at {}",
                crate::datum::timestamptz_text(t)
            ))
        )),
        c"idem_begin",
    );
}

impl From<std::str::Utf8Error> for IdemError {
    fn from(e: std::str::Utf8Error) -> Self {
        IdemError::Internal(format!("text is not UTF-8: {e}"))
    }
}

impl From<FormatError> for IdemError {
    fn from(e: FormatError) -> Self {
        IdemError::Corrupted(e)
    }
}

/// A positive duration as PostgreSQL prints an interval of days and time ("30 days",
/// "1 day 02:00:00", "00:00:00.5"); the largest value, to which a longer interval (or
/// `infinity`) was clamped, as what it is.
pub fn duration_text(micros: Micros) -> String {
    const DAY: Micros = 86_400_000_000;
    if micros == Micros::MAX {
        return "longer than a timestamp can reach (292,000 years or more)".into();
    }
    let (days, rest) = (micros.max(0) / DAY, micros.max(0) % DAY);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(format!("{days} day{}", if days == 1 { "" } else { "s" }));
    }
    if rest > 0 || days == 0 {
        let (secs, frac) = (rest / 1_000_000, rest % 1_000_000);
        let mut clock = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        if frac > 0 {
            clock.push_str(format!(".{frac:06}").trim_end_matches('0'));
        }
        parts.push(clock);
    }
    parts.join(" ")
}

fn hex8(fp: &[u8; 32]) -> String {
    hex(&fp[..4])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error waiting to be raised: plain pointers, nothing to drop, so that raising it (which
/// does not return) leaves no Rust value behind.
#[derive(Clone, Copy)]
pub struct Pending {
    sqlstate: c_int,
    message: *mut c_char,
    detail: *mut c_char,
    hint: *mut c_char,
    /// Where the error was raised, for the server log's LOCATION: PostgreSQL keeps these
    /// pointers without copying them, so they point at strings that live as long as the
    /// backend (see [`interned`]).
    filename: *const c_char,
    lineno: c_int,
    funcname: *const c_char,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            sqlstate: 0,
            message: std::ptr::null_mut(),
            detail: std::ptr::null_mut(),
            hint: std::ptr::null_mut(),
            filename: std::ptr::null(),
            lineno: 0,
            funcname: std::ptr::null(),
        }
    }
}

impl Pending {
    /// One of the extension's own errors, raised by `function`. Copies the texts into
    /// palloc'd memory of the current memory context.
    pub fn set(&mut self, e: &IdemError, function: &'static CStr) {
        let (message, detail, hint) = e.texts();
        *self = Pending {
            sqlstate: e.sqlstate(),
            message: pstrdup(&message),
            detail: detail.as_deref().map_or(std::ptr::null_mut(), pstrdup),
            hint: hint.as_deref().map_or(std::ptr::null_mut(), pstrdup),
            filename: c"src/api.rs".as_ptr(),
            lineno: 0,
            funcname: function.as_ptr(),
        };
    }

    /// What unwound out of a call: an error that PostgreSQL (or another extension) raised
    /// inside it, which pgrx caught at the FFI boundary and turned into a panic, is raised
    /// again as it was raised: its SQLSTATE, message, DETAIL, HINT and location, and never
    /// the Rust backtrace that pgrx would add to its DETAIL. Anything else is a bug of this
    /// extension: XX000 with the panic's message.
    pub fn set_caught(&mut self, payload: Box<dyn Any + Send>, function: &'static CStr) {
        let report = match payload.downcast::<CaughtError>() {
            Ok(caught) => match *caught {
                CaughtError::PostgresError(r)
                | CaughtError::ErrorReport(r)
                | CaughtError::RustPanic { ereport: r, .. } => r,
            },
            Err(payload) => match payload.downcast::<ErrorReportWithLevel>() {
                Ok(r) => *r,
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    self.set(&IdemError::Internal(format!("panic: {what}")), function);
                    return;
                }
            },
        };
        *self = Pending {
            sqlstate: report.sql_error_code() as c_int,
            message: pstrdup(report.message()),
            detail: report.detail().map_or(std::ptr::null_mut(), pstrdup),
            hint: report.hint().map_or(std::ptr::null_mut(), pstrdup),
            filename: interned(report.file()),
            lineno: report.line_number() as c_int,
            funcname: report.function_name().map_or(function.as_ptr(), interned),
        };
    }

    /// The report of an error that could not be reported (building its report failed, out of
    /// memory): fixed texts, nothing allocated.
    pub fn unreportable(function: &'static CStr) -> Self {
        Pending {
            sqlstate: INTERNAL_ERROR,
            message: c"idempotency could not report an error".as_ptr().cast_mut(),
            detail: c"Building the error's report failed; see the server log for what came before."
                .as_ptr()
                .cast_mut(),
            hint: std::ptr::null_mut(),
            filename: c"src/entry.rs".as_ptr(),
            lineno: 0,
            funcname: function.as_ptr(),
        }
    }

    /// Raises the error; never returns.
    ///
    /// # Safety
    /// Call it from the outermost frame of a function that PostgreSQL called, with no Rust
    /// value alive that needs dropping: `errfinish` leaves by longjmp.
    pub unsafe fn raise(self) -> ! {
        let this = if self.message.is_null() {
            // Nothing was set: a caller's bug, reported rather than ignored.
            Pending::unreportable(c"idempotency")
        } else {
            self
        };
        unsafe {
            if errstart(pg_sys::elog::PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(this.sqlstate);
                errmsg_internal(PERCENT_S.as_ptr(), this.message);
                if !this.detail.is_null() {
                    errdetail_internal(PERCENT_S.as_ptr(), this.detail);
                }
                if !this.hint.is_null() {
                    errhint(PERCENT_S.as_ptr(), this.hint);
                }
                errfinish(this.filename, this.lineno, this.funcname);
            }
            // errstart returns false only below the reporting threshold, never for ERROR.
            unreachable_error();
        }
    }
}

// Declared here as pgrx declares them for its own reports: these are not wrapped by pgrx's
// guard, so the longjmp of errfinish at ERROR goes straight to PostgreSQL.
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
    fn errdetail_internal(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}
const PERCENT_S: &CStr = c"%s";

/// Writes a LOG line (to the server log, and to a client whose client_min_messages is log or
/// lower) with a SQLSTATE, so that `%e` in log_line_prefix shows it. Returns normally.
/// (Not pgrx's `log!`: on PostgreSQL 13 pgrx compares log levels numerically and drops LOG
/// lines whenever log_min_messages is warning, the default.)
pub fn log(sqlstate: c_int, message: &str, detail: Option<&str>, funcname: &'static CStr) {
    let message = std::ffi::CString::new(message.replace('\0', "")).unwrap_or_default();
    let detail = detail.map(|d| std::ffi::CString::new(d.replace('\0', "")).unwrap_or_default());
    // SAFETY: a report at LOG level, which errfinish returns from; the strings outlive it.
    // Guarded like any pg_sys call: an ERROR while reporting (out of memory) comes back as a
    // panic, for the way in's guard (entry.rs) to raise.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            if errstart(pg_sys::elog::PgLogLevel::LOG as c_int, std::ptr::null()) {
                errcode(sqlstate);
                errmsg_internal(PERCENT_S.as_ptr(), message.as_ptr());
                if let Some(d) = &detail {
                    errdetail_internal(PERCENT_S.as_ptr(), d.as_ptr());
                }
                errfinish(c"idempotency".as_ptr(), 0, funcname.as_ptr());
            }
        })
    }
}

fn pstrdup(s: &str) -> *mut c_char {
    let c = CString::new(s.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: pstrdup copies the NUL-terminated string into the current memory context.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

/// A C string that lives as long as the backend, one per distinct text: source file and
/// function names of re-raised errors (a handful per backend).
fn interned(s: &str) -> *const c_char {
    thread_local! {
        static KEPT: std::cell::RefCell<Vec<CString>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    KEPT.with_borrow_mut(|kept| {
        if let Some(c) = kept.iter().find(|c| c.to_bytes() == s.as_bytes()) {
            return c.as_ptr();
        }
        let c = CString::new(s.replace('\0', "")).unwrap_or_default();
        let ptr = c.as_ptr();
        kept.push(c);
        ptr
    })
}

#[cold]
fn unreachable_error() -> ! {
    std::process::abort()
}
