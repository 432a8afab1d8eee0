//! The ways in from PostgreSQL, and the one guard they all go through.
//!
//! PostgreSQL calls into this library through C: the SQL functions (`functions.rs`), `_PG_init`,
//! the planner hook (`citus.rs`), relcache callbacks, GUC check and assign hooks, the
//! shared-memory hooks and the background workers' entry points. Inside, two kinds of failure
//! can start: a Rust panic, and a PostgreSQL ERROR raised in a `pg_sys` call, which pgrx's
//! FFI guard turns into a panic. Either one unwinding out of an `extern "C-unwind"` function
//! into PostgreSQL's C frames aborts the process, and the postmaster then restarts the whole
//! cluster. So every way in runs its work through [`enter`], which catches both and raises
//! them again as a PostgreSQL ERROR from the outermost frame, once everything the work owned
//! has been dropped. `scripts/guard-check.py` (in `make check`) fails when a function in
//! `src/` is exported to C without it.
//!
//! What a way in hands back to PostgreSQL besides its own work (the hook that was installed
//! before it, in a chain) is called outside [`enter`], through the plain function pointer
//! that pgrx does not wrap: an ERROR raised there leaves by PostgreSQL's own longjmp,
//! unchanged, as it would if this library were not loaded (no Rust value that needs dropping
//! is alive there).

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::errors::{IdemError, Pending};

/// Runs `body`, the whole work of one call from PostgreSQL named `site`, and returns its
/// value. An error it returns, a panic, or a PostgreSQL ERROR raised inside it is raised as
/// a PostgreSQL ERROR after `body` and everything it owned are gone; the report is built
/// inside the guard too, so a failure while building it (out of memory) is caught as well
/// and reported with a fixed message.
///
/// # Safety
/// Call it from the outermost frame of a function that PostgreSQL called, with no Rust value
/// alive in that frame that needs dropping: raising the error leaves by longjmp.
pub unsafe fn enter<R>(site: &'static CStr, body: impl FnOnce() -> Result<R, IdemError>) -> R {
    let mut pending = Pending::default();
    let mut value = None;
    let reported = catch_unwind(AssertUnwindSafe(|| {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(v)) => value = Some(v),
            Ok(Err(e)) => pending.set(&e, site),
            Err(payload) => pending.set_caught(payload, site),
        }
    }));
    if reported.is_err() {
        // Whatever unwound while the report was built (its own panic payload is dropped with
        // `reported`): a report that allocates nothing.
        pending = Pending::unreportable(site);
    }
    drop(reported);
    match value {
        Some(v) => v,
        None => {
            // SAFETY: only `pending` (plain pointers) is alive here; the caller is the
            // outermost frame.
            unsafe { pending.raise() }
        }
    }
}
