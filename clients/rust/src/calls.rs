//! One typed call per SQL function of the extension.
//!
//! Every call takes a [`ClientWrapper`] (a deadpool-postgres connection, or any
//! `tokio_postgres::Client` wrapped with `ClientWrapper::new`) and uses its statement cache, so
//! that after the first use of a statement on a connection each call is one round trip.
//! [`prepare_statements`] prepares all of them at once (one round trip for all), for a pool's
//! `post_create` hook. The calls are plain futures: several polled together on one connection
//! are pipelined by tokio-postgres (sent back to back, answered in order), which the helpers
//! of this crate use to save round trips.
//!
//! A refusal of a call (`IK001`, `IK002`, `IK003`) comes back with its data empty: a call
//! cannot know whether it ran inside a transaction of the caller's (which the refusal aborted),
//! so it reads nothing more. [`Error::load`] reads it on a usable connection: at once in
//! autocommit, after the caller's `ROLLBACK` otherwise.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{Call, Error};

/// The function names are unqualified: they are found on the connection's `search_path`
/// (the schema the extension was created in, `public` by default).
pub(crate) const SQL_BEGIN: &str = "SELECT outcome, state, attempt, recovery_point, \
     recovery_data, http_status, response, resource, fingerprint, expires_at \
     FROM idem_begin($1, $2, $3, $4::int8 * interval '1 microsecond', \
     $5::int8 * interval '1 microsecond', $6::int8 * interval '1 microsecond')";
pub(crate) const SQL_COMPLETE: &str = "SELECT idem_complete($1, $2, $3, $4, $5, $6)";
pub(crate) const SQL_FAIL: &str = "SELECT idem_fail($1, $2, $3, $4, $5, $6)";
pub(crate) const SQL_CHECKPOINT: &str = "SELECT idem_checkpoint($1, $2, $3, $4, $5)";
pub(crate) const SQL_CHECK: &str = "SELECT state, matches, attempt, recovery_point, \
     http_status, response, resource, created_at, expires_at, lease_expires_at \
     FROM idem_check($1, $2, $3)";
const SQL_FINGERPRINT: &str = "SELECT idem_fingerprint($1)";
const SQL_CANONICAL: &str = "SELECT idem_canonical($1)";
const SQL_PURGE: &str = "SELECT idem_purge($1)";
const SQL_FORGET: &str = "SELECT idem_forget($1, $2)";

const ALL: [&str; 9] = [
    SQL_BEGIN,
    SQL_COMPLETE,
    SQL_FAIL,
    SQL_CHECKPOINT,
    SQL_CHECK,
    SQL_FINGERPRINT,
    SQL_CANONICAL,
    SQL_PURGE,
    SQL_FORGET,
];

/// The drop-in layer's own statement, prepared with the others.
#[cfg(feature = "axum")]
const LAYER: &[&str] = &[crate::layer::stored::SQL_STORE];
#[cfg(not(feature = "axum"))]
const LAYER: &[&str] = &[];

/// `idem_purge`'s own default.
pub const DEFAULT_PURGE_ROWS: i32 = 10_000;

/// Prepares every statement of this crate on `c` (pipelined: one round trip in all), so that
/// no request pays for a prepare later.
pub async fn prepare_statements(c: &ClientWrapper) -> Result<(), Error> {
    let prepared =
        futures_util::future::join_all(ALL.iter().chain(LAYER).map(|sql| c.prepare_cached(sql)))
            .await;
    for p in prepared {
        p.map_err(|e| Error::from_db(e, None))?;
    }
    Ok(())
}

/// `idem_begin`'s outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The caller holds the key and must do the work.
    Execute,
    /// A final outcome is stored: answer with it.
    Replay,
    /// Another request holds the key.
    InProgress,
}

/// A record's state (`absent` only from `idem_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Absent,
    InProgress,
    Completed,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::InProgress => "in_progress",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<State, Error> {
        Ok(match s {
            "absent" => State::Absent,
            "in_progress" => State::InProgress,
            "completed" => State::Completed,
            "failed" => State::Failed,
            other => return Err(unexpected(format!("state {other:?}"))),
        })
    }
}

pub(crate) fn unexpected(what: String) -> Error {
    Error::Invalid {
        sqlstate: "XX000".into(),
        text: crate::error::DbText {
            message: format!("the extension answered an unknown {what}"),
            detail: None,
        },
    }
}

/// The arguments of `idem_begin`. `None` durations take the extension's settings
/// (`idempotency.ttl`, `idempotency.lease`, `idempotency.wait`).
#[derive(Debug, Clone, Copy)]
pub struct BeginRequest<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// The command as a jsonb parameter: a `serde_json::Value`, or (the drop-in layer's)
    /// `Json<Box<RawValue>>` holding JSON text whose numbers are kept exactly.
    pub command: &'a (dyn ToSql + Sync),
    pub ttl: Option<Duration>,
    pub lease: Option<Duration>,
    pub wait: Option<Duration>,
}

impl<'a> BeginRequest<'a> {
    pub fn new(scope: &'a str, key: &'a str, command: &'a Value) -> Self {
        BeginRequest {
            scope,
            key,
            command,
            ttl: None,
            lease: None,
            wait: None,
        }
    }
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }
}

/// `idem_begin`'s row.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    pub outcome: Outcome,
    pub state: State,
    pub attempt: Option<i32>,
    pub recovery_point: Option<String>,
    pub recovery_data: Option<Value>,
    pub http_status: Option<i32>,
    pub response: Option<Value>,
    pub resource: Option<String>,
    pub fingerprint: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Begun {
    fn from_row(r: &Row) -> Result<Begun, Error> {
        let outcome = match r.try_get::<_, &str>(0).map_err(db)? {
            "execute" => Outcome::Execute,
            "replay" => Outcome::Replay,
            "in_progress" => Outcome::InProgress,
            other => return Err(unexpected(format!("outcome {other:?}"))),
        };
        Ok(Begun {
            outcome,
            state: State::parse(r.try_get(1).map_err(db)?)?,
            attempt: r.try_get(2).map_err(db)?,
            recovery_point: r.try_get(3).map_err(db)?,
            recovery_data: r.try_get(4).map_err(db)?,
            http_status: r.try_get(5).map_err(db)?,
            response: r.try_get(6).map_err(db)?,
            resource: r.try_get(7).map_err(db)?,
            fingerprint: r.try_get(8).map_err(db)?,
            expires_at: r.try_get(9).map_err(db)?,
        })
    }

    /// The attempt of an `execute`: the fencing token to pass to complete, fail, checkpoint.
    pub fn fencing_attempt(&self) -> Option<i32> {
        (self.outcome == Outcome::Execute)
            .then_some(self.attempt)
            .flatten()
    }
}

/// `idem_check`'s row.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub state: State,
    pub matches: Option<bool>,
    pub attempt: Option<i32>,
    pub recovery_point: Option<String>,
    pub http_status: Option<i32>,
    pub response: Option<Value>,
    pub resource: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl Checked {
    fn from_row(r: &Row) -> Result<Checked, Error> {
        Ok(Checked {
            state: State::parse(r.try_get(0).map_err(db)?)?,
            matches: r.try_get(1).map_err(db)?,
            attempt: r.try_get(2).map_err(db)?,
            recovery_point: r.try_get(3).map_err(db)?,
            http_status: r.try_get(4).map_err(db)?,
            response: r.try_get(5).map_err(db)?,
            resource: r.try_get(6).map_err(db)?,
            created_at: r.try_get(7).map_err(db)?,
            expires_at: r.try_get(8).map_err(db)?,
            lease_expires_at: r.try_get(9).map_err(db)?,
        })
    }
}

/// What `idem_complete` stores.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub response: Option<Value>,
    pub resource: Option<String>,
    pub http_status: i32,
}

impl Completion {
    /// The recommended form: a reference to the resource, no response body.
    pub fn resource(resource: impl Into<String>, http_status: i32) -> Self {
        Completion {
            response: None,
            resource: Some(resource.into()),
            http_status,
        }
    }
}

/// What `idem_fail` stores.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Replayed as the `response` of a final failure.
    pub error: Option<Value>,
    /// A retryable failure is executed again by the next request (attempt + 1); a final one
    /// replays.
    pub retryable: bool,
    pub http_status: i32,
}

fn db(e: tokio_postgres::Error) -> Error {
    Error::from_db(e, None)
}

fn micros(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `idem_begin(scope, key, command, ttl, lease, wait)`.
pub async fn begin(c: &ClientWrapper, req: &BeginRequest<'_>) -> Result<Begun, Error> {
    let call = Call::key(req.scope, req.key).command(req.command);
    let st = c
        .prepare_cached(SQL_BEGIN)
        .await
        .map_err(|e| Error::from_call(e, &call))?;
    let row = c
        .query_one(
            &st,
            &[
                &req.scope,
                &req.key,
                req.command,
                &micros(req.ttl),
                &micros(req.lease),
                &micros(req.wait),
            ],
        )
        .await
        .map_err(|e| Error::from_call(e, &call))?;
    Begun::from_row(&row)
}

/// `idem_complete(scope, key, response, resource, http_status, attempt)`.
pub async fn complete(
    c: &ClientWrapper,
    scope: &str,
    key: &str,
    completion: &Completion,
    attempt: Option<i32>,
) -> Result<(), Error> {
    let k = &Call::key(scope, key).attempt(attempt);
    let st = c
        .prepare_cached(SQL_COMPLETE)
        .await
        .map_err(|e| Error::from_call(e, k))?;
    c.execute(
        &st,
        &[
            &scope,
            &key,
            &completion.response,
            &completion.resource,
            &completion.http_status,
            &attempt,
        ],
    )
    .await
    .map_err(|e| Error::from_call(e, k))?;
    Ok(())
}

/// `idem_fail(scope, key, error, retryable, http_status, attempt)`.
pub async fn fail(
    c: &ClientWrapper,
    scope: &str,
    key: &str,
    failure: &Failure,
    attempt: Option<i32>,
) -> Result<(), Error> {
    let k = &Call::key(scope, key).attempt(attempt);
    let st = c
        .prepare_cached(SQL_FAIL)
        .await
        .map_err(|e| Error::from_call(e, k))?;
    c.execute(
        &st,
        &[
            &scope,
            &key,
            &failure.error,
            &failure.retryable,
            &failure.http_status,
            &attempt,
        ],
    )
    .await
    .map_err(|e| Error::from_call(e, k))?;
    Ok(())
}

/// `idem_checkpoint(scope, key, recovery_point, data, attempt)`: returns the new lease end.
pub async fn checkpoint(
    c: &ClientWrapper,
    scope: &str,
    key: &str,
    recovery_point: &str,
    data: Option<&Value>,
    attempt: Option<i32>,
) -> Result<DateTime<Utc>, Error> {
    let k = &Call::key(scope, key).attempt(attempt);
    let st = c
        .prepare_cached(SQL_CHECKPOINT)
        .await
        .map_err(|e| Error::from_call(e, k))?;
    let row = c
        .query_one(&st, &[&scope, &key, &recovery_point, &data, &attempt])
        .await
        .map_err(|e| Error::from_call(e, k))?;
    row.try_get(0).map_err(db)
}

/// `idem_check(scope, key, command)`: read-only, works on a hot standby.
pub async fn check(
    c: &ClientWrapper,
    scope: &str,
    key: &str,
    command: Option<&Value>,
) -> Result<Checked, Error> {
    let k = &Call::key(scope, key);
    let st = c
        .prepare_cached(SQL_CHECK)
        .await
        .map_err(|e| Error::from_call(e, k))?;
    let row = c
        .query_one(&st, &[&scope, &key, &command])
        .await
        .map_err(|e| Error::from_call(e, k))?;
    Checked::from_row(&row)
}

/// `idem_fingerprint(command)`: the 32-byte SHA-256 of the canonical command.
pub async fn fingerprint(c: &ClientWrapper, command: &Value) -> Result<Vec<u8>, Error> {
    let st = c.prepare_cached(SQL_FINGERPRINT).await.map_err(db)?;
    c.query_one(&st, &[command])
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)
}

/// `idem_canonical(command)`: the exact text that is hashed.
pub async fn canonical(c: &ClientWrapper, command: &Value) -> Result<String, Error> {
    let st = c.prepare_cached(SQL_CANONICAL).await.map_err(db)?;
    c.query_one(&st, &[command])
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)
}

/// `idem_purge(max_rows)`: deletes up to `max_rows` expired records, returns how many.
pub async fn purge(c: &ClientWrapper, max_rows: i32) -> Result<i64, Error> {
    let st = c.prepare_cached(SQL_PURGE).await.map_err(db)?;
    c.query_one(&st, &[&max_rows])
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)
}

/// `idem_forget(scope, key)`: an operator's eviction of one live key.
pub async fn forget(c: &ClientWrapper, scope: &str, key: &str) -> Result<bool, Error> {
    let k = &Call::key(scope, key);
    let st = c.prepare_cached(SQL_FORGET).await.map_err(db)?;
    c.query_one(&st, &[&scope, &key])
        .await
        .map_err(|e| Error::from_call(e, k))?
        .try_get(0)
        .map_err(db)
}

pub(crate) fn begun_from_row(r: &Row) -> Result<Begun, Error> {
    Begun::from_row(r)
}

pub(crate) fn checked_from_row(r: &Row) -> Result<Checked, Error> {
    Checked::from_row(r)
}
