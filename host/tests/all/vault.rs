//! The vault suite: the same tests on SQLite and PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::Secret;
use latchkey::vault::model::{EnvMapping, Layer, Overrides, RawCredential, RawUpdate};
use latchkey::vault::{
    AttachmentKind, AuditAction, AuditFilter, KeyOrigin, KeySource, UseEvent, Vault, VaultError, VaultOptions,
};

use crate::db::{Backend, TestDb, runtime};
use crate::support::canary;

const ORG: &str = "default";

fn api_key(name: &str, key: &str) -> RawCredential {
    let mut raw = RawCredential::new(name, "api-key");
    raw.config = vec![("prefix".into(), "Bearer ".into())];
    raw.secrets = BTreeMap::from([("key".to_string(), Secret::new(key))]);
    raw.destinations = vec!["api.openai.com".into()];
    raw
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
    pairs.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect()
}

async fn key_of(vault: &Vault, name: &str) -> Result<String, VaultError> {
    let r = vault.resolve(ORG, name, &Overrides::new()).await?;
    Ok(r.resolved.secrets["key"].expose().to_string())
}

vault_tests! {
    lifecycle => lifecycle;
    sealed_rows_cannot_be_swapped => sealed_rows_cannot_be_swapped;
    secrets_are_sealed_again_only_when_they_change => secrets_are_sealed_again_only_when_they_change;
    input_hygiene => input_hygiene;
    version_conflicts_and_concurrent_writers => version_conflicts_and_concurrent_writers;
    changes_reach_other_instances => changes_reach_other_instances;
    master_key_rotation => master_key_rotation;
    wrong_or_missing_master_key => wrong_or_missing_master_key;
    resolution_layers => resolution_layers;
    use_audit_and_last_used => use_audit_and_last_used;
}

async fn lifecycle(db: &TestDb) {
    let vault = db.open().await;
    let secret = canary("life");
    let created = vault.create(api_key("openai", &secret), "test").await.unwrap();
    assert_eq!(created.value.credential.version, 1);
    assert!(created.notices.is_empty(), "{:?}", created.notices);

    // Stored and readable, secret only through resolution.
    let info = vault.get(ORG, "openai").await.unwrap();
    assert_eq!(info.credential.scheme, "api-key");
    assert_eq!(info.credential.secret_fields, BTreeSet::from(["key".to_string()]));
    assert_eq!(info.secret_version, 1);
    assert_eq!(key_of(&vault, "openai").await.unwrap(), secret);
    assert_eq!(vault.list(None).await.unwrap().len(), 1);

    // A duplicate name is refused; the original is untouched.
    let dup = vault.create(api_key("openai", "sk-other"), "test").await.unwrap_err();
    assert_eq!(dup.code(), "credential_exists");
    assert_eq!(dup.http_status(), 409);
    assert_eq!(key_of(&vault, "openai").await.unwrap(), secret);

    // Update destinations: version moves, secret stays.
    let raw = RawUpdate {
        destinations: Some(vec!["api.openai.com".into(), "*.openai.azure.com".into()]),
        ..RawUpdate::default()
    };
    let updated = vault.update(ORG, "openai", raw, "test").await.unwrap();
    assert_eq!(updated.value.credential.version, 2);
    assert_eq!(updated.value.secret_version, 1);
    assert_eq!(key_of(&vault, "openai").await.unwrap(), secret);

    // Rotate: the next call uses the new secret.
    let rotated = canary("rotated");
    let r = vault.rotate(ORG, "openai", secrets(&[("key", &rotated)]), BTreeSet::new(), "test").await.unwrap();
    assert_eq!((r.value.credential.version, r.value.secret_version), (3, 2));
    assert_eq!(key_of(&vault, "openai").await.unwrap(), rotated);

    // Disable: every use fails with 401, whatever the environment holds.
    vault.set_enabled(ORG, "openai", false, "test").await.unwrap();
    let e = vault.resolve(ORG, "openai", &Overrides::new()).await.unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("credential_disabled", 401));
    vault.set_enabled(ORG, "openai", true, "test").await.unwrap();
    assert_eq!(key_of(&vault, "openai").await.unwrap(), rotated);

    // Attached: delete refused unless forced (which takes the route along).
    vault.create_agent(ORG, "ci-bot", "test").await.unwrap();
    let a = vault.set_attachment(ORG, "openai", AttachmentKind::Agent, "ci-bot", true, "test").await.unwrap();
    assert!(a.credential.attachments.agents.contains("ci-bot"));
    let route = latchkey::vault::agents::Route {
        name: "openai".into(),
        org: ORG.into(),
        upstream: "https://api.openai.com".into(),
        credential: "openai".into(),
        mock: false,
        check_path: None,
    };
    vault.put_route(&route, "test").await.unwrap();
    let e = vault.delete(ORG, "openai", false, "test").await.unwrap_err();
    assert_eq!(e.code(), "credential_attached");
    assert!(e.to_string().contains("ci-bot"), "{e}");
    let listed = vault.list(Some(ORG)).await.unwrap();
    assert_eq!(listed[0].credential.attachments.routes, BTreeSet::from(["openai".to_string()]));
    let gone = vault.delete(ORG, "openai", true, "test").await.unwrap();
    assert_eq!(gone.credential.version, 7);
    let e = vault.resolve(ORG, "openai", &Overrides::new()).await.unwrap_err();
    assert_eq!(e.code(), "provider_key_missing");
    assert_eq!(vault.get(ORG, "openai").await.unwrap_err().code(), "credential_not_found");

    // Every change is in the audit trail, in order, with its version.
    let trail =
        vault.audit(&AuditFilter { credential: Some("openai".into()), ..AuditFilter::default() }).await.unwrap();
    let actions: Vec<(&str, Option<u64>)> = trail.iter().map(|e| (e.action.as_str(), e.version)).collect();
    assert_eq!(
        actions,
        [
            ("create", Some(1)),
            ("update", Some(2)),
            ("rotate", Some(3)),
            ("disable", Some(4)),
            ("enable", Some(5)),
            ("attach", Some(6)),
            ("route-put", None),
            ("attach", Some(7)),
            ("route-delete", None),
            ("delete", Some(7)),
        ]
    );
    assert!(trail.iter().all(|e| e.actor.as_deref() == Some("test")));
    assert!(vault.list_routes(Some(ORG)).await.unwrap().is_empty(), "a route names the deleted credential");
    assert!(trail.last().unwrap().detail.as_deref().unwrap().contains("forced"));
    vault.close().await;
}

async fn sealed_rows_cannot_be_swapped(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("alpha", &canary("a")), "test").await.unwrap();
    vault.create(api_key("beta", &canary("b")), "test").await.unwrap();
    vault.close().await;
    // An attacker with write access to the database copies alpha's sealed
    // blob onto beta's row: the associated data no longer matches.
    let sql = "UPDATE credentials SET secret_blob = (SELECT secret_blob FROM credentials WHERE name = 'alpha') \
               WHERE name = 'beta'";
    match db.backend {
        Backend::Sqlite => {
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}", db.path().join("vault.db").display())).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.url.as_deref().unwrap()).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
    let vault = db.open().await;
    let e = vault.resolve(ORG, "beta", &Overrides::new()).await.unwrap_err();
    assert_eq!(e.code(), "vault_integrity", "{e}");
    assert!(key_of(&vault, "alpha").await.is_ok());
    vault.close().await;
}

/// The stored sealed blob of `name`, read from the database directly.
async fn stored_blob(db: &TestDb, name: &str) -> Vec<u8> {
    let sql = "SELECT secret_blob FROM credentials WHERE name = $1";
    let row: (Vec<u8>,) = match db.backend {
        Backend::Sqlite => {
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}", db.path().join("vault.db").display())).await.unwrap();
            let row = sqlx::query_as(sql).bind(name).fetch_one(&pool).await.unwrap();
            pool.close().await;
            row
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.url.as_deref().unwrap()).await.unwrap();
            let row = sqlx::query_as(sql).bind(name).fetch_one(&pool).await.unwrap();
            pool.close().await;
            row
        }
    };
    row.0
}

/// Threat catalogue case 6: a secret change seals the fields again under a
/// fresh data key (new wrap, new data nonce); a change of anything else leaves
/// the sealed blob exactly as it was, so no key is used more than its secrets
/// change.
async fn secrets_are_sealed_again_only_when_they_change(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("sealed", &canary("v1")), "test").await.unwrap();
    let first = stored_blob(db, "sealed").await;
    let update = RawUpdate {
        config: Some(vec![("prefix".into(), "Token ".into())]),
        destinations: Some(vec!["api.example.org".into()]),
        ..RawUpdate::default()
    };
    vault.update(ORG, "sealed", update, "test").await.unwrap();
    vault.set_enabled(ORG, "sealed", false, "test").await.unwrap();
    vault.set_enabled(ORG, "sealed", true, "test").await.unwrap();
    assert_eq!(stored_blob(db, "sealed").await, first, "a change without new secrets sealed them again");
    // A rotation seals them again: a new wrap nonce, the data key wrapped
    // anew, a new data nonce.
    let again = canary("v2");
    vault
        .rotate(ORG, "sealed", BTreeMap::from([("key".to_string(), Secret::new(&again))]), BTreeSet::new(), "t")
        .await
        .unwrap();
    let second = stored_blob(db, "sealed").await;
    // Offsets from the blob format: 8..20 wrap nonce, 20..52 wrapped DEK, 68..80 data nonce.
    assert_ne!(first[8..20], second[8..20], "the wrap nonce was reused");
    assert_ne!(first[20..52], second[20..52], "the data key was not wrapped anew");
    assert_ne!(first[68..80], second[68..80], "the data nonce was reused");
    assert_eq!(key_of(&vault, "sealed").await.unwrap(), again);
    vault.close().await;
}

async fn input_hygiene(db: &TestDb) {
    let vault = db.open().await;
    let e = vault.create(api_key("bearer", "Bearer sk-abc123"), "test").await.unwrap_err();
    assert_eq!(e.code(), "invalid_secret");
    assert!(e.to_string().contains("Bearer"), "{e}");
    assert!(!e.to_string().contains("sk-abc123"), "the secret must not be echoed: {e}");

    let mut raw = api_key("extra", "sk-abc");
    raw.secrets.insert("token".into(), Secret::new("x"));
    assert_eq!(vault.create(raw, "test").await.unwrap_err().code(), "unknown_secret_field");

    let pasted = canary("pasted");
    let done = vault.create(api_key("pasted", &format!("{pasted}\r\n")), "test").await.unwrap();
    assert!(done.notices.iter().any(|n| n.message.contains("line break")), "{:?}", done.notices);
    assert_eq!(key_of(&vault, "pasted").await.unwrap(), pasted);

    let e = vault.create(api_key("spaced", " sk-abc"), "test").await.unwrap_err();
    assert_eq!(e.code(), "invalid_secret");
    let e = vault.create(api_key("9bad", "sk-abc"), "test").await.unwrap_err();
    assert_eq!(e.code(), "invalid_name");
    // Nothing half-stored by the refusals.
    let names: Vec<String> = vault.list(None).await.unwrap().iter().map(|i| i.credential.name.to_string()).collect();
    assert_eq!(names, ["pasted"]);
    vault.close().await;
}

async fn version_conflicts_and_concurrent_writers(db: &TestDb) {
    let vault = Arc::new(db.open().await);
    vault.create(api_key("busy", "sk-1"), "test").await.unwrap();
    let stale = RawUpdate { enabled: Some(false), expected_version: Some(7), ..RawUpdate::default() };
    let e = vault.update(ORG, "busy", stale, "test").await.unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("version_conflict", 409));

    // 16 writers, 4 changes each, no expected version: none is lost.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..4 {
                let key = format!("sk-w{w}-{i}");
                vault.rotate(ORG, "busy", secrets(&[("key", &key)]), BTreeSet::new(), "test").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let info = vault.get(ORG, "busy").await.unwrap();
    assert_eq!(info.credential.version, 1 + 64, "every change applied exactly once");
    assert_eq!(info.secret_version, 1 + 64);
    let rotations =
        vault.audit(&AuditFilter { action: Some(AuditAction::Rotate), ..AuditFilter::default() }).await.unwrap();
    assert_eq!(rotations.len(), 64);
    let versions: BTreeSet<u64> = rotations.iter().filter_map(|e| e.version).collect();
    assert_eq!(versions, (2..=65).collect(), "each rotation recorded with its own version");
    assert!(key_of(&vault, "busy").await.unwrap().starts_with("sk-w"));
    vault.close().await;
}

/// A second vault instance on the same database (another process on the
/// SQLite file; another replica on PostgreSQL) sees a disable on its next
/// call, without a restart. Prints the measured propagation delay.
async fn changes_reach_other_instances(db: &TestDb) {
    let mut options = db.options();
    options.watch = true;
    let a = Vault::open(options.clone(), runtime()).await.unwrap();
    let b = Vault::open(options, runtime()).await.unwrap();
    a.create(api_key("shared", "sk-shared-1"), "test").await.unwrap();
    let mut delays = Vec::new();
    for round in 0..10 {
        // B's cache holds the enabled credential. (A fill that races a
        // notification is dropped, so this may take a second resolve.)
        let filled = Instant::now();
        loop {
            assert_eq!(key_of(&b, "shared").await.unwrap(), "sk-shared-1");
            if b.cached() >= 1 {
                break;
            }
            assert!(filled.elapsed() < Duration::from_secs(5), "B never cached the credential");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        a.set_enabled(ORG, "shared", false, "test").await.unwrap();
        let written = start.elapsed();
        loop {
            match b.resolve(ORG, "shared", &Overrides::new()).await {
                Err(e) if e.code() == "credential_disabled" => break,
                Ok(_) if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_micros(200)).await
                }
                other => panic!("round {round}: replica B still serves a disabled credential: {other:?}"),
            }
        }
        delays.push(start.elapsed().saturating_sub(written));
        a.set_enabled(ORG, "shared", true, "test").await.unwrap();
        // And back: B uses it again.
        let start = Instant::now();
        while b.resolve(ORG, "shared", &Overrides::new()).await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(5), "re-enable did not reach B");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "propagation delay ({:?}, after the commit on A; 10 rounds): median {:.2} ms, max {:.2} ms",
        db.backend,
        ms(delays[5]),
        ms(delays[9])
    );
    if db.backend == Backend::Postgres {
        // LISTEN/NOTIFY, not polling: well under the 100 ms goal.
        assert!(delays[5] < Duration::from_millis(100), "median delay {:?}", delays[5]);
    }
    a.close().await;
    b.close().await;
}

async fn master_key_rotation(db: &TestDb) {
    // A keyring file both "replicas" read; rotation adds a term to it.
    let keyring = db.path().join("keyring");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        let mut f = f.open(&keyring).unwrap();
        writeln!(f, "1:{}", db.key.as_str()).unwrap();
    }
    let mut options = db.options();
    options.keys = KeySource { keyring_file: Some(keyring.clone()), ..KeySource::default() };
    let a = Vault::open(options.clone(), runtime()).await.unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..40 {
        let (name, key) = (format!("k{i:02}"), canary(&format!("rot{i}")));
        a.create(api_key(&name, &key), "test").await.unwrap();
        expected.insert(name, key);
    }
    // B opened before the rotation; it only knows term 1.
    let b = Vault::open(options.clone(), runtime()).await.unwrap();
    assert_eq!(key_of(&b, "k00").await.unwrap(), expected["k00"]);

    let probe = BTreeMap::from([("key".to_string(), latchkey::Secret::new("probe-value"))]);
    let fingerprint = a.fingerprint(&probe).await.unwrap();
    let report = a.rotate_master_key(true, "test").await.unwrap();
    // The audit salt is re-wrapped with the credentials: a process opening
    // the vault after the rotation derives the same fingerprints.
    let c = Vault::open(options.clone(), runtime()).await.unwrap();
    assert_eq!(c.fingerprint(&probe).await.unwrap(), fingerprint);
    c.close().await;
    assert_eq!((report.term, report.generated, report.rewrapped), (2, true, 40));
    assert_eq!(report.by_term, BTreeMap::from([(2, 40)]));
    assert!(report.failed.is_empty());
    let text = std::fs::read_to_string(&keyring).unwrap();
    assert!(text.contains("current = 2") && text.contains(&format!("1:{}", db.key.as_str())), "old term kept");

    // Every secret opens on A; B meets term 2, reloads its keyring, and
    // opens them too. Secrets themselves are unchanged.
    for (name, key) in &expected {
        assert_eq!(&key_of(&a, name).await.unwrap(), key);
        b.forget(ORG, name);
        assert_eq!(&key_of(&b, name).await.unwrap(), key);
    }
    // New seals use term 2; running it again is a no-op.
    let info = a.rotate(ORG, "k01", secrets(&[("key", "sk-new")]), BTreeSet::new(), "test").await.unwrap();
    assert_eq!(info.value.key_term, 2);
    let again = a.rotate_master_key(false, "test").await.unwrap();
    assert_eq!((again.term, again.rewrapped), (2, 0));
    let audit = a.audit(&AuditFilter { action: Some(AuditAction::Rewrap), ..AuditFilter::default() }).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit[0].detail.as_deref().unwrap().starts_with("40 data keys re-wrapped to master key term 2"));

    // With only LATCHKEY_MASTER_KEY, generating is refused with instructions.
    let env_only = db.open().await;
    let e = env_only.rotate_master_key(true, "test").await.unwrap_err();
    assert_eq!(e.code(), "master_key_missing");
    assert!(e.to_string().contains("--no-generate"), "{e}");
    for v in [a, b, env_only] {
        v.close().await;
    }
}

async fn wrong_or_missing_master_key(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("locked", "sk-locked"), "test").await.unwrap();
    vault.close().await;

    let mut wrong = db.options();
    let other = latchkey::vault::crypto::MasterKey::generate().unwrap().to_base64();
    wrong.keys = KeySource { master_key: Some(other), ..KeySource::default() };
    let e = Vault::open(wrong, runtime()).await.unwrap_err();
    assert_eq!(e.code(), "master_key_wrong", "{e}");

    let mut none = db.options();
    none.keys = KeySource { dev_key_file: Some(db.path().join("master.key")), ..KeySource::default() };
    let e = Vault::open(none, runtime()).await.unwrap_err();
    assert_eq!(e.code(), "master_key_missing", "{e}");
    match db.backend {
        // The vault holds a credential: a new development key would not open it.
        Backend::Sqlite => assert!(e.to_string().contains("already holds 1 credential"), "{e}"),
        Backend::Postgres => assert!(e.to_string().contains("PostgreSQL"), "{e}"),
    }
    assert!(!db.path().join("master.key").exists(), "no key file created for a vault that has data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sqlite_vault_gets_a_private_development_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data/master.key");
    let options = VaultOptions::new(
        latchkey::vault::Location::SqliteFile(dir.path().join("data/vault.db")),
        KeySource { dev_key_file: Some(key_file.clone()), ..KeySource::default() },
    );
    let vault = Vault::open(options.clone(), runtime()).await.unwrap();
    assert_eq!(vault.key_origin(), &KeyOrigin::DevKeyCreated(key_file.clone()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_file), 0o600);
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        assert_eq!(mode(&dir.path().join("data/vault.db")), 0o600);
    }
    vault.create(api_key("dev", "sk-dev-1"), "test").await.unwrap();
    vault.close().await;
    let vault = Vault::open(options, runtime()).await.unwrap();
    assert_eq!(vault.key_origin(), &KeyOrigin::DevKey(key_file));
    assert_eq!(key_of(&vault, "dev").await.unwrap(), "sk-dev-1");
    vault.close().await;
}

async fn resolution_layers(db: &TestDb) {
    let env: BTreeMap<String, String> =
        BTreeMap::from([("OPENAI_API_KEY".into(), "sk-env".into()), ("MY_KEY".into(), "sk-my-env".into())]);
    let mut options = db.options();
    options.env = Arc::new(move |var| env.get(var).cloned());
    let mut mapping = EnvMapping::default();
    mapping.apply_entry("stored=MY_KEY").unwrap();
    options.env_mapping = mapping;
    let vault = Vault::open(options, runtime()).await.unwrap();
    vault.create(api_key("stored", "sk-vault"), "test").await.unwrap();

    // Vault beats the environment.
    let r = vault.resolve(ORG, "stored", &Overrides::new()).await.unwrap();
    assert_eq!((r.resolved.layer, r.resolved.secrets["key"].expose()), (Layer::Vault, "sk-vault"));
    assert!(r.credential().is_some());
    // An override beats the vault.
    let mut o = Overrides::new();
    o.set("stored", "key", Secret::new("sk-override"));
    let r = vault.resolve(ORG, "stored", &o).await.unwrap();
    assert_eq!((r.resolved.layer, r.resolved.secrets["key"].expose()), (Layer::Override, "sk-override"));
    // A name only the environment has.
    let r = vault.resolve(ORG, "openai", &Overrides::new()).await.unwrap();
    assert_eq!((r.resolved.layer, r.resolved.source.as_str()), (Layer::Environment, "OPENAI_API_KEY"));
    assert!(r.credential().is_none());
    // Disabled: 401 even though the environment has MY_KEY.
    vault.set_enabled(ORG, "stored", false, "test").await.unwrap();
    let e = vault.resolve(ORG, "stored", &Overrides::new()).await.unwrap_err();
    assert_eq!(e.code(), "credential_disabled");
    // Nothing anywhere: every layer named.
    let e = vault.resolve(ORG, "anthropic", &Overrides::new()).await.unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("provider_key_missing", 404));
    let msg = e.to_string();
    assert!(msg.contains("override") && msg.contains("vault") && msg.contains("ANTHROPIC_API_KEY is unset"), "{msg}");
    // Destinations: only the allowed hosts.
    vault.set_enabled(ORG, "stored", true, "test").await.unwrap();
    let r = vault.resolve(ORG, "stored", &Overrides::new()).await.unwrap();
    assert!(r.check_destination("api.openai.com").is_ok());
    let e = r.check_destination("evil.example.com").unwrap_err();
    assert_eq!((e.code().as_str(), e.code().http_status()), ("destination_not_allowed", 403));
    // Organisations are separate namespaces: acme's `stored` is its own.
    let mut acme = api_key("stored", "sk-acme");
    acme.org = Some("acme".into());
    vault.create(acme, "test").await.unwrap();
    let r = vault.resolve("acme", "stored", &Overrides::new()).await.unwrap();
    assert_eq!((r.resolved.layer, r.resolved.secrets["key"].expose()), (Layer::Vault, "sk-acme"));
    assert_eq!(key_of(&vault, "stored").await.unwrap(), "sk-vault");
    vault.set_enabled("acme", "stored", false, "test").await.unwrap();
    assert_eq!(key_of(&vault, "stored").await.unwrap(), "sk-vault", "disabling acme's leaves default's alone");
    vault.close().await;
}

async fn use_audit_and_last_used(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("used", "sk-used"), "test").await.unwrap();
    assert!(vault.get(ORG, "used").await.unwrap().last_used_at.is_none());
    let event = |agent: Option<&str>, outcome: &str| UseEvent {
        org: ORG.into(),
        credential: "used".into(),
        agent: agent.map(str::to_string),
        destination: Some("api.openai.com".into()),
        outcome: outcome.into(),
        layer: Some(Layer::Vault),
        version: Some(1),
        fingerprint: None,
    };
    let before = time::OffsetDateTime::now_utc();
    vault.record_use_durable(event(Some("ci-bot"), "ok")).await.unwrap();
    vault.record_use_durable(event(Some("ci-bot"), "ok")).await.unwrap();
    vault.record_use_durable(event(Some("other-bot"), "ok")).await.unwrap();
    vault.record_use(event(Some("ci-bot"), "destination_not_allowed"));
    vault.record_use(event(None, "agent_unknown"));
    let uses = vault.audit(&AuditFilter { action: Some(AuditAction::Use), ..AuditFilter::default() }).await.unwrap();
    // Counts per (agent, outcome, minute): the uses may straddle a minute.
    let count = |agent: Option<&str>, outcome: &str| -> u64 {
        uses.iter().filter(|u| u.agent.as_deref() == agent && u.outcome == outcome).map(|u| u.count.unwrap()).sum()
    };
    assert_eq!(count(Some("ci-bot"), "ok"), 2, "{uses:?}");
    assert_eq!(count(Some("other-bot"), "ok"), 1, "{uses:?}");
    assert_eq!(count(Some("ci-bot"), "destination_not_allowed"), 1, "{uses:?}");
    assert_eq!(count(None, "agent_unknown"), 1, "{uses:?}");
    assert!((4..=8).contains(&uses.len()), "one row per key and minute: {uses:?}");
    let minute = |t: time::OffsetDateTime| t.replace_second(0).unwrap().replace_nanosecond(0).unwrap();
    for u in &uses {
        assert_eq!((u.seq, u.action.as_str(), u.credential.as_str()), (0, "use", "used"));
        assert_eq!(u.at, minute(u.at), "a count is at the start of its minute");
        assert!(u.at >= minute(before) && u.at <= time::OffsetDateTime::now_utc());
        assert_eq!(u.detail, Some(format!("count {}", u.count.unwrap())));
        assert_eq!((&u.destination, &u.layer, u.version, &u.fingerprint), (&None, &None, None, &None));
    }
    assert!(vault.get(ORG, "used").await.unwrap().last_used_at.is_some());
    // With every action: the lifecycle events are there too, in time order.
    let all = vault.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), uses.len() + 1);
    assert_eq!(all.iter().filter(|e| e.action == "create").count(), 1);
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at), "{all:?}");
    // Filters: by credential and organisation, since, limit (most recent, oldest first).
    let last = vault.audit(&AuditFilter { limit: Some(2), ..AuditFilter::default() }).await.unwrap();
    assert_eq!(last.len(), 2);
    assert_eq!(last[..], all[all.len() - 2..]);
    for filter in [
        AuditFilter { credential: Some("other".into()), ..AuditFilter::default() },
        AuditFilter { org: Some("acme".into()), ..AuditFilter::default() },
        AuditFilter {
            since: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
            ..AuditFilter::default()
        },
    ] {
        assert!(vault.audit(&filter).await.unwrap().is_empty(), "{filter:?}");
    }
    let recent = vault.audit(&AuditFilter { since: Some(before), ..AuditFilter::default() }).await.unwrap();
    assert!(
        recent.iter().filter(|e| e.action == "use").count() == uses.len(),
        "a since inside a minute keeps its count"
    );
    vault.close().await;
}
