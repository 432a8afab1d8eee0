//! A POST answered before its body is read keeps its HTTP/1.1 connection (docs/http.md part 2,
//! "A request answered early"): the service reads what is left of the body and discards it
//! (up to 1 MiB and 5 s) before the answer goes out, so the client's next request on the same
//! connection is answered. Past those bounds, and for an `Expect: 100-continue` body that was
//! never asked for, the answer says `Connection: close` and the connection closes.
//!
//! The test starts the service's binary on an ephemeral loopback port with a database that does
//! not exist: the checks of the tenant, the path, the key and the body all come before the
//! service needs its database (a request that passes them is answered 503), so no PostgreSQL is
//! needed. The client is a raw TCP socket, so that the test controls how the request's bytes
//! are written: the body after the headers in later writes, as a client on a real network
//! sends it, has not arrived when the rejection is ready.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The service, killed when dropped.
struct Service {
    child: Child,
    addr: SocketAddr,
}

impl Service {
    fn start() -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payments-api"))
            .args([
                "serve",
                "--database-url",
                "postgresql://postgres@localhost/none?host=/nonexistent/payments-api-keep-alive&port=1",
                "--listen",
                "127.0.0.1:0",
                "--processor-url",
                "http://127.0.0.1:9",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start payments-api");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("payments-api exited before listening")
                .expect("payments-api's stderr");
            if let Some(rest) = line.strip_prefix("payments-api: listening on http://") {
                break rest.trim().parse().expect("the listening address");
            }
        };
        // The service keeps logging that its database is not ready: keep reading its stderr.
        thread::spawn(move || for _ in lines {});
        Service { child, addr }
    }

    fn connect(&self) -> Conn {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    /// Lower-case names, in order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let doc: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        doc["code"].as_str().unwrap_or_default().to_owned()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Writes each piece, pausing `pause` between them.
    fn send(&mut self, pieces: &[Vec<u8>], pause: Duration) -> std::io::Result<()> {
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                thread::sleep(pause);
            }
            self.stream.write_all(p)?;
        }
        Ok(())
    }

    /// Reads more bytes; `Err` names how the connection ended.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                Err("no answer within 30 s".into())
            }
            Err(e) => Err(format!("the connection failed: {e}")),
        }
    }

    /// The next response head and body (a 1xx is returned as it is, with no body).
    fn response(&mut self) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).map_err(|e| e.to_string())?;
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        if status < 200 {
            return Ok(response);
        }
        let len: usize = response
            .header("content-length")
            .ok_or("no content-length")?
            .parse()
            .map_err(|_| "bad content-length")?;
        while self.buf.len() < len {
            self.fill()?;
        }
        response.body = String::from_utf8(self.buf.drain(..len).collect()).unwrap();
        Ok(response)
    }

    /// The final response, skipping a `100 Continue`.
    fn final_response(&mut self) -> Result<Response, String> {
        loop {
            let r = self.response()?;
            if r.status >= 200 {
                return Ok(r);
            }
        }
    }

    /// Whether the server has closed the connection (after `wait`, with nothing else sent).
    fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let closed = matches!(self.fill(), Err(e) if !e.starts_with("no answer"));
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        closed
    }
}

/// A JSON body of exactly `n` bytes (at least 2).
fn body_of(n: usize) -> Vec<u8> {
    let base = br#"{"amount": "10.00", "currency": "EUR", "card": "tok_visa", "description": ""}"#;
    if n < base.len() {
        let mut b = vec![b' '; n];
        b[0] = b'{';
        b[n - 1] = b'}';
        return b;
    }
    let mut b = base[..base.len() - 2].to_vec();
    b.resize(n - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// A request's head: `headers` are full lines without their CRLF.
fn head(path: &str, headers: &[String], framing: &str) -> Vec<u8> {
    let mut h =
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n");
    for l in headers {
        h.push_str(l);
        h.push_str("\r\n");
    }
    h.push_str(framing);
    h.push_str("\r\n\r\n");
    h.into_bytes()
}

/// How a request's bytes are written.
#[derive(Clone, Copy, Debug)]
enum Writes {
    /// Head and body in one write.
    One,
    /// The head, then the body.
    HeadThenBody,
    /// The head with the body's first half, then the rest.
    Halves,
    /// The head, then the body in three writes.
    Thirds,
    /// `Transfer-Encoding: chunked`, the head and then each of three chunks and the last one.
    Chunked,
}

fn pieces(path: &str, headers: &[String], body: &[u8], writes: Writes) -> Vec<Vec<u8>> {
    let cl = format!("Content-Length: {}", body.len());
    let h = || head(path, headers, &cl);
    let cat = |a: Vec<u8>, b: &[u8]| [a.as_slice(), b].concat();
    let third = body.len() / 3;
    match writes {
        Writes::One => vec![cat(h(), body)],
        Writes::HeadThenBody => vec![h(), body.to_vec()],
        Writes::Halves => {
            let (a, b) = body.split_at(body.len() / 2);
            vec![cat(h(), a), b.to_vec()]
        }
        Writes::Thirds => vec![
            h(),
            body[..third].to_vec(),
            body[third..2 * third].to_vec(),
            body[2 * third..].to_vec(),
        ],
        Writes::Chunked => {
            let mut out = vec![head(path, headers, "Transfer-Encoding: chunked")];
            for part in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
                if !part.is_empty() {
                    out.push(cat(format!("{:x}\r\n", part.len()).into_bytes(), part));
                    let last = out.last_mut().unwrap();
                    last.extend_from_slice(b"\r\n");
                }
            }
            out.push(b"0\r\n\r\n".to_vec());
            out
        }
    }
}

const AUTH: &str = "Authorization: Bearer keepalive";
const KEY: &str = "Idempotency-Key: \"ka-1\"";

/// The next answer on `conn` is the 401 of a request without a tenant, it says `Connection:
/// close`, and the server closes the connection within 5 s. Returns when the answer arrived.
fn refused_then_closed(conn: &mut Conn) -> Instant {
    let r = conn.response().expect("an answer");
    let answered = Instant::now();
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "unauthorized"),
        "{r:?}"
    );
    assert!(r.closes(), "no Connection: close: {r:?}");
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "the connection stayed open"
    );
    answered
}

/// Every early rejection, with bodies of several sizes written in several ways, over one
/// connection: each answered as the contract says, none closing the connection.
#[test]
fn early_rejections_keep_the_connection() {
    let service = Service::start();
    let mut conn = service.connect();
    let rejections: [(&[&str], u16, &str); 5] = [
        (&[KEY], 401, "unauthorized"),
        (
            &["Authorization: Bearer not a tenant", KEY],
            401,
            "unauthorized",
        ),
        (&[AUTH], 400, "idempotency_key_missing"),
        (
            &[AUTH, "Idempotency-Key: \"k\";a=1"],
            400,
            "idempotency_key_invalid",
        ),
        (
            &[AUTH, "Idempotency-Key: a b"],
            400,
            "idempotency_key_invalid",
        ),
    ];
    let sizes = [2, 100, 4096, 64 * 1024, 300_000];
    let all_writes = [
        Writes::One,
        Writes::HeadThenBody,
        Writes::Halves,
        Writes::Thirds,
        Writes::Chunked,
    ];
    let mut n = 0;
    let mut first_answer: std::collections::HashMap<(&str, u16, &str), String> = Default::default();
    for path in ["/v1/payments", "/v1/payments/pay_1/refunds"] {
        for (headers, status, code) in rejections {
            for size in sizes {
                for writes in all_writes {
                    n += 1;
                    let headers: Vec<String> = headers.iter().map(|s| s.to_string()).collect();
                    let what = format!("request {n}: {path} {headers:?}, {size} bytes, {writes:?}");
                    let sent = conn.send(
                        &pieces(path, &headers, &body_of(size), writes),
                        Duration::from_millis(15),
                    );
                    let r = match (sent, conn.response()) {
                        (_, Ok(r)) => r,
                        (Err(e), Err(r)) => panic!(
                            "{what}: writing failed ({e}); {r} (after {} answers on it)",
                            n - 1
                        ),
                        (Ok(()), Err(r)) => panic!("{what}: {r} (after {} answers on it)", n - 1),
                    };
                    assert_eq!(
                        (r.status, r.code().as_str()),
                        (status, code),
                        "{what}: {r:?}"
                    );
                    assert!(
                        !r.closes(),
                        "{what}: answered with Connection: close: {r:?}"
                    );
                    assert_eq!(
                        r.header("content-type"),
                        Some("application/problem+json"),
                        "{what}"
                    );
                    assert_eq!(
                        r.header("www-authenticate"),
                        (status == 401).then_some("Bearer"),
                        "{what}"
                    );
                    // The same rejection answers the same document whatever the body's size
                    // and however it arrived.
                    let first = first_answer
                        .entry((path, status, code))
                        .or_insert_with(|| r.body.clone());
                    assert_eq!(first, &r.body, "{what}");
                }
            }
        }
    }
    // On the same connection: an unknown route (404) and a method the route does not take
    // (405); rejections of the body itself, over 64 KiB (413: the handler stops reading at
    // 64 KiB) and not JSON; and a request that passes every check (503: the service has no
    // database).
    let more: [(&str, Vec<u8>, u16, &str); 6] = [
        ("/v1/unknown", body_of(4096), 404, "not_found"),
        ("/v1/payments/pay_1", body_of(4096), 405, "invalid_request"),
        ("/v1/payments", body_of(300_000), 413, "invalid_request"),
        (
            "/v1/payments/pay_1/refunds",
            body_of(200_000),
            413,
            "invalid_request",
        ),
        (
            "/v1/payments",
            b"{not json".to_vec(),
            400,
            "invalid_request",
        ),
        ("/v1/payments", body_of(100), 503, "service_unavailable"),
    ];
    for (path, body, status, code) in more {
        for writes in all_writes {
            n += 1;
            let what = format!("request {n}: {path}, {} bytes, {writes:?}", body.len());
            let headers = [AUTH.to_string(), format!("Idempotency-Key: \"ka-{n}\"")];
            conn.send(
                &pieces(path, &headers, &body, writes),
                Duration::from_millis(15),
            )
            .unwrap_or_else(|e| panic!("{what}: writing failed: {e}"));
            let r = conn.response().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                (r.status, r.code().as_str()),
                (status, code),
                "{what}: {r:?}"
            );
            assert!(
                !r.closes(),
                "{what}: answered with Connection: close: {r:?}"
            );
        }
    }
    assert!(
        !conn.closed_within(Duration::from_millis(200)),
        "the server closed the connection after {n} answers"
    );
}

/// `Expect: 100-continue`: a request refused before its body is asked for is answered at once,
/// without `100 Continue` (the client need not send the body), and the answer says
/// `Connection: close`; a body that was asked for (the handler reads it) is read to its end,
/// also past the 64 KiB the handler reads before its 413, and the connection stays.
#[test]
fn expect_continue() {
    let service = Service::start();

    let mut conn = service.connect();
    conn.send(
        &[head(
            "/v1/payments",
            &[KEY.into(), "Expect: 100-continue".into()],
            "Content-Length: 1000",
        )],
        Duration::ZERO,
    )
    .unwrap();
    refused_then_closed(&mut conn);

    let mut conn = service.connect();
    for (body, status, code) in [
        (body_of(300_000), 413, "invalid_request"),
        (body_of(100), 503, "service_unavailable"),
        (body_of(300_000), 413, "invalid_request"),
    ] {
        let headers = [
            AUTH.to_string(),
            KEY.to_string(),
            "Expect: 100-continue".to_string(),
        ];
        conn.send(
            &[head(
                "/v1/payments",
                &headers,
                &format!("Content-Length: {}", body.len()),
            )],
            Duration::ZERO,
        )
        .unwrap();
        let r = conn.response().expect("100 Continue");
        assert_eq!(r.status, 100, "{r:?}");
        let half = body.len() / 2;
        conn.send(
            &[body[..half].to_vec(), body[half..].to_vec()],
            Duration::from_millis(15),
        )
        .unwrap();
        let r = conn.final_response().expect("the answer");
        assert_eq!((r.status, r.code().as_str()), (status, code), "{r:?}");
        assert!(!r.closes(), "{r:?}");
    }
    // And a refusal without Expect on the same connection.
    conn.send(
        &pieces(
            "/v1/payments",
            &[KEY.into()],
            &body_of(500),
            Writes::HeadThenBody,
        ),
        Duration::from_millis(15),
    )
    .unwrap();
    let r = conn
        .response()
        .expect("the answer after the 100-continue requests");
    assert_eq!(r.status, 401, "{r:?}");
}

/// Past the bounds the connection is closed, and the answer says so: a declared body over
/// 1 MiB is not read, and a body that does not arrive within 5 s is given up.
#[test]
fn past_the_bounds_the_connection_closes() {
    let service = Service::start();

    let mut conn = service.connect();
    conn.send(
        &[head(
            "/v1/payments",
            &[KEY.into()],
            "Content-Length: 2000000",
        )],
        Duration::ZERO,
    )
    .unwrap();
    refused_then_closed(&mut conn);

    let mut conn = service.connect();
    let started = Instant::now();
    conn.send(
        &[[
            head("/v1/payments", &[KEY.into()], "Content-Length: 100"),
            b"{\"amount\"".to_vec(),
        ]
        .concat()],
        Duration::ZERO,
    )
    .unwrap();
    let answered = refused_then_closed(&mut conn);
    assert!(
        answered.duration_since(started) >= Duration::from_secs(4),
        "answered after {:?}, before the body's 5 s",
        answered.duration_since(started)
    );
}
