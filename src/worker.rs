//! The purge worker: expired records deleted in every database where the extension is
//! installed, with nothing to configure per database.
//!
//! Two kinds of background worker, registered only when the library is in
//! `shared_preload_libraries`:
//! - the **launcher** (one, static): connected to no database, it reads `pg_database` every
//!   `idempotency.purge_interval` (so a database created later is found, a dropped one
//!   forgotten, without a restart) and starts one purge worker per database that accepts
//!   connections, one after the other. It starts once recovery has finished, so never on a hot
//!   standby (there it starts at promotion), and the postmaster restarts it after a crash.
//!   SIGHUP sets a flag (the handler does nothing else) and the loop rereads the configuration;
//!   SIGTERM ends the loop and a running purge worker.
//! - the **purge worker** (dynamic, one database, short-lived): if the extension is installed
//!   it deletes expired records in batches of `idempotency.purge_batch`, one short transaction
//!   per batch, through the store's purge (`idem_purge`'s: rows a live transaction has
//!   locked are skipped, never waited for; on records distributed by Citus, the shards placed
//!   on this node, `store::Shards::Here`), until a batch finds fewer; it counts the rows, the run and its time in the
//!   counters, and exits. SIGTERM aborts the batch at once (`die`).
//!
//! The purge worker gives way to commands that need its database to itself. `DROP DATABASE`,
//! `CREATE DATABASE ... TEMPLATE` (on its template) and `ALTER DATABASE ... RENAME / SET
//! TABLESPACE` lock the database object in a mode that conflicts with the ROW EXCLUSIVE lock a
//! starting session takes on it (`InitPostgres`), then wait at most 5 s for the database's
//! other sessions to leave (`CountOtherDBBackends`, which signals autovacuum workers only) and
//! fail with "... is being accessed by other users". So before each batch (each its own short
//! transaction) the worker tries that ROW EXCLUSIVE lock without waiting and releases it at
//! once; if it cannot have it, it ends its pass and exits normally (exit code 0: the postmaster
//! does not count it as a crash, and the launcher goes on to the next database), with one LOG
//! line. LOG, not DEBUG1: it explains why expired records remain until the next pass, and it
//! comes at most once per such command. The launcher makes the same test before it starts a
//! worker, and skips the database for that pass (DEBUG1, as it may repeat every interval
//! during a long copy): a worker started anyway waits in `InitPostgres` until the command
//! ends, without being counted as one of the database's sessions (after a DROP it then finds
//! the database gone and exits with a FATAL, as before).

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;

use crate::settings;
use crate::stats::{self, Counter};

const LAUNCHER: &str = "idempotency purge launcher";
const WORKER: &str = "idempotency purge worker";
/// How long the postmaster waits before restarting a launcher that crashed.
const RESTART: Duration = Duration::from_secs(5);
/// With purging off or its setting invalid, the launcher still wakes this often to give back
/// the counter slots of dropped databases.
const IDLE_MICROS: i64 = 60_000_000;

/// Registers the launcher; called from `_PG_init` while shared_preload_libraries loads.
pub fn register() {
    BackgroundWorkerBuilder::new(LAUNCHER)
        .set_type(LAUNCHER)
        .set_library("idempotency")
        .set_function("idem_purge_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(RESTART))
        .load();
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// One database as the launcher sees it.
struct Database {
    oid: pg_sys::Oid,
    name: String,
    /// Accepts connections and is neither a template nor left invalid by an interrupted DROP.
    purgeable: bool,
}

/// The launcher's main loop.
#[no_mangle]
pub extern "C-unwind" fn idem_purge_launcher_main(_arg: pg_sys::Datum) {
    // SAFETY: the worker's outermost frame (entry.rs).
    unsafe {
        crate::entry::enter(c"idempotency purge launcher", || {
            launcher();
            Ok(())
        })
    }
}

fn launcher() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut interval = settings::purge_interval();
    let mut last_batch = settings::purge_batch();
    log_schedule("started", &interval);
    // The first pass right after start (or a restart after a crash); then every interval.
    let mut next = now();
    let mut next_idle = now();
    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        // SAFETY: the flag that the SIGHUP handler sets; the reload happens here, in the loop.
        if unsafe { pg_sys::ConfigReloadPending } != 0 {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            let batch = settings::purge_batch();
            let changed = settings::purge_interval();
            if format!("{changed:?}") != format!("{interval:?}") || batch != last_batch {
                last_batch = batch;
                log_schedule("reloaded", &changed);
                // The new interval counts from now.
                if let Ok(m) = changed {
                    next = now().saturating_add(m);
                }
                interval = changed;
            }
        }
        let t = now();
        match interval {
            Ok(m) if m > 0 => {
                if t >= next {
                    if !pass() {
                        break;
                    }
                    next = now().saturating_add(m);
                }
            }
            _ => {
                if t >= next_idle {
                    let before = stats::databases_counted();
                    let dbs = databases();
                    forget_dropped(&before, &dbs);
                    next_idle = now().saturating_add(IDLE_MICROS);
                }
            }
        }
        let wake = match interval {
            Ok(m) if m > 0 => next,
            _ => next_idle,
        };
        sleep_until(wake);
    }
    // Exit code 1: the postmaster starts the launcher again after RESTART, so that a
    // pg_terminate_backend() is a restart, not a silent end of purging (purge_interval = 0
    // turns purging off); at shutdown nothing is restarted.
    log(&format!("{LAUNCHER} stopping"));
    // SAFETY: ends this background worker.
    unsafe { pg_sys::proc_exit(1) }
}

fn log_schedule(what: &str, interval: &Result<i64, crate::errors::IdemError>) {
    match interval {
        Ok(0) => log(&format!(
            "{LAUNCHER} {what}: purging is off (idempotency.purge_interval = 0)"
        )),
        Ok(m) => log(&format!(
            "{LAUNCHER} {what}: purging every {} s in batches of {}",
            *m as f64 / 1e6,
            settings::purge_batch()
        )),
        Err(e) => {
            let (message, detail, _) = e.texts();
            pgrx::warning!(
                "{LAUNCHER} {what}: not purging: {message}: {}",
                detail.unwrap_or_default()
            );
        }
    }
}

fn log(message: &str) {
    crate::errors::log(0, message, None, c"idem_purge_launcher_main");
}

/// Waits on the latch until `at` (or a signal); exits if the postmaster died. A
/// ProcSignalBarrier is absorbed at once: `DROP DATABASE` (15 and later) and `ALTER DATABASE
/// ... SET TABLESPACE` wait until every process has (the launcher runs no
/// CHECK_FOR_INTERRUPTS while it sleeps or waits for a worker; it absorbs them as PostgreSQL's
/// own auxiliary processes do, without the rest of the interrupt processing).
fn sleep_until(at: i64) {
    let ms = ((at - now()) / 1000).clamp(1, 60_000);
    // SAFETY: this process's latch; the flag that the SIGUSR1 handler sets (with the latch).
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        if std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::ProcSignalBarrierPending)) != 0 {
            pg_sys::ProcessProcSignalBarrier();
        }
    }
}

/// One pass over every database; false if SIGTERM arrived meanwhile.
fn pass() -> bool {
    let before = stats::databases_counted();
    let dbs = databases();
    forget_dropped(&before, &dbs);
    for db in dbs.iter().filter(|d| d.purgeable) {
        if !purge_in(db) {
            return false;
        }
    }
    true
}

fn forget_dropped(before: &[u32], dbs: &[Database]) {
    let alive: Vec<u32> = dbs.iter().map(|d| d.oid.to_u32()).collect();
    stats::forget_dropped(before, &alive);
}

/// Every database in pg_database (a shared catalog: readable without a database connection).
fn databases() -> Vec<Database> {
    let mut out = Vec::new();
    // SAFETY: a catalog scan in a transaction of its own, as the autovacuum launcher reads
    // pg_database; the tuples are read before the scan ends.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let rel = pg_sys::table_open(
            pg_sys::DatabaseRelationId,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let d = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            out.push(Database {
                oid: d.oid,
                name: std::ffi::CStr::from_ptr(d.datname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                // -2: a database whose DROP was interrupted (PostgreSQL's DATCONNLIMIT_INVALID_DB)
                purgeable: d.datallowconn && !d.datistemplate && d.datconnlimit != -2,
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}

/// The lock tag of database `db` as an object (PostgreSQL's `LockSharedObject(
/// DatabaseRelationId, db, 0, mode)`): shared objects carry no database in the tag.
fn database_tag(db: pg_sys::Oid) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: pg_sys::InvalidOid.to_u32(),
        locktag_field2: pg_sys::DatabaseRelationId.to_u32(),
        locktag_field3: db.to_u32(),
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Whether a session could start in `db` now without waiting: the ROW EXCLUSIVE lock that
/// `InitPostgres` takes on the database, tried without waiting and released at once. False
/// while a command that needs the database to itself holds or waits for a conflicting lock
/// (module comment). Call it inside a transaction.
fn database_free(db: pg_sys::Oid) -> bool {
    let tag = database_tag(db);
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: a valid tag, a transaction-level lock (the transaction's resource owner); an
    // error (the lock table full) is raised as an ERROR.
    unsafe {
        if pg_sys::LockAcquire(&tag, mode, false, true)
            == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
        {
            return false;
        }
        pg_sys::LockRelease(&tag, mode, false);
    }
    true
}

/// Starts the purge worker for `db` and waits until it has exited; false on SIGTERM (the
/// worker is then terminated too). A database locked by a command that needs it to itself is
/// skipped for this pass.
fn purge_in(db: &Database) -> bool {
    // SAFETY: a transaction of its own around the lock test.
    let free = unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let free = database_free(db.oid);
        pg_sys::CommitTransactionCommand();
        free
    };
    if !free {
        pgrx::debug1!(
            "{LAUNCHER}: database \"{}\" is locked by a command that needs it to itself; it is purged at a later pass",
            db.name
        );
        return true;
    }
    // SAFETY: this process's pid, for the postmaster to notify it of the worker's state.
    let me = unsafe { pg_sys::MyProcPid };
    let started = BackgroundWorkerBuilder::new(&format!("{WORKER} for database {}", db.name))
        .set_type(WORKER)
        .set_library("idempotency")
        .set_function("idem_purge_worker_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(db.oid)))
        .set_notify_pid(me)
        .load_dynamic();
    let Ok(worker) = started else {
        pgrx::warning!(
            "{LAUNCHER}: could not start the purge worker for database \"{}\": no background worker slot is free; it is tried again at the next interval",
            db.name
        );
        return true;
    };
    loop {
        match worker.pid() {
            Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped) => return true,
            Err(pgrx::bgworkers::BackgroundWorkerStatus::PostmasterDied) => {
                // SAFETY: leaves as a backend does when the postmaster is gone.
                unsafe { pg_sys::proc_exit(1) }
            }
            _ => {}
        }
        if BackgroundWorker::sigterm_received() {
            let _ = worker.terminate();
            return false;
        }
        // Woken by the postmaster when the worker's state changes (bgw_notify_pid).
        sleep_until(now() + 1_000_000);
    }
}

/// The purge worker of one database.
#[no_mangle]
pub extern "C-unwind" fn idem_purge_worker_main(arg: pg_sys::Datum) {
    // SAFETY: the worker's outermost frame (entry.rs).
    unsafe {
        crate::entry::enter(c"idempotency purge worker", || {
            purge_worker(arg);
            Ok(())
        })
    }
}

fn purge_worker(arg: pg_sys::Datum) {
    crate::compat::sigterm_dies();
    // SAFETY: a background worker with a database connection, started by the launcher with
    // the database's oid as its argument.
    unsafe {
        pg_sys::BackgroundWorkerUnblockSignals();
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            pg_sys::Oid::from(arg.value() as u32),
            pg_sys::InvalidOid,
            0,
        );
    }
    // SAFETY: a transaction of its own to look the extension and the database's name up.
    let (installed, name) = unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let found = pg_sys::get_extension_oid(c"idempotency".as_ptr(), true) != pg_sys::InvalidOid;
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        let name = if name.is_null() {
            pg_sys::MyDatabaseId.to_u32().to_string()
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        };
        pg_sys::CommitTransactionCommand();
        (found, name)
    };
    // SAFETY: reads shared memory state. (The launcher never runs during recovery; a worker
    // started just before a crash and restart into recovery must not try to write.)
    if !installed || unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let batch = settings::purge_batch();
    loop {
        pgrx::check_for_interrupts!();
        let Some(deleted) = batch_in_transaction(batch) else {
            // Not a pass: purge_runs and last_purge stay as they were (the rows deleted so far
            // are counted).
            crate::errors::log(
                0,
                &format!(
                    "{WORKER} for database \"{name}\" gave way to a command that needs the database to itself (DROP DATABASE, CREATE DATABASE ... TEMPLATE, ALTER DATABASE); the rest is purged at a later pass"
                ),
                None,
                c"idem_purge_worker_main",
            );
            return;
        };
        stats::add(Counter::PurgedRows, deleted);
        if deleted < batch as u64 {
            break;
        }
    }
    stats::purge_run_done();
}

/// One batch, in one transaction; None, with nothing done, when a command that needs the
/// database to itself holds or waits for its lock (module comment).
fn batch_in_transaction(batch: i32) -> Option<u64> {
    // SAFETY: a transaction of its own; MyDatabaseId is set once the worker is connected.
    let free = unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        database_free(pg_sys::MyDatabaseId)
    };
    if !free {
        // SAFETY: ends the transaction started above, which did nothing.
        unsafe { pg_sys::CommitTransactionCommand() };
        return None;
    }
    // SAFETY: a snapshot around the store's purge statement; an error aborts the transaction
    // and ends the worker (FATAL in a background worker), to be retried next pass.
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::pgstat_report_activity(
            pg_sys::BackendState::STATE_RUNNING,
            c"idempotency purge batch".as_ptr(),
        );
    }
    // idem_purge's purge through the store; on records distributed by Citus, this node's
    // shards (every node's worker purges its own).
    let deleted = match crate::store::purge(batch, crate::store::Shards::Here) {
        Ok(n) => n,
        Err(e) => {
            let (message, detail, _) = e.texts();
            pgrx::error!(
                "{WORKER}: {message}{}",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            );
        }
    };
    // SAFETY: ends what was started above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    Some(deleted)
}
