//! The SQL functions: each validates its arguments, takes the key's lock where it writes,
//! reads the record, asks `decision` what happens, has `store` write it, and answers.
//!
//! The protocol of `idem_begin` (why it is safe in the caller's own transaction):
//! 1. try the key's lock without waiting; read the committed record;
//! 2. decide on what is visible, knowing whether this request holds the lock: without it,
//!    another transaction is working on the key (its claim may not be committed yet), so
//!    only a final outcome (replay) or a refusal can be decided, everything else is
//!    `in_progress`;
//! 3. with `wait` > 0 and `in_progress`, wait for the lock up to `wait`, read again (READ
//!    COMMITTED takes a new snapshot) and decide again;
//! 4. a request that writes (execute) keeps the lock to the end of its transaction, so the
//!    claim and the caller's business write commit or vanish together; one that wrote nothing
//!    gives its acquisition back at once.

use idempotency_core::decision::{self, Begin, Execute, Micros, State, Stored};
use pgrx::pg_sys;

use crate::errors::{Found, IdemError, KeyRef, RefusalContext};
use crate::fmgr::{bytea, sql_functions, text, Args};
use crate::lock::KeyLock;
use crate::settings;
use crate::store::{Claim, Outcome, Record, Store};

sql_functions! {
    idem_begin, pg_finfo_idem_begin => begin;
    idem_complete, pg_finfo_idem_complete => complete;
    idem_fail, pg_finfo_idem_fail => fail;
    idem_checkpoint, pg_finfo_idem_checkpoint => checkpoint;
    idem_check, pg_finfo_idem_check => check;
    idem_fingerprint, pg_finfo_idem_fingerprint => fingerprint;
    idem_canonical, pg_finfo_idem_canonical => canonical;
    idem_purge, pg_finfo_idem_purge => purge;
    idem_forget, pg_finfo_idem_forget => forget;
}

/// 409: what a web API answers while another request holds the key.
const HTTP_CONFLICT: i32 = 409;

fn now() -> Micros {
    // SAFETY: reads the clock. The wall clock, not the transaction's start: leases and
    // expiry are about real time, and a long transaction must not see them frozen.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn caller() -> pg_sys::Oid {
    // SAFETY: the current user id, read before the store switches to the owner's.
    unsafe { pg_sys::GetUserId() }
}

/// Writes are refused on a hot standby and in a read-only transaction, with 25006, before
/// any lock is taken. On a standby the message says to call the primary.
fn prevent_if_read_only(function: &'static std::ffi::CStr) -> Result<(), IdemError> {
    // SAFETY: reads shared memory state; no error path.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(IdemError::DuringRecovery {
            function: function.to_str().unwrap_or("this function"),
        });
    }
    // SAFETY: raises 25006 in a read-only transaction.
    unsafe { pg_sys::PreventCommandIfReadOnly(function.as_ptr()) };
    Ok(())
}

fn stored(r: &Record, caller: pg_sys::Oid) -> Stored {
    Stored {
        state: r.state,
        fingerprint: r.fingerprint,
        attempt: r.attempt,
        expires_at: r.expires_at,
        lease_expires_at: r.lease_expires_at,
        caller_is_owner: owns(caller, r.owner),
    }
}

/// Whether the caller may use a record of `owner`'s: as a member of it (superusers are
/// members of every role).
fn owns(caller: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup.
    unsafe { pg_sys::is_member_of_role(caller, owner) }
}

/// 42501 unless the caller may use a record of `owner`'s (for the functions that need no
/// decision beyond ownership).
fn require_owner(
    caller: pg_sys::Oid,
    owner: pg_sys::Oid,
    scope: &str,
    key: &str,
) -> Result<(), IdemError> {
    if owns(caller, owner) {
        Ok(())
    } else {
        Err(IdemError::NotOwner {
            at: KeyRef::new(scope, key),
        })
    }
}

/// The detail a refusal's message needs about the record.
fn refusal_context(
    r: Option<&Record>,
    now: Micros,
    given_fingerprint: [u8; 32],
    given_attempt: Option<i32>,
) -> RefusalContext {
    RefusalContext {
        first_used: r
            .map(|r| timestamptz_text(r.created_at))
            .unwrap_or_default(),
        stored_fingerprint: r.map(|r| r.fingerprint).unwrap_or_default(),
        given_fingerprint,
        found: match r {
            None => Found::Absent,
            Some(r) if now >= r.expires_at => Found::Expired,
            Some(r) => match r.state {
                State::InProgress => Found::Absent, // not reached: in progress is no refusal
                State::Completed => Found::Completed,
                State::Failed { .. } => Found::Failed,
            },
        },
        given_attempt: given_attempt.unwrap_or_default(),
        current_attempt: r.map(|r| r.attempt).unwrap_or_default(),
    }
}

/// A timestamp as the session shows it (DateStyle, TimeZone).
fn timestamptz_text(t: Micros) -> String {
    // SAFETY: the type output function of timestamptz on a timestamptz value.
    unsafe {
        let mut out = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(pg_sys::TIMESTAMPTZOID, &mut out, &mut varlena);
        let s = pg_sys::OidOutputFunctionCall(out, pg_sys::Datum::from(t));
        std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

fn begin(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let (scope_d, scope) = a.key_text(0, "scope")?;
    let (key_d, key) = a.key_text(1, "key")?;
    let command = a.jsonb(2, "command", Some(settings::max_command_bytes()))?;
    let (_, command) = command.ok_or(IdemError::NullArgument {
        function: "idem_begin",
        argument: "command",
    })?;
    let ttl = a.duration(3, "ttl", settings::ttl(), 1)?;
    let lease = a.duration(4, "lease", settings::lease(), 1)?;
    let wait = a.duration(5, "wait", settings::wait(), 0)?;
    prevent_if_read_only(c"idem_begin()")?;
    crate::citus::require_shard_here("idem_begin()", scope_d)?;
    let fingerprint = idempotency_core::fingerprint(command)?;
    let at = || KeyRef::new(scope, key);
    let caller = caller();
    let lock = KeyLock::new(scope, key);

    let store = Store::open()?;
    let mut holds_lock = lock.try_acquire();
    let mut now = now();
    let request = |holds_lock: bool, now: Micros| decision::BeginRequest {
        fingerprint,
        now,
        ttl,
        lease,
        holds_lock,
    };
    let claim = |now: Micros, expires_at: Micros, lease_expires_at: Micros| Claim {
        scope: scope_d,
        key: key_d,
        owner: caller,
        fingerprint: &fingerprint,
        now,
        expires_at,
        lease_expires_at,
        lease,
    };
    // The common case first: a new key. Holding the lock, decide as if there were no record
    // and try to insert the claim; a row already there (live or expired) makes the insert do
    // nothing, and the record is then read and decided on below. This saves the read for new
    // keys (one statement instead of two) and costs replays one index probe.
    if holds_lock {
        if let Ok(Begin::Execute(Execute::Claim {
            expires_at,
            lease_expires_at,
        })) = decision::begin(None, &request(holds_lock, now))
        {
            if store.insert(&claim(now, expires_at, lease_expires_at))? {
                drop(store);
                return BeginRow::execute(1, None, None, fingerprint, expires_at).into_datum(a);
            }
        }
    }
    let mut record = store.lookup(scope_d, key_d, false)?;
    let decide = |record: Option<&Record>, holds_lock: bool, now: Micros| {
        let request = request(holds_lock, now);
        decision::begin(record.map(|r| stored(r, caller)).as_ref(), &request).map_err(|refusal| {
            IdemError::from_refusal(
                refusal,
                at(),
                &refusal_context(record, now, fingerprint, None),
            )
        })
    };
    let mut outcome = decide(record.as_ref(), holds_lock, now)?;
    if outcome == Begin::InProgress && !holds_lock && wait > 0 {
        holds_lock = lock.acquire_within(wait);
        record = store.lookup(scope_d, key_d, false)?;
        now = self::now();
        outcome = decide(record.as_ref(), holds_lock, now)?;
    }

    let row = match outcome {
        Begin::Execute(Execute::Claim {
            expires_at,
            lease_expires_at,
        }) => {
            let claim = claim(now, expires_at, lease_expires_at);
            // An expired row is reused; if idem_purge deleted it meanwhile, insert. Holding
            // the lock, no other request can have inserted one in between.
            let claimed = (record.is_some() && store.reclaim(&claim)?) || store.insert(&claim)?;
            if !claimed {
                return Err(IdemError::Internal(format!(
                    "the record of key \"{key}\" in scope \"{scope}\" changed while its lock was held"
                )));
            }
            BeginRow::execute(1, None, None, fingerprint, expires_at)
        }
        Begin::Execute(Execute::Resume {
            attempt,
            lease_expires_at,
        }) => {
            let r = record
                .as_ref()
                .ok_or_else(|| IdemError::Internal("resume without a record".into()))?;
            if !store.resume(scope_d, key_d, attempt, lease_expires_at, lease)? {
                return Err(IdemError::Internal(format!(
                    "the record of key \"{key}\" vanished while its lock was held"
                )));
            }
            BeginRow::execute(
                attempt,
                r.recovery_point,
                r.recovery_data,
                fingerprint,
                r.expires_at,
            )
        }
        Begin::Replay => {
            let r = record
                .as_ref()
                .ok_or_else(|| IdemError::Internal("replay without a record".into()))?;
            BeginRow {
                outcome: "replay",
                state: r.state.as_str(),
                attempt: Some(r.attempt),
                recovery_point: None,
                recovery_data: None,
                http_status: r.http_status,
                response: r.response,
                resource: r.resource,
                fingerprint,
                expires_at: Some(r.expires_at),
            }
        }
        Begin::InProgress => {
            let live = record.as_ref().filter(|r| now < r.expires_at);
            BeginRow {
                outcome: "in_progress",
                state: State::InProgress.as_str(),
                attempt: live.map(|r| r.attempt),
                recovery_point: None,
                recovery_data: None,
                http_status: Some(HTTP_CONFLICT),
                response: None,
                resource: None,
                fingerprint,
                expires_at: live.map(|r| r.expires_at),
            }
        }
    };
    if holds_lock && !matches!(outcome, Begin::Execute(_)) {
        lock.release();
    }
    drop(store);
    row.into_datum(a)
}

/// The row `idem_begin` returns.
struct BeginRow {
    outcome: &'static str,
    state: &'static str,
    attempt: Option<i32>,
    recovery_point: Option<pg_sys::Datum>,
    recovery_data: Option<pg_sys::Datum>,
    http_status: Option<i32>,
    response: Option<pg_sys::Datum>,
    resource: Option<pg_sys::Datum>,
    fingerprint: [u8; 32],
    expires_at: Option<Micros>,
}

impl BeginRow {
    fn execute(
        attempt: i32,
        recovery_point: Option<pg_sys::Datum>,
        recovery_data: Option<pg_sys::Datum>,
        fingerprint: [u8; 32],
        expires_at: Micros,
    ) -> Self {
        BeginRow {
            outcome: "execute",
            state: State::InProgress.as_str(),
            attempt: Some(attempt),
            recovery_point,
            recovery_data,
            http_status: None,
            response: None,
            resource: None,
            fingerprint,
            expires_at: Some(expires_at),
        }
    }

    fn into_datum(self, a: &Args) -> Result<pg_sys::Datum, IdemError> {
        a.composite(&[
            Some(text(self.outcome)),
            Some(text(self.state)),
            self.attempt.map(pg_sys::Datum::from),
            self.recovery_point,
            self.recovery_data,
            self.http_status.map(pg_sys::Datum::from),
            self.response,
            self.resource,
            Some(bytea(&self.fingerprint)),
            self.expires_at.map(pg_sys::Datum::from),
        ])
    }
}

/// What `idem_complete`, `idem_fail` and `idem_checkpoint` share: lock the key (waiting like
/// any row lock would), read it, and check it is the caller's, live, in progress and, given
/// an attempt, at that attempt.
/// `fast`, if given, tries the write in one statement that checks the guard itself (see
/// `Store::complete_owned`); when it writes nothing, the record is read and the guard decides.
fn settle<T>(
    a: &Args,
    function: &'static std::ffi::CStr,
    attempt_arg: usize,
    fast: Option<FastPath<T>>,
    write: impl FnOnce(&Store, pg_sys::Datum, pg_sys::Datum, &Record, Micros) -> Result<T, IdemError>,
) -> Result<T, IdemError> {
    let (scope_d, scope) = a.key_text(0, "scope")?;
    let (key_d, key) = a.key_text(1, "key")?;
    let attempt = a.i32(attempt_arg);
    prevent_if_read_only(function)?;
    crate::citus::require_shard_here(function.to_str().unwrap_or("this function"), scope_d)?;
    let caller = caller();
    KeyLock::new(scope, key).acquire();
    let store = Store::open()?;
    let now = now();
    if let Some(fast) = fast {
        let done = fast(
            &store,
            Fast {
                scope: scope_d,
                key: key_d,
                caller,
                attempt,
                now,
            },
        )?;
        if let Some(done) = done {
            return Ok(done);
        }
    }
    let record = store.lookup(scope_d, key_d, false)?;
    decision::settle(
        record.as_ref().map(|r| stored(r, caller)).as_ref(),
        now,
        attempt,
    )
    .map_err(|refusal| {
        let at = KeyRef::new(scope, key);
        IdemError::from_refusal(
            refusal,
            at,
            &refusal_context(record.as_ref(), now, [0; 32], attempt),
        )
    })?;
    let record = record.ok_or_else(|| IdemError::Internal("settled without a record".into()))?;
    write(&store, scope_d, key_d, &record, now)
}

fn complete(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let limit = settings::max_response_bytes();
    let response = a.jsonb(2, "response", Some(limit))?.map(|(d, _)| d);
    let resource = a.text(3, "resource", limit)?;
    let http_status = a.http_status(4)?;
    let outcome = Outcome {
        state: State::Completed,
        http_status,
        response,
        resource,
    };
    let fast = |store: &Store, f: Fast| {
        Ok(store
            .complete_owned(f.scope, f.key, &outcome, f.now, f.caller, f.attempt)?
            .then_some(()))
    };
    settle(
        a,
        c"idem_complete()",
        5,
        Some(&fast),
        |store, scope, key, _, _| written(store.finish(scope, key, &outcome)?),
    )?;
    Ok(pg_sys::Datum::from(0))
}

fn fail(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let error = a
        .jsonb(2, "error", Some(settings::max_response_bytes()))?
        .map(|(d, _)| d);
    let retryable = a.bool(3).ok_or(IdemError::NullArgument {
        function: "idem_fail",
        argument: "retryable",
    })?;
    let http_status = a.http_status(4)?;
    settle(a, c"idem_fail()", 5, None, |store, scope, key, _, _| {
        let outcome = Outcome {
            state: State::Failed { retryable },
            http_status,
            response: error,
            resource: None,
        };
        written(store.finish(scope, key, &outcome)?)
    })?;
    Ok(pg_sys::Datum::from(0))
}

fn checkpoint(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let limit = settings::max_response_bytes();
    let point = a
        .text(2, "recovery_point", limit)?
        .ok_or(IdemError::NullArgument {
            function: "idem_checkpoint",
            argument: "recovery_point",
        })?;
    let data = a.jsonb(3, "data", Some(limit))?.map(|(d, _)| d);
    let lease_expires_at = settle(
        a,
        c"idem_checkpoint()",
        4,
        None,
        |store, scope, key, record, now| {
            // The lease is renewed by the length the claim was made with.
            let lease_expires_at = decision::later(now, record.lease);
            written(store.checkpoint(scope, key, point, data, lease_expires_at)?)?;
            Ok(lease_expires_at)
        },
    )?;
    Ok(pg_sys::Datum::from(lease_expires_at))
}

/// A write that checks the guard itself, tried before the record is read.
type FastPath<'a, T> = &'a dyn Fn(&Store, Fast) -> Result<Option<T>, IdemError>;

/// What a fast path of `settle` is given.
struct Fast {
    scope: pg_sys::Datum,
    key: pg_sys::Datum,
    caller: pg_sys::Oid,
    attempt: Option<i32>,
    now: Micros,
}

/// A write under the key's lock finds the row it just read.
fn written(found: bool) -> Result<(), IdemError> {
    if found {
        Ok(())
    } else {
        Err(IdemError::Internal(
            "the record vanished while its lock was held".into(),
        ))
    }
}

fn check(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let (scope_d, scope) = a.key_text(0, "scope")?;
    let (key_d, key) = a.key_text(1, "key")?;
    let command = a.jsonb(2, "command", Some(settings::max_command_bytes()))?;
    let given = command
        .map(|(_, bytes)| idempotency_core::fingerprint(bytes))
        .transpose()?;
    let caller = caller();
    let store = Store::open()?;
    let record = store.lookup(scope_d, key_d, true)?;
    drop(store);
    let now = now();
    let Some(r) = record.filter(|r| now < r.expires_at) else {
        return a.composite(&[
            Some(text("absent")),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]);
    };
    require_owner(caller, r.owner, scope, key)?;
    a.composite(&[
        Some(text(r.state.as_str())),
        given.map(|fp| pg_sys::Datum::from(fp == r.fingerprint)),
        Some(pg_sys::Datum::from(r.attempt)),
        r.recovery_point,
        r.http_status.map(pg_sys::Datum::from),
        r.response,
        r.resource,
        Some(pg_sys::Datum::from(r.created_at)),
        Some(pg_sys::Datum::from(r.expires_at)),
        r.lease_expires_at
            .filter(|_| r.state == State::InProgress)
            .map(pg_sys::Datum::from),
    ])
}

fn fingerprint(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let (_, command) = a
        .jsonb(0, "command", None)?
        .ok_or(IdemError::NullArgument {
            function: "idem_fingerprint",
            argument: "command",
        })?;
    Ok(bytea(&idempotency_core::fingerprint(command)?))
}

fn canonical(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let (_, command) = a
        .jsonb(0, "command", None)?
        .ok_or(IdemError::NullArgument {
            function: "idem_canonical",
            argument: "command",
        })?;
    let text = idempotency_core::canonical(command)?;
    // SAFETY: copies the bytes into a text value in the current memory context.
    Ok(pg_sys::Datum::from(unsafe {
        pg_sys::cstring_to_text_with_len(text.as_ptr().cast(), text.len() as i32)
    }))
}

fn purge(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let max_rows = a.i32(0).ok_or(IdemError::NullArgument {
        function: "idem_purge",
        argument: "max_rows",
    })?;
    if max_rows < 1 {
        return Err(IdemError::InvalidArgument {
            message: "invalid max_rows for idem_purge".into(),
            detail: Some(format!("It is {max_rows}; it must be at least 1.")),
        });
    }
    prevent_if_read_only(c"idem_purge()")?;
    // Distributed by Citus: shard by shard, each on its own node (citus.rs).
    if crate::citus::distributed()? {
        return Ok(pg_sys::Datum::from(crate::citus::purge(max_rows)?));
    }
    let store = Store::open()?;
    let deleted = store.purge(now(), max_rows)?;
    Ok(pg_sys::Datum::from(deleted as i64))
}

fn forget(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let (scope_d, scope) = a.key_text(0, "scope")?;
    let (key_d, key) = a.key_text(1, "key")?;
    prevent_if_read_only(c"idem_forget()")?;
    crate::citus::require_shard_here("idem_forget()", scope_d)?;
    let caller = caller();
    // Waits for a transaction that holds the key, so that a claim in flight is not pulled
    // from under it.
    KeyLock::new(scope, key).acquire();
    let store = Store::open()?;
    let Some(r) = store
        .lookup(scope_d, key_d, false)?
        .filter(|r| now() < r.expires_at)
    else {
        return Ok(pg_sys::Datum::from(false));
    };
    require_owner(caller, r.owner, scope, key)?;
    Ok(pg_sys::Datum::from(store.forget(scope_d, key_d)?))
}
