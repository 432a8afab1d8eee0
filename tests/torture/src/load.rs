//! The torture load: `--connections` threads, each with its own connection, send `--requests`
//! requests in all over `--keys` hot keys, mixing every way a request can go (see `Kind`).
//! Keys come in epochs of `--epoch` requests (key `e<epoch>-k<slot>`), so that each key is
//! hot for a while, gets completed, failed, taken over, and is then left behind.
//!
//! Every request's command and what it was answered is logged into `torture_observations`;
//! effects go into `torture_ledger` in the same transaction as `idem_complete`. The checker
//! (`check.rs`) reads only those tables and the records.
//!
//! `--scopes N` spreads the keys over N scopes (`torture:0` .. `torture:N-1`, a fixed function
//! of the key; 1, the default, is the one scope `torture`). `--citus yes` runs against a Citus
//! coordinator (or, with several `--port`s, a coordinator and its workers) whose records
//! `idem_distribute()` has distributed: the ledger and the observations are distributed by
//! scope too, co-located with the records, so that a request's claim, effect and outcome
//! commit on one node. `--node-failures yes` is for a run during which a node is killed: a
//! request that fails because a node went away is logged as such, and the checker accepts
//! those failures and the commits that they left in doubt (see `check.rs`).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::util::{self, amount_of, command, sqlstate, BeginAnswer, Rng};
use crate::Opts;

pub const SCOPE: &str = "torture";

/// The scope of a key: `torture` with one scope, else `torture:<n>` for a fixed function of
/// the key (so that every retry of a key uses its scope).
pub fn scope_of(key: &str, scopes: u64) -> String {
    if scopes <= 1 {
        SCOPE.to_string()
    } else {
        format!("{SCOPE}:{}", util::amount_of(key) as u64 % scopes)
    }
}

/// The records of this load, in SQL (`scope_of`'s values).
pub const SCOPES_SQL: &str = "(scope = 'torture' OR scope LIKE 'torture:%')";
pub const LEDGER: &str = "torture_ledger";

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One transaction: begin, effect, complete, commit.
    Commit,
    /// One transaction that rolls back after begin (sometimes after the effect too).
    Abort,
    /// One transaction: begin, then a retryable failure (no effect).
    FailRetry,
    /// One transaction: begin, then a final failure (no effect).
    FailFinal,
    /// Phases: begin commits a claim with a short lease; checkpoint; effect + complete later.
    Phased,
    /// Phases whose holder stalls past its lease, then (sometimes checkpoints and) completes
    /// or fails: fenced off with IK003 if the key was taken over meanwhile.
    PhasedStall,
    /// Phases whose holder never comes back (its claim is taken over).
    PhasedAbandon,
    /// Phases that end in a retryable failure in the second transaction.
    PhasedFail,
    /// The key's command with another amount: must be IK001.
    Mismatch,
    /// A retry: of a key whose phased holder stalls or left, once its lease has run out (a
    /// takeover); otherwise of this connection's previous request, at once (wait 100 ms).
    Retry,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Abort => "abort",
            Kind::FailRetry => "fail_retry",
            Kind::FailFinal => "fail_final",
            Kind::Phased => "phased",
            Kind::PhasedStall => "phased_stall",
            Kind::PhasedAbandon => "phased_abandon",
            Kind::PhasedFail => "phased_fail",
            Kind::Mismatch => "mismatch",
            Kind::Retry => "retry",
        }
    }

    fn pick(rng: &mut Rng) -> Kind {
        match rng.below(100) {
            0..=37 => Kind::Commit,
            38..=45 => Kind::Abort,
            46..=51 => Kind::FailRetry,
            52..=53 => Kind::FailFinal,
            54..=63 => Kind::Phased,
            64..=69 => Kind::PhasedStall,
            70..=72 => Kind::PhasedAbandon,
            73..=76 => Kind::PhasedFail,
            77..=87 => Kind::Mismatch,
            _ => Kind::Retry,
        }
    }
}

/// One request as the client saw it: a row of `torture_observations`.
#[derive(Default)]
struct Obs {
    request_id: i64,
    conn: i32,
    kind: String,
    scope: String,
    key: String,
    amount: i64,
    answer: BeginAnswer,
    answered: bool,
    /// The SQLSTATE of the error that ended the request, and in which call.
    sqlstate: Option<String>,
    stage: Option<String>,
    /// This request's own transaction with its effect (or failure) committed.
    committed: bool,
    ledger_id: Option<i64>,
    stalled: bool,
    started_us: i64,
    finished_us: i64,
}

struct Shared {
    next: AtomicU64,
    requests: u64,
    epoch: u64,
    keys: u64,
    scopes: u64,
    lease_ms: u64,
    /// Keys with a committed record of their own command: a different command must be IK001.
    known: Mutex<HashSet<String>>,
    /// Keys whose phased holder stalls or left, with the end of its lease: retries take
    /// them over.
    stalled: Mutex<VecDeque<(String, Instant)>>,
    t0: Instant,
}

pub fn setup(c: &mut Client, citus: bool) -> Result<(), postgres::Error> {
    // On Citus a primary key must hold the distribution column (scope); text COLLATE "C"
    // because Citus co-locates only with a distribution column of the records' type and
    // collation.
    let (ledger_key, observations_key) = if citus {
        ("PRIMARY KEY (scope, id)", "PRIMARY KEY (scope, request_id)")
    } else {
        ("PRIMARY KEY (id)", "PRIMARY KEY (request_id)")
    };
    c.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS idempotency;
         DROP TABLE IF EXISTS torture_ledger, torture_observations;
         DELETE FROM idempotency.records WHERE {SCOPES_SQL};
         -- No unique index on the key: a double effect must show, not be prevented here.
         CREATE TABLE torture_ledger (
             id bigserial,
             scope text COLLATE \"C\" NOT NULL, key text NOT NULL, attempt integer NOT NULL,
             amount bigint NOT NULL, fingerprint bytea NOT NULL, request_id bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT clock_timestamp(), {ledger_key});
         CREATE INDEX ON torture_ledger (scope, key);
         CREATE TABLE torture_observations (
             request_id bigint NOT NULL, conn integer NOT NULL, kind text NOT NULL,
             scope text COLLATE \"C\" NOT NULL, key text NOT NULL, amount bigint NOT NULL,
             outcome text, state text, attempt integer, recovery_point text, recovery_data jsonb,
             http_status integer, response jsonb, resource text,
             sqlstate text, stage text, committed boolean NOT NULL, ledger_id bigint,
             stalled boolean NOT NULL, started_us bigint NOT NULL, finished_us bigint NOT NULL,
             {observations_key});"
    ))?;
    if citus {
        c.batch_execute(
            "SELECT create_distributed_table('torture_ledger', 'scope',
                                             colocate_with => 'idempotency.records');
             SELECT create_distributed_table('torture_observations', 'scope',
                                             colocate_with => 'idempotency.records');",
        )?;
    }
    Ok(())
}

pub fn run(opts: &Opts) -> Result<u64, String> {
    let connections: u64 = opts.num("connections", 32);
    let requests: u64 = opts.num("requests", 100_000);
    let keys: u64 = opts.num("keys", 16);
    let epoch: u64 = opts.num("epoch", keys * 8);
    let lease_ms: u64 = opts.num("lease-ms", 300);
    let seed: u64 = opts.num("seed", 1);
    let scopes: u64 = opts.num("scopes", 1);
    let citus = opts.str("citus", "no") == "yes";
    let ports = util::ports(opts);
    let mut c = util::connect(opts).map_err(|e| format!("connect: {e}"))?;
    setup(&mut c, citus).map_err(|e| format!("setup: {e}"))?;
    println!(
        "load: {connections} connections, {requests} requests, {keys} hot keys per epoch of \
         {epoch} requests, {scopes} scope(s), lease {lease_ms} ms, seed {seed}{}{}",
        if ports.len() > 1 {
            format!(", connections spread over ports {ports:?}")
        } else {
            String::new()
        },
        if citus { ", Citus" } else { "" }
    );
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        requests,
        epoch,
        keys,
        scopes,
        lease_ms,
        known: Mutex::new(HashSet::new()),
        stalled: Mutex::new(VecDeque::new()),
        t0: Instant::now(),
    });
    let mut handles = Vec::new();
    for conn in 0..connections {
        let shared = shared.clone();
        let mut client =
            util::connect_to(opts, conn as usize).map_err(|e| format!("connect: {e}"))?;
        handles.push(thread::spawn(move || -> Result<usize, String> {
            let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(conn + 1));
            let obs = worker(&mut client, &shared, conn as i32, &mut rng)?;
            flush(&mut client, &obs).map_err(|e| format!("logging observations: {e}"))?;
            Ok(obs.len())
        }));
    }
    let mut sent = 0;
    for h in handles {
        sent += h
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    let secs = shared.t0.elapsed().as_secs_f64();
    println!(
        "load: {sent} requests in {secs:.1} s ({:.0} requests/s)",
        sent as f64 / secs
    );
    crate::check::run(opts)
}

fn worker(c: &mut Client, s: &Shared, conn: i32, rng: &mut Rng) -> Result<Vec<Obs>, String> {
    let mut out = Vec::new();
    let mut previous: Option<(String, i64)> = None;
    let mut seq: i64 = 0;
    loop {
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        if n >= s.requests {
            return Ok(out);
        }
        seq += 1;
        let mut kind = Kind::pick(rng);
        let mut key = format!("e{}-k{}", n / s.epoch, rng.below(s.keys));
        let mut amount = amount_of(&key);
        match kind {
            Kind::Retry => match take_stalled(s).or_else(|| previous.clone()) {
                Some((k, a)) => {
                    key = k;
                    amount = a;
                }
                None => kind = Kind::Commit,
            },
            Kind::Mismatch => {
                if s.known.lock().unwrap().contains(&key) {
                    amount = amount_of(&key) + 1 + rng.below(100) as i64;
                } else {
                    kind = Kind::Commit;
                }
            }
            _ => {}
        }
        let mut o = Obs {
            request_id: conn as i64 * 1_000_000_000 + seq,
            conn,
            kind: kind.name().into(),
            scope: scope_of(&key, s.scopes),
            key: key.clone(),
            amount,
            started_us: s.t0.elapsed().as_micros() as i64,
            ..Obs::default()
        };
        let result = match kind {
            Kind::Phased | Kind::PhasedStall | Kind::PhasedAbandon | Kind::PhasedFail => {
                phased(c, s, kind, rng, &mut o)
            }
            Kind::Mismatch => mismatch(c, &mut o),
            _ => one_transaction(c, kind, rng, &mut o),
        };
        if let Err(e) = result {
            match sqlstate(&e) {
                Some(code) => o.sqlstate = Some(code),
                None => return Err(format!("request {}: {e}", o.request_id)),
            }
        }
        if o.answered && o.kind != "mismatch" && knows_committed(&o) {
            s.known.lock().unwrap().insert(key.clone());
        }
        o.finished_us = s.t0.elapsed().as_micros() as i64;
        if kind != Kind::Mismatch {
            previous = Some((key, amount));
        }
        out.push(o);
    }
}

/// A stalled or abandoned key whose lease has run out, with its command's amount.
fn take_stalled(s: &Shared) -> Option<(String, i64)> {
    let mut q = s.stalled.lock().unwrap();
    match q.front() {
        Some((_, deadline)) if *deadline <= Instant::now() => q.pop_front().map(|(k, _)| {
            let a = amount_of(&k);
            (k, a)
        }),
        _ => None,
    }
}

/// Whether the answer shows a committed record of the key's own command.
fn knows_committed(o: &Obs) -> bool {
    match o.answer.outcome.as_str() {
        "replay" => true,
        // attempt is set only when a committed record is visible
        "in_progress" => o.answer.attempt.is_some(),
        // a phased claim commits on its own; a one-transaction one with the request
        "execute" => o.committed || o.kind.starts_with("phased"),
        _ => false,
    }
}

fn one_transaction(
    c: &mut Client,
    kind: Kind,
    rng: &mut Rng,
    o: &mut Obs,
) -> Result<(), postgres::Error> {
    let cmd = command(&o.key, o.amount);
    let wait = if kind == Kind::Retry {
        Some(100)
    } else if rng.pct(50) {
        Some(0)
    } else {
        Some(10 + rng.below(90))
    };
    let mut tx = c.transaction()?;
    o.stage = Some("begin".into());
    o.answer = util::begin(&mut tx, &o.scope, &o.key, &cmd, None, wait)?;
    o.answered = true;
    if o.answer.outcome != "execute" {
        o.stage = Some("commit".into());
        tx.commit()?;
        o.stage = None;
        return Ok(());
    }
    let attempt = o.answer.attempt.unwrap_or(0);
    match kind {
        Kind::Abort => {
            if rng.pct(50) {
                o.stage = Some("effect".into());
                util::insert_ledger(
                    &mut tx,
                    LEDGER,
                    &o.scope,
                    &o.key,
                    attempt,
                    o.amount,
                    &cmd,
                    o.request_id,
                )?;
            }
            o.stage = Some("rollback".into());
            tx.rollback()?;
            o.stage = None;
            Ok(())
        }
        Kind::FailRetry | Kind::FailFinal => {
            o.stage = Some("fail".into());
            util::fail(
                &mut tx,
                &o.scope,
                &o.key,
                o.amount,
                attempt,
                kind == Kind::FailRetry,
            )?;
            o.stage = Some("commit".into());
            tx.commit()?;
            o.stage = None;
            o.committed = true;
            Ok(())
        }
        _ => effect_complete_commit(tx, o, attempt, &cmd),
    }
}

fn phased(
    c: &mut Client,
    s: &Shared,
    kind: Kind,
    rng: &mut Rng,
    o: &mut Obs,
) -> Result<(), postgres::Error> {
    let cmd = command(&o.key, o.amount);
    // The claim commits on its own (autocommit).
    o.stage = Some("begin".into());
    o.answer = util::begin(c, &o.scope, &o.key, &cmd, Some(s.lease_ms), Some(0))?;
    o.answered = true;
    if o.answer.outcome != "execute" {
        o.stage = None;
        return Ok(());
    }
    let attempt = o.answer.attempt.unwrap_or(0);
    o.stage = Some("claimed".into());
    if rng.pct(50) {
        o.stage = Some("checkpoint".into());
        util::checkpoint(c, &o.scope, &o.key, &format!("reserved-{attempt}"), attempt)?;
        o.stage = Some("claimed".into());
    }
    if matches!(kind, Kind::PhasedAbandon | Kind::PhasedStall) {
        let lease_end = Instant::now() + Duration::from_millis(s.lease_ms);
        s.stalled
            .lock()
            .unwrap()
            .push_back((o.key.clone(), lease_end));
    }
    match kind {
        Kind::PhasedAbandon => return Ok(()),
        Kind::PhasedStall => {
            o.stalled = true;
            thread::sleep(Duration::from_millis(s.lease_ms + 20 + rng.below(400)));
            // Back from the stall, some holders first record progress: fenced too (IK003)
            // if the key was taken over meanwhile.
            if rng.pct(30) {
                o.stage = Some("checkpoint".into());
                util::checkpoint(c, &o.scope, &o.key, &format!("resumed-{attempt}"), attempt)?;
                o.stage = Some("claimed".into());
            }
        }
        _ => thread::sleep(Duration::from_millis(rng.below(10))),
    }
    let mut tx = c.transaction()?;
    // Some stalled holders report a failure instead: fenced like a completion.
    if kind == Kind::PhasedFail || (kind == Kind::PhasedStall && rng.pct(20)) {
        o.stage = Some("fail".into());
        util::fail(&mut tx, &o.scope, &o.key, o.amount, attempt, true)?;
        o.stage = Some("commit".into());
        tx.commit()?;
        o.stage = None;
        o.committed = true;
        return Ok(());
    }
    effect_complete_commit(tx, o, attempt, &cmd)
}

/// The executing request's work: the effect (a ledger row), `idem_complete` describing it, and
/// the commit of both, with `o.stage` naming the step in flight. A holder whose lease was taken
/// over gets IK003 at the completion; its transaction, and with it the ledger row, rolls back
/// (the Transaction is dropped without commit).
fn effect_complete_commit(
    mut tx: postgres::Transaction<'_>,
    o: &mut Obs,
    attempt: i32,
    cmd: &str,
) -> Result<(), postgres::Error> {
    o.stage = Some("effect".into());
    let id = util::insert_ledger(
        &mut tx,
        LEDGER,
        &o.scope,
        &o.key,
        attempt,
        o.amount,
        cmd,
        o.request_id,
    )?;
    o.stage = Some("complete".into());
    util::complete(&mut tx, &o.scope, &o.key, id, o.amount, attempt)?;
    o.stage = Some("commit".into());
    // Known before the COMMIT is acknowledged: a COMMIT that a node failure leaves in doubt
    // names the effect it may have committed (checked with --node-failures).
    o.ledger_id = Some(id);
    tx.commit()?;
    o.stage = None;
    o.committed = true;
    Ok(())
}

fn mismatch(c: &mut Client, o: &mut Obs) -> Result<(), postgres::Error> {
    let cmd = command(&o.key, o.amount);
    o.stage = Some("begin".into());
    o.answer = util::begin(c, &o.scope, &o.key, &cmd, None, Some(0))?;
    o.answered = true;
    o.stage = None;
    Ok(())
}

/// Writes a connection's observations in one statement (arrays unnested server-side).
fn flush(c: &mut Client, obs: &[Obs]) -> Result<(), postgres::Error> {
    for chunk in obs.chunks(5000) {
        macro_rules! col {
            ($f:expr) => {
                chunk.iter().map($f).collect::<Vec<_>>()
            };
        }
        let a_id = col!(|o| o.request_id);
        let a_conn = col!(|o| o.conn);
        let a_kind = col!(|o| o.kind.clone());
        let a_scope = col!(|o| o.scope.clone());
        let a_key = col!(|o| o.key.clone());
        let a_amount = col!(|o| o.amount);
        let ans = |o: &Obs| {
            if o.answered {
                Some(o.answer.clone())
            } else {
                None
            }
        };
        let a_outcome = col!(|o| ans(o).map(|a| a.outcome));
        let a_state = col!(|o| ans(o).map(|a| a.state));
        let a_attempt = col!(|o| ans(o).and_then(|a| a.attempt));
        let a_rp = col!(|o| ans(o).and_then(|a| a.recovery_point));
        let a_rd = col!(|o| ans(o).and_then(|a| a.recovery_data));
        let a_http = col!(|o| ans(o).and_then(|a| a.http_status));
        let a_resp = col!(|o| ans(o).and_then(|a| a.response));
        let a_res = col!(|o| ans(o).and_then(|a| a.resource));
        let a_code = col!(|o| o.sqlstate.clone());
        let a_stage = col!(|o| o.stage.clone());
        let a_committed = col!(|o| o.committed);
        let a_ledger = col!(|o| o.ledger_id);
        let a_stalled = col!(|o| o.stalled);
        let a_t0 = col!(|o| o.started_us);
        let a_t1 = col!(|o| o.finished_us);
        c.execute(
            "INSERT INTO torture_observations SELECT id, conn, kind, scope, key, amount, \
                 outcome, state, attempt, rp, rd::jsonb, http, resp::jsonb, res, code, stage, \
                 committed, ledger, stalled, t0, t1 \
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[], \
                         $6::text[], $7::text[], $8::int[], $9::text[], $10::text[], $11::int[], \
                         $12::text[], $13::text[], $14::text[], $15::text[], $16::bool[], \
                         $17::bigint[], $18::bool[], $19::bigint[], $20::bigint[], $21::text[]) \
                 AS u(id, conn, kind, key, amount, outcome, state, attempt, rp, rd, http, resp, \
                      res, code, stage, committed, ledger, stalled, t0, t1, scope)",
            &[
                &a_id,
                &a_conn,
                &a_kind,
                &a_key,
                &a_amount,
                &a_outcome,
                &a_state,
                &a_attempt,
                &a_rp,
                &a_rd,
                &a_http,
                &a_resp,
                &a_res,
                &a_code,
                &a_stage,
                &a_committed,
                &a_ledger,
                &a_stalled,
                &a_t0,
                &a_t1,
                &a_scope,
            ],
        )?;
    }
    Ok(())
}
