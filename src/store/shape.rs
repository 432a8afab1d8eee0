//! Whether the direct path may touch `idempotency.records`: the table must be exactly what
//! the extension's script created, or the direct path would skip what the executor does for
//! the difference (fire a trigger, apply a policy or a default, refuse a NULL, fill another
//! index, read a child table, route to a Citus shard). Checked once per backend and kept
//! until the table's relcache entry is invalidated (any ALTER TABLE, CREATE or DROP INDEX or
//! TRIGGER, a new inheritance child, DROP EXTENSION, Citus's metadata changes); whatever is
//! unexpected makes the store take the SQL path.
//!
//! The expected shape: a plain, unpartitioned heap table with no inheritance child and no
//! parent; exactly these 16 columns of these types, each NOT NULL exactly where the script
//! made it so (no dropped or added column, no default, no CHECK, no identity or generated
//! column); no trigger, rule or row security; exactly two indexes, valid and ready: the
//! unique, immediate b-tree on (scope, key) in the "C" collation, and a BRIN index on
//! expires_at, neither with an expression or a predicate; not a Citus table.
//!
//! What is not a matter of shape is checked where the executor checks it: a publication that
//! cannot replicate an UPDATE of the table (`CheckCmdReplicaIdentity`, store/direct.rs).

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

use super::columns::{Col, COLUMNS, NCOLS};
use crate::errors::IdemError;

/// The table as the direct path uses it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The primary key's index, on (scope, key).
    pub pkey: pg_sys::Oid,
    /// The BRIN index on expires_at.
    pub brin: pg_sys::Oid,
    /// Each column's position in a row (0-based), by `Col`.
    pub position: [usize; NCOLS],
}

impl Shape {
    pub fn at(&self, c: Col) -> usize {
        self.position[c as usize]
    }
}

thread_local! {
    /// The table's oid and, if the direct path may use it, its shape.
    static KNOWN: Cell<Option<(pg_sys::Oid, Option<Shape>)>> = const { Cell::new(None) };
    /// The table whose invalidations the callback counts: the one whose shape was read last.
    static WATCHED: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// How many invalidations of `WATCHED` (or of every relation) this backend has processed.
    static INVALIDATIONS: Cell<u64> = const { Cell::new(0) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// How many times `of` reads a shape that an invalidation overtook before it gives the call
/// to the SQL path (and reads again on the next call).
const READ_ATTEMPTS: u32 = 3;

unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // SAFETY: a relcache callback's outermost frame.
    unsafe {
        crate::entry::enter(c"idempotency relcache callback", || {
            if relid == pg_sys::InvalidOid || relid == WATCHED.get() {
                KNOWN.set(None);
                INVALIDATIONS.set(INVALIDATIONS.get().wrapping_add(1));
            }
            Ok(())
        })
    }
}

/// The records table's oid: kept, or looked up by name.
pub fn relid() -> Result<pg_sys::Oid, IdemError> {
    match KNOWN.get() {
        Some((relid, _)) => Ok(relid),
        None => super::record::records_relid(),
    }
}

/// The shape of the open records table `rel`, or None if the direct path must not use it.
/// Call after the table is locked: taking the lock processes the invalidations that a
/// change of the table sent.
///
/// A shape is kept only if no invalidation of the table arrived while it was read. Reading
/// looks at catalogs (the indexes, pg_inherits), and opening one processes the invalidations
/// that are pending: the table's relcache entry is then rebuilt under the read, which may
/// already have looked at the old one (the index list, say, before a CREATE INDEX
/// CONCURRENTLY's new index). Nothing was kept yet for the callback to drop, so such a shape
/// would stay until the table's next change: it is read again instead, and after
/// `READ_ATTEMPTS` overtaken reads the call takes the SQL path (and the next call reads again).
///
/// # Safety
/// `rel` is the records table, open and locked.
pub unsafe fn of(rel: pg_sys::Relation) -> Result<Option<Shape>, IdemError> {
    let relid = unsafe { (*rel).rd_id };
    if let Some((known, shape)) = KNOWN.get() {
        if known == relid {
            return Ok(shape);
        }
    }
    if !CALLBACK_REGISTERED.get() {
        crate::compat::register_relcache_callback(invalidate);
        CALLBACK_REGISTERED.set(true);
    }
    WATCHED.set(relid);
    for _ in 0..READ_ATTEMPTS {
        let before = INVALIDATIONS.get();
        let read = unsafe { read(rel) }?;
        if INVALIDATIONS.get() != before {
            continue;
        }
        let shape = match read {
            Ok(shape) => {
                pgrx::debug1!("idempotency: idempotency.records takes the direct path");
                Some(shape)
            }
            Err(why) => {
                pgrx::debug1!("idempotency: idempotency.records takes the SQL path: {why}");
                None
            }
        };
        KNOWN.set(Some((relid, shape)));
        return Ok(shape);
    }
    pgrx::debug1!(
        "idempotency: idempotency.records takes the SQL path for this call: it changed while its shape was read"
    );
    Ok(None)
}

/// Reads the shape: the shape, or why the direct path must not be taken (logged at DEBUG1
/// once per backend and change of the table).
///
/// First everything that the relcache entry itself holds, without a catalog lookup (which
/// could process an invalidation and rebuild the entry while its fields are read); then the
/// catalogs. `of` discards the result if an invalidation arrived meanwhile.
unsafe fn read(rel: pg_sys::Relation) -> Result<Result<Shape, &'static str>, IdemError> {
    unsafe {
        let relid = (*rel).rd_id;
        let form = &*(*rel).rd_rel;
        if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char || form.relispartition {
            return Ok(Err("it is not a plain table"));
        }
        if form.relam != pg_sys::HEAP_TABLE_AM_OID {
            return Ok(Err("it is not stored by the heap access method"));
        }
        if form.relrowsecurity {
            return Ok(Err("it has row security"));
        }
        // The executor's statements read and update the children too (the primary key covers
        // none of their rows). Set by the first child, cleared by ANALYZE once none is left.
        if form.relhassubclass {
            return Ok(Err("it has inheritance children"));
        }
        if !(*rel).trigdesc.is_null() || !(*rel).rd_rules.is_null() {
            return Ok(Err("it has a trigger or a rule"));
        }
        let desc = (*rel).rd_att;
        if (*desc).natts as usize != NCOLS {
            return Ok(Err("its columns are not the extension's"));
        }
        let constr = (*desc).constr;
        if !constr.is_null()
            && ((*constr).num_defval > 0
                || (*constr).num_check > 0
                || (*constr).has_generated_stored)
        {
            return Ok(Err(
                "it has a default, a CHECK constraint or a generated column",
            ));
        }
        let mut position = [usize::MAX; NCOLS];
        for i in 0..NCOLS {
            let att = &*crate::compat::tuple_desc_attr(desc, i);
            let name = CStr::from_ptr(att.attname.data.as_ptr());
            let Some(&(col, _, typ, not_null)) = COLUMNS.iter().find(|c| c.1 == name) else {
                return Ok(Err("its columns are not the extension's"));
            };
            if att.attisdropped
                || att.atttypid != pg_sys::Oid::from(typ)
                || position[col as usize] != usize::MAX
            {
                return Ok(Err("its columns are not the extension's"));
            }
            if att.attnotnull != not_null {
                return Ok(Err(
                    "a column's NOT NULL is not as the extension created it",
                ));
            }
            if att.attidentity != 0 {
                return Ok(Err("it has an identity column"));
            }
            if att.attgenerated != 0 {
                return Ok(Err(
                    "it has a default, a CHECK constraint or a generated column",
                ));
            }
            position[col as usize] = i;
        }
        let attnum = |c: Col| position[c as usize] as i16 + 1;

        // From here on catalogs are read (each may process invalidations).
        if has_superclass(relid) {
            return Ok(Err("it inherits from another table"));
        }
        let list = pg_sys::RelationGetIndexList(rel);
        if list.is_null() || (*list).length != 2 {
            return Ok(Err("its indexes are not the extension's"));
        }
        let (mut pkey, mut brin) = (None, None);
        for i in 0..2 {
            let oid = (*(*list).elements.add(i)).oid_value;
            let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let kind = index_kind(index, &attnum);
            pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            match kind {
                Some(IndexKind::Pkey) => pkey = Some(oid),
                Some(IndexKind::Brin) => brin = Some(oid),
                None => return Ok(Err("its indexes are not the extension's")),
            }
        }
        let (Some(pkey), Some(brin)) = (pkey, brin) else {
            return Ok(Err("its indexes are not the extension's"));
        };
        if super::placement::layout()? != super::placement::Layout::Local {
            return Ok(Err("it is a Citus table"));
        }
        Ok(Ok(Shape {
            pkey,
            brin,
            position,
        }))
    }
}

/// Whether the table inherits from another (a row in pg_inherits; pgrx's bindings have no
/// catalog/pg_inherits.h).
fn has_superclass(relid: pg_sys::Oid) -> bool {
    unsafe extern "C-unwind" {
        fn has_superclass(relid: pg_sys::Oid) -> bool;
    }
    // SAFETY: a catalog scan by oid, inside a transaction; guarded like any pg_sys call (an
    // ERROR comes back as a panic for the way in's guard).
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| has_superclass(relid)) }
}

enum IndexKind {
    Pkey,
    Brin,
}

/// Which of the two expected indexes `index` is, if it is one of them.
unsafe fn index_kind(index: pg_sys::Relation, attnum: &dyn Fn(Col) -> i16) -> Option<IndexKind> {
    unsafe {
        let ix = &*(*index).rd_index;
        if !ix.indisvalid
            || !ix.indisready
            || !ix.indislive
            || !pg_sys::RelationGetIndexExpressions(index).is_null()
            || !pg_sys::RelationGetIndexPredicate(index).is_null()
        {
            return None;
        }
        let keys = ix.indkey.values.as_slice(ix.indnatts as usize);
        let am = (*(*index).rd_rel).relam;
        if am == pg_sys::BTREE_AM_OID
            && ix.indisunique
            && ix.indimmediate
            && ix.indnatts == 2
            && ix.indnkeyatts == 2
            && keys == [attnum(Col::scope), attnum(Col::key)]
            && *(*index).rd_indcollation == pg_sys::C_COLLATION_OID
            && *(*index).rd_indcollation.add(1) == pg_sys::C_COLLATION_OID
        {
            Some(IndexKind::Pkey)
        } else if am == pg_sys::BRIN_AM_OID
            && !ix.indisunique
            && ix.indnatts == 1
            && keys == [attnum(Col::expires_at)]
        {
            Some(IndexKind::Brin)
        } else {
            None
        }
    }
}
