//! Agents, agent tokens, registration tokens and proxy routes, stored beside
//! the credentials.
//!
//! Tokens are random, prefixed (`lk_agt_`, `lk_reg_`) so they are
//! recognisable in a leak scan, and stored only as SHA-256 hashes: a lookup is
//! by hash, so no stored token is ever compared byte by byte with a
//! presented one. Logs show a redacted prefix only ([`redact_token`]).
//!
//! Redemption of a registration token is one conditional `UPDATE … WHERE
//! used_at IS NULL AND expires_at > now`, in the same transaction that
//! creates the agent: of any number of concurrent redeemers, on one replica
//! or several, exactly one matches the row, and a crash leaves either both
//! the used token and the agent or neither.

use crate::error::ErrorCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::model::{CredentialName, OrgId};
use super::service::{AttachmentKind, Vault, VaultError};
use super::store::{BeginWrite as _, StoreError, from_micros, on_db, to_micros};
use crate::secret::Secret;

/// Prefix of agent tokens.
pub const AGENT_TOKEN_PREFIX: &str = "lk_agt_";
/// Prefix of registration tokens.
pub const REGISTRATION_TOKEN_PREFIX: &str = "lk_reg_";
/// Random bytes in a token (base64url: 43 characters).
const TOKEN_BYTES: usize = 32;
const TOKEN_CHARS: usize = 43;
/// The default lifetime of a registration token.
pub const DEFAULT_REGISTRATION_TTL: time::Duration = time::Duration::hours(1);

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Random id.
    pub id: String,
    /// Its organisation.
    pub org: String,
    /// Its name, unique in the organisation.
    pub name: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Disabled agents are refused.
    pub disabled: bool,
    /// The JWT identity it is bound to: (identity provider, subject).
    pub jwt: Option<(String, String)>,
}

/// A new agent and its token, shown once.
#[derive(Debug)]
pub struct IssuedAgent {
    /// The agent.
    pub agent: Agent,
    /// The agent token (`lk_agt_…`); only its hash is stored.
    pub token: Secret,
}

/// A registration token as created (the token is shown once).
#[derive(Debug)]
pub struct IssuedRegistration {
    /// The token (`lk_reg_…`).
    pub token: Secret,
    /// Its organisation.
    pub org: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// What logs show of it.
    pub prefix: String,
}

/// A proxy route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route name: the path segment after the proxy prefix.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// The upstream base URL (`https://api.openai.com`).
    pub upstream: String,
    /// The credential applied to every call.
    pub credential: String,
    /// Answer from the built-in mock upstream instead of the real one.
    pub mock: bool,
    /// A cheap path for `credential check` (`/v1/models`).
    pub check_path: Option<String>,
}

/// What logs and errors may show of a token: its prefix and first four
/// characters of the random part.
pub fn redact_token(token: &str) -> String {
    let t = token.trim();
    let visible = if t.starts_with(REGISTRATION_TOKEN_PREFIX) || t.starts_with(AGENT_TOKEN_PREFIX) { 11 } else { 4 };
    let cut = t.char_indices().nth(visible).map(|(i, _)| i).unwrap_or(t.len());
    format!("{}…", &t[..cut])
}

fn new_token(prefix: &str) -> Result<Secret, VaultError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; TOKEN_BYTES]);
    SystemRandom::new()
        .fill(&mut *bytes)
        .map_err(|_| super::crypto::VaultCryptoError::Crypto("the random number generator failed"))?;
    Ok(Secret::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(*bytes))))
}

/// SHA-256 of a token: what is stored and looked up.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes()).as_ref().to_vec()
}

pub(crate) fn random_id() -> Result<String, VaultError> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| super::crypto::VaultCryptoError::Crypto("the random number generator failed"))?;
    Ok(hex::encode(id))
}

/// Why a presented token has the wrong shape, before any lookup: surrounding
/// whitespace and truncation are the usual copy-paste accidents.
pub fn check_token_shape(token: &str, prefix: &str, what: &str) -> Result<(), String> {
    if token.trim() != token {
        return Err(format!(
            "the {what} has surrounding whitespace or a line break (a copy-paste accident?); send it exactly, \
             starting with {prefix}"
        ));
    }
    if !token.starts_with(prefix) {
        return Err(format!("this is not a {what}: they start with {prefix}"));
    }
    let body = &token[prefix.len()..];
    if body.len() < TOKEN_CHARS {
        return Err(format!(
            "the {what} is truncated: it has {} characters after {prefix}, a whole one has {TOKEN_CHARS}",
            body.len()
        ));
    }
    if body.len() > TOKEN_CHARS || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("the {what} is malformed: {TOKEN_CHARS} base64url characters follow {prefix}"));
    }
    Ok(())
}

/// Errors of registration, with the codes agents see.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Unknown, already used, or malformed (the message says which shape).
    #[error("{0}")]
    InvalidToken(String),
    /// Past its expiry.
    #[error("registration token {0} has expired; ask an operator for a new one (`latchkey token create`)")]
    ExpiredToken(String),
    /// Issued for another organisation.
    #[error("registration token {prefix} belongs to another organisation than `{asked}`")]
    OrgMismatch {
        /// The redacted token.
        prefix: String,
        /// The organisation the agent asked for.
        asked: String,
    },
    /// The agent name is taken in the organisation.
    #[error("an agent named `{0}` is already registered in this organisation")]
    AgentExists(String),
    /// Anything else.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl RegistrationError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistrationError::InvalidToken(_) => ErrorCode::InvalidToken,
            RegistrationError::ExpiredToken(_) => ErrorCode::ExpiredToken,
            RegistrationError::OrgMismatch { .. } => ErrorCode::OrgMismatch,
            RegistrationError::AgentExists(_) => ErrorCode::AgentExists,
            RegistrationError::Vault(e) => e.code(),
        }
    }
}

fn db_err(e: sqlx::Error) -> VaultError {
    VaultError::Store(StoreError::from(e))
}

fn agent_name(name: &str) -> Result<CredentialName, VaultError> {
    CredentialName::parse(name).map_err(|e| VaultError::InvalidArgument(format!("agent name: {e}")))
}

impl Vault {
    /// Create a registration token for `org`, valid for `ttl`.
    pub async fn create_registration_token(
        &self,
        org: &str,
        ttl: time::Duration,
        actor: &str,
    ) -> Result<IssuedRegistration, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        if ttl <= time::Duration::ZERO || ttl > time::Duration::days(30) {
            return Err(VaultError::InvalidArgument("a registration token lives between 1 second and 30 days".into()));
        }
        let token = new_token(REGISTRATION_TOKEN_PREFIX)?;
        let now = OffsetDateTime::now_utc();
        let expires_at = now + ttl;
        let prefix = redact_token(token.expose());
        let hash = token_hash(token.expose());
        on_db!(self.db(), pool => {
            sqlx::query(
                "INSERT INTO registration_tokens (token_hash, prefix, org, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&hash)
            .bind(&prefix)
            .bind(&org)
            .bind(to_micros(now))
            .bind(to_micros(expires_at))
            .execute(pool)
            .await
            .map_err(db_err)?;
        });
        tracing::info!(target: "latchkey::audit", action = "token-create", org = %org, token = %prefix, actor, "audit");
        Ok(IssuedRegistration { token, org, expires_at, prefix })
    }

    /// Redeem a registration token: create agent `name` in `org` and return
    /// its token. Exactly one of any number of concurrent redemptions of one
    /// token succeeds.
    pub async fn redeem_registration_token(
        &self,
        token: &str,
        org: &str,
        name: &str,
    ) -> Result<IssuedAgent, RegistrationError> {
        check_token_shape(token, REGISTRATION_TOKEN_PREFIX, "registration token")
            .map_err(RegistrationError::InvalidToken)?;
        let org = OrgId::parse(org).map_err(VaultError::from)?.to_string();
        let name = agent_name(name)?.to_string();
        let prefix = redact_token(token);
        let hash = token_hash(token);
        let agent_token = new_token(AGENT_TOKEN_PREFIX)?;
        let agent_hash = token_hash(agent_token.expose());
        let id = random_id()?;
        let now = OffsetDateTime::now_utc();
        let at = to_micros(now);
        enum Outcome {
            Redeemed,
            Refused(Option<(String, i64, Option<i64>)>),
            NameTaken,
        }
        let outcome = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let claimed = sqlx::query(
                "UPDATE registration_tokens SET used_at = $1, agent_id = $2 \
                 WHERE token_hash = $3 AND org = $4 AND used_at IS NULL AND expires_at > $1",
            )
            .bind(at)
            .bind(&id)
            .bind(&hash)
            .bind(&org)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if claimed == 1 {
                let inserted = sqlx::query(
                    "INSERT INTO agents (id, org, name, token_hash, created_at, disabled) VALUES ($1, $2, $3, $4, $5, FALSE)",
                )
                .bind(&id)
                .bind(&org)
                .bind(&name)
                .bind(&agent_hash)
                .bind(at)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => {
                        tx.commit().await.map_err(db_err)?;
                        Outcome::Redeemed
                    }
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        // The token stays unused: the rollback undoes the claim.
                        tx.rollback().await.map_err(db_err)?;
                        Outcome::NameTaken
                    }
                    Err(e) => return Err(db_err(e).into()),
                }
            } else {
                let row: Option<(String, i64, Option<i64>)> =
                    sqlx::query_as("SELECT org, expires_at, used_at FROM registration_tokens WHERE token_hash = $1")
                        .bind(&hash)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .pop();
                tx.rollback().await.map_err(db_err)?;
                Outcome::Refused(row)
            }
        });
        let refused = |code: &str| {
            tracing::warn!(target: "latchkey::audit", action = "register", org = %org, token = %prefix, outcome = code, "audit");
        };
        match outcome {
            Outcome::Redeemed => {
                tracing::info!(target: "latchkey::audit", action = "register", org = %org, agent = %name, token = %prefix, outcome = "ok", "audit");
                let agent = Agent { id, org, name, created_at: now, disabled: false, jwt: None };
                Ok(IssuedAgent { agent, token: agent_token })
            }
            Outcome::NameTaken => {
                refused("agent_exists");
                Err(RegistrationError::AgentExists(name))
            }
            Outcome::Refused(None) => {
                refused("invalid_token");
                Err(RegistrationError::InvalidToken(format!("registration token {prefix} is not known")))
            }
            Outcome::Refused(Some((_, _, Some(_)))) => {
                refused("invalid_token");
                Err(RegistrationError::InvalidToken(format!(
                    "registration token {prefix} was already used; tokens are single-use"
                )))
            }
            Outcome::Refused(Some((token_org, _, None))) if token_org != org => {
                refused("org_mismatch");
                Err(RegistrationError::OrgMismatch { prefix, asked: org })
            }
            Outcome::Refused(Some((_, expires, None))) => {
                refused("expired_token");
                let _ = from_micros(expires);
                Err(RegistrationError::ExpiredToken(prefix))
            }
        }
    }

    /// Create an agent directly (operator), returning its token once.
    pub async fn create_agent(&self, org: &str, name: &str, actor: &str) -> Result<IssuedAgent, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let name = agent_name(name)?.to_string();
        let token = new_token(AGENT_TOKEN_PREFIX)?;
        let id = random_id()?;
        let now = OffsetDateTime::now_utc();
        let result = on_db!(self.db(), pool => {
            sqlx::query(
                "INSERT INTO agents (id, org, name, token_hash, created_at, disabled) VALUES ($1, $2, $3, $4, $5, FALSE)",
            )
            .bind(&id)
            .bind(&org)
            .bind(&name)
            .bind(token_hash(token.expose()))
            .bind(to_micros(now))
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(()) => {}
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                return Err(VaultError::InvalidArgument(format!("an agent named `{name}` already exists in `{org}`")));
            }
            Err(e) => return Err(db_err(e)),
        }
        tracing::info!(target: "latchkey::audit", action = "agent-create", org = %org, agent = %name, actor, "audit");
        Ok(IssuedAgent { agent: Agent { id, org, name, created_at: now, disabled: false, jwt: None }, token })
    }

    /// The agent holding `token`, if any and enabled.
    pub async fn agent_by_token(&self, token: &str) -> Result<Option<Agent>, VaultError> {
        let hash = token_hash(token);
        let row: Option<(String, String, String, i64, bool)> = on_db!(self.db(), pool => {
            sqlx::query_as("SELECT id, org, name, created_at, disabled FROM agents WHERE token_hash = $1")
                .bind(&hash)
                .fetch_all(pool)
                .await
                .map_err(db_err)?
                .pop()
        });
        Ok(row.map(|(id, org, name, created, disabled)| Agent {
            id,
            org,
            name,
            created_at: from_micros(created),
            disabled,
            jwt: None,
        }))
    }

    /// The enabled agent holding `token`, through a cache that any change
    /// (an agent disabled on another replica included) invalidates.
    pub async fn authenticate_agent(&self, token: &str) -> Result<Option<Agent>, VaultError> {
        let hash = token_hash(token);
        let generation = self.change_generation();
        if let Some(hit) = self.agent_cache.get(&hash, generation) {
            return Ok(hit);
        }
        let agent = self.agent_by_token(token).await?.filter(|a| !a.disabled);
        self.agent_cache.put(hash, agent.clone(), generation);
        Ok(agent)
    }

    /// The route `name` of `org`, cached like agents.
    pub async fn route(&self, org: &str, name: &str) -> Result<Option<Route>, VaultError> {
        let key = (org.to_string(), name.to_string());
        let generation = self.change_generation();
        if let Some(hit) = self.route_cache.get(&key, generation) {
            return Ok(hit);
        }
        let route = self.list_routes(Some(org)).await?.into_iter().find(|r| r.name == name);
        self.route_cache.put(key, route.clone(), generation);
        Ok(route)
    }

    /// Disable or enable an agent; takes effect for its next call everywhere.
    pub async fn set_agent_disabled(
        &self,
        org: &str,
        name: &str,
        disabled: bool,
        actor: &str,
    ) -> Result<bool, VaultError> {
        let n = on_db!(self.db(), pool => {
            sqlx::query("UPDATE agents SET disabled = $1 WHERE org = $2 AND name = $3")
                .bind(disabled)
                .bind(org)
                .bind(name)
                .execute(pool)
                .await
                .map_err(db_err)?
                .rows_affected()
        });
        if n > 0 {
            self.note_change(org, &format!("@agent/{name}")).await?;
            tracing::info!(target: "latchkey::audit", action = if disabled { "agent-disable" } else { "agent-enable" }, org = %org, agent = %name, actor, "audit");
        }
        Ok(n > 0)
    }

    /// Every agent, or those of one organisation.
    pub async fn list_agents(&self, org: Option<&str>) -> Result<Vec<Agent>, VaultError> {
        type Row = (String, String, String, i64, bool, Option<String>, Option<String>);
        let rows: Vec<Row> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT id, org, name, created_at, disabled, jwt_provider, jwt_subject FROM agents \
                 WHERE ($1 IS NULL OR org = $1) ORDER BY org, name",
            )
            .bind(org)
            .fetch_all(pool)
            .await
            .map_err(db_err)?
        });
        Ok(rows
            .into_iter()
            .map(|(id, org, name, created, disabled, provider, subject)| Agent {
                id,
                org,
                name,
                created_at: from_micros(created),
                disabled,
                jwt: provider.zip(subject),
            })
            .collect())
    }

    /// Add or replace a route, and keep the credentials' route attachments
    /// in step: the route is attached to its credential (which must exist),
    /// and detached from the one it used before, if that changed.
    pub async fn put_route(&self, route: &Route, actor: &str) -> Result<(), VaultError> {
        let org = OrgId::parse(&route.org)?.to_string();
        CredentialName::parse(&route.name).map_err(|e| VaultError::InvalidArgument(format!("route name: {e}")))?;
        let upstream = url::Url::parse(&route.upstream)
            .map_err(|e| VaultError::InvalidArgument(format!("upstream `{}`: {e}", route.upstream)))?;
        if !matches!(upstream.scheme(), "https" | "http") || upstream.host_str().is_none() {
            return Err(VaultError::InvalidArgument("the upstream must be an http(s) URL with a host".into()));
        }
        if !upstream.username().is_empty() || upstream.password().is_some() || upstream.query().is_some() {
            return Err(VaultError::InvalidArgument(
                "the upstream must not carry user information or a query; the credential supplies authentication"
                    .into(),
            ));
        }
        let upstream = upstream.as_str().trim_end_matches('/').to_string();
        self.get(&org, &route.credential).await?;
        let previous = self.list_routes(Some(&org)).await?.into_iter().find(|r| r.name == route.name);
        let now = to_micros(OffsetDateTime::now_utc());
        on_db!(self.db(), pool => {
            sqlx::query(
                "INSERT INTO routes (name, org, upstream, credential, mock, check_path, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (org, name) DO UPDATE SET upstream = $3, credential = $4, mock = $5, check_path = $6",
            )
            .bind(&route.name)
            .bind(&org)
            .bind(&upstream)
            .bind(&route.credential)
            .bind(route.mock)
            .bind(route.check_path.as_deref())
            .bind(now)
            .execute(pool)
            .await
            .map_err(db_err)?;
        });
        self.note_change(&org, &format!("@route/{}", route.name)).await?;
        if let Some(old) = previous.filter(|old| old.credential != route.credential) {
            self.detach_route(&org, &old.credential, &route.name, actor).await;
        }
        self.set_attachment(&org, &route.credential, AttachmentKind::Route, &route.name, true, actor).await?;
        tracing::info!(target: "latchkey::audit", action = "route-put", org = %org, route = %route.name, credential = %route.credential, actor, "audit");
        Ok(())
    }

    /// Routes of an organisation (all when `None`).
    pub async fn list_routes(&self, org: Option<&str>) -> Result<Vec<Route>, VaultError> {
        let rows: Vec<(String, String, String, String, bool, Option<String>)> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT name, org, upstream, credential, mock, check_path FROM routes \
                 WHERE ($1 IS NULL OR org = $1) ORDER BY org, name",
            )
            .bind(org)
            .fetch_all(pool)
            .await
            .map_err(db_err)?
        });
        Ok(rows
            .into_iter()
            .map(|(name, org, upstream, credential, mock, check_path)| Route {
                name,
                org,
                upstream,
                credential,
                mock,
                check_path,
            })
            .collect())
    }

    /// Store the result of a provider check (not a change: no version bump).
    pub async fn record_check(&self, org: &str, name: &str, state: &str) -> Result<(), VaultError> {
        let at = to_micros(OffsetDateTime::now_utc());
        on_db!(self.db(), pool => {
            sqlx::query("UPDATE credentials SET check_state = $1, checked_at = $2 WHERE org = $3 AND name = $4")
                .bind(state)
                .bind(at)
                .bind(org)
                .bind(name)
                .execute(pool)
                .await
                .map_err(db_err)?;
        });
        tracing::info!(target: "latchkey::audit", action = "check", org = %org, credential = %name, outcome = state, "audit");
        Ok(())
    }

    /// The last provider check of every credential: (org, name) → (state, when).
    pub async fn check_states(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), (String, OffsetDateTime)>, VaultError> {
        let rows: Vec<(String, String, String, i64)> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT org, name, check_state, checked_at FROM credentials WHERE check_state IS NOT NULL AND checked_at IS NOT NULL",
            )
            .fetch_all(pool)
            .await
            .map_err(db_err)?
        });
        Ok(rows.into_iter().map(|(o, n, s, t)| ((o, n), (s, from_micros(t)))).collect())
    }

    /// Remove a route and its attachment to its credential; returns whether it existed.
    pub async fn delete_route(&self, org: &str, name: &str, actor: &str) -> Result<bool, VaultError> {
        let previous = self.list_routes(Some(org)).await?.into_iter().find(|r| r.name == name);
        let n = on_db!(self.db(), pool => {
            sqlx::query("DELETE FROM routes WHERE org = $1 AND name = $2")
                .bind(org)
                .bind(name)
                .execute(pool)
                .await
                .map_err(db_err)?
                .rows_affected()
        });
        if n > 0 {
            self.note_change(org, &format!("@route/{name}")).await?;
            tracing::info!(target: "latchkey::audit", action = "route-delete", org = %org, route = %name, actor, "audit");
            if let Some(old) = previous {
                self.detach_route(org, &old.credential, name, actor).await;
            }
        }
        Ok(n > 0)
    }

    /// Detach route `name` from `credential`. A credential deleted in the
    /// meantime has nothing to detach, so failures are logged, not returned.
    async fn detach_route(&self, org: &str, credential: &str, name: &str, actor: &str) {
        if let Err(e) = self.set_attachment(org, credential, AttachmentKind::Route, name, false, actor).await
            && e.code() != "credential_not_found"
        {
            tracing::warn!(org = %org, credential = %credential, route = %name, code = e.code().as_str(), "could not detach a route");
        }
    }
}
