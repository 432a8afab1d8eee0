//! What the load, the checker and the crash test share: connections, the command of a key,
//! the `idem_begin` call, a small deterministic random generator.

use postgres::{Client, GenericClient, NoTls};

use crate::Opts;

/// Connects over the scratch cluster's unix socket (`--host DIR`, the socket directory) or
/// over TCP (`--host` a name or address, e.g. a Citus coordinator on 127.0.0.1), to the first
/// of `--port`'s ports.
pub fn connect(opts: &Opts) -> Result<Client, postgres::Error> {
    connect_to(opts, 0)
}

/// The ports of `--port`: one, or several separated by commas (a Citus coordinator and its
/// workers on one host: the load's connections are spread over them).
pub fn ports(opts: &Opts) -> Vec<u16> {
    let ports: Vec<u16> = opts
        .str("port", "5432")
        .split(',')
        .map(|p| {
            p.trim().parse().unwrap_or_else(|_| {
                eprintln!("--port: not a port number: {p}");
                std::process::exit(2)
            })
        })
        .collect();
    ports
}

/// Connects to the `n`-th port of `--port` (modulo their number).
pub fn connect_to(opts: &Opts, n: usize) -> Result<Client, postgres::Error> {
    let ports = ports(opts);
    let host = opts.str("host", "/tmp");
    let mut c = postgres::Config::new();
    if host.starts_with('/') {
        c.host_path(&host);
    } else {
        c.host(&host);
    }
    c.port(ports[n % ports.len()])
        .user(&opts.str("user", "postgres"))
        .dbname(&opts.str("dbname", "postgres"))
        .application_name("idempotency-torture")
        .connect_timeout(std::time::Duration::from_secs(10));
    c.connect(NoTls)
}

/// xorshift64*: small, fast, and reproducible from `--seed`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `percent`/100.
    pub fn pct(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The amount that a key's own command carries: a fixed function of the key, so every client
/// that retries the key sends the same command, and the checker can tell a key's command from
/// a different one.
pub fn amount_of(key: &str) -> i64 {
    // FNV-1a: fixed, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (h % 9999) as i64
}

/// The command of a payment request as JSON text (the key is part of the command too).
pub fn command(key: &str, amount: i64) -> String {
    format!(r#"{{"op": "pay", "key": "{key}", "amount": {amount}, "currency": "EUR"}}"#)
}

/// What `idem_begin` answered.
#[derive(Clone, Debug, Default)]
pub struct BeginAnswer {
    pub outcome: String,
    pub state: String,
    pub attempt: Option<i32>,
    pub recovery_point: Option<String>,
    pub recovery_data: Option<String>,
    pub http_status: Option<i32>,
    pub response: Option<String>,
    pub resource: Option<String>,
}

/// Calls `idem_begin`; `lease_ms`/`wait_ms` of None leave the settings' defaults.
pub fn begin(
    c: &mut impl GenericClient,
    scope: &str,
    key: &str,
    command: &str,
    lease_ms: Option<u64>,
    wait_ms: Option<u64>,
) -> Result<BeginAnswer, postgres::Error> {
    // Milliseconds times an interval, which the planner folds into a constant: Citus 13.2
    // deparses a delegated call's `$4::text::interval` (a stable cast it cannot fold) as
    // `'...'::cstring::interval`, which the worker refuses (docs/scale-out.md).
    let lease = lease_ms.map(|ms| ms as f64);
    let wait = wait_ms.map(|ms| ms as f64);
    let row = c.query_one(
        "SELECT outcome, state, attempt, recovery_point, recovery_data::text, http_status, \
                response::text, resource \
         FROM idem_begin($1, $2, $3::text::jsonb, \
                         lease => $4::float8 * interval '1 millisecond', \
                         wait => $5::float8 * interval '1 millisecond')",
        &[&scope, &key, &command, &lease, &wait],
    )?;
    Ok(BeginAnswer {
        outcome: row.get(0),
        state: row.get(1),
        attempt: row.get(2),
        recovery_point: row.get(3),
        recovery_data: row.get(4),
        http_status: row.get(5),
        response: row.get(6),
        resource: row.get(7),
    })
}

/// The SQLSTATE of a server error; None for a lost connection or a client-side error.
pub fn sqlstate(e: &postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// The effect of a request: one ledger row, in the caller's transaction. Returns its id.
#[allow(clippy::too_many_arguments)]
pub fn insert_ledger(
    c: &mut impl GenericClient,
    table: &str,
    scope: &str,
    key: &str,
    attempt: i32,
    amount: i64,
    command: &str,
    request_id: i64,
) -> Result<i64, postgres::Error> {
    let sql = format!(
        "INSERT INTO {table} (scope, key, attempt, amount, fingerprint, request_id) \
         VALUES ($1, $2, $3, $4, idem_fingerprint($5::text::jsonb), $6) RETURNING id"
    );
    let row = c.query_one(
        &sql,
        &[&scope, &key, &attempt, &amount, &command, &request_id],
    )?;
    Ok(row.get(0))
}

/// `idem_complete` with an outcome that describes the effect: resource `ledger/<id>` and a
/// response naming the ledger row, the key, the amount and the attempt.
pub fn complete(
    c: &mut impl GenericClient,
    scope: &str,
    key: &str,
    ledger_id: i64,
    amount: i64,
    attempt: i32,
) -> Result<(), postgres::Error> {
    let response = format!(
        r#"{{"ledger_id": {ledger_id}, "key": "{key}", "amount": {amount}, "attempt": {attempt}}}"#
    );
    let resource = format!("ledger/{ledger_id}");
    c.execute(
        "SELECT idem_complete($1, $2, response => $3::text::jsonb, resource => $4, \
                              http_status => 201, attempt => $5)",
        &[&scope, &key, &response, &resource, &attempt],
    )?;
    Ok(())
}

/// `idem_fail`: a retryable failure (503) or a final one (402), whose error names the key,
/// the amount and the attempt.
pub fn fail(
    c: &mut impl GenericClient,
    scope: &str,
    key: &str,
    amount: i64,
    attempt: i32,
    retryable: bool,
) -> Result<(), postgres::Error> {
    let (error, status) = if retryable {
        ("declined_temporarily", 503)
    } else {
        ("declined", 402)
    };
    let body = format!(
        r#"{{"error": "{error}", "key": "{key}", "amount": {amount}, "attempt": {attempt}}}"#
    );
    c.execute(
        "SELECT idem_fail($1, $2, error => $3::text::jsonb, retryable => $4, \
                          http_status => $5, attempt => $6)",
        &[&scope, &key, &body, &retryable, &status, &attempt],
    )?;
    Ok(())
}

/// `idem_checkpoint` with a recovery point and data naming the attempt that made it.
pub fn checkpoint(
    c: &mut impl GenericClient,
    scope: &str,
    key: &str,
    point: &str,
    attempt: i32,
) -> Result<(), postgres::Error> {
    let data = format!(r#"{{"attempt": {attempt}, "point": "{point}"}}"#);
    c.execute(
        "SELECT idem_checkpoint($1, $2, $3, $4::text::jsonb, attempt => $5)",
        &[&scope, &key, &point, &data, &attempt],
    )?;
    Ok(())
}
