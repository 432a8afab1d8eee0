//! The drop-in layer's framework-neutral part (docs/http.md, "The drop-in layer"), over the
//! `http` crate's types: the [`options`], the [`command`] a request means, what is
//! [`stored`] of a response and how it is replayed, and the layer's own [`answers`]. The
//! tower layer for axum is [`crate::axum`]; the claims and transactions are the crate's
//! [`crate::phased`] and [`crate::one_tx`].

pub mod answers;
pub mod command;
pub mod options;
pub mod stored;

pub use answers::{Problem, Reply};
pub use options::{ConfigError, Mode, Options};
