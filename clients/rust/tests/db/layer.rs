//! The drop-in layer for axum against the database, through `Router::oneshot` (no socket): what
//! the conformance vectors (tests/http-layers) cannot see from outside: the transaction mode's
//! writes and the key's state after a rollback or a stream, a stored response over
//! `idempotency.max_response_size` stored omitted (the server's decision, exact to the byte),
//! the command's path under a nested router, and the layer's refusals at build time.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use http_body_util::BodyExt;
use idempotency_client::axum::{IdemTx, IdempotencyLayer, Mode};
use idempotency_client::calls::{self, State};
use idempotency_client::layer::stored::StoredResponse;
use tower::ServiceExt;

use super::{config, setup, uuid};

fn pool_with(options: Option<&str>) -> Pool {
    let mut cfg = config();
    if let Some(o) = options {
        let base = cfg.get_options().unwrap_or("").to_owned();
        cfg.options(format!("{base} {o}"));
    }
    let mgr = Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(8)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap()
}

async fn table(pool: &Pool) {
    setup().await;
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "SELECT pg_advisory_lock(7655003);
             CREATE TABLE IF NOT EXISTS layer_rows (tenant text, note text);
             SELECT pg_advisory_unlock(7655003);",
        )
        .await
        .unwrap();
}

async fn rows(pool: &Pool, tenant: &str) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM layer_rows WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0)
}

fn layer(pool: &Pool) -> IdempotencyLayer {
    IdempotencyLayer::new(pool.clone()).tenant(|p| {
        Ok(p.headers
            .get("x-tenant")
            .map(|v| v.to_str().unwrap().to_owned()))
    })
}

fn post_req(path: &str, tenant: &str, key: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("x-tenant", tenant)
        .header("idempotency-key", key)
        .header("content-type", "text/plain")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

async fn state(pool: &Pool, tenant: &str, key: &str) -> State {
    let c = pool.get().await.unwrap();
    calls::check(&c, tenant, key, None).await.unwrap().state
}

/// Inserts one row through the layer's transaction, then answers `?status=` (201) or streams.
async fn write_row(tx: IdemTx, req: Request<Body>) -> Response {
    let tenant = req.headers()["x-tenant"].to_str().unwrap().to_owned();
    let q = req.uri().query().unwrap_or("").to_owned();
    tx.lock()
        .await
        .execute("INSERT INTO layer_rows VALUES ($1, 'row')", &[&tenant])
        .await
        .unwrap();
    if q == "stream" {
        let s = futures_util::stream::iter(["a", "b"].map(Ok::<_, std::io::Error>));
        return Body::from_stream(s).into_response();
    }
    if q == "sleep" {
        // Longer than the 1 s ttl of the test that asks for it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let status = q
        .strip_prefix("status=")
        .map_or(201, |s| s.parse().unwrap());
    (StatusCode::from_u16(status).unwrap(), "written").into_response()
}

fn tx_app(pool: &Pool) -> Router {
    Router::new()
        .route("/rows", post(write_row))
        .route_layer(layer(pool).mode(Mode::Transaction))
}

#[tokio::test]
async fn transaction_mode_commits_the_route_writes_with_the_outcome() {
    let pool = pool_with(None);
    table(&pool).await;
    let app = tx_app(&pool);
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    let (s, h, b) = send(&app, post_req("/rows", &t, &k, "x")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::CREATED, &b"written"[..]));
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(rows(&pool, &t).await, 1);
    assert_eq!(state(&pool, &t, &k).await, State::Completed);
    let (s, h, b) = send(&app, post_req("/rows", &t, &k, "x")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::CREATED, &b"written"[..]));
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(rows(&pool, &t).await, 1);
}

#[tokio::test]
async fn the_outcome_is_stored_in_one_flight() {
    let (pool, rt) = super::new_pool(1).await;
    table(&pool).await;
    let tx = tx_app(&pool);
    let phased = Router::new()
        .route("/echo", post(|| async { (StatusCode::CREATED, "ok") }))
        .route_layer(layer(&pool));
    let t = format!("layer:{}", uuid());
    // Warm up: the connection and the layer's statements, prepared.
    send(&tx, post_req("/rows", &t, &uuid(), "x")).await;
    send(&phased, post_req("/echo", &t, &uuid(), "x")).await;
    // Transaction mode: BEGIN and idem_begin; the route's INSERT (prepared, then executed);
    // idem_complete and COMMIT.
    let n = super::count(&rt, async {
        let (s, _, _) = send(&tx, post_req("/rows", &t, &uuid(), "x")).await;
        assert_eq!(s, StatusCode::CREATED);
    })
    .await;
    assert_eq!(n, 4);
    // Phased: the claim (BEGIN, idem_begin, COMMIT), then the store.
    let n = super::count(&rt, async {
        let (s, _, _) = send(&phased, post_req("/echo", &t, &uuid(), "x")).await;
        assert_eq!(s, StatusCode::CREATED);
    })
    .await;
    assert_eq!(n, 2);
    // No savepoint under the route either: its write takes no second xid (one transactionid
    // lock, the transaction's own).
    let xids = |tx: IdemTx, req: Request<Body>| async move {
        let tenant = req.headers()["x-tenant"].to_str().unwrap().to_owned();
        let c = tx.lock().await;
        c.execute("INSERT INTO layer_rows VALUES ($1, 'row')", &[&tenant])
            .await
            .unwrap();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (StatusCode::CREATED, n.to_string())
    };
    let app = Router::new()
        .route("/xids", post(xids))
        .route_layer(layer(&pool).mode(Mode::Transaction));
    let (s, _, b) = send(&app, post_req("/xids", &t, &uuid(), "x")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::CREATED, &b"1"[..]));
}

#[tokio::test]
async fn transaction_mode_rolls_back_a_5xx_and_commits_a_stream_with_the_key_failed() {
    let pool = pool_with(None);
    table(&pool).await;
    let app = tx_app(&pool);
    let t = format!("layer:{}", uuid());
    let k = uuid();
    let (s, _, _) = send(&app, post_req("/rows?status=503", &t, &k, "x")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rows(&pool, &t).await, 0);
    // The claim rolled back with the row: no record at all.
    assert_eq!(state(&pool, &t, &k).await, State::Absent);

    let k = uuid();
    let (s, h, b) = send(&app, post_req("/rows?stream", &t, &k, "x")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, &b"ab"[..]));
    assert!(h.get("content-length").is_none());
    assert_eq!(rows(&pool, &t).await, 1);
    assert_eq!(state(&pool, &t, &k).await, State::Failed);
    // Failed retryably: the retry executes again (a second row).
    send(&app, post_req("/rows?stream", &t, &k, "x")).await;
    assert_eq!(rows(&pool, &t).await, 2);
}

/// 680 body bytes under the content type `text/x-pad; p=` and `?pad=` times `x`: one more
/// `x` is one more byte of the stored document.
async fn padded(req: Request<Body>) -> Response {
    let pad: usize = req.uri().query().unwrap()["pad=".len()..].parse().unwrap();
    let ct = format!("text/x-pad; p={}", "x".repeat(pad));
    ([("content-type", ct)], "y".repeat(680)).into_response()
}

#[tokio::test]
async fn a_response_over_max_response_size_is_stored_omitted_to_the_byte() {
    // The setting is superuser-only; the test database's role is one. Lowered to 1 kB for
    // this pool's sessions.
    let pool = pool_with(Some("-c idempotency.max_response_size=1kB"));
    table(&pool).await;
    // The padding whose stored document is exactly 1024 bytes by the extension's measure (the
    // jsonb's size without its 4-byte header): the largest that fits.
    let c = pool.get().await.unwrap();
    let mut fits = None;
    for pad in 0..64usize {
        let doc = StoredResponse {
            headers: vec![(
                "content-type".into(),
                format!("text/x-pad; p={}", "x".repeat(pad)),
            )],
            body: Some(vec![b'y'; 680]),
        }
        .encode();
        let size: i32 = c
            .query_one("SELECT pg_column_size($1::jsonb) - 4", &[&doc])
            .await
            .unwrap()
            .get(0);
        if size == 1024 {
            fits = Some(pad);
            break;
        }
    }
    drop(c);
    let fits = fits.expect("a padding gives a 1024-byte document");
    let big = || async { "y".repeat(4000) };
    let phased = Router::new()
        .route("/big", post(big))
        .route("/padded", post(padded))
        .route_layer(layer(&pool));
    let tx = Router::new()
        .route("/big", post(big))
        .route("/padded", post(padded))
        .route_layer(layer(&pool).mode(Mode::Transaction));
    for app in [phased, tx] {
        let t = format!("layer:{}", uuid());
        for (path, len, omitted) in [
            ("/big".to_owned(), 4000, true),
            (format!("/padded?pad={fits}"), 680, false),
            (format!("/padded?pad={}", fits + 1), 680, true),
        ] {
            let k = uuid();
            let (s, h, b) = send(&app, post_req(&path, &t, &k, "")).await;
            assert_eq!((s, b.len()), (StatusCode::OK, len), "{path}");
            assert!(h.get("idempotent-replay-body").is_none());
            let (s, h, b) = send(&app, post_req(&path, &t, &k, "")).await;
            assert_eq!(h["idempotent-replayed"], "true");
            if omitted {
                assert_eq!((s, b.len()), (StatusCode::OK, 0), "{path}");
                assert_eq!(h["idempotent-replay-body"], "omitted");
            } else {
                assert_eq!(
                    (s, b, h.get("idempotent-replay-body")),
                    (StatusCode::OK, "y".repeat(680).into_bytes(), None),
                    "{path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_path_under_a_nested_router_is_the_full_path() {
    let pool = pool_with(None);
    setup().await;
    let echo = || async { (StatusCode::CREATED, "ok") };
    let inner = Router::new()
        .route("/echo", post(echo))
        .route_layer(layer(&pool));
    let app = Router::new().nest("/a", inner.clone()).nest("/b", inner);
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    assert_eq!(
        send(&app, post_req("/a/echo", &t, &k, "x")).await.0,
        StatusCode::CREATED
    );
    let (s, h, b) = send(&app, post_req("/b/echo", &t, &k, "x")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(doc["code"], "idempotency_key_reused");
    assert!(doc["first_used_at"].as_str().unwrap().ends_with('Z'));
    // The first record is untouched: its retry replays.
    let (s, h, _) = send(&app, post_req("/a/echo", &t, &k, "x")).await;
    assert_eq!(
        (s, h["idempotent-replayed"].to_str().unwrap()),
        (StatusCode::CREATED, "true")
    );
}

#[tokio::test]
async fn a_json_body_jsonb_cannot_hold_is_hashed() {
    let pool = pool_with(None);
    setup().await;
    let echo = |b: String| async move { (StatusCode::CREATED, b) };
    let app = Router::new()
        .route("/echo", post(echo))
        .route_layer(layer(&pool));
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    let json = |body: &str| {
        let mut r = post_req("/echo", &t, &k, body);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    let nul = r#"{"a": "\u0000"}"#;
    let (s, h, b) = send(&app, json(nul)).await;
    assert_eq!((s, b.as_slice()), (StatusCode::CREATED, nul.as_bytes()));
    assert!(h.get("idempotent-replayed").is_none());
    let (s, h, _) = send(&app, json(nul)).await;
    assert_eq!(
        (s, h["idempotent-replayed"].to_str().unwrap()),
        (StatusCode::CREATED, "true")
    );
    // Hashed, so its spelling is part of the command.
    let (s, _, _) = send(&app, json(r#"{"a":"\u0000"}"#)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn idem_tx_outside_transaction_mode_is_500_and_the_key_is_released() {
    let pool = pool_with(None);
    table(&pool).await;
    let app = Router::new()
        .route("/rows", post(write_row))
        .route_layer(layer(&pool));
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    let (s, _, b) = send(&app, post_req("/rows", &t, &k, "x")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(doc["code"], "internal_error");
    assert_eq!(state(&pool, &t, &k).await, State::Failed);
    assert_eq!(rows(&pool, &t).await, 0);
}

#[tokio::test]
async fn a_key_that_expires_during_the_transaction_rolls_back_and_answers_503() {
    let pool = pool_with(None);
    table(&pool).await;
    let app = Router::new().route("/rows", post(write_row)).route_layer(
        layer(&pool)
            .mode(Mode::Transaction)
            .ttl(Duration::from_secs(1)),
    );
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    // Storing meets IK002: idem_complete and the COMMIT went together, so the transaction
    // rolled back, the route's row and the claim with it; the answer is 503 with
    // Retry-After: 1, and the same request executes again (and again meets IK002).
    for _ in 1..=2 {
        let (s, h, b) = send(&app, post_req("/rows?sleep", &t, &k, "x")).await;
        assert_eq!(
            (
                s,
                h["content-type"].to_str().unwrap(),
                h["retry-after"].to_str().unwrap()
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/problem+json",
                "1"
            )
        );
        let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(doc["code"], "service_unavailable");
        assert_eq!(rows(&pool, &t).await, 0);
        assert_eq!(state(&pool, &t, &k).await, State::Absent);
    }
}

#[tokio::test]
async fn a_key_evicted_while_its_phased_route_runs_answers_the_route_unstored() {
    let pool = pool_with(None);
    setup().await;
    let forgets = pool.clone();
    let evicting = move |req: Request<Body>| {
        let pool = forgets.clone();
        async move {
            let h = req.headers();
            let (t, k) = (
                h["x-tenant"].to_str().unwrap(),
                h["idempotency-key"].to_str().unwrap(),
            );
            let c = pool.get().await.unwrap();
            let gone: bool = c
                .query_one("SELECT idem_forget($1, $2)", &[&t, &k])
                .await
                .unwrap()
                .get(0);
            assert!(gone);
            (StatusCode::CREATED, "evicted")
        }
    };
    let app = Router::new()
        .route("/evict", post(evicting))
        .route_layer(layer(&pool));
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    for _ in 0..2 {
        let (s, h, b) = send(&app, post_req("/evict", &t, &k, "x")).await;
        assert_eq!((s, b.as_slice()), (StatusCode::CREATED, &b"evicted"[..]));
        assert!(h.get("idempotent-replayed").is_none());
        assert_eq!(state(&pool, &t, &k).await, State::Absent);
    }
}

#[tokio::test]
async fn a_phased_route_slower_than_its_lease_is_not_stored_and_answers_409() {
    let pool = pool_with(None);
    setup().await;
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (StatusCode::CREATED, "late")
    };
    let app = Router::new()
        .route("/slow", post(slow))
        .route_layer(layer(&pool).lease(Duration::from_millis(300)));
    let (t, k) = (format!("layer:{}", uuid()), uuid());
    let first = tokio::spawn({
        let app = app.clone();
        let req = post_req("/slow", &t, &k, "x");
        async move { send(&app, req).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The lease ran out: this request takes the key over (attempt 2) and stores its outcome.
    let (s, _, b) = send(&app, post_req("/slow", &t, &k, "x")).await;
    assert_eq!((s, b.as_slice()), (StatusCode::CREATED, &b"late"[..]));
    let (s, h, b) = first.await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(h["retry-after"], "1");
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(doc["code"], "request_in_progress");
    let c = pool.get().await.unwrap();
    let checked = calls::check(&c, &t, &k, None).await.unwrap();
    assert_eq!(
        (checked.state, checked.attempt),
        (State::Completed, Some(2))
    );
}

#[test]
fn building_without_a_tenant_or_with_set_cookie_is_refused() {
    let pool = pool_with(None);
    let no_tenant = IdempotencyLayer::new(pool.clone());
    assert!(no_tenant.check().is_err());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Router = Router::new()
            .route("/x", post(|| async { "x" }))
            .layer(no_tenant);
    }));
    assert!(panicked.is_err());
    assert!(IdempotencyLayer::new(pool.clone())
        .global_keys()
        .check()
        .is_ok());
    let cookie = layer(&pool).replay_headers([axum::http::header::SET_COOKIE]);
    assert_eq!(
        cookie.check().unwrap_err().to_string(),
        "the idempotency layer never stores set-cookie: remove it from replay_headers"
    );
}

/// The 422's `first_used_at` is the record's `created_at` to the microsecond, read as data
/// after the refusal, in both modes, whatever the sessions' DateStyle and TimeZone.
#[tokio::test]
async fn a_reused_key_answers_first_used_at_whatever_the_datestyle() {
    let pool = pool_with(Some("-c DateStyle=SQL,DMY -c TimeZone=Asia/Kolkata"));
    table(&pool).await;
    let echo = || async { (StatusCode::CREATED, "ok") };
    let phased = Router::new()
        .route("/echo", post(echo))
        .route_layer(layer(&pool));
    for (app, path) in [(phased, "/echo"), (tx_app(&pool), "/rows")] {
        let (t, k) = (format!("layer:{}", uuid()), uuid());
        let first = send(&app, post_req(path, &t, &k, "x")).await;
        assert_eq!(first.0, StatusCode::CREATED, "{path}");
        let (s, h, b) = send(&app, post_req(path, &t, &k, "y")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(h["content-type"], "application/problem+json");
        let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let c = pool.get().await.unwrap();
        let created: chrono::DateTime<chrono::Utc> = c
            .query_one("SELECT created_at FROM idem_check($1, $2)", &[&t, &k])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            (doc["code"].as_str(), doc["first_used_at"].as_str()),
            (
                Some("idempotency_key_reused"),
                Some(idempotency_client::http::rfc3339(created).as_str())
            ),
            "{path}"
        );
    }
}
