//! Latchkey's storage: credentials apart from the directory, both on one storage layer, with the audit trail.
//!
//! - [`credentials`]: the credential model (names, destinations, input
//!   hygiene, resolution layers), envelope encryption, and [`Vault`]'s
//!   reads, writes and resolution of credentials.
//! - [`directory`]: agents and their tokens, registration tokens, routes and
//!   identity providers.
//! - [`storage`]: the SQLite and PostgreSQL pools, migrations, the change
//!   feed and the caches it invalidates.
//! - [`audit`]: lifecycle events, use counts, and the sink of full use events.
//!
//! One rule for every write, in either room: the row change, its change
//! record (which every replica's feed reads) and its audit event commit in
//! one transaction. The vault validates credentials through a
//! [`latchkey_core::SchemeCatalogue`] and never runs a plugin itself; it does
//! no network I/O beyond its database connection.

pub mod audit;
pub mod credentials;
pub mod directory;
pub mod storage;

pub use audit::{AuditAction, AuditEvent, AuditFilter, AuditOptions, AuditSink, UseEvent};
pub use credentials::service::{
    AttachmentKind, AttachmentsView, CredentialInfo, CredentialRef, CredentialView, EnvLookup, KeyOrigin, KeySource,
    Resolution, RotationReport, Vault, VaultError, VaultOptions, parse_org,
};
pub use credentials::{crypto, model};
pub use directory::{agents, identity};
/// The storage layer under its earlier name.
pub use storage as store;
pub use storage::Location;
