//! Durability and reconciliation: a writer killed with SIGKILL in the middle
//! of a burst loses nothing it acknowledged and leaves nothing half-written;
//! a replica whose change feed connection is cut reconciles.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use latchkey::Secret;
use latchkey::vault::model::{Overrides, RawCredential};
use latchkey::vault::{AuditAction, AuditFilter, KeySource, Location, Vault, VaultOptions};
use zeroize::Zeroizing;

use crate::db::{Backend, TestDb, runtime};

/// Set in the child process: `backend\nlocation\nkey`.
const CHILD_ENV: &str = "LATCHKEY_TEST_BURST_CHILD";
/// Acknowledged operations before the parent kills the child.
const KILL_AFTER: usize = 60;

fn secret_for(name: &str, round: u32) -> String {
    format!("sk-burst-{name}-r{round}-7f3a")
}

fn raw(name: &str, key: &str) -> RawCredential {
    let mut raw = RawCredential::new(name, "api-key");
    raw.secrets = BTreeMap::from([("key".to_string(), Secret::new(key))]);
    raw.destinations = vec!["api.example.com".into()];
    raw
}

/// The writer. A no-op in a normal test run; the crash test runs this test
/// binary again with [`CHILD_ENV`] set, and it writes until killed: creates,
/// and every third operation a rotation of an earlier credential. It prints
/// `BEGIN <name> <round>` before each write and `ACK <name> <round>` once
/// the write returned (was committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.lines();
    let (_backend, location, key) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let keys = KeySource { master_key: Some(Zeroizing::new(key.to_string())), ..KeySource::default() };
    let vault = Vault::open(VaultOptions::new(Location::from_url(location), keys), runtime()).await.unwrap();
    let mut rounds: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0.. {
        let (name, round) = if i % 3 == 2 {
            // The credential created by the previous operation.
            let name = format!("c{:04}", i - 1);
            let r = rounds.get(&name).copied().unwrap_or(0) + 1;
            (name, r)
        } else {
            (format!("c{i:04}"), 0)
        };
        let key = secret_for(&name, round);
        println!("BEGIN {name} {round}");
        if round == 0 {
            vault.create(raw(&name, &key), "burst").await.unwrap();
        } else {
            let secrets = BTreeMap::from([("key".to_string(), Secret::new(&key))]);
            vault.rotate("default", &name, secrets, BTreeSet::new(), "burst").await.unwrap();
        }
        rounds.insert(name.clone(), round);
        println!("ACK {name} {round}");
    }
}

vault_tests! {
    sigkill_mid_burst => sigkill_mid_burst;
    sigkill_mid_master_key_rotation => sigkill_mid_master_key_rotation;
}

async fn sigkill_mid_burst(db: &TestDb) {
    let location = match &db.location {
        Location::SqliteFile(p) => p.display().to_string(),
        Location::Postgres(url) => url.clone(),
    };
    // Create the schema first, so the child's start-up is only writes.
    db.open().await.close().await;
    let spec = format!("{:?}\n{location}\n{}", db.backend, db.key.as_str());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["vault_crash::burst_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: BTreeMap<String, u32> = BTreeMap::new();
    let mut in_flight: Option<(String, u32)> = None;
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut acks = 0;
    while acks < KILL_AFTER {
        let line = lines.next().expect("child ended early").unwrap();
        assert!(started.elapsed() < Duration::from_secs(120), "the burst is too slow");
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("BEGIN"), Some(name), Some(round)) => in_flight = Some((name.into(), round.parse().unwrap())),
            (Some("ACK"), Some(name), Some(round)) => {
                acked.insert(name.into(), round.parse().unwrap());
                in_flight = None;
                acks += 1;
            }
            _ => {}
        }
    }
    // SIGKILL while the child is in the middle of its next write.
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the child began before dying may or may not have committed.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("BEGIN ") {
            let mut w = rest.split_whitespace();
            in_flight = Some((w.next().unwrap().into(), w.next().unwrap().parse().unwrap()));
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let mut w = rest.split_whitespace();
            acked.insert(w.next().unwrap().into(), w.next().unwrap().parse().unwrap());
            in_flight = None;
        }
    }

    integrity_check_after_the_kill(db).await;
    let vault = db.open().await;
    // Every acknowledged write is there and opens to the acknowledged value
    // (or to the one write in flight, if it committed before the kill).
    for (name, round) in &acked {
        let r = vault.resolve("default", name, &Overrides::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = r.resolved.secrets["key"].expose().to_string();
        let in_flight_value = in_flight.as_ref().filter(|(n, _)| n == name).map(|(n, r)| secret_for(n, *r));
        assert!(
            got == secret_for(name, *round) || Some(&got) == in_flight_value.as_ref(),
            "{name}: acknowledged round {round} lost"
        );
    }
    // Nothing half-written: every stored row opens, and its version equals
    // the number of its audit events (each change and its event commit together).
    let all = vault.list(None).await.unwrap();
    assert!(all.len() >= acked.len());
    assert!(all.len() <= acked.len() + 1, "at most the in-flight create may have landed unacknowledged");
    let audit = vault.audit(&AuditFilter { limit: Some(100_000), ..AuditFilter::default() }).await.unwrap();
    for info in &all {
        let name = info.credential.name.as_str();
        vault.resolve("default", name, &Overrides::new()).await.unwrap_or_else(|e| panic!("{name} unreadable: {e}"));
        let events =
            audit.iter().filter(|e| e.credential == name && matches!(e.action.as_str(), "create" | "rotate")).count()
                as u64;
        assert_eq!(events, info.credential.version, "{name}: a change without its audit event (or the reverse)");
        assert_eq!(info.secret_version, info.credential.version);
    }
    let creates = audit.iter().filter(|e| e.action == AuditAction::Create.as_str()).count();
    assert_eq!(creates, all.len());
    eprintln!(
        "sigkill ({:?}): {} acknowledged writes over {} credentials, all intact; in flight at the kill: {:?}",
        db.backend,
        KILL_AFTER,
        acked.len(),
        in_flight
    );
    vault.close().await;
}

/// Credentials in the vault the rotation test kills part-way: six batches of
/// the rotation's 256 rows.
const ROTATED: usize = 1_500;
/// Re-wrap statements the rotation has logged when it is killed: past its
/// first batch's commit, so the kill lands between or inside later ones.
const KILL_AT_UPDATE: usize = 300;

/// `latchkey` on the test's database with the keyring file, all other
/// configuration cleared.
fn cli(db: &TestDb, keyring: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env("LATCHKEY_DATA_DIR", db.path())
        .env("LATCHKEY_KEYRING_FILE", keyring)
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_ORG");
    if let Some(url) = &db.url {
        c.env("LATCHKEY_DATABASE_URL", url);
    }
    c
}

/// THREATS.md case 4: `latchkey vault rotate-master-key` on a vault of
/// [`ROTATED`] credentials, killed with SIGKILL once it has logged
/// [`KILL_AT_UPDATE`] re-wrap statements (read from its debug log, so the
/// kill always lands part-way: the log is a pipe the test stops reading, and
/// the job cannot write far past it). Then every row still opens, some under
/// each term, and running the rotation again (`--no-generate`: the new term
/// is already in the keyring file) completes it, the audit salt included.
async fn sigkill_mid_master_key_rotation(db: &TestDb) {
    let keyring = db.path().join("keyring");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        writeln!(f.open(&keyring).unwrap(), "1:{}", db.key.as_str()).unwrap();
    }
    let mut options = db.options();
    options.keys = KeySource { keyring_file: Some(keyring.clone()), ..KeySource::default() };
    let vault = Vault::open(options.clone(), runtime()).await.unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..ROTATED {
        let name = format!("r{i:04}");
        let key = format!("sk-rotate-{i}-{}", crate::db::suffix());
        vault.create(raw(&name, &key), "test").await.unwrap();
        expected.insert(name, key);
    }
    let probe = BTreeMap::from([("key".to_string(), Secret::new("probe-value"))]);
    let fingerprint = vault.fingerprint(&probe).await.unwrap();
    vault.close().await;

    let mut child = cli(db, &keyring)
        .args(["vault", "rotate-master-key"])
        .env("LATCHKEY_LOG", "warn,sqlx::query=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut updates = 0;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while updates < KILL_AT_UPDATE {
        let line = lines.next().expect("the rotation ended before the kill").unwrap();
        updates += usize::from(line.contains("UPDATE credentials SET"));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the rotation finished before the kill");
    drop(lines);

    integrity_check_after_the_kill(db).await;
    // Part-way: rows under both terms; every one opens to its own secret.
    let vault = Vault::open(options.clone(), runtime()).await.unwrap();
    let killed_at = vault.credentials_by_term().await.unwrap();
    assert!(killed_at.get(&2).is_some_and(|&n| n >= 256), "the first batch did not commit: {killed_at:?}");
    assert!(killed_at.get(&1).is_some_and(|&n| n > 0), "the kill came after the rotation: {killed_at:?}");
    assert_eq!(killed_at.values().sum::<u64>(), ROTATED as u64);
    for (name, key) in &expected {
        let r = vault.resolve("default", name, &Overrides::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.resolved.secrets["key"].expose(), key.as_str(), "{name} opens to another value");
    }
    assert_eq!(vault.fingerprint(&probe).await.unwrap(), fingerprint, "the audit salt is lost");
    vault.close().await;

    // Run again: it completes, re-wrapping only what was left.
    let out = cli(db, &keyring).args(["vault", "rotate-master-key", "--no-generate", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the rerun failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["term"], 2, "{report}");
    assert_eq!(report["rewrapped"], killed_at[&1], "{report}");
    assert_eq!(report["failed"].as_array().map(Vec::len), Some(0), "{report}");

    let vault = Vault::open(options, runtime()).await.unwrap();
    assert_eq!(vault.credentials_by_term().await.unwrap(), BTreeMap::from([(2, ROTATED as u64)]));
    for (name, key) in &expected {
        vault.forget("default", name);
        let r = vault.resolve("default", name, &Overrides::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.resolved.secrets["key"].expose(), key.as_str());
    }
    assert_eq!(vault.fingerprint(&probe).await.unwrap(), fingerprint, "the audit salt changed");
    vault.close().await;
    eprintln!(
        "rotation killed ({:?}) after {KILL_AT_UPDATE} logged re-wraps: {killed_at:?}; the rerun re-wrapped {}",
        db.backend, report["rewrapped"]
    );
}

/// PostgreSQL only: cut replica B's LISTEN connection, change a credential
/// through A while B is deaf, and B still sees the change on its next call
/// (its cache is suspended while the feed is down and cleared when it is
/// back). Then the feed is shown to be back: with the credential in B's
/// cache, a change through A reaches B only by a notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reconciles_after_losing_its_feed() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let mut options = db.options();
    options.watch = true;
    let a = Vault::open(options.clone(), runtime()).await.unwrap();
    let b = Vault::open(options, runtime()).await.unwrap();
    a.create(raw("feed", "sk-feed-1"), "test").await.unwrap();
    cached_on_b(&b, "sk-feed-1").await;

    // Terminate the LISTEN connections on this test's channel (B's and A's),
    // and no other test's.
    let admin = sqlx::PgPool::connect(&std::env::var(crate::db::PG_ENV).unwrap()).await.unwrap();
    let channel = format!("LISTEN \"latchkey_vault_{}\"", db.schema().unwrap());
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&channel)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "no LISTEN connection found to cut");
    // A change while the feed may be down.
    a.rotate("default", "feed", BTreeMap::from([("key".into(), Secret::new("sk-feed-2"))]), BTreeSet::new(), "test")
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        match resolve(&b).await {
            Ok(k) if k == "sk-feed-2" => break,
            Ok(_) if start.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("replica B did not reconcile after losing its feed: {other:?}"),
        }
    }
    // And the feed is back. A suspended cache keeps nothing, so B holding
    // the credential in its cache means B is listening again; from then on
    // B answers from its cache, and only a notification from the feed can
    // make it see A's next change.
    cached_on_b(&b, "sk-feed-2").await;
    a.set_enabled("default", "feed", false, "test").await.unwrap();
    let start = Instant::now();
    while resolve(&b).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(5), "the feed did not come back");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Seen through a live cache (it holds the disabled row), not through a
    // suspended one that reads the database on every call.
    assert!(b.cached() >= 1, "B saw the change only because its cache was suspended again");
    admin.close().await;
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

/// Wait until B resolves `key` from its cache: the entry is filled (a
/// suspended cache fills nothing, and a fill that raced an invalidation is
/// dropped, so this may take more than one resolve).
async fn cached_on_b(b: &Vault, key: &str) {
    let start = Instant::now();
    loop {
        assert_eq!(resolve(b).await.unwrap(), key);
        if b.cached() >= 1 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "B's cache never held the credential: is its feed down?");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn resolve(v: &Vault) -> Result<String, latchkey::vault::VaultError> {
    let r = v.resolve("default", "feed", &Overrides::new()).await?;
    Ok(r.resolved.secrets["key"].expose().to_string())
}

/// Set in the redeeming child process: `location\nkey`.
const REDEEM_ENV: &str = "LATCHKEY_TEST_REDEEM_CHILD";

/// The redeemer. A no-op in a normal test run; [`sigkill_mid_redemption`]
/// runs this test binary again with [`REDEEM_ENV`] set, and it issues and
/// redeems registration tokens until killed, printing `BEGIN <i>` before
/// each redemption and `ACK <i>` once it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_child() {
    let Ok(spec) = std::env::var(REDEEM_ENV) else { return };
    let (location, key) = spec.split_once('\n').unwrap();
    let keys = KeySource { master_key: Some(Zeroizing::new(key.to_string())), ..KeySource::default() };
    let vault = Vault::open(VaultOptions::new(Location::from_url(location), keys), runtime()).await.unwrap();
    for i in 0.. {
        let issued = vault.create_registration_token("default", time::Duration::hours(1), "t").await.unwrap();
        println!("BEGIN {i}");
        vault.redeem_registration_token(issued.token.expose(), "default", &format!("agent-{i:04}")).await.unwrap();
        println!("ACK {i}");
    }
}

vault_tests! {
    sigkill_mid_redemption => sigkill_mid_redemption;
}

/// Case 14 of the threat catalogue: a redemption killed at any point either
/// happened whole (token used, agent created, audit event written) or not at
/// all (token unused, no agent).
async fn sigkill_mid_redemption(db: &TestDb) {
    let location = match &db.location {
        Location::SqliteFile(p) => p.display().to_string(),
        Location::Postgres(url) => url.clone(),
    };
    db.open().await.close().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["vault_crash::redeem_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(REDEEM_ENV, format!("{location}\n{}", db.key.as_str()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0;
    while acked < KILL_AFTER {
        let line = lines.next().expect("child ended early").unwrap();
        if line.starts_with("ACK ") {
            acked += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = acked + lines.map_while(Result::ok).filter(|l| l.starts_with("ACK ")).count();

    let vault = db.open().await;
    let tokens = vault.list_registration_tokens(Some("default")).await.unwrap();
    let agents = vault.list_agents(Some("default")).await.unwrap();
    for t in &tokens {
        assert_eq!(
            t.used_at.is_some(),
            t.agent.is_some(),
            "token {}: used without its agent, or the reverse",
            t.prefix
        );
    }
    let used = tokens.iter().filter(|t| t.used_at.is_some()).count();
    assert_eq!(used, agents.len(), "every agent came from one used token");
    assert!(used == acked || used == acked + 1, "{used} redeemed, {acked} acknowledged");
    assert!(tokens.len() <= used + 1, "at most the token in flight is left unused");
    let audit = vault.audit(&AuditFilter { limit: Some(100_000), ..AuditFilter::default() }).await.unwrap();
    let registered = audit.iter().filter(|e| e.action == AuditAction::Register.as_str()).count();
    assert_eq!(registered, agents.len(), "an agent without its audit event (or the reverse)");
    eprintln!("sigkill mid-redemption ({:?}): {acked} acknowledged, {used} redeemed, all whole", db.backend);
    vault.close().await;
}

/// On SQLite, `PRAGMA integrity_check` of the vault file a killed process left.
async fn integrity_check_after_the_kill(db: &TestDb) {
    if db.backend == Backend::Sqlite {
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", db.path().join("vault.db").display())).await.unwrap();
        let check: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check").fetch_all(&pool).await.unwrap();
        assert_eq!(check, [("ok".to_string(),)], "SQLite integrity check after the kill");
        pool.close().await;
    }
}
