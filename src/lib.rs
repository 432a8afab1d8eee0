//! `idempotency`: durable idempotency keys for PostgreSQL.
//!
//! A retry of a request becomes a replay of its first outcome, never a second effect; the same
//! key with a different command is refused (IK001); the key's claim commits with the caller's
//! own business write, in the caller's own transaction.
//!
//! The shape: the pure core (`idempotency-core`: canonical form, fingerprint, decision) and
//! this thin PostgreSQL shell around it:
//! - `api`: the SQL functions and the protocol of each;
//! - `store`: the queries on the record table;
//! - `lock`: the per-key lock that makes uncommitted claims visible without blocking;
//! - `signature`: each SQL function's arguments and result, declared once and checked
//!   against `pg_proc`;
//! - `fmgr`: the C calling convention (arguments, NULLs, results);
//! - `errors`: every error and its SQLSTATE;
//! - `settings`: the GUCs;
//! - `citus`: what changes when the records are distributed by Citus (docs/scale-out.md).
//!
//! The SQL objects are declared in `sql/idempotency.sql`.

mod api;
mod citus;
mod errors;
mod fmgr;
mod lock;
mod settings;
mod signature;
mod store;

::pgrx::pg_module_magic!();

::pgrx::extension_sql_file!("../sql/idempotency.sql", name = "idempotency", bootstrap);

/// Called once when a backend loads the library.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    citus::install_planner_hook();
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
