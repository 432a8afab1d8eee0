//! The card processor: the client the service charges through, and the mock processor
//! (`payments-api mock-processor`, or in-process without `--processor-url`).
//!
//! Mock behaviour by card: `tok_visa` (and any other card) succeeds, `tok_declined` is
//! declined (402), `tok_flaky` answers 503 on the first call per idempotency key,
//! `tok_slow` answers after 2 s. The same idempotency key returns the same charge.
//! `GET /charges?idempotency_key=K` tells every charge made for K and how many calls K got.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What a charge attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Charged(String),
    Declined,
    /// 5xx, a timeout or no connection: retryable.
    Unavailable(String),
}

/// Charges through the processor at `base` with its idempotency key `<tenant>/<key>`.
pub async fn charge(
    http: &reqwest::Client,
    base: &str,
    idempotency_key: &str,
    amount: &str,
    currency: &str,
    card: &str,
) -> Charge {
    let sent = http
        .post(format!("{base}/charges"))
        .header("Idempotency-Key", idempotency_key)
        .json(&json!({"amount": amount, "currency": currency, "card": card}))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Charge::Unavailable(format!("processor unreachable: {e}")),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::PAYMENT_REQUIRED {
        return Charge::Declined;
    }
    if !status.is_success() {
        return Charge::Unavailable(format!("processor answered {status}"));
    }
    match resp.json::<serde_json::Value>().await {
        Ok(v) => match v.get("id").and_then(|id| id.as_str()) {
            Some(id) => Charge::Charged(id.to_owned()),
            None => Charge::Unavailable("processor answered without a charge id".into()),
        },
        Err(e) => Charge::Unavailable(format!("processor answer unreadable: {e}")),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ChargeDoc {
    id: String,
    amount: String,
    currency: String,
    card: String,
}

#[derive(Default)]
struct Entry {
    charges: Vec<ChargeDoc>,
    calls: u64,
    flaky_failed: bool,
}

#[derive(Clone, Default)]
pub struct Mock {
    keys: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Deserialize)]
struct ChargeRequest {
    amount: String,
    currency: String,
    card: String,
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({"error": code}))).into_response()
}

async fn post_charge(
    State(mock): State<Mock>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return error(StatusCode::BAD_REQUEST, "idempotency_key_missing");
    };
    let Ok(req) = serde_json::from_slice::<ChargeRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    {
        let mut keys = mock.keys.lock().unwrap();
        let e = keys.entry(key.clone()).or_default();
        e.calls += 1;
        if req.card == "tok_declined" {
            return error(StatusCode::PAYMENT_REQUIRED, "card_declined");
        }
        if req.card == "tok_flaky" && !e.flaky_failed {
            e.flaky_failed = true;
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    }
    if req.card == "tok_slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut keys = mock.keys.lock().unwrap();
    let e = keys.entry(key).or_default();
    if let Some(first) = e.charges.first() {
        if (
            first.amount.as_str(),
            first.currency.as_str(),
            first.card.as_str(),
        ) != (
            req.amount.as_str(),
            req.currency.as_str(),
            req.card.as_str(),
        ) {
            return error(StatusCode::CONFLICT, "idempotency_key_reused");
        }
        return Json(json!({"id": first.id})).into_response();
    }
    let doc = ChargeDoc {
        id: format!("ch_{}", uuid::Uuid::new_v4().simple()),
        amount: req.amount,
        currency: req.currency,
        card: req.card,
    };
    let id = doc.id.clone();
    e.charges.push(doc);
    Json(json!({"id": id})).into_response()
}

#[derive(Deserialize)]
struct ChargesQuery {
    idempotency_key: Option<String>,
}

async fn get_charges(State(mock): State<Mock>, Query(q): Query<ChargesQuery>) -> Response {
    let Some(key) = q.idempotency_key else {
        return error(StatusCode::BAD_REQUEST, "idempotency_key_missing");
    };
    let keys = mock.keys.lock().unwrap();
    let (charges, calls) = keys
        .get(&key)
        .map(|e| (e.charges.clone(), e.calls))
        .unwrap_or_default();
    Json(json!({"charges": charges, "calls": calls})).into_response()
}

pub fn router() -> Router {
    Router::new()
        .route("/charges", post(post_charge).get(get_charges))
        .with_state(Mock::default())
}
