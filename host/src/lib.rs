//! Latchkey, a credential broker for AI agents: the one call path, the HTTP surfaces and the CLI, over the plugin runtime and the vault.

pub mod broker;
pub mod server;
pub mod sign;

pub use latchkey_core::{error, secret, text};
/// The plugin runtime (crate `latchkey-runtime`).
pub use latchkey_runtime as plugin;
/// Storage: credentials and the directory (crate `latchkey-vault`).
pub use latchkey_vault as vault;

pub use plugin::{Plugin, PluginError, Runtime, RuntimeConfig};
pub use secret::Secret;
