//! The differences between PostgreSQL 13 and 18 that the settings, the shared-memory counters,
//! the purge worker and the record store's direct path meet, in one place:
//! - shared memory is requested in `shmem_request_hook` from 15 on (asking earlier is an
//!   error there), and directly in `_PG_init` before 15 (there is no such hook);
//! - a library reserves its setting prefix with `MarkGUCPrefixReserved` from 15 on (unknown
//!   `idempotency.*` names are then refused), with `EmitWarningsOnPlaceholders` (a WARNING)
//!   before;
//! - a signal handler is installed with `pqsignal_be` in 18, `pqsignal` before;
//! - a setting's check-hook "extra" is freed with `free` before 16 and with `pfree` (in
//!   PostgreSQL's GUC memory context) from 16 on, so it must come from `malloc` or from
//!   `guc_malloc` accordingly;
//! - what the record store reads of a relation, and the heap and index calls of its direct
//!   path (below).

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

// The hook that was there runs first, outside the guard (entry.rs: its ERROR leaves as it
// would without this library); then this library's part, inside it.
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: set once in install_shmem_hooks; the hook's outermost frame.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        crate::entry::enter(c"idempotency shmem_request_hook", || {
            if let Some(request) = REQUEST {
                request();
            }
            Ok(())
        })
    }
}

unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: set once in install_shmem_hooks; the hook's outermost frame.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        crate::entry::enter(c"idempotency shmem_startup_hook", || {
            if let Some(startup) = STARTUP {
                startup();
            }
            Ok(())
        })
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

// --- the record store (store/shape.rs, store/direct.rs) -----------------------------------------
// - a tuple descriptor's attributes are an array right after its header before 18, and from 18
//   on come after an array of compact attributes (`TupleDescAttr`);
// - a relation's storage is named by `rd_node` (a RelFileNode) before 16 and by `rd_locator`
//   (a RelFileLocator) from 16 on;
// - `index_beginscan` takes an instrumentation argument from 18 on;
// - `index_insert` takes the `indexUnchanged` hint from 14 on;
// - `index_insert_cleanup` exists from 17 on: BRIN keeps its insert state (a pinned revmap
//   buffer) in the IndexInfo between inserts and must be told to release it;
// - `heap_update` says from 16 on which indexes need new entries (none, all, or only the
//   summarizing ones such as BRIN); before, a HOT update needs none and any other all.

/// The `i`th (0-based) attribute of a tuple descriptor.
///
/// # Safety
/// `desc` a valid descriptor with more than `i` attributes; the result lives as long as it.
pub unsafe fn tuple_desc_attr(
    desc: pg_sys::TupleDesc,
    i: usize,
) -> *const pg_sys::FormData_pg_attribute {
    unsafe {
        #[cfg(feature = "pg18")]
        return pg_sys::TupleDescAttr(desc, i as std::ffi::c_int);
        #[cfg(not(feature = "pg18"))]
        return (*desc).attrs.as_ptr().add(i);
    }
}

/// The number of the file that holds the relation's rows now: another one after TRUNCATE,
/// CLUSTER, VACUUM FULL, a rewriting ALTER TABLE or SET TABLESPACE.
///
/// # Safety
/// `rel` an open relation.
pub unsafe fn relfilenumber(rel: pg_sys::Relation) -> pg_sys::Oid {
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        return (*rel).rd_node.relNode;
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        return (*rel).rd_locator.relNumber;
    }
}

/// Which indexes an updated row needs new entries in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IndexUpdate {
    None,
    All,
    /// Only BRIN and other summarizing indexes (16+: a HOT update that changed a column of
    /// one of them).
    #[cfg_attr(
        any(feature = "pg13", feature = "pg14", feature = "pg15"),
        allow(dead_code)
    )]
    Summarizing,
}

/// Starts a scan of `index` with `nkeys` keys under `snapshot`.
///
/// # Safety
/// Both relations open and locked; the snapshot valid for the scan's life.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    unsafe {
        #[cfg(feature = "pg18")]
        return pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
        #[cfg(not(feature = "pg18"))]
        return pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);
    }
}

/// Adds the entry of the heap row at `tid` to `index`; `unique` checks uniqueness at once
/// (waiting for an in-progress inserter, 23505 for a committed one); `unchanged` tells the
/// b-tree that an update left the indexed values as they were (14+).
///
/// # Safety
/// As `index_insert`: both relations open and locked, `values`/`isnull` of the index's width.
#[allow(clippy::too_many_arguments)]
pub unsafe fn index_insert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    tid: pg_sys::ItemPointer,
    heap: pg_sys::Relation,
    unique: bool,
    unchanged: bool,
    info: *mut pg_sys::IndexInfo,
) {
    let check = if unique {
        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
    } else {
        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
    };
    unsafe {
        #[cfg(feature = "pg13")]
        {
            let _ = unchanged;
            pg_sys::index_insert(index, values, isnull, tid, heap, check, info);
        }
        #[cfg(not(feature = "pg13"))]
        pg_sys::index_insert(index, values, isnull, tid, heap, check, unchanged, info);
    }
}

/// Releases what an index method kept in `info` between inserts (17+; nothing before).
///
/// # Safety
/// `index` open, `info` the IndexInfo its inserts were given.
pub unsafe fn index_insert_cleanup(index: pg_sys::Relation, info: *mut pg_sys::IndexInfo) {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    unsafe {
        pg_sys::index_insert_cleanup(index, info)
    };
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    let _ = (index, info);
}

/// `heap_update`, waiting for a concurrent writer of the row, without a crosscheck snapshot
/// (as the executor's UPDATE): the result, and the indexes that need new entries.
///
/// # Safety
/// `heap` open with RowExclusiveLock; `otid` a row of it; `newtup` formed with its
/// descriptor.
pub unsafe fn heap_update(
    heap: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    newtup: pg_sys::HeapTuple,
    cid: pg_sys::CommandId,
    tmfd: *mut pg_sys::TM_FailureData,
) -> (pg_sys::TM_Result::Type, IndexUpdate) {
    let mut lockmode: pg_sys::LockTupleMode::Type = 0;
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        {
            let result = pg_sys::heap_update(
                heap,
                otid,
                newtup,
                cid,
                std::ptr::null_mut(),
                true,
                tmfd,
                &mut lockmode,
            );
            let heap_only = (*(*newtup).t_data).t_infomask2 as u32 & pg_sys::HEAP_ONLY_TUPLE != 0;
            let indexes = if heap_only {
                IndexUpdate::None
            } else {
                IndexUpdate::All
            };
            (result, indexes)
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        {
            let mut update: pg_sys::TU_UpdateIndexes::Type = pg_sys::TU_UpdateIndexes::TU_None;
            let result = pg_sys::heap_update(
                heap,
                otid,
                newtup,
                cid,
                std::ptr::null_mut(),
                true,
                tmfd,
                &mut lockmode,
                &mut update,
            );
            let indexes = match update {
                pg_sys::TU_UpdateIndexes::TU_All => IndexUpdate::All,
                pg_sys::TU_UpdateIndexes::TU_Summarizing => IndexUpdate::Summarizing,
                _ => IndexUpdate::None,
            };
            (result, indexes)
        }
    }
}

/// Registers a callback for relcache invalidations (declared here: pgrx's bindings for 13 lack
/// utils/inval.h).
pub fn register_relcache_callback(
    callback: unsafe extern "C-unwind" fn(pg_sys::Datum, pg_sys::Oid),
) {
    unsafe extern "C-unwind" {
        fn CacheRegisterRelcacheCallback(
            func: Option<unsafe extern "C-unwind" fn(pg_sys::Datum, pg_sys::Oid)>,
            arg: pg_sys::Datum,
        );
    }
    // SAFETY: the callback only touches this backend's thread-locals.
    unsafe { CacheRegisterRelcacheCallback(Some(callback), pg_sys::Datum::from(0)) };
}
