//! The SQL functions: each validates its arguments, takes the key's lock where it writes,
//! reads the record, asks `decision` what happens, has `store` write it, and answers.
//!
//! Every function that writes goes through one guard, [`Writer`]: refused on a hot standby or
//! in a read-only transaction (25006), refused where Citus placed the key's shard on another
//! node (0A000, `store::require_shard_here`), then the key's lock and the store opened for the
//! call (`idem_begin` may open the store and read once before it tries the lock: below); the
//! calling role is read at admission, before the SQL path switches to the table's owner; the
//! function's name in messages is its declared one (`Args::function`). `idem_purge`
//! has no key: it takes the first step only, and the store's purge chooses between one
//! server and Citus's shards.
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
//!
//! Before step 1, a backend whose last request answered a settled key reads the record first
//! and answers a replay or a refusal from that read, which is what step 2 decides for such a
//! record with or without the lock (`decision::settled`); otherwise it goes on with step 1
//! (`read_first` says when, and why only under READ COMMITTED).

use idempotency_core::decision::{self, Begin, Execute, Existing, Micros, State};
use pgrx::pg_sys;

use crate::datum::{bytea, text};
use crate::errors::{IdemError, KeyRef};
use crate::fmgr::Args;
use crate::lock::KeyLock;
use crate::settings;
use crate::signature as sig;
use crate::stats::{self, Counter};
use crate::store::{self, Change, Claim, Outcome, Path, Read, Records, Row, Shards, Sql};

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
/// any lock is taken. On a standby the message says to call the primary. The first step of
/// [`Writer::admit`], and all of `idem_purge`'s.
fn refuse_read_only(a: &Args) -> Result<(), IdemError> {
    let function = a.function();
    // SAFETY: reads shared memory state; no error path.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(IdemError::DuringRecovery { function });
    }
    // SAFETY: reads a backend global; PreventCommandIfReadOnly raises 25006 when it is set.
    if unsafe { pg_sys::XactReadOnly } {
        let name = std::ffi::CString::new(format!("{function}()"))
            .map_err(|e| IdemError::Internal(e.to_string()))?;
        // SAFETY: raises 25006 (the name is copied into the message first).
        unsafe { pg_sys::PreventCommandIfReadOnly(name.as_ptr()) };
    }
    Ok(())
}

/// How a writer takes the key's lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// Tries it without waiting (`idem_begin`, which answers `in_progress` when it is held);
    /// the store is opened first.
    Try,
    /// Waits for it like an UPDATE waits for a row lock (deadlock detection and
    /// `lock_timeout` apply); the store is opened after.
    Wait,
}

/// The one guard of every function that writes a key's record: admitted (not read-only, the
/// key's shard on this node), then holding the key (its lock, the store open).
struct Writer<'a> {
    scope_d: pg_sys::Datum,
    key_d: pg_sys::Datum,
    scope: &'a str,
    key: &'a str,
    /// The calling role, read before any store is opened: the SQL path runs as the table's
    /// owner while it is open.
    caller: pg_sys::Oid,
}

impl<'a> Writer<'a> {
    /// Refuses the write where none may happen: 25006 on a hot standby or in a read-only
    /// transaction; 0A000 where Citus placed the scope's shard on another node, whose lock
    /// table the key's lock must be in.
    fn admit(
        a: &Args,
        (scope_d, scope): (pg_sys::Datum, &'a str),
        (key_d, key): (pg_sys::Datum, &'a str),
    ) -> Result<Self, IdemError> {
        refuse_read_only(a)?;
        store::require_shard_here(a.function(), scope_d)?;
        Ok(Writer {
            scope_d,
            key_d,
            scope,
            key,
            caller: caller(),
        })
    }

    /// Takes the key's lock (`lock` says how) and opens the store (`open`: either path, or
    /// the SQL path only).
    fn hold<S>(
        self,
        lock: Lock,
        open: impl FnOnce() -> Result<S, IdemError>,
    ) -> Result<Held<'a, S>, IdemError> {
        let caller = self.caller;
        let key_lock = KeyLock::new(self.scope, self.key);
        let (records, holds_lock, now) = match lock {
            Lock::Try => {
                let records = open()?;
                let holds_lock = key_lock.try_acquire();
                (records, holds_lock, now())
            }
            Lock::Wait => {
                key_lock.acquire();
                let now = now();
                (open()?, true, now)
            }
        };
        Ok(Held {
            scope_d: self.scope_d,
            key_d: self.key_d,
            scope: self.scope,
            key: self.key,
            caller,
            lock: key_lock,
            holds_lock,
            now,
            records,
        })
    }
}

/// A key that a writer holds: locked (or tried, `holds_lock`), with the store open.
struct Held<'a, S> {
    scope_d: pg_sys::Datum,
    key_d: pg_sys::Datum,
    scope: &'a str,
    key: &'a str,
    caller: pg_sys::Oid,
    lock: KeyLock,
    holds_lock: bool,
    /// The time once the lock was taken (or tried).
    now: Micros,
    records: S,
}

/// What the decision needs to know of a row, for this caller.
fn existing(r: &Row, caller: pg_sys::Oid) -> Existing {
    Existing {
        state: r.state,
        fingerprint: r.fingerprint,
        attempt: r.attempt,
        created_at: r.created_at,
        expires_at: r.expires_at,
        lease_expires_at: r.lease_expires_at,
        caller_is_owner: owns(caller, r.owner),
    }
}

/// Whether the caller may use (read, claim, settle) a record of `owner`'s: it is the owner, a
/// superuser, or could act as the owner anyway. Before PostgreSQL 16 that is any member of the
/// owner's role (every member may SET ROLE to it). From 16 a membership grant can have INHERIT
/// FALSE and SET FALSE (the grant WITH ADMIN OPTION that CREATEROLE gets on the roles it
/// creates has both by default), and such a member cannot act as the role: it must inherit
/// the role's privileges or be allowed to SET ROLE to it (`is_member_of_role`, which ignores
/// both options, is PostgreSQL's test for group membership, not for privileges). A dropped
/// owner's oid matches no role: only superusers pass.
fn owns(caller: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    caller == owner || can_act_as(caller, owner)
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
fn can_act_as(caller: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup.
    unsafe { pg_sys::is_member_of_role(caller, owner) }
}

#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
fn can_act_as(caller: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups.
    unsafe {
        pg_sys::has_privs_of_role(caller, owner) || pg_sys::member_can_set_role(caller, owner)
    }
}

/// Whether the caller may evict (`idem_forget`) a record of `owner`'s: it may use it, or it
/// administers the owner's role (PostgreSQL's `is_admin_of_role`: a superuser, or a member of
/// a role that holds ADMIN OPTION on it; from 16 that includes a CREATEROLE role on the roles
/// it created). Administering a role lets one evict its keys, not read its responses.
fn may_evict(caller: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup.
    owns(caller, owner) || unsafe { pg_sys::is_admin_of_role(caller, owner) }
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
            evict: false,
        })
    }
}

pub fn begin(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_begin::PARAMS;
    let (scope_d, scope) = a.key_text(p.scope)?;
    let (key_d, key) = a.key_text(p.key)?;
    let (_, command) = a
        .jsonb(p.command, Some(settings::max_command_size()))?
        .ok_or(IdemError::NullArgument {
            function: a.function(),
            argument: p.command.name,
        })?;
    let ttl = a.duration(p.ttl, settings::ttl, 1)?;
    // No role holds a key, its own or one another role will need, beyond the ceiling that only
    // a superuser sets.
    settings::check_ttl(ttl, a.datum(p.ttl).is_none())?;
    let lease = a.duration(p.lease, settings::lease, 1)?;
    let wait = a.duration(p.wait, settings::wait, 0)?;
    let writer = Writer::admit(a, (scope_d, scope), (key_d, key))?;
    let fingerprint = idempotency_core::fingerprint(command)?;
    let request = |holds_lock: bool, now: Micros| decision::BeginRequest {
        fingerprint,
        now,
        ttl,
        lease,
        holds_lock,
    };
    // A replay read before the lock is tried (see `read_first`): answered if the lock could
    // not change the answer, else the store stays open for the protocol below.
    let mut opened = None;
    if read_first::wanted() {
        let records = Records::open()?;
        let row = records.lookup(scope_d, key_d, Read::Fresh)?;
        let settled = row.as_ref().and_then(|r| {
            let existing = existing(r, writer.caller);
            decision::settled(Some(&existing), &request(false, self::now())).map(|s| (r, s))
        });
        read_first::after(settled.is_some());
        if let Some((r, settled)) = settled {
            let outcome = settled
                .map_err(|refusal| IdemError::from_refusal(refusal, KeyRef::new(scope, key)))?;
            drop(records);
            return result_row(
                a,
                Answer::Replay(r),
                &outcome,
                Some(r),
                fingerprint,
                (scope, key),
            );
        }
        opened = Some(records);
    }
    let Held {
        caller,
        lock,
        mut holds_lock,
        mut now,
        records,
        ..
    } = writer.hold(Lock::Try, || opened.map_or_else(Records::open, Ok))?;
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
    // Read first: a replay costs one probe, and a new key one probe and the insert. Under
    // REPEATABLE READ and SERIALIZABLE the holder's read locks the row, and the write that
    // follows a decision raises 40001 for a row that changed after the snapshot.
    // On the SQL path under READ COMMITTED, where either order gives the same outcomes, the
    // claim of a new key is tried first instead: one SPI statement instead of two; a row
    // already there (live or expired) makes the insert do nothing, and it is read below.
    if holds_lock && records.insert_first() {
        if let Ok(Begin::Execute(Execute::Claim {
            expires_at,
            lease_expires_at,
        })) = decision::begin(None, &request(holds_lock, now))
        {
            if records.write(&Change::insert(&claim(now, expires_at, lease_expires_at)))? {
                drop(records);
                stats::count(Counter::ExecuteNew);
                return a.row(executes(1, None, None, fingerprint, expires_at).values());
            }
        }
    }
    let mut row = records.lookup(scope_d, key_d, Read::fresh(holds_lock))?;
    // Each decision also notes for the next call whether the key was settled (`read_first`).
    let decide = |row: Option<&Row>, holds_lock: bool, now: Micros| {
        let decided = decision::begin(
            row.map(|r| existing(r, caller)).as_ref(),
            &request(holds_lock, now),
        );
        read_first::after(matches!(decided, Ok(Begin::Replay) | Err(_)));
        decided.map_err(|refusal| IdemError::from_refusal(refusal, KeyRef::new(scope, key)))
    };
    let mut outcome = decide(row.as_ref(), holds_lock, now)?;
    if outcome == Begin::InProgress && !holds_lock && wait > 0 {
        holds_lock = lock.acquire_within(wait);
        row = records.lookup(scope_d, key_d, Read::fresh(holds_lock))?;
        now = self::now();
        outcome = decide(row.as_ref(), holds_lock, now)?;
    }

    // What to answer is decided here; its datums are made only once the store is closed
    // (below), in the function's own memory: on the SQL path, whatever is allocated while SPI
    // is connected is freed by SPI_finish.
    let answer = match outcome {
        Begin::Execute(Execute::Claim {
            expires_at,
            lease_expires_at,
        }) => {
            let claim = claim(now, expires_at, lease_expires_at);
            // An expired row is reused; if idem_purge deleted it meanwhile, insert. Holding
            // the lock, no other request can have inserted one in between.
            let claimed = (row.is_some() && records.write(&Change::reclaim(&claim))?)
                || records.write(&Change::insert(&claim))?;
            if !claimed {
                return Err(IdemError::Internal(format!(
                    "the record of key \"{key}\" in scope \"{scope}\" changed while its lock was held"
                )));
            }
            Answer::Execute {
                attempt: 1,
                recovery_point: None,
                recovery_data: None,
                expires_at,
            }
        }
        Begin::Execute(Execute::Resume {
            attempt,
            lease_expires_at,
        }) => {
            let r = row
                .as_ref()
                .ok_or_else(|| IdemError::Internal("resume without a record".into()))?;
            if !records.write(&Change::resume(
                scope_d,
                key_d,
                attempt,
                lease_expires_at,
                lease,
            ))? {
                return Err(IdemError::Internal(format!(
                    "the record of key \"{key}\" vanished while its lock was held"
                )));
            }
            Answer::Execute {
                attempt,
                recovery_point: r.recovery_point,
                recovery_data: r.recovery_data,
                expires_at: r.expires_at,
            }
        }
        Begin::Replay => Answer::Replay(
            row.as_ref()
                .ok_or_else(|| IdemError::Internal("replay without a record".into()))?,
        ),
        Begin::InProgress => Answer::InProgress(row.as_ref().filter(|r| now < r.expires_at)),
    };
    if holds_lock && !matches!(outcome, Begin::Execute(_)) {
        lock.release();
    }
    drop(records);
    result_row(a, answer, &outcome, row.as_ref(), fingerprint, (scope, key))
}

/// `idem_begin`'s result row, made once the store is closed, and the outcome counted.
fn result_row(
    a: &Args,
    answer: Answer,
    outcome: &Begin,
    row: Option<&Row>,
    fingerprint: [u8; 32],
    (scope, key): (&str, &str),
) -> Result<pg_sys::Datum, IdemError> {
    let out = answer.out(fingerprint);
    counted(outcome, row, scope, key);
    a.row(out.values())
}

/// Whether `idem_begin` reads the record before it tries the key's lock.
///
/// The protocol takes the lock first, then reads. A replay does not need it: a live record's
/// final outcome, or a refusal, is what the holder of the lock would answer too
/// (`decision::settled`), so answered from a read made before the lock it costs neither the
/// lock's identity, nor taking and giving back the lock (about 6,000 instructions per replay,
/// callgrind). Any other answer needs the lock, and the record is read again once it is tried:
/// one more index probe. So a backend reads first only after its last `idem_begin` answered a
/// settled key (retries come in runs: a client retrying, a proxy replaying), and only under
/// READ COMMITTED, where a read takes a new snapshot anyway; under REPEATABLE READ and
/// SERIALIZABLE the holder's read locks the row it decides on, which a replay must not skip.
mod read_first {
    use std::cell::Cell;

    thread_local! {
        static LAST_SETTLED: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether this call reads first.
    pub fn wanted() -> bool {
        LAST_SETTLED.get() && !crate::store::xact_snapshot()
    }

    /// Notes whether this call's key was settled (a replay or a refusal).
    pub fn after(settled: bool) {
        LAST_SETTLED.set(settled);
    }
}

/// What `idem_begin` answers, before its result datums are made. The values taken from the
/// record were copied out of the store's memory when it was read.
enum Answer<'r> {
    Execute {
        attempt: i32,
        recovery_point: Option<pg_sys::Datum>,
        recovery_data: Option<pg_sys::Datum>,
        expires_at: Micros,
    },
    Replay(&'r Row),
    /// The live record, if there is one.
    InProgress(Option<&'r Row>),
}

impl Answer<'_> {
    /// The result row, made in the current memory context: call it after the store is closed.
    fn out(self, fingerprint: [u8; 32]) -> sig::idem_begin::Out {
        match self {
            Answer::Execute {
                attempt,
                recovery_point,
                recovery_data,
                expires_at,
            } => executes(
                attempt,
                recovery_point,
                recovery_data,
                fingerprint,
                expires_at,
            ),
            Answer::Replay(r) => sig::idem_begin::Out {
                outcome: Some(text("replay")),
                state: Some(text(r.state.as_str())),
                attempt: Some(r.attempt.into()),
                recovery_point: None,
                recovery_data: None,
                http_status: r.http_status.map(pg_sys::Datum::from),
                response: r.response,
                resource: r.resource,
                fingerprint: Some(bytea(&fingerprint)),
                expires_at: Some(r.expires_at.into()),
            },
            Answer::InProgress(live) => sig::idem_begin::Out {
                outcome: Some(text("in_progress")),
                state: Some(text(State::InProgress.as_str())),
                attempt: live.map(|r| r.attempt.into()),
                recovery_point: None,
                recovery_data: None,
                http_status: Some(HTTP_CONFLICT.into()),
                response: None,
                resource: None,
                fingerprint: Some(bytea(&fingerprint)),
                expires_at: live.map(|r| r.expires_at.into()),
            },
        }
    }
}

/// The row of `idem_begin` that answers `execute`.
fn executes(
    attempt: i32,
    recovery_point: Option<pg_sys::Datum>,
    recovery_data: Option<pg_sys::Datum>,
    fingerprint: [u8; 32],
    expires_at: Micros,
) -> sig::idem_begin::Out {
    sig::idem_begin::Out {
        outcome: Some(text("execute")),
        state: Some(text(State::InProgress.as_str())),
        attempt: Some(attempt.into()),
        recovery_point,
        recovery_data,
        http_status: None,
        response: None,
        resource: None,
        fingerprint: Some(bytea(&fingerprint)),
        expires_at: Some(expires_at.into()),
    }
}

impl Held<'_, Records> {
    /// For `idem_complete`, `idem_fail` and `idem_checkpoint`: reads the record and checks that
    /// it is the caller's, live, in progress and, given an attempt, at that attempt
    /// (`decision::settle`).
    fn settle(&self, attempt: Option<i32>) -> Result<Row, IdemError> {
        let row = self
            .records
            .lookup(self.scope_d, self.key_d, Read::ToWrite)?;
        decision::settle(
            row.as_ref().map(|r| existing(r, self.caller)).as_ref(),
            self.now,
            attempt,
        )
        .map_err(|refusal| IdemError::from_refusal(refusal, KeyRef::new(self.scope, self.key)))?;
        row.ok_or_else(|| IdemError::Internal("settled without a record".into()))
    }

    /// Writes a change of the key's row, which the holder of its lock has read.
    fn write(&self, change: Change) -> Result<(), IdemError> {
        written(self.records.write(&change)?)
    }
}

/// The scope, key and attempt of `idem_complete`, `idem_fail` and `idem_checkpoint`, read
/// after their other arguments, and the key held.
fn settling<'a>(
    a: &'a Args,
    scope: sig::Param,
    key: sig::Param,
    attempt: sig::Param,
) -> Result<(Held<'a, Records>, Option<i32>), IdemError> {
    let scope = a.key_text(scope)?;
    let key = a.key_text(key)?;
    let attempt = a.i32(attempt);
    let held = Writer::admit(a, scope, key)?.hold(Lock::Wait, Records::open)?;
    Ok((held, attempt))
}

pub fn complete(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_complete::PARAMS;
    let limit = settings::max_response_size();
    let response = a.jsonb(p.response, Some(limit))?.map(|(d, _)| d);
    let resource = a.text(p.resource, limit)?;
    let http_status = a.http_status(p.http_status)?;
    let outcome = Outcome {
        state: State::Completed,
        http_status,
        response,
        resource,
    };
    let (s, attempt) = settling(a, p.scope, p.key, p.attempt)?;
    // The common case in one statement that checks the guard itself (the caller's own live
    // claim at the given attempt); when it writes nothing, the guard says why, or a member of
    // the owner's role completes through the general path.
    let owned = Change::complete_owned(s.scope_d, s.key_d, &outcome, s.now, s.caller, attempt);
    if !s.records.write(&owned)? {
        s.settle(attempt)?;
        s.write(Change::finish(s.scope_d, s.key_d, &outcome)?)?;
    }
    stats::count(Counter::Completions);
    Ok(pg_sys::Datum::from(0))
}

pub fn fail(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_fail::PARAMS;
    let error = a
        .jsonb(p.error, Some(settings::max_response_size()))?
        .map(|(d, _)| d);
    let retryable = a.bool(p.retryable)?;
    let http_status = a.http_status(p.http_status)?;
    let (s, attempt) = settling(a, p.scope, p.key, p.attempt)?;
    s.settle(attempt)?;
    let outcome = Outcome {
        state: State::Failed { retryable },
        http_status,
        response: error,
        resource: None,
    };
    s.write(Change::finish(s.scope_d, s.key_d, &outcome)?)?;
    stats::count(if retryable {
        Counter::FailuresRetryable
    } else {
        Counter::FailuresFinal
    });
    Ok(pg_sys::Datum::from(0))
}

pub fn checkpoint(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_checkpoint::PARAMS;
    let limit = settings::max_response_size();
    let point = a
        .text(p.recovery_point, limit)?
        .ok_or(IdemError::NullArgument {
            function: a.function(),
            argument: p.recovery_point.name,
        })?;
    let data = a.jsonb(p.data, Some(limit))?.map(|(d, _)| d);
    let (s, attempt) = settling(a, p.scope, p.key, p.attempt)?;
    let row = s.settle(attempt)?;
    // The lease is renewed by the length the claim was made with.
    let lease_expires_at = decision::later(s.now, row.lease);
    s.write(Change::checkpoint(
        s.scope_d,
        s.key_d,
        point,
        data,
        lease_expires_at,
    ))?;
    stats::count(Counter::Checkpoints);
    Ok(pg_sys::Datum::from(lease_expires_at))
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

/// `idem_check` of 0.3.0's SQL (C symbol `idem_check`): ten columns, without the stored
/// fingerprint.
pub fn check(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    check_as(a, CheckVersion::V0_3)
}

/// `idem_check` of 0.4.0's SQL (`idem_check_0_4`): the type `idempotency.check_result`.
pub fn check_0_4(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    check_as(a, CheckVersion::V0_4)
}

/// The version of the SQL whose `idem_check` a call answers (`signature::VERSIONS`).
#[derive(Clone, Copy)]
enum CheckVersion {
    V0_3,
    V0_4,
}

/// The one body of `idem_check`, its row in the columns of `version`.
fn check_as(a: &Args, version: CheckVersion) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_check::PARAMS;
    let (scope_d, scope) = a.key_text(p.scope)?;
    let (key_d, key) = a.key_text(p.key)?;
    let command = a.jsonb(p.command, Some(settings::max_command_size()))?;
    let given = command
        .map(|(_, bytes)| idempotency_core::fingerprint(bytes))
        .transpose()?;
    let caller = caller();
    let records = Records::open_to_read()?;
    let row = records.lookup(scope_d, key_d, Read::InActiveSnapshot)?;
    drop(records);
    let now = now();
    let out = match row.filter(|r| now < r.expires_at) {
        None => sig::idem_check_0_4::Out {
            state: Some(text("absent")),
            matches: None,
            attempt: None,
            recovery_point: None,
            http_status: None,
            response: None,
            resource: None,
            created_at: None,
            expires_at: None,
            lease_expires_at: None,
            fingerprint: None,
        },
        Some(r) => {
            require_owner(caller, r.owner, scope, key)?;
            sig::idem_check_0_4::Out {
                state: Some(text(r.state.as_str())),
                matches: given.map(|fp| pg_sys::Datum::from(fp == r.fingerprint)),
                attempt: Some(r.attempt.into()),
                recovery_point: r.recovery_point,
                http_status: r.http_status.map(pg_sys::Datum::from),
                response: r.response,
                resource: r.resource,
                created_at: Some(r.created_at.into()),
                expires_at: Some(r.expires_at.into()),
                lease_expires_at: r
                    .lease_expires_at
                    .filter(|_| r.state == State::InProgress)
                    .map(pg_sys::Datum::from),
                fingerprint: Some(bytea(&r.fingerprint)),
            }
        }
    };
    match version {
        CheckVersion::V0_4 => a.row(out.values()),
        CheckVersion::V0_3 => a.row(
            sig::idem_check::Out {
                state: out.state,
                matches: out.matches,
                attempt: out.attempt,
                recovery_point: out.recovery_point,
                http_status: out.http_status,
                response: out.response,
                resource: out.resource,
                created_at: out.created_at,
                expires_at: out.expires_at,
                lease_expires_at: out.lease_expires_at,
            }
            .values(),
        ),
    }
}

pub fn fingerprint(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    // SAFETY: a jsonb argument of a STRICT function.
    let (_, command) =
        unsafe { crate::datum::jsonb_bytes(a.strict(sig::idem_fingerprint::PARAMS.command)) };
    Ok(bytea(&idempotency_core::fingerprint(command)?))
}

pub fn canonical(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    // SAFETY: a jsonb argument of a STRICT function.
    let (_, command) =
        unsafe { crate::datum::jsonb_bytes(a.strict(sig::idem_canonical::PARAMS.command)) };
    let text = idempotency_core::canonical(command)?;
    // SAFETY: copies the bytes into a text value in the current memory context.
    Ok(pg_sys::Datum::from(unsafe {
        pg_sys::cstring_to_text_with_len(text.as_ptr().cast(), text.len() as i32)
    }))
}

pub fn purge(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_purge::PARAMS;
    let max_rows = a.i32(p.max_rows).ok_or(IdemError::NullArgument {
        function: a.function(),
        argument: p.max_rows.name,
    })?;
    if max_rows < 1 {
        return Err(IdemError::InvalidArgument {
            message: "invalid max_rows for idem_purge".into(),
            detail: Some(format!("It is {max_rows}; it must be at least 1.")),
        });
    }
    refuse_read_only(a)?;
    // Distributed by Citus: shard by shard, each on its own node (store/placement.rs).
    let deleted = store::purge(max_rows, Shards::All)?;
    stats::add(Counter::PurgedRows, deleted);
    stats::purge_run_done();
    Ok(pg_sys::Datum::from(deleted as i64))
}

pub fn forget(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    let p = sig::idem_forget::PARAMS;
    let (scope_d, scope) = a.key_text(p.scope)?;
    let (key_d, key) = a.key_text(p.key)?;
    // Waits for a transaction that holds the key, so that a claim in flight is not pulled
    // from under it.
    let Held {
        caller, records, ..
    } = Writer::admit(a, (scope_d, scope), (key_d, key))?.hold(Lock::Wait, Sql::open)?;
    let Some(r) = records
        .lookup(scope_d, key_d, Read::ToWrite)?
        .filter(|r| now() < r.expires_at)
    else {
        return Ok(pg_sys::Datum::from(false));
    };
    if !may_evict(caller, r.owner) {
        return Err(IdemError::NotOwner {
            at: KeyRef::new(scope, key),
            evict: true,
        });
    }
    let forgotten = records.forget(scope_d, key_d)?;
    if forgotten {
        stats::count(Counter::Forgets);
    }
    Ok(pg_sys::Datum::from(forgotten))
}

/// Counts the outcome of an `idem_begin` (and logs a takeover when
/// `idempotency.log_refusals` is on).
fn counted(outcome: &Begin, row: Option<&Row>, scope: &str, key: &str) {
    stats::count(match outcome {
        Begin::Execute(Execute::Claim { .. }) => Counter::ExecuteNew,
        Begin::Execute(Execute::Resume { attempt, .. }) => match row.map(|r| r.state) {
            Some(State::InProgress) => {
                if settings::log_refusals() {
                    crate::errors::log_takeover(
                        scope,
                        key,
                        *attempt,
                        row.and_then(|r| r.lease_expires_at),
                    );
                }
                Counter::ExecuteTakeover
            }
            _ => Counter::ExecuteRetry,
        },
        Begin::Replay => Counter::Replay,
        Begin::InProgress => Counter::InProgress,
    });
}

/// `idem_stats()`: the counters of every database (55000 when the library was not preloaded).
pub fn stats(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    use pgrx::IntoDatum;
    let rows = stats::rows(a.function())?;
    let big = |r: &stats::Row, c: Counter| Some(pg_sys::Datum::from(r.counters[c as usize] as i64));
    let out = rows.iter().filter_map(|r| {
        let datname = match r.database {
            Some(db) => {
                // SAFETY: a syscache lookup; NULL for a database dropped since it counted
                // (its slot is given back by the launcher): such rows are left out.
                let name = unsafe { pg_sys::get_database_name(db) };
                if name.is_null() {
                    return None;
                }
                Some(crate::datum::name(name))
            }
            None => None,
        };
        use Counter::*;
        Some(
            sig::idem_stats::Out {
                datid: r.database.map(pg_sys::Datum::from),
                datname,
                executes_new: big(r, ExecuteNew),
                executes_takeover: big(r, ExecuteTakeover),
                executes_retry: big(r, ExecuteRetry),
                replays: big(r, Replay),
                in_progress: big(r, InProgress),
                command_mismatches: big(r, CommandMismatch),
                not_in_progress: big(r, NotInProgress),
                leases_lost: big(r, LeaseLost),
                permission_denied: big(r, PermissionDenied),
                waits: big(r, Waits),
                wait_time: (r.counters[WaitMicros as usize] as f64 / 1000.0).into_datum(),
                completions: big(r, Completions),
                failures_retryable: big(r, FailuresRetryable),
                failures_final: big(r, FailuresFinal),
                checkpoints: big(r, Checkpoints),
                forgets: big(r, Forgets),
                purged_rows: big(r, PurgedRows),
                purge_runs: big(r, PurgeRuns),
                last_purge: r.last_purge.map(pg_sys::Datum::from),
                stats_reset: Some(pg_sys::Datum::from(r.stats_reset)),
            }
            .values(),
        )
    });
    a.rows(out)
}

pub fn stats_reset(a: &Args) -> Result<pg_sys::Datum, IdemError> {
    stats::reset(a.function()).map(pg_sys::Datum::from)
}
