//! The SQL path, the reference: every query on `idempotency.records` through SPI plans
//! prepared once per backend (on first use) and kept, run with the rights of the table's owner
//! (callers have none on it). All SQL here is schema-qualified, its operators included, so
//! that no object on the caller's `search_path` can take part in it.
//!
//! No column list is written here: the lookup's SELECT list is every column in the order of
//! `shape`'s declaration (so a column's number in the result is its position there), and each
//! write's statement is made from its [`Change`]: the columns it sets, the guard's conditions,
//! and their parameter types from the same declaration. The SPI connection and the switch to
//! the owner's rights are also what the Citus queries run in (`placement`, `crate::citus`).

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString};

use idempotency_core::decision::Micros;
use pgrx::pg_sys;

use super::columns::{Col, NCOLS};
use super::record::{owner_of, records_relid, Change, Path, Read, Row, Write};
use crate::errors::IdemError;

const WHERE_KEY: &str = "scope OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2";

/// The statements: the writes (one per [`Write`], made from its change) and the few that are
/// not a change of one row.
#[derive(Clone, Copy)]
enum Statement {
    Write(Write),
    Lookup,
    /// The read of a decision under REPEATABLE READ and SERIALIZABLE: the row lock refuses
    /// (40001) a version that another transaction replaced or deleted after the snapshot.
    LookupLocked,
    Forget,
    /// Expired rows in a bounded batch; rows that a live transaction has locked (a claim
    /// being made on an expired row) are skipped, never waited for.
    Purge,
}

const STATEMENTS: usize = Write::COUNT + 4;

impl Statement {
    fn index(self) -> usize {
        match self {
            Statement::Write(w) => w as usize,
            Statement::Lookup => Write::COUNT,
            Statement::LookupLocked => Write::COUNT + 1,
            Statement::Forget => Write::COUNT + 2,
            Statement::Purge => Write::COUNT + 3,
        }
    }

    /// What the statement is called in messages.
    fn name(self) -> String {
        match self {
            Statement::Write(w) => format!("{w:?}"),
            Statement::Lookup => "lookup".into(),
            Statement::LookupLocked => "lookup_locked".into(),
            Statement::Forget => "forget".into(),
            Statement::Purge => "purge".into(),
        }
    }
}

/// The SQL and parameter types of a lookup.
fn lookup_sql(locked: bool) -> (String, Vec<pg_sys::Oid>) {
    let list: Vec<&str> = Col::ALL.iter().map(|c| c.name()).collect();
    (
        format!(
            "SELECT {} FROM idempotency.records WHERE {WHERE_KEY}{}",
            list.join(", "),
            if locked { " FOR SHARE" } else { "" }
        ),
        vec![pg_sys::TEXTOID, pg_sys::TEXTOID],
    )
}

/// The SQL and parameter types of a change's statement: $1 and $2 the scope and key, then the
/// columns it sets, then its guard's values. An insert does nothing when the key has a row.
fn write_sql(c: &Change) -> (String, Vec<pg_sys::Oid>) {
    let mut types = vec![pg_sys::TEXTOID, pg_sys::TEXTOID];
    let mut sql = if c.write == Write::insert {
        let mut names = String::from("scope, key");
        let mut values = String::from("$1, $2");
        for (col, _) in c.sets() {
            types.push(col.type_oid());
            names += &format!(", {}", col.name());
            values += &format!(", ${}", types.len());
        }
        format!(
            "INSERT INTO idempotency.records ({names}) VALUES ({values}) \
             ON CONFLICT (scope, key) DO NOTHING"
        )
    } else {
        let mut sets = Vec::new();
        for (col, _) in c.sets() {
            types.push(col.type_oid());
            sets.push(format!("{} = ${}", col.name(), types.len()));
        }
        format!(
            "UPDATE idempotency.records SET {} WHERE {WHERE_KEY}",
            sets.join(", ")
        )
    };
    for cond in c.guard.conditions() {
        types.push(cond.col.type_oid());
        let n = types.len();
        let test = format!(
            "{} OPERATOR(pg_catalog.{}) ${n}",
            cond.col.name(),
            cond.op.sql()
        );
        sql += &if cond.optional {
            format!(" AND (${n} IS NULL OR {test})")
        } else {
            format!(" AND {test}")
        };
    }
    (sql, types)
}

/// The arguments of a change's statement, in the order of `write_sql`.
fn write_args(c: &Change) -> Vec<Option<pg_sys::Datum>> {
    let mut args = Vec::with_capacity(2 + c.sets().len() + 4);
    args.push(Some(c.scope));
    args.push(Some(c.key));
    for (_, v) in c.sets() {
        args.push(*v);
    }
    for cond in c.guard.conditions() {
        args.push(cond.value);
    }
    args
}

thread_local! {
    // Kept plans live in CacheMemoryContext for the backend's life; PostgreSQL re-plans them
    // when the table changes (even when the extension is dropped and created again).
    static PLANS: [Cell<pg_sys::SPIPlanPtr>; STATEMENTS] =
        const { [const { Cell::new(std::ptr::null_mut()) }; STATEMENTS] };
}

/// Prepares a statement and keeps it for the backend's life (inside an SPI connection).
pub(super) fn prepare(
    name: &str,
    sql: &str,
    types: &mut [pg_sys::Oid],
) -> Result<pg_sys::SPIPlanPtr, IdemError> {
    let sql = CString::new(sql).map_err(|e| IdemError::Internal(e.to_string()))?;
    // SAFETY: inside an SPI connection; the argument types match the statement.
    let plan = unsafe { pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr()) };
    if plan.is_null() {
        return Err(IdemError::Internal(format!(
            "could not prepare the {name} statement on idempotency.records: {}",
            spi_result_text(unsafe { pg_sys::SPI_result })
        )));
    }
    // SAFETY: a plan SPI_prepare just made.
    let rc = unsafe { pg_sys::SPI_keepplan(plan) };
    if rc != 0 {
        return Err(IdemError::Internal(format!(
            "could not keep the {name} statement on idempotency.records: {}",
            spi_result_text(rc)
        )));
    }
    Ok(plan)
}

/// SPI's name of a result code (SPI_ERROR_ARGUMENT, ...).
fn spi_result_text(rc: i32) -> String {
    // SAFETY: SPI_result_code_string returns a static string for any code.
    unsafe { CStr::from_ptr(pg_sys::SPI_result_code_string(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// An open SPI connection running as the table's owner. Dropping it disconnects and gives the
/// caller's identity back (an error does both through PostgreSQL's abort processing).
pub struct Sql {
    outer: pg_sys::MemoryContext,
    saved_user: pg_sys::Oid,
    saved_context: i32,
}

impl Sql {
    /// Connects to SPI and switches to the table owner's rights (without letting anything run
    /// under them but this store's own statements: SECURITY_RESTRICTED_OPERATION).
    pub fn open() -> Result<Sql, IdemError> {
        let owner = owner_of(records_relid()?);
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        // SAFETY: standard SPI and user-switch calls; an error raised in between is cleaned up
        // by PostgreSQL's (sub)transaction abort, which restores the user id too.
        unsafe {
            let outer = pg_sys::CurrentMemoryContext;
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
                return Err(IdemError::Internal(
                    "could not connect to SPI to reach idempotency.records".into(),
                ));
            }
            Ok(Sql {
                outer,
                saved_user,
                saved_context,
            })
        }
    }

    /// The kept plan of a statement, prepared on first use (`text` makes its SQL).
    fn plan(
        &self,
        s: Statement,
        text: impl FnOnce() -> (String, Vec<pg_sys::Oid>),
    ) -> Result<pg_sys::SPIPlanPtr, IdemError> {
        let kept = PLANS.with(|p| p[s.index()].get());
        if !kept.is_null() {
            return Ok(kept);
        }
        let (sql, mut types) = text();
        let plan = prepare(&s.name(), &sql, &mut types)?;
        PLANS.with(|p| p[s.index()].set(plan));
        Ok(plan)
    }

    /// Runs a kept plan; returns the number of rows processed.
    fn run(
        &self,
        s: Statement,
        plan: pg_sys::SPIPlanPtr,
        args: &[Option<pg_sys::Datum>],
        read_only: bool,
        limit: i64,
    ) -> Result<u64, IdemError> {
        let mut values: Vec<pg_sys::Datum> = args
            .iter()
            .map(|a| a.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let nulls: Vec<c_char> = args
            .iter()
            .map(|a| if a.is_some() { b' ' } else { b'n' } as c_char)
            .collect();
        // SAFETY: the plan's argument count and types match `args` (made side by side).
        let rc = unsafe {
            pg_sys::SPI_execute_plan(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                read_only,
                limit as _,
            )
        };
        if rc < 0 {
            return Err(IdemError::Internal(format!(
                "the {} statement on idempotency.records failed: {}",
                s.name(),
                spi_result_text(rc)
            )));
        }
        // SAFETY: set by the execution above.
        Ok(unsafe { pg_sys::SPI_processed })
    }

    /// Copies a varlena value, detoasted, into the SQL function's memory context.
    fn copy_out(&self, d: pg_sys::Datum) -> pg_sys::Datum {
        // SAFETY: `d` is a varlena datum of the current SPI result; the copy is made in the
        // outer context, which lives until the SQL function returns.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.outer);
            let copy = pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr());
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::Datum::from(copy)
        }
    }

    /// Deletes a key's record (`idem_forget`); false if it has none.
    pub fn forget(&self, scope: pg_sys::Datum, key: pg_sys::Datum) -> Result<bool, IdemError> {
        let s = Statement::Forget;
        let plan = self.plan(s, || {
            (
                format!("DELETE FROM idempotency.records WHERE {WHERE_KEY}"),
                vec![pg_sys::TEXTOID, pg_sys::TEXTOID],
            )
        })?;
        Ok(self.run(s, plan, &[Some(scope), Some(key)], false, 0)? == 1)
    }

    /// Deletes up to `max_rows` records expired at `now`, on one server (`placement::purge`
    /// chooses this or the shards).
    pub fn purge(&self, now: Micros, max_rows: i32) -> Result<u64, IdemError> {
        let s = Statement::Purge;
        let plan = self.plan(s, || {
            (
                "DELETE FROM idempotency.records WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(\
                 SELECT ctid FROM idempotency.records \
                 WHERE expires_at OPERATOR(pg_catalog.<=) $1 LIMIT $2 FOR UPDATE SKIP LOCKED))"
                    .into(),
                vec![pg_sys::TIMESTAMPTZOID, pg_sys::INT8OID],
            )
        })?;
        self.run(
            s,
            plan,
            &[Some(now.into()), Some(i64::from(max_rows).into())],
            false,
            0,
        )
    }

    /// Runs a statement once (not kept) in this connection and returns its first row as text
    /// values (the Citus catalog queries and functions).
    pub fn query_once(
        &self,
        sql: &str,
        args: &[(pg_sys::Oid, pg_sys::Datum)],
    ) -> Result<Option<Vec<Option<String>>>, IdemError> {
        let sql = CString::new(sql).map_err(|e| IdemError::Internal(e.to_string()))?;
        let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
        // SAFETY: inside this SPI connection; the types match the values.
        unsafe {
            let rc = pg_sys::SPI_execute_with_args(
                sql.as_ptr(),
                args.len() as i32,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                std::ptr::null(),
                false,
                1,
            );
            if rc < 0 {
                return Err(IdemError::Internal(format!(
                    "SPI_execute_with_args returned {rc}"
                )));
            }
            if pg_sys::SPI_processed == 0 {
                return Ok(None);
            }
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            let mut out = Vec::new();
            for n in 1..=(*desc).natts {
                let v = pg_sys::SPI_getvalue(tuple, desc, n);
                out.push(if v.is_null() {
                    None
                } else {
                    Some(CStr::from_ptr(v).to_string_lossy().into_owned())
                });
            }
            Ok(Some(out))
        }
    }

    /// Runs a plan of this module's caller's (kept by it, no NULL arguments) and returns the
    /// first row's values (None for NULL), if it gave exactly one row; `what` names it in
    /// messages. The values are of by-value types or live until the connection closes.
    pub fn one_row(
        &self,
        plan: pg_sys::SPIPlanPtr,
        values: &mut [pg_sys::Datum],
        what: &str,
    ) -> Result<Vec<Option<pg_sys::Datum>>, IdemError> {
        // SAFETY: the plan takes these arguments; one row is read from SPI_tuptable.
        unsafe {
            let rc =
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), std::ptr::null(), false, 1);
            if rc < 0 || pg_sys::SPI_processed != 1 {
                return Err(IdemError::Internal(format!("{what} returned {rc}")));
            }
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            Ok((1..=(*desc).natts)
                .map(|n| {
                    let mut null = false;
                    let d = pg_sys::SPI_getbinval(tuple, desc, n, &mut null);
                    (!null).then_some(d)
                })
                .collect())
        }
    }
}

impl Path for Sql {
    fn lookup(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        read: Read,
    ) -> Result<Option<Row>, IdemError> {
        let locked = read.locks();
        let s = if locked {
            Statement::LookupLocked
        } else {
            Statement::Lookup
        };
        let plan = self.plan(s, || lookup_sql(locked))?;
        let read_only = read == Read::InActiveSnapshot;
        if self.run(s, plan, &[Some(scope), Some(key)], read_only, 1)? == 0 {
            return Ok(None);
        }
        // SAFETY: one row of every column, in `Col::ALL`'s order, is in SPI_tuptable.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            debug_assert_eq!((*desc).natts as usize, NCOLS);
            let value = |c: Col| -> Option<pg_sys::Datum> {
                let mut is_null = false;
                let d = pg_sys::SPI_getbinval(tuple, desc, c as i32 + 1, &mut is_null);
                (!is_null).then_some(d)
            };
            Row::decode(&value, &|d| self.copy_out(d)).map(Some)
        }
    }

    fn write(&self, change: &Change) -> Result<bool, IdemError> {
        let s = Statement::Write(change.write);
        let plan = self.plan(s, || write_sql(change))?;
        Ok(self.run(s, plan, &write_args(change), false, 0)? == 1)
    }

    fn insert_first(&self) -> bool {
        !super::record::xact_snapshot()
    }
}

impl Drop for Sql {
    fn drop(&mut self) {
        // SAFETY: closes the connection opened in `open` and restores the caller's identity.
        unsafe {
            pg_sys::SPI_finish();
            pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_context);
        }
    }
}
