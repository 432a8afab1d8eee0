//! What a route takes from the request, as axum extractors: the tenant, the path's id or key,
//! `Idempotency-Key`, `Prefer` and the checked body. Axum runs them in the handler's argument
//! order and the first rejection is the answer, so each handler lists them in the order of
//! docs/http.md part 2 (tenant, path, key, body; the service being ready comes after, in the
//! handler).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use idempotency_client::headers::{self as keys, KeyError, Prefer};
use idempotency_client::http::code;
use serde_json::Value;

use crate::headers;
use crate::problem::Problem;
use crate::validate::{self, PaymentBody};

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// `Prefer: wait=N` is capped at this many seconds.
const MAX_WAIT_SECS: u64 = 10;

/// `Authorization: Bearer <tenant>`, else 401 `unauthorized`.
pub struct Tenant(pub String);

impl<S: Sync> FromRequestParts<S> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        headers::tenant(&parts.headers)
            .map(Tenant)
            .ok_or_else(Problem::unauthorized)
    }
}

/// `Idempotency-Key`, else 400 `idempotency_key_missing` / `idempotency_key_invalid`.
pub struct IdempotencyKey(pub String);

impl<S: Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        Ok(IdempotencyKey(keys::idempotency_key_of(&parts.headers)?))
    }
}

/// `Prefer: respond-async` and `wait=N` (at most 10 s); anything else is ignored.
pub struct Preferences(pub Prefer);

impl<S: Sync> FromRequestParts<S> for Preferences {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Preferences(keys::prefer_of(&parts.headers, MAX_WAIT_SECS)))
    }
}

/// The route's `{id}`, else 404 `not_found`.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(PathId(id)),
            Err(_) => Err(Problem::not_found()),
        }
    }
}

/// The route's `{key}`, a valid key, else 400 `idempotency_key_invalid`.
pub struct PathKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) if keys::valid_key(&key) => Ok(PathKey(key)),
            _ => Err(KeyError::Invalid.into()),
        }
    }
}

/// The body as JSON: over 64 KiB 413, not JSON 400 (both `invalid_request`).
async fn read_json(body: Body) -> Result<Value, Problem> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            413,
            code::INVALID_REQUEST,
            "The body is larger than 64 KiB.",
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid(&format!("The body is not JSON: {e}.")))
}

/// A payment's body: the JSON as sent (the command's `body`) and its checked members.
pub struct NewPayment {
    pub body: Value,
    pub payment: PaymentBody,
}

impl<S: Sync> FromRequest<S> for NewPayment {
    type Rejection = Problem;

    async fn from_request(req: Request, _: &S) -> Result<Self, Problem> {
        let body = read_json(req.into_body()).await?;
        let payment = validate::payment_body(&body).map_err(|d| Problem::invalid(&d))?;
        Ok(NewPayment { body, payment })
    }
}

/// A refund's body: the JSON as sent and its amount.
pub struct NewRefund {
    pub body: Value,
    pub amount: String,
}

impl<S: Sync> FromRequest<S> for NewRefund {
    type Rejection = Problem;

    async fn from_request(req: Request, _: &S) -> Result<Self, Problem> {
        let body = read_json(req.into_body()).await?;
        let amount = validate::refund_amount(&body).map_err(|d| Problem::invalid(&d))?;
        Ok(NewRefund { body, amount })
    }
}
