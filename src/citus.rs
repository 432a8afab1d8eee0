//! Citus's way in: the planner hook that keeps a NULL scope from crashing a Citus node
//! ([`upper_paths`]), installed only when Citus is loaded. Where the records are (the layout,
//! the placement check, the purge shard by shard) is the store's: `store/placement.rs`
//! (docs/scale-out.md).

use pgrx::pg_sys;

use crate::errors::IdemError;

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
                && crate::store::distributed().ok()?
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
