//! The record store: every read and write of `idempotency.records`, by one of two paths
//! behind one trait, [`Path`]: [`Records`] is the open table on one of them, [`Row`] one
//! record as read, [`Change`] one write.
//!
//! - `direct`: the heap and b-tree access methods, called as PostgreSQL's own catalog code
//!   calls them: no executor, no SPI, no switch of user (no permission check runs). Taken
//!   when `idempotency.direct_access` is on (the default) and the table has exactly the shape
//!   the extension created (`shape`).
//! - `sql`: the extension's SQL statements through SPI, the reference: what the direct path
//!   must match, outcome for outcome, and what runs whenever the table is not as expected
//!   (another index, a trigger, row security, a NOT NULL or identity column the script did not
//!   create, an inheritance child, a Citus table, ...). `idem_purge` and `idem_forget` always
//!   take it, and so do the Citus queries (`placement`).
//!
//! The modules, each importing only those before it: `columns` (the table's columns, declared
//! once), `record` (the vocabulary both paths share: the row and its decoder, the writes, the
//! [`Path`] trait), `sql`, `placement` (Citus: the layout, the shard check, the purge; on the
//! SQL path's connection), `shape` (whether the direct path may be used), `direct`, and this
//! façade, which opens one path.
//!
//! What is written once, and what each path derives from it:
//! - the columns: `columns`'s declaration (name, type, NOT NULL). The SQL path's SELECT list,
//!   SET lists and parameter types, and the direct path's attribute positions, come from it;
//! - each write ([`Change`]): its columns and their values side by side, and its [`Guard`],
//!   the conditions the row must meet (an expired row for a reclaim; the caller's own live
//!   claim for a completion's fast path). The SQL path makes its statement from the change
//!   (prepared once per backend and write), the direct path forms the row from it and checks
//!   the guard on the row it read;
//! - a row as read: one decoder ([`Row::decode`]) over either path's column values.
//!
//! The store reads and writes what it is told; the decisions are in `idempotency_core::decision`
//! and the protocol (locking, order of steps) in `api`. Where the records are (Citus) is
//! `placement`'s: the check that a key's shard is on this node, and the purge, local or shard
//! by shard.

mod columns;
mod direct;
mod placement;
mod record;
mod shape;
mod sql;

pub use placement::{distributed, purge, require_shard_here, Shards};
pub use record::*;
pub use sql::Sql;

use crate::errors::IdemError;

/// The open table, on one path or the other.
pub enum Records {
    Sql(sql::Sql),
    Direct(direct::Direct),
}

impl std::ops::Deref for Records {
    type Target = dyn Path;

    fn deref(&self) -> &(dyn Path + 'static) {
        match self {
            Records::Sql(records) => records,
            Records::Direct(records) => records,
        }
    }
}

impl Records {
    /// Opens the table for a function that writes (and reads under a fresh snapshot).
    pub fn open() -> Result<Records, IdemError> {
        Records::open_for(direct::Intent::Write)
    }

    /// Opens the table for `idem_check`: reads in the active snapshot only, takes no lock
    /// stronger than a reader's, so that it works on a hot standby.
    pub fn open_to_read() -> Result<Records, IdemError> {
        Records::open_for(direct::Intent::Read)
    }

    /// The direct path if the setting allows it and the table has its shape, else SQL.
    fn open_for(intent: direct::Intent) -> Result<Records, IdemError> {
        if crate::settings::direct_access() {
            if let Some(direct) = direct::Direct::open(intent)? {
                return Ok(Records::Direct(direct));
            }
        }
        Ok(Records::Sql(sql::Sql::open()?))
    }
}
