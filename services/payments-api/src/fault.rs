//! Fault injection (`serve --fault-injection`, for the conformance suite's `crash` set): the
//! request header `X-Fault: crash-after-claim | crash-after-charge | crash-after-checkpoint |
//! crash-before-commit` aborts the process at that point of a payment. Without the flag the
//! header means nothing.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::app::Shared;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    AfterClaim,
    AfterCharge,
    AfterCheckpoint,
    BeforeCommit,
}

/// The fault a request asks for (`None` without `--fault-injection`), as an extractor.
pub struct Injected(pub Option<Fault>);

impl FromRequestParts<Shared> for Injected {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Infallible> {
        if !app.fault_injection {
            return Ok(Injected(None));
        }
        let fault = parts
            .headers
            .get("x-fault")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v.trim() {
                "crash-after-claim" => Some(Fault::AfterClaim),
                "crash-after-charge" => Some(Fault::AfterCharge),
                "crash-after-checkpoint" => Some(Fault::AfterCheckpoint),
                "crash-before-commit" => Some(Fault::BeforeCommit),
                _ => None,
            });
        Ok(Injected(fault))
    }
}

/// Aborts the process if `fault` is `point`.
pub fn crash_at(fault: Option<Fault>, point: Fault) {
    if fault == Some(point) {
        eprintln!("payments-api: fault injection {point:?}: aborting the process");
        std::process::abort();
    }
}

fn crash_before_commit() {
    crash_at(Some(Fault::BeforeCommit), Fault::BeforeCommit);
}

/// The hook run between the completion's statements and `COMMIT`: the crash for
/// `crash-before-commit`, else none.
pub fn before_commit(fault: Option<Fault>) -> Option<&'static (dyn Fn() + Sync)> {
    (fault == Some(Fault::BeforeCommit)).then_some(&crash_before_commit)
}
