//! The record store: every read and write of `idempotency.records`, by one of two paths.
//! [`Records`] is the open table, [`Row`] one record as read.
//!
//! - `direct`: the heap and b-tree access methods, called as PostgreSQL's own catalog code
//!   calls them: no executor, no SPI, no switch of user (no permission check runs). Taken
//!   when `idempotency.direct_access` is on (the default) and the table has exactly the shape
//!   the extension created (`shape`).
//! - `sql`: the extension's SQL statements through SPI, the reference: what the direct path
//!   must match, outcome for outcome, and what runs whenever the table is not as expected
//!   (another index, a trigger, row security, a NOT NULL or identity column the script did not
//!   create, an inheritance child, a Citus table, ...). `idem_purge` and `idem_forget` always
//!   take it.
//!
//! The store reads and writes what it is told; the decisions are in `idempotency_core::decision`
//! and the protocol (locking, order of steps) in `api`.

mod direct;
mod shape;
mod sql;

pub use sql::Sql;

use idempotency_core::decision::{Micros, State};
use pgrx::pg_sys;

use crate::errors::IdemError;
pub use crate::datum::{text_str, varlena_bytes};

/// A record as read, with its varlena values copied into the memory context that was current
/// when the table was opened (the SQL function's), so they outlive the SPI connection.
pub struct Row {
    pub owner: pg_sys::Oid,
    pub state: State,
    pub fingerprint: [u8; 32],
    pub attempt: i32,
    pub created_at: Micros,
    pub expires_at: Micros,
    pub lease_expires_at: Option<Micros>,
    pub lease: Micros,
    pub http_status: Option<i32>,
    pub response: Option<pg_sys::Datum>,
    pub resource: Option<pg_sys::Datum>,
    pub recovery_point: Option<pg_sys::Datum>,
    pub recovery_data: Option<pg_sys::Datum>,
}

/// A new claim.
pub struct Claim<'a> {
    pub scope: pg_sys::Datum,
    pub key: pg_sys::Datum,
    pub owner: pg_sys::Oid,
    pub fingerprint: &'a [u8; 32],
    pub now: Micros,
    pub expires_at: Micros,
    pub lease_expires_at: Micros,
    pub lease: Micros,
}

/// A stored final outcome: a completion or a failure.
pub struct Outcome {
    pub state: State,
    pub http_status: i32,
    pub response: Option<pg_sys::Datum>,
    pub resource: Option<pg_sys::Datum>,
}

/// How a lookup reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Read {
    /// In the active snapshot, without a new one (`idem_check`: works on a hot standby).
    InActiveSnapshot,
    /// In a snapshot taken now: under READ COMMITTED the latest committed version (a read
    /// after waiting for the key's lock sees the holder's commit). For a request that does not
    /// hold the key's lock, which can only answer (replay or in_progress), never write.
    Fresh,
    /// As `Fresh`, by the holder of the key's lock, to decide a write. Under REPEATABLE READ
    /// and SERIALIZABLE the row is locked FOR SHARE as it is read, so that no decision is
    /// made on a version that another transaction replaced or deleted after the snapshot:
    /// 40001 "could not serialize access due to concurrent update".
    ToWrite,
}

impl Read {
    /// `ToWrite` for the holder of the key's lock, else `Fresh`.
    pub fn fresh(holds_lock: bool) -> Read {
        if holds_lock {
            Read::ToWrite
        } else {
            Read::Fresh
        }
    }

    /// Whether the row is locked as it is read.
    pub(super) fn locks(self) -> bool {
        self == Read::ToWrite && xact_snapshot()
    }
}

/// The open table, on one path or the other.
pub enum Records {
    Sql(sql::Sql),
    Direct(direct::Direct),
}

/// Forwards a call to the path that is open.
macro_rules! on_path {
    ($self:ident, $records:ident => $call:expr) => {
        match $self {
            Records::Sql($records) => $call,
            Records::Direct($records) => $call,
        }
    };
}

impl Records {
    /// Opens the table for a function that writes (and reads under a fresh snapshot).
    pub fn open() -> Result<Records, IdemError> {
        if crate::settings::direct_access() {
            if let Some(direct) = direct::Direct::open(direct::Intent::Write)? {
                return Ok(Records::Direct(direct));
            }
        }
        Ok(Records::Sql(sql::Sql::open()?))
    }

    /// Opens the table for `idem_check`: reads in the active snapshot only, takes no lock
    /// stronger than a reader's, so that it works on a hot standby.
    pub fn open_to_read() -> Result<Records, IdemError> {
        if crate::settings::direct_access() {
            if let Some(direct) = direct::Direct::open(direct::Intent::Read)? {
                return Ok(Records::Direct(direct));
            }
        }
        Ok(Records::Sql(sql::Sql::open()?))
    }

    /// Opens the SQL path whatever the setting: `idem_purge` and `idem_forget`, which only it
    /// serves.
    pub fn open_sql() -> Result<Sql, IdemError> {
        Sql::open()
    }

    /// Whether `idem_begin` should try a new key's claim before reading: on the SQL path under
    /// READ COMMITTED, where a read is a statement of its own (an executor) and either order
    /// gives the same outcomes. The direct path's read is one index probe, and under
    /// REPEATABLE READ and SERIALIZABLE both paths read first (the read locks the row).
    pub fn insert_first(&self) -> bool {
        matches!(self, Records::Sql(_)) && !xact_snapshot()
    }

    /// Reads the record of a key, expired or not.
    pub fn lookup(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        read: Read,
    ) -> Result<Option<Row>, IdemError> {
        on_path!(self, r => r.lookup(scope, key, read))
    }

    /// Inserts a new claim; false if a row for the key exists (under REPEATABLE READ and
    /// SERIALIZABLE, a row committed after the snapshot raises a serialization failure).
    pub fn insert(&self, c: &Claim) -> Result<bool, IdemError> {
        on_path!(self, r => r.insert(c))
    }

    /// Turns the row of an expired record into a new claim; false if there is no such row
    /// (idem_purge deleted it meanwhile).
    pub fn reclaim(&self, c: &Claim) -> Result<bool, IdemError> {
        on_path!(self, r => r.reclaim(c))
    }

    /// The next attempt of an in-progress or failed record.
    pub fn resume(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        attempt: i32,
        lease_expires_at: Micros,
        lease: Micros,
    ) -> Result<bool, IdemError> {
        on_path!(self, r => r.resume(scope, key, attempt, lease_expires_at, lease))
    }

    /// Stores a final outcome.
    pub fn finish(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
    ) -> Result<bool, IdemError> {
        on_path!(self, r => r.finish(scope, key, o))
    }

    /// Completes the key if its record is live, in progress, owned by `caller` itself and
    /// (given one) at `attempt`; false otherwise, with nothing written.
    pub fn complete_owned(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
        now: Micros,
        caller: pg_sys::Oid,
        attempt: Option<i32>,
    ) -> Result<bool, IdemError> {
        on_path!(self, r => r.complete_owned(scope, key, o, now, caller, attempt))
    }

    pub fn checkpoint(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        point: pg_sys::Datum,
        data: Option<pg_sys::Datum>,
        lease_expires_at: Micros,
    ) -> Result<bool, IdemError> {
        on_path!(self, r => r.checkpoint(scope, key, point, data, lease_expires_at))
    }
}

/// Whether the transaction reads in one snapshot (REPEATABLE READ, SERIALIZABLE:
/// IsolationUsesXactSnapshot).
pub fn xact_snapshot() -> bool {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// A record's state as its one-byte column stores it.
pub fn state_byte(state: State) -> u8 {
    match state {
        State::InProgress => b'p',
        State::Completed => b'c',
        State::Failed { .. } => b'f',
    }
}

/// A record's state from its `state` and `retryable` columns.
pub fn state_of(byte: u8, retryable: Option<bool>) -> Result<State, IdemError> {
    match byte {
        b'p' => Ok(State::InProgress),
        b'c' => Ok(State::Completed),
        b'f' => Ok(State::Failed {
            retryable: retryable == Some(true),
        }),
        other => Err(IdemError::Internal(format!(
            "unknown state {other} in idempotency.records"
        ))),
    }
}

/// The table's relation oid, or an error if the extension's schema is not there.
pub fn records_relid() -> Result<pg_sys::Oid, IdemError> {
    // SAFETY: catalog lookups by name.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"idempotency".as_ptr(), true);
        let rel = if nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"records".as_ptr(), nsp)
        };
        if rel == pg_sys::InvalidOid {
            return Err(IdemError::Internal(
                "table idempotency.records does not exist".into(),
            ));
        }
        Ok(rel)
    }
}

pub fn owner_of(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a relcache lookup of an existing relation, closed right after.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::RelationClose(rel);
        owner
    }
}
