//! Resolving a credential for a call from a vault of 100 000 credentials,
//! against a bare hash-map lookup measured in the same run.
//!
//! - `vault_resolve/hashmap_lookup`: the reference, a `HashMap<String,
//!   Vec<u8>>` of 100 000 secrets looked up by name.
//! - `vault_resolve/warm`: `Vault::resolve` with every name in the in-process
//!   cache. The cache holds sealed blobs, never plaintext, so a hit still
//!   opens the blob (unwrap the data key, decrypt the fields: two AES-256-GCM
//!   opens) and runs the resolution layers.
//! - `vault_resolve/miss`: `Vault::forget` then `Vault::resolve`: the row and
//!   its attachments are read from SQLite, decoded, cached, then opened as
//!   above.
//! - `vault_resolve/decrypt`: `crypto::open` of one credential's blob alone,
//!   the part of a hit spent decrypting.
//! - `vault_resolve/snapshot_warm`: the call path's step 2 as the proxy and
//!   `/v1/sign` take it, `Broker::open` for an agent attached to every
//!   credential: the cached record, the attachment check, the
//!   call-independent state kept with the record since an earlier call
//!   (plugin, config, template key), and the secrets opened for this call
//!   (one `crypto::open`; no plaintext outlives its call).
//!
//! A hit never waits, so each measured call is polled once, with no async
//! runtime around it (`ready`); a call that would wait fails the bench.
//!
//! Every measurement cycles through all 100 000 names in a scattered order
//! (a stride permutation), so neither the hash maps nor SQLite's pages are
//! walked sequentially.
//!
//! Loading 100 000 credentials through `Vault::create` would validate each
//! through its plugin and commit each in its own fsync'd transaction, so the
//! set-up opens a vault once (migrations, key check), closes it, inserts the
//! rows directly in one transaction with their secrets sealed exactly as the
//! vault seals them, and opens the vault again on the file. The secrets are
//! generated (`sk-bench-000042`) and checked before anything is timed.
//!
//! `cargo xtask bench` runs this and writes the ratios to BENCHMARKS.md.

// `criterion_group!` generates undocumented items.
#![allow(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey::Secret;
use latchkey::broker::{Broker, Caller};
use latchkey::plugin::{Runtime, RuntimeConfig};
use latchkey::vault::crypto::{self, CredentialAad, Keyring, MasterKey};
use latchkey::vault::model::{Layer, Overrides};
use latchkey::vault::{KeySource, Location, Vault, VaultOptions};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use zeroize::Zeroizing;

const N: usize = 100_000;
const ORG: &str = "default";
const AGENT: &str = "bench-agent";

/// The output of a future that is ready when first polled; a future that
/// would wait is a bug in what is measured (a cache hit never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a warm call had to wait"),
    }
}
/// Coprime with `N` (100 000 = 2⁵·5⁵), so `k * STRIDE % N` visits every name.
const STRIDE: usize = 7_919;

fn name(i: usize) -> String {
    format!("cred-{i:06}")
}

fn secret(i: usize) -> String {
    format!("sk-bench-{i:06}")
}

/// The names in the order every measurement visits them.
fn visit_order() -> Vec<String> {
    (0..N).map(|k| name(k * STRIDE % N)).collect()
}

/// One stored credential's identity and sealed secrets, kept for the
/// `decrypt` measurement.
struct Sealed {
    id: String,
    blob: Vec<u8>,
}

/// Insert `N` api-key credentials straight into the vault's tables, in one
/// transaction, sealed under `keyring` exactly as `Vault::create` seals them.
async fn bulk_load(path: &Path, keyring: &Keyring) -> Vec<Sealed> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        // A throw-away file: no fsync for the load.
        .synchronous(SqliteSynchronous::Off)
        .connect()
        .await
        .expect("connect for the bulk load");
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap();
    let rng = SystemRandom::new();
    let mut sealed = Vec::with_capacity(N);
    let mut tx = conn.begin().await.unwrap();
    for i in 0..N {
        let mut raw_id = [0u8; 16];
        rng.fill(&mut raw_id).unwrap();
        let id = hex::encode(raw_id);
        let fields: BTreeMap<String, Secret> = [("key".to_string(), Secret::new(secret(i)))].into();
        let blob = crypto::seal(keyring, &fields, &CredentialAad { org: ORG, credential_id: &id, secret_version: 1 })
            .expect("seal");
        sqlx::query(
            "INSERT INTO credentials (id, org, name, scheme, config, secret_fields, secret_blob, secret_version, \
             key_term, enabled, destinations, created_at, updated_at, last_used_at, version) \
             VALUES ($1, $2, $3, 'api-key', '[[\"prefix\",\"Bearer \"]]', '[\"key\"]', $4, 1, $5, 1, \
             '[\"api.example.com\"]', $6, $6, NULL, 1)",
        )
        .bind(&id)
        .bind(ORG)
        .bind(name(i))
        .bind(&blob)
        .bind(i64::from(keyring.current()))
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("insert");
        // Every credential is attached to the agent the call-path bench uses.
        sqlx::query("INSERT INTO credential_attachments (credential_id, kind, name) VALUES ($1, 'agent', $2)")
            .bind(&id)
            .bind(AGENT)
            .execute(&mut *tx)
            .await
            .expect("insert attachment");
        sealed.push(Sealed { id, blob });
    }
    tx.commit().await.unwrap();
    conn.close().await.unwrap();
    sealed
}

async fn open_vault(path: &Path, master_key: &Zeroizing<String>, runtime: &Arc<Runtime>) -> Vault {
    let keys = KeySource { master_key: Some(master_key.clone()), ..KeySource::default() };
    // No change feed: nothing else writes this file.
    Vault::open(VaultOptions::new(Location::SqliteFile(path.to_path_buf()), keys), runtime.clone())
        .await
        .expect("open the vault")
}

/// The secret `vault` resolves `name` to, checked to come from the vault.
async fn resolved_secret(vault: &Vault, name: &str) -> String {
    let r = vault.resolve(ORG, name, &Overrides::new()).await.expect("resolve");
    assert_eq!(r.resolved.layer, Layer::Vault, "{name} resolved from another layer");
    r.resolved.secrets["key"].expose().to_string()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.db");
    let key = MasterKey::generate().unwrap();
    let master_key = key.to_base64();
    let keyring = Keyring::single(key);
    let plugins = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());

    let started = std::time::Instant::now();
    let (vault, sealed, agent) = rt.block_on(async {
        // Migrations and the key check, then the rows, then the vault proper.
        open_vault(&path, &master_key, &plugins).await.close().await;
        let sealed = bulk_load(&path, &keyring).await;
        let vault = open_vault(&path, &master_key, &plugins).await;

        // Correctness before timing: the first, the last and scattered names
        // resolve to exactly the secret sealed for them, and an unknown name
        // resolves to nothing.
        let mut probe = 0x9e37_79b9_u64;
        let mut picks = vec![0, 1, N / 2, N - 1];
        for _ in 0..16 {
            probe ^= probe << 13;
            probe ^= probe >> 7;
            probe ^= probe << 17;
            picks.push(usize::try_from(probe % N as u64).unwrap());
        }
        for i in picks {
            assert_eq!(resolved_secret(&vault, &name(i)).await, secret(i), "credential {i} mixed up");
        }
        assert!(vault.resolve(ORG, "cred-missing", &Overrides::new()).await.is_err());

        // Warm the cache with every name, checking each secret on the way.
        for n in visit_order() {
            let want = format!("sk-bench-{}", n.strip_prefix("cred-").unwrap());
            assert_eq!(resolved_secret(&vault, &n).await, want);
        }
        let agent = vault.create_agent(ORG, AGENT, "bench").await.expect("create the agent").agent;
        (Arc::new(vault), sealed, agent)
    });
    // The call path, warmed with every name (each checked), as a running
    // broker is after one call per credential.
    let broker = Broker::new(vault.clone(), plugins.clone());
    let caller = Caller::Agent(agent);
    rt.block_on(async {
        for n in visit_order() {
            let ticket = broker.open(&caller, &n, &Overrides::new(), None).await.expect("open");
            let want = format!("sk-bench-{}", n.strip_prefix("cred-").unwrap());
            assert_eq!(ticket.call_credential().secret("key").unwrap().expose(), want);
        }
    });
    assert!(vault.cached() >= N, "the cache should hold every name");
    eprintln!("vault bench: {N} credentials loaded, checked and cached in {:.1?}", started.elapsed());

    let names = visit_order();
    let overrides = Overrides::new();
    let mut g = c.benchmark_group("vault_resolve");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));

    let map: HashMap<String, Vec<u8>> = (0..N).map(|i| (name(i), secret(i).into_bytes())).collect();
    g.bench_function("hashmap_lookup", |b| {
        let mut k = 0;
        b.iter(|| {
            let n = &names[k % N];
            k += 1;
            black_box(map.get(black_box(n.as_str())))
        })
    });

    g.bench_function("warm", |b| {
        let mut k = 0;
        b.iter(|| {
            let n = &names[k % N];
            k += 1;
            black_box(ready(vault.resolve(ORG, black_box(n), &overrides)).unwrap())
        })
    });

    g.bench_function("snapshot_warm", |b| {
        let mut k = 0;
        b.iter(|| {
            let n = &names[k % N];
            k += 1;
            black_box(ready(broker.open(&caller, black_box(n), &overrides, None)).unwrap())
        })
    });

    g.bench_function("miss", |b| {
        let mut k = 0;
        b.iter(|| {
            let n = &names[k % N];
            k += 1;
            vault.forget(ORG, n);
            black_box(rt.block_on(vault.resolve(ORG, black_box(n), &overrides)).unwrap())
        })
    });

    g.bench_function("decrypt", |b| {
        let mut k = 0;
        b.iter(|| {
            let s = &sealed[(k % N) * STRIDE % N];
            k += 1;
            let aad = CredentialAad { org: ORG, credential_id: &s.id, secret_version: 1 };
            black_box(crypto::open(&keyring, black_box(&s.blob), &aad).unwrap())
        })
    });
    g.finish();

    rt.block_on(vault.close());
}

criterion_group!(benches, bench);
criterion_main!(benches);
