//! A request answered before its body is read keeps its connection (docs/http.md part 2, "A
//! request answered early"): what the handler left of the body is read and discarded before
//! the answer goes out, up to [`MAX_DRAIN`] bytes of body and [`DRAIN_WAIT`].
//!
//! Why: hyper 1 (`proto/h1/dispatch.rs`, `Conn::poll_drain_or_close_read`), when a request's
//! body is dropped before its end, reads only what is already in its buffer; if the rest has
//! not arrived yet it closes the connection, after writing an answer that did not say
//! `Connection: close` (the answer is usually written before hyper notices the dropped body).
//! So a POST refused by the tenant, key or body checks while its body was still on the wire
//! closed the keep-alive connection, and the client's next request on it failed ("Server
//! disconnected"). Reading the body to its end first leaves hyper a finished request and a
//! reusable connection (RFC 9112 §9.3).
//!
//! Past the bounds, and for an `Expect: 100-continue` body the handler never asked for (hyper
//! sends `100 Continue` only when the body is first read, and asking for it now would have
//! the client send a body only to have it discarded), the body is dropped, hyper closes the
//! connection, and the answer carries `Connection: close` so that the client knows. Only
//! HTTP/1: an HTTP/2 stream's unread body does not touch the connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::{Stream, StreamExt};

/// The most body read, the handler's reads included; a body declared or found longer closes
/// the connection.
pub const MAX_DRAIN: u64 = 1024 * 1024;
/// How long the rest of a body may take to arrive once the answer is ready.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// What the handler left of a body: the stream, how much of it was read, whether it was read at
/// all (asked for, with `Expect: 100-continue`).
struct Rest {
    stream: BodyDataStream,
    read: u64,
    polled: bool,
}

type Slot = Arc<Mutex<Option<Rest>>>;

/// The body the handler gets: the request's, counted; dropped before its end, it leaves the
/// rest in the slot for [`keep_alive`].
struct Tracked {
    rest: Option<Rest>,
    slot: Slot,
}

impl Stream for Tracked {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        rest.polled = true;
        let next = rest.stream.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => rest.read += chunk.len() as u64,
            // At its end nothing is left; after an error (the client went away, a bad chunk)
            // nothing can be read: hyper closes the connection itself.
            Poll::Ready(None | Some(Err(_))) => self.rest = None,
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(rest);
        }
    }
}

/// The middleware (`axum::middleware::from_fn`) around the router.
pub async fn keep_alive(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() || req.version() >= Version::HTTP_2 {
        return next.run(req).await;
    }
    let expect_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = req.body().size_hint().exact();
    let slot = Slot::default();
    let (parts, body) = req.into_parts();
    let tracked = Tracked {
        rest: Some(Rest {
            stream: body.into_data_stream(),
            read: 0,
            polled: false,
        }),
        slot: slot.clone(),
    };
    let mut response = next
        .run(Request::from_parts(parts, Body::from_stream(tracked)))
        .await;
    let rest = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(rest) = rest {
        if !drain(rest, expect_continue, declared).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads the rest of the body to its end, within the bounds; false if it was not (the body is
/// dropped unfinished: the connection is to close).
async fn drain(mut rest: Rest, expect_continue: bool, declared: Option<u64>) -> bool {
    if (expect_continue && !rest.polled) || declared.is_some_and(|n| n > MAX_DRAIN) {
        return false;
    }
    let mut read = rest.read;
    let to_end = async {
        while let Some(chunk) = rest.stream.next().await {
            match chunk {
                Ok(chunk) => read += chunk.len() as u64,
                Err(_) => return false,
            }
            if read > MAX_DRAIN {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_WAIT, to_end)
        .await
        .unwrap_or(false)
}
