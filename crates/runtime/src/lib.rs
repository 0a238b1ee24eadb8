//! The plugin runtime: one wasmtime engine, each scheme compiled once and
//! pre-instantiated, and a fresh sandboxed instance for every call.
//!
//! A call gets a new `Store` from the pooling allocator with a memory cap, a
//! stack cap and an epoch deadline. Whatever a plugin does — loop, trap,
//! allocate without bound, answer garbage — fails that one call with
//! `plugin_failed`, and the next call starts clean.

mod bindings;
pub mod crypto;
pub mod edits;
mod pool;
mod state;
mod wasi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ring::digest;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

pub use bindings::{Datetime, Exposure, FieldInfo, Request, SchemeInfo, SecretFieldInfo, SignatureAlgorithm, WitError};
/// A plugin's answer as the WIT types it crosses the boundary in, for the
/// fuzz targets (`fuzz/`) that feed [`edits::check`] directly.
#[doc(hidden)]
pub use bindings::{Edit, Part, Segment};
pub use latchkey_core::error::ErrorCode;
pub use latchkey_core::text::sanitize_for_log;
pub use pool::{CallPool, DEMOTION, Lane, PoolConfig, PoolError};
pub use state::{CallCredential, Kept, PluginCache};

use bindings::{CallContext, SchemePlugin, SchemePluginPre};
use state::{CredentialHandle, State};

use latchkey_core::secret::Secret;

/// Limits and locations for the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Wall-clock budget of one plugin call (epoch deadline).
    pub call_timeout: Duration,
    /// Linear memory cap of one call, in bytes.
    pub max_memory: usize,
    /// Wasm stack cap, in bytes.
    pub max_stack: usize,
    /// Instances that may run at once (the pool size).
    pub max_instances: u32,
    /// Largest plugin file accepted, in bytes.
    pub max_plugin_size: usize,
    /// Longest a plugin may take to compile.
    pub compile_timeout: Duration,
    /// Where compiled code is cached between runs; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Extra plugins (`*.wasm`), loaded beside the built-in ones and
    /// overriding a built-in scheme of the same name.
    pub plugin_dir: Option<PathBuf>,
    /// Schemes granted the `secrets` import (raw secret values). No built-in
    /// scheme needs it.
    pub grant_secrets: Vec<String>,
    /// The threads plugin calls run on, and each plugin's and organisation's share.
    pub pool: PoolConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            call_timeout: Duration::from_millis(100),
            max_memory: 32 << 20,
            max_stack: 512 << 10,
            max_instances: 256,
            max_plugin_size: 16 << 20,
            compile_timeout: Duration::from_secs(60),
            cache_dir: default_cache_dir(),
            plugin_dir: None,
            grant_secrets: Vec::new(),
            pool: PoolConfig::default(),
        }
    }
}

/// `$LATCHKEY_CACHE_DIR`, else `$XDG_CACHE_HOME/latchkey`, else `~/.cache/latchkey`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LATCHKEY_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("latchkey"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("latchkey"))
}

/// Built-in plugin components, compiled from `plugins/` by the build script.
/// Paths of the hostile test guests (built by the build script) and
/// [`foreach_test_guest!`], for the test suites.
#[doc(hidden)]
pub mod test_guests {
    include!(concat!(env!("OUT_DIR"), "/test_guests.rs"));
}

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
}

/// Where a plugin came from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// Shipped inside the binary.
    Builtin,
    /// Loaded from a file.
    File(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Builtin => f.write_str("builtin"),
            PluginSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A loaded, checked, pre-instantiated scheme plugin.
pub struct Plugin {
    /// What the plugin says about itself.
    pub info: SchemeInfo,
    /// Where it came from.
    pub source: PluginSource,
    /// SHA-256 of the component bytes, lower hex.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// Whether it imports raw secret access (and was granted it).
    pub reads_secrets: bool,
    name: Arc<str>,
    pre: SchemePluginPre<State>,
    /// Set when the component exports `verifier` (the `verifier-plugin` world).
    verifier: Option<bindings::verifier::VerifierPluginPre<State>>,
}

impl Plugin {
    /// Whether the component exports the `verifier` interface.
    pub fn exports_verifier(&self) -> bool {
        self.verifier.is_some()
    }

    /// The scheme's name as an `Arc` (pool shares are keyed by it).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("source", &self.source).finish()
    }
}

/// A scheme's own answer that it cannot do the job (the WIT `error` variant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// A required secret field is missing.
    #[error("missing secret field `{0}`")]
    MissingSecret(String),
    /// The configuration is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A secret value is unusable.
    #[error("invalid secret: {0}")]
    InvalidSecret(String),
    /// The request cannot be handled.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A presented token was refused.
    #[error("token rejected: {0}")]
    TokenRejected(String),
    /// The host refused a host call.
    #[error("denied by host: {0}")]
    Denied(String),
    /// Anything else.
    #[error("internal plugin error{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Internal(Option<String>),
}

impl SchemeError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SchemeError::MissingSecret(_) => ErrorCode::ProviderKeyMissing,
            SchemeError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            SchemeError::InvalidSecret(_) => ErrorCode::InvalidSecret,
            SchemeError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            SchemeError::TokenRejected(_) => ErrorCode::TokenRejected,
            SchemeError::Denied(_) | SchemeError::Internal(_) => ErrorCode::PluginFailed,
        }
    }
}

impl From<WitError> for SchemeError {
    fn from(e: WitError) -> Self {
        // Texts from a plugin are escaped and capped before they go anywhere.
        let s = |m: String| sanitize_for_log(&m, 500);
        match e {
            WitError::MissingSecret(m) => SchemeError::MissingSecret(s(m)),
            WitError::InvalidConfig(m) => SchemeError::InvalidConfig(s(m)),
            WitError::InvalidSecret(m) => SchemeError::InvalidSecret(s(m)),
            WitError::InvalidRequest(m) => SchemeError::InvalidRequest(s(m)),
            WitError::TokenRejected(m) => SchemeError::TokenRejected(s(m)),
            WitError::Denied(m) => SchemeError::Denied(s(m)),
            WitError::Internal(m) => SchemeError::Internal(m.map(s)),
        }
    }
}

/// Errors of the plugin runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// No plugin implements the scheme.
    #[error("unknown scheme `{name}` (available: {})", available.join(", "))]
    UnknownScheme {
        /// The name asked for.
        name: String,
        /// The schemes that exist.
        available: Vec<String>,
    },
    /// A plugin could not be loaded (invalid component, wrong world, an
    /// import that is not granted, too large, too slow to compile).
    #[error("plugin {plugin} cannot be loaded: {reason}")]
    Load {
        /// The plugin (scheme name or file).
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A call failed inside the sandbox: trap, timeout, memory cap, or an
    /// answer the host refused.
    #[error("plugin `{plugin}` failed: {reason}")]
    Failed {
        /// The scheme.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The scheme answered with an error.
    #[error("{plugin}: {error}")]
    Scheme {
        /// The scheme.
        plugin: String,
        /// Its answer.
        error: SchemeError,
    },
}

impl PluginError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            PluginError::UnknownScheme { .. } => ErrorCode::UnknownScheme,
            PluginError::Load { .. } => ErrorCode::PluginLoadFailed,
            PluginError::Failed { .. } => ErrorCode::PluginFailed,
            PluginError::Scheme { error, .. } => error.code(),
        }
    }
}

/// The declaration's spelling of an exposure (`host-only`, `wire`,
/// `identifier`), as `plugin inspect` and the admin API show it.
pub fn exposure_name(e: Exposure) -> &'static str {
    match e {
        Exposure::HostOnly => "host-only",
        Exposure::Wire => "wire",
        Exposure::Identifier => "identifier",
    }
}

/// The epoch tick. Deadlines are whole ticks, so a call gets its budget
/// plus at most one tick.
const TICK: Duration = Duration::from_millis(1);

/// Give `store` `budget` from now: its epoch deadline (whole ticks, so at
/// most one tick more) and the wall-clock deadline its host imports check.
fn arm_deadline(store: &mut Store<State>, budget: Duration) {
    store.set_epoch_deadline(budget.as_millis().div_ceil(TICK.as_millis()) as u64 + 1);
    store.data_mut().deadline = std::time::Instant::now() + budget;
}

/// A call on the inline lane ([`Lane::Inline`]) that ran out of its short
/// budget: nothing of it is kept; run it again on a pool thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overran;

/// Increments the engine's epoch until dropped.
struct Ticker(Arc<AtomicBool>);

impl Ticker {
    fn start(engine: &Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, engine) = (stop.clone(), engine.clone());
        std::thread::Builder::new()
            .name("latchkey-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Ticker(stop)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A built-in scheme: name, component bytes, and the plugin once loaded.
type Builtin = (&'static str, &'static [u8], OnceLock<Result<Arc<Plugin>, String>>);

/// The runtime: engine, linker, loaded plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    config: RuntimeConfig,
    builtins: Vec<Builtin>,
    external: HashMap<String, Arc<Plugin>>,
    cache: Arc<PluginCache>,
    rng: Arc<ring::rand::SystemRandom>,
    pool: CallPool,
    templates: Templates,
    _ticker: Ticker,
}

/// Answers of request-independent schemes, reused per credential state
/// instead of instantiating the plugin for every call. An entry is the
/// plugin's raw answer — edits whose secrets are references by field name,
/// never values — and the fields the call touched, so a hit is checked and
/// spliced exactly as a fresh answer is. The key is an HMAC, under a salt
/// of this process, of the plugin's digest, the config and the secret
/// values: any change to the credential (or another credential) misses.
/// Plugins granted raw secrets are never cached (their text could hold one).
struct Templates {
    salt: ring::hmac::Key,
    /// Read on every call of a request-independent scheme, written once per credential state.
    map: std::sync::RwLock<HashMap<[u8; 32], Arc<Template>>>,
}

struct Template {
    edits: Vec<Edit>,
    touched: Touched,
}

/// Templates kept at most; when full, the map starts again.
const MAX_TEMPLATES: usize = 10_000;

impl Runtime {
    /// Create the engine and load the plugin folder. Built-in plugins are
    /// compiled on first use (and cached on disk across runs).
    pub fn new(config: RuntimeConfig) -> Result<Runtime, PluginError> {
        let setup = |e: wasmtime::Error| PluginError::Load { plugin: "runtime".into(), reason: format!("{e:#}") };
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_stack)
            .memory_reservation(config.max_memory as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0);
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .total_stacks(n)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_core_instances_per_component(16)
            .max_memory_size(config.max_memory)
            .table_elements(10_000)
            // Every call instantiates afresh; zeroing the first pages of a
            // returned slot in place is cheaper than giving them back to the
            // kernel and faulting them in again on the next call.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = &config.cache_dir {
            let mut cache_cfg = wasmtime::CacheConfig::new();
            cache_cfg.with_directory(dir.join("wasmtime"));
            // A cache that cannot be set up costs compile time, not correctness.
            match wasmtime::Cache::new(cache_cfg) {
                Ok(cache) => {
                    cfg.cache(Some(cache));
                }
                Err(e) => tracing::warn!(error = %e, "compiled-code cache disabled"),
            }
        }
        let engine = Engine::new(&cfg).map_err(setup)?;
        let mut linker = Linker::new(&engine);
        SchemePlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(setup)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(setup)?;
        let ticker = Ticker::start(&engine);
        let rng = Arc::new(ring::rand::SystemRandom::new());
        let salt = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, rng.as_ref())
            .map_err(|_| PluginError::Load { plugin: "runtime".into(), reason: "no random numbers".into() })?;
        let mut rt = Runtime {
            engine,
            linker,
            builtins: builtin::BUILTIN.iter().map(|(n, b)| (*n, *b, OnceLock::new())).collect(),
            external: HashMap::new(),
            cache: Arc::new(PluginCache::default()),
            rng,
            pool: CallPool::start(config.pool.clone()),
            templates: Templates { salt, map: Default::default() },
            _ticker: ticker,
            config,
        };
        if let Some(dir) = rt.config.plugin_dir.clone() {
            rt.load_dir(&dir)?;
        }
        Ok(rt)
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The threads plugin calls run on (see [`CallPool`]).
    pub fn pool(&self) -> &CallPool {
        &self.pool
    }

    fn load_dir(&mut self, dir: &Path) -> Result<(), PluginError> {
        let err = |reason: String| PluginError::Load { plugin: dir.display().to_string(), reason };
        let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read plugin folder: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let plugin = self.load_file(&path)?;
            let name = plugin.info.name.clone();
            if let Some(prev) = self.external.get(&name) {
                return Err(err(format!("{} and {} both implement scheme `{name}`", prev.source, plugin.source)));
            }
            if self.builtins.iter().any(|(n, ..)| *n == name) {
                tracing::info!(scheme = %name, path = %path.display(), "plugin overrides the built-in scheme");
            }
            self.external.insert(name, Arc::new(plugin));
        }
        Ok(())
    }

    /// Load and check one plugin file (as `latchkey plugin inspect` does).
    pub fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let err = |reason: String| PluginError::Load { plugin: path.display().to_string(), reason };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > self.config.max_plugin_size as u64 {
            return Err(err(format!("{} bytes is over the {} byte limit", meta.len(), self.config.max_plugin_size)));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        self.load_bytes(&bytes, PluginSource::File(path.to_path_buf()))
    }

    /// Compile (with size and time caps), check imports and exports, and
    /// describe a component.
    pub fn load_bytes(&self, bytes: &[u8], source: PluginSource) -> Result<Plugin, PluginError> {
        let label = source.to_string();
        let err = |reason: String| PluginError::Load { plugin: label.clone(), reason };
        if bytes.len() > self.config.max_plugin_size {
            return Err(err(format!("{} bytes is over the {} byte limit", bytes.len(), self.config.max_plugin_size)));
        }
        let digest = encode_hex(digest::digest(&digest::SHA256, bytes).as_ref());
        let component = self.compile(bytes.to_vec()).map_err(&err)?;

        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        // 0.1 components declared no exposure, body use or request
        // dependence, so the host cannot know what to enforce: refuse them
        // with the way out rather than guess.
        if let Some(old) =
            imports.iter().chain(&exports).find(|i| i.starts_with("latchkey:plugin/") && !i.ends_with("@0.2.0"))
        {
            return Err(err(format!(
                "is built against {}, but this broker speaks latchkey:plugin@0.2.0; rebuild it with the current \
                 SDK (scheme-info now declares each secret field's exposure, reads-body and request-independent)",
                sanitize_for_log(old, 120)
            )));
        }
        if let Some(bad) = imports.iter().find(|i| !wasi::import_allowed(i, true)) {
            return Err(err(format!("imports `{bad}`, which plugins are never granted")));
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| err(format!("cannot link: {e:#}")))?;
        // A component that also exports `verifier` can verify agent tokens;
        // one that does not is still a scheme plugin.
        let verifier = bindings::verifier::VerifierPluginPre::new(pre.clone()).ok();
        let pre = SchemePluginPre::new(pre)
            .map_err(|e| err(format!("does not export the latchkey:plugin scheme-plugin world: {e:#}")))?;

        let mut plugin = Plugin {
            info: SchemeInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                config_fields: vec![],
                secret_fields: vec![],
                writable_headers: vec![],
                open_secret_fields: None,
                reads_body: true,
                request_independent: false,
            },
            source,
            digest,
            size: bytes.len(),
            reads_secrets: imports.iter().any(|i| i.starts_with("latchkey:plugin/secrets")),
            imports,
            name: Arc::from(label.as_str()),
            pre,
            verifier,
        };
        let nobody = Arc::new(CallCredential::new("", 0, vec![], Default::default()));
        let (info, _) = self.call(&plugin, &nobody, Datetime { seconds: 0, nanoseconds: 0 }, |p, store, _| {
            p.latchkey_plugin_scheme().call_describe(store)
        })?;
        check_info(&info).map_err(&err)?;
        let granted = self.config.grant_secrets.contains(&info.name);
        if plugin.reads_secrets && !granted {
            return Err(err(format!(
                "scheme `{}` imports latchkey:plugin/secrets (raw secret values) but is not granted it; \
                 grant it with --grant-secrets {} if you trust it",
                info.name, info.name
            )));
        }
        plugin.name = Arc::from(info.name.as_str());
        plugin.info = info;
        Ok(plugin)
    }

    fn compile(&self, bytes: Vec<u8>) -> Result<Component, String> {
        let engine = self.engine.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // Compilation runs on its own thread so a pathological module can be
        // abandoned at the time cap instead of holding the caller.
        std::thread::Builder::new()
            .name("latchkey-compile".into())
            .spawn(move || {
                let _ = tx.send(Component::new(&engine, &bytes).map_err(|e| format!("{e:#}")));
            })
            .map_err(|e| format!("cannot start the compiler thread: {e}"))?;
        match rx.recv_timeout(self.config.compile_timeout) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("not a valid component: {}", sanitize_for_log(&e, 500))),
            Err(_) => Err(format!("compilation took longer than {:?}", self.config.compile_timeout)),
        }
    }

    /// The plugin for a scheme: the plugin folder's, else the built-in one.
    pub fn get(&self, scheme: &str) -> Result<Arc<Plugin>, PluginError> {
        if let Some(p) = self.external.get(scheme) {
            return Ok(p.clone());
        }
        let Some((name, bytes, cell)) = self.builtins.iter().find(|(n, ..)| *n == scheme) else {
            return Err(PluginError::UnknownScheme { name: scheme.to_string(), available: self.scheme_names() });
        };
        cell.get_or_init(|| self.load_bytes(bytes, PluginSource::Builtin).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| PluginError::Load { plugin: name.to_string(), reason })
    }

    /// The plugin that verifies agent JWTs: the one component that exports
    /// the `verifier` interface (found by that export, never by a name).
    pub fn verifier(&self) -> Result<Arc<Plugin>, PluginError> {
        let mut found: Vec<Arc<Plugin>> = Vec::new();
        for name in self.scheme_names() {
            let plugin = self.get(&name)?;
            if plugin.exports_verifier() {
                found.push(plugin);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(PluginError::Failed {
                plugin: "verifier".into(),
                reason: "no loaded plugin exports the latchkey:plugin verifier interface".into(),
            }),
            _ => Err(PluginError::Failed {
                plugin: "verifier".into(),
                reason: format!(
                    "several plugins export the verifier interface ({}); remove all but one from the plugin folder",
                    found.iter().map(|p| p.info.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// Every scheme name, built-in or from the plugin folder, sorted.
    pub fn scheme_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.builtins.iter().map(|(n, ..)| n.to_string()).collect();
        names.extend(self.external.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Validate a credential's configuration with its scheme.
    pub fn validate_config(&self, plugin: &Plugin, config: &[(String, String)]) -> Result<(), PluginError> {
        let nobody = Arc::new(CallCredential::new("", 0, vec![], Default::default()));
        let cfg = config.to_vec();
        self.call(plugin, &nobody, Datetime { seconds: 0, nanoseconds: 0 }, move |p, store, _| {
            p.latchkey_plugin_scheme().call_validate_config(store, &cfg)
        })?
        .0
        .map_err(|e| PluginError::Scheme { plugin: plugin.info.name.clone(), error: e.into() })
    }

    /// Validate one secret value with its scheme (before it is stored).
    pub fn validate_secret(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        field: &str,
        value: &Secret,
    ) -> Result<(), PluginError> {
        let nobody = Arc::new(CallCredential::new("", 0, vec![], Default::default()));
        let cfg = config.to_vec();
        self.call(plugin, &nobody, Datetime { seconds: 0, nanoseconds: 0 }, move |p, store, _| {
            p.latchkey_plugin_scheme().call_validate_secret(store, &cfg, field, value.expose())
        })?
        .0
        .map_err(|e| PluginError::Scheme { plugin: plugin.info.name.clone(), error: e.into() })
    }

    /// Apply a scheme to a request: the checked edits, secrets spliced in.
    pub fn apply(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        request: &Request,
    ) -> Result<Vec<edits::Checked>, PluginError> {
        self.apply_call(plugin, cred, now, request).map(|a| a.edits)
    }

    /// [`Runtime::apply`], and whether the call hashed a secret field that
    /// is not an identifier (a bare hash of it must not reach an agent).
    pub fn apply_call(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        request: &Request,
    ) -> Result<Applied, PluginError> {
        match self.apply_call_in(plugin, cred, now, request, Lane::Pool) {
            Ok(applied) => applied,
            Err(Overran) => unreachable!("a call with the whole budget is never asked to run again"),
        }
    }

    /// [`Runtime::apply_call`] on `lane` ([`CallPool::run_call`]): on the
    /// inline lane the call gets that lane's short budget, and a call that
    /// runs out of it answers [`Overran`], to be run again on a pool thread.
    pub fn apply_call_in(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        request: &Request,
        lane: Lane,
    ) -> Result<Result<Applied, PluginError>, Overran> {
        let ctx = CallContext { now, config: cred.config.clone() };
        let called = self.call_in(plugin, cred, now, lane, |p, store, handle| {
            p.latchkey_plugin_scheme().call_apply(store, &ctx, handle, request)
        })?;
        Ok(called.and_then(|(answer, touched)| self.applied(plugin, cred, answer, touched)))
    }

    /// A scheme's answer as the call path takes it: the template kept for a
    /// request-independent scheme, the edits checked and spliced.
    fn applied(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        answer: Result<Vec<Edit>, bindings::latchkey::plugin::types::Error>,
        touched: Touched,
    ) -> Result<Applied, PluginError> {
        let edits = answer.map_err(|e| PluginError::Scheme { plugin: plugin.info.name.clone(), error: e.into() })?;
        if let Some(key) = self.template_key(plugin, cred) {
            let mut map = self.templates.map.write().unwrap_or_else(|e| e.into_inner());
            if map.len() >= MAX_TEMPLATES {
                map.clear();
            }
            map.insert(key, Arc::new(Template { edits: edits.clone(), touched: touched.clone() }));
        }
        finish_apply(plugin, cred, edits, &touched)
    }

    /// The answer of a request-independent scheme for this credential state,
    /// if one is held: checked and spliced as a fresh answer is, without an
    /// instance. `None`: call the plugin ([`Runtime::apply_call`]).
    pub fn apply_template(&self, plugin: &Plugin, cred: &Arc<CallCredential>) -> Option<Result<Applied, PluginError>> {
        let key = self.template_key(plugin, cred)?;
        let template = self.templates.map.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()?;
        Some(finish_apply(plugin, cred, template.edits.clone(), &template.touched))
    }

    fn template_key(&self, plugin: &Plugin, cred: &CallCredential) -> Option<[u8; 32]> {
        if !plugin.info.request_independent || plugin.reads_secrets {
            return None;
        }
        match cred.kept().template_key.get() {
            Some((digest, key)) if *digest == plugin.digest => return Some(*key),
            _ => {}
        }
        let mut ctx = ring::hmac::Context::with_key(&self.templates.salt);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(plugin.digest.as_bytes());
        for (k, v) in &cred.config {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(b"secrets");
        for name in cred.secret_names() {
            field(name.as_bytes());
            field(cred.secret(name).map(|s| s.expose().as_bytes()).unwrap_or_default());
        }
        let key: [u8; 32] = ctx.sign().as_ref().try_into().ok()?;
        let _ = cred.kept().template_key.set((plugin.digest.clone(), key));
        Some(key)
    }

    /// What a scheme signs for this request (canonical request, string to sign).
    pub fn explain(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        request: &Request,
    ) -> Result<String, PluginError> {
        let ctx = CallContext { now, config: cred.config.clone() };
        let (answer, _) = self.call(plugin, cred, now, |p, store, handle| {
            p.latchkey_plugin_scheme().call_explain(store, &ctx, handle, request)
        })?;
        answer
            .map(|t| sanitize_explain(&t))
            .map_err(|e| PluginError::Scheme { plugin: plugin.info.name.clone(), error: e.into() })
    }

    /// Verify an incoming token with a scheme's `verifier` export (the `jwt`
    /// scheme): `config` is the issuer's policy, `jwks` the key set the host
    /// fetched. Returns the claims as JSON text. Runs in a fresh instance
    /// with no credential bound, so it can sign nothing and read no secret.
    pub fn verify(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        now: Datetime,
        jwks: &str,
        token: &str,
    ) -> Result<String, PluginError> {
        let Some(pre) = &plugin.verifier else {
            return Err(PluginError::Failed {
                plugin: plugin.info.name.clone(),
                reason: "the scheme does not export the verifier interface".into(),
            });
        };
        let nobody = Arc::new(CallCredential::new("", 0, vec![], Default::default()));
        let mut store = self.store(plugin, &nobody, now, self.config.call_timeout);
        let fail = |store: &Store<State>, e: wasmtime::Error| PluginError::Failed {
            plugin: plugin.name.to_string(),
            reason: self.describe_failure(store.data(), &e),
        };
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(&store, e)),
        };
        let ctx = CallContext { now, config: config.to_vec() };
        let answer = match instance.latchkey_plugin_verifier().call_verify(&mut store, &ctx, jwks, token) {
            Ok(a) => a,
            Err(e) => return Err(fail(&store, e)),
        };
        answer.map_err(|e| PluginError::Scheme { plugin: plugin.info.name.clone(), error: e.into() })
    }

    /// A store for one call: its own limits, tables and deadline.
    fn store(&self, plugin: &Plugin, cred: &Arc<CallCredential>, now: Datetime, budget: Duration) -> Store<State> {
        let state = State {
            plugin: plugin.name.clone(),
            cred: cred.clone(),
            now,
            reveal_granted: plugin.reads_secrets,
            limits: StoreLimitsBuilder::new()
                .memory_size(self.config.max_memory)
                .table_elements(10_000)
                .instances(32)
                .tables(32)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            table: ResourceTable::new(),
            cache: self.cache.clone(),
            rng: self.rng.clone(),
            wasi: None,
            stderr: MemoryOutputPipe::new(wasi::STDERR_CAPACITY),
            usage: Default::default(),
            deadline: std::time::Instant::now() + budget,
            keyed: Vec::new(),
            digested: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        arm_deadline(&mut store, budget);
        store
    }

    /// Run `f` in a fresh instance with its own store, limits and deadline;
    /// also returns the secret fields the call used as keys.
    fn call<R>(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        f: impl FnOnce(
            &SchemePlugin,
            &mut Store<State>,
            wasmtime::component::Resource<CredentialHandle>,
        ) -> wasmtime::Result<R>,
    ) -> Result<(R, Touched), PluginError> {
        match self.call_in(plugin, cred, now, Lane::Pool, f) {
            Ok(called) => called,
            Err(Overran) => unreachable!("a call with the whole budget is never asked to run again"),
        }
    }

    /// [`Runtime::call`] with `lane`'s budget: a call on the inline lane
    /// that runs out of it answers [`Overran`] instead of failing.
    fn call_in<R>(
        &self,
        plugin: &Plugin,
        cred: &Arc<CallCredential>,
        now: Datetime,
        lane: Lane,
        f: impl FnOnce(
            &SchemePlugin,
            &mut Store<State>,
            wasmtime::component::Resource<CredentialHandle>,
        ) -> wasmtime::Result<R>,
    ) -> Result<Result<(R, Touched), PluginError>, Overran> {
        let (budget, inline) = match lane {
            Lane::Inline(budget) => (budget.min(self.config.call_timeout), true),
            Lane::Pool => (self.config.call_timeout, false),
        };
        // The epoch deadline, or a host import past the wall-clock one.
        let overran = |e: &wasmtime::Error| inline && e.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
        let mut store = self.store(plugin, cred, now, budget);
        let fail = |store: &Store<State>, e: wasmtime::Error| PluginError::Failed {
            plugin: plugin.name.to_string(),
            reason: self.describe_failure(store.data(), &e),
        };
        let handle = match store.data_mut().table.push(CredentialHandle) {
            Ok(h) => h,
            Err(e) => return Ok(Err(PluginError::Failed { plugin: plugin.name.to_string(), reason: e.to_string() })),
        };
        let instance = match plugin.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) if overran(&e) => return Err(Overran),
            Err(e) => return Ok(Err(fail(&store, e))),
        };
        match f(&instance, &mut store, handle) {
            Ok(r) => {
                let data = store.data_mut();
                Ok(Ok((
                    r,
                    Touched { keyed: std::mem::take(&mut data.keyed), digested: std::mem::take(&mut data.digested) },
                )))
            }
            Err(e) if overran(&e) => Err(Overran),
            Err(e) => {
                let err = fail(&store, e);
                tracing::warn!(plugin = %plugin.name, credential = %cred.name, error = %err, "plugin call failed");
                Ok(Err(err))
            }
        }
    }

    /// An instance kept across calls, for benchmarks and plugin tests only:
    /// production runs every call in a fresh instance.
    pub fn warm_instance(
        &self,
        plugin: &Arc<Plugin>,
        cred: &Arc<CallCredential>,
        now: Datetime,
    ) -> Result<WarmInstance<'_>, PluginError> {
        let mut store = self.store(plugin, cred, now, self.config.call_timeout);
        let fail =
            |e: wasmtime::Error| PluginError::Failed { plugin: plugin.name.to_string(), reason: format!("{e:#}") };
        let handle = store.data_mut().table.push(CredentialHandle).map_err(|e| fail(e.into()))?;
        let instance = plugin.pre.instantiate(&mut store).map_err(fail)?;
        Ok(WarmInstance { runtime: self, plugin: plugin.clone(), store, instance, handle })
    }

    fn describe_failure(&self, state: &State, e: &wasmtime::Error) -> String {
        let reason = match (e.downcast_ref::<state::ImportLimit>(), e.downcast_ref::<Trap>()) {
            // A host import refused to serve the call any more.
            (Some(limit), _) => limit.to_string(),
            (_, Some(Trap::Interrupt)) => {
                format!("exceeded its time budget of {} ms", self.config.call_timeout.as_millis())
            }
            (_, Some(Trap::StackOverflow)) => "overflowed its stack".to_string(),
            (_, Some(Trap::UnreachableCodeReached)) => "trapped: unreachable code (a panic or abort)".to_string(),
            (_, Some(trap)) => format!("trapped: {trap}"),
            (_, None) => {
                let text = format!("{e:#}");
                if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                    format!("exceeded its memory limit of {} MiB", self.config.max_memory >> 20)
                } else if text.contains("maximum concurrent") || text.contains("pooling") {
                    "no free instance slot (too many concurrent calls)".to_string()
                } else {
                    sanitize_for_log(&text, 300)
                }
            }
        };
        // What a plugin printed may contain a secret only if it could read
        // one; report it only for plugins that cannot.
        match state.stderr_excerpt() {
            Some(line) if !state.reveal_granted => format!("{reason}; it printed: {line}"),
            _ => reason,
        }
    }
}

/// What one `apply` produced.
#[derive(Debug)]
pub struct Applied {
    /// The checked edits, secrets spliced in.
    pub edits: Vec<edits::Checked>,
    /// Whether the call hashed a secret field that is not an identifier.
    pub digested: bool,
}

/// Check a plugin's answer against its declaration (tightened by the
/// fields the call used as keys) and splice the secrets in.
fn finish_apply(
    plugin: &Plugin,
    cred: &CallCredential,
    edits: Vec<Edit>,
    touched: &Touched,
) -> Result<Applied, PluginError> {
    let exposures = edits::Exposures { info: &plugin.info, keyed: &touched.keyed, granted: plugin.reads_secrets };
    let digested = touched.digested.iter().any(|f| exposures.of(f) != Exposure::Identifier);
    let edits = edits::check(edits, exposures, cred)
        .map_err(|reason| PluginError::Failed { plugin: plugin.info.name.clone(), reason })?;
    Ok(Applied { edits, digested })
}

/// The secret fields a call used as keys or hashed.
#[derive(Clone)]
struct Touched {
    keyed: Vec<String>,
    digested: Vec<String>,
}

/// One instance reused across calls (see [`Runtime::warm_instance`]).
pub struct WarmInstance<'a> {
    runtime: &'a Runtime,
    plugin: Arc<Plugin>,
    store: Store<State>,
    instance: SchemePlugin,
    handle: wasmtime::component::Resource<CredentialHandle>,
}

impl WarmInstance<'_> {
    /// `apply` on the kept instance, with the same checks as a fresh call.
    pub fn apply(&mut self, request: &Request) -> Result<Vec<edits::Checked>, PluginError> {
        arm_deadline(&mut self.store, self.runtime.config.call_timeout);
        // Each call gets its own import limits, as a fresh instance would.
        self.store.data_mut().usage = Default::default();
        let (cred, now) = (self.store.data().cred.clone(), self.store.data().now);
        let ctx = CallContext { now, config: cred.config.clone() };
        let handle = wasmtime::component::Resource::new_borrow(self.handle.rep());
        let name = self.plugin.info.name.clone();
        self.store.data_mut().keyed.clear();
        let answer = self
            .instance
            .latchkey_plugin_scheme()
            .call_apply(&mut self.store, &ctx, handle, request)
            .map_err(|e| PluginError::Failed { plugin: name.clone(), reason: format!("{e:#}") })?;
        let edits = answer.map_err(|e| PluginError::Scheme { plugin: name.clone(), error: e.into() })?;
        let keyed = std::mem::take(&mut self.store.data_mut().keyed);
        edits::check(
            edits,
            edits::Exposures { info: &self.plugin.info, keyed: &keyed, granted: self.plugin.reads_secrets },
            &cred,
        )
        .map_err(|reason| PluginError::Failed { plugin: name, reason })
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Explain text is multi-line by design; keep newlines, escape the rest.
fn sanitize_explain(t: &str) -> String {
    t.lines().map(|l| sanitize_for_log(l, 8192)).collect::<Vec<_>>().join("\n")
}

/// Refuse a `describe` answer the host cannot rely on.
fn check_info(info: &SchemeInfo) -> Result<(), String> {
    let name_ok = !info.name.is_empty()
        && info.name.len() <= 64
        && info.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && info.name.as_bytes()[0].is_ascii_lowercase();
    if !name_ok {
        return Err(format!(
            "scheme name {:?} must be 1-64 of a-z, 0-9, `-`, starting with a letter",
            sanitize_for_log(&info.name, 80)
        ));
    }
    for h in &info.writable_headers {
        if h != "*" && (!edits::is_token(h) || h.to_ascii_lowercase() != *h) {
            return Err(format!(
                "writable header {:?} must be a lower-case header name or `*`",
                sanitize_for_log(h, 80)
            ));
        }
    }
    if info.config_fields.len() + info.secret_fields.len() > 128 {
        return Err("declares more than 128 fields".into());
    }
    Ok(())
}

/// The runtime is the scheme catalogue storage validates credentials with.
impl latchkey_core::SchemeCatalogue for Runtime {
    fn fields(&self, scheme: &str) -> Result<latchkey_core::SchemeFields, latchkey_core::SchemeRefusal> {
        Ok(scheme_fields(&self.get(scheme).map_err(refusal)?.info))
    }

    fn validate_config(&self, scheme: &str, config: &[(String, String)]) -> Result<(), latchkey_core::SchemeRefusal> {
        let plugin = self.get(scheme).map_err(refusal)?;
        Runtime::validate_config(self, &plugin, config).map_err(refusal)
    }

    fn validate_secret(
        &self,
        scheme: &str,
        config: &[(String, String)],
        field: &str,
        value: &Secret,
    ) -> Result<(), latchkey_core::SchemeRefusal> {
        let plugin = self.get(scheme).map_err(refusal)?;
        Runtime::validate_secret(self, &plugin, config, field, value).map_err(refusal)
    }
}

fn refusal(e: PluginError) -> latchkey_core::SchemeRefusal {
    latchkey_core::SchemeRefusal { code: e.code(), message: e.to_string() }
}

/// A declaration's fields, as the scheme catalogue describes them.
pub fn scheme_fields(info: &SchemeInfo) -> latchkey_core::SchemeFields {
    let spec = |name: &str, required: bool, description: &str| latchkey_core::FieldSpec {
        name: name.to_string(),
        required,
        description: description.to_string(),
    };
    latchkey_core::SchemeFields {
        name: info.name.clone(),
        config_fields: info.config_fields.iter().map(|f| spec(&f.name, f.required, &f.description)).collect(),
        secret_fields: info.secret_fields.iter().map(|f| spec(&f.name, f.required, &f.description)).collect(),
        open_secret_fields: info.open_secret_fields.is_some(),
    }
}
