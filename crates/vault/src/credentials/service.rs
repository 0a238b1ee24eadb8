//! [`Vault`]: the credential store every surface uses. It validates input
//! through the credential's scheme plugin, seals secrets before they reach
//! storage, writes each change with its audit event and change record in one
//! transaction, keeps an in-process cache coherent with other processes and
//! replicas, and resolves a credential for a call through the three layers.

use latchkey_core::error::ErrorCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::audit::{self, AuditAction, AuditEvent, AuditFilter, Change, UseEvent, UseRecorder, insert_change_event};
use crate::credentials::crypto::{self, CredentialAad, Keyring, VaultCryptoError};
use crate::credentials::model::{
    self, Credential, CredentialName, EnvMapping, ModelError, OrgId, Overrides, RawCredential, RawUpdate, Resolved,
    Validated, VaultEntry,
};
use crate::storage::cache::{Cache, Entry};
use crate::storage::feed;
use crate::storage::{
    self, BeginWrite as _, CREDENTIAL_COLUMNS, Db, JsonColumns, Location, StoreError, StoredCredential, db_int,
    decode_row, on_db, to_micros,
};
use latchkey_core::SchemeCatalogue;
use latchkey_core::secret::Secret;
use latchkey_core::text::sanitize_for_log;

/// Errors of the vault, each with a stable code ([`VaultError::code`]) and
/// HTTP status. No message contains a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Input or lifecycle errors of the credential model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Encryption, decryption or key loading failed.
    #[error(transparent)]
    Crypto(#[from] VaultCryptoError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configured key of `term` is not the one this vault was sealed with.
    #[error(
        "the configured master key for term {term} does not match the key this vault was created with; \
         check LATCHKEY_MASTER_KEY / the keyring file (nothing was changed)"
    )]
    WrongMasterKey {
        /// The term whose key check failed.
        term: u32,
    },
    /// No usable master key, with what to do about it.
    #[error("{0}")]
    KeySetup(String),
    /// The credential may not be sent to this host.
    #[error("credential `{credential}` may not be sent to `{host}`; its allowed destinations are: {allowed}")]
    DestinationNotAllowed {
        /// The credential.
        credential: String,
        /// The host asked for.
        host: String,
        /// The credential's destinations.
        allowed: String,
    },
    /// A malformed argument (an attachment name, a filter).
    #[error("{0}")]
    InvalidArgument(String),
    /// A directory refusal with its own code: an object that does not
    /// exist, a delete refused while referenced, a taken issuer or subject.
    #[error("{message}")]
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// One sentence, naming what to do.
        message: String,
    },
    /// An agent of that name exists in the organisation.
    #[error("an agent named `{name}` already exists in `{org}`")]
    AgentExists {
        /// The organisation.
        org: String,
        /// The agent.
        name: String,
    },
}

impl VaultError {
    /// A [`VaultError::Refused`].
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> VaultError {
        VaultError::Refused { code, message: message.into() }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            VaultError::Model(e) => e.code(),
            VaultError::Crypto(e) => e.code(),
            VaultError::Store(StoreError::Corrupt(..)) => ErrorCode::VaultCorrupt,
            VaultError::Store(StoreError::Migration(_)) => ErrorCode::VaultMigrationFailed,
            VaultError::Store(_) => ErrorCode::VaultUnavailable,
            VaultError::WrongMasterKey { .. } => ErrorCode::MasterKeyWrong,
            VaultError::KeySetup(_) => ErrorCode::MasterKeyMissing,
            VaultError::DestinationNotAllowed { .. } => ErrorCode::DestinationNotAllowed,
            VaultError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            VaultError::AgentExists { .. } => ErrorCode::AgentExists,
            VaultError::Refused { code, .. } => *code,
        }
    }

    /// The HTTP status for [`VaultError::code`].
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }
}

/// Looks an environment variable up (the host environment layer).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the master keyring comes from.
#[derive(Clone, Default)]
pub struct KeySource {
    /// The `LATCHKEY_MASTER_KEY` value (`BASE64` or `TERM:BASE64`).
    pub master_key: Option<Zeroizing<String>>,
    /// A keyring file (`LATCHKEY_KEYRING_FILE`, or `keyring_file` in the config).
    pub keyring_file: Option<PathBuf>,
    /// The development key file used when neither is set (SQLite only);
    /// created, with a loud warning, when the vault is new.
    pub dev_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("master_key", &self.master_key.as_ref().map(|_| "[redacted]"))
            .field("keyring_file", &self.keyring_file)
            .field("dev_key_file", &self.dev_key_file)
            .finish()
    }
}

impl KeySource {
    /// The file a new master key term can be added to, if any.
    fn writable_file(&self) -> Option<&Path> {
        if self.master_key.is_some() {
            return None;
        }
        self.keyring_file.as_deref().or(self.dev_key_file.as_deref())
    }
}

/// Which key the vault opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `LATCHKEY_MASTER_KEY` and/or a keyring file.
    Configured,
    /// An existing development key file.
    DevKey(PathBuf),
    /// A development key file created just now for a new vault.
    DevKeyCreated(PathBuf),
}

/// How to open a vault.
#[derive(Clone)]
pub struct VaultOptions {
    /// The database.
    pub location: Location,
    /// The master keyring.
    pub keys: KeySource,
    /// Credential or provider names → environment variables (the host layer).
    pub env_mapping: EnvMapping,
    /// How the host environment is read (`std::env::var` by default).
    pub env: EnvLookup,
    /// Start the change feed, so changes by other processes or replicas reach
    /// this one's cache. One-shot CLI commands leave it off.
    pub watch: bool,
    /// How often an SQLite vault checks for other processes' commits.
    pub sqlite_watch_interval: Duration,
    /// Where full use events go and how long use counts are kept.
    pub audit: crate::audit::AuditOptions,
}

impl VaultOptions {
    /// Defaults for `location`: the built-in environment mapping, the process
    /// environment, no change feed.
    pub fn new(location: Location, keys: KeySource) -> VaultOptions {
        VaultOptions {
            location,
            keys,
            env_mapping: EnvMapping::default(),
            env: Arc::new(|var| std::env::var(var).ok()),
            watch: false,
            sqlite_watch_interval: Duration::from_millis(20),
            audit: crate::audit::AuditOptions::default(),
        }
    }
}

impl std::fmt::Debug for VaultOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultOptions").field("location", &self.location.display()).field("keys", &self.keys).finish()
    }
}

/// A stored credential as reads return it: the record (no secret values),
/// when it was last used, and the state of its sealed secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    /// The record.
    pub credential: Credential,
    /// The last successful use (updated within a second or so of the use).
    pub last_used_at: Option<OffsetDateTime>,
    /// The master key term its data key is wrapped under.
    pub key_term: u32,
    /// How many times its secret values were set (1 at creation).
    pub secret_version: u64,
}

impl CredentialInfo {
    /// The form the CLI (`--json`) and the admin API show.
    pub fn view(&self) -> CredentialView {
        use time::format_description::well_known::Rfc3339;
        let c = &self.credential;
        CredentialView {
            name: c.name.as_str().to_string(),
            org: c.org.as_str().to_string(),
            scheme: c.scheme.clone(),
            enabled: c.enabled,
            state: if c.enabled { "enabled" } else { "disabled" },
            config: c.config.clone(),
            secret_fields: c.secret_fields.clone(),
            destinations: c.destinations.iter().map(ToString::to_string).collect(),
            attachments: AttachmentsView { agents: c.attachments.agents.clone(), routes: c.attachments.routes.clone() },
            created_at: c.created_at.format(&Rfc3339).ok(),
            updated_at: c.updated_at.format(&Rfc3339).ok(),
            last_used_at: self.last_used_at.and_then(|t| t.format(&Rfc3339).ok()),
            version: c.version,
            secret_version: self.secret_version,
            key_term: self.key_term,
        }
    }

    /// [`CredentialInfo::view`] as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

/// A credential as the CLI (`--json`) and the admin API show it: every
/// field of the record, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    /// The name, unique in its organisation.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// The scheme that applies it.
    pub scheme: String,
    /// Whether it may be used.
    pub enabled: bool,
    /// `enabled` or `disabled`.
    pub state: &'static str,
    /// Non-secret configuration: an object of field name to value (in the
    /// order given), the shape `secrets` has when it is written.
    #[serde(serialize_with = "config_as_object")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub config: Vec<(String, String)>,
    /// The names of its secret fields (never their values).
    pub secret_fields: BTreeSet<String>,
    /// Hosts it may be sent to.
    pub destinations: Vec<String>,
    /// Agents and routes that use it.
    pub attachments: AttachmentsView,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When it last changed (RFC 3339).
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    /// Its last successful use (RFC 3339), if any.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    /// 1 at creation, plus one for every change.
    pub version: u64,
    /// How many times its secret values were set.
    pub secret_version: u64,
    /// The master key term its data key is wrapped under.
    pub key_term: u32,
}

/// Configuration pairs as a JSON object, keeping their order.
fn config_as_object<S: serde::Serializer>(config: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(config.iter().map(|(k, v)| (k, v)))
}

/// Who uses a credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AttachmentsView {
    /// Agents allowed to use it.
    pub agents: BTreeSet<String>,
    /// Routes that send it upstream.
    pub routes: BTreeSet<String>,
}

impl From<&StoredCredential> for CredentialInfo {
    fn from(s: &StoredCredential) -> CredentialInfo {
        CredentialInfo {
            credential: s.credential.clone(),
            last_used_at: s.last_used_at,
            key_term: s.key_term,
            secret_version: s.secret_version,
        }
    }
}

/// A credential resolved for one call: the vault record (absent when an
/// override or the environment supplied a name the vault does not hold) and
/// the winning layer's secrets. `Debug` never shows values.
#[derive(Debug)]
pub struct Resolution {
    entry: Option<Arc<StoredCredential>>,
    /// The winning layer, where in it, and the secret values.
    pub resolved: Resolved,
}

impl Resolution {
    /// The vault record, if the vault holds the name.
    pub fn credential(&self) -> Option<&Credential> {
        self.entry.as_ref().map(|e| &e.credential)
    }

    /// What a plugin's cache may file this credential's entries under: the
    /// vault row's random id (new for every created credential, so no other
    /// organisation's credential of the same name, and no earlier credential
    /// of this name, shares it) with its version and secret version. `None`
    /// when the secrets come from another layer: nothing would tell one set
    /// of values from another, so such calls are not cached.
    pub fn cache_scope(&self) -> Option<String> {
        match &self.entry {
            Some(row) if self.resolved.layer == model::Layer::Vault => {
                Some(format!("{}/{}/{}", row.id, row.credential.version, row.secret_version))
            }
            _ => None,
        }
    }

    /// Refuse `host` unless the vault record allows it. A name the vault
    /// does not hold has no destination list (an override is the caller's
    /// own key; an environment credential's destination is the operator's
    /// route), so it is allowed.
    pub fn check_destination(&self, host: &str) -> Result<(), VaultError> {
        match self.credential() {
            Some(c) => destination_allowed(c, host),
            None => Ok(()),
        }
    }

    /// The vault record the secrets were opened from (if the vault holds
    /// the name), and what the layers resolved.
    pub fn into_parts(self) -> (Option<CredentialRef>, Resolved) {
        (self.entry.map(CredentialRef), self.resolved)
    }
}

fn destination_allowed(c: &Credential, host: &str) -> Result<(), VaultError> {
    if c.allows(host) {
        return Ok(());
    }
    Err(VaultError::DestinationNotAllowed {
        credential: c.name.to_string(),
        host: sanitize_for_log(host, 255),
        allowed: if c.destinations.is_empty() {
            "none (add one with `latchkey credential update --destination`)".into()
        } else {
            c.destinations.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        },
    })
}

/// A cached credential record, shared without copying.
#[derive(Debug, Clone)]
pub struct CredentialRef(Arc<StoredCredential>);

impl CredentialRef {
    /// Refuse `host` unless this record allows it.
    pub fn check_destination(&self, host: &str) -> Result<(), VaultError> {
        destination_allowed(&self.0.credential, host)
    }

    /// The value the call path kept with this record ([`CredentialRef::keep`]),
    /// if it is of type `T`.
    pub fn memo<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.0.memo.get()
    }

    /// Keep `value` with this record for as long as the record is cached,
    /// and return what is kept (the first value kept wins). Only what was
    /// derived from this very record (its config, its version, keys and
    /// hashes derived from its secrets) may be kept, and never a secret
    /// value: the cache holds sealed blobs, and each call opens the secrets
    /// for itself ([`Vault::open_record`]). A change to the credential is a
    /// new record, which starts with nothing kept. The value must not hold
    /// the record itself (that would be a cycle, never freed).
    pub fn keep<T: std::any::Any + Send + Sync>(&self, value: Arc<T>) -> Arc<T> {
        self.0.memo.set(value)
    }
}

impl std::ops::Deref for CredentialRef {
    type Target = Credential;
    fn deref(&self) -> &Credential {
        &self.0.credential
    }
}

/// What a master key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The term every data key is now wrapped under.
    pub term: u32,
    /// Whether this rotation generated the term (into the keyring file).
    pub generated: bool,
    /// Data keys re-wrapped.
    pub rewrapped: u64,
    /// Credentials by term after the rotation (all on `term` when done).
    pub by_term: BTreeMap<u32, u64>,
    /// Credentials that could not be re-wrapped, with the error code.
    pub failed: Vec<(String, String, String)>,
}

/// An attachment kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentKind {
    /// An agent allowed to use the credential.
    Agent,
    /// A route that sends it upstream.
    Route,
}

impl AttachmentKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Agent => "agent",
            AttachmentKind::Route => "route",
        }
    }
}

/// The vault. Cheap to share behind an `Arc`; [`Vault::close`] flushes the
/// use audit and stops the change feed.
pub struct Vault {
    db: Db,
    location: Location,
    catalogue: Arc<dyn SchemeCatalogue>,
    keys: KeySource,
    keyring: RwLock<Arc<Keyring>>,
    key_origin: KeyOrigin,
    cache: Arc<Cache>,
    uses: UseRecorder,
    /// The installation's audit salt (every replica reads the same row),
    /// opened on first use.
    audit_salt: tokio::sync::OnceCell<zeroize::Zeroizing<Vec<u8>>>,
    env_mapping: EnvMapping,
    env: EnvLookup,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serialises this process's read-validate-write cycles, so writers in one
    /// process never race each other into version conflicts (other processes
    /// and replicas are handled by the version check and a retry).
    writes: tokio::sync::Mutex<()>,
    /// Agents by token hash, and routes by (org, name), valid until the next
    /// change anywhere (see [`Cache`]'s generation).
    pub(crate) agent_cache: crate::storage::cache::GenCache<Vec<u8>, Option<crate::directory::agents::Agent>>,
    pub(crate) route_cache: crate::storage::cache::GenCache<(String, String), Option<crate::directory::agents::Route>>,
    pub(crate) idp_cache: crate::storage::cache::GenCache<(), Arc<Vec<crate::directory::identity::IdentityProvider>>>,
    pub(crate) jwt_agent_cache:
        crate::storage::cache::GenCache<(String, String, String), Option<crate::directory::agents::Agent>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("location", &self.location.display()).finish_non_exhaustive()
    }
}

/// How long change records are kept (pruned when a broker starts).
const CHANGE_RETENTION: time::Duration = time::Duration::days(1);

/// How often a write is retried when another process or replica changed the
/// row between the read and the write.
const WRITE_ATTEMPTS: u32 = 20;

/// Wait before retry `attempt` (none before the first): a few milliseconds,
/// growing, with jitter so two replicas do not collide again in step.
async fn backoff(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let mut b = [0u8; 1];
    let _ = SystemRandom::new().fill(&mut b);
    let ms = u64::from(attempt.min(10)) * 2 + u64::from(b[0] % 8);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The identity bound into a credential's key check.
const KEY_CHECK_ORG: &str = "_latchkey";
const KEY_CHECK_ID: &str = "master-key-check";

fn key_check_aad(term: u32) -> CredentialAad<'static> {
    CredentialAad { org: KEY_CHECK_ORG, credential_id: KEY_CHECK_ID, secret_version: u64::from(term) }
}

fn new_id() -> Result<String, VaultError> {
    let mut id = [0u8; 16];
    SystemRandom::new().fill(&mut id).map_err(|_| VaultCryptoError::Crypto("the random number generator failed"))?;
    Ok(hex::encode(id))
}

fn not_found(name: &str) -> VaultError {
    ModelError::CredentialNotFound { name: sanitize_for_log(name, 80) }.into()
}

/// One row change, committed with its change record and audit event.
enum RowWrite<'a> {
    Insert(&'a StoredCredential),
    Update { row: &'a StoredCredential, old_version: u64, attachment: Option<(AttachmentKind, &'a str, bool)> },
    Delete { row: &'a StoredCredential },
}

/// The write failed because the row changed since it was read.
struct Conflict;

impl Vault {
    /// Open (and migrate) the vault, load and check the master keyring, and
    /// start the use-audit writer and, if asked, the change feed. Must run on
    /// a tokio runtime.
    pub async fn open(options: VaultOptions, catalogue: Arc<dyn SchemeCatalogue>) -> Result<Vault, VaultError> {
        let db = Db::connect(&options.location).await?;
        let (keyring, key_origin) = match load_keyring(&db, &options.location, &options.keys).await {
            Ok(k) => k,
            Err(e) => {
                db.close().await;
                return Err(e);
            }
        };
        if let Err(e) = check_key_terms(&db, &keyring).await {
            db.close().await;
            return Err(e);
        }
        let uses = UseRecorder::start(&options.location, &options.audit).await.map_err(|e| match e {
            crate::audit::StartError::Store(e) => VaultError::from(e),
            crate::audit::StartError::Sink(e) => {
                let what = match &options.audit.sink {
                    crate::audit::AuditSink::File { path, .. } => format!("the audit sink {}", path.display()),
                    _ => "the audit sink".into(),
                };
                VaultError::InvalidArgument(format!("cannot open {what}: {e}"))
            }
        });
        let uses = match uses {
            Ok(u) => u,
            Err(e) => {
                db.close().await;
                return Err(e);
            }
        };
        let (stop, _) = watch::channel(false);
        let vault = Vault {
            audit_salt: tokio::sync::OnceCell::new(),
            uses,
            db,
            location: options.location.clone(),
            catalogue,
            keys: options.keys.clone(),
            keyring: RwLock::new(Arc::new(keyring)),
            key_origin,
            cache: Arc::new(Cache::default()),
            env_mapping: options.env_mapping.clone(),
            env: options.env.clone(),
            stop,
            tasks: Mutex::new(Vec::new()),
            writes: tokio::sync::Mutex::new(()),
            agent_cache: Default::default(),
            route_cache: Default::default(),
            idp_cache: Default::default(),
            jwt_agent_cache: Default::default(),
        };
        if options.watch {
            vault.prune_changes().await?;
            vault.start_feed(&options).await?;
        }
        Ok(vault)
    }

    /// Drop change records older than [`CHANGE_RETENTION`]: feeds read them
    /// within milliseconds, so old ones only take space. (The audit trail is
    /// pruned by the audit writer; see [`crate::audit::AuditOptions`].)
    async fn prune_changes(&self) -> Result<(), VaultError> {
        let cutoff = to_micros(OffsetDateTime::now_utc() - CHANGE_RETENTION);
        on_db!(&self.db, pool => {
            sqlx::query("DELETE FROM vault_changes WHERE at < $1")
                .bind(cutoff)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        });
        Ok(())
    }

    async fn start_feed(&self, options: &VaultOptions) -> Result<(), VaultError> {
        let task = match (&self.db, &options.location) {
            (Db::Postgres(pool), _) => {
                let schema: String =
                    sqlx::query_scalar("SELECT current_schema()").fetch_one(pool).await.map_err(StoreError::from)?;
                let (ready, is_ready) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(feed::listen_postgres(
                    pool.clone(),
                    feed::channel(&schema),
                    self.cache.clone(),
                    self.stop.subscribe(),
                    ready,
                ));
                if tokio::time::timeout(Duration::from_secs(10), is_ready).await.is_err() {
                    tracing::warn!("vault change feed is not listening yet; calls read the database until it is");
                }
                task
            }
            (Db::Sqlite(pool), Location::SqliteFile(path)) => {
                let options_ro = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                tokio::spawn(feed::watch_sqlite(
                    pool.clone(),
                    options_ro,
                    self.cache.clone(),
                    options.sqlite_watch_interval,
                    self.stop.subscribe(),
                ))
            }
            (Db::Sqlite(_), Location::Postgres(_)) => return Ok(()),
        };
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        Ok(())
    }

    /// Store every queued use, flush the audit sink, stop the change feed
    /// and close the database.
    pub async fn close(&self) {
        self.uses.close().await;
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        self.db.close().await;
    }

    /// Where the vault lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Which master key it opened with.
    pub fn key_origin(&self) -> &KeyOrigin {
        &self.key_origin
    }

    /// A database round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), VaultError> {
        Ok(self.db.ping().await?)
    }

    /// Cached entries (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The database (for the other stores of the vault module).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// A counter that moves on every invalidation, local or from the change
    /// feed; caches of rarely changing things (routes, agents) are valid
    /// while it stands still.
    pub fn change_generation(&self) -> u64 {
        self.cache.generation()
    }

    /// Drop `name` of `org` from this process's caches after a committed
    /// change (other replicas learn of it from its change record).
    pub(crate) fn invalidate(&self, org: &str, name: &str) {
        self.cache.invalidate(org, name);
    }

    /// Drop one name from the in-process cache, so its next resolution reads
    /// the database (benchmarks measure the cache-miss path with it).
    #[doc(hidden)]
    pub fn forget(&self, org: &str, name: &str) {
        self.cache.invalidate(org, name);
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Read the keyring again from its source (after another process added
    /// a term).
    pub async fn reload_keyring(&self) -> Result<(), VaultError> {
        let ring = keyring_from_source(&self.keys)?.ok_or_else(|| {
            VaultError::KeySetup("the master key source is gone; it was there when the vault opened".into())
        })?;
        // Every term must open its key-check row before the keyring is used:
        // a key that is not this vault's is `master_key_wrong` (not an
        // integrity failure of each row it meets), and the keyring in use is
        // kept, so no row is sealed under a key other replicas do not hold.
        check_key_terms(&self.db, &ring).await?;
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
        Ok(())
    }

    // ------------------------------------------------------------------
    // Reads
    // ------------------------------------------------------------------

    async fn fetch(&self, org: &str, name: &str) -> Result<Option<StoredCredential>, VaultError> {
        let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE org = $1 AND name = $2");
        let found = on_db!(&self.db, pool => {
            // `fetch_all`, not `fetch_optional`: on SQLite an unfinished statement keeps
            // its read snapshot open, and later reads on that connection would see
            // the database as it was then.
            let row = sqlx::query(&sql).bind(org).bind(name).fetch_all(pool).await.map_err(StoreError::from)?.pop();
            match row {
                None => None,
                Some(row) => {
                    let mut stored = decode_row(&row)?;
                    let attachments: Vec<(String, String)> =
                        sqlx::query_as("SELECT kind, name FROM credential_attachments WHERE credential_id = $1")
                            .bind(&stored.id)
                            .fetch_all(pool)
                            .await
                            .map_err(StoreError::from)?;
                    storage::set_attachments(&mut stored.credential, attachments);
                    Some(stored)
                }
            }
        });
        Ok(found)
    }

    /// One credential, read from the database (not the cache).
    pub async fn get(&self, org: &str, name: &str) -> Result<CredentialInfo, VaultError> {
        self.fetch(org, name).await?.map(|s| CredentialInfo::from(&s)).ok_or_else(|| not_found(name))
    }

    /// Every credential, or those of one organisation, by organisation and name.
    pub async fn list(&self, org: Option<&str>) -> Result<Vec<CredentialInfo>, VaultError> {
        let sql =
            format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE ($1 IS NULL OR org = $1) ORDER BY org, name");
        let (rows, attachments) = on_db!(&self.db, pool => {
            let rows = sqlx::query(&sql).bind(org).fetch_all(pool).await.map_err(StoreError::from)?;
            let rows = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
            let attachments: Vec<(String, String, String)> =
                sqlx::query_as("SELECT credential_id, kind, name FROM credential_attachments")
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::from)?;
            (rows, attachments)
        });
        let mut by_id: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (id, kind, name) in attachments {
            by_id.entry(id).or_default().push((kind, name));
        }
        Ok(rows
            .into_iter()
            .map(|mut s| {
                if let Some(a) = by_id.remove(&s.id) {
                    storage::set_attachments(&mut s.credential, a);
                }
                CredentialInfo::from(&s)
            })
            .collect())
    }

    /// The audit trail, oldest first (see [`AuditFilter`]).
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, VaultError> {
        self.uses.flush().await;
        Ok(audit::query(&self.db, filter).await?)
    }

    /// Full use events the audit sink did not get because its backlog was
    /// full (the use counts in the store are never dropped).
    pub fn audit_dropped(&self) -> u64 {
        self.uses.dropped()
    }

    /// Prune use counts (and legacy per-use rows) older than
    /// [`crate::audit::AuditOptions::retention`] now, as the audit writer
    /// does at start and every [`crate::audit::PRUNE_EVERY`]; the number of
    /// rows deleted (0 without a retention). Lifecycle events are kept.
    pub async fn prune_audit(&self) -> Result<u64, VaultError> {
        Ok(self.uses.prune().await?)
    }

    fn open_secrets(&self, row: &StoredCredential) -> Result<BTreeMap<String, Secret>, VaultCryptoError> {
        let aad = CredentialAad {
            org: row.credential.org.as_str(),
            credential_id: &row.id,
            secret_version: row.secret_version,
        };
        crypto::open(&self.keyring(), &row.blob, &aad)
    }

    // ------------------------------------------------------------------
    // Resolution (the call path)
    // ------------------------------------------------------------------

    /// The cached entry for `org`/`name`, filling the cache on a miss.
    async fn lookup(&self, org: &str, name: &str) -> Result<Entry, VaultError> {
        if let Some(entry) = self.cache.get(org, name) {
            return Ok(entry);
        }
        let generation = self.cache.generation();
        let entry = self.fetch(org, name).await?.map(Arc::new);
        self.cache.fill(generation, org, name, entry.clone());
        Ok(entry)
    }

    /// Open the secrets of `record` (a record read with
    /// [`Vault::credential`]) for one call, skipping the resolution layers:
    /// for a caller that resolved this very record before, found the vault
    /// layer winning with no overrides, and kept what it derived with the
    /// record ([`CredentialRef::keep`]). A disabled record opens nothing.
    pub fn open_record(&self, record: &CredentialRef) -> Result<BTreeMap<String, Secret>, VaultError> {
        if !record.0.credential.enabled {
            return Err(ModelError::CredentialDisabled {
                name: sanitize_for_log(record.0.credential.name.as_str(), 80),
            }
            .into());
        }
        Ok(self.open_secrets(&record.0)?)
    }

    /// The record of `org`/`name` from the cache (no secrets opened), for
    /// authorisation checks before resolving.
    pub async fn credential(&self, org: &str, name: &str) -> Result<Option<CredentialRef>, VaultError> {
        Ok(self.lookup(org, name).await?.map(CredentialRef))
    }

    /// Resolve `name` of `org` for one call: per-call `overrides`, then the
    /// vault, then the host environment. A disabled vault credential fails
    /// with `credential_disabled`; when no layer has it,
    /// `provider_key_missing` says what was looked for and where. Secret
    /// values are decrypted only here, for the call, and only when the vault
    /// layer is the one that can win.
    pub async fn resolve(&self, org: &str, name: &str, overrides: &Overrides) -> Result<Resolution, VaultError> {
        let entry = self.lookup(org, name).await?;
        self.resolve_entry(org, name, entry, overrides).await
    }

    /// Resolve from a record already read ([`Vault::credential`]): the
    /// secrets are opened from that very row, so the record the caller
    /// checked and the secrets it uses are one snapshot (same version).
    pub async fn resolve_snapshot(
        &self,
        org: &str,
        name: &str,
        record: Option<&CredentialRef>,
        overrides: &Overrides,
    ) -> Result<Resolution, VaultError> {
        self.resolve_entry(org, name, record.map(|r| r.0.clone()), overrides).await
    }

    async fn resolve_entry(
        &self,
        org: &str,
        name: &str,
        mut entry: Entry,
        overrides: &Overrides,
    ) -> Result<Resolution, VaultError> {
        let secrets = match &entry {
            Some(row) if row.credential.enabled && !overrides.is_empty() && has_override(overrides, name) => {
                BTreeMap::new()
            }
            Some(row) if row.credential.enabled => match self.open_secrets(row) {
                Ok(s) => s,
                Err(VaultCryptoError::UnknownTerm(term)) => {
                    // Another process rotated the master key: read the keyring
                    // and the row again, once.
                    tracing::info!(term, "vault blob under an unknown master key term; reloading the keyring");
                    self.reload_keyring().await?;
                    self.cache.invalidate(org, name);
                    let (id, version) = (row.id.clone(), row.credential.version);
                    entry = self.lookup(org, name).await?;
                    match &entry {
                        // Only a re-wrap of the same version may continue: the
                        // caller checked this record, not a changed one.
                        Some(again) if again.id == id && again.credential.version == version => {
                            self.open_secrets(again)?
                        }
                        _ => {
                            return Err(ModelError::VersionConflict {
                                name: sanitize_for_log(name, 80),
                                expected: version,
                                actual: entry.as_ref().map_or(0, |e| e.credential.version),
                            }
                            .into());
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            },
            _ => BTreeMap::new(),
        };
        let vault = entry.as_ref().map(|row| VaultEntry { enabled: row.credential.enabled, secrets: &secrets });
        let env = &self.env;
        let resolved = model::resolve(name, overrides, vault, &self.env_mapping, |var| env(var))?;
        Ok(Resolution { entry, resolved })
    }

    /// Record one use of a credential that released nothing (counted in
    /// memory, committed by the writer within [`crate::audit::TICK`]; never
    /// dropped; see `vault::audit`).
    pub fn record_use(&self, event: UseEvent) {
        self.uses.record(event);
    }

    /// Record a use that releases the credential, and wait until it is
    /// committed; on `Err` the caller must not release it (fail closed).
    pub async fn record_use_durable(&self, event: UseEvent) -> Result<(), crate::audit::AuditUnavailable> {
        self.uses.record_durable(event).await
    }

    /// The HMAC fingerprint of secret values under this installation's
    /// audit salt (see [`crate::audit::fingerprint`]). The first call opens
    /// (or creates) the sealed salt, reloading the keyring once if another
    /// process rotated the master key.
    pub async fn fingerprint(&self, secrets: &BTreeMap<String, Secret>) -> Result<String, VaultError> {
        let salt = self
            .audit_salt
            .get_or_try_init(|| async {
                match load_audit_salt(&self.db, &self.keyring()).await {
                    Err(VaultError::Crypto(VaultCryptoError::UnknownTerm(_))) => {
                        self.reload_keyring().await?;
                        load_audit_salt(&self.db, &self.keyring()).await
                    }
                    other => other,
                }
            })
            .await?;
        Ok(crate::audit::fingerprint(salt, secrets))
    }

    // ------------------------------------------------------------------
    // Writes
    // ------------------------------------------------------------------

    async fn commit(&self, write: RowWrite<'_>, change: Change<'_>) -> Result<Result<(), Conflict>, VaultError> {
        let now = OffsetDateTime::now_utc();
        let at = to_micros(now);
        // An agent attached must exist when the attachment commits: on
        // PostgreSQL the row is share-locked until then, so a concurrent
        // `delete_agent` waits and then detaches it (SQLite serialises
        // writers, so the read is enough there).
        let lock = if matches!(self.db, Db::Postgres(_)) { " FOR SHARE" } else { "" };
        let agent_exists = format!("SELECT 1 FROM agents WHERE org = $1 AND name = $2{lock}");
        let mut cascaded_routes: Vec<String> = Vec::new();
        let result = on_db!(&self.db, pool => {
            let mut tx = pool.begin_write().await.map_err(StoreError::from)?;
            let applied = match &write {
                RowWrite::Insert(row) => {
                    let c = &row.credential;
                    let json = JsonColumns::of(c);
                    sqlx::query(
                        "INSERT INTO credentials (id, org, name, scheme, config, secret_fields, secret_blob, \
                         secret_version, key_term, enabled, destinations, created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    )
                    .bind(&row.id)
                    .bind(c.org.as_str())
                    .bind(c.name.as_str())
                    .bind(&c.scheme)
                    .bind(&json.config)
                    .bind(&json.secret_fields)
                    .bind(&row.blob)
                    .bind(db_int(row.secret_version))
                    .bind(i64::from(row.key_term))
                    .bind(c.enabled)
                    .bind(&json.destinations)
                    .bind(to_micros(c.created_at))
                    .bind(to_micros(c.updated_at))
                    .bind(db_int(c.version))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                    true
                }
                RowWrite::Update { row, old_version, attachment } => {
                    let c = &row.credential;
                    let json = JsonColumns::of(c);
                    let updated = sqlx::query(
                        "UPDATE credentials SET config = $1, secret_fields = $2, secret_blob = $3, \
                         secret_version = $4, key_term = $5, enabled = $6, destinations = $7, updated_at = $8, \
                         version = $9 WHERE id = $10 AND version = $11",
                    )
                    .bind(&json.config)
                    .bind(&json.secret_fields)
                    .bind(&row.blob)
                    .bind(db_int(row.secret_version))
                    .bind(i64::from(row.key_term))
                    .bind(c.enabled)
                    .bind(&json.destinations)
                    .bind(to_micros(c.updated_at))
                    .bind(db_int(c.version))
                    .bind(&row.id)
                    .bind(db_int(*old_version))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                    if updated.rows_affected() == 1 {
                        match attachment {
                            Some((kind, target, true)) => {
                                if matches!(kind, AttachmentKind::Agent) {
                                    let exists: Option<(i32,)> = sqlx::query_as(&agent_exists)
                                        .bind(change.org)
                                        .bind(*target)
                                        .fetch_optional(&mut *tx)
                                        .await
                                        .map_err(StoreError::from)?;
                                    if exists.is_none() {
                                        return Err(VaultError::refused(
                                            ErrorCode::AgentNotFound,
                                            format!("no agent named `{target}` in `{}`", change.org),
                                        ));
                                    }
                                }
                                sqlx::query(
                                    "INSERT INTO credential_attachments (credential_id, kind, name) VALUES ($1, $2, $3)",
                                )
                                .bind(&row.id)
                                .bind(kind.as_str())
                                .bind(*target)
                                .execute(&mut *tx)
                                .await
                                .map_err(StoreError::from)?;
                            }
                            Some((kind, target, false)) => {
                                sqlx::query(
                                    "DELETE FROM credential_attachments \
                                     WHERE credential_id = $1 AND kind = $2 AND name = $3",
                                )
                                .bind(&row.id)
                                .bind(kind.as_str())
                                .bind(*target)
                                .execute(&mut *tx)
                                .await
                                .map_err(StoreError::from)?;
                            }
                            None => {}
                        }
                        true
                    } else {
                        false
                    }
                }
                RowWrite::Delete { row } => {
                    let deleted = sqlx::query("DELETE FROM credentials WHERE id = $1 AND version = $2")
                        .bind(&row.id)
                        .bind(db_int(row.credential.version))
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?
                        .rows_affected()
                        == 1;
                    if deleted {
                        // A forced delete takes the routes that send it along
                        // (each with its change record and audit event), so no
                        // route names a credential that is gone.
                        let routes: Vec<(String,)> =
                            sqlx::query_as("DELETE FROM routes WHERE org = $1 AND credential = $2 RETURNING name")
                                .bind(change.org)
                                .bind(change.credential)
                                .fetch_all(&mut *tx)
                                .await
                                .map_err(StoreError::from)?;
                        for (route,) in &routes {
                            crate::storage::insert_change_record!(&mut *tx, change.org, &format!("@route/{route}"), at)
                                .map_err(StoreError::from)?;
                            let event = Change {
                                action: AuditAction::RouteDelete,
                                version: None,
                                detail: Some(format!("route {route} (its credential was deleted)")),
                                ..change.clone()
                            };
                            insert_change_event!(&mut *tx, at, event).map_err(StoreError::from)?;
                        }
                        cascaded_routes = routes.into_iter().map(|(r,)| r).collect();
                    }
                    deleted
                }
            };
            if applied {
                crate::storage::insert_change_record!(&mut *tx, change.org, change.credential, at)
                    .map_err(StoreError::from)?;
                insert_change_event!(&mut *tx, at, change).map_err(StoreError::from)?;
                tx.commit().await.map_err(StoreError::from)?;
                Ok(())
            } else {
                tx.rollback().await.map_err(StoreError::from)?;
                Err(Conflict)
            }
        });
        // Invalidate whether or not the write applied: a conflict means the
        // cached row is stale anyway.
        self.cache.invalidate(change.org, change.credential);
        if result.is_ok() {
            audit::emit(&change.event(now));
            for route in &cascaded_routes {
                let detail = format!("route {route} (its credential was deleted)");
                audit::emit_cascade(change.org, change.credential, AuditAction::RouteDelete, change.actor, &detail);
            }
        }
        Ok(result)
    }

    /// Create a credential. The scheme plugin validates its config and
    /// secrets first; the notices say what was trimmed or looks wrong.
    pub async fn create(&self, raw: RawCredential, actor: &str) -> Result<Validated<CredentialInfo>, VaultError> {
        let Validated { value, notices } = off_worker(|| model::validate_new(self.catalogue.as_ref(), raw))?;
        let (credential, secrets) = value.into_credential(OffsetDateTime::now_utc());
        let id = new_id()?;
        let keyring = self.keyring();
        let aad = CredentialAad { org: credential.org.as_str(), credential_id: &id, secret_version: 1 };
        let blob = crypto::seal(&keyring, &secrets, &aad)?;
        drop(secrets);
        let row = StoredCredential {
            id,
            credential,
            blob,
            secret_version: 1,
            key_term: keyring.current(),
            last_used_at: None,
            memo: Default::default(),
        };
        let change = Change {
            org: row.credential.org.as_str(),
            credential: row.credential.name.as_str(),
            action: AuditAction::Create,
            actor,
            version: Some(1),
            detail: Some(format!("scheme {}", row.credential.scheme)),
        };
        match self.commit(RowWrite::Insert(&row), change).await {
            Ok(_) => Ok(Validated { value: CredentialInfo::from(&row), notices }),
            Err(VaultError::Store(StoreError::Unique)) => {
                Err(ModelError::CredentialExists { name: row.credential.name.to_string() }.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Change a credential: config, destinations, enabled state or secret
    /// values (`update`), recorded as `action`.
    async fn modify(
        &self,
        org: &str,
        name: &str,
        raw: RawUpdate,
        action: AuditAction,
        actor: &str,
    ) -> Result<Validated<CredentialInfo>, VaultError> {
        // Without an expected version, a concurrent change is retried on the
        // new row; with one, it is the caller's conflict to resolve.
        let _serial = self.writes.lock().await;
        for attempt in 0..WRITE_ATTEMPTS {
            backoff(attempt).await;
            let current = self.fetch(org, name).await?.ok_or_else(|| not_found(name))?;
            let Validated { value: update, notices } = off_worker(|| {
                model::validate_update(self.catalogue.as_ref(), &current.credential, raw.clone(), || {
                    self.open_secrets(&current).map_err(VaultError::from)
                })
            })?;
            let mut next = current.clone();
            if !next.credential.apply_update(&update, OffsetDateTime::now_utc())? {
                return Ok(Validated { value: CredentialInfo::from(&current), notices });
            }
            let mut parts = Vec::new();
            if update.config().is_some_and(|c| c != current.credential.config) {
                parts.push("config");
            }
            if update.destinations().is_some_and(|d| d != current.credential.destinations) {
                parts.push("destinations");
            }
            if let Some(enabled) = update.enabled()
                && enabled != current.credential.enabled
            {
                parts.push(if enabled { "enabled" } else { "disabled" });
            }
            if let Some(secrets) = update.secrets() {
                parts.push("secrets");
                let keyring = self.keyring();
                next.secret_version = current.secret_version + 1;
                let aad = CredentialAad { org, credential_id: &next.id, secret_version: next.secret_version };
                next.blob = crypto::seal(&keyring, secrets, &aad)?;
                next.key_term = keyring.current();
            }
            let change = Change {
                org,
                credential: next.credential.name.as_str(),
                action,
                actor,
                version: Some(next.credential.version),
                detail: Some(parts.join(", ")),
            };
            let write = RowWrite::Update { row: &next, old_version: current.credential.version, attachment: None };
            match self.commit(write, change).await? {
                Ok(()) => return Ok(Validated { value: CredentialInfo::from(&next), notices }),
                Err(Conflict) if raw.expected_version.is_none() => continue,
                Err(Conflict) => {
                    let actual = self.fetch(org, name).await?.map(|s| s.credential.version).unwrap_or(0);
                    return Err(ModelError::VersionConflict {
                        name: name.to_string(),
                        expected: current.credential.version,
                        actual,
                    }
                    .into());
                }
            }
        }
        Err(VaultError::Store(StoreError::Database(
            "the credential kept changing while this update was applied; try again".into(),
        )))
    }

    /// Change config, destinations, secrets or the enabled state.
    pub async fn update(
        &self,
        org: &str,
        name: &str,
        raw: RawUpdate,
        actor: &str,
    ) -> Result<Validated<CredentialInfo>, VaultError> {
        self.modify(org, name, raw, AuditAction::Update, actor).await
    }

    /// Enable or disable; takes effect for the next call everywhere.
    pub async fn set_enabled(
        &self,
        org: &str,
        name: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<CredentialInfo, VaultError> {
        let raw = RawUpdate { enabled: Some(enabled), ..RawUpdate::default() };
        let action = if enabled { AuditAction::Enable } else { AuditAction::Disable };
        Ok(self.modify(org, name, raw, action, actor).await?.value)
    }

    /// Replace the secret values whole (every required field), under a
    /// fresh data key.
    pub async fn rotate(
        &self,
        org: &str,
        name: &str,
        secrets: BTreeMap<String, Secret>,
        verbatim: std::collections::BTreeSet<String>,
        actor: &str,
    ) -> Result<Validated<CredentialInfo>, VaultError> {
        if secrets.is_empty() {
            return Err(VaultError::InvalidArgument(
                "a rotation needs the new secret values (--secret field=value for every field)".into(),
            ));
        }
        let raw = RawUpdate { secrets: Some(secrets), verbatim, ..RawUpdate::default() };
        self.modify(org, name, raw, AuditAction::Rotate, actor).await
    }

    /// Delete irreversibly; refused while attached unless `force`.
    pub async fn delete(&self, org: &str, name: &str, force: bool, actor: &str) -> Result<CredentialInfo, VaultError> {
        let _serial = self.writes.lock().await;
        for attempt in 0..WRITE_ATTEMPTS {
            backoff(attempt).await;
            let current = self.fetch(org, name).await?.ok_or_else(|| not_found(name))?;
            current.credential.check_delete(force)?;
            let detail = if current.credential.attachments.is_empty() {
                None
            } else {
                Some(format!("forced while attached to {}", current.credential.attachments))
            };
            let change = Change {
                org,
                credential: current.credential.name.as_str(),
                action: AuditAction::Delete,
                actor,
                version: Some(current.credential.version),
                detail,
            };
            if self.commit(RowWrite::Delete { row: &current }, change).await?.is_ok() {
                return Ok(CredentialInfo::from(&current));
            }
        }
        Err(VaultError::Store(StoreError::Database(
            "the credential kept changing while it was deleted; try again".into(),
        )))
    }

    /// Attach (or with `attach == false`, detach) an agent or route.
    pub async fn set_attachment(
        &self,
        org: &str,
        name: &str,
        kind: AttachmentKind,
        target: &str,
        attach: bool,
        actor: &str,
    ) -> Result<CredentialInfo, VaultError> {
        let target = CredentialName::parse(target)
            .map_err(|e| VaultError::InvalidArgument(format!("{} name: {e}", kind.as_str())))?;
        // References are checked when made: an agent must exist, and a
        // route's attachment follows the route (`put_route` makes it,
        // `delete_route` removes it), so it is never changed by hand.
        match kind {
            AttachmentKind::Agent if attach => {
                self.require_agent(org, target.as_str()).await?;
            }
            AttachmentKind::Agent => {}
            AttachmentKind::Route => {
                let route = self.route(org, target.as_str()).await?;
                match route {
                    None if attach => {
                        return Err(VaultError::refused(
                            ErrorCode::RouteNotFound,
                            format!("no route named `{target}` in `{org}` (see `latchkey route list`)"),
                        ));
                    }
                    Some(r) if r.credential != name => {
                        return Err(VaultError::refused(
                            ErrorCode::InvalidArgument,
                            format!(
                                "route `{target}` sends credential `{}`, not `{name}`; point it at `{name}` with \
                                `latchkey route add {target} --credential {name} …`",
                                r.credential
                            ),
                        ));
                    }
                    Some(_) if !attach => {
                        return Err(VaultError::refused(
                            ErrorCode::InUse,
                            format!(
                                "route `{target}` sends credential `{name}`; delete the route or point it at another \
                                credential instead"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        let _serial = self.writes.lock().await;
        for attempt in 0..WRITE_ATTEMPTS {
            backoff(attempt).await;
            let current = self.fetch(org, name).await?.ok_or_else(|| not_found(name))?;
            let set = match kind {
                AttachmentKind::Agent => &current.credential.attachments.agents,
                AttachmentKind::Route => &current.credential.attachments.routes,
            };
            if set.contains(target.as_str()) == attach {
                if !attach {
                    return Err(VaultError::refused(
                        ErrorCode::AttachmentNotFound,
                        format!("{} `{target}` is not attached to credential `{name}`", kind.as_str()),
                    ));
                }
                return Ok(CredentialInfo::from(&current));
            }
            let mut next = current.clone();
            let set = match kind {
                AttachmentKind::Agent => &mut next.credential.attachments.agents,
                AttachmentKind::Route => &mut next.credential.attachments.routes,
            };
            if attach {
                set.insert(target.to_string());
            } else {
                set.remove(target.as_str());
            }
            next.credential.version += 1;
            next.credential.updated_at = OffsetDateTime::now_utc().max(current.credential.updated_at);
            let change = Change {
                org,
                credential: current.credential.name.as_str(),
                action: if attach { AuditAction::Attach } else { AuditAction::Detach },
                actor,
                version: Some(next.credential.version),
                detail: Some(format!("{} {}", kind.as_str(), target)),
            };
            let write = RowWrite::Update {
                row: &next,
                old_version: current.credential.version,
                attachment: Some((kind, target.as_str(), attach)),
            };
            if self.commit(write, change).await?.is_ok() {
                return Ok(CredentialInfo::from(&next));
            }
        }
        Err(VaultError::Store(StoreError::Database("the credential kept changing; try again".into())))
    }

    // ------------------------------------------------------------------
    // Master key rotation
    // ------------------------------------------------------------------

    /// Rotate the master key without downtime. With `generate`, a new key is
    /// added to the keyring file under the next term and made current (the
    /// old terms stay, so every replica keeps opening old blobs); without,
    /// the keyring's current term (which the operator changed) is used.
    /// Then every data key still wrapped under another term is re-wrapped,
    /// row by row, each write conditional on the blob being unchanged, so
    /// concurrent updates are never overwritten. Safe to run again after an
    /// interruption. Replicas that meet the new term reload their keyring.
    pub async fn rotate_master_key(&self, generate: bool, actor: &str) -> Result<RotationReport, VaultError> {
        if generate {
            let file = self.keys.writable_file().ok_or_else(|| {
                VaultError::KeySetup(
                    "the master key comes from LATCHKEY_MASTER_KEY, so Latchkey cannot add a term to it: put the \
                     current key in a keyring file as `1:KEY`, set LATCHKEY_MASTER_KEY=2:NEWKEY (or add `2:NEWKEY` \
                     and `current = 2` to the file), then run `latchkey vault rotate-master-key --no-generate`"
                        .into(),
                )
            })?;
            let term = crypto::add_term_to_keyring_file(file)?;
            tracing::warn!(term, file = %file.display(), "added a new master key term to the keyring file; back it up");
        }
        self.reload_keyring().await?;
        let keyring = self.keyring();
        let term = keyring.current();
        let mut rewrapped = 0u64;
        let mut failed = Vec::new();
        let mut after = String::new();
        loop {
            let batch: Vec<(String, String, String, Vec<u8>, i64)> = on_db!(&self.db, pool => {
                sqlx::query_as(
                    "SELECT id, org, name, secret_blob, secret_version FROM credentials \
                     WHERE key_term <> $1 AND id > $2 ORDER BY id LIMIT 256",
                )
                .bind(i64::from(term))
                .bind(&after)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?
            });
            let Some(last) = batch.last() else { break };
            after = last.0.clone();
            let mut updates = Vec::with_capacity(batch.len());
            for (id, org, name, blob, secret_version) in &batch {
                let aad = CredentialAad {
                    org,
                    credential_id: id,
                    secret_version: u64::try_from(*secret_version).unwrap_or_default(),
                };
                match crypto::rewrap(&keyring, blob, &aad) {
                    Ok(new_blob) => updates.push((id, blob, new_blob)),
                    Err(e) => {
                        tracing::error!(org = %org, credential = %name, code = %e.code(), "could not re-wrap a data key");
                        failed.push((org.clone(), name.clone(), e.code().to_string()));
                    }
                }
            }
            let done = on_db!(&self.db, pool => {
                let mut tx = pool.begin_write().await.map_err(StoreError::from)?;
                let mut n = 0u64;
                for (id, old, new) in &updates {
                    n += sqlx::query(
                        "UPDATE credentials SET secret_blob = $1, key_term = $2 WHERE id = $3 AND secret_blob = $4",
                    )
                    .bind(new)
                    .bind(i64::from(term))
                    .bind(*id)
                    .bind(*old)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected();
                }
                tx.commit().await.map_err(StoreError::from)?;
                n
            });
            rewrapped += done;
        }
        rewrap_audit_salt(&self.db, &keyring).await?;
        let by_term = self.credentials_by_term().await?;
        let change = Change {
            org: KEY_CHECK_ORG,
            credential: "*",
            action: AuditAction::Rewrap,
            actor,
            version: None,
            detail: Some(format!(
                "{rewrapped} data keys re-wrapped to master key term {term}; {} failed",
                failed.len()
            )),
        };
        let at = OffsetDateTime::now_utc();
        on_db!(&self.db, pool => {
            insert_change_event!(pool, to_micros(at), change).map_err(StoreError::from)?;
        });
        audit::emit(&change.event(at));
        // Cached blobs under the old term still open while it is in the
        // keyring; start from fresh rows anyway.
        self.cache.clear();
        Ok(RotationReport { term, generated: generate, rewrapped, by_term, failed })
    }

    /// How many credentials are wrapped under each master key term.
    pub async fn credentials_by_term(&self) -> Result<BTreeMap<u32, u64>, VaultError> {
        let rows: Vec<(i64, i64)> = on_db!(&self.db, pool => {
            sqlx::query_as("SELECT key_term, COUNT(*) FROM credentials GROUP BY key_term")
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?
        });
        Ok(rows
            .into_iter()
            .map(|(t, n)| (u32::try_from(t).unwrap_or_default(), u64::try_from(n).unwrap_or_default()))
            .collect())
    }
}

fn has_override(overrides: &Overrides, name: &str) -> bool {
    // An override for the name wins before the vault is read; the model
    // decides exactly, this only avoids a needless decryption.
    overrides.names().any(|n| n == name)
}

/// The keyring from the configured source, or `None` when nothing is
/// configured and no development key file exists.
fn keyring_from_source(keys: &KeySource) -> Result<Option<Keyring>, VaultError> {
    if keys.master_key.is_some() || keys.keyring_file.is_some() {
        return Ok(Some(Keyring::load(keys.master_key.as_deref().map(String::as_str), keys.keyring_file.as_deref())?));
    }
    match &keys.dev_key_file {
        Some(path) if path.exists() => Ok(Some(Keyring::from_file(path)?)),
        _ => Ok(None),
    }
}

async fn count_credentials(db: &Db) -> Result<i64, VaultError> {
    Ok(on_db!(db, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM credentials")
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?
            .first()
            .copied()
            .unwrap_or(0)
    }))
}

/// Load the keyring, creating a development key for a new SQLite vault when
/// no key is configured.
async fn load_keyring(db: &Db, location: &Location, keys: &KeySource) -> Result<(Keyring, KeyOrigin), VaultError> {
    if let Some(ring) = keyring_from_source(keys)? {
        let origin = match (&keys.master_key, &keys.keyring_file, &keys.dev_key_file) {
            (None, None, Some(path)) => KeyOrigin::DevKey(path.clone()),
            _ => KeyOrigin::Configured,
        };
        return Ok((ring, origin));
    }
    let how = "set LATCHKEY_MASTER_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) or \
               LATCHKEY_KEYRING_FILE";
    let path = match (location, &keys.dev_key_file) {
        (Location::SqliteFile(_), Some(path)) => path,
        (Location::Postgres(_), _) => {
            return Err(VaultError::KeySetup(format!(
                "no master key configured: a PostgreSQL vault is shared by replicas, so it needs a real key; {how}"
            )));
        }
        _ => return Err(VaultError::KeySetup(format!("no master key configured; {how}"))),
    };
    let n = count_credentials(db).await?;
    if n > 0 {
        return Err(VaultError::KeySetup(format!(
            "no master key configured, and the vault at {} already holds {n} credential(s) sealed under one; \
             {how} to the key it was created with (a new key would not open them)",
            location.display()
        )));
    }
    let key = crypto::MasterKey::create_dev_key_file(path)?;
    tracing::warn!(
        key_file = %path.display(),
        "NO MASTER KEY CONFIGURED: created a DEVELOPMENT master key file (owner-only). Anyone who can read it can \
         decrypt this vault, and losing it loses every secret. For production, {how}."
    );
    Ok((Keyring::single(key), KeyOrigin::DevKeyCreated(path.clone())))
}

/// Check every term of the keyring against its stored key check, and store a
/// key check for terms that have none, so a wrong key is refused at start-up.
async fn check_key_terms(db: &Db, keyring: &Keyring) -> Result<(), VaultError> {
    let stored: Vec<(i64, Vec<u8>)> = on_db!(db, pool => {
        sqlx::query_as("SELECT term, blob FROM vault_key_checks").fetch_all(pool).await.map_err(StoreError::from)?
    });
    let stored: BTreeMap<u32, Vec<u8>> =
        stored.into_iter().filter_map(|(t, b)| u32::try_from(t).ok().map(|t| (t, b))).collect();
    for term in keyring.terms() {
        match stored.get(&term) {
            Some(blob) => match crypto::open(keyring, blob, &key_check_aad(term)) {
                Ok(_) => {}
                Err(VaultCryptoError::Integrity(_)) => return Err(VaultError::WrongMasterKey { term }),
                Err(e) => return Err(e.into()),
            },
            None => {
                let blob = crypto::seal(&keyring.with_current(term)?, &BTreeMap::new(), &key_check_aad(term))?;
                on_db!(db, pool => {
                    sqlx::query("INSERT INTO vault_key_checks (term, blob) VALUES ($1, $2) ON CONFLICT (term) DO NOTHING")
                        .bind(i64::from(term))
                        .bind(&blob)
                        .execute(pool)
                        .await
                        .map_err(StoreError::from)?;
                });
            }
        }
    }
    let unknown: Vec<u32> = {
        let rows: Vec<(i64,)> = on_db!(db, pool => {
            sqlx::query_as("SELECT DISTINCT key_term FROM credentials").fetch_all(pool).await.map_err(StoreError::from)?
        });
        rows.into_iter().filter_map(|(t,)| u32::try_from(t).ok()).filter(|t| !keyring.contains(*t)).collect()
    };
    if !unknown.is_empty() {
        tracing::warn!(terms = ?unknown, "some credentials are sealed under master key terms the keyring does not hold");
    }
    Ok(())
}

/// The organisation argument of the CLI and API, validated.
pub fn parse_org(org: Option<&str>) -> Result<OrgId, VaultError> {
    match org {
        None => Ok(OrgId::default()),
        Some(o) => Ok(OrgId::parse(o)?),
    }
}

/// The vault is shared across tasks.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<Vault>();
};

/// The associated data the audit salt is sealed under.
const AUDIT_SALT_AAD: CredentialAad<'static> =
    CredentialAad { org: KEY_CHECK_ORG, credential_id: "audit-salt", secret_version: 1 };

/// The installation's audit salt: created once (32 random bytes) by the
/// first process that opens the vault, sealed under the master keyring like
/// a credential (so a copy of the database alone cannot test guesses against
/// fingerprints); every later process and replica opens the same row. Never
/// logged.
async fn load_audit_salt(db: &Db, keyring: &Keyring) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
    let mut fresh = zeroize::Zeroizing::new(vec![0u8; 32]);
    SystemRandom::new().fill(&mut fresh).map_err(|_| VaultCryptoError::Crypto("the random number generator failed"))?;
    let fields = BTreeMap::from([("salt".to_string(), Secret::new(hex::encode(&fresh[..])))]);
    let sealed = crypto::seal(keyring, &fields, &AUDIT_SALT_AAD)?;
    let blob: Vec<u8> = on_db!(db, pool => {
        sqlx::query("INSERT INTO installation (key, value) VALUES ('audit_salt', $1) ON CONFLICT (key) DO NOTHING")
            .bind(&sealed)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
        sqlx::query_scalar("SELECT value FROM installation WHERE key = 'audit_salt'")
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?
    });
    let opened = crypto::open(keyring, &blob, &AUDIT_SALT_AAD)?;
    let hex_salt = opened.get("salt").ok_or(VaultCryptoError::Crypto("the audit salt row holds no salt"))?;
    let salt = hex::decode(hex_salt.expose()).map_err(|_| VaultCryptoError::Crypto("the audit salt is not hex"))?;
    Ok(zeroize::Zeroizing::new(salt))
}

/// Re-wrap the audit salt under the keyring's current term (master key
/// rotation), so it opens once the old term is retired. A vault that has
/// recorded no use yet has no salt: nothing to re-wrap.
async fn rewrap_audit_salt(db: &Db, keyring: &Keyring) -> Result<(), VaultError> {
    // `fetch_all`, not `fetch_optional`, so SQLite keeps no read snapshot open.
    let blob: Option<Vec<u8>> = on_db!(db, pool => {
        sqlx::query_scalar("SELECT value FROM installation WHERE key = 'audit_salt'")
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?
            .pop()
    });
    let Some(blob) = blob else { return Ok(()) };
    let new = crypto::rewrap(keyring, &blob, &AUDIT_SALT_AAD)?;
    on_db!(db, pool => {
        sqlx::query("UPDATE installation SET value = $1 WHERE key = 'audit_salt' AND value = $2")
            .bind(&new)
            .bind(&blob)
            .execute(pool)
            .await
            .map_err(StoreError::from)?;
    });
    Ok(())
}

/// Run `f` (plugin validation calls) without holding an async worker: on a
/// multi-threaded runtime the worker's other tasks move to another thread
/// while `f` runs (`block_in_place`); elsewhere (the CLI's single-threaded
/// runtime, tests) there are no other tasks to keep waiting.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
