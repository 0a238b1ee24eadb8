//! Where the vault is and how it is keyed: command-line options, the
//! environment, and an optional TOML config file, in that order of
//! precedence.
//!
//! ```toml
//! # latchkey.toml
//! data_dir = "/var/lib/latchkey"          # SQLite vault and development key
//! database_url = "postgres://latchkey@db/latchkey"   # instead of SQLite
//! keyring_file = "/etc/latchkey/keyring"  # master keys by term
//! plugin_dir = "/etc/latchkey/plugins"
//! listen = "127.0.0.1:8080"
//! audit_sink = "file:/var/log/latchkey/audit.jsonl"   # serve: full use events (default: the log)
//! audit_sink_max_bytes = 104857600        # serve: rotate the file sink at this size
//! audit_sink_keep = 5                     # serve: rotated files kept
//! audit_retention = "30d"                 # serve: prune use counts older than this (default 90d)
//!
//! [env]                                   # names → host environment variables
//! openai = "OPENAI_API_KEY"
//! aws = "access_key_id:AWS_ACCESS_KEY_ID,secret_access_key:AWS_SECRET_ACCESS_KEY,session_token:AWS_SESSION_TOKEN?"
//! ```

use latchkey::error::ErrorCode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use latchkey::vault::crypto::{KEYRING_FILE_ENV, MASTER_KEY_ENV};
use latchkey::vault::model::EnvMapping;
use latchkey::vault::{KeySource, Location, VaultOptions};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Failure;

/// The options every command that touches the vault takes.
#[derive(Args, Debug, Clone)]
pub struct VaultArgs {
    /// A TOML config file (see the README for its keys).
    #[arg(long = "config-file", global = true, env = "LATCHKEY_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// The data folder: the SQLite vault and, without a configured key, the development key
    /// [default: $XDG_DATA_HOME/latchkey or ~/.local/share/latchkey].
    #[arg(long, global = true, env = "LATCHKEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL for a vault shared by several replicas (instead of SQLite).
    #[arg(long, global = true, env = "LATCHKEY_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The config file's keys. Unknown keys are refused, so a typo is not a
/// silently ignored setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub keyring_file: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub audit_sink: Option<String>,
    pub audit_sink_max_bytes: Option<u64>,
    pub audit_sink_keep: Option<u32>,
    pub audit_retention: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig, Failure> {
        let Some(path) = path else { return Ok(FileConfig::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::new(ErrorCode::InvalidConfigFile, format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            Failure::new(ErrorCode::InvalidConfigFile, format!("{}: {}", path.display(), e.message().trim_end()))
        })
    }
}

/// The default data folder.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("latchkey");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/latchkey"),
        None => PathBuf::from("latchkey-data"),
    }
}

/// Everything resolved: where the vault is, how it is keyed, the
/// environment mapping, and the rest of the file's settings.
pub struct Resolved {
    pub options: VaultOptions,
    pub file: FileConfig,
}

impl VaultArgs {
    pub fn resolve(&self) -> Result<Resolved, Failure> {
        let file = FileConfig::load(self.config_file.as_deref())?;
        let data_dir = self.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(default_data_dir);
        let location = match self.database_url.as_deref().or(file.database_url.as_deref()) {
            Some(url) if !url.is_empty() => Location::from_url(url),
            _ => Location::SqliteFile(data_dir.join("vault.db")),
        };
        let master_key = match std::env::var(MASTER_KEY_ENV) {
            Ok(v) => Some(Zeroizing::new(v)),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Failure::new(ErrorCode::MasterKeyInvalid, format!("{MASTER_KEY_ENV} is not valid UTF-8")));
            }
        };
        let keyring_file = std::env::var_os(KEYRING_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or(file.keyring_file.clone());
        let keys = KeySource { master_key, keyring_file, dev_key_file: Some(data_dir.join("master.key")) };
        let mut options = VaultOptions::new(location, keys);
        let mut mapping = EnvMapping::default();
        for (name, spec) in &file.env {
            mapping
                .apply_entry(&format!("{name}={spec}"))
                .map_err(|e| Failure::new(e.code(), format!("config file [env]: {e}")))?;
        }
        options.env_mapping = mapping;
        Ok(Resolved { options, file })
    }
}
