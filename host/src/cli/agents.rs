//! `latchkey token …`, `latchkey agent …` and `latchkey route …`.

use clap::Subcommand;
use latchkey::error::ErrorCode;
use latchkey::vault::agents::{DEFAULT_REGISTRATION_TTL, Route};
use latchkey::vault::{Vault, parse_org};
use time::format_description::well_known::Rfc3339;

use crate::Failure;
use crate::cli::vault::cli_actor;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a single-use registration token (lk_reg_…) for an organisation.
    Create {
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
        /// How long it stays valid: 90s, 15m, 1h, 2d [default: 1h].
        #[arg(long)]
        ttl: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Create an agent and print its token (shown once).
    Add {
        /// The agent name.
        name: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// Bind an agent (created if needed, without a token) to the subject of
    /// JWTs from an identity provider: such a JWT then authenticates it.
    BindJwt {
        /// The agent name.
        name: String,
        /// The identity provider (latchkey idp add).
        #[arg(long)]
        idp: String,
        /// The subject claim's value, e.g. `repo:acme/app:ref:refs/heads/main` or a service account id.
        #[arg(long)]
        subject: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// List agents.
    List {
        /// Only this organisation.
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// Disable an agent: its token is refused from its next call on.
    Disable {
        /// The agent name.
        name: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// Enable a disabled agent.
    Enable {
        /// The agent name.
        name: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum IdpCmd {
    /// Add or replace an identity provider: an issuer whose JWTs, verified
    /// against its JWKS, identify agents.
    Add {
        /// The provider name.
        name: String,
        /// The exact `iss` its tokens carry, e.g. https://login.example.com/.
        #[arg(long)]
        issuer: String,
        /// The one algorithm accepted: RS256, ES256 or EdDSA.
        #[arg(long)]
        alg: String,
        /// An HTTPS URL of its JWKS (…/.well-known/jwks.json), fetched and refreshed by the broker.
        #[arg(long, conflicts_with = "jwks_file", required_unless_present = "jwks_file")]
        jwks_url: Option<String>,
        /// A file holding its JWKS (public keys that rarely change).
        #[arg(long)]
        jwks_file: Option<std::path::PathBuf>,
        /// Accepted audiences (repeatable or comma-separated); the token's `aud` must contain one.
        #[arg(long, value_delimiter = ',')]
        audience: Vec<String>,
        /// Clock-skew allowance for exp, nbf and iat, in seconds (0 to 300).
        #[arg(long, default_value_t = latchkey::vault::identity::DEFAULT_LEEWAY_SECONDS)]
        leeway: i64,
        /// How often a JWKS URL is refreshed: 90s, 5m, 1h [default: 5m].
        #[arg(long)]
        refresh: Option<String>,
        /// The claim naming the agent.
        #[arg(long, default_value = "sub")]
        subject_claim: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// List identity providers.
    List {
        /// Only this organisation.
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// Delete an identity provider (refused while agents are bound to it).
    Delete {
        /// The provider name.
        name: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RouteCmd {
    /// Add or replace a route: /<prefix>/NAME/… goes to UPSTREAM with CREDENTIAL applied.
    Add {
        /// The route name (the path segment after the proxy prefix).
        name: String,
        /// The upstream base URL, e.g. https://api.openai.com.
        #[arg(long)]
        upstream: String,
        /// The credential to apply.
        #[arg(long)]
        credential: String,
        /// Answer from the built-in mock upstream (shows what would be sent, secrets redacted).
        #[arg(long)]
        mock: bool,
        /// A cheap request path for `latchkey credential check`, e.g. /v1/models.
        #[arg(long)]
        check_path: Option<String>,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// List routes.
    List {
        /// Only this organisation.
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
    /// Delete a route.
    Delete {
        /// The route name.
        name: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
    },
}

/// `90s`, `15m`, `1h`, `2d`, or `None`.
pub fn parse_duration(s: &str) -> Option<time::Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok()?;
    match &s[split..] {
        "s" => Some(time::Duration::seconds(n)),
        "m" => Some(time::Duration::minutes(n)),
        "h" => Some(time::Duration::hours(n)),
        "d" => Some(time::Duration::days(n)),
        _ => None,
    }
}

/// `--ttl`: a [`parse_duration`].
pub fn parse_ttl(s: &str) -> Result<time::Duration, Failure> {
    parse_duration(s).ok_or_else(|| {
        Failure::new(ErrorCode::InvalidArgument, format!("--ttl `{s}`: give a duration like 90s, 15m, 1h or 2d"))
    })
}

fn org_of(org: &Option<String>) -> Result<String, Failure> {
    Ok(parse_org(org.as_deref())?.to_string())
}

pub async fn token(vault: &Vault, cmd: TokenCmd) -> Result<(), Failure> {
    let TokenCmd::Create { org, ttl, json } = cmd;
    let ttl = ttl.as_deref().map(parse_ttl).transpose()?.unwrap_or(DEFAULT_REGISTRATION_TTL);
    let issued = vault.create_registration_token(&org_of(&org)?, ttl, &cli_actor()).await?;
    let expires = issued.expires_at.format(&Rfc3339).unwrap_or_default();
    if json {
        let v = serde_json::json!({"token": issued.token.expose(), "org": issued.org, "expires_at": expires});
        println!("{v}");
    } else {
        println!("{}", issued.token.expose());
        eprintln!(
            "latchkey: registration token for organisation `{}`, single-use, valid until {expires}. Copy all of it, \
             including the lk_reg_ prefix.",
            issued.org
        );
    }
    Ok(())
}

pub async fn agent(vault: &Vault, cmd: AgentCmd) -> Result<(), Failure> {
    match cmd {
        AgentCmd::Add { name, org } => {
            let issued = vault.create_agent(&org_of(&org)?, &name, &cli_actor()).await?;
            println!("{}", issued.token.expose());
            eprintln!(
                "latchkey: agent `{}` created in `{}`; the token above is shown once. Attach credentials with \
                 `latchkey credential attach NAME --agent {}`.",
                issued.agent.name, issued.agent.org, issued.agent.name
            );
        }
        AgentCmd::BindJwt { name, idp, subject, org } => {
            let org = org_of(&org)?;
            let created = vault.bind_agent_jwt(&org, &name, &idp, &subject, &cli_actor()).await?;
            println!(
                "agent `{name}`{} is identified by JWTs from `{idp}` with subject `{subject}`",
                if created { " (created, no token)" } else { "" }
            );
        }
        AgentCmd::List { org } => {
            let org = org.as_deref().map(|o| parse_org(Some(o))).transpose()?;
            for a in vault.list_agents(org.as_ref().map(|o| o.as_str())).await? {
                let state = if a.disabled { "disabled" } else { "enabled" };
                let jwt = a.jwt.map(|(p, s)| format!("  jwt:{p}:{s}")).unwrap_or_default();
                println!("{}  {}  {state}  {}{jwt}", a.org, a.name, a.created_at.format(&Rfc3339).unwrap_or_default());
            }
        }
        AgentCmd::Disable { name, org } => set_disabled(vault, &name, &org, true).await?,
        AgentCmd::Enable { name, org } => set_disabled(vault, &name, &org, false).await?,
    }
    Ok(())
}

async fn set_disabled(vault: &Vault, name: &str, org: &Option<String>, disabled: bool) -> Result<(), Failure> {
    if !vault.set_agent_disabled(&org_of(org)?, name, disabled, &cli_actor()).await? {
        return Err(Failure::new(ErrorCode::AgentNotFound, format!("no agent named `{name}`")));
    }
    println!("agent `{name}` is {}", if disabled { "disabled" } else { "enabled" });
    Ok(())
}

pub async fn route(vault: &Vault, cmd: RouteCmd) -> Result<(), Failure> {
    match cmd {
        RouteCmd::Add { name, upstream, credential, mock, check_path, org } => {
            let org = org_of(&org)?;
            let route = Route {
                name: name.clone(),
                org: org.clone(),
                upstream,
                credential: credential.clone(),
                mock,
                check_path,
            };
            vault.put_route(&route, &cli_actor()).await?;
            println!(
                "route `{name}` → {} with credential `{credential}`{}",
                route.upstream,
                if mock { " (mock)" } else { "" }
            );
        }
        RouteCmd::List { org } => {
            let org = org.as_deref().map(|o| parse_org(Some(o))).transpose()?;
            for r in vault.list_routes(org.as_ref().map(|o| o.as_str())).await? {
                println!(
                    "{}  {}  {}  {}{}",
                    r.org,
                    r.name,
                    r.upstream,
                    r.credential,
                    if r.mock { "  mock" } else { "" }
                );
            }
        }
        RouteCmd::Delete { name, org } => {
            let org = org_of(&org)?;
            if !vault.delete_route(&org, &name, &cli_actor()).await? {
                return Err(Failure::new(ErrorCode::RouteNotFound, format!("no route named `{name}`")));
            }
            println!("deleted route `{name}`");
        }
    }
    Ok(())
}

pub async fn idp(vault: &Vault, cmd: IdpCmd) -> Result<(), Failure> {
    use latchkey::vault::identity::{DEFAULT_REFRESH_SECONDS, IdentityProvider, JwksSource};
    match cmd {
        IdpCmd::Add { name, issuer, alg, jwks_url, jwks_file, audience, leeway, refresh, subject_claim, org } => {
            let jwks = match (jwks_url, jwks_file) {
                (Some(url), _) => JwksSource::Url(url),
                (None, Some(file)) => JwksSource::Static(std::fs::read_to_string(&file).map_err(|e| {
                    Failure::new(ErrorCode::InvalidArgument, format!("--jwks-file {}: {e}", file.display()))
                })?),
                (None, None) => return Err(Failure::new(ErrorCode::InvalidArgument, "give --jwks-url or --jwks-file")),
            };
            let refresh_seconds = match refresh {
                None => DEFAULT_REFRESH_SECONDS,
                Some(r) => parse_duration(&r).map(|d| d.whole_seconds()).ok_or_else(|| {
                    Failure::new(ErrorCode::InvalidArgument, format!("--refresh `{r}`: give 90s, 5m or 1h"))
                })?,
            };
            let p = IdentityProvider {
                org: org_of(&org)?,
                name: name.clone(),
                issuer,
                alg,
                audience: audience.into_iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
                leeway_seconds: leeway,
                jwks,
                refresh_seconds,
                subject_claim,
            };
            vault.put_identity_provider(&p, &cli_actor()).await?;
            println!("identity provider `{name}` trusts issuer {} ({})", p.issuer, p.alg);
            if p.audience.is_empty() {
                eprintln!(
                    "latchkey: no --audience: tokens that name any audience will be refused; set one if the issuer \
                     puts `aud` in its tokens"
                );
            }
        }
        IdpCmd::List { org } => {
            let org = org.as_deref().map(|o| parse_org(Some(o))).transpose()?;
            for p in vault.list_identity_providers(org.as_ref().map(|o| o.as_str())).await? {
                let keys = match &p.jwks {
                    JwksSource::Url(u) => u.clone(),
                    JwksSource::Static(_) => "static JWKS".to_string(),
                };
                println!("{}  {}  {}  {}  aud={}  {keys}", p.org, p.name, p.issuer, p.alg, p.audience.join(","));
            }
        }
        IdpCmd::Delete { name, org } => {
            if !vault.delete_identity_provider(&org_of(&org)?, &name, &cli_actor()).await? {
                return Err(Failure::new(ErrorCode::NotFound, format!("no identity provider named `{name}`")));
            }
            println!("deleted identity provider `{name}`");
        }
    }
    Ok(())
}
