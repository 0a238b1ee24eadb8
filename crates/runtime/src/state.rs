//! Per-call store data and the host side of the plugin imports.
//!
//! Every call gets a fresh [`State`]: one credential, one clock value, empty
//! tables. Host functions return the WIT `error` variant for anything a plugin
//! may legitimately get wrong (unknown field, key of the wrong type); an `Err`
//! from them is a trap and is reserved for broken host invariants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ring::{digest, hmac, rand::SecureRandom};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result as WtResult, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use zeroize::Zeroizing;

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
/// Parsed private keys are cached here, per field and algorithm, for as
/// long as this value lives (the broker makes one per call); what outlives
/// a call is in [`Kept`].
pub struct CallCredential {
    /// The credential's name.
    pub name: String,
    /// Its version; cache entries are scoped to it.
    pub version: u64,
    /// Non-secret configuration.
    pub config: Vec<(String, String)>,
    secrets: BTreeMap<String, Secret>,
    pub(crate) keys: KeyCache,
    /// What the plugin cache files this credential's entries under, unique
    /// to one credential and version; `None` turns the cache off.
    pub(crate) cache_scope: Option<Arc<str>>,
    /// What calls with this credential version keep between them.
    kept: Arc<Kept>,
}

/// What the calls with one credential version keep between them, none of
/// it a secret value: the key of its output template, and the keys its
/// `crypto.hmac-sha256` derivation chains lead to (SigV4's date, region and
/// service steps; secret-derived, their bytes zeroed on drop). The caller
/// shares one `Kept` between the calls of one version (the broker keeps it
/// with the cached vault record, so any change to the credential starts
/// afresh) and opens the secrets for each call.
#[derive(Default)]
pub struct Kept {
    /// The output-template key for one plugin (that plugin's digest, the
    /// key): an HMAC over the config and secrets, under the runtime's salt.
    pub(crate) template_key: std::sync::OnceLock<(String, [u8; 32])>,
    derived: std::sync::Mutex<Vec<DerivedKey>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").finish_non_exhaustive()
    }
}

/// A kept derived key: what it was derived from, and its bytes.
type DerivedKey = (Vec<u8>, Zeroizing<[u8; 32]>);

/// Derived keys one credential version keeps at most (a few per day: one
/// per region and service it signs for); when full, it starts again.
const MAX_DERIVED: usize = 32;

impl Kept {
    /// The key `derivation` leads to from `secret` with `key_prefix`:
    /// HMAC-SHA256 of each step under the key so far. Each chain is
    /// computed once per credential version and kept (its bytes zeroed on
    /// drop), so a SigV4 call sets up one key, not five.
    fn derived_key(&self, field: &str, secret: &Secret, key_prefix: &[u8], derivation: &[Vec<u8>]) -> hmac::Key {
        let base = || {
            let mut k0 = Zeroizing::new(key_prefix.to_vec());
            k0.extend_from_slice(secret.expose().as_bytes());
            hmac::Key::new(hmac::HMAC_SHA256, &k0)
        };
        if derivation.is_empty() {
            return base();
        }
        // What the key was derived from, unambiguously: every part with its length.
        let mut id = Vec::with_capacity(field.len() + key_prefix.len() + 64);
        for part in [field.as_bytes(), key_prefix].into_iter().chain(derivation.iter().map(Vec::as_slice)) {
            id.extend_from_slice(&(part.len() as u32).to_le_bytes());
            id.extend_from_slice(part);
        }
        let mut kept = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, bytes)) = kept.iter().find(|(i, _)| *i == id) {
            return hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref());
        }
        let mut key = base();
        let mut bytes = Zeroizing::new([0u8; 32]);
        for step in derivation {
            bytes.copy_from_slice(hmac::sign(&key, step).as_ref());
            key = hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref());
        }
        if kept.len() >= MAX_DERIVED {
            kept.clear();
        }
        kept.push((id, bytes));
        key
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
        CallCredential {
            name: name.into(),
            version,
            config,
            secrets,
            keys: KeyCache::default(),
            cache_scope: None,
            kept: Arc::default(),
        }
    }

    /// Let the plugin cache keep entries for this credential under `scope`,
    /// which must name this credential and version and nothing else (the
    /// vault row's id and version, say). Without one, the cache is off.
    pub fn with_cache_scope(mut self, scope: impl Into<Arc<str>>) -> CallCredential {
        self.cache_scope = Some(scope.into());
        self
    }

    /// Share `kept` with the other calls of this credential version (see
    /// [`Kept`]); it must be kept for this version and nothing else.
    pub fn with_kept(mut self, kept: Arc<Kept>) -> CallCredential {
        self.kept = kept;
        self
    }

    /// What this credential's calls keep between them.
    pub fn kept(&self) -> &Arc<Kept> {
        &self.kept
    }

    /// A secret field's value.
    pub fn secret(&self, field: &str) -> Option<&Secret> {
        self.secrets.get(field)
    }

    /// Every secret field's value, by name.
    pub fn secrets(&self) -> &BTreeMap<String, Secret> {
        &self.secrets
    }

    /// The secret field names, sorted.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

/// Results a plugin asked the host to keep between calls. Values are
/// secrets (minted tokens).
///
/// Entries live on one shelf per plugin and, on it, in one bin per
/// credential scope ([`CallCredential::cache_scope`]: the vault row's
/// identity and version, so two organisations' credentials of the same name
/// never share a bin, and a credential deleted and created again starts
/// empty). Each bin and each shelf has a quota, so a plugin that fills its
/// own shelf evicts only its own entries, and a credential that fills its bin
/// evicts only its own.
#[derive(Default)]
pub struct PluginCache {
    shelves: std::sync::Mutex<HashMap<Arc<str>, Shelf>>,
}

/// One plugin's entries, by credential scope and then by the plugin's key.
struct Shelf {
    bins: HashMap<Arc<str>, HashMap<String, Entry>>,
    entries: usize,
    bytes: usize,
    /// No entry expires before this, so a prune before then finds nothing.
    soonest: i64,
}

impl Default for Shelf {
    fn default() -> Shelf {
        Shelf { bins: HashMap::new(), entries: 0, bytes: 0, soonest: i64::MAX }
    }
}

struct Entry {
    value: Secret,
    expires: i64,
}

impl Entry {
    fn size(key: &str, value: &str) -> usize {
        key.len() + value.len()
    }
}

/// Entries one credential may keep, per plugin.
pub const CACHE_PER_CREDENTIAL: usize = 64;
/// Entries one plugin may keep, over all credentials.
pub const CACHE_PER_PLUGIN: usize = 4096;
/// Bytes of keys and values one plugin may keep, over all credentials.
pub const CACHE_PLUGIN_BYTES: usize = 8 << 20;
/// The largest key and value a plugin may cache; larger ones are dropped.
const CACHE_MAX_KEY: usize = 512;
const CACHE_MAX_VALUE: usize = 16 * 1024;
/// The longest a plugin may cache a value.
const CACHE_MAX_SECONDS: i64 = 86_400;
/// Secret field names are short; refuse absurd ones before any lookup.
const MAX_FIELD_NAME: usize = 256;

impl Shelf {
    /// Remove `key` from bin `scope`, keeping the totals right.
    fn remove(&mut self, scope: &str, key: &str) {
        let Some(bin) = self.bins.get_mut(scope) else { return };
        if let Some(e) = bin.remove(key) {
            self.entries -= 1;
            self.bytes -= Entry::size(key, e.value.expose());
        }
        if bin.is_empty() {
            self.bins.remove(scope);
        }
    }

    /// Drop every expired entry of the shelf.
    fn prune(&mut self, now: i64) {
        if now < self.soonest {
            return;
        }
        let (mut entries, mut bytes, mut soonest) = (0, 0, i64::MAX);
        for bin in self.bins.values_mut() {
            bin.retain(|_, e| e.expires > now);
            for (k, e) in bin.iter() {
                bytes += Entry::size(k, e.value.expose());
                soonest = soonest.min(e.expires);
            }
            entries += bin.len();
        }
        self.bins.retain(|_, bin| !bin.is_empty());
        (self.entries, self.bytes, self.soonest) = (entries, bytes, soonest);
    }

    /// The key in bin `scope` that expires first (ties: the smallest key, so
    /// eviction does not depend on hash order).
    fn first_to_expire(&self, scope: &str) -> Option<String> {
        let bin = self.bins.get(scope)?;
        bin.iter().min_by(|a, b| (a.1.expires, a.0).cmp(&(b.1.expires, b.0))).map(|(k, _)| k.clone())
    }

    /// Make room for an entry of `size` bytes in bin `scope`: first in the
    /// bin's own quota, then in the shelf's, evicting expired entries, then
    /// the bin's own, then (only when the bin is empty) from the fullest bin.
    fn make_room(&mut self, scope: &str, size: usize, now: i64) {
        let bin_len = self.bins.get(scope).map_or(0, HashMap::len);
        if bin_len >= CACHE_PER_CREDENTIAL {
            self.prune(now);
        }
        while self.bins.get(scope).map_or(0, HashMap::len) >= CACHE_PER_CREDENTIAL {
            let Some(k) = self.first_to_expire(scope) else { break };
            self.remove(scope, &k);
        }
        let over = |s: &Shelf| s.entries >= CACHE_PER_PLUGIN || s.bytes + size > CACHE_PLUGIN_BYTES;
        if over(self) {
            self.prune(now);
        }
        while over(self) {
            let victim = if self.bins.contains_key(scope) {
                Arc::<str>::from(scope)
            } else {
                match self.bins.iter().max_by_key(|(s, bin)| (bin.len(), std::cmp::Reverse(Arc::clone(s)))) {
                    Some((s, _)) => s.clone(),
                    None => break,
                }
            };
            let Some(k) = self.first_to_expire(&victim) else { break };
            self.remove(&victim, &k);
        }
    }
}

impl PluginCache {
    fn get(&self, plugin: &str, scope: &str, key: &str, now: i64) -> Option<String> {
        let shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        let entry = shelves.get(plugin)?.bins.get(scope)?.get(key)?;
        (entry.expires > now).then(|| entry.value.expose().to_string())
    }

    fn set(&self, plugin: &Arc<str>, scope: &Arc<str>, key: String, value: String, expires: i64, now: i64) {
        if key.len() > CACHE_MAX_KEY || value.len() > CACHE_MAX_VALUE || expires <= now {
            // Caching is an optimisation: the call goes on without it.
            return;
        }
        let mut shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        let shelf = shelves.entry(plugin.clone()).or_default();
        shelf.remove(scope, &key);
        let size = Entry::size(&key, &value);
        shelf.make_room(scope, size, now);
        let entry = Entry { value: Secret::new(value), expires: expires.min(now + CACHE_MAX_SECONDS) };
        shelf.soonest = shelf.soonest.min(entry.expires);
        shelf.bins.entry(scope.clone()).or_default().insert(key, entry);
        shelf.entries += 1;
        shelf.bytes += size;
    }

    /// How many entries `plugin` keeps, and for `scope` among them.
    #[cfg(test)]
    fn count(&self, plugin: &str, scope: &str) -> (usize, usize) {
        let shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        shelves.get(plugin).map_or((0, 0), |s| (s.entries, s.bins.get(scope).map_or(0, HashMap::len)))
    }
}

/// How many times one call may use each host import. Host functions run
/// outside the plugin's epoch deadline and fuel, so the time budget alone
/// cannot bound them: an RSA signature costs about a millisecond of host
/// time. A call over a compute limit traps (`plugin_failed`, naming the
/// limit); log lines and cache use over theirs are dropped, as those imports
/// are best-effort.
pub mod limits {
    /// `crypto.sign` calls.
    pub const SIGN: u32 = 16;
    /// `crypto.verify` calls.
    pub const VERIFY: u32 = 64;
    /// `crypto.hmac-sha256` calls.
    pub const HMAC: u32 = 256;
    /// `crypto.sha256` and `crypto.sha256-parts` calls.
    pub const DIGEST: u32 = 1024;
    /// Bytes from `random.bytes`, over all its calls.
    pub const RANDOM_BYTES: u32 = 16 * 1024;
    /// Bytes hashed, MACed, signed or verified, over all `crypto` calls.
    pub const CRYPTO_BYTES: u32 = 32 << 20;
    /// Derivation steps of one `crypto.hmac-sha256` call (SigV4 uses four).
    pub const DERIVATION_STEPS: usize = 16;
    /// `log.log` lines written; the rest are dropped.
    pub const LOG_LINES: u32 = 32;
    /// `cache.get` lookups answered; the rest find nothing.
    pub const CACHE_READS: u32 = 256;
    /// `cache.set` writes kept; the rest are dropped.
    pub const CACHE_WRITES: u32 = 16;
}

/// What one call has used of [`limits`].
#[derive(Default)]
pub(crate) struct Usage {
    sign: u32,
    verify: u32,
    hmac: u32,
    digest: u32,
    random_bytes: u32,
    crypto_bytes: u32,
    log_lines: u32,
    cache_reads: u32,
    cache_writes: u32,
}

/// The trap of a call that went over a per-call import limit.
#[derive(Debug)]
pub(crate) struct ImportLimit {
    import: &'static str,
    max: u32,
    unit: &'static str,
}

impl std::fmt::Display for ImportLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exceeded the per-call limit of {} {} on `{}`", self.max, self.unit, self.import)
    }
}

impl std::error::Error for ImportLimit {}

/// Count `n` more uses of `import` against `max`; an `Err` traps the call.
fn charge(used: &mut u32, n: u32, max: u32, import: &'static str, unit: &'static str) -> WtResult<()> {
    *used = used.saturating_add(n);
    if *used > max {
        return Err(wasmtime::Error::new(ImportLimit { import, max, unit }));
    }
    Ok(())
}

/// Count one more use of a best-effort import; whether it may still be served.
fn within(used: &mut u32, max: u32) -> bool {
    *used = used.saturating_add(1);
    *used <= max
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
    /// What this call has used of the per-call import limits.
    pub(crate) usage: Usage,
    /// When the call's time budget ends, host time included.
    pub(crate) deadline: std::time::Instant,
    /// Secret fields this call used as a key (`crypto.hmac-sha256`,
    /// `crypto.sign`): host-only for this call, whatever was declared.
    pub(crate) keyed: Vec<String>,
    /// Secret fields this call hashed (`crypto.sha256-parts`).
    pub(crate) digested: Vec<String>,
}

impl State {
    /// Start a `crypto` import over `bytes` of input: refused once the call
    /// is past its deadline (host time counts, though the epoch deadline
    /// fires only in Wasm) or over its byte budget.
    fn enter_crypto(&mut self, bytes: usize) -> WtResult<()> {
        if std::time::Instant::now() >= self.deadline {
            return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
        }
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        charge(&mut self.usage.crypto_bytes, bytes, limits::CRYPTO_BYTES, "crypto", "bytes of input")
    }

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
    /// `base64` parts). Stops once the result is longer than `max` bytes, so
    /// a plugin naming one secret a million times costs no more than `max`.
    pub(crate) fn resolve_parts(&self, parts: &[Part], max: usize) -> Result<Zeroizing<Vec<u8>>, WitError> {
        let mut out = Zeroizing::new(Vec::new());
        for p in parts {
            if out.len() > max {
                break;
            }
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Secret(f) => out.extend_from_slice(self.field(f)?.expose().as_bytes()),
                Part::Base64(segments) => {
                    let mut inner = Zeroizing::new(Vec::new());
                    for seg in segments {
                        if inner.len() > max {
                            break;
                        }
                        match seg {
                            Segment::Text(t) => inner.extend_from_slice(t.as_bytes()),
                            Segment::Secret(f) => inner.extend_from_slice(self.field(f)?.expose().as_bytes()),
                        }
                    }
                    use base64::Engine as _;
                    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&inner[..]));
                    out.extend_from_slice(encoded.as_bytes());
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
        charge(&mut self.usage.digest, 1, limits::DIGEST, "crypto.sha256", "digests")?;
        self.enter_crypto(data.len())?;
        Ok(digest::digest(&digest::SHA256, &data).as_ref().to_vec())
    }

    fn sha256_parts(
        &mut self,
        handle: Resource<CredentialHandle>,
        parts: Vec<Part>,
    ) -> WtResult<Result<Vec<u8>, WitError>> {
        self.check_handle(&handle)?;
        charge(&mut self.usage.digest, 1, limits::DIGEST, "crypto.sha256-parts", "digests")?;
        self.enter_crypto(0)?;
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
        let remaining = limits::CRYPTO_BYTES.saturating_sub(self.usage.crypto_bytes) as usize;
        let data = match self.resolve_parts(&parts, remaining) {
            Ok(data) => data,
            Err(e) => return Ok(Err(e)),
        };
        self.enter_crypto(data.len())?;
        Ok(Ok(digest::digest(&digest::SHA256, &data).as_ref().to_vec()))
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
        charge(&mut self.usage.hmac, 1, limits::HMAC, "crypto.hmac-sha256", "MACs")?;
        self.enter_crypto(message.len() + derivation.iter().map(Vec::len).sum::<usize>())?;
        if derivation.len() > limits::DERIVATION_STEPS {
            return Ok(Err(WitError::Denied(format!(
                "at most {} derivation steps per HMAC, not {}",
                limits::DERIVATION_STEPS,
                derivation.len()
            ))));
        }
        self.note_keyed(&field);
        let key_prefix = Zeroizing::new(key_prefix);
        Ok(self.field(&field).map(|secret| {
            let key = self.cred.kept.derived_key(&field, secret, &key_prefix, &derivation);
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
        charge(&mut self.usage.sign, 1, limits::SIGN, "crypto.sign", "signatures")?;
        self.enter_crypto(message.len())?;
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
        charge(&mut self.usage.verify, 1, limits::VERIFY, "crypto.verify", "verifications")?;
        self.enter_crypto(message.len() + signature.len() + jwk.len())?;
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
        let Some(scope) = &self.cred.cache_scope else { return Ok(None) };
        if !within(&mut self.usage.cache_reads, limits::CACHE_READS) {
            return Ok(None);
        }
        Ok(self.cache.get(&self.plugin, scope, &key, self.now.seconds))
    }

    fn set(
        &mut self,
        handle: Resource<CredentialHandle>,
        key: String,
        value: String,
        expires: Datetime,
    ) -> WtResult<()> {
        self.check_handle(&handle)?;
        // A credential without a scope (one given on the command line, say)
        // is never cached: nothing would tell its versions apart.
        let Some(scope) = &self.cred.cache_scope else { return Ok(()) };
        if within(&mut self.usage.cache_writes, limits::CACHE_WRITES) {
            self.cache.set(&self.plugin, scope, key, value, expires.seconds, self.now.seconds);
        }
        Ok(())
    }
}

impl log::Host for State {
    fn log(&mut self, level: Level, message: String) -> WtResult<()> {
        if !within(&mut self.usage.log_lines, limits::LOG_LINES) {
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
        charge(&mut self.usage.random_bytes, len.min(1024), limits::RANDOM_BYTES, "random.bytes", "bytes")?;
        let mut buf = vec![0u8; len.min(1024) as usize];
        self.rng.fill(&mut buf).map_err(|_| wasmtime::format_err!("the system random number generator failed"))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Fill `scope` of `plugin` with `n` entries valid for an hour.
    fn fill(cache: &PluginCache, plugin: &str, scope: &str, n: usize) {
        for i in 0..n {
            cache.set(&arc(plugin), &arc(scope), format!("k{i}"), format!("v{i}"), NOW + 3600, NOW);
        }
    }

    #[test]
    fn entries_are_kept_per_plugin_and_scope() {
        let cache = PluginCache::default();
        cache.set(&arc("jwt"), &arc("org-a/1"), "token".into(), "a".into(), NOW + 60, NOW);
        cache.set(&arc("jwt"), &arc("org-b/1"), "token".into(), "b".into(), NOW + 60, NOW);
        cache.set(&arc("other"), &arc("org-a/1"), "token".into(), "o".into(), NOW + 60, NOW);
        assert_eq!(cache.get("jwt", "org-a/1", "token", NOW).as_deref(), Some("a"));
        assert_eq!(cache.get("jwt", "org-b/1", "token", NOW).as_deref(), Some("b"));
        assert_eq!(cache.get("other", "org-a/1", "token", NOW).as_deref(), Some("o"));
        assert_eq!(cache.get("jwt", "org-a/2", "token", NOW), None, "another version sees nothing");
        assert_eq!(cache.get("jwt", "org-a/1", "token", NOW + 60), None, "expired");
    }

    #[test]
    fn a_plugin_that_fills_its_shelf_evicts_only_its_own_entries() {
        let cache = PluginCache::default();
        cache.set(&arc("jwt"), &arc("victim"), "token".into(), "kept".into(), NOW + 3600, NOW);
        // Far more than a shelf holds, over many credentials.
        for c in 0..(CACHE_PER_PLUGIN * 2 / CACHE_PER_CREDENTIAL) {
            fill(&cache, "greedy", &format!("c{c}"), CACHE_PER_CREDENTIAL);
        }
        assert_eq!(cache.count("greedy", "c0").0, CACHE_PER_PLUGIN, "the greedy plugin is held to its quota");
        assert_eq!(cache.get("jwt", "victim", "token", NOW).as_deref(), Some("kept"));
    }

    #[test]
    fn a_credential_that_fills_its_bin_evicts_only_its_own_entries() {
        let cache = PluginCache::default();
        cache.set(&arc("jwt"), &arc("victim"), "token".into(), "kept".into(), NOW + 3600, NOW);
        fill(&cache, "jwt", "greedy", CACHE_PER_CREDENTIAL * 3);
        assert_eq!(cache.count("jwt", "greedy"), (CACHE_PER_CREDENTIAL + 1, CACHE_PER_CREDENTIAL));
        assert_eq!(cache.get("jwt", "victim", "token", NOW).as_deref(), Some("kept"));
        // The newest entries stay; the first to expire (ties: smallest key) went.
        let last = CACHE_PER_CREDENTIAL * 3 - 1;
        assert_eq!(cache.get("jwt", "greedy", &format!("k{last}"), NOW), Some(format!("v{last}")));
    }

    #[test]
    fn a_full_shelf_evicts_expired_entries_first_then_the_writer_s_own() {
        let cache = PluginCache::default();
        let bins = CACHE_PER_PLUGIN / CACHE_PER_CREDENTIAL;
        for c in 0..bins {
            fill(&cache, "jwt", &format!("c{c}"), CACHE_PER_CREDENTIAL);
        }
        assert_eq!(cache.count("jwt", "c0").0, CACHE_PER_PLUGIN);
        // An existing bin making room loses its own entry, nobody else's.
        cache.set(&arc("jwt"), &arc("c0"), "new".into(), "n".into(), NOW + 3600, NOW);
        assert_eq!(cache.count("jwt", "c0"), (CACHE_PER_PLUGIN, CACHE_PER_CREDENTIAL));
        assert_eq!(cache.count("jwt", "c1").1, CACHE_PER_CREDENTIAL);
        // A newcomer takes one entry from the fullest bin.
        cache.set(&arc("jwt"), &arc("newcomer"), "t".into(), "n".into(), NOW + 3600, NOW);
        assert_eq!(cache.count("jwt", "newcomer"), (CACHE_PER_PLUGIN, 1));
        // Once time has passed, expired entries make room before live ones go.
        let later = NOW + 7200;
        cache.set(&arc("jwt"), &arc("late"), "t".into(), "n".into(), later + 60, later);
        assert_eq!(cache.count("jwt", "late"), (1, 1));
    }

    #[test]
    fn the_shelf_is_held_to_its_byte_quota() {
        let cache = PluginCache::default();
        let big = "x".repeat(CACHE_MAX_VALUE);
        let per_bin = CACHE_PER_CREDENTIAL.min(CACHE_PLUGIN_BYTES / CACHE_MAX_VALUE);
        for c in 0..(2 * CACHE_PLUGIN_BYTES / CACHE_MAX_VALUE / per_bin + 1) {
            for i in 0..per_bin {
                cache.set(&arc("jwt"), &arc(&format!("c{c}")), format!("k{i}"), big.clone(), NOW + 3600, NOW);
            }
        }
        let shelves = cache.shelves.lock().unwrap();
        let shelf = &shelves["jwt"];
        assert!(shelf.bytes <= CACHE_PLUGIN_BYTES, "{} bytes kept", shelf.bytes);
        let counted: usize =
            shelf.bins.values().flat_map(|b| b.iter()).map(|(k, e)| Entry::size(k, e.value.expose())).sum();
        assert_eq!(counted, shelf.bytes, "the running total matches the entries");
    }

    #[test]
    fn oversized_or_already_expired_entries_are_not_kept() {
        let cache = PluginCache::default();
        cache.set(&arc("p"), &arc("s"), "k".repeat(CACHE_MAX_KEY + 1), "v".into(), NOW + 60, NOW);
        cache.set(&arc("p"), &arc("s"), "k".into(), "v".repeat(CACHE_MAX_VALUE + 1), NOW + 60, NOW);
        cache.set(&arc("p"), &arc("s"), "k".into(), "v".into(), NOW, NOW);
        assert_eq!(cache.count("p", "s"), (0, 0));
        // A lifetime over a day is cut to a day.
        cache.set(&arc("p"), &arc("s"), "k".into(), "v".into(), i64::MAX, NOW);
        assert!(cache.get("p", "s", "k", NOW + CACHE_MAX_SECONDS - 1).is_some());
        assert!(cache.get("p", "s", "k", NOW + CACHE_MAX_SECONDS).is_none());
    }

    #[test]
    fn compute_imports_trap_past_their_limit_and_best_effort_ones_stop_serving() {
        let mut used = 0;
        for _ in 0..limits::SIGN {
            charge(&mut used, 1, limits::SIGN, "crypto.sign", "signatures").unwrap();
        }
        let err = charge(&mut used, 1, limits::SIGN, "crypto.sign", "signatures").unwrap_err();
        assert_eq!(err.to_string(), "exceeded the per-call limit of 16 signatures on `crypto.sign`");
        let mut reads = 0;
        assert!((0..limits::CACHE_READS).all(|_| within(&mut reads, limits::CACHE_READS)));
        assert!(!within(&mut reads, limits::CACHE_READS));
        let mut saturated = u32::MAX;
        assert!(charge(&mut saturated, 1, u32::MAX - 1, "x", "y").is_err(), "no wrap-around");
    }

    /// A derivation chain kept by the credential gives the key the chain
    /// computes afresh; another chain (another date) gets its own key.
    #[test]
    fn derived_keys_match_the_chain_they_stand_for() {
        let secret = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let cred = CallCredential::new("c", 1, vec![], [("secret_access_key".to_string(), secret.clone())].into());
        let chain = |date: &str| -> Vec<Vec<u8>> {
            [date, "us-east-1", "iam", "aws4_request"].iter().map(|s| s.as_bytes().to_vec()).collect()
        };
        let fresh = |derivation: &[Vec<u8>]| {
            let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{}", secret.expose()).as_bytes());
            for step in derivation {
                key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&key, step).as_ref());
            }
            hmac::sign(&key, b"message").as_ref().to_vec()
        };
        for date in ["20150830", "20150830", "20150831", "20150830"] {
            let key = cred.kept.derived_key("secret_access_key", &secret, b"AWS4", &chain(date));
            assert_eq!(hmac::sign(&key, b"message").as_ref(), fresh(&chain(date)).as_slice(), "{date}");
        }
        assert_eq!(cred.kept.derived.lock().unwrap().len(), 2, "one kept key per chain");
        // No derivation: the prefixed secret itself is the key.
        let plain = cred.kept.derived_key("secret_access_key", &secret, b"AWS4", &[]);
        let direct = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{}", secret.expose()).as_bytes());
        assert_eq!(hmac::sign(&plain, b"m").as_ref(), hmac::sign(&direct, b"m").as_ref());
    }
}
