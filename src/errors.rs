//! Every error the extension raises: one enum, each variant with exactly one SQLSTATE, and
//! messages in PostgreSQL's style (primary message in lower case without a period; DETAIL
//! and HINT as sentences).
//!
//! The contract's own codes (IK001..IK003) are not in pgrx's `PgSqlErrorCode`, and pgrx turns
//! any code it does not know into XX000. So errors are reported here through PostgreSQL's
//! `errstart`/`errcode`/`errmsg_internal`/`errfinish` directly, from the outermost frame of
//! each SQL function (see `fmgr.rs`), where no Rust value that needs dropping is alive.

use std::ffi::{c_char, c_int, CStr, CString};

use idempotency_core::decision::Refusal;
use idempotency_core::jsonb::FormatError;
use pgrx::pg_sys;

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
const DATA_CORRUPTED: c_int = sqlstate(b"XX001");
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

/// What a complete, fail or checkpoint found instead of an in-progress record.
#[derive(Debug, Clone, Copy)]
pub enum Found {
    Absent,
    Expired,
    Completed,
    Failed,
}

#[derive(Debug)]
pub enum IdemError {
    /// IK001: the key is live and was first used with a different command.
    CommandMismatch {
        at: KeyRef,
        first_used: String,
        /// The first 8 hex digits of each fingerprint: enough to tell two commands apart.
        stored: String,
        given: String,
    },
    /// IK002: complete, fail or checkpoint on a key that is not in progress.
    NotInProgress { at: KeyRef, found: Found },
    /// IK003: the attempt given is not the record's attempt.
    LeaseLost {
        at: KeyRef,
        given: i32,
        current: i32,
    },
    /// 42501: the record belongs to a role the caller is not a member of.
    NotOwner { at: KeyRef },
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
    /// XX001: a jsonb value that does not follow PostgreSQL's format.
    Corrupted(FormatError),
    /// XX000: something that cannot happen did.
    Internal(String),
}

impl IdemError {
    /// The error for a refusal of the decision, given what the record held.
    pub fn from_refusal(refusal: Refusal, at: KeyRef, record: &RefusalContext) -> Self {
        match refusal {
            Refusal::NotOwner => IdemError::NotOwner { at },
            Refusal::CommandMismatch => IdemError::CommandMismatch {
                at,
                first_used: record.first_used.clone(),
                stored: hex8(&record.stored_fingerprint),
                given: hex8(&record.given_fingerprint),
            },
            Refusal::NotInProgress => IdemError::NotInProgress {
                at,
                found: record.found,
            },
            Refusal::LeaseLost => IdemError::LeaseLost {
                at,
                given: record.given_attempt,
                current: record.current_attempt,
            },
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
            IdemError::InvalidArgument { .. } => INVALID_PARAMETER_VALUE,
            IdemError::Unsupported { .. } => FEATURE_NOT_SUPPORTED,
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
                    at.scope, at.key, first_used, stored, given
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
            IdemError::NotOwner { at } => (
                format!("permission denied for idempotency key \"{}\"", at.key),
                Some(format!(
                    "Scope \"{}\", key \"{}\" belongs to a role that the current role is not a \
                     member of.",
                    at.scope, at.key
                )),
                None,
            ),
            IdemError::DuringRecovery { function } => (
                format!("cannot execute {function} during recovery"),
                Some("This server is a hot standby: it cannot write idempotency records.".into()),
                Some(format!(
                    "Call {function} on the primary; idem_check() reads keys on a standby."
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
            IdemError::Corrupted(e) => (format!("malformed jsonb value: {e}"), None, None),
            IdemError::Internal(m) => (format!("idempotency internal error: {m}"), None, None),
        }
    }
}

/// What the message of a refusal needs to know about the record and the request.
pub struct RefusalContext {
    pub first_used: String,
    pub stored_fingerprint: [u8; 32],
    pub given_fingerprint: [u8; 32],
    pub found: Found,
    pub given_attempt: i32,
    pub current_attempt: i32,
}

impl From<FormatError> for IdemError {
    fn from(e: FormatError) -> Self {
        IdemError::Corrupted(e)
    }
}

fn hex8(fp: &[u8; 32]) -> String {
    fp[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// An error waiting to be raised: plain pointers to palloc'd strings, nothing to drop, so that
/// raising it (which does not return) leaves no Rust value behind.
#[derive(Clone, Copy)]
pub struct Pending {
    sqlstate: c_int,
    message: *mut c_char,
    detail: *mut c_char,
    hint: *mut c_char,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            sqlstate: 0,
            message: std::ptr::null_mut(),
            detail: std::ptr::null_mut(),
            hint: std::ptr::null_mut(),
        }
    }
}

impl Pending {
    /// Copies the error's texts into palloc'd memory of the current memory context.
    pub fn set(&mut self, e: &IdemError) {
        let (message, detail, hint) = e.texts();
        self.sqlstate = e.sqlstate();
        self.message = pstrdup(&message);
        self.detail = detail.as_deref().map_or(std::ptr::null_mut(), pstrdup);
        self.hint = hint.as_deref().map_or(std::ptr::null_mut(), pstrdup);
    }

    /// Raises the error if one is pending; does not return then.
    ///
    /// # Safety
    /// Call it from the outermost frame of a function that PostgreSQL called, with no Rust
    /// value alive that needs dropping: `errfinish` leaves by longjmp.
    pub unsafe fn raise_if_set(self, function: &'static CStr) {
        if self.message.is_null() {
            return;
        }
        // Declared here as pgrx declares them for its own reports: these are not wrapped by
        // pgrx's guard, so the longjmp of errfinish goes straight to PostgreSQL.
        unsafe extern "C-unwind" {
            fn errstart(elevel: c_int, domain: *const c_char) -> bool;
            fn errcode(sqlerrcode: c_int) -> c_int;
            fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
            fn errdetail_internal(fmt: *const c_char, ...) -> c_int;
            fn errhint(fmt: *const c_char, ...) -> c_int;
            fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
        }
        const PERCENT_S: &CStr = c"%s";
        unsafe {
            if errstart(pg_sys::elog::PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(self.sqlstate);
                errmsg_internal(PERCENT_S.as_ptr(), self.message);
                if !self.detail.is_null() {
                    errdetail_internal(PERCENT_S.as_ptr(), self.detail);
                }
                if !self.hint.is_null() {
                    errhint(PERCENT_S.as_ptr(), self.hint);
                }
                errfinish(
                    c"src/errors.rs".as_ptr(),
                    line!() as c_int,
                    function.as_ptr(),
                );
            }
            // errstart returns false only below the reporting threshold, never for ERROR.
            unreachable_error();
        }
    }
}

fn pstrdup(s: &str) -> *mut c_char {
    let c = CString::new(s.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: pstrdup copies the NUL-terminated string into the current memory context.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

#[cold]
fn unreachable_error() -> ! {
    std::process::abort()
}
