//! `POST /v1/payments` and `GET /v1/payments/{id}`. A payment runs in phases (docs/http.md,
//! "Payments: phases"): claim under a lease, charge the card (unless an earlier attempt's
//! checkpoint says it is charged), checkpoint `charged`, then the payment and the completion
//! in one transaction.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use idempotency_client::headers::Prefer;
use idempotency_client::http::code;
use idempotency_client::phased::{self, Claim, Phased};
use idempotency_client::{BeginRequest, Completion};
use serde_json::{json, Value};

use crate::app::{new_id, Shared};
use crate::db;
use crate::extract::{IdempotencyKey, NewPayment, PathId, Preferences, Tenant};
use crate::fault::{self, Fault, Injected};
use crate::loads;
use crate::problem::Problem;
use crate::processor::{self, Charge};
use crate::respond::{detached, in_progress, json_response, replay, with_location};
use crate::validate::PaymentBody;

pub async fn create(
    State(app): State<Shared>,
    Tenant(tenant): Tenant,
    IdempotencyKey(key): IdempotencyKey,
    Preferences(prefer): Preferences,
    Injected(fault): Injected,
    NewPayment { body, payment }: NewPayment,
) -> Result<Response, Problem> {
    app.ensure_ready()?;
    Ok(detached(flow(app, tenant, key, body, payment, fault, prefer)).await)
}

async fn flow(
    app: Shared,
    tenant: String,
    key: String,
    body: Value,
    pay: PaymentBody,
    fault: Option<Fault>,
    prefer: Prefer,
) -> Result<Response, Problem> {
    let command = json!({"method": "POST", "path": "/v1/payments", "body": body});
    let req = BeginRequest::new(&tenant, &key, &command).lease(app.lease);
    let claimed = match prefer.wait {
        Some(n) if n > 0 => phased::claim_waiting(&app.pool, &req, Duration::from_secs(n)).await,
        _ => phased::claim(&app.pool, &req).await,
    };
    let mut holder = match claimed? {
        Claim::Replay(b) => return replay(&app, &tenant, &b).await,
        Claim::InProgress(_, checked) => return Ok(in_progress(&key, &checked, prefer)),
        Claim::Execute(holder) => holder,
    };
    fault::crash_at(fault, Fault::AfterClaim);

    let charge_id = match charged(&holder) {
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
                    let p = Problem::new(402, code::CARD_DECLINED, "The card was declined.");
                    holder.fail(&p.failure(false)).await?;
                    return Err(p);
                }
                Charge::Unavailable(why) => {
                    eprintln!("payments-api: {why}");
                    let p = Problem::new(
                        503,
                        code::PROCESSOR_UNAVAILABLE,
                        "The card processor is not available; retry with the same Idempotency-Key.",
                    )
                    .retry_after(1);
                    holder.fail(&p.failure(true)).await?;
                    return Err(p);
                }
            }
        }
    };
    fault::crash_at(fault, Fault::AfterCharge);
    if holder.recovery_point() != Some("charged") {
        holder
            .checkpoint("charged", Some(&json!({"charge_id": charge_id})))
            .await?;
    }
    fault::crash_at(fault, Fault::AfterCheckpoint);

    let id = new_id("pay");
    let completion = Completion::resource(format!("payments/{id}"), 201);
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
            fault::before_commit(fault),
        )
        .await?;
    let [row] = rows.as_slice() else {
        return Err(Problem::internal("The payment was not written."));
    };
    let doc = loads::payment_doc(
        &id,
        row.get(0),
        &pay.currency,
        "succeeded",
        &charge_id,
        row.get(1),
    );
    Ok(with_location(
        json_response(201, &doc),
        &format!("/v1/payments/{id}"),
    ))
}

/// The charge of an earlier attempt, from its checkpoint `charged`.
fn charged(holder: &Phased) -> Option<String> {
    match (holder.recovery_point(), holder.recovery_data()) {
        (Some("charged"), Some(data)) => data
            .get("charge_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

pub async fn get(
    State(app): State<Shared>,
    Tenant(tenant): Tenant,
    PathId(id): PathId,
) -> Result<Response, Problem> {
    app.ensure_ready()?;
    let doc = loads::payment(&app.pool, &id, &tenant)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(json_response(200, &doc))
}
