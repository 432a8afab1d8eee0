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
//! What is written once here, and what each path derives from it:
//! - the columns: `shape`'s declaration (name, type, NOT NULL). The SQL path's SELECT list,
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

mod direct;
mod placement;
mod shape;
mod sql;

pub use placement::{forget_placement_plan, purge, require_shard_here, Shards};
pub use sql::Sql;

use idempotency_core::decision::{Micros, State};
use pgrx::{pg_sys, IntoDatum};

use crate::errors::IdemError;
use shape::{Col, NCOLS};

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

impl Row {
    /// Decodes a row from its column values (`value`: a column's datum, None for NULL), on
    /// either path; `copy` copies a varlena value, detoasted, to where the row must live.
    fn decode(
        value: &dyn Fn(Col) -> Option<pg_sys::Datum>,
        copy: &dyn Fn(pg_sys::Datum) -> pg_sys::Datum,
    ) -> Result<Row, IdemError> {
        let required = |c: Col| {
            value(c).ok_or_else(|| {
                IdemError::Internal(format!("column {c:?} of idempotency.records is null"))
            })
        };
        let state = state_of(
            required(Col::state)?.value() as u8,
            value(Col::retryable).map(|d| d.value() != 0),
        )?;
        // SAFETY: a bytea column of the row, alive while `value` gives it.
        let fp = unsafe { varlena_bytes(required(Col::fingerprint)?) };
        let fingerprint: [u8; 32] = fp.try_into().map_err(|_| {
            IdemError::Internal("a fingerprint in idempotency.records is not 32 bytes".into())
        })?;
        Ok(Row {
            owner: pg_sys::Oid::from(required(Col::owner)?.value() as u32),
            state,
            fingerprint,
            attempt: required(Col::attempt)?.value() as i32,
            created_at: required(Col::created_at)?.value() as i64,
            expires_at: required(Col::expires_at)?.value() as i64,
            lease_expires_at: value(Col::lease_expires_at).map(|d| d.value() as i64),
            lease: required(Col::lease)?.value() as i64,
            http_status: value(Col::http_status).map(|d| i32::from(d.value() as i16)),
            response: value(Col::response).map(copy),
            resource: value(Col::resource).map(copy),
            recovery_point: value(Col::recovery_point).map(copy),
            recovery_data: value(Col::recovery_data).map(copy),
        })
    }
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

/// What both paths do, with the same results: the compiler holds them to the same
/// operations, and [`Records`] dispatches to the open one once (`Deref`).
pub trait Path {
    /// Reads the record of a key, expired or not (`Read` says how).
    fn lookup(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        read: Read,
    ) -> Result<Option<Row>, IdemError>;

    /// Makes one write. An insert: false if a row for the key exists (under REPEATABLE READ
    /// and SERIALIZABLE, a row committed after the snapshot raises a serialization failure).
    /// An update: false, with nothing written, if the key has no row or its row does not meet
    /// the change's guard.
    fn write(&self, change: &Change) -> Result<bool, IdemError>;

    /// Whether `idem_begin` should try a new key's claim before reading: on the SQL path under
    /// READ COMMITTED, where a read is a statement of its own (an executor) and either order
    /// gives the same outcomes. The direct path's read is one index probe, and under
    /// REPEATABLE READ and SERIALIZABLE both paths read first (the read locks the row).
    fn insert_first(&self) -> bool {
        false
    }
}

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

/// The writes, each one [`Change`]: which statement the SQL path prepares for it (once per
/// backend), and whether it inserts or updates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(non_camel_case_types)]
pub enum Write {
    insert,
    reclaim,
    resume,
    complete,
    complete_owned,
    fail,
    checkpoint,
}

impl Write {
    pub const COUNT: usize = Write::checkpoint as usize + 1;
}

/// A comparison of a guard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Eq,
    Gt,
    Le,
}

impl Op {
    /// The operator's name in pg_catalog.
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Gt => ">",
            Op::Le => "<=",
        }
    }

    fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Gt => left > right,
            Op::Le => left <= right,
        }
    }
}

/// One condition of a guard: `column op value`; a condition whose value is None (an
/// optional one not given) holds for every row.
#[derive(Clone, Copy, Debug)]
pub struct Condition {
    pub col: Col,
    pub op: Op,
    pub value: Option<pg_sys::Datum>,
    /// Whether the value may be None (the SQL path's statement then reads `$n IS NULL OR`).
    pub optional: bool,
}

impl Condition {
    /// Whether a row whose `col` is `v` meets it. Guards compare only columns passed by value
    /// (timestamps, integers, oids, "char"), as the SQL operator would: NULL meets nothing.
    fn holds(&self, v: Option<pg_sys::Datum>) -> bool {
        match (self.value, v) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(given), Some(v)) => self.op.holds(v.value() as i64, given.value() as i64),
        }
    }
}

/// The conditions a row must meet to be written, besides having the key.
#[derive(Clone, Copy, Debug)]
pub enum Guard {
    /// Any row of the key: the caller holds the key's lock and has read the row.
    Any,
    /// An expired row (a reclaim: idem_purge may have deleted it meanwhile).
    Expired { now: Micros },
    /// The caller's own live claim, in progress, at `attempt` if one is given: the fast path
    /// of `idem_complete`, which writes without reading first. What `decision::settle` would
    /// allow; when the row does not meet it, `api` reads the record and lets the decision say
    /// why.
    Owned {
        now: Micros,
        caller: pg_sys::Oid,
        attempt: Option<i32>,
    },
}

impl Guard {
    /// The conditions, in the order the SQL statement numbers their parameters.
    pub fn conditions(&self) -> impl Iterator<Item = Condition> {
        let must = |col, op, value: pg_sys::Datum| {
            Some(Condition {
                col,
                op,
                value: Some(value),
                optional: false,
            })
        };
        let list = match *self {
            Guard::Any => [None; 4],
            Guard::Expired { now } => [must(Col::expires_at, Op::Le, now.into()), None, None, None],
            Guard::Owned {
                now,
                caller,
                attempt,
            } => [
                must(Col::state, Op::Eq, state_datum(State::InProgress)),
                must(Col::expires_at, Op::Gt, now.into()),
                must(Col::owner, Op::Eq, caller.into()),
                Some(Condition {
                    col: Col::attempt,
                    op: Op::Eq,
                    value: attempt.map(pg_sys::Datum::from),
                    optional: true,
                }),
            ],
        };
        list.into_iter().flatten()
    }

    /// Whether a row (`value`: its column values) meets every condition.
    pub fn holds(&self, value: &dyn Fn(Col) -> Option<pg_sys::Datum>) -> bool {
        self.conditions().all(|c| c.holds(value(c.col)))
    }
}

/// One write of the key's row, described once for both paths: the columns it sets with their
/// values (None: NULL), in one list, and its guard. An insert sets scope and key too, and
/// every column it does not list is NULL.
pub struct Change {
    pub write: Write,
    pub scope: pg_sys::Datum,
    pub key: pg_sys::Datum,
    sets: [(Col, Option<pg_sys::Datum>); NCOLS],
    len: usize,
    pub guard: Guard,
}

impl Change {
    fn new(
        write: Write,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        sets: &[(Col, Option<pg_sys::Datum>)],
        guard: Guard,
    ) -> Change {
        let mut all = [(Col::scope, None); NCOLS];
        all[..sets.len()].copy_from_slice(sets);
        Change {
            write,
            scope,
            key,
            sets: all,
            len: sets.len(),
            guard,
        }
    }

    /// The columns it sets and their values (scope and key, which name the row, apart).
    pub fn sets(&self) -> &[(Col, Option<pg_sys::Datum>)] {
        &self.sets[..self.len]
    }

    /// A new claim of a key that has no row.
    pub fn insert(c: &Claim) -> Change {
        Change::new(Write::insert, c.scope, c.key, &claimed(c), Guard::Any)
    }

    /// The row of an expired record turned into a new claim: every column of the record
    /// anew.
    pub fn reclaim(c: &Claim) -> Change {
        let mut sets = claimed(c).to_vec();
        sets.extend([
            (Col::retryable, None),
            (Col::http_status, None),
            (Col::response, None),
            (Col::resource, None),
            (Col::recovery_point, None),
            (Col::recovery_data, None),
        ]);
        Change::new(
            Write::reclaim,
            c.scope,
            c.key,
            &sets,
            Guard::Expired { now: c.now },
        )
    }

    /// The next attempt of an in-progress or failed record: after a lease ran out or a
    /// retryable failure. Keeps the recovery point.
    pub fn resume(
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        attempt: i32,
        lease_expires_at: Micros,
        lease: Micros,
    ) -> Change {
        Change::new(
            Write::resume,
            scope,
            key,
            &[
                (Col::state, Some(state_datum(State::InProgress))),
                (Col::retryable, None),
                (Col::attempt, Some(attempt.into())),
                (Col::lease_expires_at, Some(lease_expires_at.into())),
                (Col::lease, Some(lease.into())),
                (Col::http_status, None),
                (Col::response, None),
                (Col::resource, None),
            ],
            Guard::Any,
        )
    }

    /// A final outcome. A completion drops the recovery point (nothing will resume); a
    /// failure keeps it for the retry.
    pub fn finish(
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
    ) -> Result<Change, IdemError> {
        let status = Some(pg_sys::Datum::from(o.http_status as i16));
        Ok(match o.state {
            State::Completed => Change::new(Write::complete, scope, key, &completed(o), Guard::Any),
            State::Failed { retryable } => Change::new(
                Write::fail,
                scope,
                key,
                &[
                    (Col::state, Some(state_datum(o.state))),
                    (Col::retryable, Some(retryable.into())),
                    (Col::http_status, status),
                    (Col::response, o.response),
                    (Col::lease_expires_at, None),
                ],
                Guard::Any,
            ),
            State::InProgress => {
                return Err(IdemError::Internal(
                    "an outcome cannot be in progress".into(),
                ))
            }
        })
    }

    /// A completion in one write that checks the guard itself ([`Guard::Owned`]).
    pub fn complete_owned(
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
        now: Micros,
        caller: pg_sys::Oid,
        attempt: Option<i32>,
    ) -> Change {
        Change::new(
            Write::complete_owned,
            scope,
            key,
            &completed(o),
            Guard::Owned {
                now,
                caller,
                attempt,
            },
        )
    }

    /// A recovery point, and the lease renewed.
    pub fn checkpoint(
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        point: pg_sys::Datum,
        data: Option<pg_sys::Datum>,
        lease_expires_at: Micros,
    ) -> Change {
        Change::new(
            Write::checkpoint,
            scope,
            key,
            &[
                (Col::recovery_point, Some(point)),
                (Col::recovery_data, data),
                (Col::lease_expires_at, Some(lease_expires_at.into())),
            ],
            Guard::Any,
        )
    }
}

/// The columns of a new claim (an insert's, and the first of a reclaim's).
fn claimed(c: &Claim) -> [(Col, Option<pg_sys::Datum>); 8] {
    [
        (Col::owner, Some(pg_sys::Datum::from(c.owner))),
        (Col::state, Some(state_datum(State::InProgress))),
        (Col::fingerprint, (&c.fingerprint[..]).into_datum()),
        (Col::attempt, Some(pg_sys::Datum::from(1i32))),
        (Col::created_at, Some(c.now.into())),
        (Col::expires_at, Some(c.expires_at.into())),
        (Col::lease_expires_at, Some(c.lease_expires_at.into())),
        (Col::lease, Some(c.lease.into())),
    ]
}

/// The columns of a completion.
fn completed(o: &Outcome) -> [(Col, Option<pg_sys::Datum>); 7] {
    [
        (Col::state, Some(state_datum(State::Completed))),
        (
            Col::http_status,
            Some(pg_sys::Datum::from(o.http_status as i16)),
        ),
        (Col::response, o.response),
        (Col::resource, o.resource),
        (Col::lease_expires_at, None),
        (Col::recovery_point, None),
        (Col::recovery_data, None),
    ]
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

/// A record's state as a datum of its "char" column.
fn state_datum(state: State) -> pg_sys::Datum {
    pg_sys::Datum::from(state_byte(state))
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

/// The bytes of a (possibly toasted or short-header) varlena datum.
///
/// # Safety
/// `d` must be a valid varlena datum that outlives the returned slice.
pub unsafe fn varlena_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any_exhdr(v);
        let data = pgrx::varlena::vardata_any(v) as *const u8;
        std::slice::from_raw_parts(data, len)
    }
}

/// A text datum's contents as `&str` (the database is UTF8, checked at CREATE EXTENSION, and
/// the server validates text on input).
///
/// # Safety
/// As for [`varlena_bytes`].
pub unsafe fn text_str<'a>(d: pg_sys::Datum) -> Result<&'a str, IdemError> {
    let bytes = unsafe { varlena_bytes(d) };
    std::str::from_utf8(bytes).map_err(|e| IdemError::Internal(format!("text is not UTF-8: {e}")))
}
