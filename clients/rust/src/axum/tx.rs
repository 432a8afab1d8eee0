//! [`IdemTx`]: the route's handle on the layer's transaction (transaction mode).

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use deadpool_postgres::ClientWrapper;
use tokio::sync::{Mutex, MutexGuard};

use crate::layer::answers;
use crate::one_tx::Open;

/// The layer's connection, inside the transaction that claimed the key: the route's writes
/// through it commit with the stored outcome, or roll back with it. An extractor; the layer
/// `BEGIN`s before the route and completes and `COMMIT`s after it, before the response leaves.
/// A route outside transaction mode that asks for it gets 500.
#[derive(Clone)]
pub struct IdemTx(pub(super) Arc<Mutex<Open>>);

/// The connection, held while the guard lives (statements through it are in the layer's
/// transaction; `Deref` gives deadpool's [`ClientWrapper`], which derefs to
/// `tokio_postgres::Client`).
pub struct IdemTxGuard<'a>(MutexGuard<'a, Open>);

impl IdemTx {
    pub async fn lock(&self) -> IdemTxGuard<'_> {
        IdemTxGuard(self.0.lock().await)
    }
}

impl Deref for IdemTxGuard<'_> {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        self.0.client()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdemTx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<IdemTx>().cloned().ok_or_else(|| {
            eprintln!("idempotency: IdemTx asked for by a route that is not behind the layer in transaction mode");
            answers::internal().into_response()
        })
    }
}
