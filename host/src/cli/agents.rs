//! `latchkey token …`, `latchkey agent …` and `latchkey route …`.

use clap::{Args, Subcommand};
use latchkey::error::ErrorCode;
use latchkey::vault::agents::{DEFAULT_REGISTRATION_TTL, Route, route_not_found};
use latchkey::vault::{Vault, parse_org};

use latchkey::server::views::{AgentToken, AgentView, Deleted, IdpView, NewToken, RouteView, TokenView};

use crate::Failure;
use crate::cli::output::{self, Table};
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
    /// List registration tokens: prefix, state (active, used, revoked, expired), the agent each created.
    List {
        /// Only this organisation.
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an unused registration token, named by its prefix (as listed) or its whole value.
    Revoke {
        /// The prefix (`lk_reg_AbCd`) or the whole token.
        token: String,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `NAME [--org ORG] [--json]`: the arguments of a command on one object.
#[derive(Args)]
pub struct Named {
    /// The name.
    pub name: String,
    /// The organisation [default: default].
    #[arg(long, env = "LATCHKEY_ORG")]
    pub org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `NAME [--force] [--org ORG] [--json]`: a delete.
#[derive(Args)]
pub struct NamedDelete {
    #[command(flatten)]
    pub target: Named,
    /// Delete even while referenced, removing the references (the output names them).
    #[arg(long)]
    pub force: bool,
}

/// `[--org ORG] [--json]`: a list.
#[derive(Args)]
pub struct Listing {
    /// Only this organisation (default: all).
    #[arg(long, env = "LATCHKEY_ORG")]
    pub org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Create an agent and print its token (shown once).
    Add {
        /// The agent name.
        name: String,
        /// Attach it to this credential (repeatable); a misspelt one leaves no agent behind.
        #[arg(long = "credential", value_name = "NAME")]
        credentials: Vec<String>,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent's JWT binding.
    UnbindJwt(Named),
    /// List agents.
    List(Listing),
    /// Show one agent: state, JWT binding, the credentials it may use (never its token).
    Show(Named),
    /// Disable an agent: its token is refused from its next call on.
    Disable(Named),
    /// Enable a disabled agent.
    Enable(Named),
    /// Give an agent a new token (shown once); the old one is refused from its next call on.
    ReissueToken(Named),
    /// Delete an agent (refused while attached to credentials, unless --force, which detaches it).
    Delete(NamedDelete),
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
        /// The longest a token may live (its exp after its iat and after now): 5m, 1h, 1d [default: 1d].
        #[arg(long, value_name = "DURATION")]
        max_token_lifetime: Option<String>,
        /// The organisation [default: default].
        #[arg(long, env = "LATCHKEY_ORG")]
        org: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List identity providers.
    List(Listing),
    /// Show one identity provider.
    Show(Named),
    /// Delete an identity provider (refused while agents are bound to it, unless --force, which unbinds them).
    Delete(NamedDelete),
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List routes.
    List(Listing),
    /// Show one route.
    Show(Named),
    /// Delete a route.
    Delete(Named),
}

/// `90s`, `15m`, `1h`, `2d`, or `None` ([`latchkey::text::parse_duration_seconds`]).
pub fn parse_duration(s: &str) -> Option<time::Duration> {
    latchkey::text::parse_duration_seconds(s).map(time::Duration::seconds)
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

fn list_org(org: &Option<String>) -> Result<Option<String>, Failure> {
    org.as_deref().map(|o| Ok(parse_org(Some(o))?.to_string())).transpose()
}

fn when(t: &Option<String>) -> String {
    t.clone().unwrap_or_default()
}

pub async fn token(vault: &Vault, cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::Create { org, ttl, json } => {
            let ttl = ttl.as_deref().map(parse_ttl).transpose()?.unwrap_or(DEFAULT_REGISTRATION_TTL);
            let issued = vault.create_registration_token(&org_of(&org)?, ttl, &cli_actor()).await?;
            let view = NewToken::from(&issued);
            if json {
                output::json(&view);
            } else {
                out!("{}", view.token);
                eprintln!(
                    "latchkey: registration token {} for organisation `{}`, single-use, valid until {}. Copy all of \
                     it, including the lk_reg_ prefix.",
                    view.prefix,
                    view.org,
                    when(&view.expires_at)
                );
            }
        }
        TokenCmd::List { org, json } => {
            let org = list_org(&org)?;
            let views: Vec<TokenView> =
                vault.list_registration_tokens(org.as_deref()).await?.iter().map(TokenView::from).collect();
            if json {
                output::json(&views);
                return Ok(());
            }
            let mut t = Table::new(&["org", "prefix", "state", "created", "expires", "agent"]);
            for v in views {
                t.row(vec![
                    v.org,
                    v.prefix,
                    v.state.into(),
                    when(&v.created_at),
                    when(&v.expires_at),
                    v.agent.unwrap_or_default(),
                ]);
            }
            t.print(&format!("no registration tokens{}", output::scope(org.as_deref())));
        }
        TokenCmd::Revoke { token, org, json } => {
            let info = vault.revoke_registration_token(&org_of(&org)?, &token, &cli_actor()).await?;
            let view = TokenView::from(&info);
            if json {
                output::json(&view);
            } else {
                out!("registration token {} is revoked", view.prefix);
            }
        }
    }
    Ok(())
}

fn print_agent(v: &AgentView, json: bool, what: &str) {
    if json {
        return output::json(v);
    }
    if !what.is_empty() {
        out!("agent `{}` {what}", v.name);
    }
    out!("name         {}", v.name);
    out!("org          {}", v.org);
    out!("state        {}", v.state);
    out!("created      {}", when(&v.created_at));
    let jwt = v.jwt.as_ref().map(|j| format!("{} subject {}", j.idp, j.subject)).unwrap_or_else(|| "-".into());
    out!("jwt          {jwt}");
    let creds = if v.credentials.is_empty() { "none".to_string() } else { v.credentials.join(", ") };
    out!("credentials  {creds}");
}

fn print_agent_token(t: &AgentToken, json: bool, what: &str) {
    if json {
        return output::json(t);
    }
    out!("{}", t.token);
    eprintln!("latchkey: agent `{}` {what} in `{}`; the token above is shown once.", t.name, t.org);
}

fn print_deleted(d: &Deleted, json: bool, what: &str, cascaded: &str) {
    if json {
        return output::json(d);
    }
    out!("deleted {what} `{}`", d.name);
    if !d.cascaded.is_empty() {
        out!("{cascaded}: {}", d.cascaded.join(", "));
    }
}

pub async fn agent(vault: &Vault, cmd: AgentCmd) -> Result<(), Failure> {
    let actor = cli_actor();
    match cmd {
        AgentCmd::Add { name, credentials, org, json } => {
            let issued = vault.create_agent_with(&org_of(&org)?, &name, &credentials, &actor).await?;
            let t = AgentToken {
                name: issued.agent.name.clone(),
                org: issued.agent.org.clone(),
                token: issued.token.expose().to_string(),
            };
            print_agent_token(&t, json, "created");
            if !json && credentials.is_empty() {
                eprintln!(
                    "latchkey: attach credentials with `latchkey credential attach NAME --agent {}`.",
                    issued.agent.name
                );
            }
        }
        AgentCmd::BindJwt { name, idp, subject, org, json } => {
            let org = org_of(&org)?;
            let created = vault.bind_agent_jwt(&org, &name, &idp, &subject, &actor).await?;
            let v = AgentView::load(vault, &org, &name).await?;
            let what = format!(
                "is identified by JWTs from `{idp}` with subject `{subject}`{}",
                if created { " (created, no token)" } else { "" }
            );
            print_agent(&v, json, &what);
        }
        AgentCmd::UnbindJwt(a) => {
            let org = org_of(&a.org)?;
            vault.unbind_agent_jwt(&org, &a.name, &actor).await?;
            print_agent(&AgentView::load(vault, &org, &a.name).await?, a.json, "is no longer bound to a JWT identity");
        }
        AgentCmd::List(l) => {
            let org = list_org(&l.org)?;
            let agents = vault.list_agents(org.as_deref()).await?;
            let views = AgentView::all(agents, &vault.agent_credentials(org.as_deref()).await?);
            if l.json {
                output::json(&views);
                return Ok(());
            }
            let mut t = Table::new(&["org", "name", "state", "created", "jwt", "credentials"]);
            for v in views {
                let jwt = v.jwt.map(|j| format!("{}:{}", j.idp, j.subject)).unwrap_or_default();
                t.row(vec![v.org, v.name, v.state.into(), when(&v.created_at), jwt, v.credentials.join(",")]);
            }
            t.print(&format!("no agents{}", output::scope(org.as_deref())));
        }
        AgentCmd::Show(a) => print_agent(&AgentView::load(vault, &org_of(&a.org)?, &a.name).await?, a.json, ""),
        AgentCmd::Disable(a) => set_disabled(vault, a, true).await?,
        AgentCmd::Enable(a) => set_disabled(vault, a, false).await?,
        AgentCmd::ReissueToken(a) => {
            let issued = vault.reissue_agent_token(&org_of(&a.org)?, &a.name, &actor).await?;
            let t = AgentToken {
                name: issued.agent.name.clone(),
                org: issued.agent.org.clone(),
                token: issued.token.expose().to_string(),
            };
            print_agent_token(&t, a.json, "has a new token (the old one is refused from now on)");
        }
        AgentCmd::Delete(d) => {
            let org = org_of(&d.target.org)?;
            let cascaded = vault.delete_agent(&org, &d.target.name, d.force, &actor).await?;
            let done = Deleted { name: d.target.name, org, cascaded };
            print_deleted(&done, d.target.json, "agent", "detached from");
        }
    }
    Ok(())
}

async fn set_disabled(vault: &Vault, a: Named, disabled: bool) -> Result<(), Failure> {
    let org = org_of(&a.org)?;
    vault.require_agent(&org, &a.name).await?;
    vault.set_agent_disabled(&org, &a.name, disabled, &cli_actor()).await?;
    let v = AgentView::load(vault, &org, &a.name).await?;
    if a.json {
        output::json(&v);
    } else {
        out!("agent `{}` is {}", a.name, v.state);
    }
    Ok(())
}

fn print_route(v: &RouteView, json: bool) {
    if json {
        return output::json(v);
    }
    out!("name        {}", v.name);
    out!("org         {}", v.org);
    out!("upstream    {}", v.upstream);
    out!("credential  {}", v.credential);
    out!("mock        {}", if v.mock { "yes" } else { "no" });
    out!("check path  {}", v.check_path.as_deref().unwrap_or("-"));
}

pub async fn route(vault: &Vault, cmd: RouteCmd) -> Result<(), Failure> {
    match cmd {
        RouteCmd::Add { name, upstream, credential, mock, check_path, org, json } => {
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
            let v = RouteView::from(&vault.require_route(&org, &name).await?);
            if json {
                output::json(&v);
            } else {
                out!(
                    "route `{name}` → {} with credential `{credential}`{}",
                    v.upstream,
                    if mock { " (mock)" } else { "" }
                );
            }
        }
        RouteCmd::List(l) => {
            let org = list_org(&l.org)?;
            let views: Vec<RouteView> = vault.list_routes(org.as_deref()).await?.iter().map(RouteView::from).collect();
            if l.json {
                output::json(&views);
                return Ok(());
            }
            let mut t = Table::new(&["org", "name", "upstream", "credential", "mock", "check_path"]);
            for v in views {
                let mock = if v.mock { "yes" } else { "no" };
                t.row(vec![v.org, v.name, v.upstream, v.credential, mock.into(), v.check_path.unwrap_or_default()]);
            }
            t.print(&format!("no routes{}", output::scope(org.as_deref())));
        }
        RouteCmd::Show(a) => {
            print_route(&RouteView::from(&vault.require_route(&org_of(&a.org)?, &a.name).await?), a.json)
        }
        RouteCmd::Delete(a) => {
            let org = org_of(&a.org)?;
            let route = vault.require_route(&org, &a.name).await?;
            if !vault.delete_route(&org, &a.name, &cli_actor()).await? {
                return Err(route_not_found(&org, &a.name).into());
            }
            if a.json {
                output::json(&RouteView::from(&route));
            } else {
                out!("deleted route `{}`", a.name);
            }
        }
    }
    Ok(())
}

fn print_idp(v: &IdpView, json: bool) {
    if json {
        return output::json(v);
    }
    out!("name           {}", v.name);
    out!("org            {}", v.org);
    out!("issuer         {}", v.issuer);
    out!("alg            {}", v.alg);
    out!("audience       {}", if v.audience.is_empty() { "-".into() } else { v.audience.join(",") });
    out!("jwks           {}", v.jwks_url.as_deref().unwrap_or("static JWKS"));
    out!("refresh        {}s", v.refresh_seconds);
    out!("leeway         {}s", v.leeway_seconds);
    out!("subject claim  {}", v.subject_claim);
}

pub async fn idp(vault: &Vault, cmd: IdpCmd) -> Result<(), Failure> {
    use latchkey::vault::identity::{DEFAULT_REFRESH_SECONDS, IdentityProvider, JwksSource};
    match cmd {
        IdpCmd::Add {
            name,
            issuer,
            alg,
            jwks_url,
            jwks_file,
            audience,
            leeway,
            refresh,
            subject_claim,
            max_token_lifetime,
            org,
            json,
        } => {
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
                max_token_lifetime_seconds: match max_token_lifetime {
                    None => latchkey::vault::identity::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
                    Some(m) => parse_duration(&m).map(|d| d.whole_seconds()).ok_or_else(|| {
                        Failure::new(
                            ErrorCode::InvalidArgument,
                            format!("--max-token-lifetime `{m}`: give 5m, 1h or 1d"),
                        )
                    })?,
                },
            };
            vault.put_identity_provider(&p, &cli_actor()).await?;
            if json {
                output::json(&IdpView::from(&p));
            } else {
                out!("identity provider `{name}` trusts issuer {} ({})", p.issuer, p.alg);
            }
            if p.audience.is_empty() {
                eprintln!(
                    "latchkey: no --audience: tokens that name any audience will be refused; set one if the issuer \
                     puts `aud` in its tokens"
                );
            }
        }
        IdpCmd::List(l) => {
            let org = list_org(&l.org)?;
            let views: Vec<IdpView> =
                vault.list_identity_providers(org.as_deref()).await?.iter().map(IdpView::from).collect();
            if l.json {
                output::json(&views);
                return Ok(());
            }
            let mut t = Table::new(&["org", "name", "issuer", "alg", "audience", "jwks"]);
            for v in views {
                let keys = v.jwks_url.unwrap_or_else(|| "static JWKS".into());
                t.row(vec![v.org, v.name, v.issuer, v.alg, v.audience.join(","), keys]);
            }
            t.print(&format!("no identity providers{}", output::scope(org.as_deref())));
        }
        IdpCmd::Show(a) => {
            print_idp(&IdpView::from(&vault.get_identity_provider(&org_of(&a.org)?, &a.name).await?), a.json)
        }
        IdpCmd::Delete(d) => {
            let org = org_of(&d.target.org)?;
            let cascaded = vault.delete_identity_provider(&org, &d.target.name, d.force, &cli_actor()).await?;
            let done = Deleted { name: d.target.name, org, cascaded };
            print_deleted(&done, d.target.json, "identity provider", "unbound agents");
        }
    }
    Ok(())
}
