//! The SQL functions as PostgreSQL calls them: one line per function, naming the function
//! (its declaration in `signature` and the C symbol `sql/idempotency.sql` binds to) and the
//! body in `api` that does its work. The top of the library, with the other ways in
//! (`_PG_init` in lib.rs, the hooks, the workers): nothing below imports it.
//!
//! Written by hand rather than through `#[pg_extern]` for three reasons: the contract's own
//! SQLSTATEs (raised from the outermost frame, see `entry.rs`), NULL arguments answered with
//! 22004 (so the functions cannot be STRICT), and jsonb read in its binary form without pgrx
//! converting it to serde_json first.
//!
//! Every call goes through [`call`]: the guard of every way in (`entry::enter`), then the
//! body with the call's arguments (`fmgr::Args`); a refusal is counted (`stats::refused`, an
//! exhaustive mapping) and logged when `idempotency.log_refusals` is on, inside the guard.

use pgrx::pg_sys;

use crate::api;
use crate::errors::IdemError;
use crate::fmgr::Args;
use crate::signature::Signature;

/// For each function: the `pg_finfo_<name>` record (version 1) and the entry point `<name>`
/// that runs the body with the call's [`Args`] under the declaration
/// `signature::<name>::SIGNATURE`.
macro_rules! sql_functions {
    ($($name:ident => $body:path;)*) => {$(
        #[allow(non_snake_case)]
        mod $name {
            use super::*;

            #[export_name = concat!("pg_finfo_", stringify!($name))]
            #[doc(hidden)]
            pub extern "C" fn finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
                const V1: ::pgrx::pg_sys::Pg_finfo_record =
                    ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
                &V1
            }

            /// # Safety
            /// Called by PostgreSQL's function manager only.
            #[export_name = stringify!($name)]
            pub unsafe extern "C-unwind" fn entry(
                fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
            ) -> ::pgrx::pg_sys::Datum {
                // SAFETY: called by the function manager with this function's call info;
                // `call` goes through `entry::enter`, the guard of every way in.
                unsafe { super::call(fcinfo, &$crate::signature::$name::SIGNATURE, $body) }
            }
        }
    )*};
}

sql_functions! {
    idem_begin => api::begin;
    idem_complete => api::complete;
    idem_fail => api::fail;
    idem_checkpoint => api::checkpoint;
    idem_check => api::check;
    idem_check_0_4 => api::check_0_4;
    idem_fingerprint => api::fingerprint;
    idem_canonical => api::canonical;
    idem_purge => api::purge;
    idem_forget => api::forget;
    idem_stats => api::stats;
    idem_stats_reset => api::stats_reset;
}

/// Runs one call of a SQL function through the guard of every way in (`entry.rs`): the
/// body's errors and whatever unwinds out of it (errors PostgreSQL raised inside, which pgrx
/// turns into panics) are raised as PostgreSQL errors once the body and everything it owned
/// are gone. A refusal is counted and logged inside the guard.
///
/// # Safety
/// `fcinfo` is the call info PostgreSQL passed to the function that `signature` declares;
/// called from that function's outermost frame.
unsafe fn call(
    fcinfo: pg_sys::FunctionCallInfo,
    signature: &'static Signature,
    body: fn(&Args) -> Result<pg_sys::Datum, IdemError>,
) -> pg_sys::Datum {
    let function = signature.c_name;
    // SAFETY: the outermost frame of the SQL function; nothing here needs dropping.
    unsafe {
        crate::entry::enter(function, || {
            body(&Args::new(fcinfo, signature)?).inspect_err(|e| {
                crate::stats::refused(e);
                if crate::settings::log_refusals() {
                    e.log(function);
                }
            })
        })
    }
}
