//! Crash recovery: `--workers` connections run one-transaction and phased flows on fresh keys
//! while, after a random delay, the postmaster (even cycles) or one worker's backend (odd
//! cycles) is killed with SIGKILL. A killed backend makes the postmaster kill the others and
//! reinitialise (crash recovery from WAL); a killed postmaster is restarted with
//! `scripts/pgcluster.sh start`, which runs crash recovery. Each client remembers what it sent
//! and which commits were acknowledged (`Track`); after every restart the checks are:
//!
//! - every acknowledged commit is still there with its outcome and effect (all cycles so far);
//! - a one-transaction flow whose COMMIT was not acknowledged either committed fully (record
//!   completed with its ledger row) or left nothing (no record, no ledger row), and a retry
//!   executes it afresh;
//! - a phased claim whose holder was killed is still in progress with its last acknowledged
//!   (or in-flight) checkpoint, and after its lease `idem_begin` takes it over with attempt + 1
//!   and that recovery point; the dead holder's complete then gets IK003;
//! - the ledger never holds two effects for a key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::util::{self, amount_of, command, sqlstate, Rng};
use crate::Opts;

const SCOPE: &str = "crash";
const LEDGER: &str = "crash_ledger";

/// What the client knows about one key.
#[derive(Clone, Debug, Default)]
struct Track {
    phased: bool,
    /// An acknowledged completion: (ledger id, attempt).
    done: Option<(i64, i32)>,
    /// A COMMIT of effect + complete that was sent but not acknowledged: (ledger id, attempt, request id).
    in_flight: Option<(i64, i32, i64)>,
    /// Phases: the acknowledged claim's attempt, and whether a claim was sent unacknowledged.
    claim: Option<i32>,
    claim_in_flight: bool,
    /// Phases: the last acknowledged checkpoint, and one sent but not acknowledged.
    point: Option<String>,
    point_in_flight: Option<String>,
    /// Settled by a check (taken over and completed, or found empty and re-executed).
    settled: bool,
}

struct Shared {
    tracks: Mutex<HashMap<String, Track>>,
    anomalies: Mutex<Vec<String>>,
    pids: Mutex<Vec<i32>>,
    stop: AtomicBool,
    lease_ms: u64,
}

impl Shared {
    fn anomaly(&self, msg: String) {
        println!("crash: ANOMALY {msg}");
        self.anomalies.lock().unwrap().push(msg);
    }
    fn update(&self, key: &str, f: impl FnOnce(&mut Track)) {
        f(self
            .tracks
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default())
    }
}

pub fn run(opts: &Opts) -> Result<u64, String> {
    let cycles: u32 = opts.num("cycles", 20);
    let workers: u32 = opts.num("workers", 8);
    let lease_ms: u64 = opts.num("lease-ms", 1000);
    let seed: u64 = opts.num("seed", 1);
    let pgdata = opts.str("pgdata", "");
    let pgcluster = opts.str("pgcluster", "");
    if pgdata.is_empty() || pgcluster.is_empty() {
        return Err("--pgdata and --pgcluster are needed".into());
    }
    let mut c = util::connect(opts).map_err(|e| format!("connect: {e}"))?;
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS idempotency;
         DROP TABLE IF EXISTS crash_ledger;
         DELETE FROM idempotency.records WHERE scope = 'crash';
         CREATE TABLE crash_ledger (
             id bigserial PRIMARY KEY,
             scope text NOT NULL, key text NOT NULL, attempt integer NOT NULL,
             amount bigint NOT NULL, fingerprint bytea NOT NULL, request_id bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE INDEX ON crash_ledger (scope, key);",
    )
    .map_err(|e| format!("setup: {e}"))?;
    // --unsafe-async-commit yes: a check of the checker. Commits are acknowledged before their
    // WAL is flushed and the WAL writer waits long, so a kill must lose acknowledged commits,
    // and the run must report them.
    if opts.str("unsafe-async-commit", "no") == "yes" {
        // One statement each: ALTER SYSTEM refuses to run in a (multi-statement) transaction.
        for sql in [
            "ALTER SYSTEM SET synchronous_commit = off",
            "ALTER SYSTEM SET wal_writer_delay = '10s'",
            "ALTER SYSTEM SET wal_writer_flush_after = 0",
            "SELECT pg_reload_conf()",
        ] {
            c.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))?;
        }
        drop(c);
        c = util::connect(opts).map_err(|e| format!("connect: {e}"))?;
        println!(
            "crash: UNSAFE: synchronous_commit off, wal_writer_delay 10s: expect lost commits"
        );
    }
    for setting in ["fsync", "synchronous_commit"] {
        let v: String = c
            .query_one(&format!("SHOW {setting}"), &[])
            .map_err(|e| e.to_string())?
            .get(0);
        if v != "on" && opts.str("unsafe-async-commit", "no") != "yes" {
            return Err(format!("{setting} is {v}: the crash test needs it on"));
        }
    }
    drop(c);
    println!("crash: {cycles} cycles, {workers} workers, lease {lease_ms} ms, seed {seed}");

    let shared = Arc::new(Shared {
        tracks: Mutex::new(HashMap::new()),
        anomalies: Mutex::new(Vec::new()),
        pids: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        lease_ms,
    });
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    // in-flight committed, in-flight vanished, taken over, fenced, killed before COMMIT
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64);
    for cycle in 0..cycles {
        shared.stop.store(false, Ordering::SeqCst);
        shared.pids.lock().unwrap().clear();
        let recoveries_before = recoveries(&opts.str("host", ""));
        let mut handles = Vec::new();
        for w in 0..workers {
            let shared = shared.clone();
            let mut client = connect_retry(opts, Duration::from_secs(60))?;
            let wseed = seed ^ ((cycle as u64) << 32) ^ (w as u64 + 1);
            handles.push(thread::spawn(move || {
                worker(&mut client, &shared, cycle, w, wseed)
            }));
        }
        let delay = 300 + rng.below(1200);
        thread::sleep(Duration::from_millis(delay));
        let what = if cycle % 2 == 0 {
            let pm = postmaster_pid(&pgdata)?;
            let children = children_of(pm);
            sigkill(pm)?;
            shared.stop.store(true, Ordering::SeqCst);
            // The orphaned backends exit when they notice the postmaster died; the new
            // postmaster refuses to start while they still hold the old shared memory.
            wait_gone(&children, Duration::from_secs(20));
            // pg_ctl takes a dead postmaster that is not reaped yet (a zombie) for a live
            // one; init reaps it within seconds.
            let reaped = Instant::now();
            while std::path::Path::new(&format!("/proc/{pm}")).exists()
                && reaped.elapsed() < Duration::from_secs(15)
            {
                thread::sleep(Duration::from_millis(50));
            }
            // An init that never reaps (some containers) leaves the zombie for good: then the
            // lock file of the dead postmaster (and of none of its children, all gone) is
            // removed, as an operator would.
            if std::path::Path::new(&format!("/proc/{pm}")).exists() && !alive(pm) {
                std::fs::remove_file(format!("{pgdata}/postmaster.pid"))
                    .map_err(|e| format!("removing the dead postmaster's lock file: {e}"))?;
            }
            let mut tries = 0;
            loop {
                let st = std::process::Command::new("bash")
                    .arg(&pgcluster)
                    .args(["start", &opts.str("host", ""), &opts.str("port", "")])
                    .status()
                    .map_err(|e| format!("pgcluster start: {e}"))?;
                if st.success() {
                    break;
                }
                tries += 1;
                if tries == 3 {
                    return Err("the server did not restart after the postmaster was killed".into());
                }
                // e.g. a straggler still attached to the old shared memory
                wait_gone(&children_of(pm), Duration::from_secs(5));
                thread::sleep(Duration::from_secs(1));
            }
            format!("kill -9 postmaster {pm}")
        } else {
            let waited = Instant::now();
            while shared.pids.lock().unwrap().is_empty()
                && waited.elapsed() < Duration::from_secs(30)
            {
                thread::sleep(Duration::from_millis(50));
            }
            let pids = shared.pids.lock().unwrap().clone();
            if pids.is_empty() {
                return Err("no worker connected: no backend to kill".into());
            }
            let pid = pids[rng.below(pids.len() as u64) as usize];
            sigkill(pid)?;
            shared.stop.store(true, Ordering::SeqCst);
            // The postmaster now kills every backend and reinitialises.
            thread::sleep(Duration::from_millis(500));
            format!("kill -9 backend {pid}")
        };
        for h in handles {
            h.join().map_err(|_| "a worker panicked".to_string())?;
        }
        let mut c = connect_retry(opts, Duration::from_secs(120))?;
        // Proof that the kill was a crash: the server ran crash recovery from its WAL.
        if recoveries(&opts.str("host", "")) <= recoveries_before {
            shared.anomaly(format!(
                "cycle {}: {what} caused no crash recovery",
                cycle + 1
            ));
        }
        let r = check(&mut c, &shared, cycle)?;
        totals.0 += r.in_flight_committed;
        totals.1 += r.in_flight_vanished;
        totals.2 += r.taken_over;
        totals.3 += r.fenced;
        totals.4 += r.fresh;
        println!(
            "crash: cycle {:>2}: {what} after {delay} ms, crash recovery ran; {} acknowledged \
             commits checked; COMMIT in flight: {} committed, {} left nothing; {} flows killed \
             before COMMIT left nothing; {} stalled claims taken over, {} stale holders fenced \
             (IK003); anomalies so far {}",
            cycle + 1,
            r.acked,
            r.in_flight_committed,
            r.in_flight_vanished,
            r.fresh,
            r.taken_over,
            r.fenced,
            shared.anomalies.lock().unwrap().len()
        );
    }
    let tracks = shared.tracks.lock().unwrap();
    let anomalies = shared.anomalies.lock().unwrap().len() as u64;
    println!(
        "crash: {cycles} cycles in {:.0} s: {} keys, {} completed; COMMIT in flight: {} \
         committed, {} left nothing; {} flows killed before COMMIT left nothing; {} stalled \
         claims taken over, {} stale holders fenced; {anomalies} anomalies",
        t0.elapsed().as_secs_f64(),
        tracks.len(),
        tracks.values().filter(|t| t.done.is_some()).count(),
        totals.0,
        totals.1,
        totals.4,
        totals.2,
        totals.3
    );
    Ok(anomalies)
}

/// How many times the server log says crash recovery started.
fn recoveries(dir: &str) -> usize {
    std::fs::read_to_string(format!("{dir}/server.log"))
        .map(|s| s.matches("automatic recovery in progress").count())
        .unwrap_or(0)
}

fn connect_retry(opts: &Opts, limit: Duration) -> Result<Client, String> {
    let start = Instant::now();
    loop {
        match util::connect(opts) {
            Ok(mut c) => {
                // A connection made just before the postmaster noticed a crash may die at once.
                if c.simple_query("SELECT 1").is_ok() {
                    return Ok(c);
                }
            }
            Err(e) if start.elapsed() > limit => return Err(format!("cannot reconnect: {e}")),
            Err(_) => {}
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn postmaster_pid(pgdata: &str) -> Result<i32, String> {
    let s = std::fs::read_to_string(format!("{pgdata}/postmaster.pid"))
        .map_err(|e| format!("postmaster.pid: {e}"))?;
    s.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| "postmaster.pid has no pid".into())
}

/// The pids whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(parent)
        {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose (it holds no shared memory).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[i32], limit: Duration) {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        if start.elapsed() > limit {
            for &p in pids.iter().filter(|&&p| alive(p)) {
                let _ = sigkill(p);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn sigkill(pid: i32) -> Result<(), String> {
    // bash's builtin kill: no dependence on a kill binary being installed.
    let st = std::process::Command::new("bash")
        .args(["-c", "kill -9 \"$1\"", "kill", &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("kill -9 {pid} failed"))
    }
}

/// Errors that a crash explains: a lost connection, or the server shutting the session down.
fn crash_error(e: &postgres::Error) -> bool {
    match sqlstate(e) {
        None => true,
        Some(code) => code.starts_with("08") || code.starts_with("57P"),
    }
}

fn worker(c: &mut Client, s: &Shared, cycle: u32, w: u32, seed: u64) {
    let mut rng = Rng::new(seed);
    match c.query_one("SELECT pg_backend_pid()", &[]) {
        Ok(r) => s.pids.lock().unwrap().push(r.get(0)),
        Err(_) => return,
    }
    let mut n = 0i64;
    while !s.stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("c{cycle}-w{w}-n{n}");
        let request_id = (cycle as i64) * 1_000_000_000 + (w as i64) * 10_000_000 + n;
        let roll = rng.below(100);
        let r = if roll < 50 {
            one_transaction(c, s, &key, request_id, &mut rng)
        } else if roll < 85 {
            phased(c, s, &key, request_id, &mut rng)
        } else {
            replay_old(c, s, &mut rng)
        };
        if let Err(e) = r {
            if !crash_error(&e) {
                s.anomaly(format!("{key}: unexpected error {e:?}"));
            }
            return;
        }
    }
}

/// Sometimes sleeps inside the transaction, so that kills land between its statements too.
fn maybe_sleep(tx: &mut postgres::Transaction, rng: &mut Rng) -> Result<(), postgres::Error> {
    if rng.pct(30) {
        let secs = rng.below(30) as f64 / 1000.0;
        tx.execute("SELECT pg_sleep($1)", &[&secs])?;
    }
    Ok(())
}

fn one_transaction(
    c: &mut Client,
    s: &Shared,
    key: &str,
    request_id: i64,
    rng: &mut Rng,
) -> Result<(), postgres::Error> {
    s.update(key, |_| {});
    let cmd = command(key, amount_of(key));
    let mut tx = c.transaction()?;
    let a = util::begin(&mut tx, SCOPE, key, &cmd, None, Some(0))?;
    if a.outcome != "execute" || a.attempt != Some(1) {
        s.anomaly(format!("{key}: a fresh key's begin gave {a:?}"));
        return Ok(());
    }
    maybe_sleep(&mut tx, rng)?;
    let id = util::insert_ledger(
        &mut tx,
        LEDGER,
        SCOPE,
        key,
        1,
        amount_of(key),
        &cmd,
        request_id,
    )?;
    util::complete(&mut tx, SCOPE, key, id, amount_of(key), 1)?;
    maybe_sleep(&mut tx, rng)?;
    s.update(key, |t| t.in_flight = Some((id, 1, request_id)));
    tx.commit()?;
    s.update(key, |t| {
        t.in_flight = None;
        t.done = Some((id, 1));
    });
    Ok(())
}

fn phased(
    c: &mut Client,
    s: &Shared,
    key: &str,
    request_id: i64,
    rng: &mut Rng,
) -> Result<(), postgres::Error> {
    let cmd = command(key, amount_of(key));
    s.update(key, |t| {
        t.phased = true;
        t.claim_in_flight = true;
    });
    let a = util::begin(c, SCOPE, key, &cmd, Some(s.lease_ms), Some(0))?;
    if a.outcome != "execute" || a.attempt != Some(1) {
        s.anomaly(format!("{key}: a fresh key's begin gave {a:?}"));
        return Ok(());
    }
    s.update(key, |t| {
        t.claim_in_flight = false;
        t.claim = Some(1);
    });
    for point in ["charged", "notified"] {
        if rng.pct(40) {
            break;
        }
        s.update(key, |t| t.point_in_flight = Some(point.to_string()));
        util::checkpoint(c, SCOPE, key, point, 1)?;
        s.update(key, |t| {
            t.point_in_flight = None;
            t.point = Some(point.to_string());
        });
    }
    // The holder stalls (as if it died): its claim waits for a takeover after its lease.
    if rng.pct(30) {
        return Ok(());
    }
    let mut tx = c.transaction()?;
    let id = util::insert_ledger(
        &mut tx,
        LEDGER,
        SCOPE,
        key,
        1,
        amount_of(key),
        &cmd,
        request_id,
    )?;
    maybe_sleep(&mut tx, rng)?;
    util::complete(&mut tx, SCOPE, key, id, amount_of(key), 1)?;
    s.update(key, |t| t.in_flight = Some((id, 1, request_id)));
    tx.commit()?;
    s.update(key, |t| {
        t.in_flight = None;
        t.done = Some((id, 1));
    });
    Ok(())
}

/// A retry of a key completed earlier (in this cycle or one before a crash): a replay of the
/// acknowledged outcome.
fn replay_old(c: &mut Client, s: &Shared, rng: &mut Rng) -> Result<(), postgres::Error> {
    let pick = {
        let t = s.tracks.lock().unwrap();
        let done: Vec<(&String, i64)> = t
            .iter()
            .filter_map(|(k, t)| t.done.map(|(id, _)| (k, id)))
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        let (k, id) = done[rng.below(done.len() as u64) as usize];
        (k.clone(), id)
    };
    let (key, id) = pick;
    let a = util::begin(
        c,
        SCOPE,
        &key,
        &command(&key, amount_of(&key)),
        None,
        Some(0),
    )?;
    if a.outcome != "replay" || a.resource.as_deref() != Some(&format!("ledger/{id}")) {
        s.anomaly(format!(
            "{key}: retry of an acknowledged completion (ledger/{id}) gave {a:?}"
        ));
    }
    Ok(())
}

#[derive(Default)]
struct CycleReport {
    acked: u64,
    /// Flows killed before their COMMIT was sent that left nothing (and re-executed).
    fresh: u64,
    in_flight_committed: u64,
    in_flight_vanished: u64,
    taken_over: u64,
    fenced: u64,
}

/// The checks after a restart, over every key of every cycle so far.
fn check(c: &mut Client, s: &Shared, cycle: u32) -> Result<CycleReport, String> {
    let err = |e: postgres::Error| format!("check: {e:?}");
    let mut rep = CycleReport::default();
    let rows = c
        .query(
            "SELECT coalesce(r.key, l.key), r.state::text, r.attempt, r.resource, r.recovery_point,
                    coalesce(l.ids, '{}'), coalesce(l.requests, '{}')
             FROM idempotency.records r
             FULL JOIN (SELECT key, array_agg(id ORDER BY id) AS ids,
                               array_agg(request_id ORDER BY id) AS requests
                        FROM crash_ledger GROUP BY key) l ON l.key = r.key
             WHERE r.scope = 'crash' OR r.scope IS NULL",
            &[],
        )
        .map_err(err)?;
    struct Found {
        state: Option<String>,
        attempt: Option<i32>,
        resource: Option<String>,
        point: Option<String>,
        ids: Vec<i64>,
        requests: Vec<i64>,
    }
    let mut found: HashMap<String, Found> = HashMap::new();
    for r in rows {
        let key: Option<String> = r.get(0);
        let key = key.unwrap_or_default();
        let f = Found {
            state: r.get(1),
            attempt: r.get(2),
            resource: r.get(3),
            point: r.get(4),
            ids: r.get(5),
            requests: r.get(6),
        };
        if f.ids.len() > 1 {
            s.anomaly(format!("{key}: double effect, ledger rows {:?}", f.ids));
        }
        found.insert(key, f);
    }
    let none = Found {
        state: None,
        attempt: None,
        resource: None,
        point: None,
        ids: vec![],
        requests: vec![],
    };
    // Keys a check must settle now: (key, attempt of the record, its recovery point, phased).
    let mut stalled: Vec<(String, i32, Option<String>)> = Vec::new();
    let mut fresh: Vec<String> = Vec::new();
    let mut tracks = s.tracks.lock().unwrap();
    for (key, t) in tracks.iter_mut() {
        let f = found.get(key).unwrap_or(&none);
        let completed_as = |id: i64| {
            f.state.as_deref() == Some("c")
                && f.resource.as_deref() == Some(&format!("ledger/{id}"))
                && f.ids == [id]
        };
        if let Some((id, attempt)) = t.done {
            rep.acked += 1;
            if !completed_as(id) || f.attempt != Some(attempt) {
                s.anomaly(format!(
                    "{key}: acknowledged completion ledger/{id} lost: record {:?} attempt {:?} \
                     resource {:?}, ledger {:?}",
                    f.state, f.attempt, f.resource, f.ids
                ));
            }
            continue;
        }
        if t.settled {
            continue;
        }
        if let Some((id, attempt, request_id)) = t.in_flight.take() {
            if completed_as(id) && f.attempt == Some(attempt) {
                rep.in_flight_committed += 1;
                t.done = Some((id, attempt));
                continue;
            }
            rep.in_flight_vanished += 1;
            if f.requests.contains(&request_id) {
                s.anomaly(format!(
                    "{key}: the effect of an unacknowledged commit survived without its completion"
                ));
            }
        }
        if !f.ids.is_empty() {
            s.anomaly(format!(
                "{key}: an effect {:?} without an acknowledged completion",
                f.ids
            ));
        }
        if !t.phased {
            // A one-transaction claim never commits without its completion.
            if f.state.is_some() {
                s.anomaly(format!(
                    "{key}: an uncommitted one-transaction claim survived: {:?}",
                    f.state
                ));
            } else {
                fresh.push(key.clone());
            }
            continue;
        }
        match (&f.state, t.claim) {
            (None, None) if t.claim_in_flight => fresh.push(key.clone()),
            (Some(st), _) if st == "p" && (t.claim.is_some() || t.claim_in_flight) => {
                let attempt = f.attempt.unwrap_or(0);
                let point_ok = f.point == t.point
                    || (t.point_in_flight.is_some() && f.point == t.point_in_flight);
                if attempt != t.claim.unwrap_or(1) || !point_ok {
                    s.anomaly(format!(
                        "{key}: stalled claim is attempt {attempt} at {:?}; acknowledged attempt \
                         {:?} at {:?} (in flight {:?})",
                        f.point, t.claim, t.point, t.point_in_flight
                    ));
                }
                stalled.push((key.clone(), attempt, f.point.clone()));
            }
            _ => s.anomaly(format!(
                "{key}: phased key in state {:?}, acknowledged claim {:?}",
                f.state, t.claim
            )),
        }
    }
    drop(tracks);

    // Fresh keys (nothing committed): a retry executes attempt 1 and completes.
    rep.fresh = fresh.len() as u64;
    for key in &fresh {
        let cmd = command(key, amount_of(key));
        let mut tx = c.transaction().map_err(err)?;
        let a = util::begin(&mut tx, SCOPE, key, &cmd, None, Some(0)).map_err(err)?;
        if a.outcome != "execute" || a.attempt != Some(1) || a.recovery_point.is_some() {
            s.anomaly(format!("{key}: a key that left nothing: retry gave {a:?}"));
            continue;
        }
        let id = util::insert_ledger(&mut tx, LEDGER, SCOPE, key, 1, amount_of(key), &cmd, -1)
            .map_err(err)?;
        util::complete(&mut tx, SCOPE, key, id, amount_of(key), 1).map_err(err)?;
        tx.commit().map_err(err)?;
        s.update(key, |t| t.done = Some((id, 1)));
    }

    // Stalled claims: wait for their leases, take them over, then fence the dead holder.
    if !stalled.is_empty() {
        let row = c
            .query_one(
                "SELECT coalesce(extract(epoch FROM max(lease_expires_at) - clock_timestamp()), 0)::float8
                 FROM idempotency.records WHERE scope = 'crash' AND state = 'p'",
                &[],
            )
            .map_err(err)?;
        let wait: f64 = row.get(0);
        if wait > 0.0 {
            thread::sleep(Duration::from_secs_f64(wait + 0.05));
        }
    }
    for (key, attempt, point) in &stalled {
        let cmd = command(key, amount_of(key));
        let mut tx = c.transaction().map_err(err)?;
        let a = util::begin(&mut tx, SCOPE, key, &cmd, None, Some(0)).map_err(err)?;
        if a.outcome != "execute" || a.attempt != Some(attempt + 1) || &a.recovery_point != point {
            s.anomaly(format!(
                "{key}: takeover after the lease gave {a:?}; expected execute attempt {} at {point:?}",
                attempt + 1
            ));
            continue;
        }
        let next = attempt + 1;
        let rid = -(cycle as i64) - 2;
        let id = util::insert_ledger(&mut tx, LEDGER, SCOPE, key, next, amount_of(key), &cmd, rid)
            .map_err(err)?;
        util::complete(&mut tx, SCOPE, key, id, amount_of(key), next).map_err(err)?;
        tx.commit().map_err(err)?;
        rep.taken_over += 1;
        s.update(key, |t| {
            t.done = Some((id, next));
            t.settled = true;
        });
        // The dead holder comes back: its effect + complete must be refused and rolled back.
        let mut tx = c.transaction().map_err(err)?;
        util::insert_ledger(
            &mut tx,
            LEDGER,
            SCOPE,
            key,
            *attempt,
            amount_of(key),
            &cmd,
            rid,
        )
        .map_err(err)?;
        match util::complete(&mut tx, SCOPE, key, 0, amount_of(key), *attempt) {
            Err(e) if sqlstate(&e).as_deref() == Some("IK003") => rep.fenced += 1,
            other => s.anomaly(format!(
                "{key}: the stale holder's complete gave {other:?}, not IK003"
            )),
        }
        drop(tx);
    }
    Ok(rep)
}
