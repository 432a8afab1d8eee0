//! `idempotency`: durable idempotency keys for PostgreSQL.
//!
//! A retry of a request becomes a replay of its first outcome, never a second effect; the same
//! key with a different command is refused (IK001); the key's claim commits with the caller's
//! own business write, in the caller's own transaction.
//!
//! The shape: the pure core (`idempotency-core`: canonical form, fingerprint, decision) and
//! this thin PostgreSQL shell around it:
//! - `api`: the SQL functions and the protocol of each;
//! - `store`: the record table, read and written on one of two paths: the direct path (heap
//!   and index access methods) where the table has its expected shape, else SQL (SPI);
//! - `lock`: the per-key lock that makes uncommitted claims visible without blocking;
//! - `signature`: each SQL function's arguments and result, declared once and checked
//!   against `pg_proc`;
//! - `entry`: the one guard of every way in from PostgreSQL (SQL functions, hooks,
//!   callbacks, workers, `_PG_init`): panics and errors inside come out as PostgreSQL errors;
//! - `fmgr`: the C calling convention (arguments, NULLs, results);
//! - `errors`: every error and its SQLSTATE;
//! - `settings`: the GUCs;
//! - `citus`: what changes when the records are distributed by Citus (docs/scale-out.md);
//! - `stats`: the counters in shared memory (`idem_stats`);
//! - `worker`: the purge launcher and its per-database workers;
//! - `compat`: what differs between PostgreSQL versions (the last three and the store's
//!   direct path).
//!
//! The SQL objects are declared in `sql/idempotency.sql`.

mod api;
mod citus;
mod compat;
mod datum;
mod entry;
mod errors;
mod fmgr;
mod functions;
mod lock;
mod settings;
mod signature;
mod stats;
mod store;
mod worker;

::pgrx::pg_module_magic!();

::pgrx::extension_sql_file!("../sql/idempotency.sql", name = "idempotency", bootstrap);

/// Called once when a backend loads the library, or in the postmaster when it is in
/// shared_preload_libraries: then also the counters' shared memory and the purge launcher.
#[no_mangle]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: the outermost frame of the library's initialisation (entry.rs).
    unsafe {
        entry::enter(c"idempotency _PG_init", || {
            settings::register();
            citus::install_planner_hook();
            // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
            if pgrx::pg_sys::process_shared_preload_libraries_in_progress {
                stats::init_preloaded();
                worker::register();
            }
            Ok(())
        })
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
