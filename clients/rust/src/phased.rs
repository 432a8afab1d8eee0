//! The phased helper, for work outside the database (a card processor): the claim commits at
//! once and holds a lease; the holder does the outside work, records checkpoints, and completes
//! or fails in later transactions, each fenced by its `attempt`. If the holder dies, the lease
//! runs out and the next request for the key takes over (attempt + 1) with the last recovery
//! point; the dead holder's late calls get `IK003` ([`Error::LeaseLost`]).
//!
//! Round trips: [`claim`] 1 (2 when the key is in progress: `idem_check` reads the lease end
//! for `Retry-After`; 2 for `IK001`: the refusal's read); [`Phased::checkpoint`],
//! [`Phased::fail`], [`Phased::complete`] 1 each; [`Phased::finish_with`] 1 for the business
//! statement, `idem_complete` and `COMMIT` together.
//! Each step takes a connection from the pool and gives it back, so nothing is held while the
//! outside work runs.
//!
//! A refusal (`IK001` at the claim, `IK002` or `IK003` later) comes back with its data loaded
//! ([`Error::load`], one more round trip, on the step's own connection once its transaction,
//! if any, has ended); if that read fails, the refusal is returned with its data empty.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Pool};
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::calls::{
    self, BeginRequest, Begun, Checked, Completion, Failure, Outcome, SQL_COMPLETE,
};
use crate::error::{with_record, Call, Error};
use crate::one_tx::{finish_commit, Finish, Open, Stored};

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// This request holds the key (its claim is committed, under a lease).
    Execute(Phased),
    /// A final outcome is stored.
    Replay(Begun),
    /// Another request holds the key; `Checked::lease_expires_at` says until when.
    InProgress(Begun, Checked),
}

/// The holder of a phased claim.
#[derive(Debug)]
pub struct Phased {
    pool: Pool,
    scope: String,
    key: String,
    begun: Begun,
    attempt: i32,
}

/// How long one poll of [`claim_waiting`] lets `idem_begin` wait inside the server for an
/// uncommitted holder before it answers.
const SERVER_WAIT_SLICE: Duration = Duration::from_secs(1);

/// Claims the key with `req` (give it a `lease`), committed at once.
pub async fn claim(pool: &Pool, req: &BeginRequest<'_>) -> Result<Claim, Error> {
    let c = pool.get().await?;
    let begun = with_record(calls::begin(&c, req).await, &c).await?;
    classify(pool, &c, req, begun).await
}

/// Like [`claim`], but while another request holds the key, polls until it finishes or `wait`
/// has passed: each poll is an `idem_begin` that may itself wait inside the server (up to 1 s)
/// for an uncommitted holder's transaction; a committed claim under a lease is polled again
/// after a back-off of 25 ms doubling to 500 ms, with no connection held in between. A poll
/// that finds the lease run out takes the key over (attempt + 1), as any request would.
pub async fn claim_waiting(
    pool: &Pool,
    req: &BeginRequest<'_>,
    wait: Duration,
) -> Result<Claim, Error> {
    let mut poll = Polling::new(wait);
    loop {
        let c = pool.get().await?;
        let begun = with_record(calls::begin(&c, &req.wait(poll.server_slice())).await, &c).await?;
        if begun.outcome != Outcome::InProgress || poll.remaining().is_zero() {
            return classify(pool, &c, req, begun).await;
        }
        drop(c);
        poll.back_off().await;
    }
}

/// The waiting of a `Prefer: wait`: each poll lets `idem_begin` wait inside the server for an
/// uncommitted holder (at most 1 s, at most the time left), and a holder still there after it
/// (a committed claim under a lease) is polled again after 25 ms doubling to 500 ms, never
/// past the deadline.
pub(crate) struct Polling {
    deadline: Instant,
    backoff: Duration,
}

impl Polling {
    pub(crate) fn new(wait: Duration) -> Self {
        Polling {
            deadline: Instant::now() + wait,
            backoff: Duration::from_millis(25),
        }
    }
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
    /// The `wait` to give the next `idem_begin`.
    pub(crate) fn server_slice(&self) -> Duration {
        self.remaining().min(SERVER_WAIT_SLICE)
    }
    pub(crate) async fn back_off(&mut self) {
        tokio::time::sleep(self.backoff.min(self.remaining())).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(500));
    }
}

async fn classify(
    pool: &Pool,
    c: &ClientWrapper,
    req: &BeginRequest<'_>,
    begun: Begun,
) -> Result<Claim, Error> {
    Ok(match begun.outcome {
        Outcome::Execute => Claim::Execute(Phased {
            pool: pool.clone(),
            scope: req.scope.to_owned(),
            key: req.key.to_owned(),
            attempt: begun.attempt.unwrap_or(1),
            begun,
        }),
        Outcome::Replay => Claim::Replay(begun),
        Outcome::InProgress => {
            let checked = calls::check(c, req.scope, req.key, None).await?;
            Claim::InProgress(begun, checked)
        }
    })
}

impl Phased {
    /// The fencing token of this holder.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }
    /// The last checkpoint of an earlier attempt (a takeover resumes from it).
    pub fn recovery_point(&self) -> Option<&str> {
        self.begun.recovery_point.as_deref()
    }
    pub fn recovery_data(&self) -> Option<&Value> {
        self.begun.recovery_data.as_ref()
    }
    pub fn begun(&self) -> &Begun {
        &self.begun
    }
    pub fn scope(&self) -> &str {
        &self.scope
    }
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Records a recovery point (committed) and renews the lease; returns the new lease end.
    pub async fn checkpoint(
        &mut self,
        point: &str,
        data: Option<&Value>,
    ) -> Result<DateTime<Utc>, Error> {
        let c = self.pool.get().await?;
        let end = calls::checkpoint(&c, &self.scope, &self.key, point, data, Some(self.attempt));
        let end = with_record(end.await, &c).await?;
        self.begun.recovery_point = Some(point.to_owned());
        self.begun.recovery_data = data.cloned();
        Ok(end)
    }

    /// Stores a failure (committed), fenced by this holder's attempt.
    pub async fn fail(self, failure: &Failure) -> Result<(), Error> {
        let c = self.pool.get().await?;
        let done = calls::fail(&c, &self.scope, &self.key, failure, Some(self.attempt)).await;
        with_record(done, &c).await
    }

    /// Stores the outcome (committed) without any business write in the same transaction.
    pub async fn complete(&self, completion: &Completion) -> Result<(), Error> {
        let c = self.pool.get().await?;
        let done = calls::complete(&c, &self.scope, &self.key, completion, Some(self.attempt));
        with_record(done.await, &c).await
    }

    #[cfg(feature = "axum")]
    /// The drop-in layer's store of a route's response, committed, fenced by this attempt:
    /// [`crate::layer::stored::SQL_STORE`] (the document, or its omitted form when the server
    /// finds it over `idempotency.max_response_size`, in one statement).
    pub(crate) async fn store(
        &self,
        stored: &crate::layer::stored::StoredResponse,
        http_status: i32,
    ) -> Result<(), Error> {
        let c = self.pool.get().await?;
        let call = self.call();
        let st = c
            .prepare_cached(crate::layer::stored::SQL_STORE)
            .await
            .map_err(|e| Error::from_call(e, &call))?;
        let (doc, omitted) = (stored.encode(), stored.omitted().encode());
        let done = c
            .execute(
                &st,
                &[
                    &self.scope,
                    &self.key,
                    &doc,
                    &omitted,
                    &http_status,
                    &self.attempt,
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| Error::from_call(e, &call));
        with_record(done, &c).await
    }

    /// What a refusal of this holder's calls carries: the key and the attempt.
    fn call(&self) -> Call<'_> {
        Call::key(&self.scope, &self.key).attempt(Some(self.attempt))
    }

    /// The last phase in one round trip: `BEGIN`, the business `statement` (its rows are
    /// returned), `idem_complete` fenced by this attempt, and `COMMIT`, pipelined. If the
    /// statement fails, the completion and the commit roll back with it. `before_commit` runs
    /// after the first three answered and before `COMMIT` is sent; when it is `Some`, the
    /// `COMMIT` is a second round trip (fault injection uses it to die at that point).
    pub async fn finish_with(
        self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        completion: &Completion,
        before_commit: Option<&(dyn Fn() + Sync)>,
    ) -> Result<Vec<Row>, Error> {
        let key = Some((self.scope.as_str(), self.key.as_str()));
        let call = self.call();
        let mut tx = Open::new(self.pool.get().await?);
        let c = tx.client();
        let st = c
            .prepare_cached(statement)
            .await
            .map_err(|e| Error::from_db(e, key))?;
        let done_st = c
            .prepare_cached(SQL_COMPLETE)
            .await
            .map_err(|e| Error::from_db(e, key))?;
        let attempt_param = Some(self.attempt);
        let complete_params: [&(dyn ToSql + Sync); 6] = [
            &self.scope,
            &self.key,
            &completion.response,
            &completion.resource,
            &completion.http_status,
            &attempt_param,
        ];
        let (rows, done, commit) = match before_commit {
            None => {
                let (b, rows, done, commit) = tokio::join!(
                    c.batch_execute("BEGIN"),
                    c.query(&st, params),
                    c.execute(&done_st, &complete_params),
                    c.batch_execute("COMMIT")
                );
                b.map_err(|e| Error::from_db(e, key))?;
                (rows, done, commit)
            }
            Some(hook) => {
                let (b, rows, done) = tokio::join!(
                    c.batch_execute("BEGIN"),
                    c.query(&st, params),
                    c.execute(&done_st, &complete_params)
                );
                b.map_err(|e| Error::from_db(e, key))?;
                hook();
                let commit = c.batch_execute("COMMIT").await;
                (rows, done, commit)
            }
        };
        match rows {
            Ok(rows) => {
                finish_commit(&mut tx, done, commit, &call).await?;
                Ok(rows)
            }
            Err(e) => {
                finish_commit(&mut tx, Ok(0), commit, &call).await?;
                Err(Error::from_db(e, key))
            }
        }
    }

    /// The last phase with any work: `BEGIN`, the caller's work in the transaction, then the
    /// completion or failure it returns (fenced by this attempt) and `COMMIT` pipelined.
    /// Round trips: 1 + the work's + 1.
    pub async fn finish<T, E, F>(self, work: F) -> Result<(T, Stored), crate::one_tx::RunError<E>>
    where
        F: for<'c> FnOnce(&'c ClientWrapper) -> BoxFuture<'c, Result<Finish<T>, E>>,
    {
        let key = Some((self.scope.as_str(), self.key.as_str()));
        let call = self.call();
        let mut tx = Open::new(self.pool.get().await.map_err(Error::from)?);
        let c = tx.client();
        c.batch_execute("BEGIN")
            .await
            .map_err(|e| Error::from_db(e, key))?;
        let finish = match work(c).await {
            Ok(f) => f,
            Err(e) => {
                tx.rollback().await?;
                return Err(crate::one_tx::RunError::Work(e));
            }
        };
        let c = tx.client();
        match finish {
            Finish::Complete(completion, value) => {
                let st = c
                    .prepare_cached(SQL_COMPLETE)
                    .await
                    .map_err(|e| Error::from_db(e, key))?;
                let attempt_param = Some(self.attempt);
                let params: [&(dyn ToSql + Sync); 6] = [
                    &self.scope,
                    &self.key,
                    &completion.response,
                    &completion.resource,
                    &completion.http_status,
                    &attempt_param,
                ];
                let (done, commit) =
                    tokio::join!(c.execute(&st, &params), c.batch_execute("COMMIT"));
                finish_commit(&mut tx, done, commit, &call).await?;
                Ok((value, Stored::Completed))
            }
            Finish::Fail(failure, value) => {
                // No savepoint here: the work's writes are dropped by rolling back, and the
                // failure is stored in its own transaction.
                tx.rollback().await?;
                let c = self.pool.get().await.map_err(Error::from)?;
                let done = calls::fail(&c, &self.scope, &self.key, &failure, Some(self.attempt));
                with_record(done.await, &c).await?;
                Ok((value, Stored::Failed))
            }
            Finish::Rollback(value) => {
                tx.rollback().await?;
                Ok((value, Stored::RolledBack))
            }
        }
    }
}
