//! Credentials: the model, envelope encryption, and the vault's reads, writes and resolution of them.

pub mod crypto;
pub mod model;
pub(crate) mod service;
