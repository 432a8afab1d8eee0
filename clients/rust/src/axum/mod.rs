//! The drop-in layer for axum: `.layer(IdempotencyLayer::new(pool).tenant(tenant))`.
//!
//! A tower [`Layer`] whose service reads the key, the tenant and the body (up to
//! `max_body_bytes`), claims the key ([`crate::phased`] or, in transaction mode,
//! [`crate::one_tx`]), runs the route, and stores what it answered (docs/http.md, "The
//! drop-in layer"). In transaction mode the route writes through [`IdemTx`], the layer's
//! connection inside its transaction. Per route: `Router::route_layer` with a layer of its
//! own mode.

mod body;
mod flow;
mod tx;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

pub use crate::layer::options::TenantResult;
pub use crate::layer::{ConfigError, Mode, Options, Problem, Reply};
pub use tx::{IdemTx, IdemTxGuard};

/// The layer: a pool and the [`Options`]. Building a router with a layer that has neither a
/// tenant function nor `global_keys`, or that names `Set-Cookie` in `replay_headers`, panics
/// with the [`ConfigError`] (at start, when the router is built); [`IdempotencyLayer::check`]
/// gives the same answer as a `Result`.
#[derive(Clone)]
pub struct IdempotencyLayer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) options: Options,
}

impl IdempotencyLayer {
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, Options::default())
    }

    pub fn with_options(pool: Pool, options: Options) -> Self {
        IdempotencyLayer {
            shared: Arc::new(Shared { pool, options }),
        }
    }

    fn map(self, f: impl FnOnce(Options) -> Options) -> Self {
        let shared = Arc::try_unwrap(self.shared).unwrap_or_else(|s| Shared {
            pool: s.pool.clone(),
            options: s.options.clone(),
        });
        Self::with_options(shared.pool, f(shared.options))
    }

    /// [`Options::tenant`].
    pub fn tenant<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> TenantResult + Send + Sync + 'static,
    {
        self.map(|o| o.tenant(f))
    }
    /// [`Options::tenant_async`].
    pub fn tenant_async<F, Fut>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TenantResult> + Send + 'static,
    {
        self.map(|o| o.tenant_async(f))
    }
    /// [`Options::global_keys`].
    pub fn global_keys(self) -> Self {
        self.map(Options::global_keys)
    }
    /// [`Options::methods`].
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.map(|o| o.methods(methods))
    }
    /// [`Options::required`].
    pub fn required(self, required: bool) -> Self {
        self.map(|o| o.required(required))
    }
    /// [`Options::ttl`].
    pub fn ttl(self, ttl: Duration) -> Self {
        self.map(|o| o.ttl(ttl))
    }
    /// [`Options::lease`].
    pub fn lease(self, lease: Duration) -> Self {
        self.map(|o| o.lease(lease))
    }
    /// [`Options::command_headers`].
    pub fn command_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.map(|o| o.command_headers(names))
    }
    /// [`Options::replay_headers`].
    pub fn replay_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.map(|o| o.replay_headers(names))
    }
    /// [`Options::max_body_bytes`].
    pub fn max_body_bytes(self, n: usize) -> Self {
        self.map(|o| o.max_body_bytes(n))
    }
    /// [`Options::max_stored_body`].
    pub fn max_stored_body(self, n: usize) -> Self {
        self.map(|o| o.max_stored_body(n))
    }
    /// [`Options::max_wait`].
    pub fn max_wait(self, d: Duration) -> Self {
        self.map(|o| o.max_wait(d))
    }
    /// [`Options::status_url`].
    pub fn status_url<F>(self, f: F) -> Self
    where
        F: Fn(&str) -> String + Send + Sync + 'static,
    {
        self.map(|o| o.status_url(f))
    }
    /// [`Options::mode`].
    pub fn mode(self, mode: Mode) -> Self {
        self.map(|o| o.mode(mode))
    }
    /// [`Options::mode_fn`].
    pub fn mode_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Mode + Send + Sync + 'static,
    {
        self.map(|o| o.mode_fn(f))
    }

    /// [`Options::check`].
    pub fn check(&self) -> Result<(), ConfigError> {
        self.shared.options.check()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        IdempotencyService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The layer's service around a route (or a router).
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for IdempotencyService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service polled ready is the one that serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move { Ok(flow::handle(&shared, inner, req).await) })
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (n, v) in self.headers {
            r.headers_mut().append(n, v);
        }
        r
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.reply().into_response()
    }
}
