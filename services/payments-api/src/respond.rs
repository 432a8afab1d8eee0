//! The answers that are not a [`Problem`] of the moment: JSON documents, a key that another
//! request holds (409, or 202 for `Prefer: respond-async`), a replay rebuilt from the stored
//! resource or the stored problem, and the task a claimed request finishes in.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use idempotency_client::headers::Prefer;
use idempotency_client::http::{self as map, rfc3339, Answer};
use idempotency_client::layer::answers;
use idempotency_client::{calls, Begun, Checked};
use serde_json::{json, Value};

use crate::app::App;
use crate::headers;
use crate::loads;
use crate::problem::Problem;

/// `body` with `status`, as `application/json` (`application/problem+json` from 400 on).
pub fn json_response(status: u16, body: &Value) -> Response {
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

pub fn with_location(mut r: Response, location: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The key's state document (`GET /v1/idempotency-keys/{key}`, and the body of a 202).
pub fn key_state(key: &str, c: &Checked) -> Value {
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
pub fn in_progress(key: &str, checked: &Checked, prefer: Prefer) -> Response {
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
pub async fn replay(app: &App, tenant: &str, b: &Begun) -> Result<Response, Problem> {
    let a = map::for_replay(b);
    if a.status >= 400 {
        let body = b.response.clone().unwrap_or_else(|| {
            Problem::new(a.status, map::code::INTERNAL_ERROR, "A stored failure.").document()
        });
        return Ok(with_answer(json_response(a.status, &body), &a));
    }
    let resource = b.resource.as_deref().unwrap_or_default();
    let (doc, location) = if let Some(id) = resource.strip_prefix("payments/") {
        (
            loads::payment(&app.pool, id, tenant).await?,
            format!("/v1/payments/{id}"),
        )
    } else if let Some(id) = resource.strip_prefix("refunds/") {
        (
            loads::refund(&app.pool, id, tenant).await?,
            format!("/v1/refunds/{id}"),
        )
    } else {
        eprintln!("payments-api: replay of an unknown resource {resource:?}");
        return Err(Problem::internal("The stored outcome names no resource."));
    };
    let Some(doc) = doc else {
        eprintln!("payments-api: the stored resource {resource:?} is gone");
        return Err(Problem::internal("The stored outcome's resource is gone."));
    };
    Ok(with_answer(
        with_location(json_response(a.status, &doc), &location),
        &a,
    ))
}

/// Runs the rest of a request as a task of its own: a client that goes away does not cancel
/// a request half-way (its outcome is stored for the retry).
pub async fn detached<F>(f: F) -> Response
where
    F: Future<Output = Result<Response, Problem>> + Send + 'static,
{
    match tokio::spawn(f).await {
        Ok(answer) => answer.into_response(),
        Err(e) => {
            eprintln!("payments-api: request task failed: {e}");
            Problem::internal("Something went wrong on our side.").into_response()
        }
    }
}
