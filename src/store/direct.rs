//! The direct path: `idempotency.records` read with an index scan of its primary key and
//! written with `heap_insert`, `heap_update` and `index_insert`, as PostgreSQL's catalog code
//! and its foreign-key checks do, instead of through SPI and the executor. It must give the
//! SQL path's results (store/sql.rs) in every case, through the same trait (`Path`): a lookup,
//! and a write of one `Change` (an insert forms the row from the columns the change sets,
//! every other column NULL; an update writes them over the key's current row if that row
//! meets the change's guard, checked on the row as read). Columns are found by their position
//! in the row, read against `shape`'s declaration; a row is decoded by `Row::decode`. How it
//! keeps the executor's guarantees:
//!
//! - **Snapshots.** A read for a writing function uses a snapshot taken at that read, after
//!   the key's lock is held or tried (under READ COMMITTED a new one each time, so that a read
//!   after a wait sees the holder's commit; under REPEATABLE READ and SERIALIZABLE the
//!   transaction's); `idem_begin`'s read before the lock (api.rs, `read_first`, READ COMMITTED
//!   only) takes a new one too.
//!   `idem_check` reads in the active snapshot and takes only a reader's lock (hot standby).
//!   The snapshot stays active while the call writes (TOAST needs one).
//! - **Command ids.** A writing call first advances the command counter, as SPI does before
//!   each statement, so that it sees what the statements before it in the transaction wrote.
//! - **Concurrent writers of a row.** Only the key's lock holder changes a record, but
//!   `idem_purge` deletes expired rows without that lock. `heap_update` waits for a concurrent
//!   writer as UPDATE does; then under REPEATABLE READ and SERIALIZABLE a row updated or
//!   deleted since the snapshot is 40001 with the executor's words ("could not serialize access
//!   due to concurrent update" / "delete"), and under READ COMMITTED a deleted row is no row
//!   (as UPDATE's recheck finds it) and an updated one is read again and updated.
//! - **Inserts.** The unique b-tree checks the key as an INSERT does (23505 for a committed
//!   duplicate). Under REPEATABLE READ and SERIALIZABLE an INSERT ... ON CONFLICT finds a
//!   committed row that the snapshot cannot see and raises 40001; the direct path looks for
//!   such a row with a dirty snapshot first and raises the same.
//! - **Serializable.** The index scan and the heap calls take and check SSI's predicate
//!   locks themselves, as in a plain SELECT, INSERT or UPDATE.
//! - **Indexes after an update.** Only when the update is not HOT (or, from 16, only into
//!   BRIN when it changed expires_at); see `compat::heap_update`.
//! - **Publications.** Before an update, the executor's own check that a publication of the
//!   table can replicate it (`CheckCmdReplicaIdentity`: 55000 without a replica identity),
//!   at the point where an UPDATE statement makes it, whether or not a row is found.
//! - **The row a claim wrote.** A completion in the claim's transaction fetches it by the
//!   address the claim remembered, only while that address surely names a block of the
//!   table's current file (`fetch_remembered`); else it probes the index.
//! - **Lock waits** name the row they wait for (`XactLockTableWait`), as the executor's do.

use pgrx::pg_sys;

use super::columns::{Col, NCOLS};
use super::record::{xact_snapshot, Change, Guard, Path, Read, Row, Write};
use super::shape::{self, Shape};
use crate::compat::{self, IndexUpdate};
use crate::datum::varlena_bytes;
use crate::errors::IdemError;

/// Where this backend last wrote a record: in which (sub)transaction, in which relation and
/// file, for which key.
struct Remembered {
    xid: pg_sys::TransactionId,
    relid: pg_sys::Oid,
    file: pg_sys::Oid,
    tid: pg_sys::ItemPointerData,
    scope: Vec<u8>,
    key: Vec<u8>,
}

thread_local! {
    /// The row the last claim or update of this backend wrote: a completion in the claim's own
    /// transaction fetches it by address instead of probing the index. Checked before the
    /// address is read (`fetch_remembered`) and on use (same scope and key, visible in the
    /// snapshot, which a version this transaction replaced since is not); anything else falls
    /// back to the probe.
    static LAST_WRITE: std::cell::RefCell<Option<Remembered>> = const { std::cell::RefCell::new(None) };
}

/// Remembers the row just written at `tid` of `heap`.
///
/// # Safety
/// `heap` open; `scope` and `key` text datums.
unsafe fn remember(
    heap: pg_sys::Relation,
    tid: pg_sys::ItemPointerData,
    scope: pg_sys::Datum,
    key: pg_sys::Datum,
) {
    // SAFETY: the id of the (sub)transaction that wrote (assigned: it just wrote), the open
    // relation's oid and file, and two text datums.
    let remembered = unsafe {
        Remembered {
            xid: pg_sys::GetCurrentTransactionIdIfAny(),
            relid: (*heap).rd_id,
            file: compat::relfilenumber(heap),
            tid,
            scope: varlena_bytes(scope).to_vec(),
            key: varlena_bytes(key).to_vec(),
        }
    };
    LAST_WRITE.set(Some(remembered));
}

/// What the function that opens the table does with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Reads in the active snapshot only (idem_check).
    Read,
    /// Reads in fresh snapshots and writes.
    Write,
}

/// The open table and its primary key, and the row last read (kept in `slot`).
pub struct Direct {
    heap: pg_sys::Relation,
    pkey: pg_sys::Relation,
    shape: Shape,
    intent: Intent,
    lockmode: pg_sys::LOCKMODE,
    slot: *mut pg_sys::TupleTableSlot,
    /// Whether `slot` holds the row of the key last looked up (false: there was none).
    found: std::cell::Cell<bool>,
    /// How many snapshots this value pushed (popped on drop).
    pushed: std::cell::Cell<u32>,
}

/// Column values of a row being formed.
struct Values {
    values: [pg_sys::Datum; NCOLS],
    nulls: [bool; NCOLS],
}

impl Values {
    fn set(&mut self, shape: &Shape, c: Col, v: Option<pg_sys::Datum>) {
        let i = shape.at(c);
        self.values[i] = v.unwrap_or(pg_sys::Datum::from(0));
        self.nulls[i] = v.is_none();
    }
}

impl Direct {
    /// Opens the table if the direct path may use it (the table has its expected shape);
    /// None sends the caller to the SQL path.
    pub fn open(intent: Intent) -> Result<Option<Direct>, IdemError> {
        let lockmode = match intent {
            Intent::Read => pg_sys::AccessShareLock,
            Intent::Write => pg_sys::RowExclusiveLock,
        } as pg_sys::LOCKMODE;
        let relid = shape::relid()?;
        // SAFETY: opens and locks the table (the lock, kept to the end of the transaction,
        // also processes pending invalidations, so the shape read next is current); a table
        // dropped since the oid was kept gives NULL and is looked up again by name.
        unsafe {
            let mut heap = pg_sys::try_relation_open(relid, lockmode);
            if heap.is_null() {
                heap = pg_sys::relation_open(super::record::records_relid()?, lockmode);
            }
            let Some(shape) = shape::of(heap)? else {
                pg_sys::relation_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
                return Ok(None);
            };
            let pkey = pg_sys::index_open(shape.pkey, lockmode);
            if intent == Intent::Write {
                // As SPI does before each statement: see what this transaction wrote so far.
                pg_sys::CommandCounterIncrement();
            }
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            Ok(Some(Direct {
                heap,
                pkey,
                shape,
                intent,
                lockmode,
                slot,
                found: std::cell::Cell::new(false),
                pushed: std::cell::Cell::new(0),
            }))
        }
    }

    /// The snapshot a read uses: the active one for idem_check, else one taken now (and made
    /// active until the call ends).
    fn snapshot(&self, read_only: bool) -> pg_sys::Snapshot {
        // SAFETY: snapshot calls inside a transaction.
        unsafe {
            if read_only || self.intent == Intent::Read {
                return pg_sys::GetActiveSnapshot();
            }
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            self.pushed.set(self.pushed.get() + 1);
            pg_sys::GetActiveSnapshot()
        }
    }

    /// Probes the primary key for (scope, key) under `snapshot`; the row found, if any, is
    /// left in `slot` (pinned) and its oid-free values deformed.
    fn probe(&self, scope: pg_sys::Datum, key: pg_sys::Datum, snapshot: pg_sys::Snapshot) -> bool {
        // SAFETY: both relations are open and locked; the scan keys compare text with
        // texteq, the index's equality operator for its columns.
        unsafe {
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            for (i, value) in [scope, key].into_iter().enumerate() {
                pg_sys::ScanKeyInit(
                    &mut keys[i],
                    (i + 1) as pg_sys::AttrNumber,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::F_TEXTEQ.into(),
                    value,
                );
                keys[i].sk_collation = pg_sys::C_COLLATION_OID;
            }
            pg_sys::ExecClearTuple(self.slot);
            let scan = compat::index_beginscan(self.heap, self.pkey, snapshot, 2);
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
            let found = pg_sys::index_getnext_slot(
                scan,
                pg_sys::ScanDirection::ForwardScanDirection,
                self.slot,
            );
            pg_sys::index_endscan(scan);
            if found {
                pg_sys::slot_getsomeattrs_int(self.slot, NCOLS as i32);
            }
            self.found.set(found);
            found
        }
    }

    fn value(&self, c: Col) -> Option<pg_sys::Datum> {
        // SAFETY: `slot` holds a deformed row of the table (`probe` returned true).
        unsafe {
            let i = self.shape.at(c);
            (!*(*self.slot).tts_isnull.add(i)).then(|| *(*self.slot).tts_values.add(i))
        }
    }

    /// Locks the row in `slot` FOR SHARE, as the SQL path's `lookup_locked` does: 40001
    /// if another transaction updated or deleted it after the snapshot (waiting first for
    /// one still in progress).
    fn lock_shared(&self) -> Result<(), IdemError> {
        // SAFETY: the slot holds a row of the open table; heap_lock_tuple reads its address
        // from t_self and gives back a pinned buffer, released here.
        unsafe {
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_self = (*self.slot).tts_tid;
            let mut buffer: pg_sys::Buffer = 0;
            let mut tmfd: pg_sys::TM_FailureData = std::mem::zeroed();
            let result = pg_sys::heap_lock_tuple(
                self.heap,
                &mut tuple,
                pg_sys::GetCurrentCommandId(true),
                pg_sys::LockTupleMode::LockTupleShare,
                pg_sys::LockWaitPolicy::LockWaitBlock,
                true,
                &mut buffer,
                &mut tmfd,
            );
            if buffer != 0 {
                pg_sys::ReleaseBuffer(buffer);
            }
            match result {
                pg_sys::TM_Result::TM_Ok | pg_sys::TM_Result::TM_SelfModified => Ok(()),
                pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => {
                    self.found.set(false);
                    Err(IdemError::SerializationFailure(
                        "could not serialize access due to concurrent update",
                    ))
                }
                other => Err(IdemError::Internal(format!(
                    "could not lock a row of idempotency.records (result {other})"
                ))),
            }
        }
    }

    /// The row in `slot` as a `Row`, its varlena values copied (detoasted) into the
    /// function's memory context.
    fn row(&self) -> Result<Row, IdemError> {
        Row::decode(&|c| self.value(c), &|d| {
            // SAFETY: a varlena column of the row in `slot`; the copy outlives the slot.
            pg_sys::Datum::from(unsafe { pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr()) })
        })
    }

    /// Makes sure `slot` holds the current row of the key (read now if the last lookup was
    /// of nothing: by its remembered address, else by a probe); false if there is none.
    fn current(&self, scope: pg_sys::Datum, key: pg_sys::Datum) -> bool {
        if self.found.get() {
            return true;
        }
        let snapshot = self.snapshot(false);
        self.fetch_remembered(scope, key, snapshot) || self.probe(scope, key, snapshot)
    }

    /// The row this transaction last wrote for (scope, key), fetched by its address, if it is
    /// still the version the snapshot sees.
    ///
    /// The address is read only while it surely names a block of the table's file: the
    /// (sub)transaction that wrote it is this one or committed into it (not rolled back to a
    /// savepoint), so the RowExclusiveLock that the write took is still held and no other
    /// session can have truncated the file (VACUUM's truncation, TRUNCATE, CLUSTER need
    /// AccessExclusiveLock); and the table still has the file it was written to (this
    /// transaction's own TRUNCATE, CLUSTER or rewrite gave it a new, emptier one).
    fn fetch_remembered(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        snapshot: pg_sys::Snapshot,
    ) -> bool {
        // SAFETY: two text datums; the fetch reads one row address of the open table, in a
        // block of its file (above), under the snapshot (an invisible or vanished version
        // gives false).
        unsafe {
            let tid = LAST_WRITE.with_borrow(|last| match last {
                // The transaction first: a completion in a later transaction (phased use)
                // stops at one call.
                Some(r)
                    if pg_sys::TransactionIdIsCurrentTransactionId(r.xid)
                        && r.relid == (*self.heap).rd_id
                        && r.file == compat::relfilenumber(self.heap)
                        && r.scope == varlena_bytes(scope)
                        && r.key == varlena_bytes(key) =>
                {
                    Some(r.tid)
                }
                _ => None,
            });
            let Some(mut tid) = tid else {
                return false;
            };
            if !pg_sys::table_tuple_fetch_row_version(self.heap, &mut tid, snapshot, self.slot) {
                return false;
            }
            pg_sys::slot_getsomeattrs_int(self.slot, NCOLS as i32);
            let same = |c: Col, given: pg_sys::Datum| {
                self.value(c)
                    .is_some_and(|d| varlena_bytes(d) == varlena_bytes(given))
            };
            let found = same(Col::scope, scope) && same(Col::key, key);
            self.found.set(found);
            found
        }
    }

    /// Inserts the change's row: scope, key and the columns it sets, every other column NULL.
    /// A row of the key already there raises 23505 in the unique check (the caller holds the
    /// key's lock and read none).
    fn insert(&self, c: &Change) -> Result<bool, IdemError> {
        // (The executor calls CheckCmdReplicaIdentity for an INSERT too, where it returns at
        // once on every version from 13 to 18: a publication needs no replica identity for
        // an INSERT. Not called.)
        if xact_snapshot() {
            self.refuse_unseen_row(c.scope, c.key)?;
        }
        let mut row = Values {
            values: [pg_sys::Datum::from(0); NCOLS],
            nulls: [true; NCOLS],
        };
        let s = &self.shape;
        row.set(s, Col::scope, Some(c.scope));
        row.set(s, Col::key, Some(c.key));
        for (col, v) in c.sets() {
            row.set(s, *col, *v);
        }
        // SAFETY: a row of the table's descriptor, inserted into the open, locked table;
        // heap_insert TOASTs what needs it, WAL-logs and checks SSI conflicts.
        unsafe {
            let tuple = pg_sys::heap_form_tuple(
                (*self.heap).rd_att,
                row.values.as_mut_ptr(),
                row.nulls.as_mut_ptr(),
            );
            pg_sys::heap_insert(
                self.heap,
                tuple,
                pg_sys::GetCurrentCommandId(true),
                0,
                std::ptr::null_mut(),
            );
            self.index_entries(&mut (*tuple).t_self, &row, IndexUpdate::All, false);
            remember(self.heap, (*tuple).t_self, c.scope, c.key);
            pg_sys::heap_freetuple(tuple);
        }
        self.found.set(false);
        Ok(true)
    }

    /// Under REPEATABLE READ and SERIALIZABLE: 40001 if the key has a committed row that the
    /// transaction's snapshot cannot see (what INSERT ... ON CONFLICT raises).
    fn refuse_unseen_row(&self, scope: pg_sys::Datum, key: pg_sys::Datum) -> Result<(), IdemError> {
        loop {
            // SAFETY: a dirty snapshot (InitDirtySnapshot) on the stack, used for one probe.
            unsafe {
                let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
                dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
                if !self.probe(scope, key, &mut dirty) {
                    return Ok(());
                }
                self.found.set(false);
                // A writer still in progress (only idem_purge can be: everyone else holds the
                // key's lock): wait for it and look again, as the unique check would.
                let waiting_for = if dirty.xmin != pg_sys::InvalidTransactionId {
                    dirty.xmin
                } else {
                    dirty.xmax
                };
                if waiting_for == pg_sys::InvalidTransactionId {
                    return Err(IdemError::SerializationFailure(
                        "could not serialize access due to concurrent update",
                    ));
                }
                // The row's address, for the wait's error context (as the unique check gives
                // it), taken before the slot lets the row go.
                let mut tid = (*self.slot).tts_tid;
                pg_sys::ExecClearTuple(self.slot);
                pg_sys::XactLockTableWait(
                    waiting_for,
                    self.heap,
                    &mut tid,
                    pg_sys::XLTW_Oper::XLTW_InsertIndex,
                );
            }
        }
    }

    /// Raises what the executor raises for a `cmd` on the table when the statement starts
    /// (`CheckCmdReplicaIdentity`, from `ExecInitModifyTable`): 55000 for an UPDATE of a table
    /// that a publication replicates without a replica identity (REPLICA IDENTITY NOTHING,
    /// USING INDEX of an index since dropped), 42P10 where a publication's row filter or
    /// column list does not fit the replica identity; a subscriber could never apply such an
    /// UPDATE. PostgreSQL keeps what it needs in the table's relcache entry: after the first
    /// call, a few comparisons.
    fn check_replica_identity(&self, cmd: pg_sys::CmdType::Type) {
        // SAFETY: the table is open and locked; an ERROR comes back as a panic for the guard.
        unsafe { pg_sys::CheckCmdReplicaIdentity(self.heap, cmd) }
    }

    /// Adds the index entries of the row at `tid`: every index (a new row, an update that
    /// is not HOT) or only BRIN.
    ///
    /// # Safety
    /// `tid` is the row just written, `row` its values.
    unsafe fn index_entries(
        &self,
        tid: pg_sys::ItemPointer,
        row: &Values,
        which: IndexUpdate,
        update: bool,
    ) {
        if which == IndexUpdate::None {
            return;
        }
        let s = &self.shape;
        unsafe {
            if which == IndexUpdate::All {
                let mut values = [row.values[s.at(Col::scope)], row.values[s.at(Col::key)]];
                let mut nulls = [false; 2];
                let info = pg_sys::BuildIndexInfo(self.pkey);
                // The unique check as the executor makes it; an update keeps scope and key.
                compat::index_insert(
                    self.pkey,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                    tid,
                    self.heap,
                    true,
                    update,
                    info,
                );
                compat::index_insert_cleanup(self.pkey, info);
            }
            let brin = pg_sys::index_open(s.brin, self.lockmode);
            let info = pg_sys::BuildIndexInfo(brin);
            let mut values = [row.values[s.at(Col::expires_at)]];
            let mut nulls = [false; 1];
            compat::index_insert(
                brin,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
                tid,
                self.heap,
                false,
                false,
                info,
            );
            compat::index_insert_cleanup(brin, info);
            pg_sys::index_close(brin, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }

    /// Updates the key's current row with the change's columns; false if it has none (READ
    /// COMMITTED: it was deleted meanwhile) or the row does not meet the change's guard (the
    /// SQL statement's extra conditions), with nothing written.
    fn update(&self, c: &Change) -> Result<bool, IdemError> {
        let (scope, key) = (c.scope, c.key);
        // Where the executor checks it: when the UPDATE starts, before it looks for the row.
        self.check_replica_identity(pg_sys::CmdType::CMD_UPDATE);
        loop {
            if !self.current(scope, key) || !c.guard.holds(&|col| self.value(col)) {
                return Ok(false);
            }
            let mut row = Values {
                values: [pg_sys::Datum::from(0); NCOLS],
                nulls: [true; NCOLS],
            };
            // SAFETY: the slot holds the deformed row; the new row is formed while its buffer
            // is still pinned, then written over it with heap_update.
            let (result, tmfd) = unsafe {
                for i in 0..NCOLS {
                    row.values[i] = *(*self.slot).tts_values.add(i);
                    row.nulls[i] = *(*self.slot).tts_isnull.add(i);
                }
                for (col, v) in c.sets() {
                    row.set(&self.shape, *col, *v);
                }
                let tuple = pg_sys::heap_form_tuple(
                    (*self.heap).rd_att,
                    row.values.as_mut_ptr(),
                    row.nulls.as_mut_ptr(),
                );
                let mut otid = (*self.slot).tts_tid;
                let mut tmfd: pg_sys::TM_FailureData = std::mem::zeroed();
                let (result, indexes) = compat::heap_update(
                    self.heap,
                    &mut otid,
                    tuple,
                    pg_sys::GetCurrentCommandId(true),
                    &mut tmfd,
                );
                if result == pg_sys::TM_Result::TM_Ok {
                    self.index_entries(&mut (*tuple).t_self, &row, indexes, true);
                    remember(self.heap, (*tuple).t_self, scope, key);
                }
                pg_sys::heap_freetuple(tuple);
                (result, tmfd)
            };
            self.found.set(false);
            match result {
                pg_sys::TM_Result::TM_Ok => return Ok(true),
                pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => {
                    let deleted = result == pg_sys::TM_Result::TM_Deleted;
                    if xact_snapshot() {
                        return Err(IdemError::SerializationFailure(if deleted {
                            "could not serialize access due to concurrent delete"
                        } else {
                            "could not serialize access due to concurrent update"
                        }));
                    }
                    if deleted {
                        return Ok(false);
                    }
                    // READ COMMITTED: read the newer version and apply the change to it.
                    let _ = tmfd;
                }
                other => {
                    return Err(IdemError::Internal(format!(
                        "could not update a row of idempotency.records (result {other})"
                    )))
                }
            }
        }
    }
}

impl Path for Direct {
    fn lookup(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        read: Read,
    ) -> Result<Option<Row>, IdemError> {
        let snapshot = self.snapshot(read == Read::InActiveSnapshot);
        if !self.probe(scope, key, snapshot) {
            return Ok(None);
        }
        if read.locks() && self.intent == Intent::Write {
            self.lock_shared()?;
        }
        self.row().map(Some)
    }

    fn write(&self, change: &Change) -> Result<bool, IdemError> {
        if change.write == Write::insert {
            return self.insert(change);
        }
        // A guarded write that reads nothing first (the completion's fast path) reads the
        // key's row now, whatever an earlier lookup left in the slot.
        if matches!(change.guard, Guard::Owned { .. }) {
            self.found.set(false);
        }
        self.update(change)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: releases what `open` and the reads took; the locks stay to the end of the
        // transaction, as the executor keeps them.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.pkey, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::relation_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
            for _ in 0..self.pushed.get() {
                pg_sys::PopActiveSnapshot();
            }
        }
    }
}
