//! JWT identity providers (trusted issuers of agent JWTs) and agents bound to
//! a JWT subject.
//!
//! A provider names an issuer, the one algorithm it signs with, the accepted
//! audiences and where its keys are: a JWKS given inline, or an HTTPS URL the
//! broker fetches and refreshes (`server::identity`). An agent bound to
//! `(provider, subject)` is the caller whenever a JWT from that provider,
//! verified by the `jwt` plugin, carries that subject.

use latchkey_core::error::ErrorCode;

use crate::audit::AuditAction;
use crate::credentials::model::{CredentialName, OrgId};
use crate::credentials::service::{Vault, VaultError};
use crate::directory::agents::Agent;
use crate::directory::{DirectoryChange, db_err, record_change};
use crate::storage::{BeginWrite as _, from_micros, on_db};

/// The algorithms an identity provider may pin (HS256 cannot be verified
/// against a public JWKS).
pub const PROVIDER_ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Default JWKS refresh interval for URL providers.
pub const DEFAULT_REFRESH_SECONDS: i64 = 300;
/// Default clock-skew allowance.
pub const DEFAULT_LEEWAY_SECONDS: i64 = 60;
/// The default longest token lifetime an identity provider accepts.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: i64 = 86_400;
/// The largest inline JWKS accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// An HTTPS URL, fetched and refreshed by the broker.
    Url(String),
    /// A JWKS document given inline.
    Static(String),
}

/// A trusted issuer of agent JWTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    /// Its organisation: only agents of this organisation can be bound to it.
    pub org: String,
    /// Its name, unique in the organisation.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// The one algorithm accepted (RS256, ES256 or EdDSA).
    pub alg: String,
    /// Accepted audiences; empty means tokens must name none.
    pub audience: Vec<String>,
    /// Clock-skew allowance for exp, nbf and iat, 0 to 300 seconds.
    pub leeway_seconds: i64,
    /// Its keys.
    pub jwks: JwksSource,
    /// How often a URL JWKS is refreshed, in seconds (60 to 86400).
    pub refresh_seconds: i64,
    /// The claim that names the agent (`sub` unless set).
    pub subject_claim: String,
    /// The longest a token may live: its `exp` at most this far after its
    /// `iat` and after now (60 seconds to 30 days). An `exp` of 2^63 is
    /// refused, not trusted for ever.
    pub max_token_lifetime_seconds: i64,
}

impl IdentityProvider {
    /// The policy passed to the `jwt` plugin's verifier.
    pub fn policy(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("alg".to_string(), self.alg.clone()),
            ("iss".to_string(), self.issuer.clone()),
            ("leeway_seconds".to_string(), self.leeway_seconds.to_string()),
        ];
        if !self.audience.is_empty() {
            p.push(("aud".into(), self.audience.join(",")));
        }
        p
    }

    /// Check the fields an operator gave.
    pub fn check(&self) -> Result<(), VaultError> {
        let bad = |m: String| Err(VaultError::InvalidArgument(m));
        OrgId::parse(&self.org)?;
        CredentialName::parse(&self.name)
            .map_err(|e| VaultError::InvalidArgument(format!("identity provider name: {e}")))?;
        if self.issuer.is_empty() || self.issuer.chars().any(char::is_control) {
            return bad("the issuer must be the exact, non-empty `iss` value its tokens carry".into());
        }
        if !PROVIDER_ALGS.contains(&self.alg.as_str()) {
            return bad(format!(
                "alg `{}` is not accepted: use one of {} (HS256 cannot be verified against a public JWKS; `none` never)",
                self.alg,
                PROVIDER_ALGS.join(", ")
            ));
        }
        if self.audience.iter().any(|a| a.is_empty() || a.contains(',')) {
            return bad("audiences must be non-empty and contain no comma".into());
        }
        if !(0..=300).contains(&self.leeway_seconds) {
            return bad("the leeway is 0 to 300 seconds".into());
        }
        if !(60..=86_400).contains(&self.refresh_seconds) {
            return bad("the JWKS refresh interval is 60 seconds to 1 day".into());
        }
        if !(60..=30 * 86_400).contains(&self.max_token_lifetime_seconds) {
            return bad("the longest token lifetime is 60 seconds to 30 days".into());
        }
        if self.subject_claim.is_empty() || self.subject_claim.len() > 64 {
            return bad("the subject claim name must be 1 to 64 characters".into());
        }
        match &self.jwks {
            JwksSource::Url(u) => {
                let url =
                    url::Url::parse(u).map_err(|e| VaultError::InvalidArgument(format!("JWKS URL `{u}`: {e}")))?;
                if url.scheme() != "https" || url.host_str().is_none() {
                    return bad(format!(
                        "the JWKS URL `{u}` must be https://: keys fetched in clear could be replaced"
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return bad("the JWKS URL must not carry user information".into());
                }
            }
            JwksSource::Static(doc) => {
                if doc.len() > MAX_JWKS_BYTES {
                    return bad(format!("the JWKS is over {MAX_JWKS_BYTES} bytes"));
                }
                if check_jwks(doc).map_err(|e| VaultError::InvalidArgument(e.to_string()))? == 0 {
                    return bad(
                        "the JWKS has no keys, so no token could ever be verified; add the issuer's public keys".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A JWKS document must be a JSON object with a `keys` array of objects, and
/// hold no private or symmetric key material (a JWKS is published).
pub fn check_jwks(doc: &str) -> Result<usize, JwksError> {
    let v: serde_json::Value = serde_json::from_str(doc).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let keys = v.get("keys").and_then(|k| k.as_array()).ok_or(JwksError::NoKeys)?;
    for k in keys {
        let k = k.as_object().ok_or(JwksError::KeyNotObject)?;
        if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| k.contains_key(*m)) {
            return Err(JwksError::PrivateMaterial);
        }
    }
    Ok(keys.len())
}

/// Why a JWKS document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON (the parser's reason).
    #[error("the JWKS is not JSON: {0}")]
    NotJson(String),
    /// No `keys` array.
    #[error("the JWKS has no `keys` array")]
    NoKeys,
    /// A key that is not an object.
    #[error("every JWKS key must be a JSON object")]
    KeyNotObject,
    /// Private or symmetric key material.
    #[error("the JWKS holds private or symmetric key material; publish only public keys")]
    PrivateMaterial,
}

fn idp_not_found(org: &str, name: &str) -> VaultError {
    VaultError::refused(
        ErrorCode::IdentityProviderNotFound,
        format!("no identity provider `{name}` in `{org}` (see `latchkey idp list --org {org}`)"),
    )
}

/// In the transaction `$tx`: clear agent `$agent`'s JWT binding, with its
/// change record and audit event. Evaluates to `Result<(), VaultError>`.
macro_rules! unbind_in_tx {
    ($tx:expr, $org:expr, $agent:expr, $actor:expr, $at:expr, $detail:expr) => {{
        let (org, agent): (&str, &str) = ($org, $agent);
        let mut c = DirectoryChange::new(org, format!("@agent/{agent}"), AuditAction::AgentUnbindJwt, $actor);
        c.agent = Some(agent);
        c.detail = $detail;
        c.at = $at;
        async {
            sqlx::query("UPDATE agents SET jwt_provider = NULL, jwt_subject = NULL WHERE org = $1 AND name = $2")
                .bind(org)
                .bind(agent)
                .execute(&mut *$tx)
                .await?;
            record_change!($tx, c)
        }
        .await
        .map_err(db_err)
    }};
}

type ProviderRow =
    (String, String, String, String, Option<String>, i64, Option<String>, Option<String>, i64, String, i64);

fn from_row(r: ProviderRow) -> IdentityProvider {
    let (org, name, issuer, alg, audience, leeway_seconds, jwks_url, jwks_json, refresh_seconds, subject_claim, max) =
        r;
    IdentityProvider {
        org,
        name,
        issuer,
        alg,
        audience: audience.map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default(),
        leeway_seconds,
        jwks: match jwks_url {
            Some(u) => JwksSource::Url(u),
            None => JwksSource::Static(jwks_json.unwrap_or_default()),
        },
        refresh_seconds,
        subject_claim,
        max_token_lifetime_seconds: max,
    }
}

impl Vault {
    /// Add or replace an identity provider.
    pub async fn put_identity_provider(&self, p: &IdentityProvider, actor: &str) -> Result<(), VaultError> {
        p.check()?;
        let (url, json) = match &p.jwks {
            JwksSource::Url(u) => (Some(u.as_str()), None),
            JwksSource::Static(d) => (None, Some(d.as_str())),
        };
        let audience = (!p.audience.is_empty()).then(|| p.audience.join(","));
        let mut change = DirectoryChange::new(&p.org, format!("@idp/{}", p.name), AuditAction::IdpPut, actor);
        change.detail = Some(format!("idp {} issuer {}", p.name, p.issuer));
        let now = change.at;
        on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let same: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM identity_providers WHERE org = $1 AND issuer = $2 AND name <> $3")
                    .bind(&p.org)
                    .bind(&p.issuer)
                    .bind(&p.name)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
            if let Some((other,)) = same.first() {
                return Err(VaultError::refused(
                    ErrorCode::IssuerExists,
                    format!(
                        "identity provider `{other}` of `{}` already trusts issuer {}; change that one \
                        (`latchkey idp add {other} …` replaces it) or delete it first",
                        p.org, p.issuer
                    ),
                ));
            }
            sqlx::query(
                "INSERT INTO identity_providers (org, name, issuer, alg, audience, leeway_seconds, jwks_url, jwks_json, \
                 refresh_seconds, subject_claim, created_at, max_token_lifetime_seconds) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (org, name) DO UPDATE SET issuer = $3, alg = $4, audience = $5, leeway_seconds = $6, \
                 jwks_url = $7, jwks_json = $8, refresh_seconds = $9, subject_claim = $10, \
                 max_token_lifetime_seconds = $12",
            )
            .bind(&p.org)
            .bind(&p.name)
            .bind(&p.issuer)
            .bind(&p.alg)
            .bind(audience)
            .bind(p.leeway_seconds)
            .bind(url)
            .bind(json)
            .bind(p.refresh_seconds)
            .bind(&p.subject_claim)
            .bind(now)
            .bind(p.max_token_lifetime_seconds)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            record_change!(tx, change).map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        self.changed(&change);
        Ok(())
    }

    /// Identity providers of an organisation (all when `None`).
    pub async fn list_identity_providers(&self, org: Option<&str>) -> Result<Vec<IdentityProvider>, VaultError> {
        let rows: Vec<ProviderRow> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT org, name, issuer, alg, audience, leeway_seconds, jwks_url, jwks_json, refresh_seconds, \
                 subject_claim, max_token_lifetime_seconds FROM identity_providers \
                 WHERE ($1 IS NULL OR org = $1) ORDER BY org, name",
            )
            .bind(org)
            .fetch_all(pool)
            .await
            .map_err(db_err)?
        });
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Every identity provider, through a cache that any change invalidates.
    pub async fn identity_providers(&self) -> Result<std::sync::Arc<Vec<IdentityProvider>>, VaultError> {
        let generation = self.change_generation();
        if let Some(hit) = self.idp_cache.get(&(), generation) {
            return Ok(hit);
        }
        let all = std::sync::Arc::new(self.list_identity_providers(None).await?);
        self.idp_cache.put((), all.clone(), generation);
        Ok(all)
    }

    /// The identity provider `name` of `org`, or `identity_provider_not_found`.
    pub async fn get_identity_provider(&self, org: &str, name: &str) -> Result<IdentityProvider, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        self.list_identity_providers(Some(&org))
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| idp_not_found(&org, name))
    }

    /// Delete an identity provider: refused (`in_use`, naming them) while
    /// agents are bound to it, unless `force`, which unbinds them in the same
    /// transaction (each unbinding in the audit trail). Returns the agents
    /// unbound.
    pub async fn delete_identity_provider(
        &self,
        org: &str,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<Vec<String>, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let mut change = DirectoryChange::new(&org, format!("@idp/{name}"), AuditAction::IdpDelete, actor);
        change.detail = Some(format!("idp {name}"));
        let unbound = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let bound: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM agents WHERE org = $1 AND jwt_provider = $2 ORDER BY name")
                    .bind(&org)
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
            let bound: Vec<String> = bound.into_iter().map(|(n,)| n).collect();
            if !bound.is_empty() && !force {
                return Err(VaultError::refused(
                    ErrorCode::InUse,
                    format!(
                        "identity provider `{name}` has {} bound ({}); unbind them (`latchkey agent unbind-jwt \
                        NAME`) or delete with --force to unbind all",
                        crate::directory::agents::plural(bound.len(), "agent"),
                        bound.join(", ")
                    ),
                ));
            }
            let n = sqlx::query("DELETE FROM identity_providers WHERE org = $1 AND name = $2")
                .bind(&org)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n == 0 {
                return Err(idp_not_found(&org, name));
            }
            for agent in &bound {
                unbind_in_tx!(tx, &org, agent, actor, change.at, Some(format!("idp {name} deleted")))?;
            }
            record_change!(tx, change).map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            bound
        });
        self.changed(&change);
        for agent in &unbound {
            crate::audit::emit_cascade(
                &org,
                "",
                AuditAction::AgentUnbindJwt,
                actor,
                &format!("agent {agent} (idp {name} deleted)"),
            );
        }
        Ok(unbound)
    }

    /// Remove agent `name`'s JWT binding: its provider's tokens no longer
    /// identify it (its agent token, if it has one, still does).
    pub async fn unbind_agent_jwt(&self, org: &str, name: &str, actor: &str) -> Result<(), VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let agent = self.require_agent(&org, name).await?;
        let Some((provider, _)) = agent.jwt else {
            return Err(VaultError::refused(
                ErrorCode::AttachmentNotFound,
                format!("agent `{name}` is not bound to a JWT identity"),
            ));
        };
        let at = crate::storage::to_micros(time::OffsetDateTime::now_utc());
        let unbound = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            // Still bound to that provider, in this transaction: an agent
            // deleted or rebound meanwhile is not reported as unbound.
            let bound: Option<(String,)> =
                sqlx::query_as("SELECT name FROM agents WHERE org = $1 AND name = $2 AND jwt_provider = $3")
                    .bind(&org)
                    .bind(name)
                    .bind(&provider)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            if bound.is_some() {
                unbind_in_tx!(tx, &org, name, actor, at, Some(format!("idp {provider}")))?;
                tx.commit().await.map_err(db_err)?;
            }
            bound.is_some()
        });
        if !unbound {
            return Err(VaultError::refused(
                ErrorCode::AttachmentNotFound,
                format!("agent `{name}` is no longer bound to `{provider}`"),
            ));
        }
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::AgentUnbindJwt, actor);
        change.agent = Some(name);
        change.detail = Some(format!("idp {provider}"));
        self.changed(&change);
        Ok(())
    }

    /// Bind agent `name` to a JWT subject of one of its organisation's
    /// identity providers, creating the agent (with no token) if it does not
    /// exist. Returns whether it was created.
    pub async fn bind_agent_jwt(
        &self,
        org: &str,
        name: &str,
        provider: &str,
        subject: &str,
        actor: &str,
    ) -> Result<bool, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        CredentialName::parse(name).map_err(|e| VaultError::InvalidArgument(format!("agent name: {e}")))?;
        if subject.is_empty() || subject.len() > 1024 || subject.chars().any(char::is_control) {
            return Err(VaultError::InvalidArgument("the JWT subject must be 1 to 1024 printable characters".into()));
        }
        if !self.list_identity_providers(Some(&org)).await?.iter().any(|p| p.name == provider) {
            return Err(idp_not_found(&org, provider));
        }
        let id = crate::directory::agents::random_id()?;
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::AgentBindJwt, actor);
        change.agent = Some(name);
        change.detail = Some(format!("idp {provider}"));
        let now = change.at;
        let result = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let updated = sqlx::query("UPDATE agents SET jwt_provider = $1, jwt_subject = $2 WHERE org = $3 AND name = $4")
                .bind(provider)
                .bind(subject)
                .bind(&org)
                .bind(name)
                .execute(&mut *tx)
                .await;
            let result = match updated {
                Ok(r) if r.rows_affected() > 0 => Ok(false),
                Ok(_) => sqlx::query(
                    "INSERT INTO agents (id, org, name, token_hash, created_at, disabled, jwt_provider, jwt_subject) \
                     VALUES ($1, $2, $3, NULL, $4, FALSE, $5, $6)",
                )
                .bind(&id)
                .bind(&org)
                .bind(name)
                .bind(now)
                .bind(provider)
                .bind(subject)
                .execute(&mut *tx)
                .await
                .map(|_| true),
                Err(e) => Err(e),
            };
            if result.is_ok() {
                record_change!(tx, change).map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
            }
            result
        });
        let created = match result {
            Ok(c) => c,
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                return Err(VaultError::refused(
                    ErrorCode::SubjectBound,
                    format!(
                        "subject `{subject}` of `{provider}` is already bound to another agent (unbind it with \
                        `latchkey agent unbind-jwt NAME`), or `{name}` was just created"
                    ),
                ));
            }
            Err(e) => return Err(db_err(e)),
        };
        self.changed(&change);
        Ok(created)
    }

    /// The enabled agent bound to `(provider, subject)` in `org`, cached like
    /// token lookups.
    pub async fn agent_by_jwt_subject(
        &self,
        org: &str,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Agent>, VaultError> {
        let key = (org.to_string(), provider.to_string(), subject.to_string());
        let generation = self.change_generation();
        if let Some(hit) = self.jwt_agent_cache.get(&key, generation) {
            return Ok(hit);
        }
        let row: Option<(String, String, String, i64, bool)> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT id, org, name, created_at, disabled FROM agents \
                 WHERE org = $1 AND jwt_provider = $2 AND jwt_subject = $3",
            )
            .bind(org)
            .bind(provider)
            .bind(subject)
            .fetch_all(pool)
            .await
            .map_err(db_err)?
            .pop()
        });
        let agent = row
            .map(|(id, org, name, created, disabled)| Agent {
                id,
                org,
                name,
                created_at: from_micros(created),
                disabled,
                jwt: Some((provider.to_string(), subject.to_string())),
            })
            .filter(|a| !a.disabled);
        self.jwt_agent_cache.put(key, agent.clone(), generation);
        Ok(agent)
    }
}
