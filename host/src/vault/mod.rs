//! The credential vault: the credential model, envelope encryption, storage.
//!
//! `vault` does no network I/O of its own beyond its database connection.

pub mod crypto;
pub mod model;
