//! Uses at gateway rates: counts in the store (exact under concurrency,
//! pruned after the retention), full events in the sink (JSON lines,
//! rotated by size, no secret).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use latchkey::Secret;
use latchkey::vault::model::{Layer, RawCredential};
use latchkey::vault::{AuditAction, AuditFilter, UseEvent, Vault};

use crate::db::{TestDb, runtime};
use crate::support::canary;

const ORG: &str = "default";

crate::vault_tests! {
    concurrent_uses_are_counted_exactly => concurrent_uses_are_counted_exactly;
    leased_uses_are_committed_before_release => leased_uses_are_committed_before_release;
    a_busy_key_enters_the_next_minute_on_a_lease => a_busy_key_enters_the_next_minute_on_a_lease;
    retention_prunes_old_counts => retention_prunes_old_counts;
    the_file_sink_rotates_and_holds_no_secret => the_file_sink_rotates_and_holds_no_secret;
}

fn use_of(credential: &str, agent: &str, outcome: &str, destination: &str) -> UseEvent {
    UseEvent {
        org: ORG.into(),
        credential: credential.into(),
        agent: Some(agent.into()),
        destination: Some(destination.into()),
        outcome: outcome.into(),
        layer: Some(Layer::Vault),
        version: Some(1),
        fingerprint: None,
    }
}

fn api_key(name: &str, key: &str) -> RawCredential {
    let mut raw = RawCredential::new(name, "api-key");
    raw.secrets = BTreeMap::from([("key".to_string(), Secret::new(key))]);
    raw.destinations = vec!["*.example.com".into()];
    raw
}

/// Sums of counts per (credential, agent, outcome).
async fn counts(vault: &Vault) -> BTreeMap<(String, String, String), u64> {
    let uses = vault
        .audit(&AuditFilter { action: Some(AuditAction::Use), limit: Some(100_000), ..AuditFilter::default() })
        .await
        .unwrap();
    let mut sums = BTreeMap::new();
    for u in uses {
        let key = (u.credential.clone(), u.agent.clone().unwrap_or_default(), u.outcome.clone());
        *sums.entry(key).or_default() += u.count.expect("a use is a count");
    }
    sums
}

async fn concurrent_uses_are_counted_exactly(db: &TestDb) {
    const N: usize = 2_000;
    let vault = Arc::new(db.open().await);
    vault.create(api_key("hot", &canary("hot")), "test").await.unwrap();
    let outcomes = ["ok", "ok", "destination_not_allowed", "credential_disabled", "secret_in_output"];
    let agents = ["a1", "a2", "a3"];
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let vault = vault.clone();
            let outcome = outcomes[i % outcomes.len()];
            let agent = agents[i % agents.len()];
            tokio::spawn(async move {
                let e = use_of("hot", agent, outcome, "api.example.com");
                if outcome == "ok" {
                    vault.record_use_durable(e).await.expect("a released use commits");
                } else {
                    vault.record_use(e);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sums = counts(&vault).await;
    let mut expected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for i in 0..N {
        let key = ("hot".to_string(), agents[i % agents.len()].to_string(), outcomes[i % outcomes.len()].to_string());
        *expected.entry(key).or_default() += 1;
    }
    assert_eq!(sums, expected, "every use counted exactly once, per agent and outcome");
    assert_eq!(sums.values().sum::<u64>(), N as u64);
    assert!(vault.get(ORG, "hot").await.unwrap().last_used_at.is_some());
    // A second vault on the same store (another replica) adds to the same rows.
    let other = db.open().await;
    for _ in 0..10 {
        other.record_use_durable(use_of("hot", "a1", "ok", "api.example.com")).await.unwrap();
    }
    other.close().await;
    let key = ("hot".to_string(), "a1".to_string(), "ok".to_string());
    assert_eq!(counts(&vault).await[&key], expected[&key] + 10);
    vault.close().await;
}

/// A hot key's uses are released on leases committed ahead of them: at
/// every moment the store (read from outside, as after a crash) holds at
/// least the uses released and at most a lease and a half more; a flush
/// gives the unused part back, so a query reads the exact number.
async fn leased_uses_are_committed_before_release(db: &TestDb) {
    use latchkey::vault::audit::LEASE_MAX;
    let vault = db.open().await;
    vault.create(api_key("hot", &canary("hot")), "test").await.unwrap();
    let committed =
        || db.scalar("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM audit_use_counts WHERE outcome = 'ok'");
    let mut released: i64 = 0;
    let mut saw_ahead = false;
    for round in 0..6 {
        for _ in 0..(500 + round * 97) {
            vault.record_use_durable(use_of("hot", "a1", "ok", "api.example.com")).await.unwrap();
            released += 1;
        }
        let in_store = committed().await;
        assert!(in_store >= released, "{released} uses released but only {in_store} committed");
        // In a minute's last seconds the next minute's lease is committed
        // too: at most two and a half leases ahead.
        assert!(
            in_store <= released + (LEASE_MAX as i64) * 5 / 2,
            "{in_store} committed for {released} released: more than two and a half leases ahead"
        );
        saw_ahead |= in_store > released;
    }
    assert!(saw_ahead, "the uses were never committed ahead: no lease was used");
    let key = ("hot".to_string(), "a1".to_string(), "ok".to_string());
    assert_eq!(counts(&vault).await[&key], released as u64, "exact once the unused leases are given back");
    assert_eq!(committed().await, released);
    // Leases start again after the flush, and closing gives them back too.
    for _ in 0..100 {
        vault.record_use_durable(use_of("hot", "a1", "ok", "api.example.com")).await.unwrap();
    }
    vault.close().await;
    assert_eq!(committed().await, released + 100, "closing gave the unused leases back");
}

/// A key still busy in the last seconds of a minute has its next minute's
/// lease committed before that minute starts, so its calls do not begin
/// the minute waiting on commits; the lease is given back unused on close,
/// so the counts stay exact. (Waits for the last seconds of a minute.)
async fn a_busy_key_enters_the_next_minute_on_a_lease(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("turn", &canary("turn")), "test").await.unwrap();
    let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // From 51 s into a minute: inside the writer's lease-ahead window (the
    // last 10 s), with time left before the minute turns.
    let into = unix().as_secs() % 60;
    if into != 51 {
        tokio::time::sleep(Duration::from_secs((51 + 60 - into) % 60)).await;
    }
    let minute_us = |secs: u64| i64::try_from(secs / 60 * 60 * 1_000_000).unwrap();
    let next = minute_us(unix().as_secs()) + 60_000_000;
    let ahead = format!(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM audit_use_counts WHERE credential = 'turn' \
         AND minute = {next}"
    );
    let mut released: i64 = 0;
    let mut before_the_turn = 0;
    while unix().as_secs() % 60 < 57 {
        for _ in 0..200 {
            vault.record_use_durable(use_of("turn", "a1", "ok", "api.example.com")).await.unwrap();
            released += 1;
        }
        before_the_turn = before_the_turn.max(db.scalar(&ahead).await);
    }
    assert!(
        minute_us(unix().as_secs()) < next,
        "the minute turned while checking; the machine is too slow for this test's window"
    );
    assert!(before_the_turn > 0, "no lease for the next minute was committed before it began ({released} uses)");
    vault.close().await;
    let committed = db
        .scalar("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM audit_use_counts WHERE credential = 'turn'")
        .await;
    assert_eq!(committed, released, "closing gave the unused leases back, the next minute's too");
}

async fn retention_prunes_old_counts(db: &TestDb) {
    let mut options = db.options();
    options.audit.retention = Some(Duration::from_secs(30 * 86_400));
    let vault = Vault::open(options, runtime()).await.unwrap();
    vault.create(api_key("kept", &canary("kept")), "test").await.unwrap();
    vault.record_use_durable(use_of("kept", "bot", "ok", "api.example.com")).await.unwrap();
    vault.record_use(use_of("kept", "bot", "credential_disabled", "api.example.com"));
    assert_eq!(counts(&vault).await.values().sum::<u64>(), 2);
    // Rows from 40 days ago: a count, a legacy per-use row, a lifecycle event.
    let old = (time::OffsetDateTime::now_utc() - time::Duration::days(40)).unix_timestamp() * 1_000_000;
    let minute = old - old.rem_euclid(60_000_000);
    db.execute(&format!(
        "INSERT INTO audit_use_counts (org, credential, agent, outcome, minute, count) \
         VALUES ('default', 'kept', 'bot', 'ok', {minute}, 7)"
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO audit_events (at, org, credential, action, agent, outcome) \
         VALUES ({old}, 'default', 'kept', 'use', 'bot', 'ok')"
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO audit_events (at, org, credential, action, actor, outcome) \
         VALUES ({old}, 'default', 'ancient', 'create', 'cli:old', 'ok')"
    ))
    .await;
    let all = vault.audit(&AuditFilter { limit: Some(1000), ..AuditFilter::default() }).await.unwrap();
    assert_eq!(all.iter().filter(|e| e.at.unix_timestamp() * 1_000_000 <= old).count(), 3, "{all:?}");

    assert_eq!(vault.prune_audit().await.unwrap(), 2, "the old count and the old use row");
    let all = vault.audit(&AuditFilter { limit: Some(1000), ..AuditFilter::default() }).await.unwrap();
    let old_ones: Vec<_> = all.iter().filter(|e| e.at.unix_timestamp() * 1_000_000 <= old).collect();
    assert_eq!(old_ones.len(), 1, "{old_ones:?}");
    assert_eq!((old_ones[0].action.as_str(), old_ones[0].credential.as_str()), ("create", "ancient"));
    assert_eq!(counts(&vault).await.values().sum::<u64>(), 2, "recent counts are kept");
    assert_eq!(vault.prune_audit().await.unwrap(), 0);
    vault.close().await;

    // Without a retention (one-shot commands; `forever`) nothing is pruned.
    db.execute(&format!(
        "INSERT INTO audit_use_counts (org, credential, agent, outcome, minute, count) \
         VALUES ('default', 'kept', 'bot', 'ok', {minute}, 7)"
    ))
    .await;
    let vault = db.open().await;
    assert_eq!(vault.prune_audit().await.unwrap(), 0);
    assert_eq!(counts(&vault).await.values().sum::<u64>(), 9);
    vault.close().await;
}

async fn the_file_sink_rotates_and_holds_no_secret(db: &TestDb) {
    const MAX: u64 = 4096;
    const N: usize = 200;
    let vault = Vault::open(db.options_with_sink(MAX, 2), runtime()).await.unwrap();
    let secret = canary("sink");
    vault.create(api_key("logged", &secret), "test").await.unwrap();
    let fp = vault.fingerprint(&BTreeMap::from([("key".to_string(), Secret::new(secret.as_str()))])).await.unwrap();
    for i in 0..N {
        let mut e = use_of("logged", "bot", "ok", &format!("h{i}.example.com"));
        e.fingerprint = Some(fp.clone());
        if i % 2 == 0 {
            vault.record_use_durable(e).await.unwrap();
        } else {
            e.outcome = "destination_not_allowed".into();
            e.fingerprint = None;
            vault.record_use(e);
        }
    }
    vault.close().await;
    assert_eq!(vault.audit_dropped(), 0);

    let path = db.sink_path();
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    assert!(path.exists() && rotated(1).exists() && rotated(2).exists(), "the sink rotated");
    assert!(!rotated(3).exists(), "only two rotated files are kept");
    for p in [path.clone(), rotated(1), rotated(2)] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() as u64 <= MAX, "{} is {} bytes", p.display(), text.len());
        assert!(text.ends_with('\n'), "{}: whole lines only", p.display());
        assert!(!text.contains(&secret), "{} holds the secret", p.display());
    }
    let lines = db.sink_lines();
    assert!(lines.len() < N, "the oldest lines were rotated away");
    // The newest lines, in order, each a full event.
    let first = N - lines.len();
    for (line, i) in lines.iter().zip(first..) {
        assert_eq!(line["destination"], format!("h{i}.example.com"), "{line}");
        assert_eq!((line["action"].as_str(), line["org"].as_str()), (Some("use"), Some(ORG)));
        assert_eq!((line["credential"].as_str(), line["agent"].as_str()), (Some("logged"), Some("bot")));
        assert_eq!((line["layer"].as_str(), line["version"].as_u64()), (Some("vault"), Some(1)));
        time::OffsetDateTime::parse(line["at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
        if i % 2 == 0 {
            assert_eq!((line["outcome"].as_str(), line["fingerprint"].as_str()), (Some("ok"), Some(fp.as_str())));
        } else {
            assert_eq!(line["outcome"], "destination_not_allowed");
            assert!(line["fingerprint"].is_null());
        }
    }
}
