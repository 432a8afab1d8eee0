//! Citus: what changes when `idempotency.records` is a Citus distributed table
//! (`idem_distribute()`, docs/scale-out.md).
//!
//! - The key's lock (`lock.rs`) lives in the lock table of the node where the function runs.
//!   Citus delegates a call of a distributed function to the node that holds its scope's shard
//!   only in the forms it can route (a statement of its own, `SELECT ... FROM f(...)` with
//!   constant arguments; inside `BEGIN ... COMMIT` only with `force_delegation`). A call that
//!   Citus does not delegate runs where it was sent, its statements routed to the shard, and
//!   its lock would be taken on the wrong node, unseen by the calls that were delegated: a
//!   concurrent duplicate would then block on the row instead of answering `in_progress`,
//!   and could fail. So every function that takes the key's lock first checks that the shard
//!   of its scope is placed on this node, and refuses the call with 0A000 otherwise
//!   ([`require_shard_here`]).
//! - `idem_purge` cannot run its one-server statement (a ctid subquery with `FOR UPDATE SKIP
//!   LOCKED`) on a distributed table: Citus plans FOR UPDATE only in a query that it routes
//!   to one shard. It purges shard by shard instead ([`purge`], the SQL functions
//!   `idempotency.purge_distributed` and `idempotency.purge_shard`).
//!
//! Whether the table is distributed is read from Citus's catalog `pg_dist_partition` once per
//! backend and kept until the table's relcache entry is invalidated, which Citus does whenever
//! it changes the table's metadata (create_distributed_table, undistribute_table, shard
//! moves). Without Citus the check costs a thread-local read per call.

use std::cell::Cell;
use std::ffi::CString;

use pgrx::pg_sys;

use crate::errors::IdemError;
use crate::store;

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
    /// The records table's oid, owner and layout, until the relcache callback forgets them.
    static LAYOUT: Cell<Option<(pg_sys::Oid, pg_sys::Oid, Layout)>> = const { Cell::new(None) };
    /// The kept plan of the per-call placement check (prepared when the layout is ByScope).
    static PLACEMENT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the layout when the records table's relcache entry (or every entry) is invalidated.
unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // SAFETY: a relcache callback's outermost frame.
    unsafe {
        crate::entry::enter(c"idempotency relcache callback", || {
            if let Some((rel, _, _)) = LAYOUT.get() {
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
    if let Some((_, _, layout)) = LAYOUT.get() {
        return Ok(layout);
    }
    if !CALLBACK_REGISTERED.get() {
        crate::compat::register_relcache_callback(invalidate);
        CALLBACK_REGISTERED.set(true);
    }
    let relid = store::records_relid()?;
    let layout = read_layout(relid)?;
    // A plan kept from an earlier layout may name functions of a Citus that is gone.
    let old = PLACEMENT_PLAN.replace(std::ptr::null_mut());
    if !old.is_null() {
        // SAFETY: a plan this module kept with SPI_keepplan.
        unsafe { pg_sys::SPI_freeplan(old) };
    }
    LAYOUT.set(Some((relid, store::owner_of(relid), layout)));
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
    let spi = Spi::connect()?;
    let row = spi.query_once(
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

/// For a function that takes the key's lock: refuses (0A000) to run on a node that does not
/// hold the shard of `scope`, where the lock would not be the one that the calls delegated
/// to the shard's node take. Free when the records are not distributed.
pub fn require_shard_here(function: &'static str, scope: pg_sys::Datum) -> Result<(), IdemError> {
    let function = function.trim_end_matches("()");
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
            // As the table's owner: Citus's get_shard_id_for_distribution_column checks SELECT
            // on the table, which callers do not have.
            let owner = LAYOUT.get().map(|(_, owner, _)| owner).unwrap_or_default();
            let spi = Spi::connect_as(Some(owner))?;
            let (shard, here) = spi.placement(scope)?;
            if here {
                return Ok(());
            }
            let holders = spi
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
            let scope = unsafe { store::text_str(scope) }?;
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

/// `idem_purge` on distributed records: one bounded batch over every shard, each on the node
/// that holds it (`idempotency.purge_distributed`), run with the table owner's rights (the
/// per-shard function is not granted to anyone else; a remote shard's part connects as that
/// role).
pub fn purge(max_rows: i32) -> Result<i64, IdemError> {
    let owner = store::owner_of(store::records_relid()?);
    let spi = Spi::connect_as(Some(owner))?;
    let row = spi.query_once(
        "SELECT idempotency.purge_distributed($1)::pg_catalog.text",
        &[(pg_sys::INT4OID, pg_sys::Datum::from(max_rows))],
    )?;
    row.and_then(|cols| cols.into_iter().next().flatten())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| IdemError::Internal("idempotency.purge_distributed gave no count".into()))
}

/// The purge worker's batch on distributed records: `idempotency.purge_local`, the shards
/// placed on this node only (every node's worker purges its own), with the table owner's
/// rights as in [`purge`].
pub fn purge_local(max_rows: i32) -> Result<i64, IdemError> {
    let owner = store::owner_of(store::records_relid()?);
    let spi = Spi::connect_as(Some(owner))?;
    let row = spi.query_once(
        "SELECT idempotency.purge_local($1)::pg_catalog.text",
        &[(pg_sys::INT4OID, pg_sys::Datum::from(max_rows))],
    )?;
    row.and_then(|cols| cols.into_iter().next().flatten())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| IdemError::Internal("idempotency.purge_local gave no count".into()))
}

/// An SPI connection for this module's catalog queries, optionally with another role's rights
/// (restricted: nothing but these statements runs under them). Dropping it disconnects and
/// gives the caller's identity back.
struct Spi {
    saved: Option<(pg_sys::Oid, i32)>,
}

impl Spi {
    fn connect() -> Result<Spi, IdemError> {
        Spi::connect_as(None)
    }

    fn connect_as(role: Option<pg_sys::Oid>) -> Result<Spi, IdemError> {
        // SAFETY: as in `store::Store::open`; an error raised in between is cleaned up by the
        // (sub)transaction abort, which restores the user id too.
        unsafe {
            let saved = role.map(|role| {
                let mut user = pg_sys::InvalidOid;
                let mut context = 0;
                pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
                pg_sys::SetUserIdAndSecContext(
                    role,
                    context
                        | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                        | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
                );
                (user, context)
            });
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                if let Some((user, context)) = saved {
                    pg_sys::SetUserIdAndSecContext(user, context);
                }
                return Err(IdemError::Internal("SPI_connect failed".into()));
            }
            Ok(Spi { saved })
        }
    }

    /// Runs a statement once (not kept) and returns its first row as text values.
    fn query_once(
        &self,
        sql: &str,
        args: &[(pg_sys::Oid, pg_sys::Datum)],
    ) -> Result<Option<Vec<Option<String>>>, IdemError> {
        let sql = CString::new(sql).map_err(|e| IdemError::Internal(e.to_string()))?;
        let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
        // SAFETY: inside this SPI connection; the types match the values.
        unsafe {
            let rc = pg_sys::SPI_execute_with_args(
                sql.as_ptr(),
                args.len() as i32,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                std::ptr::null(),
                false,
                1,
            );
            if rc < 0 {
                return Err(IdemError::Internal(format!(
                    "SPI_execute_with_args returned {rc}"
                )));
            }
            if pg_sys::SPI_processed == 0 {
                return Ok(None);
            }
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            let mut out = Vec::new();
            for n in 1..=(*desc).natts {
                let v = pg_sys::SPI_getvalue(tuple, desc, n);
                out.push(if v.is_null() {
                    None
                } else {
                    Some(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
                });
            }
            Ok(Some(out))
        }
    }

    /// The shard of `scope` and whether it is placed on this node, through a plan kept for
    /// the backend's life (until the layout is read again).
    fn placement(&self, scope: pg_sys::Datum) -> Result<(i64, bool), IdemError> {
        let mut plan = PLACEMENT_PLAN.get();
        if plan.is_null() {
            // The shard id is computed once (a subquery in FROM), then probed by the
            // placement catalog's shard id index.
            let sql = c"SELECT s.id, EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, \
                          pg_catalog.pg_dist_local_group g \
                        WHERE p.shardid OPERATOR(pg_catalog.=) s.id \
                          AND p.groupid OPERATOR(pg_catalog.=) g.groupid) \
                        FROM (SELECT pg_catalog.get_shard_id_for_distribution_column($2, $1) AS id) s";
            // The table by oid: a caller has no USAGE on the schema idempotency to name it.
            let mut types = [pg_sys::TEXTOID, pg_sys::REGCLASSOID];
            // SAFETY: inside this SPI connection.
            unsafe {
                plan = pg_sys::SPI_prepare(sql.as_ptr(), 2, types.as_mut_ptr());
                if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                    return Err(IdemError::Internal(
                        "could not prepare the shard placement check".into(),
                    ));
                }
            }
            PLACEMENT_PLAN.set(plan);
        }
        let relid = LAYOUT
            .get()
            .map(|(rel, _, _)| rel)
            .ok_or_else(|| IdemError::Internal("the records' layout is not known".into()))?;
        let mut values = [scope, pg_sys::Datum::from(relid)];
        // SAFETY: the plan takes a text and a regclass argument; one row comes back.
        unsafe {
            let rc =
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), std::ptr::null(), false, 1);
            if rc < 0 || pg_sys::SPI_processed != 1 {
                return Err(IdemError::Internal(format!(
                    "the shard placement check returned {rc}"
                )));
            }
            let table = pg_sys::SPI_tuptable;
            let tuple = *(*table).vals;
            let desc = (*table).tupdesc;
            let mut null = false;
            let shard = pg_sys::SPI_getbinval(tuple, desc, 1, &mut null).value() as i64;
            let here = pg_sys::SPI_getbinval(tuple, desc, 2, &mut null).value() != 0;
            Ok((shard, here))
        }
    }
}

impl Drop for Spi {
    fn drop(&mut self) {
        // SAFETY: closes the connection opened in `connect_as` and restores the identity.
        unsafe {
            pg_sys::SPI_finish();
            if let Some((user, context)) = self.saved {
                pg_sys::SetUserIdAndSecContext(user, context);
            }
        }
    }
}

/// The planner hook that keeps a NULL scope from crashing a Citus node.
///
/// Citus 13.2 (and earlier) delegates a call of a distributed function in its planner: after
/// `standard_planner` has planned the query, it looks for a single call of a distributed
/// function (`SELECT f(...)`, `SELECT ... FROM f(...)`, and whatever the planner reduces to
/// those: a `WHERE true`, a sub-select or a view that is pulled up, a SQL function that is
/// inlined) and hashes its distribution argument to find the shard, without checking for NULL.
/// A NULL text crashes the backend in `hashtext`, and the postmaster then restarts every
/// backend of the node (crash recovery). So a client that sends `idem_begin(NULL, ...)` (the
/// contract's 22004) to any node would take the node down.
///
/// The hook is PostgreSQL's `create_upper_paths_hook`, which `standard_planner` calls while
/// Citus's planner waits for it: at the final stage of the outermost query, `root->parse` is
/// the query Citus will look at, already simplified, its constants folded and the bound
/// parameters of a custom plan substituted. If that query calls one of this extension's
/// distributed functions (checked by the function's oid first) with a scope that is a NULL
/// constant, and the records are distributed, it raises the function's own 22004 there,
/// before Citus sees the call. It evaluates nothing: it only reads what the planner made.
///
/// It is installed only where Citus was loaded before this library (listed after it in
/// `shared_preload_libraries`, or in `session_preload_libraries`; `idem_distribute` checks
/// every node): without Citus there is nothing to protect, and nothing of it runs.
static mut PREV_UPPER_PATHS: pg_sys::create_upper_paths_hook_type = None;

pub fn install_planner_hook() {
    if !citus_loaded() {
        return;
    }
    // SAFETY: called once from _PG_init; chains to the hook that was there.
    unsafe {
        PREV_UPPER_PATHS = pg_sys::create_upper_paths_hook;
        pg_sys::create_upper_paths_hook = Some(upper_paths);
    }
}

/// Whether Citus's library is loaded in this process: it defines `citus.version` when it is
/// (a placeholder for a `citus.*` line of the configuration file does not count).
fn citus_loaded() -> bool {
    // SAFETY: looks a setting up by name; missing_ok, so no error.
    unsafe {
        let name = c"citus.version".as_ptr();
        !pg_sys::GetConfigOption(name, true, false).is_null()
            && pg_sys::GetConfigOptionFlags(name, true) & pg_sys::GUC_CUSTOM_PLACEHOLDER as i32 == 0
    }
}

/// The functions distributed by scope (argument 0), as `idem_distribute` distributes them.
const DELEGATED: [&str; 6] = [
    "idem_begin",
    "idem_complete",
    "idem_fail",
    "idem_checkpoint",
    "idem_check",
    "idem_forget",
];

unsafe extern "C-unwind" fn upper_paths(
    root: *mut pg_sys::PlannerInfo,
    stage: pg_sys::UpperRelationKind::Type,
    input_rel: *mut pg_sys::RelOptInfo,
    output_rel: *mut pg_sys::RelOptInfo,
    extra: *mut std::ffi::c_void,
) {
    // SAFETY: the hook's outermost frame. The hook that was there runs first, outside the
    // guard (its ERROR leaves as it would without this library); then this library's check,
    // inside it.
    unsafe {
        if let Some(prev) = PREV_UPPER_PATHS {
            prev(root, stage, input_rel, output_rel, extra);
        }
        crate::entry::enter(c"idempotency planner hook", || {
            if stage != pg_sys::UpperRelationKind::UPPERREL_FINAL
                || root.is_null()
                || !(*root).parent_root.is_null()
            {
                return Ok(());
            }
            match null_scope_call((*root).parse) {
                Some(function) => Err(IdemError::NullArgument {
                    function,
                    argument: "scope",
                }),
                None => Ok(()),
            }
        })
    }
}

/// The name of this extension's distributed function that the planned query `parse` calls
/// with a NULL constant scope (in its target list or as a function in its range table), when
/// the records are distributed; None otherwise.
fn null_scope_call(parse: *mut pg_sys::Query) -> Option<&'static str> {
    use pgrx::{is_a, PgList};
    // SAFETY: the query being planned, only read.
    unsafe {
        let q = parse.as_ref()?;
        if q.commandType != pg_sys::CmdType::CMD_SELECT {
            return None;
        }
        let mut calls = Vec::new();
        for target in PgList::<pg_sys::TargetEntry>::from_pg(q.targetList).iter_ptr() {
            calls.push((*target).expr.cast::<pg_sys::Node>());
        }
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable).iter_ptr() {
            if (*rte).rtekind == pg_sys::RTEKind::RTE_FUNCTION {
                for f in PgList::<pg_sys::RangeTblFunction>::from_pg((*rte).functions).iter_ptr() {
                    calls.push((*f).funcexpr);
                }
            }
        }
        for call in calls {
            if !is_a(call, pg_sys::NodeTag::T_FuncExpr) {
                continue;
            }
            let call = call.cast::<pg_sys::FuncExpr>();
            // First, by its oid: one of this extension's delegated functions? Nothing of
            // anyone else's call is looked at further.
            let Some(function) = delegated((*call).funcid) else {
                continue;
            };
            // The planner has put the arguments in positional order (named ones too).
            let args = PgList::<pg_sys::Node>::from_pg((*call).args);
            let Some(scope) = args.get_ptr(0) else {
                continue;
            };
            if is_a(scope, pg_sys::NodeTag::T_Const)
                && (*scope.cast::<pg_sys::Const>()).constisnull
                // A plain server answers the call itself (with the same 22004); act only
                // where Citus would plan it.
                && distributed().ok()?
            {
                return Some(function);
            }
        }
        None
    }
}

/// The name of the delegated function `funcid` if it is one of this extension's, else None;
/// kept per backend by oid (a function's oid is not reused while it exists, and a new
/// extension's functions have new oids).
fn delegated(funcid: pg_sys::Oid) -> Option<&'static str> {
    thread_local! {
        static SEEN: std::cell::RefCell<Vec<(pg_sys::Oid, Option<&'static str>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    if let Some(known) = SEEN.with_borrow(|seen| {
        seen.iter()
            .find(|(oid, _)| *oid == funcid)
            .map(|(_, name)| *name)
    }) {
        return known;
    }
    // SAFETY: catalog look-ups by oid (the syscache for the name; pg_depend only for a
    // function named like one of ours).
    let answer = unsafe {
        let name = pg_sys::get_func_name(funcid);
        let function = if name.is_null() {
            None
        } else {
            let name = std::ffi::CStr::from_ptr(name).to_bytes();
            DELEGATED.iter().find(|f| f.as_bytes() == name).copied()
        };
        function.filter(|_| {
            let ext = pg_sys::get_extension_oid(c"idempotency".as_ptr(), true);
            ext != pg_sys::InvalidOid
                && pg_sys::getExtensionOfObject(pg_sys::ProcedureRelationId, funcid) == ext
        })
    };
    SEEN.with_borrow_mut(|seen| {
        if seen.len() >= 64 {
            seen.clear();
        }
        seen.push((funcid, answer));
    });
    answer
}
