//! A client of the `idempotency` PostgreSQL extension for tokio-postgres and deadpool-postgres.
//!
//! - [`calls`]: one typed call per SQL function (`idem_begin`, `idem_complete`, `idem_fail`,
//!   `idem_checkpoint`, `idem_check`, `idem_fingerprint`, `idem_canonical`, `idem_purge`,
//!   `idem_forget`);
//! - [`error`]: [`Error`], one variant per SQLSTATE the extension raises (never by message),
//!   the refusals' data read from the record after them ([`Error::load`]), and
//!   [`retry_serialization`] for `40001`;
//! - [`one_tx`]: begin, the caller's work and complete or fail in one transaction;
//! - [`phased`]: a claim under a lease, checkpoints, and complete or fail with the attempt;
//! - [`http`]: outcome or error to status, `Idempotent-Replayed`, `Retry-After` and problem `code`;
//! - [`headers`]: the `Idempotency-Key` and `Prefer` request headers, parsed;
//! - [`layer`] (feature `axum`): the drop-in layer's framework-neutral part (options, the
//!   command, what is stored and replayed), and [`mod@axum`] its tower layer for axum;
//! - [`roundtrips`]: a connector that counts round trips on the wire.
//!
//! The client gets every semantic from the database: it maps outcomes and SQLSTATEs, it never
//! re-decides.

#[cfg(feature = "axum")]
pub mod axum;
pub mod calls;
pub mod error;
pub mod headers;
pub mod http;
#[cfg(feature = "axum")]
pub mod layer;
pub mod one_tx;
pub mod phased;
pub mod roundtrips;

pub use calls::{BeginRequest, Begun, Checked, Completion, Failure, Outcome, State};
pub use error::{retry_serialization, Error, KeyReused, LeaseLost, NotInProgress};
pub use one_tx::{run, Finish, Ran, RunError, Stored};
pub use phased::{claim, claim_waiting, Claim, Phased};
