//! The differences between PostgreSQL 13 and 18 that the settings, the shared-memory counters
//! and the purge worker meet, in one place:
//! - shared memory is requested in `shmem_request_hook` from 15 on (asking earlier is an
//!   error there), and directly in `_PG_init` before 15 (there is no such hook);
//! - a library reserves its setting prefix with `MarkGUCPrefixReserved` from 15 on (unknown
//!   `idempotency.*` names are then refused), with `EmitWarningsOnPlaceholders` (a WARNING)
//!   before;
//! - a signal handler is installed with `pqsignal_be` in 18, `pqsignal` before;
//! - a setting's check-hook "extra" is freed with `free` before 16 and with `pfree` (in
//!   PostgreSQL's GUC memory context) from 16 on, so it must come from `malloc` or from
//!   `guc_malloc` accordingly.

use std::ffi::CStr;

use pgrx::pg_sys;

/// Refuses (15+) or warns about (13, 14) settings named `prefix.*` that the library does not
/// define: a misspelt `idempotency.tll` would otherwise be accepted silently.
pub fn reserve_guc_prefix(prefix: &'static CStr) {
    // SAFETY: called from _PG_init after the library's settings are defined.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr());
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr());
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut REQUEST: Option<fn()> = None;
static mut STARTUP: Option<fn()> = None;

/// Arranges for `request` to run where this version wants shared memory requested (it calls
/// `RequestAddinShmemSpace` and `RequestNamedLWLockTranche`), and `startup` in the shared
/// memory startup hook. Call once, from `_PG_init` while shared_preload_libraries loads.
pub fn install_shmem_hooks(request: fn(), startup: fn()) {
    // SAFETY: _PG_init runs single-threaded in the postmaster; the hooks chain to whatever
    // was installed before.
    unsafe {
        REQUEST = Some(request);
        STARTUP = Some(startup);
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        request();
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(on_request);
        }
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: set once in install_shmem_hooks.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        if let Some(request) = REQUEST {
            request();
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: set once in install_shmem_hooks.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        if let Some(startup) = STARTUP {
            startup();
        }
    }
}

/// Makes SIGTERM end this process the way it ends a backend (`die`: the current transaction
/// is aborted at the next interrupt check and the process exits), instead of the default
/// `bgworker_die`, which raises FATAL inside the signal handler.
pub fn sigterm_dies() {
    // PostgreSQL's handler itself (pg_sys::die is pgrx's guarded Rust wrapper of it).
    unsafe extern "C-unwind" {
        fn die(signal: std::ffi::c_int);
    }
    // SAFETY: installs PostgreSQL's own handler in a background worker before it unblocks
    // signals.
    unsafe {
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
    }
}

/// Memory for a setting's check-hook "extra", of the kind PostgreSQL frees it as; NULL when
/// out of memory.
pub fn guc_extra_alloc(size: usize) -> *mut std::ffi::c_void {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    {
        unsafe extern "C" {
            fn malloc(size: usize) -> *mut std::ffi::c_void;
        }
        // SAFETY: libc's allocator, which PostgreSQL before 16 frees extras with.
        unsafe { malloc(size) }
    }
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    // SAFETY: PostgreSQL's own allocator for GUC data (LOG: returns NULL when out of memory).
    unsafe {
        pg_sys::guc_malloc(pg_sys::LOG as i32, size)
    }
}
