//! Counting round trips on the wire, to measure what pipelining saves.
//!
//! A round trip is one *flight*: the client writes, then waits for the server's answer
//! before it writes again. [`CountingConnect`] is a deadpool-postgres [`Connect`] whose
//! connections go through a socket wrapper that counts flights: each time the client starts
//! writing after it has read something, a new flight begins. Pipelined statements go out in
//! one flight, however many they are. The count includes the connection's start-up; read it
//! before and after a flow and take the difference.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use deadpool_postgres::Connect;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// A shared count of flights, over every connection made with it.
#[derive(Debug, Clone, Default)]
pub struct RoundTrips(Arc<AtomicU64>);

impl RoundTrips {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Connects like tokio-postgres (TCP or a unix socket, no TLS) and counts flights.
#[derive(Debug, Clone, Default)]
pub struct CountingConnect {
    pub round_trips: RoundTrips,
}

pin_project_lite::pin_project! {
    struct Counted<S> {
        #[pin]
        inner: S,
        total: RoundTrips,
        // true once the client has read since it last wrote (or at the start)
        read_since_write: Arc<AtomicBool>,
    }
}

impl<S: AsyncRead> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.read_since_write.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0)
            && this.read_since_write.swap(false, Ordering::SeqCst)
        {
            this.total.0.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    /// A socket that could not be opened: its error surfaces as tokio-postgres' own I/O error.
    Failed(Option<io::Error>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Failed(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| io::ErrorKind::NotConnected.into()))),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, data),
            Socket::Failed(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| io::ErrorKind::NotConnected.into()))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Failed(_) => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Failed(_) => Poll::Ready(Ok(())),
        }
    }
}

/// Tries the configuration's hosts in order, as tokio-postgres does.
async fn open(cfg: &Config) -> Socket {
    let ports = cfg.get_ports();
    let port = |i: usize| match ports.len() {
        0 => 5432,
        1 => ports[0],
        _ => ports.get(i).copied().unwrap_or(5432),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no host to connect to");
    for (i, host) in cfg.get_hosts().iter().enumerate() {
        let r = match host {
            Host::Tcp(h) => tokio::net::TcpStream::connect((h.as_str(), port(i)))
                .await
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    Socket::Tcp(s)
                }),
            Host::Unix(dir) => {
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{}", port(i))))
                    .await
                    .map(Socket::Unix)
            }
        };
        match r {
            Ok(s) => return s,
            Err(e) => last = e,
        }
    }
    Socket::Failed(Some(last))
}

impl CountingConnect {
    /// One counted connection, outside any pool.
    pub async fn connect_one(
        &self,
        cfg: &Config,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let stream = Counted {
            inner: open(cfg).await,
            total: self.round_trips.clone(),
            read_since_write: Arc::new(AtomicBool::new(true)),
        };
        let (client, connection) = cfg.connect_raw(stream, NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }
}

impl Connect for CountingConnect {
    fn connect(
        &self,
        cfg: &Config,
    ) -> BoxFuture<'_, Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> {
        let cfg = cfg.clone();
        Box::pin(async move { self.connect_one(&cfg).await })
    }
}
