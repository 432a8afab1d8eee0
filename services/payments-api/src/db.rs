//! The service's database: the pool, its own tables (created at start, idempotent DDL) and
//! the queries on them. Everything about keys goes through `idempotency-client`.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use idempotency_client::roundtrips::CountingConnect;

/// The service's tables. A payment or refund belongs to a tenant; every read is scoped by it.
/// No unique constraint ties a payment to its key: once a key has expired (24 hours), the same
/// key is a new request, and preventing duplicates before that is the extension's job.
pub const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7655001);
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE TABLE IF NOT EXISTS payments (
    id              text PRIMARY KEY,
    tenant          text NOT NULL,
    idempotency_key text NOT NULL,
    amount          numeric(14,2) NOT NULL CHECK (amount > 0),
    currency        text NOT NULL,
    card            text NOT NULL,
    description     text,
    status          text NOT NULL,
    charge_id       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS refunds (
    id         text PRIMARY KEY,
    tenant     text NOT NULL,
    payment_id text NOT NULL REFERENCES payments (id),
    amount     numeric(14,2) NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refunds_payment_id ON refunds (payment_id);
";

/// The payment's row as the API shows it.
pub const SQL_PAYMENT: &str = "SELECT id, amount::text, currency, status, charge_id, created_at \
     FROM payments WHERE id = $1 AND tenant = $2";
pub const SQL_REFUND: &str = "SELECT id, payment_id, amount::text, created_at \
     FROM refunds WHERE id = $1 AND tenant = $2";
/// The payment, written in the transaction that completes the key.
pub const SQL_INSERT_PAYMENT: &str = "INSERT INTO payments \
     (id, tenant, idempotency_key, amount, currency, card, description, status, charge_id) \
     VALUES ($1, $2, $3, $4::text::numeric, $5, $6, $7, 'succeeded', $8) \
     RETURNING amount::text, created_at";
/// Locks the payment a refund is for (its refunds are checked by the next statement, which
/// runs after the lock is granted and so sees every refund committed before).
pub const SQL_LOCK_PAYMENT: &str =
    "SELECT amount FROM payments WHERE id = $1 AND tenant = $2 FOR UPDATE";
/// Inserts the refund only if it fits in what remains of the payment.
pub const SQL_INSERT_REFUND: &str = "INSERT INTO refunds (id, tenant, payment_id, amount) \
     SELECT $3, $2, p.id, $4::text::numeric FROM payments p \
     WHERE p.id = $1 AND p.tenant = $2 \
       AND (SELECT coalesce(sum(r.amount), 0) FROM refunds r WHERE r.payment_id = p.id) \
           + $4::text::numeric <= p.amount \
     RETURNING amount::text, created_at";

/// A pool on `url`. Sessions run in UTC and READ COMMITTED; nothing depends on the session's
/// DateStyle (timestamps are read in binary, and the client reads a refusal's data from the
/// record, never from its message). With `counting`, connections count their round trips.
pub fn pool(url: &str, size: usize, counting: Option<CountingConnect>) -> Result<Pool, String> {
    let mut cfg =
        tokio_postgres::Config::from_str(url).map_err(|e| format!("--database-url: {e}"))?;
    cfg.options("-c TimeZone=UTC -c default_transaction_isolation=read\\ committed");
    if cfg.get_application_name().is_none() {
        cfg.application_name("payments-api");
    }
    cfg.connect_timeout(Duration::from_secs(5));
    let mc = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match counting {
        Some(c) => Manager::from_connect(cfg, c, mc),
        None => Manager::from_config(cfg, tokio_postgres::NoTls, mc),
    };
    Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(10)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        })
        .post_create(Hook::async_fn(|c, _| {
            Box::pin(async move {
                // Every statement a request uses, prepared once per connection in one round
                // trip each batch (the pool makes connections only once the schema is there).
                idempotency_client::calls::prepare_statements(c)
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?;
                // On a hot standby a write cannot even be planned (it would lock the table):
                // only the reads are prepared there.
                let standby: bool = c
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .get(0);
                let own: &[&str] = if standby {
                    &[SQL_PAYMENT, SQL_REFUND]
                } else {
                    &[
                        SQL_PAYMENT,
                        SQL_REFUND,
                        SQL_INSERT_PAYMENT,
                        SQL_LOCK_PAYMENT,
                        SQL_INSERT_REFUND,
                    ]
                };
                for r in
                    futures_util::future::join_all(own.iter().map(|q| c.prepare_cached(q))).await
                {
                    r.map_err(|e| HookError::message(e.to_string()))?;
                }
                Ok(())
            })
        }))
        .build()
        .map_err(|e| format!("pool: {e}"))
}

/// Creates the extension and the tables (serialised by an advisory lock, so two services
/// starting at once do not race on `CREATE TABLE IF NOT EXISTS`).
/// It uses a connection of its own: the pool's connections prepare the extension's
/// statements when they are made, which needs the extension.
pub async fn migrate(url: &str) -> Result<(), String> {
    let cfg = tokio_postgres::Config::from_str(url).map_err(|e| format!("--database-url: {e}"))?;
    let (c, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let text = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    // A hot standby cannot run DDL: its primary has created everything (there only the reads
    // can succeed; writes answer 503).
    let r = match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
        Err(e) => Err(text(e)),
        Ok(row) if row.get::<_, bool>(0) => Ok(()),
        Ok(_) => c
            .batch_execute(&format!(
                "BEGIN; SET LOCAL client_min_messages = warning; {SCHEMA} COMMIT;"
            ))
            .await
            .map_err(text),
    };
    drop(c);
    let _ = task.await;
    r
}
