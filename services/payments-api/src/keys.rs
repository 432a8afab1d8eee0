//! `GET /v1/idempotency-keys/{key}`: `idem_check` for the tenant's key (read-only, so it works
//! on a hot standby).

use axum::extract::State;
use axum::response::Response;
use idempotency_client::calls;

use crate::app::Shared;
use crate::extract::{PathKey, Tenant};
use crate::problem::Problem;
use crate::respond::{json_response, key_state};

pub async fn get(
    State(app): State<Shared>,
    Tenant(tenant): Tenant,
    PathKey(key): PathKey,
) -> Result<Response, Problem> {
    app.ensure_ready()?;
    let c = app.pool.get().await?;
    let checked = calls::check(&c, &tenant, &key, None).await?;
    Ok(json_response(200, &key_state(&key, &checked)))
}
