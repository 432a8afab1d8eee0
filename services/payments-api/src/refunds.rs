//! `POST /v1/payments/{id}/refunds` and `GET /v1/refunds/{id}`. A refund is one transaction
//! (docs/http.md, "Refunds: one transaction"): begin, lock the payment, insert the refund if it
//! fits, complete; or store the final failure `refund_exceeds_payment`; or roll back for an
//! unknown payment.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use idempotency_client::headers::Prefer;
use idempotency_client::http::code;
use idempotency_client::one_tx::{self, Finish, Ran, RunError};
use idempotency_client::{BeginRequest, Completion};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

use crate::app::{new_id, Shared};
use crate::db;
use crate::extract::{IdempotencyKey, NewRefund, PathId, Preferences, Tenant};
use crate::loads;
use crate::problem::Problem;
use crate::respond::{detached, in_progress, json_response, replay, with_location};

pub async fn create(
    State(app): State<Shared>,
    Tenant(tenant): Tenant,
    PathId(payment_id): PathId,
    IdempotencyKey(key): IdempotencyKey,
    Preferences(prefer): Preferences,
    NewRefund { body, amount }: NewRefund,
) -> Result<Response, Problem> {
    app.ensure_ready()?;
    Ok(detached(flow(app, tenant, key, payment_id, body, amount, prefer)).await)
}

/// What the refund's transaction came to.
enum Done {
    Created(Value, String),
    Exceeds(Problem),
    NotFound,
}

async fn flow(
    app: Shared,
    tenant: String,
    key: String,
    payment_id: String,
    body: Value,
    amount: String,
    prefer: Prefer,
) -> Result<Response, Problem> {
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
                return Ok(Finish::Rollback(Done::NotFound));
            }
            Ok(match inserted? {
                Some(row) => {
                    let created: DateTime<Utc> = row.get(1);
                    let doc = loads::refund_doc(&rid, &pid, row.get(0), created);
                    Finish::Complete(
                        Completion::resource(format!("refunds/{rid}"), 201),
                        Done::Created(doc, format!("/v1/refunds/{rid}")),
                    )
                }
                None => {
                    let p = Problem::new(
                        409,
                        code::REFUND_EXCEEDS_PAYMENT,
                        "The refunds of this payment would exceed its amount.",
                    );
                    Finish::Fail(p.failure(false), Done::Exceeds(p))
                }
            })
        })
    })
    .await
    .map_err(|e: RunError<tokio_postgres::Error>| match e {
        RunError::Idem(e) => Problem::from(e),
        RunError::Work(e) => Problem::from(e),
    })?;
    match ran {
        Ran::Executed {
            value: Done::Created(doc, loc),
            ..
        } => Ok(with_location(json_response(201, &doc), &loc)),
        Ran::Executed {
            value: Done::Exceeds(p),
            ..
        } => Err(p),
        Ran::Executed {
            value: Done::NotFound,
            ..
        } => Err(Problem::not_found()),
        Ran::Replayed(b) => replay(&app, &tenant, &b).await,
        Ran::InProgress(_, checked) => Ok(in_progress(&key, &checked, prefer)),
    }
}

pub async fn get(
    State(app): State<Shared>,
    Tenant(tenant): Tenant,
    PathId(id): PathId,
) -> Result<Response, Problem> {
    app.ensure_ready()?;
    let doc = loads::refund(&app.pool, &id, &tenant)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(json_response(200, &doc))
}
