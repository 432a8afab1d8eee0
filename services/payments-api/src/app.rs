//! The service's state and its router: which handler answers each route, `/healthz`,
//! `/openapi.json` and the fallbacks (404, 405). The routes' flows are in `payments`,
//! `refunds` and `keys` (the module map is in main.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::Pool;
use idempotency_client::http::code;
use serde_json::json;

use crate::problem::Problem;
use crate::respond::json_response;
use crate::{drain, keys, payments, refunds};

pub struct App {
    pub pool: Pool,
    pub http: reqwest::Client,
    pub processor_url: String,
    pub lease: Duration,
    pub fault_injection: bool,
    /// Set once the schema is in place.
    pub ready: AtomicBool,
}

pub type Shared = Arc<App>;

impl App {
    /// 503 until the schema is in place.
    pub fn ensure_ready(&self) -> Result<(), Problem> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Problem::unavailable(
                "The service has not reached its database yet.",
            ))
        }
    }
}

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/v1/payments", post(payments::create))
        .route("/v1/payments/{id}", get(payments::get))
        .route("/v1/payments/{id}/refunds", post(refunds::create))
        .route("/v1/refunds/{id}", get(refunds::get))
        .route("/v1/idempotency-keys/{key}", get(keys::get))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        .layer(axum::middleware::from_fn(drain::keep_alive))
}

/// A new resource id: `<prefix>_<32 hex digits>`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

async fn healthz(State(app): State<Shared>) -> Result<Response, Problem> {
    app.ensure_ready()?;
    let c = app.pool.get().await?;
    c.simple_query("SELECT 1").await?;
    Ok(json_response(200, &json!({"status": "ok"})))
}

async fn openapi() -> Response {
    let mut r = Response::new(Body::from(include_str!("../openapi.json")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn fallback() -> Problem {
    Problem::not_found()
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        405,
        code::INVALID_REQUEST,
        "This method is not allowed on this route.",
    )
}
