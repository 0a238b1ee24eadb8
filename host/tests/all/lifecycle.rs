//! The operator's lifecycle of every directory object on the vault (both
//! backends): what can be created can be shown, changed, disabled and
//! removed; references are checked when made; deletes refuse while
//! referenced (naming what refers) or cascade when forced, never leaving a
//! dangling reference; every change is in the audit trail with its actor.

use std::collections::BTreeMap;

use latchkey::Secret;
use latchkey::error::ErrorCode;
use latchkey::vault::agents::Route;
use latchkey::vault::identity::{IdentityProvider, JwksSource};
use latchkey::vault::model::RawCredential;
use latchkey::vault::{AttachmentKind, AuditAction, AuditFilter, Vault, VaultError};

use crate::db::TestDb;

const ORG: &str = "default";
const ACTOR: &str = "cli:tester@test-host";
/// A public key set (one Ed25519 key); only its shape is checked here.
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

vault_tests! {
    references_are_checked_when_made => references_checked;
    deletes_refuse_while_referenced_or_cascade_when_forced => deletes_cascade;
    agent_tokens_are_reissued_and_the_old_one_is_refused => token_reissue;
    registration_tokens_are_listed_without_values_and_revoked => registration_tokens;
    identity_providers_are_unique_by_issuer_and_can_be_unbound_and_deleted => identity_providers;
}

fn api_key(name: &str, destination: &str) -> RawCredential {
    let mut raw = RawCredential::new(name, "api-key");
    raw.secrets = BTreeMap::from([("key".to_string(), Secret::new(format!("sk-life-{name}-{}", crate::db::suffix())))]);
    raw.destinations = vec![destination.into()];
    raw
}

fn route(name: &str, upstream: &str, credential: &str) -> Route {
    Route {
        name: name.into(),
        org: ORG.into(),
        upstream: upstream.into(),
        credential: credential.into(),
        mock: false,
        check_path: None,
    }
}

fn idp(name: &str, issuer: &str, jwks: &str) -> IdentityProvider {
    IdentityProvider {
        org: ORG.into(),
        name: name.into(),
        issuer: issuer.into(),
        alg: "EdDSA".into(),
        audience: vec!["latchkey".into()],
        leeway_seconds: 30,
        jwks: JwksSource::Static(jwks.into()),
        refresh_seconds: 300,
        subject_claim: "sub".into(),
        max_token_lifetime_seconds: 3_600,
    }
}

#[track_caller]
fn code<T: std::fmt::Debug>(r: Result<T, VaultError>) -> (ErrorCode, String) {
    let e = r.expect_err("the operation must be refused");
    (e.code(), e.to_string())
}

async fn events(vault: &Vault, action: AuditAction) -> Vec<latchkey::vault::AuditEvent> {
    vault.audit(&AuditFilter { action: Some(action), ..AuditFilter::default() }).await.unwrap()
}

async fn references_checked(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("openai", "api.openai.com"), ACTOR).await.unwrap();

    // Attach to an agent that does not exist: refused, nothing attached.
    let (c, m) = code(vault.set_attachment(ORG, "openai", AttachmentKind::Agent, "typo-bot-xyz", true, ACTOR).await);
    assert_eq!(c, ErrorCode::AgentNotFound, "{m}");
    assert!(vault.get(ORG, "openai").await.unwrap().credential.attachments.agents.is_empty());

    // Detach what is not attached: said so, with its own code.
    vault.create_agent(ORG, "ci-bot", ACTOR).await.unwrap();
    let (c, m) = code(vault.set_attachment(ORG, "openai", AttachmentKind::Agent, "ci-bot", false, ACTOR).await);
    assert_eq!(c, ErrorCode::AttachmentNotFound, "{m}");
    vault.set_attachment(ORG, "openai", AttachmentKind::Agent, "ci-bot", true, ACTOR).await.unwrap();
    vault.set_attachment(ORG, "openai", AttachmentKind::Agent, "ci-bot", false, ACTOR).await.unwrap();

    // A route whose upstream the credential may not reach is refused when
    // added, naming the destination to add; once allowed, it is accepted.
    let (c, m) = code(vault.put_route(&route("openai", "https://api.evil.example", "openai"), ACTOR).await);
    assert_eq!(c, ErrorCode::DestinationNotAllowed, "{m}");
    assert!(m.contains("--add-destination api.evil.example"), "{m}");
    assert!(vault.list_routes(Some(ORG)).await.unwrap().is_empty(), "the refused route was stored");
    let (c, _) = code(vault.put_route(&route("openai", "https://api.openai.com", "no-such-cred"), ACTOR).await);
    assert_eq!(c, ErrorCode::CredentialNotFound);
    vault.put_route(&route("openai", "https://api.openai.com", "openai"), ACTOR).await.unwrap();

    // A route's attachment follows the route: not attachable to another
    // credential by hand, and not detachable while the route sends it.
    vault.create(api_key("other", "api.openai.com"), ACTOR).await.unwrap();
    let (c, m) = code(vault.set_attachment(ORG, "other", AttachmentKind::Route, "openai", true, ACTOR).await);
    assert_eq!(c, ErrorCode::InvalidArgument, "{m}");
    let (c, m) = code(vault.set_attachment(ORG, "openai", AttachmentKind::Route, "openai", false, ACTOR).await);
    assert_eq!(c, ErrorCode::InUse, "{m}");
    let (c, _) = code(vault.set_attachment(ORG, "openai", AttachmentKind::Route, "no-route", true, ACTOR).await);
    assert_eq!(c, ErrorCode::RouteNotFound);
    vault.close().await;
}

async fn deletes_cascade(db: &TestDb) {
    let vault = db.open().await;
    vault.create(api_key("openai", "api.openai.com"), ACTOR).await.unwrap();
    vault.create(api_key("anthropic", "api.anthropic.com"), ACTOR).await.unwrap();
    vault.create_agent_with(ORG, "ci-bot", &["openai".into(), "anthropic".into()], ACTOR).await.unwrap();
    vault.put_route(&route("openai", "https://api.openai.com", "openai"), ACTOR).await.unwrap();

    // An agent attached to credentials: refused, naming them.
    let (c, m) = code(vault.delete_agent(ORG, "ci-bot", false, ACTOR).await);
    assert_eq!(c, ErrorCode::InUse, "{m}");
    assert!(m.contains("anthropic, openai"), "{m}");
    assert!(vault.get_agent(ORG, "ci-bot").await.unwrap().is_some());
    // Forced: detached from each, then gone.
    let detached = vault.delete_agent(ORG, "ci-bot", true, ACTOR).await.unwrap();
    assert_eq!(detached, vec!["anthropic".to_string(), "openai".to_string()]);
    assert!(vault.get_agent(ORG, "ci-bot").await.unwrap().is_none());
    for c in ["openai", "anthropic"] {
        assert!(vault.get(ORG, c).await.unwrap().credential.attachments.agents.is_empty(), "{c} still names ci-bot");
    }
    let (c, _) = code(vault.delete_agent(ORG, "ci-bot", true, ACTOR).await);
    assert_eq!(c, ErrorCode::AgentNotFound);
    let deleted = events(&vault, AuditAction::AgentDelete).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].actor.as_deref(), Some(ACTOR));

    // A credential a route sends: refused, then forced, which takes the route.
    let (c, m) = code(vault.delete(ORG, "openai", false, ACTOR).await);
    assert_eq!(c, ErrorCode::CredentialAttached, "{m}");
    vault.delete(ORG, "openai", true, ACTOR).await.unwrap();
    assert!(
        vault.list_routes(Some(ORG)).await.unwrap().iter().all(|r| r.credential != "openai"),
        "a route names the deleted credential"
    );
    assert!(vault.route(ORG, "openai").await.unwrap().is_none(), "the route cache still has it");
    let route_deletes = events(&vault, AuditAction::RouteDelete).await;
    assert!(route_deletes.iter().any(|e| e.detail.as_deref().is_some_and(|d| d.contains("credential was deleted"))));
    vault.close().await;
}

async fn token_reissue(db: &TestDb) {
    let vault = db.open().await;
    let issued = vault.create_agent(ORG, "runner", ACTOR).await.unwrap();
    let old = issued.token.expose().to_string();
    assert!(vault.authenticate_agent(&old).await.unwrap().is_some());
    let again = vault.reissue_agent_token(ORG, "runner", ACTOR).await.unwrap();
    let new = again.token.expose().to_string();
    assert_ne!(old, new);
    assert!(vault.authenticate_agent(&old).await.unwrap().is_none(), "the old token still authenticates");
    assert_eq!(vault.authenticate_agent(&new).await.unwrap().unwrap().name, "runner");
    // Another process (a replica) sees the same at once.
    let replica = db.open().await;
    assert!(replica.authenticate_agent(&old).await.unwrap().is_none());
    assert!(replica.authenticate_agent(&new).await.unwrap().is_some());
    replica.close().await;
    let (c, _) = code(vault.reissue_agent_token(ORG, "nobody", ACTOR).await);
    assert_eq!(c, ErrorCode::AgentNotFound);
    let trail = events(&vault, AuditAction::AgentTokenReissue).await;
    assert_eq!(trail.len(), 1);
    let text = format!("{trail:?}");
    assert!(!text.contains(&new[7..]) && !text.contains(&old[7..]), "a token in the audit trail");
    vault.close().await;
}

async fn registration_tokens(db: &TestDb) {
    let vault = db.open().await;
    let first = vault.create_registration_token(ORG, time::Duration::hours(1), ACTOR).await.unwrap();
    let second = vault.create_registration_token(ORG, time::Duration::hours(1), ACTOR).await.unwrap();
    let listed = vault.list_registration_tokens(Some(ORG)).await.unwrap();
    assert_eq!(listed.len(), 2);
    let text = format!("{listed:?}");
    for t in [&first, &second] {
        assert!(!text.contains(&t.token.expose()[11..]), "a token value in the list");
        let row = listed.iter().find(|r| r.prefix == t.prefix).expect("listed by prefix");
        assert_eq!(row.state(time::OffsetDateTime::now_utc()), "active");
    }

    // Revoke by prefix: it can no longer be redeemed.
    let revoked = vault.revoke_registration_token(ORG, first.prefix.trim_end_matches('…'), ACTOR).await.unwrap();
    assert_eq!(revoked.state(time::OffsetDateTime::now_utc()), "revoked");
    let e = vault.redeem_registration_token(first.token.expose(), ORG, "late-bot").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidToken);
    assert!(e.to_string().contains("revoked"), "{e}");
    assert!(vault.get_agent(ORG, "late-bot").await.unwrap().is_none());

    // By its whole value too; a used token is not revoked (its agent is
    // what to disable); an unknown one is `token_not_found`.
    let agent = vault.redeem_registration_token(second.token.expose(), ORG, "runner").await.unwrap();
    let (c, m) = code(vault.revoke_registration_token(ORG, second.token.expose(), ACTOR).await);
    assert_eq!(c, ErrorCode::InvalidArgument, "{m}");
    let used = vault.list_registration_tokens(Some(ORG)).await.unwrap();
    let used = used.iter().find(|r| r.prefix == second.prefix).unwrap();
    assert_eq!((used.state(time::OffsetDateTime::now_utc()), used.agent.as_deref()), ("used", Some("runner")));
    assert_eq!(agent.agent.name, "runner");
    let (c, _) = code(vault.revoke_registration_token(ORG, "lk_reg_zzzz", ACTOR).await);
    assert_eq!(c, ErrorCode::TokenNotFound);
    let third = vault.create_registration_token(ORG, time::Duration::hours(1), ACTOR).await.unwrap();
    vault.revoke_registration_token(ORG, third.token.expose(), ACTOR).await.unwrap();
    assert_eq!(events(&vault, AuditAction::TokenRevoke).await.len(), 2);
    vault.close().await;
}

async fn identity_providers(db: &TestDb) {
    let vault = db.open().await;
    vault.put_identity_provider(&idp("github", "https://token.actions.example", JWKS), ACTOR).await.unwrap();
    // The same issuer under another name: refused, naming the first.
    let (c, m) = code(vault.put_identity_provider(&idp("gh2", "https://token.actions.example", JWKS), ACTOR).await);
    assert_eq!(c, ErrorCode::IssuerExists, "{m}");
    assert!(m.contains("`github`"), "{m}");
    // Replacing the provider itself is fine.
    vault.put_identity_provider(&idp("github", "https://token.actions.example", JWKS), ACTOR).await.unwrap();
    // A key set with no keys could verify nothing.
    let (c, m) =
        code(vault.put_identity_provider(&idp("empty", "https://empty.example", r#"{"keys":[]}"#), ACTOR).await);
    assert_eq!(c, ErrorCode::InvalidArgument, "{m}");
    assert!(m.contains("no keys"), "{m}");
    let (c, _) = code(vault.get_identity_provider(ORG, "empty").await);
    assert_eq!(c, ErrorCode::IdentityProviderNotFound);
    assert_eq!(vault.get_identity_provider(ORG, "github").await.unwrap().issuer, "https://token.actions.example");

    // Bind, refuse a second agent on the same subject, unbind.
    vault.bind_agent_jwt(ORG, "deploy", "github", "repo:acme/app:ref:refs/heads/main", ACTOR).await.unwrap();
    let (c, m) = code(vault.bind_agent_jwt(ORG, "other", "github", "repo:acme/app:ref:refs/heads/main", ACTOR).await);
    assert_eq!(c, ErrorCode::SubjectBound, "{m}");
    let (c, _) = code(vault.bind_agent_jwt(ORG, "deploy", "no-such-idp", "x", ACTOR).await);
    assert_eq!(c, ErrorCode::IdentityProviderNotFound);
    let (c, m) = code(vault.delete_identity_provider(ORG, "github", false, ACTOR).await);
    assert_eq!(c, ErrorCode::InUse, "{m}");
    assert!(m.contains("deploy"), "{m}");
    vault.unbind_agent_jwt(ORG, "deploy", ACTOR).await.unwrap();
    assert!(vault.get_agent(ORG, "deploy").await.unwrap().unwrap().jwt.is_none());
    assert!(vault.agent_by_jwt_subject(ORG, "github", "repo:acme/app:ref:refs/heads/main").await.unwrap().is_none());
    let (c, _) = code(vault.unbind_agent_jwt(ORG, "deploy", ACTOR).await);
    assert_eq!(c, ErrorCode::AttachmentNotFound);

    // Bound again, then a forced delete unbinds it: the provider can go.
    vault.bind_agent_jwt(ORG, "deploy", "github", "repo:acme/app:ref:refs/heads/main", ACTOR).await.unwrap();
    let unbound = vault.delete_identity_provider(ORG, "github", true, ACTOR).await.unwrap();
    assert_eq!(unbound, vec!["deploy".to_string()]);
    assert!(vault.get_agent(ORG, "deploy").await.unwrap().unwrap().jwt.is_none(), "a binding to a deleted provider");
    assert!(vault.list_identity_providers(Some(ORG)).await.unwrap().is_empty());
    let (c, _) = code(vault.delete_identity_provider(ORG, "github", true, ACTOR).await);
    assert_eq!(c, ErrorCode::IdentityProviderNotFound);
    assert_eq!(events(&vault, AuditAction::AgentUnbindJwt).await.len(), 2);
    assert_eq!(events(&vault, AuditAction::IdpDelete).await[0].actor.as_deref(), Some(ACTOR));
    vault.close().await;
}
