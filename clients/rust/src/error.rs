//! Errors by SQLSTATE, never by message text.
//!
//! The extension raises its own codes (`IK001`..`IK003`) and a few standard ones; each becomes
//! one variant here. The only text read is the DETAIL of `IK001` and `IK003`, whose layout the
//! extension fixes, and only to carry its fields (when the key was first used, the attempts):
//! the variant itself is chosen by the code alone.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use tokio_postgres::error::SqlState;

/// Everything a call of this crate can fail with.
#[derive(Debug)]
pub enum Error {
    /// `IK001`: the key was already used with a different command. Answer 422.
    KeyReused(Box<KeyReused>),
    /// `IK002`: complete, fail or checkpoint on a key that is not in progress (absent, expired,
    /// completed, failed): the caller's own sequence is wrong, or an operator forgot the key.
    NotInProgress(DbText),
    /// `IK003`: the lease was lost: another request took the key over. The caller must not
    /// report its own outcome.
    LeaseLost(LeaseLost),
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

/// The message and DETAIL of a database error, for logs (never for branching).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbText {
    pub message: String,
    pub detail: Option<String>,
}

/// The fields of `IK001`'s DETAIL:
/// `Scope "S", key "K" was first used at T with command fingerprint H; this request's
/// fingerprint is G.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReused {
    pub scope: String,
    pub key: String,
    /// When the key was first used, as the session printed it (DateStyle, TimeZone).
    pub first_used: String,
    /// The same, parsed, when the session's DateStyle is ISO (the default).
    pub first_used_at: Option<DateTime<FixedOffset>>,
    /// The first 8 hex digits of the stored command's fingerprint.
    pub stored_fingerprint: String,
    /// The first 8 hex digits of this request's fingerprint.
    pub given_fingerprint: String,
    /// The whole DETAIL as received.
    pub detail: String,
}

/// The fields of `IK003`'s DETAIL: `Scope "S", key "K" is at attempt N; this call is from
/// attempt M.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost {
    /// The record's attempt (the holder that took over).
    pub current_attempt: Option<i32>,
    /// The attempt this call gave.
    pub given_attempt: Option<i32>,
    pub text: DbText,
}

impl KeyReused {
    /// Parses `IK001`'s DETAIL. `known` is the scope and key of the call, when the caller has
    /// them: a scope or key may itself hold `", key "`, so with them the split is exact;
    /// without them the first `", key "` splits. Returns `None` for a DETAIL of another
    /// layout.
    pub fn parse(detail: &str, known: Option<(&str, &str)>) -> Option<KeyReused> {
        let body = detail.strip_suffix('.')?;
        let (rest, given) = body.rsplit_once("; this request's fingerprint is ")?;
        let (rest, stored) = rest.rsplit_once(" with command fingerprint ")?;
        let (rest, first_used) = rest.rsplit_once(" was first used at ")?;
        let inner = rest.strip_prefix("Scope \"")?.strip_suffix('"')?;
        let (scope, key) = match known {
            Some((scope, key)) => {
                if inner != format!("{scope}\", key \"{key}") {
                    return None;
                }
                (scope.to_owned(), key.to_owned())
            }
            None => {
                let (s, k) = inner.split_once("\", key \"")?;
                (s.to_owned(), k.to_owned())
            }
        };
        if !is_hex8(stored) || !is_hex8(given) {
            return None;
        }
        Some(KeyReused {
            scope,
            key,
            first_used: first_used.to_owned(),
            first_used_at: parse_iso_timestamptz(first_used),
            stored_fingerprint: stored.to_owned(),
            given_fingerprint: given.to_owned(),
            detail: detail.to_owned(),
        })
    }
}

impl LeaseLost {
    fn parse(text: DbText) -> LeaseLost {
        let attempts = text.detail.as_deref().and_then(|d| {
            let body = d.strip_suffix('.')?;
            let (rest, given) = body.rsplit_once("; this call is from attempt ")?;
            let (_, current) = rest.rsplit_once(" is at attempt ")?;
            Some((current.parse().ok()?, given.parse().ok()?))
        });
        LeaseLost {
            current_attempt: attempts.map(|a: (i32, i32)| a.0),
            given_attempt: attempts.map(|a| a.1),
            text,
        }
    }
}

fn is_hex8(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// PostgreSQL's ISO output of a timestamptz: `2026-11-28 09:23:49.090837+00` (the offset may
/// carry minutes and seconds: `+05:30`, `-03:00:25`, and the fraction is absent at 0).
pub fn parse_iso_timestamptz(s: &str) -> Option<DateTime<FixedOffset>> {
    let cut = s.rfind(['+', '-'])?;
    if cut < 19 {
        return None;
    }
    let (stamp, offset) = s.split_at(cut);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':');
    let h: i32 = parts.next()?.parse().ok()?;
    let m: i32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let sec: i32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let tz = FixedOffset::east_opt(sign * (h * 3600 + m * 60 + sec))?;
    let naive = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    naive.and_local_timezone(tz).single()
}

fn text_of(db: &tokio_postgres::error::DbError) -> DbText {
    DbText {
        message: db.message().to_owned(),
        detail: db.detail().map(str::to_owned),
    }
}

impl Error {
    /// Classifies a driver error by its SQLSTATE. `key` is the call's scope and key, used to
    /// split `IK001`'s DETAIL exactly.
    pub fn from_db(e: tokio_postgres::Error, key: Option<(&str, &str)>) -> Error {
        let Some(db) = e.as_db_error() else {
            return Error::Db(e);
        };
        match db.code().code() {
            "IK001" => match db.detail().and_then(|d| KeyReused::parse(d, key)) {
                Some(r) => Error::KeyReused(Box::new(r)),
                // The code decides; a DETAIL of an unknown layout still is IK001.
                None => Error::KeyReused(Box::new(KeyReused {
                    scope: key.map(|k| k.0.to_owned()).unwrap_or_default(),
                    key: key.map(|k| k.1.to_owned()).unwrap_or_default(),
                    first_used: String::new(),
                    first_used_at: None,
                    stored_fingerprint: String::new(),
                    given_fingerprint: String::new(),
                    detail: db.detail().unwrap_or_default().to_owned(),
                })),
            },
            "IK002" => Error::NotInProgress(text_of(db)),
            "IK003" => Error::LeaseLost(LeaseLost::parse(text_of(db))),
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
                "IK001: idempotency key \"{}\" was already used with a different command",
                r.key
            ),
            Error::NotInProgress(t) => write!(f, "IK002: {}", t.message),
            Error::LeaseLost(l) => write!(f, "IK003: {}", l.text.message),
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

    const DETAIL: &str = "Scope \"tenant:42 POST /v1/payments\", key \"k-123\" was first used at \
                          2026-11-28 09:23:49.090837+00 with command fingerprint 863a218a; this \
                          request's fingerprint is 553a0f95.";

    #[test]
    fn parses_ik001_detail() {
        let r = KeyReused::parse(DETAIL, None).unwrap();
        assert_eq!(r.scope, "tenant:42 POST /v1/payments");
        assert_eq!(r.key, "k-123");
        assert_eq!(r.first_used, "2026-11-28 09:23:49.090837+00");
        assert_eq!(
            r.first_used_at.unwrap().to_rfc3339(),
            "2026-11-28T09:23:49.090837+00:00"
        );
        assert_eq!(r.stored_fingerprint, "863a218a");
        assert_eq!(r.given_fingerprint, "553a0f95");
    }

    #[test]
    fn parses_ik001_detail_with_hostile_key_when_known() {
        let scope = "a\", key \"b";
        let key = "x was first used at y with command fingerprint 00000000";
        let detail = format!(
            "Scope \"{scope}\", key \"{key}\" was first used at 2026-01-02 03:04:05+05:30 \
             with command fingerprint 0123abcd; this request's fingerprint is ffffffff."
        );
        let r = KeyReused::parse(&detail, Some((scope, key))).unwrap();
        assert_eq!((r.scope.as_str(), r.key.as_str()), (scope, key));
        assert_eq!(r.first_used, "2026-01-02 03:04:05+05:30");
        assert_eq!(
            r.first_used_at.unwrap().to_rfc3339(),
            "2026-01-02T03:04:05+05:30"
        );
        assert_eq!(r.stored_fingerprint, "0123abcd");
        // Without the known key the first separator splits (documented ambiguity).
        let r = KeyReused::parse(&detail, None).unwrap();
        assert_eq!(r.scope, "a");
        // A known key that does not match is not this DETAIL.
        assert!(KeyReused::parse(&detail, Some(("a", "b"))).is_none());
    }

    #[test]
    fn rejects_other_detail_layouts() {
        assert!(KeyReused::parse("something else.", None).is_none());
        assert!(KeyReused::parse(&DETAIL.replace("863a218a", "86"), None).is_none());
        assert!(KeyReused::parse(DETAIL.trim_end_matches('.'), None).is_none());
    }

    #[test]
    fn parses_ik003_detail() {
        let l = LeaseLost::parse(DbText {
            message: "lease on idempotency key \"k\" was lost".into(),
            detail: Some(
                "Scope \"s\", key \"k\" is at attempt 2; this call is from attempt 1.".into(),
            ),
        });
        assert_eq!((l.current_attempt, l.given_attempt), (Some(2), Some(1)));
        let l = LeaseLost::parse(DbText::default());
        assert_eq!((l.current_attempt, l.given_attempt), (None, None));
    }

    #[test]
    fn parses_iso_timestamps() {
        let t = parse_iso_timestamptz("2026-11-28 09:23:49+00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T09:23:49+00:00");
        let t = parse_iso_timestamptz("1999-01-08 04:05:06.5-03:00:25").unwrap();
        assert_eq!(t.offset().local_minus_utc(), -(3 * 3600 + 25));
        assert!(parse_iso_timestamptz("Sat Nov 28 09:23:49 2026 UTC").is_none());
    }
}
