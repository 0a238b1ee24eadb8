//! Per-call store data and the host side of the plugin imports.
//!
//! Every call gets a fresh [`State`]: one credential, one clock value, empty
//! tables. Host functions return the WIT `error` variant for anything a plugin
//! may legitimately get wrong (unknown field, key of the wrong type); an `Err`
//! from them is a trap and is reserved for broken host invariants.

use std::collections::BTreeMap;
use std::sync::Arc;

use ring::{digest, hmac, rand::SecureRandom};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result as WtResult, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::latchkey::plugin::{cache, credentials, crypto, log, random, secrets, types};
use super::bindings::{Datetime, Level, Part, Segment, SignatureAlgorithm, WitError};
use super::crypto::{KeyCache, sign_with, verify_jwk};
use super::sanitize_for_log;
use latchkey_core::secret::Secret;

/// The marker type behind `Resource<credential>`. The handle names no
/// credential: host functions always use the one bound to the call's store,
/// so a plugin cannot reach any other credential whatever handle it forges.
pub struct CredentialHandle;

/// A credential as a plugin call sees it: name, version, config and secrets.
/// Parsed private keys are cached here, per field and algorithm, for the
/// lifetime of this credential version.
pub struct CallCredential {
    /// The credential's name.
    pub name: String,
    /// Its version; cache entries are scoped to it.
    pub version: u64,
    /// Non-secret configuration.
    pub config: Vec<(String, String)>,
    secrets: BTreeMap<String, Secret>,
    pub(crate) keys: KeyCache,
}

impl std::fmt::Debug for CallCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCredential")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("config", &self.config)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CallCredential {
    /// A credential for one or more calls.
    pub fn new(
        name: impl Into<String>,
        version: u64,
        config: Vec<(String, String)>,
        secrets: BTreeMap<String, Secret>,
    ) -> CallCredential {
        CallCredential { name: name.into(), version, config, secrets, keys: KeyCache::default() }
    }

    /// A secret field's value.
    pub fn secret(&self, field: &str) -> Option<&Secret> {
        self.secrets.get(field)
    }

    /// The secret field names, sorted.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

/// Results a plugin asked the host to keep between calls, per (plugin,
/// credential, version). Values are secrets (minted tokens).
#[derive(Default)]
pub struct PluginCache {
    entries: std::sync::Mutex<std::collections::HashMap<CacheKey, (Secret, i64)>>,
}

/// (plugin, credential name, credential version, plugin's key).
type CacheKey = (Arc<str>, String, u64, String);

/// How many entries the shared plugin cache holds before it evicts.
const CACHE_CAPACITY: usize = 10_000;
/// The longest a plugin may cache a value.
const CACHE_MAX_SECONDS: i64 = 86_400;
/// Log lines one call may write before the host drops the rest.
const MAX_LOG_LINES: u32 = 32;
/// Secret field names are short; refuse absurd ones before any lookup.
const MAX_FIELD_NAME: usize = 256;

impl PluginCache {
    fn get(&self, key: &CacheKey, now: i64) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v.expose().to_string())
    }

    fn set(&self, key: CacheKey, value: String, expires: i64, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (_, exp)| *exp > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (Secret::new(value), expires.min(now + CACHE_MAX_SECONDS)));
    }
}

/// The data of one call's `Store`.
pub struct State {
    pub(crate) plugin: Arc<str>,
    pub(crate) cred: Arc<CallCredential>,
    pub(crate) now: Datetime,
    pub(crate) reveal_granted: bool,
    pub(crate) limits: StoreLimits,
    pub(crate) table: ResourceTable,
    pub(crate) cache: Arc<PluginCache>,
    pub(crate) rng: Arc<ring::rand::SystemRandom>,
    pub(crate) wasi: Option<WasiCtx>,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) log_lines: u32,
    /// Secret fields this call used as a key (`crypto.hmac-sha256`,
    /// `crypto.sign`): host-only for this call, whatever was declared.
    pub(crate) keyed: Vec<String>,
    /// Secret fields this call hashed (`crypto.sha256-parts`).
    pub(crate) digested: Vec<String>,
}

impl State {
    fn check_handle(&self, handle: &Resource<CredentialHandle>) -> WtResult<()> {
        self.table.get(handle)?;
        Ok(())
    }

    fn field<'a>(&'a self, field: &str) -> Result<&'a Secret, WitError> {
        if field.len() > MAX_FIELD_NAME {
            return Err(WitError::Denied("secret field name too long".into()));
        }
        self.cred.secret(field).ok_or_else(|| WitError::MissingSecret(field.to_string()))
    }

    /// Concatenate parts, splicing in secret field values (and encoding
    /// `base64` parts).
    pub(crate) fn resolve_parts(&self, parts: &[Part]) -> Result<Vec<u8>, WitError> {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Secret(f) => out.extend_from_slice(self.field(f)?.expose().as_bytes()),
                Part::Base64(segments) => {
                    let mut inner = zeroize::Zeroizing::new(Vec::new());
                    for seg in segments {
                        match seg {
                            Segment::Text(t) => inner.extend_from_slice(t.as_bytes()),
                            Segment::Secret(f) => inner.extend_from_slice(self.field(f)?.expose().as_bytes()),
                        }
                    }
                    use base64::Engine as _;
                    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(&inner[..]).as_bytes());
                }
            }
        }
        Ok(out)
    }

    fn note_keyed(&mut self, field: &str) {
        if self.cred.secret(field).is_some() && !self.keyed.iter().any(|f| f == field) {
            self.keyed.push(field.to_string());
        }
    }

    /// What the plugin wrote to stderr (a panic message, usually), on one
    /// line, escaped and capped.
    pub(crate) fn stderr_excerpt(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        // A Rust panic prints `thread ... panicked at file:line:` and then
        // the message on the next line; keep both.
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(2).collect();
        if lines.is_empty() {
            return None;
        }
        Some(sanitize_for_log(&lines.join(" "), 300))
    }
}

/// WASI is built only when a plugin actually touches it (Rust's standard
/// library does when it panics), so calls that never do pay nothing for it.
impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = self.wasi.get_or_insert_with(|| super::wasi::sandbox_ctx(self.now, self.stderr.clone()));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

impl types::Host for State {}

impl credentials::Host for State {}

impl credentials::HostCredential for State {
    fn name(&mut self, handle: Resource<CredentialHandle>) -> WtResult<String> {
        self.check_handle(&handle)?;
        Ok(self.cred.name.clone())
    }

    fn has_secret(&mut self, handle: Resource<CredentialHandle>, field: String) -> WtResult<bool> {
        self.check_handle(&handle)?;
        Ok(self.cred.secret(&field).is_some())
    }

    fn secret_names(&mut self, handle: Resource<CredentialHandle>) -> WtResult<Vec<String>> {
        self.check_handle(&handle)?;
        Ok(self.cred.secret_names().map(str::to_string).collect())
    }

    fn drop(&mut self, handle: Resource<CredentialHandle>) -> WtResult<()> {
        // The host owns the handle and deletes it after the call; a guest
        // never receives an owned handle, so this is never called with one.
        let _ = handle;
        Ok(())
    }
}

impl crypto::Host for State {
    fn sha256(&mut self, data: Vec<u8>) -> WtResult<Vec<u8>> {
        Ok(digest::digest(&digest::SHA256, &data).as_ref().to_vec())
    }

    fn sha256_parts(
        &mut self,
        handle: Resource<CredentialHandle>,
        parts: Vec<Part>,
    ) -> WtResult<Result<Vec<u8>, WitError>> {
        self.check_handle(&handle)?;
        for p in &parts {
            match p {
                Part::Text(_) => {}
                Part::Secret(f) => self.digested.push(f.clone()),
                Part::Base64(segs) => self.digested.extend(segs.iter().filter_map(|s| match s {
                    Segment::Secret(f) => Some(f.clone()),
                    Segment::Text(_) => None,
                })),
            }
        }
        self.digested.sort();
        self.digested.dedup();
        Ok(self.resolve_parts(&parts).map(|data| digest::digest(&digest::SHA256, &data).as_ref().to_vec()))
    }

    fn hmac_sha256(
        &mut self,
        handle: Resource<CredentialHandle>,
        field: String,
        key_prefix: Vec<u8>,
        derivation: Vec<Vec<u8>>,
        message: Vec<u8>,
    ) -> WtResult<Result<Vec<u8>, WitError>> {
        self.check_handle(&handle)?;
        self.note_keyed(&field);
        Ok(self.field(&field).map(|secret| {
            let mut k0 = zeroize::Zeroizing::new(key_prefix);
            k0.extend_from_slice(secret.expose().as_bytes());
            let mut key = hmac::Key::new(hmac::HMAC_SHA256, &k0);
            for step in &derivation {
                let tag = hmac::sign(&key, step);
                key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
            }
            hmac::sign(&key, &message).as_ref().to_vec()
        }))
    }

    fn sign(
        &mut self,
        handle: Resource<CredentialHandle>,
        field: String,
        algorithm: SignatureAlgorithm,
        message: Vec<u8>,
    ) -> WtResult<Result<Vec<u8>, WitError>> {
        self.check_handle(&handle)?;
        self.note_keyed(&field);
        Ok(self
            .field(&field)
            .and_then(|secret| sign_with(&self.cred.keys, &field, secret, algorithm, &message, &self.rng)))
    }

    fn verify(
        &mut self,
        algorithm: SignatureAlgorithm,
        jwk: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> WtResult<Result<bool, WitError>> {
        Ok(verify_jwk(algorithm, &jwk, &message, &signature))
    }
}

impl secrets::Host for State {
    fn reveal(&mut self, handle: Resource<CredentialHandle>, field: String) -> WtResult<Result<String, WitError>> {
        self.check_handle(&handle)?;
        // Load-time checks refuse ungranted plugins that import `secrets`;
        // this is the second lock on the same door.
        if !self.reveal_granted {
            return Ok(Err(WitError::Denied(format!("plugin `{}` is not granted access to raw secrets", self.plugin))));
        }
        Ok(self.field(&field).map(|s| s.expose().to_string()))
    }
}

impl cache::Host for State {
    fn get(&mut self, handle: Resource<CredentialHandle>, key: String) -> WtResult<Option<String>> {
        self.check_handle(&handle)?;
        let k = (self.plugin.clone(), self.cred.name.clone(), self.cred.version, key);
        Ok(self.cache.get(&k, self.now.seconds))
    }

    fn set(
        &mut self,
        handle: Resource<CredentialHandle>,
        key: String,
        value: String,
        expires: Datetime,
    ) -> WtResult<()> {
        self.check_handle(&handle)?;
        if key.len() > 512 || value.len() > 16 * 1024 {
            // Oversized entries are dropped rather than trapping: caching is
            // an optimisation and the call can go on without it.
            return Ok(());
        }
        let k = (self.plugin.clone(), self.cred.name.clone(), self.cred.version, key);
        self.cache.set(k, value, expires.seconds, self.now.seconds);
        Ok(())
    }
}

impl log::Host for State {
    fn log(&mut self, level: Level, message: String) -> WtResult<()> {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return Ok(());
        }
        let msg = sanitize_for_log(&message, 1024);
        let plugin = &*self.plugin;
        let credential = &*self.cred.name;
        match level {
            Level::Trace => tracing::trace!(target: "latchkey::plugin", plugin, credential, "{msg}"),
            Level::Debug => tracing::debug!(target: "latchkey::plugin", plugin, credential, "{msg}"),
            Level::Info => tracing::info!(target: "latchkey::plugin", plugin, credential, "{msg}"),
            Level::Warn => tracing::warn!(target: "latchkey::plugin", plugin, credential, "{msg}"),
            Level::Error => tracing::error!(target: "latchkey::plugin", plugin, credential, "{msg}"),
        }
        Ok(())
    }
}

impl random::Host for State {
    fn bytes(&mut self, len: u32) -> WtResult<Vec<u8>> {
        let mut buf = vec![0u8; len.min(1024) as usize];
        self.rng.fill(&mut buf).map_err(|_| wasmtime::format_err!("the system random number generator failed"))?;
        Ok(buf)
    }
}
