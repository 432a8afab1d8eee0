//! The service's reads: a payment or a refund by id, scoped by the tenant, as the API shows it
//! (the routes' `GET`s and a replay's rebuilt body), and those documents.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use idempotency_client::http::rfc3339;
use idempotency_client::Error;
use serde_json::{json, Value};

use crate::db;

pub fn payment_doc(
    id: &str,
    amount: &str,
    currency: &str,
    status: &str,
    charge_id: &str,
    created_at: DateTime<Utc>,
) -> Value {
    json!({"id": id, "amount": amount, "currency": currency, "status": status,
           "charge_id": charge_id, "created_at": rfc3339(created_at)})
}

pub fn refund_doc(id: &str, payment_id: &str, amount: &str, created_at: DateTime<Utc>) -> Value {
    json!({"id": id, "payment_id": payment_id, "amount": amount, "created_at": rfc3339(created_at)})
}

/// The payment `id` of `tenant`, if any.
pub async fn payment(pool: &Pool, id: &str, tenant: &str) -> Result<Option<Value>, Error> {
    let row = by_id(pool, db::SQL_PAYMENT, id, tenant).await?;
    Ok(row.map(|r| payment_doc(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
}

/// The refund `id` of `tenant`, if any.
pub async fn refund(pool: &Pool, id: &str, tenant: &str) -> Result<Option<Value>, Error> {
    let row = by_id(pool, db::SQL_REFUND, id, tenant).await?;
    Ok(row.map(|r| refund_doc(r.get(0), r.get(1), r.get(2), r.get(3))))
}

/// The row that `sql` (a cached statement of parameters id, tenant) finds, if any.
async fn by_id(
    pool: &Pool,
    sql: &str,
    id: &str,
    tenant: &str,
) -> Result<Option<tokio_postgres::Row>, Error> {
    let c = pool.get().await?;
    let st = c
        .prepare_cached(sql)
        .await
        .map_err(|e| Error::from_db(e, None))?;
    c.query_opt(&st, &[&id, &tenant])
        .await
        .map_err(|e| Error::from_db(e, None))
}
