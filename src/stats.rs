//! The counters in shared memory, per database: what the layer decided (`idem_begin`'s
//! outcomes, the refusals, completions, failures, checkpoints, forgets), how long it waited,
//! and what purging did. `idem_stats()` reads them, `idem_stats_reset()` zeroes them.
//!
//! Each event is counted once, where it is decided: begin's outcome in `api::begin`, every
//! refusal in `functions::call` (the one place an error leaves a SQL function; `counter_of` maps
//! every error, with no wildcard), waits in
//! `lock::KeyLock::acquire_within`, purged rows in `purge`. A count is one relaxed atomic
//! add on this backend's slot, found once per backend; without the library in
//! `shared_preload_libraries` there is no shared memory and counting does nothing.
//!
//! Counters are not transactional, like PostgreSQL's own statistics: an `execute` whose
//! transaction later rolls back stays counted.
//!
//! Slots: `idempotency.max_databases` of them, taken by a database at its first count and
//! given back by the purge launcher once the database is dropped. When all are taken, further
//! databases count into one shared row whose `datid` is NULL, so that totals still add up.

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering::Relaxed,
};

use pgrx::pg_sys;

use crate::errors::IdemError;

/// What is counted; the order is that of `idem_stats()`'s columns.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Counter {
    /// idem_begin answered execute on a key with no live record (attempt 1).
    ExecuteNew,
    /// ... execute after the holder's lease ran out (attempt + 1).
    ExecuteTakeover,
    /// ... execute after a retryable failure (attempt + 1).
    ExecuteRetry,
    Replay,
    InProgress,
    /// IK001, IK002, IK003, 42501 from any function.
    CommandMismatch,
    NotInProgress,
    LeaseLost,
    PermissionDenied,
    /// Timed waits for a key's holder (idem_begin with wait > 0) and their total length.
    Waits,
    WaitMicros,
    Completions,
    FailuresRetryable,
    FailuresFinal,
    Checkpoints,
    Forgets,
    PurgedRows,
    PurgeRuns,
}

const COUNTERS: usize = Counter::PurgeRuns as usize + 1;

/// `last_purge` before any purge.
const NEVER: i64 = i64::MIN;

#[repr(C)]
struct Slot {
    /// The database's oid; 0 while the slot is free.
    database: AtomicU32,
    counters: [AtomicU64; COUNTERS],
    last_purge: AtomicI64,
    stats_reset: AtomicI64,
}

impl Slot {
    fn clear(&self, now: i64) {
        for c in &self.counters {
            c.store(0, Relaxed);
        }
        self.last_purge.store(NEVER, Relaxed);
        self.stats_reset.store(now, Relaxed);
    }
}

#[repr(C)]
struct Shared {
    /// Taken to assign and free slots; counting itself takes no lock.
    lock: *mut pg_sys::LWLock,
    slots: usize,
    /// Whether a database had to count into `overflow`.
    overflow_used: AtomicBool,
    overflow: Slot,
    // followed by `slots` × Slot
}

impl Shared {
    fn slots(&self) -> &[Slot] {
        // SAFETY: the slots follow the header in the segment sized by `size()`.
        unsafe {
            let first = (self as *const Shared).add(1).cast::<Slot>();
            std::slice::from_raw_parts(first, self.slots)
        }
    }
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// This backend's slot, found at its first count (a backend stays in one database).
static MINE: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

const SEGMENT: &std::ffi::CStr = c"idempotency counters";
const TRANCHE: &std::ffi::CStr = c"idempotency";

fn size() -> usize {
    std::mem::size_of::<Shared>() + crate::settings::max_databases() * std::mem::size_of::<Slot>()
}

/// Called from `_PG_init` while shared_preload_libraries loads.
pub fn init_preloaded() {
    crate::compat::install_shmem_hooks(request, startup);
}

fn request() {
    // SAFETY: called where this version wants shared memory requested (see compat).
    unsafe {
        pg_sys::RequestAddinShmemSpace(size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

fn startup() {
    // SAFETY: the shared memory startup hook, under AddinShmemInitLock as PostgreSQL's own
    // modules do; the first process to get here initialises the segment.
    unsafe {
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), size(), &mut found).cast::<Shared>();
        if !found {
            let slots = crate::settings::max_databases();
            std::ptr::write_bytes(shared.cast::<u8>(), 0, size());
            (*shared).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
            (*shared).slots = slots;
            let now = pg_sys::GetCurrentTimestamp();
            (*shared).overflow.clear(now);
            for s in (*shared).slots() {
                s.clear(now);
            }
        }
        pg_sys::LWLockRelease(init_lock);
        SHARED.store(shared, Relaxed);
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: set once at shared memory startup, before any backend counts.
    unsafe { SHARED.load(Relaxed).as_ref() }
}

/// Counts one event.
#[inline]
pub fn count(c: Counter) {
    add(c, 1);
}

/// Adds `n` to a counter.
#[inline]
pub fn add(c: Counter, n: u64) {
    let slot = MINE.load(Relaxed);
    // SAFETY: a slot in shared memory, which lives as long as the server.
    let slot = if slot.is_null() {
        my_slot()
    } else {
        unsafe { slot.as_ref() }
    };
    if let Some(slot) = slot {
        slot.counters[c as usize].fetch_add(n, Relaxed);
    }
}

/// The end of a purge run: one `idem_purge()` call, or one pass of the purge worker over the
/// database (its rows are added batch by batch to `PurgedRows`).
pub fn purge_run_done() {
    count(Counter::PurgeRuns);
    if let Some(slot) = my_slot() {
        // SAFETY: reading the clock.
        slot.last_purge
            .store(unsafe { pg_sys::GetCurrentTimestamp() }, Relaxed);
    }
}

#[cold]
fn my_slot() -> Option<&'static Slot> {
    let shared = shared()?;
    let cached = MINE.load(Relaxed);
    if !cached.is_null() {
        // SAFETY: as in `add`.
        return unsafe { cached.as_ref() };
    }
    // SAFETY: this backend's database, fixed once it is connected.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    if db == 0 {
        return None;
    }
    // SAFETY: the slot table's lock; assigning a slot cannot raise an error.
    unsafe { pg_sys::LWLockAcquire(shared.lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
    let slots = shared.slots();
    let slot = match slots.iter().find(|s| s.database.load(Relaxed) == db) {
        Some(s) => s,
        None => match slots.iter().find(|s| s.database.load(Relaxed) == 0) {
            Some(s) => {
                // SAFETY: reading the clock.
                s.clear(unsafe { pg_sys::GetCurrentTimestamp() });
                s.database.store(db, Relaxed);
                s
            }
            None => {
                shared.overflow_used.store(true, Relaxed);
                &shared.overflow
            }
        },
    };
    // SAFETY: taken above.
    unsafe { pg_sys::LWLockRelease(shared.lock) };
    MINE.store((slot as *const Slot).cast_mut(), Relaxed);
    Some(slot)
}

/// The databases that have a slot now (for the launcher, before it reads pg_database).
pub fn databases_counted() -> Vec<u32> {
    shared().map_or_else(Vec::new, |s| {
        s.slots()
            .iter()
            .map(|s| s.database.load(Relaxed))
            .filter(|&d| d != 0)
            .collect()
    })
}

/// Gives back the slots of the databases in `before` (taken before the scan of pg_database
/// that found `alive`) that no longer exist. A database created during the scan cannot be
/// freed: its slot was not in `before`.
pub fn forget_dropped(before: &[u32], alive: &[u32]) {
    let Some(shared) = shared() else { return };
    let gone: Vec<u32> = before
        .iter()
        .copied()
        .filter(|d| !alive.contains(d))
        .collect();
    if gone.is_empty() {
        return;
    }
    // SAFETY: the slot table's lock.
    unsafe { pg_sys::LWLockAcquire(shared.lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
    for s in shared.slots() {
        if gone.contains(&s.database.load(Relaxed)) {
            s.database.store(0, Relaxed);
        }
    }
    // SAFETY: taken above.
    unsafe { pg_sys::LWLockRelease(shared.lock) };
}

/// One row of `idem_stats()`: the database (None: the shared row of databases beyond
/// `max_databases`), the counters in `Counter` order, the last purge and the reset time.
pub struct Row {
    pub database: Option<pg_sys::Oid>,
    pub counters: [u64; COUNTERS],
    pub last_purge: Option<i64>,
    pub stats_reset: i64,
}

fn read(slot: &Slot, database: Option<pg_sys::Oid>) -> Row {
    Row {
        database,
        counters: std::array::from_fn(|i| slot.counters[i].load(Relaxed)),
        last_purge: Some(slot.last_purge.load(Relaxed)).filter(|&t| t != NEVER),
        stats_reset: slot.stats_reset.load(Relaxed),
    }
}

/// Every row, or 55000 when the library was not preloaded.
pub fn rows(function: &'static str) -> Result<Vec<Row>, IdemError> {
    let shared = shared().ok_or(IdemError::NotPreloaded { function })?;
    let mut rows: Vec<Row> = shared
        .slots()
        .iter()
        .filter_map(|s| {
            let db = s.database.load(Relaxed);
            (db != 0).then(|| read(s, Some(pg_sys::Oid::from(db))))
        })
        .collect();
    rows.sort_by_key(|r| r.database.map(|d| d.to_u32()));
    if shared.overflow_used.load(Relaxed) {
        rows.push(read(&shared.overflow, None));
    }
    Ok(rows)
}

/// Zeroes every counter of every database; returns the reset time.
pub fn reset(function: &'static str) -> Result<i64, IdemError> {
    let shared = shared().ok_or(IdemError::NotPreloaded { function })?;
    // SAFETY: reading the clock; the lock keeps slots from being assigned meanwhile.
    unsafe {
        let now = pg_sys::GetCurrentTimestamp();
        pg_sys::LWLockAcquire(shared.lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        shared.overflow.clear(now);
        for s in shared.slots() {
            s.clear(now);
        }
        pg_sys::LWLockRelease(shared.lock);
        Ok(now)
    }
}

/// Counts a refusal: the error a function is about to raise, if it is one of the four the
/// counters keep (IK001, IK002, IK003, 42501).
pub fn refused(e: &IdemError) {
    if let Some(c) = counter_of(e) {
        count(c);
    }
}

/// The counter of each error, written out for every one (no wildcard): a new refusal does
/// not compile until it is given a counter here, or is said to have none.
fn counter_of(e: &IdemError) -> Option<Counter> {
    match e {
        IdemError::CommandMismatch { .. } => Some(Counter::CommandMismatch),
        IdemError::NotInProgress { .. } => Some(Counter::NotInProgress),
        IdemError::LeaseLost { .. } => Some(Counter::LeaseLost),
        IdemError::NotOwner { .. } => Some(Counter::PermissionDenied),
        // Errors of the call, the server or the library, not refusals of a key: PostgreSQL
        // counts them as errors of the statement.
        IdemError::DuringRecovery { .. }
        | IdemError::NullArgument { .. }
        | IdemError::InvalidArgument { .. }
        | IdemError::Unsupported { .. }
        | IdemError::TooLarge { .. }
        | IdemError::TtlTooLong { .. }
        | IdemError::InvalidSetting { .. }
        | IdemError::NotPreloaded { .. }
        | IdemError::VersionMismatch { .. }
        | IdemError::SerializationFailure(_)
        | IdemError::Corrupted(_)
        | IdemError::Internal(_) => None,
    }
}
