//! The SQL path, the reference: every query on `idempotency.records` through SPI plans
//! prepared once per backend and kept, run with the rights of the table's owner (callers have
//! none on it). All SQL here is schema-qualified, its operators included, so that no object on
//! the caller's `search_path` can take part in it.

use std::cell::Cell;
use std::ffi::c_char;

use idempotency_core::decision::{Micros, State};
use pgrx::{pg_sys, IntoDatum};

use super::{owner_of, records_relid, state_of, varlena_bytes, Claim, Outcome, Read, Row};
use crate::errors::IdemError;

/// The columns a lookup reads, in this order: `Col::x as i32` is the number SPI gives column
/// `x` of the lookup's result, and `lookup_select_list!()` the lookup's SELECT list.
macro_rules! lookup_columns {
    ($first:ident $(, $col:ident)*) => {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        enum Col { $first = 1 $(, $col)* }

        macro_rules! lookup_select_list {
            () => { concat!(stringify!($first) $(, ", ", stringify!($col))*) };
        }
    };
}
lookup_columns!(
    owner,
    state,
    retryable,
    fingerprint,
    attempt,
    created_at,
    expires_at,
    lease_expires_at,
    lease,
    http_status,
    response,
    resource,
    recovery_point,
    recovery_data
);

macro_rules! where_key {
    () => {
        "scope OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2"
    };
}

/// The statements, each prepared once per backend and kept: a field of `Plans` per statement,
/// with its SQL and its parameter types side by side, so that no list can get out of order.
macro_rules! plans {
    ($($(#[$doc:meta])* $name:ident: ($($ty:ident),*) $sql:expr;)*) => {
        #[derive(Clone, Copy)]
        struct Plans { $($name: pg_sys::SPIPlanPtr),* }

        impl Plans {
            /// Not prepared yet.
            const NONE: Plans = Plans { $($name: std::ptr::null_mut()),* };
        }

        /// Prepares and keeps every statement (inside an SPI connection).
        fn prepare_all() -> Result<Plans, IdemError> {
            Ok(Plans { $($name: prepare(stringify!($name), $sql, &mut [$(pg_sys::$ty),*])?),* })
        }

        /// What each statement is called in messages.
        impl Plans {
            fn name_of(&self, plan: pg_sys::SPIPlanPtr) -> &'static str {
                $(if plan == self.$name { return stringify!($name); })*
                "unknown"
            }
        }
    };
}

plans! {
    lookup: (TEXTOID, TEXTOID)
        concat!("SELECT ", lookup_select_list!(), " FROM idempotency.records WHERE ", where_key!());
    /// The read of a decision under REPEATABLE READ and SERIALIZABLE: the row lock refuses
    /// (40001) a version that another transaction replaced or deleted after the snapshot.
    lookup_locked: (TEXTOID, TEXTOID)
        concat!("SELECT ", lookup_select_list!(), " FROM idempotency.records WHERE ", where_key!(),
                " FOR SHARE");
    insert: (TEXTOID, TEXTOID, REGROLEOID, BYTEAOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID)
        "INSERT INTO idempotency.records (scope, key, owner, state, fingerprint, attempt, \
         created_at, expires_at, lease_expires_at, lease) \
         VALUES ($1, $2, $3, 'p', $4, 1, $5, $6, $7, $8) \
         ON CONFLICT (scope, key) DO NOTHING";
    /// Reuses the row of an expired record for a new claim.
    reclaim: (TEXTOID, TEXTOID, REGROLEOID, BYTEAOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID)
        concat!("UPDATE idempotency.records SET owner = $3, state = 'p', retryable = NULL, \
                 fingerprint = $4, attempt = 1, created_at = $5, expires_at = $6, \
                 lease_expires_at = $7, lease = $8, http_status = NULL, response = NULL, \
                 resource = NULL, recovery_point = NULL, recovery_data = NULL \
                 WHERE ", where_key!(), " AND expires_at OPERATOR(pg_catalog.<=) $5");
    /// The next attempt: after a lease ran out or a retryable failure. Keeps the recovery point.
    resume: (TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID, INT8OID)
        concat!("UPDATE idempotency.records SET state = 'p', retryable = NULL, attempt = $3, \
                 lease_expires_at = $4, lease = $5, http_status = NULL, response = NULL, \
                 resource = NULL WHERE ", where_key!());
    /// A completion drops the recovery point (nothing will resume).
    complete: (TEXTOID, TEXTOID, INT2OID, JSONBOID, TEXTOID)
        concat!("UPDATE idempotency.records SET state = 'c', http_status = $3, response = $4, \
                 resource = $5, lease_expires_at = NULL, recovery_point = NULL, \
                 recovery_data = NULL WHERE ", where_key!());
    /// The completion's fast path: one statement that both checks what `decision::settle`
    /// would (live, in progress, the caller's own, at the given attempt) and writes. When it
    /// finds no such row, `api` reads the record and lets the decision explain why.
    complete_owned: (TEXTOID, TEXTOID, INT2OID, JSONBOID, TEXTOID, TIMESTAMPTZOID, REGROLEOID, INT4OID)
        concat!("UPDATE idempotency.records SET state = 'c', http_status = $3, response = $4, \
                 resource = $5, lease_expires_at = NULL, recovery_point = NULL, \
                 recovery_data = NULL WHERE ", where_key!(),
                " AND state OPERATOR(pg_catalog.=) 'p' AND expires_at OPERATOR(pg_catalog.>) $6 \
                 AND owner OPERATOR(pg_catalog.=) $7 \
                 AND ($8 IS NULL OR attempt OPERATOR(pg_catalog.=) $8)");
    /// A failure keeps the recovery point for the retry.
    fail: (TEXTOID, TEXTOID, BOOLOID, INT2OID, JSONBOID)
        concat!("UPDATE idempotency.records SET state = 'f', retryable = $3, http_status = $4, \
                 response = $5, lease_expires_at = NULL WHERE ", where_key!());
    checkpoint: (TEXTOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID)
        concat!("UPDATE idempotency.records SET recovery_point = $3, recovery_data = $4, \
                 lease_expires_at = $5 WHERE ", where_key!());
    forget: (TEXTOID, TEXTOID)
        concat!("DELETE FROM idempotency.records WHERE ", where_key!());
    /// Expired rows in a bounded batch; rows that a live transaction has locked (a claim
    /// being made on an expired row) are skipped, never waited for.
    purge: (TIMESTAMPTZOID, INT8OID)
        "DELETE FROM idempotency.records WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(\
         SELECT ctid FROM idempotency.records \
         WHERE expires_at OPERATOR(pg_catalog.<=) $1 LIMIT $2 FOR UPDATE SKIP LOCKED))";
}

thread_local! {
    // Kept plans live in CacheMemoryContext for the backend's life; PostgreSQL re-plans them
    // when the table changes (even when the extension is dropped and created again).
    static PLANS: Cell<Option<Plans>> = const { Cell::new(None) };
}

fn prepare(
    name: &str,
    sql: &str,
    types: &mut [pg_sys::Oid],
) -> Result<pg_sys::SPIPlanPtr, IdemError> {
    let sql = std::ffi::CString::new(sql).map_err(|e| IdemError::Internal(e.to_string()))?;
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
    unsafe { std::ffi::CStr::from_ptr(pg_sys::SPI_result_code_string(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// An open SPI connection running as the table's owner. Dropping it disconnects and gives the
/// caller's identity back (an error does both through PostgreSQL's abort processing).
pub struct Sql {
    outer: pg_sys::MemoryContext,
    plans: Plans,
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
            let mut records = Sql {
                outer,
                plans: PLANS.get().unwrap_or(Plans::NONE),
                saved_user,
                saved_context,
            };
            // `records` exists before preparing, so that a failure still disconnects and
            // restores the caller's identity (Drop).
            if records.plans.lookup.is_null() {
                records.plans = prepare_all()?;
                PLANS.set(Some(records.plans));
            }
            Ok(records)
        }
    }

    /// Runs a kept plan; returns the number of rows processed.
    fn run(
        &self,
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
        // SAFETY: the plan's argument count and types match `args` (see `plans!`).
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
                self.plans.name_of(plan),
                spi_result_text(rc)
            )));
        }
        // SAFETY: set by the execution above.
        Ok(unsafe { pg_sys::SPI_processed })
    }

    /// Reads the record of a key (`Read` says how).
    pub fn lookup(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        read: Read,
    ) -> Result<Option<Row>, IdemError> {
        let plan = if read.locks() {
            self.plans.lookup_locked
        } else {
            self.plans.lookup
        };
        let read_only = read == Read::InActiveSnapshot;
        if self.run(plan, &[Some(scope), Some(key)], read_only, 1)? == 0 {
            return Ok(None);
        }
        // SAFETY: one row of the lookup's columns is in SPI_tuptable.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            let col = |c: Col| -> Option<pg_sys::Datum> {
                let mut is_null = false;
                let d = pg_sys::SPI_getbinval(tuple, desc, c as i32, &mut is_null);
                (!is_null).then_some(d)
            };
            let required = |c: Col| {
                col(c).ok_or_else(|| {
                    IdemError::Internal(format!(
                        "column {} of idempotency.records is null",
                        c as i32
                    ))
                })
            };
            let state = state_of(
                required(Col::state)?.value() as u8,
                col(Col::retryable).map(|d| d.value() != 0),
            )?;
            let fp = varlena_bytes(required(Col::fingerprint)?);
            let fingerprint: [u8; 32] = fp.try_into().map_err(|_| {
                IdemError::Internal("a fingerprint in idempotency.records is not 32 bytes".into())
            })?;
            Ok(Some(Row {
                owner: pg_sys::Oid::from(required(Col::owner)?.value() as u32),
                state,
                fingerprint,
                attempt: required(Col::attempt)?.value() as i32,
                created_at: required(Col::created_at)?.value() as i64,
                expires_at: required(Col::expires_at)?.value() as i64,
                lease_expires_at: col(Col::lease_expires_at).map(|d| d.value() as i64),
                lease: required(Col::lease)?.value() as i64,
                http_status: col(Col::http_status).map(|d| i32::from(d.value() as i16)),
                response: col(Col::response).map(|d| self.copy_out(d)),
                resource: col(Col::resource).map(|d| self.copy_out(d)),
                recovery_point: col(Col::recovery_point).map(|d| self.copy_out(d)),
                recovery_data: col(Col::recovery_data).map(|d| self.copy_out(d)),
            }))
        }
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

    /// Inserts a new claim; false if a row for the key exists (under REPEATABLE READ and
    /// SERIALIZABLE, a row committed after the snapshot raises a serialization failure here).
    pub fn insert(&self, c: &Claim) -> Result<bool, IdemError> {
        Ok(self.run(self.plans.insert, &claim_args(c), false, 0)? == 1)
    }

    /// Turns the row of an expired record into a new claim; false if there is no such row
    /// (idem_purge deleted it meanwhile).
    pub fn reclaim(&self, c: &Claim) -> Result<bool, IdemError> {
        Ok(self.run(self.plans.reclaim, &claim_args(c), false, 0)? == 1)
    }

    pub fn resume(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        attempt: i32,
        lease_expires_at: Micros,
        lease: Micros,
    ) -> Result<bool, IdemError> {
        let args = [
            Some(scope),
            Some(key),
            Some(attempt.into()),
            Some(lease_expires_at.into()),
            Some(lease.into()),
        ];
        Ok(self.run(self.plans.resume, &args, false, 0)? == 1)
    }

    pub fn finish(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
    ) -> Result<bool, IdemError> {
        let status = Some(pg_sys::Datum::from(o.http_status as i16));
        let n = match o.state {
            State::Completed => self.run(
                self.plans.complete,
                &[Some(scope), Some(key), status, o.response, o.resource],
                false,
                0,
            )?,
            State::Failed { retryable } => self.run(
                self.plans.fail,
                &[
                    Some(scope),
                    Some(key),
                    Some(retryable.into()),
                    status,
                    o.response,
                ],
                false,
                0,
            )?,
            State::InProgress => {
                return Err(IdemError::Internal(
                    "an outcome cannot be in progress".into(),
                ))
            }
        };
        Ok(n == 1)
    }

    /// Completes the key in one statement if its record is live, in progress, owned by
    /// `caller` itself and (given one) at `attempt`; false otherwise, with nothing written.
    pub fn complete_owned(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        o: &Outcome,
        now: Micros,
        caller: pg_sys::Oid,
        attempt: Option<i32>,
    ) -> Result<bool, IdemError> {
        let args = [
            Some(scope),
            Some(key),
            Some(pg_sys::Datum::from(o.http_status as i16)),
            o.response,
            o.resource,
            Some(now.into()),
            Some(pg_sys::Datum::from(caller)),
            attempt.map(pg_sys::Datum::from),
        ];
        Ok(self.run(self.plans.complete_owned, &args, false, 0)? == 1)
    }

    pub fn checkpoint(
        &self,
        scope: pg_sys::Datum,
        key: pg_sys::Datum,
        point: pg_sys::Datum,
        data: Option<pg_sys::Datum>,
        lease_expires_at: Micros,
    ) -> Result<bool, IdemError> {
        let args = [
            Some(scope),
            Some(key),
            Some(point),
            data,
            Some(lease_expires_at.into()),
        ];
        Ok(self.run(self.plans.checkpoint, &args, false, 0)? == 1)
    }

    pub fn forget(&self, scope: pg_sys::Datum, key: pg_sys::Datum) -> Result<bool, IdemError> {
        Ok(self.run(self.plans.forget, &[Some(scope), Some(key)], false, 0)? == 1)
    }

    pub fn purge(&self, now: Micros, max_rows: i32) -> Result<u64, IdemError> {
        self.run(
            self.plans.purge,
            &[Some(now.into()), Some(i64::from(max_rows).into())],
            false,
            0,
        )
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

fn claim_args(c: &Claim) -> [Option<pg_sys::Datum>; 8] {
    [
        Some(c.scope),
        Some(c.key),
        Some(pg_sys::Datum::from(c.owner)),
        (&c.fingerprint[..]).into_datum(),
        Some(c.now.into()),
        Some(c.expires_at.into()),
        Some(c.lease_expires_at.into()),
        Some(c.lease.into()),
    ]
}
