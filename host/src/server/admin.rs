//! The admin API (`/v1/admin/…`): credentials, routes, agents, registration
//! tokens, plugins and the audit trail over HTTP, for operators and their
//! automation. Authenticated separately from agents: `Authorization: Bearer
//! <admin token>`, where the token is `LATCHKEY_ADMIN_TOKEN` (compared as
//! SHA-256 digests in constant time). Without a configured token the admin
//! API answers 403 `admin_disabled`.
//!
//! Handlers take what they need as extractors: [`AdminToken`] (first, so
//! nothing is read for an unauthenticated caller), [`Org`] for `?org=`, and
//! a [`JsonBody`] for the request body. Each declares its OpenAPI operation
//! (`#[utoipa::path]`), and its answers are typed, so the document at
//! `/v1/openapi.json` is generated from the same declarations the router
//! serves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Json;
use ring::digest;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody, JsonBody};
use crate::error::ErrorCode;
use crate::secret::Secret;
use crate::vault::agents::Route;
use crate::vault::identity::{IdentityProvider, JwksSource};
use crate::vault::model::{RawCredential, RawUpdate};
use crate::vault::{AuditAction, AuditEvent, AuditFilter, CredentialInfo, CredentialView};

/// The admin routes (nested under `/v1/admin`), with their operations.
/// Handlers grouped in one `routes!` share a path.
pub(super) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, create_credential))
        .routes(routes!(get_credential, update_credential, delete_credential))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(rotate))
        .routes(routes!(check))
        .routes(routes!(list_routes, put_route))
        .routes(routes!(delete_route))
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(bind_agent_jwt))
        .routes(routes!(list_idps, put_idp))
        .routes(routes!(delete_idp))
        .routes(routes!(create_token))
        .routes(routes!(plugins))
        .routes(routes!(audit))
}

const ACTOR: &str = "admin-api";

// ---------------------------------------------------------------------------
// Extractors
// ---------------------------------------------------------------------------

/// Proof that the request carries the admin token (`Authorization: Bearer
/// <admin token>`, its SHA-256 compared with the configured one in constant
/// time). Rejected with 403 `admin_disabled` when no admin token is
/// configured, else 401 `invalid_admin_token`.
pub(super) struct AdminToken;

impl FromRequestParts<Arc<AppState>> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<AdminToken, ApiError> {
        let Some(expected) = &app.config.admin_token_sha256 else {
            return Err(ApiError::new(
                ErrorCode::AdminDisabled,
                "the admin API is disabled: start the broker with LATCHKEY_ADMIN_TOKEN set",
            ));
        };
        let presented = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidAdminToken, "send `Authorization: Bearer <admin token>`"))?;
        let got = digest::digest(&digest::SHA256, presented.as_bytes());
        if bool::from(subtle::ConstantTimeEq::ct_eq(got.as_ref(), expected.as_slice())) {
            Ok(AdminToken)
        } else {
            Err(ApiError::new(ErrorCode::InvalidAdminToken, "the admin token is not valid"))
        }
    }
}

/// The organisation a call acts in: `?org=`, validated
/// ([`crate::vault::parse_org`]), the default organisation when absent. As
/// `Option<Org>`, absent is `None` (every organisation).
pub(super) struct Org(String);

/// The `?org=` parameter [`Org`] reads.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrgQuery {
    /// The organisation; `default` when absent.
    #[param(default = json!(crate::vault::model::DEFAULT_ORG))]
    org: Option<String>,
}

impl Org {
    fn given(parts: &Parts) -> Result<Option<String>, ApiError> {
        let Query(q) = Query::<OrgQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
        Ok(q.org)
    }

    fn parse(org: Option<&str>) -> Result<Org, ApiError> {
        Ok(Org(crate::vault::parse_org(org)?.to_string()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Org, ApiError> {
        Org::parse(Org::given(parts)?.as_deref())
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Org>, ApiError> {
        Org::given(parts)?.map(|o| Org::parse(Some(&o))).transpose()
    }
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

/// A credential as a change left it, with what the vault changed or warns
/// about.
#[derive(Serialize, ToSchema)]
struct CredentialChange {
    #[serde(flatten)]
    credential: CredentialView,
    /// One sentence each: hygiene applied (a trailing line break removed)
    /// and warnings (no destinations).
    notices: Vec<String>,
}

impl CredentialChange {
    fn new(info: &CredentialInfo, notices: &[crate::vault::model::Notice]) -> CredentialChange {
        CredentialChange { credential: info.view(), notices: notices.iter().map(|n| n.message.clone()).collect() }
    }
}

/// List credentials
#[utoipa::path(
    get,
    path = "/credentials",
    tag = "credentials",
    security(("admin" = [])),
    params(("org" = Option<String>, Query, description = "Only this organisation; every organisation when absent")),
    responses(
        (status = 200, description = "The credentials (never a secret value)", body = [CredentialView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_credentials(
    _: AdminToken,
    org: Option<Org>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    let all = app.vault.list(org.as_ref().map(|o| o.0.as_str())).await?;
    Ok(Json(all.iter().map(CredentialInfo::view).collect()))
}

/// A new credential.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCredentialBody {
    /// Its name, unique in the organisation.
    name: String,
    /// The scheme that applies it (see `/v1/admin/plugins`).
    scheme: String,
    /// Non-secret configuration, as `[name, value]` pairs.
    #[serde(default)]
    config: Vec<(String, String)>,
    /// Secret values by field name.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Secret fields to store exactly as given (no hygiene).
    #[serde(default)]
    verbatim: BTreeSet<String>,
    /// Hosts it may be sent to (`api.openai.com`, `*.example.com`).
    #[serde(default)]
    destinations: Vec<String>,
    /// Whether it may be used.
    #[serde(default = "yes")]
    #[schema(default = true)]
    enabled: bool,
}

fn yes() -> bool {
    true
}

fn secrets(map: BTreeMap<String, String>) -> BTreeMap<String, Secret> {
    map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect()
}

/// Create a credential
#[utoipa::path(
    post,
    path = "/credentials",
    tag = "credentials",
    security(("admin" = [])),
    params(OrgQuery),
    request_body = NewCredentialBody,
    responses(
        (status = 201, description = "The credential, with notices", body = CredentialChange),
        (status = "default", response = ErrorBody),
    )
)]
async fn create_credential(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<NewCredentialBody>,
) -> Result<(StatusCode, Json<CredentialChange>), ApiError> {
    let raw = RawCredential {
        name: b.name,
        org: Some(org),
        scheme: b.scheme,
        config: b.config,
        secrets: secrets(b.secrets),
        verbatim: b.verbatim,
        enabled: b.enabled,
        destinations: b.destinations,
    };
    let done = app.vault.create(raw, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(CredentialChange::new(&done.value, &done.notices))))
}

/// Show a credential
#[utoipa::path(
    get,
    path = "/credentials/{name}",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    responses(
        (status = 200, description = "The credential (never a secret value)", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn get_credential(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.get(&org, &name).await?.view()))
}

/// What to change in a credential; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// The whole new configuration, as `[name, value]` pairs.
    config: Option<Vec<(String, String)>>,
    /// The whole new set of secret values, by field name.
    secrets: Option<BTreeMap<String, String>>,
    /// Secret fields to store exactly as given (no hygiene).
    #[serde(default)]
    verbatim: BTreeSet<String>,
    /// The whole new list of destinations.
    destinations: Option<Vec<String>>,
    /// Enable or disable it.
    enabled: Option<bool>,
    /// Refuse the change (409 `version_conflict`) unless the credential is
    /// still at this version.
    expected_version: Option<u64>,
}

/// Update a credential
#[utoipa::path(
    patch,
    path = "/credentials/{name}",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The credential, with notices", body = CredentialChange),
        (status = "default", response = ErrorBody),
    )
)]
async fn update_credential(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<UpdateBody>,
) -> Result<Json<CredentialChange>, ApiError> {
    let raw = RawUpdate {
        config: b.config,
        secrets: b.secrets.map(secrets),
        verbatim: b.verbatim,
        enabled: b.enabled,
        destinations: b.destinations,
        expected_version: b.expected_version,
    };
    let done = app.vault.update(&org, &name, raw, ACTOR).await?;
    Ok(Json(CredentialChange::new(&done.value, &done.notices)))
}

/// `?force=` of a delete.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ForceQuery {
    /// Delete even while agents or routes use it.
    #[serde(default)]
    force: bool,
}

/// Delete a credential
///
/// Refused (409 `credential_attached`) while agents or routes use it, unless
/// `force=true`.
#[utoipa::path(
    delete,
    path = "/credentials/{name}",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery, ForceQuery),
    responses(
        (status = 200, description = "The deleted credential", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_credential(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.delete(&org, &name, q.force, ACTOR).await?.view()))
}

/// Enable a credential
#[utoipa::path(
    post,
    path = "/credentials/{name}/enable",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn enable(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.set_enabled(&org, &name, true, ACTOR).await?.view()))
}

/// Disable a credential: every use fails with `credential_disabled`
#[utoipa::path(
    post,
    path = "/credentials/{name}/disable",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn disable(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.set_enabled(&org, &name, false, ACTOR).await?.view()))
}

/// New secret values.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// The whole new set of secret values, by field name.
    secrets: BTreeMap<String, String>,
    /// Secret fields to store exactly as given (no hygiene).
    #[serde(default)]
    verbatim: BTreeSet<String>,
}

/// Replace a credential's secret values
#[utoipa::path(
    post,
    path = "/credentials/{name}/rotate",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    request_body = RotateBody,
    responses(
        (status = 200, description = "The credential, with notices", body = CredentialChange),
        (status = "default", response = ErrorBody),
    )
)]
async fn rotate(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<RotateBody>,
) -> Result<Json<CredentialChange>, ApiError> {
    let done = app.vault.rotate(&org, &name, secrets(b.secrets), b.verbatim, ACTOR).await?;
    Ok(Json(CredentialChange::new(&done.value, &done.notices)))
}

/// What a provider check found.
#[derive(Serialize, ToSchema)]
struct CheckReport {
    /// The credential checked.
    credential: String,
    /// `valid`, `invalid`, `forbidden`, `quota`, `unreachable` or `error`.
    state: &'static str,
    /// The upstream's status, when there was one.
    status: Option<u16>,
    /// The URL probed.
    url: String,
    /// One line for the operator.
    detail: String,
}

/// Probe the provider with a credential
///
/// Through a route that uses it, at the route's check path.
#[utoipa::path(
    post,
    path = "/credentials/{name}/check",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    responses(
        (status = 200, description = "What the probe found", body = CheckReport),
        (status = "default", response = ErrorBody),
    )
)]
async fn check(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CheckReport>, ApiError> {
    let o = super::check::check_credential(&app, &org, &name).await?;
    Ok(Json(CheckReport { credential: name, state: o.state, status: o.status, url: o.url, detail: o.detail }))
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// A proxy route.
#[derive(Serialize, ToSchema)]
struct RouteView {
    /// The route name: the path segment after the proxy prefix.
    name: String,
    /// Its organisation.
    org: String,
    /// The upstream base URL.
    upstream: String,
    /// The credential applied to every call.
    credential: String,
    /// Whether it answers from the built-in mock upstream.
    mock: bool,
    /// A cheap path for the provider check (`/v1/models`).
    check_path: Option<String>,
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

/// List routes
#[utoipa::path(
    get,
    path = "/routes",
    tag = "routes",
    security(("admin" = [])),
    params(OrgQuery),
    responses(
        (status = 200, description = "The organisation's routes", body = [RouteView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_routes(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<RouteView>>, ApiError> {
    let routes = app.vault.list_routes(Some(&org)).await?;
    Ok(Json(routes.iter().map(RouteView::from).collect()))
}

/// A route to add or replace.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    /// The route name: the path segment after the proxy prefix.
    name: String,
    /// The upstream base URL (`https://api.openai.com`).
    upstream: String,
    /// The credential applied to every call.
    credential: String,
    /// Answer from the built-in mock upstream instead of the real one.
    #[serde(default)]
    mock: bool,
    /// A cheap path for the provider check (`/v1/models`).
    check_path: Option<String>,
}

/// Add or replace a route
#[utoipa::path(
    post,
    path = "/routes",
    tag = "routes",
    security(("admin" = [])),
    params(OrgQuery),
    request_body = RouteBody,
    responses(
        (status = 201, description = "The route", body = RouteView),
        (status = "default", response = ErrorBody),
    )
)]
async fn put_route(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<RouteBody>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    let route = Route {
        name: b.name,
        org,
        upstream: b.upstream,
        credential: b.credential,
        mock: b.mock,
        check_path: b.check_path,
    };
    app.vault.put_route(&route, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(RouteView::from(&route))))
}

/// Delete a route
#[utoipa::path(
    delete,
    path = "/routes/{name}",
    tag = "routes",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The route's name"), OrgQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_route(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<StatusCode, ApiError> {
    if !app.vault.delete_route(&org, &name, ACTOR).await? {
        return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no route named `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Agents and identity providers
// ---------------------------------------------------------------------------

/// A JWT identity an agent is bound to.
#[derive(Serialize, ToSchema)]
struct JwtBinding {
    /// The identity provider's name.
    idp: String,
    /// The subject its tokens name the agent by.
    subject: String,
}

/// An agent (never its token).
#[derive(Serialize, ToSchema)]
struct AgentView {
    /// Its name.
    name: String,
    /// Its organisation.
    org: String,
    /// Disabled agents are refused.
    disabled: bool,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    created_at: Option<String>,
    /// The JWT identity it is bound to, if any.
    jwt: Option<JwtBinding>,
}

/// List agents
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    security(("admin" = [])),
    params(OrgQuery),
    responses(
        (status = 200, description = "The organisation's agents", body = [AgentView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_agents(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let agents = app.vault.list_agents(Some(&org)).await?;
    Ok(Json(
        agents
            .into_iter()
            .map(|a| AgentView {
                created_at: a.created_at.format(&Rfc3339).ok(),
                name: a.name,
                org: a.org,
                disabled: a.disabled,
                jwt: a.jwt.map(|(idp, subject)| JwtBinding { idp, subject }),
            })
            .collect(),
    ))
}

/// A new agent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    /// Its name, unique in the organisation.
    name: String,
    /// Credentials to attach it to.
    #[serde(default)]
    credentials: Vec<String>,
}

/// A new agent and its token, shown once.
#[derive(Serialize, ToSchema)]
struct NewAgent {
    /// Its name.
    name: String,
    /// Its organisation.
    org: String,
    /// Its token (`lk_agt_…`); only its hash is stored.
    token: String,
}

/// Create an agent; its token is returned once
#[utoipa::path(
    post,
    path = "/agents",
    tag = "agents",
    security(("admin" = [])),
    params(OrgQuery),
    request_body = AgentBody,
    responses(
        (status = 201, description = "The agent and its token", body = NewAgent),
        (status = "default", response = ErrorBody),
    )
)]
async fn create_agent(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<AgentBody>,
) -> Result<(StatusCode, Json<NewAgent>), ApiError> {
    // One transaction: a misspelt credential leaves no agent behind.
    let issued = app.vault.create_agent_with(&org, &b.name, &b.credentials, ACTOR).await?;
    let token = issued.token.expose().to_string();
    Ok((StatusCode::CREATED, Json(NewAgent { name: issued.agent.name, org: issued.agent.org, token })))
}

/// A JWT identity to bind an agent to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BindJwtBody {
    /// The identity provider's name.
    idp: String,
    /// The subject its tokens name the agent by.
    subject: String,
}

/// An agent and the JWT identity it is now bound to.
#[derive(Serialize, ToSchema)]
struct BoundAgent {
    /// The agent's name.
    name: String,
    /// Its organisation.
    org: String,
    /// The identity.
    jwt: JwtBinding,
}

/// Bind an agent (created if needed) to a JWT subject of an identity provider
#[utoipa::path(
    put,
    path = "/agents/{name}/jwt",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    request_body = BindJwtBody,
    responses(
        (status = 200, description = "The binding of an existing agent", body = BoundAgent),
        (status = 201, description = "A new agent, bound", body = BoundAgent),
        (status = "default", response = ErrorBody),
    )
)]
async fn bind_agent_jwt(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<BindJwtBody>,
) -> Result<(StatusCode, Json<BoundAgent>), ApiError> {
    let created = app.vault.bind_agent_jwt(&org, &name, &b.idp, &b.subject, ACTOR).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(BoundAgent { name, org, jwt: JwtBinding { idp: b.idp, subject: b.subject } })))
}

/// A JWT identity provider.
#[derive(Serialize, ToSchema)]
struct IdpView {
    /// Its name, unique in the organisation.
    name: String,
    /// Its organisation.
    org: String,
    /// The exact `iss` its tokens carry.
    issuer: String,
    /// The one algorithm accepted (RS256, ES256 or EdDSA).
    alg: String,
    /// Accepted audiences; empty means tokens must name none.
    audience: Vec<String>,
    /// Clock-skew allowance for exp, nbf and iat, in seconds.
    leeway_seconds: i64,
    /// Where its key set is fetched from (or `jwks`).
    jwks_url: Option<String>,
    /// Its key set, given inline (or `jwks_url`).
    jwks: Option<serde_json::Value>,
    /// How often a URL key set is refreshed, in seconds.
    refresh_seconds: i64,
    /// The claim that names the agent.
    subject_claim: String,
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
        }
    }
}

/// List JWT identity providers
#[utoipa::path(
    get,
    path = "/identity-providers",
    tag = "identity-providers",
    security(("admin" = [])),
    params(OrgQuery),
    responses(
        (status = 200, description = "The organisation's identity providers", body = [IdpView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_idps(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<IdpView>>, ApiError> {
    let all = app.vault.list_identity_providers(Some(&org)).await?;
    Ok(Json(all.iter().map(IdpView::from).collect()))
}

/// An identity provider to add or replace: exactly one of `jwks_url` and
/// `jwks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IdpBody {
    /// Its name, unique in the organisation.
    name: String,
    /// The exact `iss` its tokens carry.
    issuer: String,
    /// The one algorithm accepted (RS256, ES256 or EdDSA).
    alg: String,
    /// Accepted audiences; empty means tokens must name none.
    #[serde(default)]
    audience: Vec<String>,
    /// Where to fetch its key set.
    jwks_url: Option<String>,
    /// Its key set, inline.
    jwks: Option<serde_json::Value>,
    /// Clock-skew allowance for exp, nbf and iat, 0 to 300 seconds.
    #[schema(default = json!(crate::vault::identity::DEFAULT_LEEWAY_SECONDS))]
    leeway_seconds: Option<i64>,
    /// How often a URL key set is refreshed, 60 to 86400 seconds.
    #[schema(default = json!(crate::vault::identity::DEFAULT_REFRESH_SECONDS))]
    refresh_seconds: Option<i64>,
    /// The claim that names the agent.
    #[schema(default = "sub")]
    subject_claim: Option<String>,
}

/// Add or replace an identity provider
///
/// Its issuer, pinned algorithm, audiences, and `jwks_url` or `jwks`.
#[utoipa::path(
    post,
    path = "/identity-providers",
    tag = "identity-providers",
    security(("admin" = [])),
    params(OrgQuery),
    request_body = IdpBody,
    responses(
        (status = 201, description = "The identity provider", body = IdpView),
        (status = "default", response = ErrorBody),
    )
)]
async fn put_idp(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<IdpBody>,
) -> Result<(StatusCode, Json<IdpView>), ApiError> {
    let jwks = match (b.jwks_url, b.jwks) {
        (Some(url), None) => JwksSource::Url(url),
        (None, Some(doc)) => JwksSource::Static(doc.to_string()),
        _ => return Err(ApiError::new(ErrorCode::InvalidRequest, "give exactly one of `jwks_url` and `jwks`")),
    };
    let p = IdentityProvider {
        org,
        name: b.name,
        issuer: b.issuer,
        alg: b.alg,
        audience: b.audience,
        leeway_seconds: b.leeway_seconds.unwrap_or(crate::vault::identity::DEFAULT_LEEWAY_SECONDS),
        jwks,
        refresh_seconds: b.refresh_seconds.unwrap_or(crate::vault::identity::DEFAULT_REFRESH_SECONDS),
        subject_claim: b.subject_claim.unwrap_or_else(|| "sub".into()),
    };
    app.vault.put_identity_provider(&p, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(IdpView::from(&p))))
}

/// Delete an identity provider (refused while agents are bound)
#[utoipa::path(
    delete,
    path = "/identity-providers/{name}",
    tag = "identity-providers",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The identity provider's name"), OrgQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_idp(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<StatusCode, ApiError> {
    if !app.vault.delete_identity_provider(&org, &name, ACTOR).await? {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no identity provider named `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Registration tokens, plugins, audit
// ---------------------------------------------------------------------------

/// A registration token's lifetime.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// Seconds until it expires.
    ttl_seconds: Option<i64>,
}

/// A registration token, shown once.
#[derive(Serialize, ToSchema)]
struct RegistrationToken {
    /// The token (`lk_reg_…`), redeemed at `/v1/agents/register`.
    token: String,
    /// The organisation its agent will belong to.
    org: String,
    /// When it stops working (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// Create a registration token (lk_reg_…)
///
/// The body is optional: without one the token gets the default lifetime.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    security(("admin" = [])),
    params(OrgQuery),
    request_body(content = Option<TokenBody>, description = "Optional"),
    responses(
        (status = 201, description = "The token", body = RegistrationToken),
        (status = "default", response = ErrorBody),
    )
)]
async fn create_token(
    _: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    body: Option<JsonBody<TokenBody>>,
) -> Result<(StatusCode, Json<RegistrationToken>), ApiError> {
    let ttl = body
        .and_then(|JsonBody(b)| b.ttl_seconds)
        .map(time::Duration::seconds)
        .unwrap_or(crate::vault::agents::DEFAULT_REGISTRATION_TTL);
    let issued = app.vault.create_registration_token(&org, ttl, ACTOR).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegistrationToken {
            token: issued.token.expose().to_string(),
            org: issued.org,
            expires_at: issued.expires_at.format(&Rfc3339).ok(),
        }),
    ))
}

/// A scheme plugin, as it declares itself.
#[derive(Serialize, ToSchema)]
struct PluginView {
    /// The scheme name credentials refer to.
    name: String,
    /// The plugin's own version.
    version: String,
    /// One line.
    description: String,
    /// Non-secret configuration fields.
    config_fields: Vec<FieldView>,
    /// Secret fields, each with its exposure.
    secret_fields: Vec<SecretFieldView>,
    /// When any secret field name is allowed, their exposure.
    open_secret_fields: Option<&'static str>,
    /// Whether it signs the body (which the proxy then buffers).
    reads_body: bool,
    /// Whether its answer depends only on the credential.
    request_independent: bool,
    /// Whether it verifies incoming tokens (agents' JWTs).
    verifies_tokens: bool,
    /// Whether it is granted raw secret values.
    reads_raw_secrets: bool,
    /// SHA-256 of the component, lower hex.
    sha256: String,
}

/// A configuration field.
#[derive(Serialize, ToSchema)]
struct FieldView {
    /// The field name.
    name: String,
    /// Whether a credential must have it.
    required: bool,
    /// What to put there.
    description: String,
}

/// A secret field.
#[derive(Serialize, ToSchema)]
struct SecretFieldView {
    /// The field name.
    name: String,
    /// Whether a credential must have it.
    required: bool,
    /// What to put there.
    description: String,
    /// Where its value may go: `host-only`, `wire` or `identifier`.
    exposure: &'static str,
}

/// List schemes
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The loaded scheme plugins", body = [PluginView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn plugins(_: AdminToken, State(app): State<Arc<AppState>>) -> Result<Json<Vec<PluginView>>, ApiError> {
    let rt = app.broker.runtime();
    let mut out = Vec::new();
    for name in rt.scheme_names() {
        let p = rt.get(&name)?;
        let i = &p.info;
        out.push(PluginView {
            name: i.name.clone(),
            version: i.version.clone(),
            description: i.description.clone(),
            config_fields: i
                .config_fields
                .iter()
                .map(|f| FieldView { name: f.name.clone(), required: f.required, description: f.description.clone() })
                .collect(),
            secret_fields: i
                .secret_fields
                .iter()
                .map(|f| SecretFieldView {
                    name: f.name.clone(),
                    required: f.required,
                    description: f.description.clone(),
                    exposure: crate::plugin::exposure_name(f.exposure),
                })
                .collect(),
            open_secret_fields: i.open_secret_fields.map(crate::plugin::exposure_name),
            reads_body: i.reads_body,
            request_independent: i.request_independent,
            verifies_tokens: p.exports_verifier(),
            reads_raw_secrets: p.reads_secrets,
            sha256: p.digest.clone(),
        });
    }
    Ok(Json(out))
}

/// Which audit events to return.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this organisation.
    org: Option<String>,
    /// Only this credential.
    credential: Option<String>,
    /// Only this action (`create`, `update`, `enable`, `disable`, `delete`,
    /// `rotate`, `attach`, `detach`, `rewrap`, `use`).
    action: Option<String>,
    /// At most this many.
    limit: Option<u32>,
}

/// The audit trail
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    security(("admin" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "The matching events", body = [AuditEvent]),
        (status = "default", response = ErrorBody),
    )
)]
async fn audit(
    _: AdminToken,
    Query(q): Query<AuditQuery>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let action = match q.action.as_deref() {
        None => None,
        Some(a) => Some(
            AuditAction::parse(a)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("unknown action `{a}`")))?,
        ),
    };
    let filter = AuditFilter { org: q.org, credential: q.credential, action, since: None, limit: q.limit };
    Ok(Json(app.vault.audit(&filter).await?))
}
