//! The pure core of `idempotency`: everything that can be decided without a database.
//!
//! - [`jsonb`] reads PostgreSQL's on-disk jsonb format (bounds-checked, no PostgreSQL code);
//! - [`numeric`] turns PostgreSQL's binary numeric into an exact decimal in ECMAScript layout;
//! - [`canonical`](mod@canonical) writes the canonical text of a command (RFC 8785 structure,
//!   exact numbers);
//! - [`fingerprint`](mod@fingerprint) is SHA-256 over that text;
//! - [`decision`] is the state machine: stored record, request and clock in, outcome out;
//! - [`duration`] reads the text of a duration setting ('2 hours', '90 s', '500ms', '2h').
//!
//! The extension crate is a thin PostgreSQL shell around these modules.

pub mod canonical;
pub mod decision;
pub mod duration;
pub mod fingerprint;
pub mod jsonb;
pub mod numeric;

/// A model of PostgreSQL's jsonb encoder, for tests only (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod model;

pub use canonical::canonical;
pub use fingerprint::{fingerprint, fingerprint_of_text};
pub use jsonb::{FormatError, FormatErrorKind};
