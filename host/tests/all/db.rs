//! Test databases: every vault test runs on SQLite and on PostgreSQL.
//!
//! PostgreSQL is at `LATCHKEY_TEST_POSTGRES_URL`. When the variable is set
//! (`.ci/run` sets it) an unreachable server fails the test loudly; when it
//! is unset, the PostgreSQL half of each test is skipped with a note, so a
//! laptop without PostgreSQL still runs the SQLite half. Each PostgreSQL test
//! gets a schema of its own, dropped afterwards.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use latchkey::vault::crypto::MasterKey;
use latchkey::vault::{AuditSink, KeySource, Location, Vault, VaultOptions};
use latchkey::{Runtime, RuntimeConfig};
use zeroize::Zeroizing;

pub const PG_ENV: &str = "LATCHKEY_TEST_POSTGRES_URL";

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One runtime for every vault test (the built-in schemes validate input).
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"))).clone()
}

/// A fresh, empty vault database and a master key for it.
pub struct TestDb {
    pub backend: Backend,
    pub location: Location,
    /// The data folder (SQLite file, key files); kept for PostgreSQL too.
    pub dir: tempfile::TempDir,
    /// The master key, as `LATCHKEY_MASTER_KEY` would hold it.
    pub key: Zeroizing<String>,
    /// The PostgreSQL URL with the test's schema selected.
    pub url: Option<String>,
    schema: Option<(String, String)>,
}

/// A random lower-case suffix.
pub fn suffix() -> String {
    let mut b = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    hex::encode(b)
}

impl TestDb {
    /// A new database on `backend`, or `None` when PostgreSQL is not
    /// configured (and the test should skip that half).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::generate().unwrap().to_base64();
        match backend {
            Backend::Sqlite => Some(TestDb {
                backend,
                location: Location::SqliteFile(dir.path().join("vault.db")),
                dir,
                key,
                url: None,
                schema: None,
            }),
            Backend::Postgres => {
                let Ok(base) = std::env::var(PG_ENV) else {
                    assert!(
                        std::env::var("CI").is_err(),
                        "{PG_ENV} must be set in CI: the PostgreSQL halves would be skipped"
                    );
                    eprintln!("note: {PG_ENV} is unset; skipping the PostgreSQL half of this test");
                    return None;
                };
                let schema = format!("lk_test_{}", suffix());
                let pool = sqlx::PgPool::connect(&base)
                    .await
                    .unwrap_or_else(|e| panic!("{PG_ENV} is set but PostgreSQL is unreachable: {e}"));
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.expect("create schema");
                pool.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Some(TestDb {
                    backend,
                    location: Location::Postgres(url.clone()),
                    dir,
                    key,
                    url: Some(url),
                    schema: Some((base, schema)),
                })
            }
        }
    }

    /// Options for a vault on this database keyed by `LATCHKEY_MASTER_KEY`.
    pub fn options(&self) -> VaultOptions {
        let keys = KeySource { master_key: Some(self.key.clone()), ..KeySource::default() };
        VaultOptions::new(self.location.clone(), keys)
    }

    /// The file sink [`TestDb::options_with_sink`] configures.
    pub fn sink_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// [`TestDb::options`] with full use events going to [`TestDb::sink_path`]
    /// (rotated at `max_bytes`, `keep` rotated files).
    pub fn options_with_sink(&self, max_bytes: u64, keep: u32) -> VaultOptions {
        let mut options = self.options();
        options.audit.sink = AuditSink::File { path: self.sink_path(), max_bytes, keep };
        options
    }

    /// Every line of the sink, oldest first (rotated files first), parsed as
    /// JSON (a line that does not parse fails the test).
    pub fn sink_lines(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = (1..100)
            .map(|n| PathBuf::from(format!("{}.{n}", self.sink_path().display())))
            .filter(|p| p.exists())
            .collect();
        files.reverse();
        files.push(self.sink_path());
        let mut lines = Vec::new();
        for f in files.iter().filter(|p| p.exists()) {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                lines.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", f.display())));
            }
        }
        lines
    }

    /// Open a vault with [`TestDb::options`].
    pub async fn open(&self) -> Vault {
        Vault::open(self.options(), runtime()).await.expect("open vault")
    }

    /// Run one SQL statement on this database, outside any vault.
    pub async fn execute(&self, sql: &str) {
        match &self.location {
            Location::SqliteFile(p) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", p.display())).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
            }
            Location::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
            }
        }
    }

    /// One integer a query answers, read on this database outside any vault
    /// (what another replica, or the store after a crash, would see).
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.location {
            Location::SqliteFile(p) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", p.display())).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
                n
            }
            Location::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
                n
            }
        }
    }

    /// The PostgreSQL schema of this test.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, s)| s.as_str())
    }

    /// The data folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Drop the PostgreSQL schema (SQLite goes with the temp folder).
    pub async fn cleanup(self) {
        if let Some((base, schema)) = &self.schema
            && let Ok(pool) = sqlx::PgPool::connect(base).await
        {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await;
            pool.close().await;
        }
    }
}

/// Define `$name` as two tests, `sqlite` and `postgres`, each running `$body`
/// (an async fn taking a `TestDb`) on a fresh database of that backend.
#[macro_export]
macro_rules! vault_tests {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = $crate::db::TestDb::new($crate::db::Backend::Sqlite).await.unwrap();
                    super::$body(&db).await;
                    db.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(db) = $crate::db::TestDb::new($crate::db::Backend::Postgres).await else { return };
                    super::$body(&db).await;
                    db.cleanup().await;
                }
            }
        )*
    };
}
