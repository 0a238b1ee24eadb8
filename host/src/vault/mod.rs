//! The credential vault: the credential model, envelope encryption, storage
//! on SQLite or PostgreSQL, change propagation, and the audit trail.
//!
//! `vault` does no network I/O of its own beyond its database connection.

pub mod agents;
pub mod audit;
mod cache;
pub mod crypto;
pub mod identity;
pub mod model;
mod service;
pub mod store;
mod watch;

pub use audit::{AuditAction, AuditEvent, AuditFilter, UseEvent};
pub use service::{
    AttachmentKind, AttachmentsView, CredentialInfo, CredentialRef, CredentialView, EnvLookup, KeyOrigin, KeySource,
    Resolution, RotationReport, Vault, VaultError, VaultOptions, parse_org,
};
pub use store::Location;
