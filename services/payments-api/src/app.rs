//! The routes of the payments API. Each handler checks the request (tenant, key, body) before
//! anything is claimed, then lets `idempotency-client` talk to the extension and maps its
//! answer to HTTP with `idempotency_client::http`. The handlers never decide what a key's state
//! means: the database does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use idempotency_client::http::{self as map, code, rfc3339, Answer};
use idempotency_client::one_tx::{self, Finish, Ran, RunError};
use idempotency_client::phased::{self, Claim};
use idempotency_client::{calls, BeginRequest, Begun, Checked, Completion, Error, Failure};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

use crate::db;
use crate::headers;
use crate::loads;
use crate::processor::{self, Charge};
use crate::validate;
use idempotency_client::headers::{self as keys, KeyError, Prefer};
use idempotency_client::layer::{answers, Problem};

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// `Prefer: wait=N` is capped at this many seconds.
const MAX_WAIT_SECS: u64 = 10;

pub struct App {
    pub pool: Pool,
    pub http: reqwest::Client,
    pub processor_url: String,
    pub lease: Duration,
    pub fault_injection: bool,
    /// Set once the schema is in place.
    pub ready: AtomicBool,
}

type Shared = Arc<App>;

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/v1/payments", post(create_payment))
        .route("/v1/payments/{id}", get(get_payment))
        .route("/v1/payments/{id}/refunds", post(create_refund))
        .route("/v1/refunds/{id}", get(get_refund))
        .route("/v1/idempotency-keys/{key}", get(get_key))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

// --- responses -----------------------------------------------------------------------------

fn problem_doc(status: u16, code: &str, detail: &str) -> Value {
    Problem::new(status, code, detail).document()
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct = if status >= 400 {
        map::PROBLEM_JSON
    } else {
        "application/json"
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// Applies an [`Answer`]'s headers.
fn with_answer(mut r: Response, a: &Answer) -> Response {
    if a.replayed {
        r.headers_mut()
            .insert(map::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Some(s) = a.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn problem(status: u16, code: &str, detail: &str) -> Response {
    Problem::new(status, code, detail).into_response()
}

fn with_location(mut r: Response, location: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn unauthorized() -> Response {
    let mut r = problem(
        401,
        code::UNAUTHORIZED,
        "Send Authorization: Bearer <tenant>, the tenant being 1 to 64 of [A-Za-z0-9_-].",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn key_problem(e: KeyError) -> Response {
    answers::key_error(e).into_response()
}

fn not_found() -> Response {
    problem(404, code::NOT_FOUND, "No such resource for this tenant.")
}

fn unavailable(detail: &str) -> Response {
    Problem::new(503, code::SERVICE_UNAVAILABLE, detail)
        .retry_after(1)
        .into_response()
}

/// The answer for an error of the client crate.
fn error_response(e: &Error) -> Response {
    let p = answers::error(e);
    if p.status >= 500 {
        eprintln!("payments-api: {e}");
    }
    p.into_response()
}

fn db_error(e: tokio_postgres::Error) -> Response {
    error_response(&Error::from_db(e, None))
}

/// The key's state document (`GET /v1/idempotency-keys/{key}`, and the body of a 202).
fn key_state(key: &str, c: &Checked) -> Value {
    if c.state == calls::State::Absent {
        return json!({"state": "absent"});
    }
    json!({
        "key": key,
        "state": c.state.as_str(),
        "attempt": c.attempt,
        "status": c.http_status,
        "resource": c.resource,
        "created_at": c.created_at.map(rfc3339),
        "expires_at": c.expires_at.map(rfc3339),
        "lease_expires_at": c.lease_expires_at.map(rfc3339),
    })
}

/// Another request holds the key: 409 with `Retry-After`, or 202 for `Prefer: respond-async`.
fn in_progress(key: &str, checked: &Checked, prefer: Prefer) -> Response {
    let a = map::for_in_progress(Some(checked), Utc::now());
    if prefer.respond_async {
        let loc = format!("/v1/idempotency-keys/{}", headers::encode_segment(key));
        let r = with_location(json_response(202, &key_state(key, checked)), &loc);
        return with_answer(
            r,
            &Answer {
                status: 202,
                code: None,
                replayed: false,
                retry_after: a.retry_after,
            },
        );
    }
    answers::in_progress(Some(checked), Prefer::default(), None).into_response()
}

/// A replay: the stored status with the body rebuilt from the stored resource (a success) or
/// the stored problem (a final failure), and `Idempotent-Replayed: true`.
async fn replay(app: &App, tenant: &str, b: &Begun) -> Response {
    let a = map::for_replay(b);
    if a.status >= 400 {
        let body = b
            .response
            .clone()
            .unwrap_or_else(|| problem_doc(a.status, code::INTERNAL_ERROR, "A stored failure."));
        return with_answer(json_response(a.status, &body), &a);
    }
    let resource = b.resource.as_deref().unwrap_or_default();
    let (doc, location) = if let Some(id) = resource.strip_prefix("payments/") {
        (
            loads::payment(&app.pool, id, tenant).await,
            format!("/v1/payments/{id}"),
        )
    } else if let Some(id) = resource.strip_prefix("refunds/") {
        (
            loads::refund(&app.pool, id, tenant).await,
            format!("/v1/refunds/{id}"),
        )
    } else {
        eprintln!("payments-api: replay of an unknown resource {resource:?}");
        return problem(
            500,
            code::INTERNAL_ERROR,
            "The stored outcome names no resource.",
        );
    };
    match doc {
        Ok(Some(doc)) => with_answer(with_location(json_response(a.status, &doc), &location), &a),
        Ok(None) => {
            eprintln!("payments-api: the stored resource {resource:?} is gone");
            problem(
                500,
                code::INTERNAL_ERROR,
                "The stored outcome's resource is gone.",
            )
        }
        Err(e) => error_response(&e),
    }
}

// --- request checks ----------------------------------------------------------------------------

async fn read_json(body: Body) -> Result<Value, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        problem(
            413,
            code::INVALID_REQUEST,
            "The body is larger than 64 KiB.",
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        problem(
            400,
            code::INVALID_REQUEST,
            &format!("The body is not JSON: {e}."),
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    AfterClaim,
    AfterCharge,
    AfterCheckpoint,
    BeforeCommit,
}

fn fault(app: &App, h: &HeaderMap) -> Option<Fault> {
    if !app.fault_injection {
        return None;
    }
    match h.get("x-fault")?.to_str().ok()?.trim() {
        "crash-after-claim" => Some(Fault::AfterClaim),
        "crash-after-charge" => Some(Fault::AfterCharge),
        "crash-after-checkpoint" => Some(Fault::AfterCheckpoint),
        "crash-before-commit" => Some(Fault::BeforeCommit),
        _ => None,
    }
}

fn crash_at(fault: Option<Fault>, point: Fault) {
    if fault == Some(point) {
        eprintln!("payments-api: fault injection {point:?}: aborting the process");
        std::process::abort();
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Runs the rest of a request as a task of its own: a client that goes away does not cancel
/// a request half-way (its outcome is stored for the retry).
async fn detached<F>(f: F) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    tokio::spawn(f).await.unwrap_or_else(|e| {
        eprintln!("payments-api: request task failed: {e}");
        problem(
            500,
            code::INTERNAL_ERROR,
            "Something went wrong on our side.",
        )
    })
}

// --- routes --------------------------------------------------------------------------------

async fn healthz(State(app): State<Shared>) -> Response {
    if !app.ready.load(Ordering::SeqCst) {
        return unavailable("The service has not reached its database yet.");
    }
    match app.pool.get().await {
        Ok(c) => match c.simple_query("SELECT 1").await {
            Ok(_) => json_response(200, &json!({"status": "ok"})),
            Err(e) => db_error(e),
        },
        Err(e) => error_response(&Error::from(e)),
    }
}

async fn openapi() -> Response {
    let mut r = Response::new(Body::from(include_str!("../openapi.json")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn fallback() -> Response {
    not_found()
}

async fn method_not_allowed() -> Response {
    problem(
        405,
        code::INVALID_REQUEST,
        "This method is not allowed on this route.",
    )
}

macro_rules! ready_or_503 {
    ($app:expr) => {
        if !$app.ready.load(Ordering::SeqCst) {
            return unavailable("The service has not reached its database yet.");
        }
    };
}

async fn create_payment(State(app): State<Shared>, h: HeaderMap, body: Body) -> Response {
    let Some(tenant) = headers::tenant(&h) else {
        return unauthorized();
    };
    let key = match keys::idempotency_key_of(&h) {
        Ok(k) => k,
        Err(e) => return key_problem(e),
    };
    let value = match read_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let pay = match validate::payment_body(&value) {
        Ok(p) => p,
        Err(d) => return problem(400, code::INVALID_REQUEST, &d),
    };
    ready_or_503!(app);
    let fault = fault(&app, &h);
    let prefer = keys::prefer_of(&h, MAX_WAIT_SECS);
    detached(payment_flow(app, tenant, key, value, pay, fault, prefer)).await
}

/// The phases: claim under a lease, charge (unless an earlier attempt's checkpoint says it is
/// charged), checkpoint `charged`, then the payment and the completion in one transaction.
async fn payment_flow(
    app: Shared,
    tenant: String,
    key: String,
    body: Value,
    pay: validate::PaymentBody,
    fault: Option<Fault>,
    prefer: Prefer,
) -> Response {
    let command = json!({"method": "POST", "path": "/v1/payments", "body": body});
    let req = BeginRequest::new(&tenant, &key, &command).lease(app.lease);
    let claimed = match prefer.wait {
        Some(n) if n > 0 => phased::claim_waiting(&app.pool, &req, Duration::from_secs(n)).await,
        _ => phased::claim(&app.pool, &req).await,
    };
    let mut holder = match claimed {
        Err(e) => return error_response(&e),
        Ok(Claim::Replay(b)) => return replay(&app, &tenant, &b).await,
        Ok(Claim::InProgress(_, checked)) => return in_progress(&key, &checked, prefer),
        Ok(Claim::Execute(holder)) => holder,
    };
    crash_at(fault, Fault::AfterClaim);

    let resumed = match (holder.recovery_point(), holder.recovery_data()) {
        (Some("charged"), Some(data)) => data
            .get("charge_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let charge_id = match resumed {
        Some(id) => id,
        None => {
            let processor_key = format!("{tenant}/{key}");
            match processor::charge(
                &app.http,
                &app.processor_url,
                &processor_key,
                &pay.amount,
                &pay.currency,
                &pay.card,
            )
            .await
            {
                Charge::Charged(id) => id,
                Charge::Declined => {
                    let p = problem_doc(402, code::CARD_DECLINED, "The card was declined.");
                    let f = Failure {
                        error: Some(p.clone()),
                        retryable: false,
                        http_status: 402,
                    };
                    return match holder.fail(&f).await {
                        Ok(()) => json_response(402, &p),
                        Err(e) => error_response(&e),
                    };
                }
                Charge::Unavailable(why) => {
                    eprintln!("payments-api: {why}");
                    let p = problem_doc(
                        503,
                        code::PROCESSOR_UNAVAILABLE,
                        "The card processor is not available; retry with the same Idempotency-Key.",
                    );
                    let f = Failure {
                        error: Some(p.clone()),
                        retryable: true,
                        http_status: 503,
                    };
                    return match holder.fail(&f).await {
                        Ok(()) => {
                            let a = Answer {
                                status: 503,
                                code: Some(code::PROCESSOR_UNAVAILABLE.into()),
                                replayed: false,
                                retry_after: Some(1),
                            };
                            with_answer(json_response(503, &p), &a)
                        }
                        Err(e) => error_response(&e),
                    };
                }
            }
        }
    };
    crash_at(fault, Fault::AfterCharge);
    if holder.recovery_point() != Some("charged") {
        if let Err(e) = holder
            .checkpoint("charged", Some(&json!({"charge_id": charge_id})))
            .await
        {
            return error_response(&e);
        }
    }
    crash_at(fault, Fault::AfterCheckpoint);

    let id = new_id("pay");
    let completion = Completion::resource(format!("payments/{id}"), 201);
    let die = || crash_at(Some(Fault::BeforeCommit), Fault::BeforeCommit);
    let hook: Option<&(dyn Fn() + Sync)> = (fault == Some(Fault::BeforeCommit)).then_some(&die);
    let rows = holder
        .finish_with(
            db::SQL_INSERT_PAYMENT,
            &[
                &id,
                &tenant,
                &key,
                &pay.amount,
                &pay.currency,
                &pay.card,
                &pay.description,
                &charge_id,
            ],
            &completion,
            hook,
        )
        .await;
    match rows {
        Ok(rows) if rows.len() == 1 => {
            let doc = loads::payment_doc(
                &id,
                rows[0].get(0),
                &pay.currency,
                "succeeded",
                &charge_id,
                rows[0].get(1),
            );
            with_location(json_response(201, &doc), &format!("/v1/payments/{id}"))
        }
        Ok(_) => problem(500, code::INTERNAL_ERROR, "The payment was not written."),
        Err(e) => error_response(&e),
    }
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Option<String> {
    p.ok().map(|Path(id)| id)
}

async fn get_payment(
    State(app): State<Shared>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(tenant) = headers::tenant(&h) else {
        return unauthorized();
    };
    let Some(id) = path_id(p) else {
        return not_found();
    };
    ready_or_503!(app);
    match loads::payment(&app.pool, &id, &tenant).await {
        Ok(Some(doc)) => json_response(200, &doc),
        Ok(None) => not_found(),
        Err(e) => error_response(&e),
    }
}

async fn get_refund(
    State(app): State<Shared>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(tenant) = headers::tenant(&h) else {
        return unauthorized();
    };
    let Some(id) = path_id(p) else {
        return not_found();
    };
    ready_or_503!(app);
    match loads::refund(&app.pool, &id, &tenant).await {
        Ok(Some(doc)) => json_response(200, &doc),
        Ok(None) => not_found(),
        Err(e) => error_response(&e),
    }
}

async fn get_key(
    State(app): State<Shared>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(tenant) = headers::tenant(&h) else {
        return unauthorized();
    };
    let Some(key) = path_id(p).filter(|k| keys::valid_key(k)) else {
        return key_problem(KeyError::Invalid);
    };
    ready_or_503!(app);
    let c = match app.pool.get().await {
        Ok(c) => c,
        Err(e) => return error_response(&Error::from(e)),
    };
    match calls::check(&c, &tenant, &key, None).await {
        Ok(checked) => json_response(200, &key_state(&key, &checked)),
        Err(e) => error_response(&e),
    }
}

enum RefundDone {
    Created(Value, String),
    Exceeds(Value),
    NotFound,
}

async fn create_refund(
    State(app): State<Shared>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    let Some(tenant) = headers::tenant(&h) else {
        return unauthorized();
    };
    let Some(payment_id) = path_id(p) else {
        return not_found();
    };
    let key = match keys::idempotency_key_of(&h) {
        Ok(k) => k,
        Err(e) => return key_problem(e),
    };
    let value = match read_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let amount = match validate::refund_amount(&value) {
        Ok(a) => a,
        Err(d) => return problem(400, code::INVALID_REQUEST, &d),
    };
    ready_or_503!(app);
    let prefer = keys::prefer_of(&h, MAX_WAIT_SECS);
    detached(refund_flow(
        app, tenant, key, payment_id, value, amount, prefer,
    ))
    .await
}

/// One transaction: begin, lock the payment, insert the refund if it fits, complete; or store
/// the final failure `refund_exceeds_payment`; or roll back for an unknown payment.
async fn refund_flow(
    app: Shared,
    tenant: String,
    key: String,
    payment_id: String,
    body: Value,
    amount: String,
    prefer: Prefer,
) -> Response {
    let command = json!({"method": "POST", "path": format!("/v1/payments/{payment_id}/refunds"), "body": body});
    let mut req = BeginRequest::new(&tenant, &key, &command);
    if let Some(n) = prefer.wait.filter(|&n| n > 0) {
        req = req.wait(Duration::from_secs(n));
    }
    let refund_id = new_id("re");
    // The work's future may borrow only the connection: it owns copies of what it needs.
    let (pid, t, rid, amt) = (
        payment_id.clone(),
        tenant.clone(),
        refund_id.clone(),
        amount.clone(),
    );
    let ran = one_tx::run(&app.pool, &req, move |c, _| {
        Box::pin(async move {
            let lock = c.prepare_cached(db::SQL_LOCK_PAYMENT).await?;
            let insert = c.prepare_cached(db::SQL_INSERT_REFUND).await?;
            // Pipelined: the insert runs after the lock is granted, with a snapshot that sees
            // every refund committed before it.
            let lock_params: [&(dyn ToSql + Sync); 2] = [&pid, &t];
            let insert_params: [&(dyn ToSql + Sync); 4] = [&pid, &t, &rid, &amt];
            let (locked, inserted) = tokio::join!(
                c.query_opt(&lock, &lock_params),
                c.query_opt(&insert, &insert_params)
            );
            if locked?.is_none() {
                inserted?;
                return Ok(Finish::Rollback(RefundDone::NotFound));
            }
            Ok(match inserted? {
                Some(row) => {
                    let created: DateTime<Utc> = row.get(1);
                    let doc = loads::refund_doc(&rid, &pid, row.get(0), created);
                    Finish::Complete(
                        Completion::resource(format!("refunds/{rid}"), 201),
                        RefundDone::Created(doc, format!("/v1/refunds/{rid}")),
                    )
                }
                None => {
                    let p = problem_doc(
                        409,
                        code::REFUND_EXCEEDS_PAYMENT,
                        "The refunds of this payment would exceed its amount.",
                    );
                    Finish::Fail(
                        Failure {
                            error: Some(p.clone()),
                            retryable: false,
                            http_status: 409,
                        },
                        RefundDone::Exceeds(p),
                    )
                }
            })
        })
    })
    .await;
    match ran {
        Ok(Ran::Executed {
            value: RefundDone::Created(doc, loc),
            ..
        }) => with_location(json_response(201, &doc), &loc),
        Ok(Ran::Executed {
            value: RefundDone::Exceeds(p),
            ..
        }) => json_response(409, &p),
        Ok(Ran::Executed {
            value: RefundDone::NotFound,
            ..
        }) => not_found(),
        Ok(Ran::Replayed(b)) => replay(&app, &tenant, &b).await,
        Ok(Ran::InProgress(_, checked)) => in_progress(&key, &checked, prefer),
        Err(RunError::Idem(e)) => error_response(&e),
        Err(RunError::Work(e)) => db_error(e),
    }
}
