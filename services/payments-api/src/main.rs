//! `payments-api`: the reference payments service of the idempotency extension.
//!
//! ```text
//! payments-api serve --database-url URL --listen ADDR [--processor-url URL] [--lease DURATION] [--fault-injection]
//! payments-api mock-processor --listen ADDR
//! ```
//!
//! The HTTP contract is docs/http.md part 2. Each handler takes the request's parts through
//! the extractors of `extract` (tenant, path id or key, `Idempotency-Key`, `Prefer`, the
//! checked body: all checked before anything is claimed), then lets `idempotency-client` talk
//! to the extension and maps its answer to HTTP; a failure is a `Problem` returned with `?`.
//! The handlers never decide what a key's state means: the database does.
//!
//! | module | job |
//! |---|---|
//! | `app` | the state, the router, `/healthz`, `/openapi.json`, the fallbacks |
//! | `drain` | the router's middleware: the unread rest of a body answered early is read, so the connection stays |
//! | `payments` | `POST /v1/payments` (phases: claim, charge, checkpoint, complete), `GET /v1/payments/{id}` |
//! | `refunds` | `POST /v1/payments/{id}/refunds` (one transaction), `GET /v1/refunds/{id}` |
//! | `keys` | `GET /v1/idempotency-keys/{key}` |
//! | `extract` | the axum extractors: tenant, path id / key, `Idempotency-Key`, `Prefer`, bodies |
//! | `headers` | the `Authorization: Bearer` parser, a key as a path segment |
//! | `problem` | `Problem`: the problem document (RFC 9457) a handler's `Err` holds |
//! | `validate` | the bodies' checks |
//! | `loads` | the reads of a payment or a refund, and their documents |
//! | `respond` | JSON answers, a held key (409 / 202), a replay, the detached task |
//! | `fault` | fault injection (`--fault-injection`, `X-Fault`) |
//! | `db` | the pool, the schema and the service's SQL |
//! | `processor` | the card processor's client and the mock processor |

mod app;
mod db;
mod drain;
mod extract;
mod fault;
mod headers;
mod keys;
mod loads;
mod payments;
mod problem;
mod processor;
mod refunds;
mod respond;
mod validate;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idempotency_client::roundtrips::CountingConnect;

const USAGE: &str = "usage:
  payments-api serve --database-url URL --listen ADDR [--processor-url URL] [--lease DURATION] [--fault-injection]
  payments-api mock-processor --listen ADDR

DURATION: a number with a unit, ms, s, min or h (a bare number is seconds); default 30s.
Without --processor-url the mock card processor runs in-process.";

#[derive(Debug, PartialEq)]
enum Command {
    Serve {
        database_url: String,
        listen: SocketAddr,
        processor_url: Option<String>,
        lease: Duration,
        fault_injection: bool,
    },
    MockProcessor {
        listen: SocketAddr,
    },
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "min" | "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (cmd, rest) = args.split_first().ok_or("no command")?;
    let mut database_url = None;
    let mut listen = None;
    let mut processor_url = None;
    let mut lease = Duration::from_secs(30);
    let mut fault_injection = false;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{flag} needs a value"))
        };
        match (cmd.as_str(), flag) {
            (_, "--listen") => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v}: {e}"))?,
                );
            }
            ("serve", "--database-url") => database_url = Some(value()?),
            ("serve", "--processor-url") => {
                processor_url = Some(value()?.trim_end_matches('/').to_owned())
            }
            ("serve", "--lease") => {
                let v = value()?;
                lease =
                    parse_duration(&v).ok_or(format!("--lease {v}: not a positive duration"))?;
            }
            ("serve", "--fault-injection") if inline.is_none() => fault_injection = true,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    match cmd.as_str() {
        "serve" => Ok(Command::Serve {
            database_url: database_url.ok_or("--database-url is required")?,
            listen,
            processor_url,
            lease,
            fault_injection,
        }),
        "mock-processor" => Ok(Command::MockProcessor { listen }),
        other => Err(format!("unknown command {other:?}")),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("payments-api: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(
    database_url: String,
    listen: SocketAddr,
    processor_url: Option<String>,
    lease: Duration,
    fault_injection: bool,
) {
    let processor_url = match processor_url {
        Some(u) => u,
        None => {
            let l = bind("127.0.0.1:0".parse().unwrap()).await;
            let addr = l.local_addr().expect("local address");
            tokio::spawn(async move { axum::serve(l, processor::router()).await });
            eprintln!("payments-api: in-process mock processor on http://{addr}");
            format!("http://{addr}")
        }
    };
    // PAYMENTS_API_COUNT_ROUND_TRIPS=1 logs the database round trips of each request (exact
    // when requests come one at a time: the count is over the whole pool).
    let counting =
        std::env::var_os("PAYMENTS_API_COUNT_ROUND_TRIPS").map(|_| CountingConnect::default());
    let round_trips = counting.as_ref().map(|c| c.round_trips.clone());
    let pool = match db::pool(&database_url, 32, counting) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("payments-api: {e}");
            std::process::exit(2);
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let app = Arc::new(app::App {
        pool,
        http,
        processor_url,
        lease,
        fault_injection,
        ready: AtomicBool::new(false),
    });
    // The schema, retried until the database answers; /healthz says 503 until then.
    let a = app.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match db::migrate(&database_url).await {
                Ok(()) => {
                    a.ready.store(true, Ordering::SeqCst);
                    eprintln!("payments-api: database ready");
                    return;
                }
                Err(e) => eprintln!("payments-api: database not ready: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
    let mut router = app::router(app);
    if let Some(rt) = round_trips {
        router = router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let rt = rt.clone();
                async move {
                    let (m, p) = (req.method().clone(), req.uri().path().to_owned());
                    let before = rt.get();
                    let r = next.run(req).await;
                    eprintln!(
                        "round-trips: {m} {p} {} {}",
                        r.status().as_u16(),
                        rt.get() - before
                    );
                    r
                }
            },
        ));
    }
    let listener = bind(listen).await;
    eprintln!(
        "payments-api: listening on http://{}{}",
        listener.local_addr().expect("local address"),
        if fault_injection {
            " (fault injection on)"
        } else {
            ""
        }
    );
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("payments-api: {e}");
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("payments-api: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match cmd {
            Command::Serve {
                database_url,
                listen,
                processor_url,
                lease,
                fault_injection,
            } => serve(database_url, listen, processor_url, lease, fault_injection).await,
            Command::MockProcessor { listen } => {
                let l = bind(listen).await;
                eprintln!(
                    "payments-api: mock processor listening on http://{}",
                    l.local_addr().expect("local address")
                );
                if let Err(e) = axum::serve(l, processor::router())
                    .with_graceful_shutdown(shutdown_signal())
                    .await
                {
                    eprintln!("payments-api: {e}");
                    std::process::exit(1);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_command_lines() {
        assert_eq!(
            parse_args(&args(
                "serve --database-url postgres://x/db --listen 127.0.0.1:8080"
            )),
            Ok(Command::Serve {
                database_url: "postgres://x/db".into(),
                listen: "127.0.0.1:8080".parse().unwrap(),
                processor_url: None,
                lease: Duration::from_secs(30),
                fault_injection: false
            })
        );
        assert_eq!(
            parse_args(&args("serve --listen=127.0.0.1:1 --database-url u --processor-url http://p/ --lease 2s --fault-injection")),
            Ok(Command::Serve {
                database_url: "u".into(),
                listen: "127.0.0.1:1".parse().unwrap(),
                processor_url: Some("http://p".into()),
                lease: Duration::from_secs(2),
                fault_injection: true
            })
        );
        assert_eq!(
            parse_args(&args("mock-processor --listen 127.0.0.1:9")),
            Ok(Command::MockProcessor {
                listen: "127.0.0.1:9".parse().unwrap()
            })
        );
        for bad in [
            "",
            "serve --listen 127.0.0.1:1",
            "serve --database-url u",
            "mock-processor --listen 127.0.0.1:1 --lease 1s",
            "serve --database-url u --listen x",
            "serve --database-url u --listen 127.0.0.1:1 --lease 0s",
            "other --listen 127.0.0.1:1",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("5 s"), None);
        assert_eq!(parse_duration("x"), None);
    }
}
