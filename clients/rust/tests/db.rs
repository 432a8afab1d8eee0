//! The client against a real database: every outcome, every SQLSTATE it maps, two connections
//! racing one key, a phased takeover with fencing, and the round trips of each flow counted on
//! the wire. `IDEMPOTENCY_TEST_DATABASE_URL` names the database (scripts/http-test.sh).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use idempotency_client::calls::{self, BeginRequest, Completion, Failure, Outcome, State};
use idempotency_client::one_tx::{self, Finish, Ran, RunError, Stored};
use idempotency_client::phased::{self, Claim};
use idempotency_client::roundtrips::{CountingConnect, RoundTrips};
use idempotency_client::{retry_serialization, Error};
use serde_json::{json, Value};

#[path = "db/layer.rs"]
mod layer;

fn url() -> String {
    std::env::var("IDEMPOTENCY_TEST_DATABASE_URL")
        .expect("set IDEMPOTENCY_TEST_DATABASE_URL to a database where the extension can be created (scripts/http-test.sh does)")
}

fn config() -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::from_str(&url()).unwrap();
    cfg.options("-c DateStyle=ISO -c TimeZone=UTC -c client_min_messages=warning");
    cfg
}

/// A pool whose connections count their round trips.
async fn new_pool(size: usize) -> (Pool, RoundTrips) {
    new_pool_with(size, "").await
}

/// [`new_pool`] with more session `options` (after the test's own, which they override).
async fn new_pool_with(size: usize, options: &str) -> (Pool, RoundTrips) {
    setup().await;
    let mut cfg = config();
    let base = cfg.get_options().unwrap_or("").to_owned();
    cfg.options(format!("{base} {options}"));
    pool_of(cfg, size)
}

/// A pool of `size` counting connections made with `cfg`, their statements prepared.
fn pool_of(cfg: tokio_postgres::Config, size: usize) -> (Pool, RoundTrips) {
    let counting = CountingConnect::default();
    let rt = counting.round_trips.clone();
    let mgr = Manager::from_connect(
        cfg,
        counting,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .post_create(Hook::async_fn(|c, _| {
            Box::pin(async move {
                calls::prepare_statements(c)
                    .await
                    .map_err(|e| HookError::message(e.to_string()))
            })
        }))
        .build()
        .unwrap();
    (pool, rt)
}

async fn setup() {
    let (c, conn) = config().connect(tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute(
        "BEGIN; SELECT pg_advisory_xact_lock(7655002);
         CREATE EXTENSION IF NOT EXISTS idempotency;
         CREATE TABLE IF NOT EXISTS effects (scope text, key text, attempt int, note text);
         DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_client_a') THEN CREATE ROLE idem_client_a; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'idem_client_b') THEN CREATE ROLE idem_client_b; END IF;
         END $$;
         GRANT ALL ON effects TO idem_client_a, idem_client_b;
         COMMIT;",
    )
    .await
    .unwrap();
    drop(c);
    let _ = task.await;
}

fn scope() -> String {
    format!("test:{}", uuid())
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{t:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn cmd(amount: &str) -> Value {
    json!({"amount": amount, "currency": "EUR"})
}

async fn effects(pool: &Pool, scope: &str) -> i64 {
    let c = pool.get().await.unwrap();
    c.query_one("SELECT count(*) FROM effects WHERE scope = $1", &[&scope])
        .await
        .unwrap()
        .get(0)
}

/// The work of the one-transaction tests: one effect row.
fn insert_effect(
    scope: String,
    key: String,
) -> impl for<'c> FnOnce(
    &'c deadpool_postgres::ClientWrapper,
    &'c calls::Begun,
) -> futures_util::future::BoxFuture<
    'c,
    Result<Finish<&'static str>, tokio_postgres::Error>,
> {
    move |c, b| {
        let attempt = b.attempt.unwrap();
        Box::pin(async move {
            let st = c
                .prepare_cached("INSERT INTO effects VALUES ($1, $2, $3, 'done')")
                .await?;
            c.execute(&st, &[&scope, &key, &attempt]).await?;
            Ok(Finish::Complete(
                Completion::resource("effects/1", 201),
                "done",
            ))
        })
    }
}

// --- every outcome -------------------------------------------------------------------------

#[tokio::test]
async fn one_transaction_executes_then_replays() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k1".to_owned());
    let c = cmd("10.00");
    let req = BeginRequest::new(&s, &k, &c);
    let ran = one_tx::run(&pool, &req, insert_effect(s.clone(), k.clone()))
        .await
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Executed {
                attempt: 1,
                value: "done",
                stored: Stored::Completed
            }
        ),
        "{ran:?}"
    );
    match one_tx::run(&pool, &req, insert_effect(s.clone(), k.clone()))
        .await
        .unwrap()
    {
        Ran::Replayed(b) => {
            assert_eq!(
                (b.outcome, b.state, b.http_status, b.resource.as_deref()),
                (
                    Outcome::Replay,
                    State::Completed,
                    Some(201),
                    Some("effects/1")
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(effects(&pool, &s).await, 1);
}

#[tokio::test]
async fn one_transaction_final_failure_rolls_back_the_work_and_replays_the_error() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("10.00");
    let req = BeginRequest::new(&s, &k, &c);
    let (s2, k2) = (s.clone(), k.clone());
    let ran = one_tx::run(&pool, &req, move |c, _| {
        Box::pin(async move {
            c.execute(
                "INSERT INTO effects VALUES ($1, $2, 1, 'rolled back')",
                &[&s2, &k2],
            )
            .await?;
            Ok::<_, tokio_postgres::Error>(Finish::Fail(
                Failure {
                    error: Some(json!({"code": "no"})),
                    retryable: false,
                    http_status: 409,
                },
                (),
            ))
        })
    })
    .await
    .unwrap();
    assert!(matches!(
        ran,
        Ran::Executed {
            stored: Stored::Failed,
            ..
        }
    ));
    assert_eq!(
        effects(&pool, &s).await,
        0,
        "the work's writes rolled back to the savepoint"
    );
    match one_tx::run(&pool, &req, insert_effect(s.clone(), k.clone()))
        .await
        .unwrap()
    {
        Ran::Replayed(b) => assert_eq!(
            (b.state, b.http_status, b.response),
            (State::Failed, Some(409), Some(json!({"code": "no"})))
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn one_transaction_rollback_and_work_error_store_nothing() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    let req = BeginRequest::new(&s, &k, &c);
    let ran = one_tx::run(&pool, &req, |_, _| {
        Box::pin(async { Ok::<_, tokio_postgres::Error>(Finish::Rollback(404)) })
    })
    .await
    .unwrap();
    assert!(matches!(
        ran,
        Ran::Executed {
            value: 404,
            stored: Stored::RolledBack,
            ..
        }
    ));
    let r = one_tx::run(&pool, &req, |_, _| {
        Box::pin(async { Err::<Finish<()>, _>("work failed") })
    })
    .await;
    assert!(matches!(r, Err(RunError::Work("work failed"))));
    let conn = pool.get().await.unwrap();
    assert_eq!(
        calls::check(&conn, &s, &k, None).await.unwrap().state,
        State::Absent
    );
}

#[tokio::test]
async fn retryable_failure_executes_again_with_the_next_attempt() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    let conn = pool.get().await.unwrap();
    let b = calls::begin(&conn, &BeginRequest::new(&s, &k, &c))
        .await
        .unwrap();
    assert_eq!((b.outcome, b.attempt), (Outcome::Execute, Some(1)));
    calls::fail(
        &conn,
        &s,
        &k,
        &Failure {
            error: None,
            retryable: true,
            http_status: 503,
        },
        Some(1),
    )
    .await
    .unwrap();
    let b = calls::begin(&conn, &BeginRequest::new(&s, &k, &c))
        .await
        .unwrap();
    assert_eq!(
        (b.outcome, b.state, b.attempt),
        (Outcome::Execute, State::InProgress, Some(2))
    );
    let checked = calls::check(&conn, &s, &k, Some(&c)).await.unwrap();
    assert_eq!(
        (checked.state, checked.matches, checked.attempt),
        (State::InProgress, Some(true), Some(2))
    );
    assert!(checked.lease_expires_at.is_some());
    assert_eq!(
        calls::check(&conn, &s, &k, Some(&cmd("2")))
            .await
            .unwrap()
            .matches,
        Some(false)
    );
}

#[tokio::test]
async fn uncommitted_holder_is_in_progress_and_a_waiter_gets_its_outcome() {
    let (pool, _) = new_pool(4).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    // The holder's transaction stays open until released.
    let holder = pool.get().await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let b = calls::begin(&holder, &BeginRequest::new(&s, &k, &c))
        .await
        .unwrap();
    assert_eq!(b.outcome, Outcome::Execute);
    // At once: in progress, no lease (the claim is not committed), Retry-After 1.
    match one_tx::run(
        &pool,
        &BeginRequest::new(&s, &k, &c),
        insert_effect(s.clone(), k.clone()),
    )
    .await
    .unwrap()
    {
        Ran::InProgress(b, checked) => {
            assert_eq!((b.outcome, b.http_status), (Outcome::InProgress, Some(409)));
            assert_eq!(checked.state, State::Absent);
            assert_eq!(
                idempotency_client::http::for_in_progress(Some(&checked), chrono::Utc::now())
                    .retry_after,
                Some(1)
            );
        }
        other => panic!("{other:?}"),
    }
    // A waiter (wait 10 s) gets the holder's outcome once it commits.
    let (p2, s2, k2, c2) = (pool.clone(), s.clone(), k.clone(), c.clone());
    let waiter = tokio::spawn(async move {
        let req = BeginRequest::new(&s2, &k2, &c2).wait(Duration::from_secs(10));
        one_tx::run(&p2, &req, insert_effect(s2.clone(), k2.clone()))
            .await
            .map_err(|_| ())
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    calls::complete(
        &holder,
        &s,
        &k,
        &Completion::resource("effects/holder", 201),
        None,
    )
    .await
    .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    match waiter.await.unwrap() {
        Ran::Replayed(b) => assert_eq!(b.resource.as_deref(), Some("effects/holder")),
        other => panic!("{other:?}"),
    }
}

// --- every SQLSTATE ------------------------------------------------------------------------

/// The record's `created_at`, read in binary (tokio-postgres reads a timestamptz as its
/// microseconds), independently of the refusal's read.
async fn created_at(c: &tokio_postgres::Client, s: &str, k: &str) -> chrono::DateTime<chrono::Utc> {
    c.query_one("SELECT created_at FROM idem_check($1, $2)", &[&s, &k])
        .await
        .unwrap()
        .get(0)
}

/// `idem_fingerprint(command)`, computed by the server.
async fn fingerprint_of(c: &tokio_postgres::Client, command: &Value) -> Vec<u8> {
    c.query_one("SELECT idem_fingerprint($1)", &[command])
        .await
        .unwrap()
        .get(0)
}

/// The record's stored fingerprint as `idem_check`'s own `fingerprint` column gives it (0.4.0).
async fn stored_fingerprint(c: &tokio_postgres::Client, s: &str, k: &str) -> Option<Vec<u8>> {
    c.query_one("SELECT fingerprint FROM idem_check($1, $2)", &[&s, &k])
        .await
        .unwrap()
        .get(0)
}

/// One transaction with `first` under the key (it executes and commits), then one with `given`:
/// the refusal `one_tx::run` returns for it.
async fn one_tx_key_reused(pool: &Pool, s: &str, k: &str, first: &Value, given: &Value) -> Error {
    one_tx::run(
        pool,
        &BeginRequest::new(s, k, first),
        insert_effect(s.to_owned(), k.to_owned()),
    )
    .await
    .unwrap();
    match one_tx::run(
        pool,
        &BeginRequest::new(s, k, given),
        insert_effect(s.to_owned(), k.to_owned()),
    )
    .await
    {
        Err(RunError::Idem(e)) => e,
        other => panic!("{other:?}"),
    }
}

/// IK001's data, exactly, on the suite's server (0.4.0): the first use (the record's
/// `created_at`), the stored fingerprint (the first command's, as `idem_check` returns it) and
/// the given one, both whole.
async fn assert_key_reused(
    c: &tokio_postgres::Client,
    e: &Error,
    (s, k): (&str, &str),
    first: &Value,
    given: &Value,
) {
    assert_key_reused_but_stored(c, e, (s, k), given).await;
    let Error::KeyReused(r) = e else {
        unreachable!()
    };
    let first_fp = fingerprint_of(c, first).await;
    assert_eq!(first_fp.len(), 32);
    assert_ne!(first_fp, fingerprint_of(c, given).await);
    assert_eq!(stored_fingerprint(c, s, k).await.as_ref(), Some(&first_fp));
    assert_eq!(r.stored_fingerprint.as_ref(), Some(&first_fp));
    let hex: String = first_fp.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.stored_fingerprint_hex(), Some(hex));
}

/// IK001's data but the stored fingerprint (which a 0.3.0 server does not return): the key,
/// loaded, the first use (the record's `created_at`) and the given fingerprint, whole.
async fn assert_key_reused_but_stored(
    c: &tokio_postgres::Client,
    e: &Error,
    (s, k): (&str, &str),
    given: &Value,
) {
    let Error::KeyReused(r) = e else {
        panic!("{e:?}")
    };
    assert_eq!((r.scope.as_str(), r.key.as_str()), (s, k));
    assert!(r.loaded, "{r:?}");
    assert_eq!(r.first_used_at, Some(created_at(c, s, k).await));
    let given_fp = fingerprint_of(c, given).await;
    assert_eq!(given_fp.len(), 32);
    assert_eq!(r.given_fingerprint.as_ref(), Some(&given_fp));
    let hex: String = given_fp.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.given_fingerprint_hex(), Some(hex));
}

#[tokio::test]
async fn ik001_a_plain_call_leaves_the_data_to_load() {
    let (pool, _) = new_pool(1).await;
    let (s, k) = (scope(), "k \"quoted\", key \"x\"".to_owned());
    let conn = pool.get().await.unwrap();
    calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("10.00")))
        .await
        .unwrap();
    let mut e = calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("100.00")))
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("IK001"));
    match &e {
        Error::KeyReused(r) => assert_eq!(
            (r.loaded, r.first_used_at, &r.given_fingerprint),
            (false, None, &None)
        ),
        other => panic!("{other:?}"),
    }
    // In autocommit the caller loads it at once.
    e.load(&conn).await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &cmd("10.00"), &cmd("100.00")).await;
}

#[tokio::test]
async fn refusals_inside_the_callers_transaction_load_after_its_rollback() {
    let (pool, _) = new_pool(1).await;
    let (s, k) = (scope(), "k".to_owned());
    let conn = pool.get().await.unwrap();
    calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("1")))
        .await
        .unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let mut e = calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("2")))
        .await
        .unwrap_err();
    // The plain call ran no read in the aborted transaction: the data is empty.
    match &e {
        Error::KeyReused(r) => assert_eq!(
            (
                r.loaded,
                r.first_used_at,
                &r.stored_fingerprint,
                &r.given_fingerprint
            ),
            (false, None, &None, &None)
        ),
        other => panic!("{other:?}"),
    }
    conn.batch_execute("ROLLBACK").await.unwrap();
    e.load(&conn).await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &cmd("1"), &cmd("2")).await;

    // IK003 in the caller's transaction: the attempt it gave is known, the record's is loaded.
    conn.batch_execute("BEGIN").await.unwrap();
    let mut e = calls::checkpoint(&conn, &s, &k, "p", None, Some(5))
        .await
        .unwrap_err();
    match &e {
        Error::LeaseLost(l) => assert_eq!(
            (l.loaded, l.current_attempt, l.given_attempt),
            (false, None, Some(5))
        ),
        other => panic!("{other:?}"),
    }
    conn.batch_execute("ROLLBACK").await.unwrap();
    e.load(&conn).await.unwrap();
    match &e {
        Error::LeaseLost(l) => assert_eq!(
            (l.loaded, l.current_attempt, l.given_attempt),
            (true, Some(1), Some(5))
        ),
        other => panic!("{other:?}"),
    }

    // A read that cannot run (the connection is gone) fails on its own; the refusal stays,
    // its data empty.
    let mut e = calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("3")))
        .await
        .unwrap_err();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let other = pool_conn().await;
    other
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(e.load(&conn).await.is_err());
    match &e {
        Error::KeyReused(r) => assert_eq!((r.loaded, r.first_used_at), (false, None)),
        other => panic!("{other:?}"),
    }
    let _ = deadpool_postgres::Object::take(conn);
}

/// A connection of its own (not from a pool).
async fn pool_conn() -> tokio_postgres::Client {
    let (c, conn) = config().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// The helpers read the record themselves, in a session whose DateStyle and TimeZone would
/// make any printed time unreadable to an ISO parser.
#[tokio::test]
async fn ik001_from_the_helpers_whatever_the_datestyle() {
    let (pool, _) = new_pool_with(1, "-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata").await;
    let conn = pool.get().await.unwrap();
    let style: String = conn
        .query_one(
            "SELECT current_setting('DateStyle') || ' ' || current_setting('TimeZone')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(style, "SQL, DMY Asia/Kolkata");
    drop(conn);
    let s = scope();
    let (first, given) = (cmd("10.00"), cmd("100.00"));
    // One transaction: the read goes with its ROLLBACK.
    let k = "one-tx".to_owned();
    let e = one_tx_key_reused(&pool, &s, &k, &first, &given).await;
    let conn = pool.get().await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &first, &given).await;
    // The HTTP answer's first_used_at is the same instant.
    let (_, doc) = idempotency_client::http::error_problem(&e);
    assert_eq!(
        doc["first_used_at"],
        json!(idempotency_client::http::rfc3339(
            created_at(&conn, &s, &k).await
        ))
    );
    drop(conn);
    // Phased: the read after the claim's refusal.
    let k = "phased".to_owned();
    phased::claim(&pool, &BeginRequest::new(&s, &k, &first))
        .await
        .unwrap();
    let e = phased::claim(&pool, &BeginRequest::new(&s, &k, &given))
        .await
        .unwrap_err();
    let conn = pool.get().await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &first, &given).await;
}

/// `reworded.<function>` for `idem_begin`, `idem_check`, `idem_complete`, `idem_fail` and
/// `idem_checkpoint`: the same name, arguments (with their defaults) and result type as 0.4.0
/// declares them (`idempotency.begin_result`, `idempotency.check_result`, `void`,
/// `timestamptz`: one row, no OUT parameters), calling the extension's own (schema-qualified)
/// and raising its errors again with the same SQLSTATE but another MESSAGE, DETAIL and HINT (a
/// DETAIL in the old layout with other values, so that a parser of it would read wrong data).
/// Returns the search_path that puts them first.
async fn reworded_functions() -> String {
    setup().await;
    let c = pool_conn().await;
    c.batch_execute(
        r#"BEGIN; SELECT pg_advisory_xact_lock(7655004);
        CREATE SCHEMA IF NOT EXISTS reworded;
        DO $do$
        DECLARE
          f record;
          target text;
          body text;
        BEGIN
          FOR f IN
            SELECT p.proname, n.nspname, p.pronargs, p.proretset, p.prorettype,
                   pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS res
              FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace
              JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
              JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'idempotency'
             WHERE p.proname IN ('idem_begin', 'idem_check', 'idem_complete', 'idem_fail', 'idem_checkpoint')
          LOOP
            IF f.proretset OR f.prorettype = 'record'::regtype THEN
              RAISE 'reworded: % returns %: not a 0.4.0 result type', f.proname, f.res;
            END IF;
            target := format('%I.%I(%s)', f.nspname, f.proname,
                             (SELECT string_agg('$' || i, ', ') FROM generate_series(1, f.pronargs) i));
            body := CASE WHEN f.prorettype = 'void'::regtype THEN 'PERFORM ' || target || ';'
                         ELSE 'RETURN ' || target || ';' END;
            EXECUTE format($f$
              CREATE OR REPLACE FUNCTION reworded.%I(%s) RETURNS %s LANGUAGE plpgsql AS $b$
              DECLARE
                st text;
              BEGIN
                %s
              EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
                RAISE USING ERRCODE = st,
                  MESSAGE = 'Reworded: nothing here is an API.',
                  DETAIL = CASE st
                    WHEN 'IK001' THEN 'Scope "a", key "b" was first used at 2001-02-03 04:05:06+00 with command fingerprint 00000000; this request''s fingerprint is 11111111.'
                    WHEN 'IK003' THEN 'Scope "a", key "b" is at attempt 98; this call is from attempt 99.'
                    ELSE 'Reworded detail.' END,
                  HINT = 'Reworded hint.';
              END $b$ $f$, f.proname, f.args, f.res, body);
          END LOOP;
        END $do$;
        COMMIT;"#,
    )
    .await
    .unwrap();
    let ext: String = c
        .query_one(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'idempotency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Each wrapper is declared as its function is: same arguments, same result type.
    let declared: Vec<(String, String, String, bool)> = c
        .query(
            "SELECT w.proname::text, pg_get_function_result(w.oid), l.lanname::text,
                    pg_get_function_arguments(w.oid) = pg_get_function_arguments(f.oid)
                      AND w.prorettype = f.prorettype AND NOT w.proretset AND NOT f.proretset
               FROM pg_proc w
               JOIN pg_language l ON l.oid = w.prolang
               JOIN pg_proc f ON f.proname = w.proname
                AND f.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
              WHERE w.pronamespace = 'reworded'::regnamespace
              ORDER BY 1",
            &[&ext],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        declared,
        [
            ("idem_begin", "idempotency.begin_result"),
            ("idem_check", "idempotency.check_result"),
            ("idem_checkpoint", "timestamp with time zone"),
            ("idem_complete", "void"),
            ("idem_fail", "void"),
        ]
        .map(|(n, r)| (n.to_owned(), r.to_owned(), "plpgsql".to_owned(), true))
    );
    format!("reworded,{ext}")
}

/// The suite's server (0.4.0): `idem_check` returns `idempotency.check_result`, whose
/// `fingerprint` column is the stored command's; the refusal's read gives it, whole, from
/// every path (a plain call and its load, one transaction, phased).
#[tokio::test]
async fn ik001_stored_fingerprint_from_a_server_that_returns_it() {
    let (pool, _) = new_pool(1).await;
    let conn = pool.get().await.unwrap();
    let result: String = conn
        .query_one(
            "SELECT pg_get_function_result('idem_check(text, text, jsonb)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(result, "idempotency.check_result");
    let s = scope();
    let (first, given) = (cmd("1.00"), cmd("2.00"));
    // A plain call, loaded at once (autocommit).
    calls::begin(&conn, &BeginRequest::new(&s, "plain", &first))
        .await
        .unwrap();
    let mut e = calls::begin(&conn, &BeginRequest::new(&s, "plain", &given))
        .await
        .unwrap_err();
    e.load(&conn).await.unwrap();
    assert_key_reused(&conn, &e, (&s, "plain"), &first, &given).await;
    drop(conn);
    // One transaction: the read goes with its ROLLBACK.
    let k = "one-tx".to_owned();
    let e = one_tx_key_reused(&pool, &s, &k, &first, &given).await;
    let conn = pool.get().await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &first, &given).await;
    drop(conn);
    // Phased: the read after the claim's refusal.
    phased::claim(&pool, &BeginRequest::new(&s, "phased", &first))
        .await
        .unwrap();
    let e = phased::claim(&pool, &BeginRequest::new(&s, "phased", &given))
        .await
        .unwrap_err();
    let conn = pool.get().await.unwrap();
    assert_key_reused(&conn, &e, (&s, "phased"), &first, &given).await;
}

/// A database of the suite's cluster with the extension at `VERSION '0.3.0'` (the library
/// still serves 0.3.0's SQL): `idem_check` returns ten OUT columns and no `fingerprint`.
/// Created once; returns its connection config.
async fn database_at_0_3_0() -> tokio_postgres::Config {
    const DB: &str = "client_tests_v030";
    let c = pool_conn().await;
    // CREATE DATABASE cannot run in a transaction: a session lock serialises the check.
    c.batch_execute("SELECT pg_advisory_lock(7655006)")
        .await
        .unwrap();
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            &[&DB],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        c.batch_execute(&format!("CREATE DATABASE {DB}"))
            .await
            .unwrap();
    }
    c.batch_execute("SELECT pg_advisory_unlock(7655006)")
        .await
        .unwrap();
    let mut cfg = config();
    cfg.dbname(DB);
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "BEGIN; SELECT pg_advisory_xact_lock(7655006);
         CREATE EXTENSION IF NOT EXISTS idempotency VERSION '0.3.0';
         COMMIT;",
    )
    .await
    .unwrap();
    cfg
}

/// A 0.3.0 server: the same refusals, their data exact, the stored fingerprint `None` (its
/// `idem_check` does not return it), from every path.
#[tokio::test]
async fn ik001_on_a_0_3_0_server_has_no_stored_fingerprint() {
    let (pool, _) = pool_of(database_at_0_3_0().await, 1);
    let conn = pool.get().await.unwrap();
    let version: String = conn
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, "0.3.0");
    let columns: Vec<String> = conn
        .prepare("SELECT * FROM idem_check('s', 'k')")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(
        columns,
        [
            "state",
            "matches",
            "attempt",
            "recovery_point",
            "http_status",
            "response",
            "resource",
            "created_at",
            "expires_at",
            "lease_expires_at"
        ]
    );
    let s = scope();
    let (first, given) = (cmd("1.00"), cmd("2.00"));
    let stored_none = |e: &Error| match e {
        Error::KeyReused(r) => assert_eq!(
            (&r.stored_fingerprint, r.stored_fingerprint_hex()),
            (&None, None),
            "a 0.3.0 server does not return it"
        ),
        other => panic!("{other:?}"),
    };
    // A plain call, loaded at once (autocommit).
    calls::begin(&conn, &BeginRequest::new(&s, "plain", &first))
        .await
        .unwrap();
    let mut e = calls::begin(&conn, &BeginRequest::new(&s, "plain", &given))
        .await
        .unwrap_err();
    e.load(&conn).await.unwrap();
    assert_key_reused_but_stored(&conn, &e, (&s, "plain"), &given).await;
    stored_none(&e);
    drop(conn);
    // One transaction (work that writes nothing: this database has no effects table).
    fn done<'c>(
        _: &'c deadpool_postgres::ClientWrapper,
        _: &'c calls::Begun,
    ) -> futures_util::future::BoxFuture<'c, Result<Finish<()>, tokio_postgres::Error>> {
        Box::pin(async { Ok(Finish::Complete(Completion::resource("r/1", 201), ())) })
    }
    let k = "one-tx".to_owned();
    let ran = one_tx::run(&pool, &BeginRequest::new(&s, &k, &first), done)
        .await
        .unwrap();
    assert!(
        matches!(
            ran,
            Ran::Executed {
                attempt: 1,
                stored: Stored::Completed,
                ..
            }
        ),
        "{ran:?}"
    );
    let e = match one_tx::run(&pool, &BeginRequest::new(&s, &k, &given), done).await {
        Err(RunError::Idem(e)) => e,
        other => panic!("{other:?}"),
    };
    let conn = pool.get().await.unwrap();
    assert_key_reused_but_stored(&conn, &e, (&s, &k), &given).await;
    stored_none(&e);
    drop(conn);
    // Phased.
    phased::claim(&pool, &BeginRequest::new(&s, "phased", &first))
        .await
        .unwrap();
    let e = phased::claim(&pool, &BeginRequest::new(&s, "phased", &given))
        .await
        .unwrap_err();
    let conn = pool.get().await.unwrap();
    assert_key_reused_but_stored(&conn, &e, (&s, "phased"), &given).await;
    stored_none(&e);
}

/// With every message, DETAIL and HINT reworded (and the DateStyle not ISO), each refusal is
/// still its error, with its data exact.
#[tokio::test]
async fn reworded_messages_change_nothing() {
    let path = reworded_functions().await;
    let (pool, _) = new_pool_with(
        2,
        &format!("-c search_path={path} -c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata"),
    )
    .await;
    let conn = pool.get().await.unwrap();
    // The wrappers are what the client calls, and they do reword.
    for sql in [
        "SELECT * FROM idem_begin('s', '', '{}')",
        "SELECT * FROM idem_check('s', '')",
    ] {
        let raw = conn.query(sql, &[]).await.unwrap_err();
        let db = raw.as_db_error().unwrap();
        assert_eq!(
            (db.code().code(), db.message(), db.detail(), db.hint()),
            (
                "22023",
                "Reworded: nothing here is an API.",
                Some("Reworded detail."),
                Some("Reworded hint.")
            ),
            "{sql}"
        );
    }
    drop(conn);
    let s = scope();
    let (first, given) = (cmd("10.00"), cmd("100.00"));

    // IK001, one transaction.
    let k = "k1".to_owned();
    let e = one_tx_key_reused(&pool, &s, &k, &first, &given).await;
    match &e {
        Error::KeyReused(r) => assert_eq!(
            r.text.message, "Reworded: nothing here is an API.",
            "the wrapper answered"
        ),
        other => panic!("{other:?}"),
    }
    let conn = pool.get().await.unwrap();
    assert_key_reused(&conn, &e, (&s, &k), &first, &given).await;
    drop(conn);

    // IK003 and IK002, phased: a takeover fences the first holder; a second completion of a
    // completed key is not in progress.
    let k = "k2".to_owned();
    let req = BeginRequest::new(&s, &k, &first).lease(Duration::from_millis(200));
    let Claim::Execute(stale) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Claim::Execute(holder) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    match stale
        .complete(&Completion::resource("stale", 201))
        .await
        .unwrap_err()
    {
        Error::LeaseLost(l) => assert_eq!(
            (
                l.scope.as_str(),
                l.key.as_str(),
                l.loaded,
                l.current_attempt,
                l.given_attempt,
                l.text.detail.as_deref()
            ),
            (
                s.as_str(),
                k.as_str(),
                true,
                Some(2),
                Some(1),
                // What the wrapper said instead: a parser of it would read 98 and 99.
                Some("Scope \"a\", key \"b\" is at attempt 98; this call is from attempt 99.")
            )
        ),
        other => panic!("{other:?}"),
    }
    holder
        .complete(&Completion::resource("done", 201))
        .await
        .unwrap();
    match holder
        .complete(&Completion::resource("again", 201))
        .await
        .unwrap_err()
    {
        Error::NotInProgress(n) => assert_eq!(
            (
                n.scope.as_str(),
                n.key.as_str(),
                n.found,
                n.text.detail.as_deref()
            ),
            (
                s.as_str(),
                k.as_str(),
                Some(State::Completed),
                Some("Reworded detail.")
            )
        ),
        other => panic!("{other:?}"),
    }
    // IK002 for a key that is not there at all (a plain call, then the load), and for a failed one.
    let conn = pool.get().await.unwrap();
    let mut e = calls::complete(&conn, &s, "nothing", &Completion::resource("r", 201), None)
        .await
        .unwrap_err();
    e.load(&conn).await.unwrap();
    assert!(
        matches!(&e, Error::NotInProgress(n) if n.found == Some(State::Absent)),
        "{e:?}"
    );
    let k3 = "k3".to_owned();
    calls::begin(&conn, &BeginRequest::new(&s, &k3, &first))
        .await
        .unwrap();
    let final_failure = Failure {
        error: None,
        retryable: false,
        http_status: 409,
    };
    calls::fail(&conn, &s, &k3, &final_failure, None)
        .await
        .unwrap();
    let mut e = calls::fail(&conn, &s, &k3, &final_failure, None)
        .await
        .unwrap_err();
    e.load(&conn).await.unwrap();
    assert!(
        matches!(&e, Error::NotInProgress(n) if n.found == Some(State::Failed)),
        "{e:?}"
    );
    // One transaction's completion meeting IK003: the read after the COMMIT that rolled back.
    let k4 = "k4".to_owned();
    let req4 = BeginRequest::new(&s, &k4, &first).lease(Duration::from_millis(200));
    let Claim::Execute(stale) = phased::claim(&pool, &req4).await.unwrap() else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Claim::Execute(_holder) = phased::claim(&pool, &req4).await.unwrap() else {
        panic!()
    };
    let e = stale
        .finish_with("SELECT 1", &[], &Completion::resource("x", 201), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::LeaseLost(l) if (l.current_attempt, l.given_attempt) == (Some(2), Some(1))),
        "{e:?}"
    );
}

#[tokio::test]
async fn ik002_ik003_and_invalid_arguments() {
    let (pool, _) = new_pool(1).await;
    let (s, k) = (scope(), "k".to_owned());
    let conn = pool.get().await.unwrap();
    let done = Completion::resource("r", 201);
    let mut e = calls::complete(&conn, &s, &k, &done, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotInProgress(n) if n.found.is_none()),
        "{e:?}"
    );
    assert_eq!(e.sqlstate(), Some("IK002"));
    e.load(&conn).await.unwrap();
    assert!(
        matches!(&e, Error::NotInProgress(n) if n.found == Some(State::Absent)),
        "{e:?}"
    );
    calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("1")))
        .await
        .unwrap();
    let mut e = calls::checkpoint(&conn, &s, &k, "p", None, Some(7))
        .await
        .unwrap_err();
    e.load(&conn).await.unwrap();
    match e {
        Error::LeaseLost(l) => assert_eq!((l.current_attempt, l.given_attempt), (Some(1), Some(7))),
        other => panic!("{other:?}"),
    }
    let e = calls::begin(&conn, &BeginRequest::new(&s, "", &cmd("1")))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { sqlstate, .. } if sqlstate == "22023"),
        "{e:?}"
    );
    let e = calls::complete(
        &conn,
        &s,
        &k,
        &Completion {
            response: None,
            resource: None,
            http_status: 700,
        },
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { sqlstate, .. } if sqlstate == "22023"),
        "{e:?}"
    );
    let raw = conn
        .query("SELECT idem_begin(NULL, 'k', '{}')", &[])
        .await
        .unwrap_err();
    let e = Error::from_db(raw, None);
    assert!(
        matches!(&e, Error::Invalid { sqlstate, .. } if sqlstate == "22004"),
        "{e:?}"
    );
}

#[tokio::test]
async fn another_roles_record_is_42501() {
    let (pool, _) = new_pool(1).await;
    let (s, k) = (scope(), "k".to_owned());
    let conn = pool.get().await.unwrap();
    conn.batch_execute("SET ROLE idem_client_a").await.unwrap();
    calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("1")))
        .await
        .unwrap();
    conn.batch_execute("SET ROLE idem_client_b").await.unwrap();
    let e = calls::check(&conn, &s, &k, None).await.unwrap_err();
    assert!(matches!(e, Error::NotOwner(_)), "{e:?}");
    let e = calls::begin(&conn, &BeginRequest::new(&s, &k, &cmd("2")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::NotOwner(_)),
        "42501 comes before IK001: {e:?}"
    );
    conn.batch_execute("RESET ROLE").await.unwrap();
}

#[tokio::test]
async fn read_only_is_25006() {
    let (pool, _) = new_pool(1).await;
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN READ ONLY").await.unwrap();
    let e = calls::begin(&conn, &BeginRequest::new(&scope(), "k", &cmd("1")))
        .await
        .unwrap_err();
    conn.batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(e, Error::ReadOnly(_)), "{e:?}");
    assert_eq!(idempotency_client::http::for_error(&e).status, 503);
}

#[tokio::test]
async fn serialization_failure_is_40001_and_the_helper_retries() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    // A's snapshot predates B's committed claim of the key.
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    calls::begin(&b, &BeginRequest::new(&s, &k, &c))
        .await
        .unwrap();
    let e = calls::begin(&a, &BeginRequest::new(&s, &k, &c))
        .await
        .unwrap_err();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(e, Error::Serialization(_)), "{e:?}");
    assert!(e.is_retryable_transaction());
    // The retry helper runs the whole transaction again: the second time it sees the claim.
    let tries = std::sync::atomic::AtomicU32::new(0);
    let outcome = retry_serialization(3, || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
            .await
            .map_err(|e| Error::from_db(e, None))?;
        if n == 0 {
            // Another request claims k3 after this snapshot was taken.
            calls::begin(&b, &BeginRequest::new(&s, "k3", &c)).await?;
        }
        let r = calls::begin(&a, &BeginRequest::new(&s, "k3", &c)).await;
        a.batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::from_db(e, None))?;
        r.map(|b| b.outcome)
    })
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::InProgress);
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
}

// --- races and takeovers ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_racing_one_key_execute_it_once() {
    let (pool, _) = new_pool(16).await;
    for round in 0..5 {
        let (s, k) = (scope(), format!("race-{round}"));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (p, s, k) = (pool.clone(), s.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                let c = cmd("5");
                let req = BeginRequest::new(&s, &k, &c);
                match one_tx::run(&p, &req, insert_effect(s.clone(), k.clone())).await {
                    Ok(Ran::Executed { .. }) => "executed",
                    Ok(Ran::Replayed(_)) => "replayed",
                    Ok(Ran::InProgress(..)) => "in_progress",
                    Err(_) => "error",
                }
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        assert_eq!(
            got.iter().filter(|g| **g == "executed").count(),
            1,
            "{got:?}"
        );
        assert!(!got.contains(&"error"), "{got:?}");
        assert_eq!(effects(&pool, &s).await, 1);
    }
}

#[tokio::test]
async fn phased_takeover_resumes_and_fences_the_stale_holder() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("10.00");
    let req = BeginRequest::new(&s, &k, &c).lease(Duration::from_millis(300));
    let Claim::Execute(mut first) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    assert_eq!((first.attempt(), first.recovery_point()), (1, None));
    first
        .checkpoint("charged", Some(&json!({"charge_id": "ch_1"})))
        .await
        .unwrap();
    // Within the lease: in progress, with the lease end.
    match phased::claim(&pool, &req).await.unwrap() {
        Claim::InProgress(b, checked) => {
            assert_eq!(b.http_status, Some(409));
            assert!(checked.lease_expires_at.unwrap() > chrono::Utc::now());
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let Claim::Execute(second) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        (second.attempt(), second.recovery_point()),
        (2, Some("charged"))
    );
    assert_eq!(second.recovery_data(), Some(&json!({"charge_id": "ch_1"})));
    // The stale holder is fenced off: IK003, and it stores nothing.
    match first
        .complete(&Completion::resource("payments/stale", 201))
        .await
        .unwrap_err()
    {
        Error::LeaseLost(l) => assert_eq!((l.current_attempt, l.given_attempt), (Some(2), Some(1))),
        other => panic!("{other:?}"),
    }
    let (s2, k2) = (s.clone(), k.clone());
    let rows = second
        .finish_with(
            "INSERT INTO effects VALUES ($1, $2, 2, 'finished') RETURNING note",
            &[&s2, &k2],
            &Completion::resource("payments/2", 201),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "finished");
    match phased::claim(&pool, &req).await.unwrap() {
        Claim::Replay(b) => assert_eq!(
            (b.attempt, b.resource.as_deref()),
            (Some(2), Some("payments/2"))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(effects(&pool, &s).await, 1);
}

#[tokio::test]
async fn phased_finish_rolls_back_when_the_completion_is_fenced() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    let req = BeginRequest::new(&s, &k, &c).lease(Duration::from_millis(200));
    let Claim::Execute(first) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Claim::Execute(_second) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    let (s2, k2) = (s.clone(), k.clone());
    let e = first
        .finish_with(
            "INSERT INTO effects VALUES ($1, $2, 1, 'stale')",
            &[&s2, &k2],
            &Completion::resource("x", 201),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost(_)), "{e:?}");
    assert_eq!(
        effects(&pool, &s).await,
        0,
        "the business write rolled back with the fenced completion"
    );
}

#[tokio::test]
async fn claim_waiting_returns_the_outcome_of_a_phased_holder() {
    let (pool, _) = new_pool(2).await;
    let (s, k) = (scope(), "k".to_owned());
    let c = cmd("1");
    let req = BeginRequest::new(&s, &k, &c).lease(Duration::from_secs(30));
    let Claim::Execute(holder) = phased::claim(&pool, &req).await.unwrap() else {
        panic!()
    };
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        holder
            .complete(&Completion::resource("done", 201))
            .await
            .unwrap();
    });
    match phased::claim_waiting(&pool, &req, Duration::from_secs(5))
        .await
        .unwrap()
    {
        Claim::Replay(b) => assert_eq!(b.resource.as_deref(), Some("done")),
        other => panic!("{other:?}"),
    }
    finisher.await.unwrap();
    // A wait that runs out answers in progress.
    let k2 = "k2".to_owned();
    let req2 = BeginRequest::new(&s, &k2, &c).lease(Duration::from_secs(30));
    let Claim::Execute(_held) = phased::claim(&pool, &req2).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        phased::claim_waiting(&pool, &req2, Duration::from_millis(300))
            .await
            .unwrap(),
        Claim::InProgress(..)
    ));
}

#[tokio::test]
async fn the_other_functions() {
    let (pool, _) = new_pool(1).await;
    let conn = pool.get().await.unwrap();
    let v = json!({"b": 1, "a": 2.0});
    assert_eq!(
        calls::canonical(&conn, &v).await.unwrap(),
        r#"{"a":2,"b":1}"#
    );
    assert_eq!(calls::fingerprint(&conn, &v).await.unwrap().len(), 32);
    let s = scope();
    calls::begin(
        &conn,
        &BeginRequest::new(&s, "k", &v).ttl(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        calls::purge(&conn, calls::DEFAULT_PURGE_ROWS)
            .await
            .unwrap()
            >= 1
    );
    calls::begin(&conn, &BeginRequest::new(&s, "k2", &v))
        .await
        .unwrap();
    assert!(calls::forget(&conn, &s, "k2").await.unwrap());
    assert!(!calls::forget(&conn, &s, "k2").await.unwrap());
}

// --- round trips per flow --------------------------------------------------------------------

/// Counts the flights of `f` on a warmed pool of one connection.
async fn count<F: std::future::Future<Output = ()>>(rt: &RoundTrips, f: F) -> u64 {
    let before = rt.get();
    f.await;
    rt.get() - before
}

#[tokio::test]
async fn round_trips_per_flow() {
    let (pool, rt) = new_pool(1).await;
    let (other, _) = new_pool(1).await;
    let s = scope();
    let c = cmd("10.00");
    // Warm up: the connection, its prepared statements and the work's statement.
    let warm = BeginRequest::new(&s, "warm", &c);
    one_tx::run(&pool, &warm, insert_effect(s.clone(), "warm".into()))
        .await
        .unwrap();

    let new_key = count(&rt, async {
        let req = BeginRequest::new(&s, "new", &c);
        assert!(matches!(
            one_tx::run(&pool, &req, insert_effect(s.clone(), "new".into()))
                .await
                .unwrap(),
            Ran::Executed { .. }
        ));
    })
    .await;
    let replay = count(&rt, async {
        let req = BeginRequest::new(&s, "new", &c);
        assert!(matches!(
            one_tx::run(&pool, &req, insert_effect(s.clone(), "new".into()))
                .await
                .unwrap(),
            Ran::Replayed(_)
        ));
    })
    .await;
    let reused = count(&rt, async {
        let c2 = cmd("11.00");
        let req = BeginRequest::new(&s, "new", &c2);
        // The refusal's read goes with the ROLLBACK: still 2.
        assert!(matches!(
            one_tx::run(&pool, &req, insert_effect(s.clone(), "new".into())).await,
            Err(RunError::Idem(Error::KeyReused(r))) if r.loaded
        ));
    })
    .await;
    let holder = other.get().await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    calls::begin(&holder, &BeginRequest::new(&s, "held", &c))
        .await
        .unwrap();
    let in_progress = count(&rt, async {
        let req = BeginRequest::new(&s, "held", &c);
        assert!(matches!(
            one_tx::run(&pool, &req, insert_effect(s.clone(), "held".into()))
                .await
                .unwrap(),
            Ran::InProgress(..)
        ));
    })
    .await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    drop(holder);

    // Phased: claim, checkpoint, then the business write + completion + COMMIT in one flight.
    let req = BeginRequest::new(&s, "phased", &c).lease(Duration::from_secs(30));
    let warm_sql = "INSERT INTO effects VALUES ($1, $2, 1, 'phased')";
    pool.get()
        .await
        .unwrap()
        .prepare_cached(warm_sql)
        .await
        .unwrap();
    let (claim_rt, checkpoint_rt, finish_rt);
    {
        let mut h = None;
        claim_rt = count(&rt, async {
            let Claim::Execute(x) = phased::claim(&pool, &req).await.unwrap() else {
                panic!()
            };
            h = Some(x);
        })
        .await;
        let mut h = h.unwrap();
        checkpoint_rt = count(&rt, async {
            h.checkpoint("charged", Some(&json!({"charge_id": "ch"})))
                .await
                .unwrap();
        })
        .await;
        let k = "phased".to_owned();
        finish_rt = count(&rt, async {
            h.finish_with(warm_sql, &[&s, &k], &Completion::resource("p", 201), None)
                .await
                .unwrap();
        })
        .await;
    }
    let phased_replay = count(&rt, async {
        assert!(matches!(
            phased::claim(&pool, &req).await.unwrap(),
            Claim::Replay(_)
        ));
    })
    .await;
    let req_held = BeginRequest::new(&s, "phased-held", &c).lease(Duration::from_secs(30));
    let Claim::Execute(_h) = phased::claim(&other, &req_held).await.unwrap() else {
        panic!()
    };
    let phased_in_progress = count(&rt, async {
        assert!(matches!(
            phased::claim(&pool, &req_held).await.unwrap(),
            Claim::InProgress(..)
        ));
    })
    .await;
    // A refused claim: idem_begin, then the refusal's read.
    let phased_reused = count(&rt, async {
        let c2 = cmd("11.00");
        let req = BeginRequest::new(&s, "phased", &c2);
        assert!(matches!(
            phased::claim(&pool, &req).await,
            Err(Error::KeyReused(r)) if r.loaded
        ));
    })
    .await;

    eprintln!(
        "round trips: one-transaction new key {new_key} (incl. 1 for the work's statement), replay {replay}, \
         IK001 {reused}, in_progress {in_progress}; phased claim {claim_rt}, checkpoint {checkpoint_rt}, \
         finish {finish_rt}, phased replay {phased_replay}, phased in_progress {phased_in_progress}, \
         phased IK001 {phased_reused}"
    );
    assert_eq!((new_key, replay, reused, in_progress), (3, 2, 2, 2));
    assert_eq!(
        (
            claim_rt,
            checkpoint_rt,
            finish_rt,
            phased_replay,
            phased_in_progress,
            phased_reused
        ),
        (1, 1, 1, 1, 2, 2)
    );
}
