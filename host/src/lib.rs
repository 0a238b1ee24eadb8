//! Latchkey, a credential broker for AI agents: auth schemes run as sandboxed
//! WebAssembly components over credentials the agents never hold.

pub mod broker;
pub mod error;
pub mod plugin;
pub mod secret;
pub mod server;
pub mod sign;
pub mod vault;

pub use plugin::{Plugin, PluginError, Runtime, RuntimeConfig};
pub use secret::Secret;
