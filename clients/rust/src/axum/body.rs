//! Bodies: the request's read up to a limit, the response's captured when its length is known,
//! or passed through with an action once it ends.

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::response::Parts;
use http_body_util::BodyExt;

/// Why a request body could not be read.
pub(super) enum ReadError {
    TooLarge,
    /// The client went away or sent a broken body.
    Broken,
}

/// How much of a too-large request body is read and dropped so that the client, which writes
/// its whole body before it reads the answer, gets the 413 rather than a reset connection.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// The request body, at most `max` bytes. A longer one is read to its end (up to 64 MiB more)
/// and dropped.
pub(super) async fn read_limited(mut body: Body, max: usize) -> Result<Bytes, ReadError> {
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ReadError::Broken);
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len() as u64;
        if seen > max as u64 {
            if seen > max as u64 + DRAIN_MAX {
                return Err(ReadError::TooLarge);
            }
            buf = Vec::new();
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if seen > max as u64 {
        return Err(ReadError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

/// A route's response as the layer can store it.
pub(super) enum Captured {
    /// The whole body, read (its length was known and at most the limit).
    Whole(Parts, Bytes),
    /// A known length over the limit: stored omitted, the body passed through unread.
    Long(Response),
    /// No length known before the body: streamed.
    Streaming(Response),
    /// The body failed while it was read.
    Broken,
}

/// Reads the body when its size hint is exact and at most `max_stored` bytes.
pub(super) async fn capture(resp: Response, max_stored: usize) -> Captured {
    match resp.body().size_hint().exact() {
        None => Captured::Streaming(resp),
        Some(n) if n > max_stored as u64 => Captured::Long(resp),
        Some(_) => {
            let (parts, body) = resp.into_parts();
            match body.collect().await {
                Ok(c) => Captured::Whole(parts, c.to_bytes()),
                Err(_) => Captured::Broken,
            }
        }
    }
}

/// Runs its future when dropped unrun (the stream was dropped before its end: the client went
/// away), on the runtime.
struct OnEnd(Option<BoxFuture<'static, ()>>);

impl Drop for OnEnd {
    fn drop(&mut self) {
        if let (Some(f), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(f);
        }
    }
}

/// `body` passed through as it streams; `end` runs once it has ended (before the end is
/// signalled, so a client that saw the end sees what `end` did), or once it is dropped.
/// Trailers are not passed on.
pub(super) fn then(body: Body, end: BoxFuture<'static, ()>) -> Body {
    let state = (body.into_data_stream(), OnEnd(Some(end)));
    Body::from_stream(futures_util::stream::unfold(
        state,
        |(mut data, mut end)| async move {
            match data.next().await {
                Some(chunk) => Some((chunk, (data, end))),
                None => {
                    if let Some(f) = end.0.take() {
                        f.await;
                    }
                    None
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn stream(chunks: usize) -> Body {
        Body::from_stream(futures_util::stream::iter(
            (0..chunks).map(|_| Ok::<_, std::io::Error>("chunk\n")),
        ))
    }

    #[tokio::test]
    async fn request_bodies_are_limited() {
        assert_eq!(
            read_limited(Body::from("abc"), 3).await.ok(),
            Some(Bytes::from("abc"))
        );
        assert!(matches!(
            read_limited(Body::from("abcd"), 3).await,
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            read_limited(stream(2), 11).await,
            Err(ReadError::TooLarge)
        ));
        assert_eq!(read_limited(stream(2), 12).await.ok().unwrap().len(), 12);
        assert_eq!(
            read_limited(Body::empty(), 0).await.ok(),
            Some(Bytes::new())
        );
    }

    #[tokio::test]
    async fn responses_are_captured_by_their_size_hint() {
        let r = Response::new(Body::from("hello"));
        assert!(matches!(capture(r, 5).await, Captured::Whole(_, b) if b == "hello"));
        let r = Response::new(Body::from("hello"));
        assert!(matches!(capture(r, 4).await, Captured::Long(_)));
        let r = Response::new(stream(1));
        assert!(matches!(capture(r, 100).await, Captured::Streaming(_)));
        let r = Response::new(Body::empty());
        assert!(matches!(capture(r, 0).await, Captured::Whole(_, b) if b.is_empty()));
    }

    #[tokio::test]
    async fn the_end_runs_before_the_end_is_seen_or_when_dropped() {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let body = then(
            stream(3),
            Box::pin(async move {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert!(body.size_hint().exact().is_none());
        let mut data = body.into_data_stream();
        for _ in 0..3 {
            assert_eq!(data.next().await.unwrap().unwrap(), "chunk\n");
            assert_eq!(n.load(Ordering::SeqCst), 0);
        }
        assert!(data.next().await.is_none());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        drop(data);
        assert_eq!(n.load(Ordering::SeqCst), 1);

        let m = n.clone();
        let body = then(
            stream(3),
            Box::pin(async move {
                m.fetch_add(10, Ordering::SeqCst);
            }),
        );
        let mut data = body.into_data_stream();
        data.next().await;
        drop(data);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(n.load(Ordering::SeqCst), 11);
    }
}
