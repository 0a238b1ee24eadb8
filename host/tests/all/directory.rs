//! The directory's writes (agents, tokens, routes, identity providers): each
//! commits its row, its change record and its audit event in one
//! transaction, and multi-step operations are atomic.

use std::collections::BTreeMap;

use latchkey::Secret;
use latchkey::vault::agents::Route;
use latchkey::vault::model::RawCredential;
use latchkey::vault::{AuditAction, AuditFilter, Vault};

use crate::db::{Backend, TestDb};

const ORG: &str = "default";

vault_tests! {
    a_directory_change_cannot_be_split_from_its_change_record => change_record_in_the_same_transaction;
    agent_creation_with_attachments_is_atomic => atomic_agent_creation;
}

fn api_key(name: &str) -> RawCredential {
    let mut raw = RawCredential::new(name, "api-key");
    raw.secrets = BTreeMap::from([("key".to_string(), Secret::new(format!("sk-dir-{name}-{}", crate::db::suffix())))]);
    raw.destinations = vec!["api.example.com".into()];
    raw
}

/// Run `sql` on the test database beside the vault.
async fn admin_sql(db: &TestDb, sql: &str) {
    match db.backend {
        Backend::Sqlite => {
            let pool =
                sqlx::SqlitePool::connect(&format!("sqlite://{}", db.path().join("vault.db").display())).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db.url.as_deref().unwrap()).await.unwrap();
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Make every insert into the change feed's table fail, as a crash between
/// the row and its change record would leave it.
async fn refuse_change_records(db: &TestDb, refuse: bool) {
    let sql = match (db.backend, refuse) {
        (Backend::Sqlite, true) => {
            "CREATE TRIGGER refuse_changes BEFORE INSERT ON vault_changes \
             BEGIN SELECT RAISE(ABORT, 'change records refused'); END"
        }
        (Backend::Sqlite, false) => "DROP TRIGGER refuse_changes",
        (Backend::Postgres, true) => {
            "CREATE FUNCTION refuse_changes() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'change records refused'; END $$ \
             LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_changes BEFORE INSERT ON vault_changes FOR EACH ROW EXECUTE FUNCTION refuse_changes()"
        }
        (Backend::Postgres, false) => "DROP TRIGGER refuse_changes ON vault_changes; DROP FUNCTION refuse_changes()",
    };
    admin_sql(db, sql).await;
}

async fn agent_disabled(vault: &Vault, name: &str) -> bool {
    vault.list_agents(Some(ORG)).await.unwrap().into_iter().find(|a| a.name == name).expect("agent").disabled
}

async fn events(vault: &Vault, action: AuditAction) -> usize {
    vault.audit(&AuditFilter { action: Some(action), ..AuditFilter::default() }).await.unwrap().len()
}

async fn change_record_in_the_same_transaction(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("key"), "test").await.unwrap();
    vault.create_agent(ORG, "bot", "test").await.unwrap();
    assert_eq!(events(&vault, AuditAction::AgentCreate).await, 1, "the creation is in the audit trail");

    // The change record cannot be written: every directory write fails
    // whole, leaving neither its row change nor its audit event.
    refuse_change_records(db, true).await;
    assert!(vault.set_agent_disabled(ORG, "bot", true, "test").await.is_err());
    assert!(!agent_disabled(&vault, "bot").await, "the agent was disabled without a change record");
    assert_eq!(events(&vault, AuditAction::AgentDisable).await, 0);

    assert!(vault.create_agent(ORG, "second", "test").await.is_err());
    assert!(vault.list_agents(Some(ORG)).await.unwrap().iter().all(|a| a.name != "second"));

    let route = Route {
        name: "up".into(),
        org: ORG.into(),
        upstream: "https://api.example.com".into(),
        credential: "key".into(),
        mock: false,
        check_path: None,
    };
    assert!(vault.put_route(&route, "test").await.is_err());
    assert!(vault.list_routes(Some(ORG)).await.unwrap().is_empty(), "a route without its change record");
    assert!(vault.get(ORG, "key").await.unwrap().credential.attachments.routes.is_empty());
    assert!(vault.create_registration_token(ORG, time::Duration::hours(1), "test").await.is_err());

    // Writable again: the same writes commit with their records.
    refuse_change_records(db, false).await;
    assert!(vault.set_agent_disabled(ORG, "bot", true, "test").await.unwrap());
    assert!(agent_disabled(&vault, "bot").await);
    assert_eq!(events(&vault, AuditAction::AgentDisable).await, 1);
    vault.put_route(&route, "test").await.unwrap();
    assert_eq!(events(&vault, AuditAction::RoutePut).await, 1);
    assert!(vault.get(ORG, "key").await.unwrap().credential.attachments.routes.contains("up"));
    assert!(vault.delete_route(ORG, "up", "test").await.unwrap());
    assert!(vault.get(ORG, "key").await.unwrap().credential.attachments.routes.is_empty());
    assert_eq!(events(&vault, AuditAction::RouteDelete).await, 1);
    vault.close().await;
}

async fn atomic_agent_creation(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("openai"), "test").await.unwrap();
    vault.create(api_key("anthropic"), "test").await.unwrap();
    let v1 = vault.get(ORG, "openai").await.unwrap().credential.version;

    // One misspelt credential: nothing is created, nothing is attached.
    let typo = vec!["openai".to_string(), "antropic".to_string()];
    let e = vault.create_agent_with(ORG, "bot", &typo, "test").await.unwrap_err();
    assert_eq!(e.code(), "credential_not_found", "{e}");
    assert!(vault.list_agents(Some(ORG)).await.unwrap().is_empty(), "the agent exists after a failed creation");
    let openai = vault.get(ORG, "openai").await.unwrap();
    assert!(
        openai.credential.attachments.agents.is_empty() && openai.credential.version == v1,
        "openai was attached to nobody"
    );

    // Corrected, the retry succeeds (no `agent_exists`), and both attach.
    let fixed = vec!["openai".to_string(), "anthropic".to_string()];
    let issued = vault.create_agent_with(ORG, "bot", &fixed, "test").await.unwrap();
    assert!(issued.token.expose().starts_with("lk_agt_"));
    for name in ["openai", "anthropic"] {
        let c = vault.get(ORG, name).await.unwrap();
        assert!(c.credential.attachments.agents.contains("bot"), "{name}");
    }
    assert_eq!(vault.get(ORG, "openai").await.unwrap().credential.version, v1 + 1);
    assert_eq!(events(&vault, AuditAction::Attach).await, 2);
    let e = vault.create_agent_with(ORG, "bot", &[], "test").await.unwrap_err();
    assert_eq!(e.code(), "agent_exists", "{e}");
    vault.close().await;
}
