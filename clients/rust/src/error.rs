//! Errors by SQLSTATE, never by message text.
//!
//! The extension raises its own codes (`IK001`..`IK003`) and a few standard ones; each becomes
//! one variant here, chosen by the code alone. No message, DETAIL or HINT is read: what a
//! caller needs after a refusal (when the key was first used, the fingerprints, what the record
//! is now) is data, read from the record by one statement after the refusal ([`SQL_REFUSAL`],
//! [`Error::load`]). The helpers ([`crate::one_tx`], [`crate::phased`], the drop-in layer) run
//! it themselves once their transaction has ended; a plain call of [`crate::calls`] cannot know
//! whether it ran inside a transaction of the caller's, so its error comes with the data empty,
//! and the caller loads it with [`Error::load`] on a usable connection (at once in autocommit,
//! after its own `ROLLBACK` otherwise).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::calls::State;

/// Everything a call of this crate can fail with.
#[derive(Debug)]
pub enum Error {
    /// `IK001`: the key was already used with a different command. Answer 422.
    KeyReused(Box<KeyReused>),
    /// `IK002`: complete, fail or checkpoint on a key that is not in progress (absent, expired,
    /// completed, failed): the caller's own sequence is wrong, or an operator forgot the key.
    NotInProgress(Box<NotInProgress>),
    /// `IK003`: the lease was lost: another request took the key over. The caller must not
    /// report its own outcome.
    LeaseLost(Box<LeaseLost>),
    /// `42501`: the record belongs to a role the caller is not a member of.
    NotOwner(DbText),
    /// `22023` or `22004`: an argument is out of its domain or NULL (a key over 255 bytes, a
    /// command over its size limit, ...).
    Invalid { sqlstate: String, text: DbText },
    /// `40001`: under REPEATABLE READ or SERIALIZABLE the snapshot could not see a concurrent
    /// request's write: retry the whole transaction ([`retry_serialization`]).
    Serialization(DbText),
    /// `25006`: a writing function on a hot standby or in a read-only transaction.
    ReadOnly(DbText),
    /// Any other database or connection error.
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(deadpool_postgres::PoolError),
}

/// The message and DETAIL of a database error as the server sent them, kept for logs and
/// never read by this crate (their wording is not an API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbText {
    pub message: String,
    pub detail: Option<String>,
}

/// The read that gives a refusal its data: `idem_check`'s row (every column by name: a 0.4.0
/// server adds `fingerprint`, the stored command's), the first use as epoch microseconds (an
/// integer: no timestamp is formatted or parsed as text, whatever the session's `DateStyle`
/// and `TimeZone`) and the fingerprint of the command the refused call gave (`$3`, NULL for
/// `IK002`/`IK003`). One statement, one round trip (sent with its parameter types, unprepared).
pub const SQL_REFUSAL: &str = "SELECT c.*, \
     (extract(epoch FROM c.created_at) * 1000000)::bigint AS first_used_us, \
     idem_fingerprint($3::jsonb) AS given_fingerprint FROM idem_check($1, $2) AS c";

/// `IK001`. `scope` and `key` are the call's; the other fields are read after the refusal
/// (see [`Error::load`]) and are `None` until then (`loaded` says whether the read ran). They
/// are the record as read right after the refusal: a record that expired or was purged in
/// between reads as absent (`first_used_at` and `stored_fingerprint` stay `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReused {
    pub scope: String,
    pub key: String,
    /// When the key was first used: the record's `created_at`, exact to the microsecond, UTC.
    pub first_used_at: Option<DateTime<Utc>>,
    /// The stored command's fingerprint (32 bytes), from `idem_check`'s `fingerprint` column;
    /// always `None` on a server before 0.4.0, which does not return it.
    pub stored_fingerprint: Option<Vec<u8>>,
    /// The fingerprint (32 bytes) of the command this call gave, `idem_fingerprint(command)`.
    pub given_fingerprint: Option<Vec<u8>>,
    /// The read ran (successfully).
    pub loaded: bool,
    /// The server's words, for logs only.
    pub text: DbText,
    /// The command the call gave, as JSON text (for the read's `idem_fingerprint`).
    pub(crate) command: Option<String>,
}

/// `IK002`. `found` is the record's `state` as read right after the refusal ([`Error::load`]):
/// `Absent` (no record, or expired), `Completed`, `Failed`, or `InProgress` if it changed in
/// between; `None` until the read ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotInProgress {
    pub scope: String,
    pub key: String,
    pub found: Option<State>,
    /// The server's words, for logs only.
    pub text: DbText,
}

/// `IK003`. `given_attempt` is the attempt the refused call gave (known without a read);
/// `current_attempt` the record's `attempt` as read right after the refusal ([`Error::load`]):
/// the holder that took over; `None` until the read ran, or when the record was gone by then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost {
    pub scope: String,
    pub key: String,
    pub current_attempt: Option<i32>,
    pub given_attempt: Option<i32>,
    /// The read ran (successfully).
    pub loaded: bool,
    /// The server's words, for logs only.
    pub text: DbText,
}

impl KeyReused {
    /// The stored fingerprint as 64 hex digits.
    pub fn stored_fingerprint_hex(&self) -> Option<String> {
        self.stored_fingerprint.as_deref().map(hex)
    }
    /// The given fingerprint as 64 hex digits.
    pub fn given_fingerprint_hex(&self) -> Option<String> {
        self.given_fingerprint.as_deref().map(hex)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text_of(db: &tokio_postgres::error::DbError) -> DbText {
    DbText {
        message: db.message().to_owned(),
        detail: db.detail().map(str::to_owned),
    }
}

/// What a refused call knew, for its error's data: the key, the command (`idem_begin`) and the
/// attempt it gave (`idem_complete`, `idem_fail`, `idem_checkpoint`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Call<'a> {
    pub(crate) scope: &'a str,
    pub(crate) key: &'a str,
    pub(crate) command: Option<&'a (dyn ToSql + Sync)>,
    pub(crate) attempt: Option<i32>,
}

impl<'a> Call<'a> {
    pub(crate) fn key(scope: &'a str, key: &'a str) -> Self {
        Call {
            scope,
            key,
            ..Call::default()
        }
    }
    pub(crate) fn attempt(mut self, attempt: Option<i32>) -> Self {
        self.attempt = attempt;
        self
    }
    pub(crate) fn command(mut self, command: &'a (dyn ToSql + Sync)) -> Self {
        self.command = Some(command);
        self
    }
}

/// The command as JSON text: its jsonb parameter encoding (version byte 1, then the text).
fn command_text(command: &(dyn ToSql + Sync)) -> Option<String> {
    let mut buf = Default::default();
    match command.to_sql_checked(&Type::JSONB, &mut buf) {
        Ok(tokio_postgres::types::IsNull::No) => {}
        _ => return None,
    }
    let bytes: &[u8] = &buf;
    match bytes.split_first() {
        Some((1, text)) => String::from_utf8(text.to_vec()).ok(),
        _ => None,
    }
}

impl Error {
    /// Classifies a driver error by its SQLSTATE. `key` is the call's scope and key, kept in
    /// the refusals' data (and needed by [`Error::load`]).
    pub fn from_db(e: tokio_postgres::Error, key: Option<(&str, &str)>) -> Error {
        let call = key.map_or_else(Call::default, |(s, k)| Call::key(s, k));
        Error::from_call(e, &call)
    }

    pub(crate) fn from_call(e: tokio_postgres::Error, call: &Call<'_>) -> Error {
        let Some(db) = e.as_db_error() else {
            return Error::Db(e);
        };
        let (scope, key) = (call.scope.to_owned(), call.key.to_owned());
        match db.code().code() {
            "IK001" => Error::KeyReused(Box::new(KeyReused {
                scope,
                key,
                first_used_at: None,
                stored_fingerprint: None,
                given_fingerprint: None,
                loaded: false,
                text: text_of(db),
                command: call.command.and_then(command_text),
            })),
            "IK002" => Error::NotInProgress(Box::new(NotInProgress {
                scope,
                key,
                found: None,
                text: text_of(db),
            })),
            "IK003" => Error::LeaseLost(Box::new(LeaseLost {
                scope,
                key,
                current_attempt: None,
                given_attempt: call.attempt,
                loaded: false,
                text: text_of(db),
            })),
            "42501" => Error::NotOwner(text_of(db)),
            "22023" | "22004" => Error::Invalid {
                sqlstate: db.code().code().to_owned(),
                text: text_of(db),
            },
            "40001" => Error::Serialization(text_of(db)),
            "25006" => Error::ReadOnly(text_of(db)),
            _ => Error::Db(e),
        }
    }

    /// The scope, key and command text of a refusal whose data can be read: `IK001`, `IK002`,
    /// `IK003` with the call's key known.
    fn refusal(&self) -> Option<(&str, &str, Option<&str>)> {
        let (scope, key, command) = match self {
            Error::KeyReused(r) => (&r.scope, &r.key, r.command.as_deref()),
            Error::NotInProgress(n) => (&n.scope, &n.key, None),
            Error::LeaseLost(l) => (&l.scope, &l.key, None),
            _ => return None,
        };
        (!key.is_empty()).then_some((scope.as_str(), key.as_str(), command))
    }

    /// True for a refusal (`IK001`, `IK002`, `IK003`) whose data [`Error::load`] can read.
    pub fn has_record_to_load(&self) -> bool {
        self.refusal().is_some()
    }

    /// Reads the record of a refusal ([`SQL_REFUSAL`], one round trip) and fills the error's
    /// data: `IK001` `first_used_at`, both fingerprints; `IK002` `found`; `IK003`
    /// `current_attempt`. Any other error, or a refusal whose key the call did not give
    /// ([`Error::from_db`] with `None`), is left as it is, with no round trip.
    ///
    /// Call it on a connection that can run a statement: in autocommit at once, inside a
    /// transaction of yours only after your `ROLLBACK` (a refusal aborts the transaction). The
    /// data is the record as read then: it may have changed since the refusal (expired,
    /// purged, completed). The helpers of this crate call it themselves. If the read fails, its
    /// error is returned and `self` keeps the refusal, with its data empty.
    pub async fn load(&mut self, c: &tokio_postgres::Client) -> Result<(), Error> {
        let Some((scope, key, command)) = self.refusal() else {
            return Ok(());
        };
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&scope, Type::TEXT),
            (&key, Type::TEXT),
            (&command, Type::TEXT),
        ];
        let rows = c
            .query_typed(SQL_REFUSAL, &params)
            .await
            .map_err(|e| Error::from_db(e, None))?;
        let row = rows.first().ok_or_else(|| {
            crate::calls::unexpected("answer: idem_check returned no row".to_owned())
        })?;
        self.fill(row)
    }

    /// [`Error::load`], its own failure dropped: the refusal stays, its data empty.
    pub(crate) async fn loaded(mut self, c: &tokio_postgres::Client) -> Error {
        let _ = self.load(c).await;
        self
    }
}

/// `r`, a refusal's data loaded on `c` (which must be outside any transaction): for the
/// helpers' calls on connections of their own in autocommit.
pub(crate) async fn with_record<T>(
    r: Result<T, Error>,
    c: &tokio_postgres::Client,
) -> Result<T, Error> {
    match r {
        Err(e) if e.has_record_to_load() => Err(e.loaded(c).await),
        other => other,
    }
}

impl Error {
    fn fill(&mut self, row: &Row) -> Result<(), Error> {
        let db = |e| Error::from_db(e, None);
        let state = State::parse(row.try_get("state").map_err(db)?)?;
        let attempt: Option<i32> = row.try_get("attempt").map_err(db)?;
        match self {
            Error::KeyReused(r) => {
                let us: Option<i64> = row.try_get("first_used_us").map_err(db)?;
                // A 0.4.0 server's idem_check has the stored fingerprint; 0.3.0's does not.
                let stored = match row.columns().iter().any(|c| c.name() == "fingerprint") {
                    true => row.try_get("fingerprint").map_err(db)?,
                    false => None,
                };
                let given = row.try_get("given_fingerprint").map_err(db)?;
                r.first_used_at = us.and_then(DateTime::from_timestamp_micros);
                r.stored_fingerprint = stored;
                r.given_fingerprint = given;
                r.loaded = true;
            }
            Error::NotInProgress(n) => n.found = Some(state),
            Error::LeaseLost(l) => {
                l.current_attempt = attempt;
                l.loaded = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// The SQLSTATE behind this error, if it came from the database.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::KeyReused(_) => Some("IK001"),
            Error::NotInProgress(_) => Some("IK002"),
            Error::LeaseLost(_) => Some("IK003"),
            Error::NotOwner(_) => Some("42501"),
            Error::Invalid { sqlstate, .. } => Some(sqlstate),
            Error::Serialization(_) => Some("40001"),
            Error::ReadOnly(_) => Some("25006"),
            Error::Db(e) => e.code().map(SqlState::code),
            Error::Pool(_) => None,
        }
    }

    /// True for `40001` (and for a deadlock, `40P01`, which the same retry resolves).
    pub fn is_retryable_transaction(&self) -> bool {
        matches!(self, Error::Serialization(_))
            || matches!(self, Error::Db(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KeyReused(r) => write!(
                f,
                "IK001: idempotency key {:?} was already used with a different command",
                r.key
            ),
            Error::NotInProgress(n) => {
                write!(f, "IK002: idempotency key {:?} is not in progress", n.key)?;
                match n.found {
                    Some(s) => write!(f, " (found {})", s.as_str()),
                    None => Ok(()),
                }
            }
            Error::LeaseLost(l) => {
                write!(
                    f,
                    "IK003: the lease on idempotency key {:?} was lost",
                    l.key
                )?;
                match (l.current_attempt, l.given_attempt) {
                    (Some(c), Some(g)) => {
                        write!(f, " (the record is at attempt {c}, this call gave {g})")
                    }
                    (None, Some(g)) => write!(f, " (this call gave attempt {g})"),
                    _ => Ok(()),
                }
            }
            Error::NotOwner(t) => write!(f, "42501: {}", t.message),
            Error::Invalid { sqlstate, text } => write!(f, "{sqlstate}: {}", text.message),
            Error::Serialization(t) => write!(f, "40001: {}", t.message),
            Error::ReadOnly(t) => write!(f, "25006: {}", t.message),
            Error::Db(e) => write!(f, "database error: {e}"),
            Error::Pool(e) => write!(f, "connection pool: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db(e) => Some(e),
            Error::Pool(e) => Some(e),
            _ => None,
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::from_db(e, None),
            e => Error::Pool(e),
        }
    }
}

/// Runs `transaction` again while it fails with `40001` (or `40P01`), up to `attempts` times in
/// all, sleeping 10, 20, 40, ... ms (at most 500 ms) in between. `transaction` must be the
/// whole transaction: a serialization failure aborts it, so no part of it can be kept.
pub async fn retry_serialization<T, F, Fut>(attempts: u32, mut transaction: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match transaction().await {
            Err(e) if e.is_retryable_transaction() && n < attempts.max(1) => {
                let ms = (10u64 << (n - 1).min(6)).min(500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_is_kept_as_its_json_text() {
        let v = json!({"amount": "10.00"});
        assert_eq!(command_text(&v).as_deref(), Some(r#"{"amount":"10.00"}"#));
        let none: Option<serde_json::Value> = None;
        assert_eq!(command_text(&none), None);
    }

    #[test]
    fn a_refusal_without_its_key_has_nothing_to_load() {
        let e = Error::NotInProgress(Box::new(NotInProgress {
            scope: String::new(),
            key: String::new(),
            found: None,
            text: DbText::default(),
        }));
        assert!(!e.has_record_to_load());
        assert!(!Error::ReadOnly(DbText::default()).has_record_to_load());
        let e = Error::LeaseLost(Box::new(LeaseLost {
            scope: "s".into(),
            key: "k".into(),
            current_attempt: None,
            given_attempt: Some(1),
            loaded: false,
            text: DbText::default(),
        }));
        assert!(e.has_record_to_load());
        assert_eq!(
            e.to_string(),
            "IK003: the lease on idempotency key \"k\" was lost (this call gave attempt 1)"
        );
    }

    #[test]
    fn fingerprints_in_hex() {
        let r = KeyReused {
            scope: "s".into(),
            key: "k".into(),
            first_used_at: None,
            stored_fingerprint: Some(vec![0xab; 32]),
            given_fingerprint: None,
            loaded: true,
            text: DbText::default(),
            command: None,
        };
        assert_eq!(r.stored_fingerprint_hex().unwrap(), "ab".repeat(32));
        assert_eq!(r.given_fingerprint_hex(), None);
    }
}
