//! Where the records are, when Citus distributes `idempotency.records` (docs/scale-out.md):
//! what the store and its callers need of it, in one place.
//!
//! - [`layout`]: whether the table is distributed, read from Citus's catalog
//!   `pg_dist_partition` (in the SQL path's connection) once per backend and kept until the
//!   table's relcache entry is invalidated (the relcache callback here), which Citus does
//!   whenever it changes the table's metadata (create_distributed_table, undistribute_table,
//!   shard moves). Without Citus the check costs a thread-local read per call; the shape
//!   check (`shape`) reads it too, since a Citus table is never the direct path's.
//! - [`require_shard_here`]: the key's lock (`lock.rs`) lives in the lock table of the node
//!   where the function runs. Citus delegates a call of a distributed function to the node
//!   that holds its scope's shard only in the forms it can route (a statement of its own,
//!   `SELECT ... FROM f(...)` with constant arguments; inside `BEGIN ... COMMIT` only with
//!   `force_delegation`). A call that Citus does not delegate runs where it was sent, its
//!   statements routed to the shard, and its lock would be taken on the wrong node, unseen by
//!   the calls that were delegated: a concurrent duplicate would then block on the row
//!   instead of answering `in_progress`, and could fail. So every function that takes the
//!   key's lock first checks (through `api`'s one guard of the writers) that the shard of its
//!   scope is placed on this node, and refuses the call with 0A000 otherwise.
//! - [`purge`]: expired records, on one server or shard by shard. Citus plans the one-server
//!   statement (a ctid subquery with `FOR UPDATE SKIP LOCKED`) only in a query that it routes
//!   to one shard, so on distributed records the purge runs `idempotency.purge_distributed`
//!   (`idem_purge`: every shard, each on the node that holds it) or `idempotency.purge_local`
//!   (the purge worker: the shards placed on this node; every node's worker purges its own).
//!
//! Both run in the SQL path's connection, with the table owner's rights (`Sql::open`): Citus's
//! `get_shard_id_for_distribution_column` checks SELECT on the table, which callers do not
//! have, and the per-shard functions are granted to nobody else (a remote shard's part
//! connects as that role).

use std::cell::Cell;

use pgrx::pg_sys;

use super::record::records_relid;
use super::sql::Sql;
use crate::datum::text_str;
use crate::errors::IdemError;

thread_local! {
    /// The kept plan of the per-call placement check (prepared when the layout is ByScope,
    /// dropped when the layout is read again: it names functions of a Citus that may be gone).
    static PLACEMENT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// How the records table is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A plain table (Citus absent, or the table not distributed).
    Local,
    /// Hash-distributed by `scope`: the supported layout.
    ByScope,
    /// Another kind of Citus table (reference, local, append, or distributed by another column).
    Unsupported,
}

thread_local! {
    /// The records table's oid and layout, until the relcache callback forgets them.
    static LAYOUT: Cell<Option<(pg_sys::Oid, Layout)>> = const { Cell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the layout when the records table's relcache entry (or every entry) is invalidated.
unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // SAFETY: a relcache callback's outermost frame.
    unsafe {
        crate::entry::enter(c"idempotency relcache callback", || {
            if let Some((rel, _)) = LAYOUT.get() {
                if relid == pg_sys::InvalidOid || relid == rel {
                    LAYOUT.set(None);
                }
            }
            Ok(())
        })
    }
}

/// The records table's layout, read once and kept until invalidated.
pub fn layout() -> Result<Layout, IdemError> {
    if let Some((_, layout)) = LAYOUT.get() {
        return Ok(layout);
    }
    if !CALLBACK_REGISTERED.get() {
        crate::compat::register_relcache_callback(invalidate);
        CALLBACK_REGISTERED.set(true);
    }
    let relid = records_relid()?;
    let layout = read_layout(relid)?;
    // A plan kept from an earlier layout may name functions of a Citus that is gone.
    forget_placement_plan();
    LAYOUT.set(Some((relid, layout)));
    Ok(layout)
}

/// Whether the records table is distributed (in any way Citus does it).
pub fn distributed() -> Result<bool, IdemError> {
    Ok(layout()? != Layout::Local)
}

fn read_layout(relid: pg_sys::Oid) -> Result<Layout, IdemError> {
    // SAFETY: a syscache lookup by name in pg_catalog.
    let catalog = unsafe {
        pg_sys::get_relname_relid(
            c"pg_dist_partition".as_ptr(),
            pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE),
        )
    };
    if catalog == pg_sys::InvalidOid {
        return Ok(Layout::Local);
    }
    let row = Sql::open()?.query_once(
        "SELECT p.partmethod::pg_catalog.text, \
                pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) \
         FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1",
        &[(pg_sys::OIDOID, pg_sys::Datum::from(relid))],
    )?;
    Ok(match row {
        None => Layout::Local,
        Some(cols) => {
            let method = cols.first().cloned().flatten();
            let column = cols.get(1).cloned().flatten();
            if method.as_deref() == Some("h") && column.as_deref() == Some("scope") {
                Layout::ByScope
            } else {
                Layout::Unsupported
            }
        }
    })
}

/// Drops the kept placement plan (when the layout is read again).
fn forget_placement_plan() {
    let old = PLACEMENT_PLAN.replace(std::ptr::null_mut());
    if !old.is_null() {
        // SAFETY: a plan this module kept with SPI_keepplan.
        unsafe { pg_sys::SPI_freeplan(old) };
    }
}

/// For a function that takes the key's lock (`function`, its declared name): refuses (0A000)
/// to run on a node that does not hold the shard of `scope`, where the lock would not be the
/// one that the calls delegated to the shard's node take. Free when the records are not
/// distributed.
pub fn require_shard_here(function: &'static str, scope: pg_sys::Datum) -> Result<(), IdemError> {
    match layout()? {
        Layout::Local => Ok(()),
        Layout::Unsupported => Err(IdemError::Unsupported {
            message: format!("{function}() does not support this layout of idempotency.records"),
            detail: Some(
                "The table is a Citus table that is not hash-distributed by scope.".into(),
            ),
            hint: Some(
                "Undistribute it (SELECT undistribute_table('idempotency.records')) and call \
                 idem_distribute() on the coordinator."
                    .into(),
            ),
        }),
        Layout::ByScope => {
            let sql = Sql::open()?;
            let (shard, here) = placement(&sql, scope)?;
            if here {
                return Ok(());
            }
            let holders = sql
                .query_once(
                    "SELECT pg_catalog.string_agg(n.nodename OPERATOR(pg_catalog.||) ':' \
                            OPERATOR(pg_catalog.||) n.nodeport::pg_catalog.text, ', '), \
                            (SELECT g.groupid::pg_catalog.text FROM pg_catalog.pg_dist_local_group g) \
                     FROM pg_catalog.pg_dist_placement p \
                     JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid \
                     WHERE p.shardid OPERATOR(pg_catalog.=) $1",
                    &[(pg_sys::INT8OID, pg_sys::Datum::from(shard))],
                )?
                .unwrap_or_default();
            let at = holders
                .first()
                .cloned()
                .flatten()
                .unwrap_or_else(|| "no node".into());
            let group = holders
                .get(1)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "?".into());
            // SAFETY: a text argument of the SQL function.
            let scope = unsafe { text_str(scope) }?;
            Err(IdemError::Unsupported {
                message: format!(
                    "{function}() ran on a node that does not hold the shard of scope \"{scope}\""
                ),
                detail: Some(format!(
                    "idempotency.records is distributed by Citus: shard {shard} of this scope is \
                     placed on {at}, and this is node group {group}. The key's lock is taken on \
                     the node where the function runs, so a call that Citus did not delegate to \
                     the shard's node would not see the locks of the calls it did delegate."
                )),
                hint: Some(format!(
                    "Call {function}() as a statement of its own (SELECT ... FROM {function}(...) \
                     with constant arguments) so that Citus delegates it; inside BEGIN ... COMMIT \
                     the functions must be distributed with force_delegation, which \
                     idem_distribute() does."
                )),
            })
        }
    }
}

/// The shard of `scope` and whether it is placed on this node, through a plan kept for the
/// backend's life (until the layout is read again).
fn placement(sql: &Sql, scope: pg_sys::Datum) -> Result<(i64, bool), IdemError> {
    let mut plan = PLACEMENT_PLAN.get();
    if plan.is_null() {
        // The shard id is computed once (a subquery in FROM), then probed by the placement
        // catalog's shard id index. The table by oid: a caller has no USAGE on the schema
        // idempotency to name it.
        plan = super::sql::prepare(
            "shard placement check",
            "SELECT s.id, EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, \
               pg_catalog.pg_dist_local_group g \
             WHERE p.shardid OPERATOR(pg_catalog.=) s.id \
               AND p.groupid OPERATOR(pg_catalog.=) g.groupid) \
             FROM (SELECT pg_catalog.get_shard_id_for_distribution_column($2, $1) AS id) s",
            &mut [pg_sys::TEXTOID, pg_sys::REGCLASSOID],
        )?;
        PLACEMENT_PLAN.set(plan);
    }
    let mut values = [scope, pg_sys::Datum::from(records_relid()?)];
    let row = sql.one_row(plan, &mut values, "the shard placement check")?;
    let shard = row
        .first()
        .copied()
        .flatten()
        .map_or(0, |d| d.value() as i64);
    let here = row
        .get(1)
        .copied()
        .flatten()
        .is_some_and(|d| d.value() != 0);
    Ok((shard, here))
}

/// Which shards a purge covers when the records are distributed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shards {
    /// Every shard, each on the node that holds it (`idem_purge`).
    All,
    /// The shards placed on this node (the purge worker: every node's worker purges its own).
    Here,
}

/// Deletes up to `max_rows` expired records and says how many: on one server with the SQL
/// path's purge statement, or, when Citus distributes the records, shard by shard (`shards`).
/// Rows that a live transaction has locked are skipped, never waited for.
pub fn purge(max_rows: i32, shards: Shards) -> Result<u64, IdemError> {
    if !distributed()? {
        let sql = Sql::open()?;
        // SAFETY: reads the clock (the wall clock, as every expiry is).
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        return sql.purge(now, max_rows);
    }
    let function = match shards {
        Shards::All => "idempotency.purge_distributed",
        Shards::Here => "idempotency.purge_local",
    };
    let sql = Sql::open()?;
    let row = sql.query_once(
        &format!("SELECT {function}($1)::pg_catalog.text"),
        &[(pg_sys::INT4OID, pg_sys::Datum::from(max_rows))],
    )?;
    let n: i64 = row
        .and_then(|cols| cols.into_iter().next().flatten())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| IdemError::Internal(format!("{function} gave no count")))?;
    Ok(n.max(0) as u64)
}
