//! The one-transaction helper: begin, the caller's work, complete or fail, commit, all in one
//! database transaction (the strongest way of use: the claim, the effect and the outcome
//! commit together or not at all).
//!
//! Round trips (pipelined statements travel together and count once):
//!
//! | flow | round trips |
//! |---|---|
//! | new key | 1 (`BEGIN`, `idem_begin`, `SAVEPOINT`) + the work's + 1 (`idem_complete`, `COMMIT`) |
//! | final failure | 1 + the work's + 1 (`ROLLBACK TO SAVEPOINT`, `idem_fail`, `COMMIT`) |
//! | replay | 2 (`BEGIN`, `idem_begin`, `SAVEPOINT`; then `ROLLBACK`) |
//! | in progress | 2 (the first; then `ROLLBACK` with `idem_check` for the lease end) |
//! | `IK001` | 2 (the first; then `ROLLBACK` with the refusal's read, [`Error::load`]) |
//!
//! A refusal (`IK001`, `IK002`, `IK003`) comes back with its data loaded: the helper reads the
//! record once its transaction has ended (after its `ROLLBACK`, pipelined with it, or after the
//! `COMMIT` that a failed completion turned into a rollback). If that read fails, the refusal
//! is returned with its data empty.
//!
//! If the future of [`run`] is dropped half-way (a cancelled request), the connection is taken
//! out of the pool and closed, so the server rolls the transaction back: a connection with an
//! open transaction never goes back to the pool.

use deadpool_postgres::{ClientWrapper, Object, Pool};
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;

use crate::calls::{
    BeginRequest, Begun, Checked, Completion, Failure, Outcome, SQL_BEGIN, SQL_CHECK, SQL_COMPLETE,
    SQL_FAIL,
};
use crate::error::{Call, Error};

const SAVEPOINT: &str = "SAVEPOINT idempotency_work";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT idempotency_work";

/// How the caller's work ends.
#[derive(Debug)]
pub enum Finish<T> {
    /// Store the outcome (`idem_complete`) and commit with the work's writes.
    Complete(Completion, T),
    /// A final or retryable failure: the work's writes roll back to the savepoint taken after
    /// `idem_begin`, `idem_fail` commits.
    Fail(Failure, T),
    /// Nothing is stored: the whole transaction rolls back (for example a 404 for an unknown
    /// parent resource), so a retry starts afresh.
    Rollback(T),
}

/// What [`run`] did.
#[derive(Debug)]
pub enum Ran<T> {
    /// This request executed the work; `value` is what the work returned with its [`Finish`].
    Executed {
        attempt: i32,
        value: T,
        stored: Stored,
    },
    /// A final outcome was stored: replay it (`Idempotent-Replayed: true`).
    Replayed(Begun),
    /// Another transaction holds the key; `Checked` gives the lease end of a committed
    /// (phased) holder, for `Retry-After`.
    InProgress(Begun, Checked),
}

/// Which way the executed work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Completed,
    Failed,
    RolledBack,
}

/// A failure of [`run`]: the extension's or the work's own.
#[derive(Debug)]
pub enum RunError<E> {
    Idem(Error),
    Work(E),
}

impl<E> From<Error> for RunError<E> {
    fn from(e: Error) -> Self {
        RunError::Idem(e)
    }
}

/// A pooled connection with a transaction open on it: dropped while open, the connection is
/// closed instead of going back to the pool.
pub(crate) struct Open {
    conn: Option<Object>,
    open: bool,
}

impl Open {
    pub(crate) fn new(conn: Object) -> Self {
        Open {
            conn: Some(conn),
            open: true,
        }
    }
    pub(crate) fn client(&self) -> &ClientWrapper {
        self.conn.as_ref().expect("connection present until drop")
    }
    pub(crate) fn closed(&mut self) {
        self.open = false;
    }
    /// `ROLLBACK`; a failure closes the connection (it is not put back).
    pub(crate) async fn rollback(&mut self) -> Result<(), Error> {
        self.client()
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::from_db(e, None))?;
        self.closed();
        Ok(())
    }

    /// `ROLLBACK` after the statement that failed with `err`, and for a refusal its read
    /// ([`Error::load`]) pipelined behind it: one flight. `err` is returned whatever happens,
    /// its data loaded if the read succeeded; a failed `ROLLBACK` closes the connection.
    pub(crate) async fn rollback_after(&mut self, mut err: Error) -> Error {
        let c = self.client();
        let (rb, _) = tokio::join!(c.batch_execute("ROLLBACK"), err.load(c));
        if rb.is_ok() {
            self.closed();
        }
        err
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.open {
            if let Some(conn) = self.conn.take() {
                drop(Object::take(conn));
            }
        }
    }
}

/// What [`start`] found: the key to execute with its transaction open, or an answer (the
/// transaction already rolled back).
pub(crate) enum Started {
    Execute(Open, Begun),
    Replayed(Begun),
    InProgress(Begun, Checked),
}

/// Runs `work` exactly once per key: begin (`req`), then, on `execute`, the work in the same
/// transaction, then complete or fail as the work says, and commit. `work` gets the connection
/// (its statements are in the transaction) and `idem_begin`'s row (`attempt`, and the recovery
/// point of an earlier attempt). Write it as `|c, begun| Box::pin(async move { ... })`.
pub async fn run<T, E, F>(
    pool: &Pool,
    req: &BeginRequest<'_>,
    work: F,
) -> Result<Ran<T>, RunError<E>>
where
    F: for<'c> FnOnce(&'c ClientWrapper, &'c Begun) -> BoxFuture<'c, Result<Finish<T>, E>>,
{
    let (mut tx, begun) = match start(pool, req, true).await? {
        Started::Replayed(b) => return Ok(Ran::Replayed(b)),
        Started::InProgress(b, c) => return Ok(Ran::InProgress(b, c)),
        Started::Execute(tx, begun) => (tx, begun),
    };
    let attempt = begun.attempt.unwrap_or(1);
    let finish = match work(tx.client(), &begun).await {
        Ok(f) => f,
        Err(e) => {
            tx.rollback().await?;
            return Err(RunError::Work(e));
        }
    };
    let (value, stored) = finish_tx(&mut tx, req, attempt, finish).await?;
    Ok(Ran::Executed {
        attempt,
        value,
        stored,
    })
}

/// The first flight: `BEGIN`, `idem_begin`, and with `work_savepoint` the `SAVEPOINT` that
/// [`Finish::Fail`] rolls back to (the drop-in layer takes none: a savepoint the work writes
/// under costs a subtransaction); on `replay` the transaction is rolled back, on
/// `in_progress` too, with `idem_check` for the lease end in the same flight.
pub(crate) async fn start(
    pool: &Pool,
    req: &BeginRequest<'_>,
    work_savepoint: bool,
) -> Result<Started, Error> {
    let conn = pool.get().await?;
    let mut tx = Open::new(conn);
    let key = Some((req.scope, req.key));
    let call = Call::key(req.scope, req.key).command(req.command);
    let c = tx.client();
    let begin = c
        .prepare_cached(SQL_BEGIN)
        .await
        .map_err(|e| Error::from_db(e, key))?;
    let micros = |d: Option<std::time::Duration>| d.map(|d| d.as_micros() as i64);
    let (ttl, lease, wait) = (micros(req.ttl), micros(req.lease), micros(req.wait));
    // One flight: BEGIN, idem_begin (, SAVEPOINT).
    let params: [&(dyn ToSql + Sync); 6] = [&req.scope, &req.key, req.command, &ttl, &lease, &wait];
    let savepoint = async {
        if work_savepoint {
            c.batch_execute(SAVEPOINT).await
        } else {
            Ok(())
        }
    };
    let (b, row, sp) = tokio::join!(
        c.batch_execute("BEGIN"),
        c.query_one(&begin, &params),
        savepoint
    );
    b.map_err(|e| Error::from_db(e, key))?;
    let begun = match row {
        Ok(row) => crate::calls::begun_from_row(&row)?,
        Err(e) => return Err(tx.rollback_after(Error::from_call(e, &call)).await),
    };
    sp.map_err(|e| Error::from_db(e, key))?;

    match begun.outcome {
        Outcome::Replay => {
            tx.rollback().await?;
            Ok(Started::Replayed(begun))
        }
        Outcome::InProgress => {
            let check = c
                .prepare_cached(SQL_CHECK)
                .await
                .map_err(|e| Error::from_db(e, key))?;
            let none: Option<&serde_json::Value> = None;
            let params: [&(dyn ToSql + Sync); 3] = [&req.scope, &req.key, &none];
            let (checked, rb) =
                tokio::join!(c.query_one(&check, &params), c.batch_execute("ROLLBACK"));
            rb.map_err(|e| Error::from_db(e, key))?;
            tx.closed();
            let checked =
                crate::calls::checked_from_row(&checked.map_err(|e| Error::from_db(e, key))?)?;
            Ok(Started::InProgress(begun, checked))
        }
        Outcome::Execute => Ok(Started::Execute(tx, begun)),
    }
}

/// The last flight of an executed key: complete or fail as `finish` says, and commit; or roll
/// everything back.
pub(crate) async fn finish_tx<T>(
    tx: &mut Open,
    req: &BeginRequest<'_>,
    attempt: i32,
    finish: Finish<T>,
) -> Result<(T, Stored), Error> {
    let key = Some((req.scope, req.key));
    let call = Call::key(req.scope, req.key).attempt(Some(attempt));
    match finish {
        Finish::Complete(completion, value) => {
            let attempt_param = Some(attempt);
            let params: [&(dyn ToSql + Sync); 6] = [
                &req.scope,
                &req.key,
                &completion.response,
                &completion.resource,
                &completion.http_status,
                &attempt_param,
            ];
            execute_and_commit(tx, SQL_COMPLETE, &params, &call).await?;
            Ok((value, Stored::Completed))
        }
        Finish::Fail(failure, value) => {
            let c = tx.client();
            let st = c
                .prepare_cached(SQL_FAIL)
                .await
                .map_err(|e| Error::from_db(e, key))?;
            let attempt_param = Some(attempt);
            let params: [&(dyn ToSql + Sync); 6] = [
                &req.scope,
                &req.key,
                &failure.error,
                &failure.retryable,
                &failure.http_status,
                &attempt_param,
            ];
            let (rb, done, commit) = tokio::join!(
                c.batch_execute(ROLLBACK_TO_SAVEPOINT),
                c.execute(&st, &params),
                c.batch_execute("COMMIT")
            );
            if let Err(e) = rb {
                // The COMMIT after it rolled everything back; report the first cause.
                finish_commit(tx, Ok(0), commit, &call).await?;
                return Err(Error::from_db(e, key));
            }
            finish_commit(tx, done, commit, &call).await?;
            Ok((value, Stored::Failed))
        }
        Finish::Rollback(value) => {
            tx.rollback().await?;
            Ok((value, Stored::RolledBack))
        }
    }
}

#[cfg(feature = "axum")]
/// [`start`], waiting as a `Prefer: wait` asks: the holder's transaction inside the server,
/// a committed holder polled (see [`crate::phased::claim_waiting`]); `None`: no waiting.
pub(crate) async fn start_waiting(
    pool: &Pool,
    req: &BeginRequest<'_>,
    wait: Option<std::time::Duration>,
) -> Result<Started, Error> {
    let Some(wait) = wait else {
        return start(pool, req, false).await;
    };
    let mut poll = crate::phased::Polling::new(wait);
    loop {
        match start(pool, &req.wait(poll.server_slice()), false).await? {
            Started::InProgress(..) if !poll.remaining().is_zero() => poll.back_off().await,
            other => return Ok(other),
        }
    }
}

#[cfg(feature = "axum")]
/// The drop-in layer's store in transaction mode: [`crate::layer::stored::SQL_STORE`] (the
/// document, or its omitted form when the server finds it over
/// `idempotency.max_response_size`) and `COMMIT`, pipelined in one flight, with no savepoint.
/// If `idem_complete` fails (`IK002`: the key's ttl ran out during the transaction; or any
/// other error), the `COMMIT` ends the transaction as a rollback: nothing of it happened, the
/// work's writes included, and the error is returned.
pub(crate) async fn store_and_commit(
    tx: &mut Open,
    req: &BeginRequest<'_>,
    attempt: i32,
    stored: &crate::layer::stored::StoredResponse,
    http_status: i32,
) -> Result<(), Error> {
    let call = Call::key(req.scope, req.key).attempt(Some(attempt));
    let (doc, omitted) = (stored.encode(), stored.omitted().encode());
    let attempt_param = Some(attempt);
    let params: [&(dyn ToSql + Sync); 6] = [
        &req.scope,
        &req.key,
        &doc,
        &omitted,
        &http_status,
        &attempt_param,
    ];
    execute_and_commit(tx, crate::layer::stored::SQL_STORE, &params, &call).await
}

#[cfg(feature = "axum")]
/// Fails the key with `failure` and commits the work's writes with it (no rollback to the
/// savepoint): for work whose effects stand while its outcome is not stored.
pub(crate) async fn fail_keeping_work(
    tx: &mut Open,
    req: &BeginRequest<'_>,
    attempt: i32,
    failure: &Failure,
) -> Result<(), Error> {
    let call = Call::key(req.scope, req.key).attempt(Some(attempt));
    let attempt_param = Some(attempt);
    let params: [&(dyn ToSql + Sync); 6] = [
        &req.scope,
        &req.key,
        &failure.error,
        &failure.retryable,
        &failure.http_status,
        &attempt_param,
    ];
    execute_and_commit(tx, SQL_FAIL, &params, &call).await
}

/// `sql` with `params` and `COMMIT`, pipelined in one flight; the statement is prepared before
/// the flight, so that it goes out before the COMMIT ([`finish_commit`] reads the results).
async fn execute_and_commit(
    tx: &mut Open,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    call: &Call<'_>,
) -> Result<(), Error> {
    let c = tx.client();
    let st = c
        .prepare_cached(sql)
        .await
        .map_err(|e| Error::from_call(e, call))?;
    let (done, commit) = tokio::join!(c.execute(&st, params), c.batch_execute("COMMIT"));
    finish_commit(tx, done, commit, call).await
}

/// The results of a pipelined `idem_complete`/`idem_fail` and `COMMIT`. PostgreSQL turns a
/// COMMIT after a failed statement into a rollback, so the transaction is closed either way
/// (and a refusal's record is read then, [`Error::load`]); a failed COMMIT closes it too.
pub(crate) async fn finish_commit(
    tx: &mut Open,
    done: Result<u64, tokio_postgres::Error>,
    commit: Result<(), tokio_postgres::Error>,
    call: &Call<'_>,
) -> Result<(), Error> {
    match (done, commit) {
        (Ok(_), Ok(())) => {
            tx.closed();
            Ok(())
        }
        (Err(e), Ok(())) => {
            tx.closed();
            Err(Error::from_call(e, call).loaded(tx.client()).await)
        }
        // A connection whose COMMIT failed is not trusted again: it is dropped (tx stays open).
        (_, Err(e)) => Err(Error::from_call(e, call)),
    }
}
