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

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::error::ErrorCode;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::audit::AuditAction;
use crate::credentials::model::ModelError;
use crate::credentials::model::{CredentialName, OrgId};
use crate::credentials::service::{AttachmentKind, Vault, VaultError};
use crate::directory::{DirectoryChange, attachment_in_tx, db_err, record_change};
use crate::storage::{BeginWrite as _, from_micros, on_db, to_micros};
use latchkey_core::secret::Secret;

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
        .map_err(|_| crate::credentials::crypto::VaultCryptoError::Crypto("the random number generator failed"))?;
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
        .map_err(|_| crate::credentials::crypto::VaultCryptoError::Crypto("the random number generator failed"))?;
    Ok(hex::encode(id))
}

/// Why a presented token has the wrong shape, before any lookup: surrounding
/// whitespace and truncation are the usual copy-paste accidents.
pub fn check_token_shape(token: &str, prefix: &'static str, what: &'static str) -> Result<(), TokenShapeError> {
    if token.trim() != token {
        return Err(TokenShapeError::Whitespace { what, prefix });
    }
    if !token.starts_with(prefix) {
        return Err(TokenShapeError::WrongPrefix { what, prefix });
    }
    let body = &token[prefix.len()..];
    if body.len() < TOKEN_CHARS {
        return Err(TokenShapeError::Truncated { what, prefix, len: body.len() });
    }
    if body.len() > TOKEN_CHARS || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(TokenShapeError::Malformed { what, prefix });
    }
    Ok(())
}

/// Why a presented token cannot be one of ours, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenShapeError {
    /// Surrounding whitespace or a line break.
    #[error(
        "the {what} has surrounding whitespace or a line break (a copy-paste accident?); send it exactly, starting with {prefix}"
    )]
    Whitespace {
        /// Which token.
        what: &'static str,
        /// Its prefix.
        prefix: &'static str,
    },
    /// Another kind of token, or none.
    #[error("this is not a {what}: they start with {prefix}")]
    WrongPrefix {
        /// Which token.
        what: &'static str,
        /// Its prefix.
        prefix: &'static str,
    },
    /// Too short.
    #[error("the {what} is truncated: it has {len} characters after {prefix}, a whole one has {TOKEN_CHARS}")]
    Truncated {
        /// Which token.
        what: &'static str,
        /// Its prefix.
        prefix: &'static str,
        /// How many characters follow the prefix.
        len: usize,
    },
    /// Too long or not base64url.
    #[error("the {what} is malformed: {TOKEN_CHARS} base64url characters follow {prefix}")]
    Malformed {
        /// Which token.
        what: &'static str,
        /// Its prefix.
        prefix: &'static str,
    },
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
        let mut change = DirectoryChange::new(&org, format!("@token/{prefix}"), AuditAction::TokenCreate, actor);
        change.detail = Some(format!("token {prefix}"));
        on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO registration_tokens (token_hash, prefix, org, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&hash)
            .bind(&prefix)
            .bind(&org)
            .bind(to_micros(now))
            .bind(to_micros(expires_at))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            record_change!(tx, change).map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        self.changed(&change);
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
            .map_err(|e| RegistrationError::InvalidToken(e.to_string()))?;
        let org = OrgId::parse(org).map_err(VaultError::from)?.to_string();
        let name = agent_name(name)?.to_string();
        let prefix = redact_token(token);
        let hash = token_hash(token);
        let agent_token = new_token(AGENT_TOKEN_PREFIX)?;
        let agent_hash = token_hash(agent_token.expose());
        let id = random_id()?;
        let now = OffsetDateTime::now_utc();
        let at = to_micros(now);
        let actor = format!("registration:{prefix}");
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::Register, &actor);
        change.agent = Some(&name);
        change.detail = Some(format!("token {prefix}"));
        change.at = at;
        enum Outcome {
            Redeemed,
            Refused(Option<(String, i64, Option<i64>, Option<i64>)>),
            NameTaken,
        }
        let outcome = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let claimed = sqlx::query(
                "UPDATE registration_tokens SET used_at = $1, agent_id = $2 \
                 WHERE token_hash = $3 AND org = $4 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
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
                        record_change!(tx, change).map_err(db_err)?;
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
                let row: Option<(String, i64, Option<i64>, Option<i64>)> =
                    sqlx::query_as("SELECT org, expires_at, used_at, revoked_at FROM registration_tokens WHERE token_hash = $1")
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
                self.changed(&change);
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
            Outcome::Refused(Some((_, _, None, Some(_)))) => {
                refused("invalid_token");
                Err(RegistrationError::InvalidToken(format!(
                    "registration token {prefix} was revoked; ask an operator for a new one"
                )))
            }
            Outcome::Refused(Some((_, _, Some(_), _))) => {
                refused("invalid_token");
                Err(RegistrationError::InvalidToken(format!(
                    "registration token {prefix} was already used; tokens are single-use"
                )))
            }
            Outcome::Refused(Some((token_org, _, None, None))) if token_org != org => {
                refused("org_mismatch");
                Err(RegistrationError::OrgMismatch { prefix, asked: org })
            }
            Outcome::Refused(Some((_, expires, None, None))) => {
                refused("expired_token");
                let _ = from_micros(expires);
                Err(RegistrationError::ExpiredToken(prefix))
            }
        }
    }

    /// Create an agent directly (operator), returning its token once.
    pub async fn create_agent(&self, org: &str, name: &str, actor: &str) -> Result<IssuedAgent, VaultError> {
        self.create_agent_with(org, name, &[], actor).await
    }

    /// Create an agent attached to `credentials`, all in one transaction:
    /// an unknown credential (a typo) leaves no agent behind, so the
    /// operator can correct the name and retry.
    pub async fn create_agent_with(
        &self,
        org: &str,
        name: &str,
        credentials: &[String],
        actor: &str,
    ) -> Result<IssuedAgent, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let name = agent_name(name)?.to_string();
        for c in credentials {
            CredentialName::parse(c).map_err(|e| VaultError::InvalidArgument(format!("credential name: {e}")))?;
        }
        let token = new_token(AGENT_TOKEN_PREFIX)?;
        let id = random_id()?;
        let now = OffsetDateTime::now_utc();
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::AgentCreate, actor);
        change.agent = Some(&name);
        change.at = to_micros(now);
        on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let inserted = sqlx::query(
                "INSERT INTO agents (id, org, name, token_hash, created_at, disabled) VALUES ($1, $2, $3, $4, $5, FALSE)",
            )
            .bind(&id)
            .bind(&org)
            .bind(&name)
            .bind(token_hash(token.expose()))
            .bind(change.at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                    return Err(VaultError::AgentExists { org: org.clone(), name: name.clone() });
                }
                Err(e) => return Err(db_err(e)),
            }
            record_change!(tx, change).map_err(db_err)?;
            for credential in credentials {
                let attached = attachment_in_tx!(tx, &org, credential, AttachmentKind::Agent, &name, true, actor, change.at)
                    .map_err(db_err)?;
                if !attached {
                    // Dropping the transaction rolls the agent back.
                    return Err(ModelError::CredentialNotFound { name: credential.clone() }.into());
                }
            }
            tx.commit().await.map_err(db_err)?;
        });
        self.changed(&change);
        for credential in credentials {
            self.invalidate(&org, credential);
        }
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
        let action = if disabled { AuditAction::AgentDisable } else { AuditAction::AgentEnable };
        let mut change = DirectoryChange::new(org, format!("@agent/{name}"), action, actor);
        change.agent = Some(name);
        let n = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let n = sqlx::query("UPDATE agents SET disabled = $1 WHERE org = $2 AND name = $3")
                .bind(disabled)
                .bind(org)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n > 0 {
                record_change!(tx, change).map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            n
        });
        if n > 0 {
            self.changed(&change);
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
        // The credential must exist and be allowed to go to the upstream's
        // host, so a route that could only fail at call time is refused now.
        let host = upstream.host_str().unwrap_or_default();
        let credential = self.get(&org, &route.credential).await?;
        if !credential.credential.allows(host) {
            return Err(VaultError::refused(
                ErrorCode::DestinationNotAllowed,
                format!(
                    "credential `{}` may not be sent to `{host}` (its destinations: {}); allow it first with \
                    `latchkey credential update {} --add-destination {host}`",
                    route.credential,
                    if credential.credential.destinations.is_empty() {
                        "none".to_string()
                    } else {
                        credential
                            .credential
                            .destinations
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    route.credential,
                ),
            ));
        }
        let upstream = upstream.as_str().trim_end_matches('/').to_string();
        let mut change = DirectoryChange::new(&org, format!("@route/{}", route.name), AuditAction::RoutePut, actor);
        change.credential = Some(&route.credential);
        change.detail = Some(format!("route {} → {upstream}", route.name));
        let previous: Option<String> = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let previous: Option<(String,)> = sqlx::query_as("SELECT credential FROM routes WHERE org = $1 AND name = $2")
                .bind(&org)
                .bind(&route.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
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
            .bind(change.at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            record_change!(tx, change).map_err(db_err)?;
            let attached =
                attachment_in_tx!(tx, &org, &route.credential, AttachmentKind::Route, &route.name, true, actor, change.at)
                    .map_err(db_err)?;
            if !attached {
                return Err(ModelError::CredentialNotFound { name: route.credential.clone() }.into());
            }
            let previous = previous.map(|(c,)| c).filter(|c| *c != route.credential);
            if let Some(old) = &previous {
                // A credential deleted since has nothing to detach.
                attachment_in_tx!(tx, &org, old, AttachmentKind::Route, &route.name, false, actor, change.at)
                    .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            previous
        });
        self.changed(&change);
        self.invalidate(&org, &route.credential);
        if let Some(old) = previous {
            self.invalidate(&org, &old);
        }
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
        let mut change = DirectoryChange::new(org, format!("@route/{name}"), AuditAction::RouteDelete, actor);
        change.detail = Some(format!("route {name}"));
        let removed: Option<String> = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let previous: Option<(String,)> = sqlx::query_as("SELECT credential FROM routes WHERE org = $1 AND name = $2")
                .bind(org)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if let Some((credential,)) = &previous {
                sqlx::query("DELETE FROM routes WHERE org = $1 AND name = $2")
                    .bind(org)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let mut record = change.clone();
                record.credential = Some(credential);
                record_change!(tx, record).map_err(db_err)?;
                // A credential deleted since has nothing to detach.
                attachment_in_tx!(tx, org, credential, AttachmentKind::Route, name, false, actor, change.at)
                    .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            previous.map(|(c,)| c)
        });
        if let Some(credential) = &removed {
            change.credential = Some(credential);
            self.changed(&change);
            self.invalidate(org, credential);
        }
        Ok(removed.is_some())
    }
}

/// A registration token as listed: never its value, only what logs show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// The redacted prefix as logs show it (`lk_reg_AbCd…`); without the
    /// ellipsis it names the token for revocation.
    pub prefix: String,
    /// Its organisation.
    pub org: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was redeemed, if it was.
    pub used_at: Option<OffsetDateTime>,
    /// The agent it created, if it was redeemed and the agent still exists.
    pub agent: Option<String>,
    /// When an operator revoked it, if one did.
    pub revoked_at: Option<OffsetDateTime>,
}

impl RegistrationInfo {
    /// `active`, `used`, `revoked` or `expired`, as of `now`.
    pub fn state(&self, now: OffsetDateTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.used_at.is_some() {
            "used"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "active"
        }
    }
}

type RegistrationRow = (String, String, i64, i64, Option<i64>, Option<String>, Option<i64>);

fn registration_from_row(r: RegistrationRow) -> RegistrationInfo {
    let (prefix, org, created, expires, used, agent, revoked) = r;
    RegistrationInfo {
        prefix,
        org,
        created_at: from_micros(created),
        expires_at: from_micros(expires),
        used_at: used.map(from_micros),
        agent,
        revoked_at: revoked.map(from_micros),
    }
}

const REGISTRATION_SELECT: &str = "SELECT t.prefix, t.org, t.created_at, t.expires_at, t.used_at, a.name, t.revoked_at \
     FROM registration_tokens t LEFT JOIN agents a ON a.id = t.agent_id";

/// The credentials of `$org` an agent named `$name` is attached to, read
/// on `$conn`; evaluates to `Result<Vec<String>, sqlx::Error>`.
macro_rules! attached_credentials {
    ($conn:expr, $org:expr, $name:expr) => {
        sqlx::query_as::<_, (String,)>(
            "SELECT c.name FROM credential_attachments a JOIN credentials c ON c.id = a.credential_id \
             WHERE c.org = $1 AND a.kind = 'agent' AND a.name = $2 ORDER BY c.name",
        )
        .bind($org)
        .bind($name)
        .fetch_all($conn)
        .await
        .map(|rows| rows.into_iter().map(|(n,)| n).collect::<Vec<String>>())
    };
}

/// `route_not_found` for route `name` of `org`.
pub fn route_not_found(org: &str, name: &str) -> VaultError {
    VaultError::refused(ErrorCode::RouteNotFound, format!("no route named `{name}` in `{org}`"))
}

fn agent_not_found(org: &str, name: &str) -> VaultError {
    VaultError::refused(
        ErrorCode::AgentNotFound,
        format!("no agent named `{name}` in `{org}` (see `latchkey agent list --org {org}`)"),
    )
}

impl Vault {
    /// The agent `name` of `org`, enabled or not.
    pub async fn get_agent(&self, org: &str, name: &str) -> Result<Option<Agent>, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        Ok(self.list_agents(Some(&org)).await?.into_iter().find(|a| a.name == name))
    }

    /// The agent `name` of `org`, or `agent_not_found`.
    pub async fn require_agent(&self, org: &str, name: &str) -> Result<Agent, VaultError> {
        self.get_agent(org, name).await?.ok_or_else(|| agent_not_found(org, name))
    }

    /// The credentials of `org` the agent `name` is attached to.
    pub async fn credentials_of_agent(&self, org: &str, name: &str) -> Result<Vec<String>, VaultError> {
        Ok(on_db!(self.db(), pool => { attached_credentials!(pool, org, name).map_err(db_err)? }))
    }

    /// The route `name` of `org`, or `route_not_found`.
    pub async fn require_route(&self, org: &str, name: &str) -> Result<Route, VaultError> {
        self.route(org, name).await?.ok_or_else(|| route_not_found(org, name))
    }

    /// The credentials each agent is attached to: (org, agent) → credential
    /// names, for every organisation or one.
    pub async fn agent_credentials(
        &self,
        org: Option<&str>,
    ) -> Result<std::collections::BTreeMap<(String, String), Vec<String>>, VaultError> {
        let rows: Vec<(String, String, String)> = on_db!(self.db(), pool => {
            sqlx::query_as(
                "SELECT c.org, a.name, c.name FROM credential_attachments a JOIN credentials c ON c.id = a.credential_id \
                 WHERE a.kind = 'agent' AND ($1 IS NULL OR c.org = $1) ORDER BY c.org, a.name, c.name",
            )
            .bind(org)
            .fetch_all(pool)
            .await
            .map_err(db_err)?
        });
        let mut out = std::collections::BTreeMap::<(String, String), Vec<String>>::new();
        for (org, agent, credential) in rows {
            out.entry((org, agent)).or_default().push(credential);
        }
        Ok(out)
    }

    /// Delete agent `name`: refused (`in_use`, naming the credentials) while
    /// it is attached to credentials, unless `force`, which detaches it from
    /// each in the same transaction. Its token and JWT binding go with it.
    /// Returns the credentials it was detached from.
    pub async fn delete_agent(
        &self,
        org: &str,
        name: &str,
        force: bool,
        actor: &str,
    ) -> Result<Vec<String>, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::AgentDelete, actor);
        change.agent = Some(name);
        // The row is deleted first: on PostgreSQL that takes its lock, so an
        // attach still in flight (which holds a share lock on the row,
        // `Vault::set_attachment`) commits before the attachments are read
        // here, and none is left behind for a later agent of the same name.
        // A refused delete rolls back.
        let detached = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let n = sqlx::query("DELETE FROM agents WHERE org = $1 AND name = $2")
                .bind(&org)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n == 0 {
                return Err(agent_not_found(&org, name));
            }
            let attached = attached_credentials!(&mut *tx, &org, name).map_err(db_err)?;
            if !attached.is_empty() && !force {
                return Err(VaultError::refused(
                    ErrorCode::InUse,
                    format!(
                        "agent `{name}` is attached to {} ({}); detach it first (`latchkey credential detach NAME \
                         --agent {name}`) or delete with --force to detach it from all",
                        plural(attached.len(), "credential"),
                        attached.join(", ")
                    ),
                ));
            }
            for credential in &attached {
                attachment_in_tx!(tx, &org, credential, AttachmentKind::Agent, name, false, actor, change.at)
                    .map_err(db_err)?;
            }
            if !attached.is_empty() {
                change.detail = Some(format!("detached from {}", attached.join(", ")));
            }
            record_change!(tx, change).map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            attached
        });
        self.changed(&change);
        for credential in &detached {
            self.invalidate(&org, credential);
            crate::audit::emit_cascade(
                &org,
                credential,
                AuditAction::Detach,
                actor,
                &format!("agent {name} (deleted)"),
            );
        }
        Ok(detached)
    }

    /// Give agent `name` a new token, shown once; the old one is refused
    /// from the next call on, on every replica (the change record
    /// invalidates their token caches).
    pub async fn reissue_agent_token(&self, org: &str, name: &str, actor: &str) -> Result<IssuedAgent, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let token = new_token(AGENT_TOKEN_PREFIX)?;
        let mut change = DirectoryChange::new(&org, format!("@agent/{name}"), AuditAction::AgentTokenReissue, actor);
        change.agent = Some(name);
        change.detail = Some(format!("token {}", redact_token(token.expose())));
        on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let n = sqlx::query("UPDATE agents SET token_hash = $1 WHERE org = $2 AND name = $3")
                .bind(token_hash(token.expose()))
                .bind(&org)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if n == 0 {
                return Err(agent_not_found(&org, name));
            }
            record_change!(tx, change).map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        self.changed(&change);
        let agent = self.require_agent(&org, name).await?;
        Ok(IssuedAgent { agent, token })
    }

    /// Registration tokens of an organisation (all when `None`), newest
    /// first; never their values.
    pub async fn list_registration_tokens(&self, org: Option<&str>) -> Result<Vec<RegistrationInfo>, VaultError> {
        let sql =
            format!("{REGISTRATION_SELECT} WHERE ($1 IS NULL OR t.org = $1) ORDER BY t.created_at DESC, t.prefix");
        let rows: Vec<RegistrationRow> = on_db!(self.db(), pool => {
            sqlx::query_as(&sql).bind(org).fetch_all(pool).await.map_err(db_err)?
        });
        Ok(rows.into_iter().map(registration_from_row).collect())
    }

    /// Revoke an unused registration token of `org`, named by its prefix
    /// (`lk_reg_AbCd`, as `token list` shows it) or its whole value. A
    /// prefix that two tokens share is refused: give the whole token.
    pub async fn revoke_registration_token(
        &self,
        org: &str,
        which: &str,
        actor: &str,
    ) -> Result<RegistrationInfo, VaultError> {
        let org = OrgId::parse(org)?.to_string();
        let which = which.trim();
        let by_value =
            which.len() > 11 && check_token_shape(which, REGISTRATION_TOKEN_PREFIX, "registration token").is_ok();
        let prefix = redact_token(which);
        let hash = token_hash(which);
        // As listed (`lk_reg_AbCd`) or as logs show it (`lk_reg_AbCd…`).
        let stored_prefix = format!("{}…", which.trim_end_matches('…'));
        let mut change = DirectoryChange::new(&org, format!("@token/{prefix}"), AuditAction::TokenRevoke, actor);
        change.detail = Some(format!("token {prefix}"));
        let found = on_db!(self.db(), pool => {
            let mut tx = pool.begin_write().await.map_err(db_err)?;
            let rows: Vec<(Vec<u8>, Option<i64>, Option<i64>)> = if by_value {
                sqlx::query_as("SELECT token_hash, used_at, revoked_at FROM registration_tokens WHERE org = $1 AND token_hash = $2")
                    .bind(&org)
                    .bind(&hash)
                    .fetch_all(&mut *tx)
                    .await
            } else {
                sqlx::query_as("SELECT token_hash, used_at, revoked_at FROM registration_tokens WHERE org = $1 AND prefix = $2")
                    .bind(&org)
                    .bind(&stored_prefix)
                    .fetch_all(&mut *tx)
                    .await
            }
            .map_err(db_err)?;
            let (row_hash, used, revoked) = match rows.as_slice() {
                [] => {
                    return Err(VaultError::refused(
                        ErrorCode::TokenNotFound,
                        format!("no registration token `{prefix}` in `{org}` (see `latchkey token list --org {org}`)"),
                    ))
                }
                [one] => one.clone(),
                _ => {
                    return Err(VaultError::refused(
                        ErrorCode::InvalidArgument,
                        format!("{} registration tokens start with `{which}`; give the whole token", rows.len()),
                    ))
                }
            };
            if used.is_some() {
                return Err(VaultError::refused(
                    ErrorCode::InvalidArgument,
                    format!(
                        "registration token `{prefix}` was already redeemed; disable or delete the agent it created \
                         instead (`latchkey token list` names it)"
                    ),
                ));
            }
            if revoked.is_none() {
                // Conditional, like redemption: of a revoke and a redeem racing
                // on PostgreSQL, exactly one matches the unused row.
                let n = sqlx::query(
                    "UPDATE registration_tokens SET revoked_at = $1 \
                     WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
                )
                .bind(change.at)
                .bind(&row_hash)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                if n == 0 {
                    return Err(VaultError::refused(
                        ErrorCode::InvalidArgument,
                        format!("registration token `{prefix}` was redeemed while it was being revoked"),
                    ));
                }
                record_change!(tx, change).map_err(db_err)?;
            }
            let sql = format!("{REGISTRATION_SELECT} WHERE t.token_hash = $1");
            let row: RegistrationRow = sqlx::query_as(&sql).bind(&row_hash).fetch_one(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            (registration_from_row(row), revoked.is_none())
        });
        if found.1 {
            self.changed(&change);
        }
        Ok(found.0)
    }
}

/// `1 credential`, `2 credentials`.
pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
