//! The command-line surfaces that need the vault or the server.

pub mod agents;
pub mod config;
pub mod output;
pub mod serve;
pub mod vault;
