//! Whether the direct path may touch `idempotency.records`: the table must be exactly what
//! the extension's script created, or the direct path would skip what the executor does for
//! the difference (fire a trigger, apply a policy or a default, fill another index, route to
//! a Citus shard). Checked once per backend and kept until the table's relcache entry is
//! invalidated (any ALTER TABLE, CREATE or DROP INDEX or TRIGGER, DROP EXTENSION, Citus's
//! metadata changes); whatever is unexpected makes the store take the SQL path.
//!
//! The expected shape: a plain, unpartitioned heap table; exactly these 16 columns of these
//! types (no dropped or added column, no default, no CHECK, no generated column); no trigger,
//! rule or row security; exactly two indexes, valid and ready: the unique, immediate b-tree
//! on (scope, key) in the "C" collation, and a BRIN index on expires_at, neither with an
//! expression or a predicate; not a Citus table.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

use crate::errors::IdemError;

/// The columns with their types, in the order of the table's definition: `Col`, `NCOLS` and
/// `COLUMNS` (each column's name and type oid), from one list.
macro_rules! columns {
    ($($col:ident: $ty:ident),* $(,)?) => {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum Col { $($col),* }

        pub const NCOLS: usize = [$(Col::$col),*].len();

        const COLUMNS: [(Col, &CStr, u32); NCOLS] = [$((
            Col::$col,
            match CStr::from_bytes_with_nul(concat!(stringify!($col), "\0").as_bytes()) {
                Ok(name) => name,
                Err(_) => panic!("a column name with a NUL"),
            },
            pg_sys::$ty.to_u32(),
        )),*];
    };
}
columns!(
    created_at: TIMESTAMPTZOID,
    expires_at: TIMESTAMPTZOID,
    lease_expires_at: TIMESTAMPTZOID,
    lease: INT8OID,
    owner: REGROLEOID,
    attempt: INT4OID,
    http_status: INT2OID,
    state: CHAROID,
    retryable: BOOLOID,
    scope: TEXTOID,
    key: TEXTOID,
    fingerprint: BYTEAOID,
    resource: TEXTOID,
    recovery_point: TEXTOID,
    recovery_data: JSONBOID,
    response: JSONBOID,
);

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
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // SAFETY: a relcache callback's outermost frame.
    unsafe {
        crate::entry::enter(c"idempotency relcache callback", || {
            if let Some((rel, _)) = KNOWN.get() {
                if relid == pg_sys::InvalidOid || relid == rel {
                    KNOWN.set(None);
                }
            }
            Ok(())
        })
    }
}

/// The records table's oid: kept, or looked up by name.
pub fn relid() -> Result<pg_sys::Oid, IdemError> {
    match KNOWN.get() {
        Some((relid, _)) => Ok(relid),
        None => super::records_relid(),
    }
}

/// The shape of the open records table `rel`, or None if the direct path must not use it.
/// Call after the table is locked: taking the lock processes the invalidations that a
/// change of the table sent.
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
    let shape = match unsafe { read(rel) }? {
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
    Ok(shape)
}

/// Reads the shape from the catalogs: the shape, or why the direct path must not be taken
/// (logged at DEBUG1 once per backend and change of the table).
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
        let mut position = [0usize; NCOLS];
        for (col, name, typ) in COLUMNS {
            let attnum = pg_sys::get_attnum(relid, name.as_ptr());
            if attnum < 1 || pg_sys::get_atttype(relid, attnum) != pg_sys::Oid::from(typ) {
                return Ok(Err("its columns are not the extension's"));
            }
            position[col as usize] = attnum as usize - 1;
        }
        let attnum = |c: Col| position[c as usize] as i16 + 1;

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
        if crate::citus::layout()? != crate::citus::Layout::Local {
            return Ok(Err("it is a Citus table"));
        }
        Ok(Ok(Shape {
            pkey,
            brin,
            position,
        }))
    }
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
