//! One request through the layer: the checks before anything is claimed, the claim in the
//! route's mode, the route, and what is stored of its answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio_postgres::types::Json;
use tower::{Service, ServiceExt};

use super::body::{self, Captured, ReadError};
use super::tx::IdemTx;
use super::Shared;
use crate::calls::{BeginRequest, Failure};
use crate::error::{retry_serialization, Error};
use crate::headers::{self, KeyError, Prefer};
use crate::http::code;
use crate::layer::answers::{self, Problem};
use crate::layer::command::command;
use crate::layer::options::GLOBAL_SCOPE;
use crate::layer::stored::{decide, stored_headers, Decision, StoredResponse};
use crate::layer::Mode;
use crate::one_tx::{self, Started};
use crate::phased::{self, Claim, Phased};

/// How many times a claim that fails with `40001` (a session under REPEATABLE READ or
/// SERIALIZABLE) is tried before the answer is 503. Nothing after the route is retried: the
/// route ran once.
const CLAIM_ATTEMPTS: u32 = 3;

/// What the route did.
enum Routed {
    Answered(Response),
    /// It panicked: the framework's 500.
    Panicked,
}

async fn route<S>(inner: S, req: Request) -> Routed
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    match AssertUnwindSafe(inner.oneshot(req)).catch_unwind().await {
        Ok(Ok(r)) => Routed::Answered(r),
        Ok(Err(never)) => match never {},
        Err(_) => Routed::Panicked,
    }
}

/// Everything the key's calls need.
struct Keyed {
    scope: String,
    key: String,
    command: Json<Box<RawValue>>,
    prefer: Prefer,
    wait: Option<Duration>,
}

impl Keyed {
    fn begin(&self, shared: &Shared) -> BeginRequest<'_> {
        let o = &shared.options;
        BeginRequest {
            scope: &self.scope,
            key: &self.key,
            command: &self.command,
            ttl: o.ttl,
            lease: o.lease,
            wait: None,
        }
    }

    fn in_progress(&self, shared: &Shared, checked: &crate::calls::Checked) -> Response {
        let location = shared.options.status_url.as_ref().map(|f| f(&self.key));
        answers::in_progress(Some(checked), self.prefer, location).into_response()
    }
}

pub(super) async fn handle<S>(shared: &Arc<Shared>, inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let o = &shared.options;
    if !o.covers(req.method()) {
        return pass(inner, req).await;
    }
    let key = match headers::idempotency_key_of(req.headers()) {
        Ok(k) => k,
        Err(KeyError::Missing) if !o.required => return pass(inner, req).await,
        Err(e) => return answers::key_error(e).into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let scope = if let Some(tenant) = &o.tenant {
        match tenant(&parts).await {
            Ok(Some(t)) if !t.is_empty() => t,
            Ok(_) => return answers::unauthorized().into_response(),
            Err(p) => return p.into_response(),
        }
    } else {
        GLOBAL_SCOPE.to_owned()
    };
    let bytes = match body::read_limited(body, o.max_body_bytes).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => {
            return answers::payload_too_large(o.max_body_bytes).into_response()
        }
        Err(ReadError::Broken) => {
            return Problem::new(
                400,
                code::INVALID_REQUEST,
                "The request body could not be read.",
            )
            .into_response()
        }
    };
    // Under a nested router the path as routed is the original one.
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map_or_else(|| parts.uri.clone(), |u| u.0.clone());
    let prefer = headers::prefer_of(&parts.headers, o.max_wait.as_secs());
    let keyed = Keyed {
        command: Json(command(
            &parts.method,
            uri.path(),
            uri.query(),
            &parts.headers,
            &o.command_headers,
            &bytes,
        )),
        scope,
        key,
        prefer,
        wait: prefer.wait.filter(|&n| n > 0).map(Duration::from_secs),
    };
    let mode = (o.mode)(&parts);
    match mode {
        Mode::Phased => {
            let req = Request::from_parts(parts, Body::from(bytes));
            phased_flow(shared, inner, req, keyed).await
        }
        Mode::Transaction => {
            parts.extensions.remove::<IdemTx>();
            transaction_flow(shared, inner, parts, bytes, keyed).await
        }
    }
}

async fn pass<S>(inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    match inner.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn retryable(status: u16) -> Failure {
    Failure {
        error: None,
        retryable: true,
        http_status: i32::from(status),
    }
}

fn failed(e: &Error) -> Response {
    if answers::error(e).status >= 500 {
        eprintln!("idempotency: {e}");
    }
    answers::error(e).into_response()
}

/// Phased mode: the route's response when its outcome could not be stored because the key is
/// no longer in progress (`IK002`: its ttl ran out, or `idem_forget`, while the route ran):
/// sent unstored, with a warning, and a retry executes again. Any other error is the layer's
/// answer.
fn unstored(result: Result<(), Error>, resp: Response) -> Response {
    match result {
        Ok(()) => resp,
        Err(e @ Error::NotInProgress(_)) => {
            eprintln!(
                "idempotency: warning: the key was no longer in progress when the route's outcome \
                 was stored ({e}); the route's response is sent unstored, and a retry executes again"
            );
            resp
        }
        Err(e) => failed(&e),
    }
}

/// The claim commits at once; the outcome is stored in a second transaction.
async fn phased_flow<S>(shared: &Shared, inner: S, req: Request, keyed: Keyed) -> Response
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let begin = keyed.begin(shared);
    let claimed = retry_serialization(CLAIM_ATTEMPTS, || async {
        match keyed.wait {
            Some(w) => phased::claim_waiting(&shared.pool, &begin, w).await,
            None => phased::claim(&shared.pool, &begin).await,
        }
    })
    .await;
    let holder = match claimed {
        Err(e) => return failed(&e),
        Ok(Claim::Replay(b)) => return answers::replay(&b).into_response(),
        Ok(Claim::InProgress(_, checked)) => return keyed.in_progress(shared, &checked),
        Ok(Claim::Execute(holder)) => holder,
    };
    let resp = match route(inner, req).await {
        Routed::Panicked => {
            let done = holder.fail(&retryable(500)).await;
            return unstored(done, answers::internal().into_response());
        }
        Routed::Answered(r) => r,
    };
    let status = resp.status().as_u16();
    if decide(status) == Decision::FailRetryable {
        let done = holder.fail(&retryable(status)).await;
        return unstored(done, resp);
    }
    let stored = StoredResponse {
        headers: stored_headers(resp.headers(), &shared.options.replay_headers),
        body: None,
    };
    match body::capture(resp, shared.options.max_stored_body).await {
        Captured::Whole(parts, bytes) => {
            let stored = StoredResponse {
                body: Some(bytes.to_vec()),
                ..stored
            };
            let done = holder.store(&stored, i32::from(status)).await;
            unstored(done, Response::from_parts(parts, Body::from(bytes)))
        }
        Captured::Long(resp) => {
            let done = holder.store(&stored, i32::from(status)).await;
            unstored(done, resp)
        }
        Captured::Streaming(resp) => {
            let (parts, b) = resp.into_parts();
            Response::from_parts(parts, body::then(b, fail_later(holder, status)))
        }
        Captured::Broken => {
            let done = holder.fail(&retryable(500)).await;
            unstored(done, answers::internal().into_response())
        }
    }
}

/// The retryable failure of a streamed response, once its stream has ended.
fn fail_later(holder: Phased, status: u16) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Err(e) = holder.fail(&retryable(status)).await {
            eprintln!("idempotency: the streamed response's key was not failed: {e}");
        }
    })
}

/// Transaction mode, after [`one_tx::store_and_commit`]: the route's response, or when storing
/// failed (the whole transaction rolled back, the route's writes too) the layer's answer:
/// for `IK002` (the key's ttl ran out during the transaction) 503 `service_unavailable` with
/// `Retry-After: 1`, logged as a warning; nothing happened, and the retry executes.
fn committed(result: Result<(), Error>, resp: Response) -> Response {
    match result {
        Ok(()) => resp,
        Err(e @ Error::NotInProgress(_)) => {
            eprintln!(
                "idempotency: warning: the key was no longer in progress when the route's outcome \
                 was stored ({e}); the transaction is rolled back and the answer is 503: a retry \
                 executes"
            );
            answers::expired().into_response()
        }
        Err(e) => failed(&e),
    }
}

/// The claim, the route's writes through [`IdemTx`] and the outcome in one transaction,
/// committed before the response leaves.
async fn transaction_flow<S>(
    shared: &Shared,
    inner: S,
    mut parts: http::request::Parts,
    bytes: axum::body::Bytes,
    keyed: Keyed,
) -> Response
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let begin = keyed.begin(shared);
    let started = retry_serialization(CLAIM_ATTEMPTS, || {
        one_tx::start_waiting(&shared.pool, &begin, keyed.wait)
    })
    .await;
    let (open, begun) = match started {
        Err(e) => return failed(&e),
        Ok(Started::Replayed(b)) => return answers::replay(&b).into_response(),
        Ok(Started::InProgress(_, checked)) => return keyed.in_progress(shared, &checked),
        Ok(Started::Execute(open, begun)) => (open, begun),
    };
    let attempt = begun.attempt.unwrap_or(1);
    let tx = Arc::new(Mutex::new(open));
    parts.extensions.insert(IdemTx(tx.clone()));
    let routed = route(inner, Request::from_parts(parts, Body::from(bytes))).await;
    // The route is done; a clone of IdemTx it kept would only delay the lock.
    let mut open = tx.lock().await;
    let rollback = |why: &str| eprintln!("idempotency: rolling back: {why}");
    let resp = match routed {
        Routed::Panicked => {
            rollback("the route panicked");
            let _ = open.rollback().await;
            return answers::internal().into_response();
        }
        Routed::Answered(r) => r,
    };
    let status = resp.status().as_u16();
    if decide(status) == Decision::FailRetryable {
        // Nothing stored: the claim and the route's writes roll back together.
        return match open.rollback().await {
            Ok(()) => resp,
            Err(e) => failed(&e),
        };
    }
    let stored = StoredResponse {
        headers: stored_headers(resp.headers(), &shared.options.replay_headers),
        body: None,
    };
    match body::capture(resp, shared.options.max_stored_body).await {
        Captured::Whole(parts, bytes) => {
            let stored = StoredResponse {
                body: Some(bytes.to_vec()),
                ..stored
            };
            let done =
                one_tx::store_and_commit(&mut open, &begin, attempt, &stored, i32::from(status))
                    .await;
            committed(done, Response::from_parts(parts, Body::from(bytes)))
        }
        Captured::Long(resp) => {
            let done =
                one_tx::store_and_commit(&mut open, &begin, attempt, &stored, i32::from(status))
                    .await;
            committed(done, resp)
        }
        Captured::Streaming(resp) => {
            // The writes commit with the key failed retryably, before the stream starts.
            match one_tx::fail_keeping_work(&mut open, &begin, attempt, &retryable(status)).await {
                Ok(()) => resp,
                Err(e) => failed(&e),
            }
        }
        Captured::Broken => {
            rollback("the response body failed");
            let _ = open.rollback().await;
            answers::internal().into_response()
        }
    }
}
