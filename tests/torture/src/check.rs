//! The independent checker of a torture load. It reads only the database: the ledger (the
//! effects), `idempotency.records`, and the observations the clients logged (each request's
//! command and what it was answered). Each guarantee is one query whose rows are violations;
//! the checker prints the counts, a few examples of each violation, and returns their number.
//! Then, once every lease has run out, it asks `idem_begin` for every key and checks that no
//! claim is stuck (in progress keys are taken over with attempt + 1 and their recovery point).
//!
//! With `--citus yes` the three tables are distributed: the checks run on local copies made
//! on the coordinator once the load has ended (Citus cannot run every one of these joins
//! across shards), and the final probe calls `idem_begin` one key at a time, in the form that
//! Citus delegates to the key's node. With `--node-failures yes` (a node was killed during the
//! load) a request that failed because a node went away ([`NODE_FAILURE`]) is no anomaly, and
//! neither is the effect of a COMMIT that such a failure left in doubt, if it committed whole
//! (its record completed with that very effect: the other checks hold it to that).

use std::time::Duration;

use postgres::Client;

use crate::load::scope_of;
use crate::util::{self, amount_of, command};
use crate::Opts;

/// (guarantee, query returning one text row per violation).
const CHECKS: &[(&str, &str)] = &[
    (
        "no key's effect happened twice",
        "SELECT key || ': ' || count(*) || ' ledger rows' FROM torture_ledger
         GROUP BY scope, key HAVING count(*) > 1",
    ),
    (
        "every completed key has exactly one effect",
        "SELECT r.key || ': ' || (SELECT count(*) FROM torture_ledger l
                                   WHERE l.scope = r.scope AND l.key = r.key) || ' ledger rows'
         FROM idempotency.records r
         WHERE r.scope LIKE 'torture%' AND r.state = 'c'
           AND (SELECT count(*) FROM torture_ledger l WHERE l.scope = r.scope AND l.key = r.key) <> 1",
    ),
    (
        "the stored outcome describes the effect (resource, response, attempt, command)",
        "SELECT r.key || ': resource ' || coalesce(r.resource, 'NULL') || ', ledger ' || l.id
         FROM idempotency.records r JOIN torture_ledger l ON l.scope = r.scope AND l.key = r.key
         WHERE r.scope LIKE 'torture%' AND r.state = 'c'
           AND (r.resource IS DISTINCT FROM 'ledger/' || l.id
                OR (r.response->>'ledger_id')::bigint IS DISTINCT FROM l.id
                OR (r.response->>'amount')::bigint IS DISTINCT FROM l.amount
                OR r.response->>'key' IS DISTINCT FROM l.key
                OR l.attempt <> r.attempt OR l.fingerprint <> r.fingerprint
                OR r.http_status IS DISTINCT FROM 201)",
    ),
    (
        "no effect without a completed record",
        "SELECT l.key || ': ledger ' || l.id || ', record state ' || coalesce(r.state::text, 'none')
         FROM torture_ledger l
         LEFT JOIN idempotency.records r ON r.scope = l.scope AND r.key = l.key
         WHERE r.state IS DISTINCT FROM 'c'",
    ),
    (
        "every effect belongs to a request whose commit was acknowledged",
        "SELECT l.key || ': ledger ' || l.id || ' of request ' || l.request_id
         FROM torture_ledger l LEFT JOIN torture_observations o ON o.request_id = l.request_id
         WHERE o.request_id IS NULL OR NOT (o.committed OR {in_doubt})
            OR o.ledger_id IS DISTINCT FROM l.id",
    ),
    (
        "every acknowledged effect is in the ledger",
        "SELECT o.key || ': request ' || o.request_id || ', ledger ' || o.ledger_id
         FROM torture_observations o
         WHERE o.committed AND o.ledger_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM torture_ledger l
                           WHERE l.id = o.ledger_id AND l.request_id = o.request_id
                             AND l.key = o.key AND l.attempt = o.attempt)",
    ),
    (
        "every acknowledged failure is stored (final: still; retryable: until the next attempt)",
        "SELECT o.key || ': ' || o.kind || ' attempt ' || o.attempt || ', record '
                || r.state::text || ' attempt ' || r.attempt
         FROM torture_observations o
         JOIN idempotency.records r ON r.scope = o.scope AND r.key = o.key
         WHERE o.committed AND o.ledger_id IS NULL
           AND NOT CASE WHEN o.kind = 'fail_final'
                        THEN r.state = 'f' AND NOT r.retryable AND r.attempt = o.attempt
                             AND (r.response->>'attempt')::int = o.attempt
                        ELSE r.attempt > o.attempt
                             OR (r.attempt = o.attempt AND r.state = 'f' AND r.retryable) END",
    ),
    (
        "every different command got IK001",
        "SELECT key || ': request ' || request_id || ' got '
                || coalesce(sqlstate, outcome, 'nothing')
         FROM torture_observations
         WHERE kind = 'mismatch' AND sqlstate IS DISTINCT FROM 'IK001' AND NOT {node_failure}",
    ),
    (
        "no request was answered with the outcome of a different command",
        "SELECT o.key || ': request ' || o.request_id || ' (amount ' || o.amount || ') got '
                || coalesce(o.response::text, 'NULL')
         FROM torture_observations o
         WHERE o.outcome = 'replay'
           AND (o.response->>'key' IS DISTINCT FROM o.key
                OR (o.response->>'amount')::bigint IS DISTINCT FROM o.amount
                OR (o.state = 'completed'
                    AND NOT EXISTS (SELECT 1 FROM torture_ledger l
                                    WHERE 'ledger/' || l.id = o.resource
                                      AND l.key = o.key AND l.amount = o.amount))
                OR (o.state = 'failed' AND o.response->>'error' IS DISTINCT FROM 'declined'))",
    ),
    (
        "every replay is the stored final outcome",
        "SELECT o.key || ': request ' || o.request_id
         FROM torture_observations o
         JOIN idempotency.records r ON r.scope = o.scope AND r.key = o.key
         WHERE o.outcome = 'replay'
           AND (o.response IS DISTINCT FROM r.response OR o.resource IS DISTINCT FROM r.resource
                OR o.http_status IS DISTINCT FROM r.http_status
                OR o.attempt IS DISTINCT FROM r.attempt
                OR o.state IS DISTINCT FROM CASE r.state WHEN 'c' THEN 'completed'
                                                         WHEN 'f' THEN 'failed' END)",
    ),
    (
        "in_progress is answered with 409",
        "SELECT key || ': request ' || request_id FROM torture_observations
         WHERE outcome = 'in_progress' AND http_status IS DISTINCT FROM 409",
    ),
    (
        "no error other than IK001 (different command) and IK003 (a phased holder taken over)",
        "SELECT key || ': ' || kind || ' request ' || request_id || ' got ' || sqlstate
                || ' in ' || coalesce(stage, '?')
         FROM torture_observations
         WHERE sqlstate IS NOT NULL AND NOT {node_failure}
           AND NOT (kind = 'mismatch' AND sqlstate = 'IK001')
           AND NOT (kind LIKE 'phased%' AND sqlstate = 'IK003'
                    AND stage IN ('checkpoint', 'complete', 'fail'))",
    ),
    (
        "IK003 only for a holder whose attempt was taken over",
        "SELECT o.key || ': request ' || o.request_id || ' attempt ' || o.attempt
                || ', record attempt ' || r.attempt
         FROM torture_observations o
         JOIN idempotency.records r ON r.scope = o.scope AND r.key = o.key
         WHERE o.sqlstate = 'IK003' AND r.attempt <= o.attempt",
    ),
    (
        "no two committed holders with the same attempt",
        "SELECT key || ': attempt ' || attempt || ' held ' || count(*) || ' times'
         FROM torture_observations
         WHERE outcome = 'execute' AND (kind LIKE 'phased%' OR committed)
         GROUP BY key, attempt HAVING count(*) > 1",
    ),
    (
        "a takeover resumes from an earlier attempt's recovery point; attempt 1 from none",
        "SELECT key || ': attempt ' || attempt || ' got ' || coalesce(recovery_point, 'NULL')
         FROM torture_observations
         WHERE outcome = 'execute'
           AND CASE WHEN attempt = 1 THEN recovery_point IS NOT NULL OR recovery_data IS NOT NULL
                    ELSE recovery_point IS DISTINCT FROM recovery_data->>'point'
                         OR (recovery_data->>'attempt')::int >= attempt END",
    ),
];

/// The errors a client gets through a Citus coordinator when the worker that holds the key's
/// shard went away (killed, restarting, in crash recovery): Citus reports a lost or refused
/// connection to a node as 08006 (the node's own refusals while it shuts down or starts up are
/// 57P01..57P03), and a COMMIT that the node did not acknowledge as XX000 "could not commit
/// transaction for shard ... on at least one active node" (accepted only in the COMMIT: the
/// extension raises XX000 only for a broken invariant, and never at COMMIT).
pub const NODE_FAILURE: &str = "(coalesce(sqlstate IN ('08000', '08001', '08003', '08006', \
     '57P01', '57P02', '57P03'), false) OR (sqlstate = 'XX000' AND stage = 'commit'))";

/// A request whose COMMIT failed that way: it may or may not have committed.
const IN_DOUBT: &str = "(stage = 'commit' AND (coalesce(sqlstate IN ('08000', '08001', '08003', \
     '08006', '57P01', '57P02', '57P03'), false) OR sqlstate = 'XX000'))";

pub fn run(opts: &Opts) -> Result<u64, String> {
    let citus = opts.str("citus", "no") == "yes";
    let node_failures = opts.str("node-failures", "no") == "yes";
    let scopes: u64 = opts.num("scopes", 1);
    let mut c = util::connect(opts).map_err(|e| format!("connect: {e}"))?;
    // The tables the checks read: on Citus, local copies of the distributed ones.
    let tables = |sql: &str| -> String {
        let sql = sql
            .replace("{in_doubt}", if node_failures { IN_DOUBT } else { "false" })
            .replace(
                "{node_failure}",
                if node_failures { NODE_FAILURE } else { "false" },
            );
        if citus {
            sql.replace("idempotency.records", "torture_check.records")
                .replace("torture_ledger", "torture_check.ledger")
                .replace("torture_observations", "torture_check.observations")
        } else {
            sql
        }
    };
    if citus {
        c.batch_execute(
            "SET LOCAL citus.enable_ddl_propagation = off;
             DROP SCHEMA IF EXISTS torture_check CASCADE;
             CREATE SCHEMA torture_check;
             CREATE TABLE torture_check.records AS
                 SELECT * FROM idempotency.records WHERE scope LIKE 'torture%';
             CREATE TABLE torture_check.ledger AS SELECT * FROM torture_ledger;
             CREATE TABLE torture_check.observations AS SELECT * FROM torture_observations;
             CREATE INDEX ON torture_check.records (scope, key);
             CREATE INDEX ON torture_check.ledger (scope, key);
             CREATE INDEX ON torture_check.ledger (id);
             CREATE INDEX ON torture_check.observations (request_id);
             CREATE INDEX ON torture_check.observations (scope, key);
             ANALYZE torture_check.records, torture_check.ledger, torture_check.observations;",
        )
        .map_err(|e| format!("copying the distributed tables for the checks: {e}"))?;
    }
    let q = |c: &mut Client, sql: &str| -> Result<Vec<postgres::Row>, String> {
        let sql = tables(sql);
        c.query(&sql, &[]).map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {sql}", db.message()),
            None => format!("{e}: {sql}"),
        })
    };
    let n: i64 = q(&mut c, "SELECT count(*) FROM torture_observations")?[0].get(0);
    println!("check: {n} requests logged");
    for (title, sql) in [
        (
            "requests by kind",
            "SELECT kind, count(*) FROM torture_observations GROUP BY 1 ORDER BY 2 DESC",
        ),
        (
            "answers",
            "SELECT CASE WHEN sqlstate IS NOT NULL THEN 'error ' || sqlstate || ' (' || coalesce(stage, 'before begin') || ')'
                         WHEN outcome = 'execute' AND committed AND ledger_id IS NOT NULL
                              THEN 'execute, effect committed'
                         WHEN outcome = 'execute' AND committed THEN 'execute, failure committed'
                         WHEN outcome = 'execute' AND kind = 'phased_abandon' THEN 'execute, abandoned'
                         WHEN outcome = 'execute' AND kind = 'abort' THEN 'execute, rolled back'
                         WHEN outcome = 'execute' THEN 'execute, other'
                         ELSE outcome || ' (' || state || ')' END, count(*)
             FROM torture_observations GROUP BY 1 ORDER BY 2 DESC",
        ),
        (
            "takeovers",
            "SELECT 'execute with attempt > 1', count(*) FROM torture_observations
              WHERE outcome = 'execute' AND attempt > 1
             UNION ALL SELECT 'stalled holders fenced off (IK003)', count(*) FROM torture_observations
              WHERE stalled AND sqlstate = 'IK003'
             UNION ALL SELECT 'stalled holders that completed (nobody took over)', count(*)
              FROM torture_observations WHERE stalled AND committed",
        ),
        (
            "records by state",
            "SELECT CASE state WHEN 'c' THEN 'completed' WHEN 'p' THEN 'in_progress'
                               WHEN 'f' THEN CASE WHEN retryable THEN 'failed, retryable'
                                                  ELSE 'failed, final' END END, count(*)
             FROM idempotency.records WHERE scope LIKE 'torture%' GROUP BY 1 ORDER BY 2 DESC",
        ),
        (
            "ledger",
            "SELECT 'effects', count(*) FROM torture_ledger",
        ),
    ] {
        println!("check: {title}:");
        for r in q(&mut c, sql)? {
            let label: String = r.get(0);
            let count: i64 = r.get(1);
            println!("    {label:<52} {count:>8}");
        }
    }

    if node_failures {
        let hit: i64 = q(
            &mut c,
            &format!("SELECT count(*) FROM torture_observations WHERE {NODE_FAILURE}"),
        )?[0]
            .get(0);
        let in_doubt: i64 = q(
            &mut c,
            &format!("SELECT count(*) FROM torture_observations o WHERE {IN_DOUBT}"),
        )?[0]
            .get(0);
        println!(
            "check: {hit} requests failed because a node went away, {in_doubt} of them in \
             their COMMIT"
        );
        if hit == 0 {
            return Err(
                "--node-failures yes, but no request failed because of a node: the \
                        failure did not hit the load"
                    .into(),
            );
        }
    }

    let mut anomalies = 0u64;
    for (guarantee, sql) in CHECKS {
        let rows = q(&mut c, sql)?;
        anomalies += rows.len() as u64;
        println!("check: {:>6} anomalies: {guarantee}", rows.len());
        for r in rows.iter().take(5) {
            let s: String = r.get(0);
            println!("           e.g. {s}");
        }
    }
    let stuck = no_claim_stuck(&mut c, opts.num("max-lease-wait", 30.0), scopes, citus)?;
    anomalies += stuck;
    println!("check: {anomalies} anomalies in all");
    Ok(anomalies)
}

/// Once every lease has run out, `idem_begin` with the key's own command on every key must
/// decide: replay a final outcome, or execute an in-progress or retryable key with
/// attempt + 1 and its recovery point. Each probe is rolled back.
fn no_claim_stuck(c: &mut Client, max_wait: f64, scopes: u64, citus: bool) -> Result<u64, String> {
    let row = c
        .query_one(
            "SELECT coalesce(extract(epoch FROM max(lease_expires_at) - clock_timestamp()), 0)::float8
             FROM idempotency.records WHERE scope LIKE 'torture%' AND state = 'p'",
            &[],
        )
        .map_err(|e| e.to_string())?;
    // The load's leases are short; a claim holding one far longer is stuck, not waited for.
    let wait: f64 = row.get::<_, f64>(0).min(max_wait);
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait + 0.05));
    }
    let records = c
        .query(
            "SELECT key, state::text, retryable, attempt, recovery_point, resource, scope
             FROM idempotency.records WHERE scope LIKE 'torture%' ORDER BY scope, key",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let mut bad = 0u64;
    let mut taken_over = 0u64;
    // Probed in chunks of one scope, one rolled-back transaction each: every execute holds its
    // key's lock until the transaction ends, and the lock table is finite.
    let mut chunks: Vec<&[postgres::Row]> = Vec::new();
    let mut rest = &records[..];
    while !rest.is_empty() {
        let scope: String = rest[0].get(6);
        let n = rest
            .iter()
            .take(500)
            .take_while(|r| r.get::<_, String>(6) == scope)
            .count();
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    for chunk in chunks {
        let keys: Vec<String> = chunk.iter().map(|r| r.get(0)).collect();
        let cmds: Vec<String> = keys.iter().map(|k| command(k, amount_of(k))).collect();
        let scope: String = chunk[0].get(6);
        for k in &keys {
            if scope_of(k, scopes) != scope {
                bad += 1;
                println!("           e.g. {k}: stored in scope {scope}, not its own");
            }
        }
        let mut tx = c.transaction().map_err(|e| e.to_string())?;
        let answers: Vec<postgres::Row> = if citus {
            // One call per statement, with constant arguments: the form that Citus delegates
            // to the node of the key's shard (where the key's lock is).
            let mut answers = Vec::with_capacity(keys.len());
            for (k, cmd) in keys.iter().zip(&cmds) {
                answers.push(
                    tx.query_one(
                        "SELECT outcome, attempt, recovery_point, resource
                         FROM idem_begin($1, $2, $3::text::jsonb, wait => '0')",
                        &[&scope, k, cmd],
                    )
                    .map_err(|e| e.to_string())?,
                );
            }
            answers
        } else {
            tx.query(
                "SELECT b.outcome, b.attempt, b.recovery_point, b.resource
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(key, cmd, i),
                      LATERAL idem_begin($3, u.key, u.cmd::jsonb, wait => '0') AS b
                 ORDER BY u.i",
                &[&keys, &cmds, &scope],
            )
            .map_err(|e| e.to_string())?
        };
        tx.rollback().map_err(|e| e.to_string())?;
        for (r, a) in chunk.iter().zip(&answers) {
            let key: String = r.get(0);
            let state: String = r.get(1);
            let retryable: Option<bool> = r.get(2);
            let attempt: i32 = r.get(3);
            let point: Option<String> = r.get(4);
            let resource: Option<String> = r.get(5);
            let outcome: String = a.get(0);
            let got_attempt: Option<i32> = a.get(1);
            let got_point: Option<String> = a.get(2);
            let got_resource: Option<String> = a.get(3);
            let ok = match (state.as_str(), retryable) {
                ("c", _) | ("f", Some(false)) => {
                    outcome == "replay" && got_attempt == Some(attempt) && got_resource == resource
                }
                ("p", _) | ("f", Some(true)) => {
                    taken_over += (state == "p") as u64;
                    outcome == "execute" && got_attempt == Some(attempt + 1) && got_point == point
                }
                _ => false,
            };
            if !ok {
                bad += 1;
                if bad <= 5 {
                    println!(
                        "           e.g. {key}: record {state} attempt {attempt}: begin gave \
                         {outcome} attempt {got_attempt:?} at {got_point:?}"
                    );
                }
            }
        }
        if answers.len() != chunk.len() {
            bad += 1;
            println!(
                "           e.g. {} probes answered {} rows",
                chunk.len(),
                answers.len()
            );
        }
    }
    println!(
        "check: {bad:>6} anomalies: no claim stuck once leases ran out ({} keys probed, {taken_over} \
         in-progress claims taken over)",
        records.len()
    );
    Ok(bad)
}
