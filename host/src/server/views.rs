//! The directory's objects as every surface shows them: the admin API's
//! answers and the CLI's `--json` output are these types, so the field
//! names, units (RFC 3339 times, seconds) and shapes are the same
//! everywhere. None of them carries a secret or a whole token.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::vault::agents::{Agent, RegistrationInfo, Route};
use crate::vault::identity::{IdentityProvider, JwksSource};

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

/// A JWT identity an agent is bound to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JwtBinding {
    /// The identity provider's name.
    pub idp: String,
    /// The subject its tokens name the agent by.
    pub subject: String,
}

/// An agent (never its token).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    /// Its name.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// `enabled` or `disabled`; disabled agents are refused.
    pub state: &'static str,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// The JWT identity it is bound to, if any.
    pub jwt: Option<JwtBinding>,
    /// The credentials it may use.
    pub credentials: Vec<String>,
}

impl AgentView {
    /// `agent` with the credentials it is attached to.
    pub fn new(agent: Agent, credentials: Vec<String>) -> AgentView {
        AgentView {
            state: if agent.disabled { "disabled" } else { "enabled" },
            disabled: agent.disabled,
            created_at: rfc3339(agent.created_at),
            jwt: agent.jwt.map(|(idp, subject)| JwtBinding { idp, subject }),
            name: agent.name,
            org: agent.org,
            credentials,
        }
    }

    /// Agent `name` of `org` with the credentials it is attached to, or
    /// `agent_not_found`.
    pub async fn load(
        vault: &crate::vault::Vault,
        org: &str,
        name: &str,
    ) -> Result<AgentView, crate::vault::VaultError> {
        let agent = vault.require_agent(org, name).await?;
        let credentials = vault.credentials_of_agent(&agent.org, &agent.name).await?;
        Ok(AgentView::new(agent, credentials))
    }

    /// Every agent of `agents`, each with its credentials from `attached`
    /// ([`crate::vault::Vault::agent_credentials`]).
    pub fn all(agents: Vec<Agent>, attached: &BTreeMap<(String, String), Vec<String>>) -> Vec<AgentView> {
        agents
            .into_iter()
            .map(|a| {
                let credentials = attached.get(&(a.org.clone(), a.name.clone())).cloned().unwrap_or_default();
                AgentView::new(a, credentials)
            })
            .collect()
    }
}

/// An agent and its token, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentToken {
    /// The agent's name.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// Its token (`lk_agt_…`); only its hash is stored.
    pub token: String,
}

/// A proxy route.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteView {
    /// The route name: the path segment after the proxy prefix.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// The upstream base URL.
    pub upstream: String,
    /// The credential applied to every call.
    pub credential: String,
    /// Whether it answers from the built-in mock upstream.
    pub mock: bool,
    /// A cheap path for the provider check (`/v1/models`).
    pub check_path: Option<String>,
}

impl From<&Route> for RouteView {
    fn from(r: &Route) -> RouteView {
        RouteView {
            name: r.name.clone(),
            org: r.org.clone(),
            upstream: r.upstream.clone(),
            credential: r.credential.clone(),
            mock: r.mock,
            check_path: r.check_path.clone(),
        }
    }
}

/// A JWT identity provider.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdpView {
    /// Its name, unique in the organisation.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// The one algorithm accepted (RS256, ES256 or EdDSA).
    pub alg: String,
    /// Accepted audiences; empty means tokens must name none.
    pub audience: Vec<String>,
    /// Clock-skew allowance for exp, nbf and iat, in seconds.
    pub leeway_seconds: i64,
    /// Where its key set is fetched from (or `jwks`).
    pub jwks_url: Option<String>,
    /// Its key set, given inline (or `jwks_url`).
    pub jwks: Option<serde_json::Value>,
    /// How often a URL key set is refreshed, in seconds.
    pub refresh_seconds: i64,
    /// The claim that names the agent.
    pub subject_claim: String,
    /// The longest a token may live, in seconds (`exp` after `iat` and after now).
    pub max_token_lifetime_seconds: i64,
}

impl From<&IdentityProvider> for IdpView {
    fn from(p: &IdentityProvider) -> IdpView {
        let (jwks_url, jwks) = match &p.jwks {
            JwksSource::Url(u) => (Some(u.clone()), None),
            JwksSource::Static(d) => (None, serde_json::from_str(d).ok()),
        };
        IdpView {
            name: p.name.clone(),
            org: p.org.clone(),
            issuer: p.issuer.clone(),
            alg: p.alg.clone(),
            audience: p.audience.clone(),
            leeway_seconds: p.leeway_seconds,
            jwks_url,
            jwks,
            refresh_seconds: p.refresh_seconds,
            subject_claim: p.subject_claim.clone(),
            max_token_lifetime_seconds: p.max_token_lifetime_seconds,
        }
    }
}

/// A registration token as listed: its prefix, never its value.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    /// What logs show of it (`lk_reg_AbCd`); names it for revocation.
    pub prefix: String,
    /// The organisation its agent will belong to.
    pub org: String,
    /// `active`, `used`, `revoked` or `expired`.
    pub state: &'static str,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// When it stops working (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// When it was redeemed (RFC 3339).
    #[schema(format = DateTime)]
    pub used_at: Option<String>,
    /// The agent it created.
    pub agent: Option<String>,
    /// When it was revoked (RFC 3339).
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

impl From<&RegistrationInfo> for TokenView {
    fn from(t: &RegistrationInfo) -> TokenView {
        TokenView {
            prefix: t.prefix.trim_end_matches('…').to_string(),
            org: t.org.clone(),
            state: t.state(OffsetDateTime::now_utc()),
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at),
            used_at: t.used_at.and_then(rfc3339),
            agent: t.agent.clone(),
            revoked_at: t.revoked_at.and_then(rfc3339),
        }
    }
}

/// A registration token, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewToken {
    /// The token (`lk_reg_…`), redeemed at `/v1/agents/register`.
    pub token: String,
    /// What logs and `token list` show of it.
    pub prefix: String,
    /// The organisation its agent will belong to.
    pub org: String,
    /// When it stops working (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

impl From<&crate::vault::agents::IssuedRegistration> for NewToken {
    fn from(t: &crate::vault::agents::IssuedRegistration) -> NewToken {
        NewToken {
            token: t.token.expose().to_string(),
            prefix: t.prefix.trim_end_matches('…').to_string(),
            org: t.org.clone(),
            expires_at: rfc3339(t.expires_at),
        }
    }
}

/// What a delete removed along with the object (a forced delete's cascade).
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The deleted object's name.
    pub name: String,
    /// Its organisation.
    pub org: String,
    /// Credentials an agent was detached from, agents an identity
    /// provider's deletion unbound, or routes a credential took along.
    pub cascaded: Vec<String>,
}
