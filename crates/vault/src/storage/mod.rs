//! Storage: one set of SQL statements over two backends, SQLite (the embedded
//! default) and PostgreSQL (shared by several replicas).
//!
//! Every statement is written once, with `$1`-style placeholders that both
//! SQLite and PostgreSQL accept, and [`on_db!`] expands it for each backend's
//! pool and row type. The schema lives in `crates/vault/migrations/{sqlite,postgres}`
//! and is applied by `sqlx::migrate!` when a vault opens.
//!
//! Durability: SQLite runs in WAL mode with `synchronous=FULL`, so a
//! transaction acknowledged by `COMMIT` survives a crash of the process or
//! the machine; write transactions start with `BEGIN IMMEDIATE`, so a
//! read-then-write transaction never fails half-way on a lock upgrade.
//! PostgreSQL gives the same with its defaults. The audit writer alone has
//! its own, relaxed connection (`crate::audit`).
//!
//! Nothing here decrypts: rows carry the sealed blob, and `credentials::service`
//! opens it only for a call that needs it.

pub(crate) mod cache;
pub(crate) mod feed;

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;

use crate::credentials::model::{Attachments, Credential, CredentialName, Destination, OrgId};

/// The two backends. Cloning shares the pool.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to the backend's pool. The body is compiled
/// once per backend, so the same SQL text and row handling serve both.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::storage::Db::Sqlite($pool) => $body,
            $crate::storage::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// Insert the change record of `$name` in `$org` at `$at` on the executor
/// `$conn` (the change's own transaction): what every replica's feed reads
/// to invalidate its caches. Evaluates to `Result<_, sqlx::Error>`.
macro_rules! insert_change_record {
    ($conn:expr, $org:expr, $name:expr, $at:expr) => {
        sqlx::query("INSERT INTO vault_changes (org, name, at) VALUES ($1, $2, $3)")
            .bind($org)
            .bind($name)
            .bind($at)
            .execute($conn)
            .await
    };
}
pub(crate) use insert_change_record;

/// A storage failure, already stripped of anything but the database's own
/// message (sqlx errors never carry bound values; ours bind ciphertext,
/// names and times only).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("vault database: {0}")]
    Database(String),
    /// A migration failed.
    #[error("vault database migration failed: {0}")]
    Migration(String),
    /// A unique key was violated (a credential of that name exists).
    #[error("unique key violated")]
    Unique,
    /// A stored row does not decode: the database was edited by hand or by
    /// a newer version.
    #[error("vault row {0} is malformed: {1}")]
    Corrupt(String, String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if let Some(db) = e.as_database_error()
            && db.is_unique_violation()
        {
            return StoreError::Unique;
        }
        StoreError::Database(e.to_string())
    }
}

/// Microseconds since the Unix epoch: the stored form of every time.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Where the vault lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// An SQLite file (created with its folder when missing).
    SqliteFile(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://…`). `?options=-c search_path=…` selects a schema.
    Postgres(String),
}

impl Location {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; `sqlite://` URLs
    /// and anything else name an SQLite file.
    pub fn from_url(url: &str) -> Location {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Location::Postgres(url.to_string())
        } else {
            let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
            Location::SqliteFile(path.into())
        }
    }

    /// The backend's name, for messages and `/readyz`.
    pub fn backend(&self) -> &'static str {
        match self {
            Location::SqliteFile(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        }
    }

    /// What to show an operator: the file, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::SqliteFile(p) => p.display().to_string(),
            Location::Postgres(url) => redact_url(url),
        }
    }
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "[unparseable database URL]".into(),
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// Connect and run the migrations.
    pub(crate) async fn connect(location: &Location) -> Result<Db, StoreError> {
        match location {
            Location::SqliteFile(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_private_dir(dir)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                // A connection to a local file does not drop the way a
                // server's does: no ping before each checkout (it was a
                // round trip to the connection's worker on every read).
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .min_connections(1)
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await
                    .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
                restrict_file(path);
                SQLITE_MIGRATIONS.run(&pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;
                Ok(Db::Sqlite(pool))
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Database(format!("{}: {e}", redact_url(url))))?;
                // One direct connection first: the pool retries a refused
                // connection until its timeout and then reports only "pool
                // timed out", where this says "Connection refused" (or the
                // server's authentication error) at once.
                {
                    use sqlx::Connection as _;
                    let probe = sqlx::PgConnection::connect_with(&options)
                        .await
                        .map_err(|e| StoreError::Database(format!("{}: {e}", redact_url(url))))?;
                    let _ = probe.close().await;
                }
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|e| StoreError::Database(format!("{}: {e}", redact_url(url))))?;
                POSTGRES_MIGRATIONS.run(&pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// Close every connection.
    pub(crate) async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }

    /// A cheap round trip, for readiness checks.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(Into::into))
    }
}

/// Create `dir` (and parents) with mode 0700 on unix when it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| StoreError::Database(format!("cannot create {}: {e}", dir.display())))
}

/// The database file holds ciphertext only, but names, destinations and the
/// audit trail are nobody else's business either: owner-only, like the key.
fn restrict_file(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "could not make the vault file owner-only");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Begin a write transaction: `BEGIN IMMEDIATE` on SQLite (take the write
/// lock before the first read), a plain `BEGIN` on PostgreSQL.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// A credential row: the public record, the sealed secrets and their binding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredCredential {
    pub id: String,
    pub credential: Credential,
    pub blob: Vec<u8>,
    pub secret_version: u64,
    pub key_term: u32,
    pub last_used_at: Option<OffsetDateTime>,
    /// What the call path derived from this row and its opened secrets,
    /// kept as long as the row is cached (see [`Memo`]).
    pub memo: Memo,
}

/// One value the call path derives from a cached row and keeps with it
/// (its plugin, config, output-template key, derived signing keys, audit
/// fingerprint: never a secret value, which each call opens for itself),
/// so a call with an unchanged credential does not derive them again. It
/// lives exactly as long as the row's cache entry: any change to the
/// credential, a master-key rotation or a change feed outage drops the
/// entry, and with it the value, once the calls holding it finish. A row
/// read afresh starts empty. Type-erased: the vault does not know the call
/// path's types. A memo is not part of the row, so it is never compared or
/// copied.
#[derive(Default)]
pub(crate) struct Memo(std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl Memo {
    pub(crate) fn get<T: std::any::Any + Send + Sync>(&self) -> Option<std::sync::Arc<T>> {
        self.0.get().cloned().and_then(|v| v.downcast::<T>().ok())
    }

    /// Keep `value` unless a value is kept already; either way, the kept one.
    pub(crate) fn set<T: std::any::Any + Send + Sync>(&self, value: std::sync::Arc<T>) -> std::sync::Arc<T> {
        let kept = self.0.get_or_init(|| value.clone());
        kept.clone().downcast::<T>().unwrap_or(value)
    }
}

impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Memo) -> bool {
        true
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Memo(kept)" } else { "Memo(empty)" })
    }
}

/// The columns every credential read selects, in [`decode_row`]'s order.
pub(crate) const CREDENTIAL_COLUMNS: &str = "id, org, name, scheme, config, secret_fields, secret_blob, secret_version, \
     key_term, enabled, destinations, created_at, updated_at, last_used_at, version";

fn corrupt(id: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(id.to_string(), what.to_string())
}

/// Decode a row selected with [`CREDENTIAL_COLUMNS`] (attachments are read
/// separately).
pub(crate) fn decode_row<R>(row: &R) -> Result<StoredCredential, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get(0)?;
    let text = |i: usize| -> Result<String, StoreError> { Ok(row.try_get::<String, _>(i)?) };
    let int = |i: usize| -> Result<i64, StoreError> { Ok(row.try_get::<i64, _>(i)?) };
    let name = CredentialName::parse(&text(2)?).map_err(|e| corrupt(&id, e))?;
    let org = OrgId::parse(&text(1)?).map_err(|e| corrupt(&id, e))?;
    let config: Vec<(String, String)> = serde_json::from_str(&text(4)?).map_err(|e| corrupt(&id, e))?;
    let secret_fields: BTreeSet<String> = serde_json::from_str(&text(5)?).map_err(|e| corrupt(&id, e))?;
    let destinations: Vec<Destination> = serde_json::from_str(&text(10)?).map_err(|e| corrupt(&id, e))?;
    let credential = Credential {
        name,
        org,
        scheme: text(3)?,
        config,
        secret_fields,
        enabled: row.try_get::<bool, _>(9)?,
        destinations,
        attachments: Attachments::default(),
        created_at: from_micros(int(11)?),
        updated_at: from_micros(int(12)?),
        version: u64::try_from(int(14)?).map_err(|e| corrupt(&id, e))?,
    };
    Ok(StoredCredential {
        blob: row.try_get(6)?,
        secret_version: u64::try_from(int(7)?).map_err(|e| corrupt(&id, e))?,
        key_term: u32::try_from(int(8)?).map_err(|e| corrupt(&id, e))?,
        last_used_at: row.try_get::<Option<i64>, _>(13)?.map(from_micros),
        credential,
        id,
        memo: Memo::default(),
    })
}

/// The JSON columns of a credential.
pub(crate) struct JsonColumns {
    pub config: String,
    pub secret_fields: String,
    pub destinations: String,
}

impl JsonColumns {
    pub(crate) fn of(c: &Credential) -> JsonColumns {
        // Serialising strings and string pairs cannot fail.
        let json = |v: Result<String, serde_json::Error>| v.unwrap_or_else(|_| "[]".into());
        JsonColumns {
            config: json(serde_json::to_string(&c.config)),
            secret_fields: json(serde_json::to_string(&c.secret_fields)),
            destinations: json(serde_json::to_string(&c.destinations)),
        }
    }
}

/// Fill `credential.attachments` from attachment rows `(kind, name)`.
pub(crate) fn set_attachments(credential: &mut Credential, rows: impl IntoIterator<Item = (String, String)>) {
    for (kind, name) in rows {
        match kind.as_str() {
            "agent" => credential.attachments.agents.insert(name),
            "route" => credential.attachments.routes.insert(name),
            _ => false,
        };
    }
}

/// Convert a stored `u64` count to the `i64` both databases store.
pub(crate) fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
