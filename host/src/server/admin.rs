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
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::views::{AgentToken, AgentView, Deleted, IdpView, NewToken, RouteView, TokenView};
use super::{ApiError, AppState, ErrorBody, JsonBody};
use crate::error::ErrorCode;
use crate::secret::Secret;
use crate::vault::agents::Route;
use crate::vault::identity::{IdentityProvider, JwksSource};
use crate::vault::model::{RawCredential, RawUpdate};
use crate::vault::{AttachmentKind, AuditAction, AuditEvent, AuditFilter, CredentialInfo, CredentialView};

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
        .routes(routes!(attach))
        .routes(routes!(detach))
        .routes(routes!(list_routes, put_route))
        .routes(routes!(get_route, delete_route))
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, delete_agent))
        .routes(routes!(enable_agent))
        .routes(routes!(disable_agent))
        .routes(routes!(reissue_agent_token))
        .routes(routes!(bind_agent_jwt, unbind_agent_jwt))
        .routes(routes!(list_idps, put_idp))
        .routes(routes!(get_idp, delete_idp))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(plugins))
        .routes(routes!(audit))
}

// ---------------------------------------------------------------------------
// Extractors
// ---------------------------------------------------------------------------

/// Proof that the request carries the admin token (`Authorization: Bearer
/// <admin token>`, its SHA-256 compared with the configured one in constant
/// time). Rejected with 403 `admin_disabled` when no admin token is
/// configured, else 401 `invalid_admin_token`.
pub(super) struct AdminToken {
    /// Who the audit trail says made a change: `admin:<name>`, the name
    /// the operator gave the admin token (never the token).
    actor: String,
}

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
        if super::auth::admin_token_matches(expected, presented) {
            Ok(AdminToken { actor: admin_actor(app) })
        } else {
            Err(ApiError::new(ErrorCode::InvalidAdminToken, "the admin token is not valid"))
        }
    }
}

/// The audit actor of a change made with the admin token.
pub(super) fn admin_actor(app: &AppState) -> String {
    format!("admin:{}", app.config.admin_token_name)
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
    /// Non-secret configuration, by field name.
    #[serde(default, deserialize_with = "config_object")]
    #[schema(value_type = BTreeMap<String, String>)]
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

/// A JSON object of configuration fields, as pairs in the document's
/// order (the order a scheme sees them in).
fn config_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of configuration fields, e.g. {\"prefix\": \"Bearer \"}")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, String)> = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(serde::de::Error::custom(format!("config field `{k}` given twice")));
                }
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs)
}

fn some_config_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<(String, String)>>, D::Error> {
    config_object(d).map(Some)
}

fn yes() -> bool {
    true
}

impl NewCredentialBody {
    /// What [`create_credential`] hands the vault.
    fn into_raw(self, org: String) -> RawCredential {
        RawCredential {
            name: self.name,
            org: Some(org),
            scheme: self.scheme,
            config: self.config,
            secrets: secrets(self.secrets),
            verbatim: self.verbatim,
            enabled: self.enabled,
            destinations: self.destinations,
        }
    }
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
    admin: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<NewCredentialBody>,
) -> Result<(StatusCode, Json<CredentialChange>), ApiError> {
    let done = app.vault.create(b.into_raw(org), &admin.actor).await?;
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
    /// The whole new configuration, by field name.
    #[serde(default, deserialize_with = "some_config_object")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
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

impl UpdateBody {
    /// What [`update_credential`] hands the vault.
    fn into_raw(self) -> RawUpdate {
        RawUpdate {
            config: self.config,
            secrets: self.secrets.map(secrets),
            verbatim: self.verbatim,
            enabled: self.enabled,
            destinations: self.destinations,
            expected_version: self.expected_version,
        }
    }
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
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<UpdateBody>,
) -> Result<Json<CredentialChange>, ApiError> {
    let done = app.vault.update(&org, &name, b.into_raw(), &admin.actor).await?;
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
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.delete(&org, &name, q.force, &admin.actor).await?.view()))
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
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.set_enabled(&org, &name, true, &admin.actor).await?.view()))
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
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(app.vault.set_enabled(&org, &name, false, &admin.actor).await?.view()))
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
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<RotateBody>,
) -> Result<Json<CredentialChange>, ApiError> {
    let done = app.vault.rotate(&org, &name, secrets(b.secrets), b.verbatim, &admin.actor).await?;
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

/// An agent or route to attach to (or detach from) a credential: exactly
/// one of the two.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    /// An agent name.
    agent: Option<String>,
    /// A route name.
    route: Option<String>,
}

impl AttachBody {
    fn target(self) -> Result<(AttachmentKind, String), ApiError> {
        match (self.agent, self.route) {
            (Some(a), None) => Ok((AttachmentKind::Agent, a)),
            (None, Some(r)) => Ok((AttachmentKind::Route, r)),
            _ => Err(ApiError::new(ErrorCode::InvalidRequest, "give exactly one of `agent` and `route`")),
        }
    }
}

/// Let an agent use a credential
///
/// The agent must exist (404 `agent_not_found`); a route's attachment
/// follows the route, so `route` must name a route that sends this
/// credential. Attaching what is attached changes nothing.
#[utoipa::path(
    post,
    path = "/credentials/{name}/attach",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    request_body = AttachBody,
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn attach(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<AttachBody>,
) -> Result<Json<CredentialView>, ApiError> {
    let (kind, target) = b.target()?;
    Ok(Json(app.vault.set_attachment(&org, &name, kind, &target, true, &admin.actor).await?.view()))
}

/// Undo an attach
///
/// 404 `attachment_not_found` when it is not attached; a route that still
/// sends the credential is refused (409 `in_use`).
#[utoipa::path(
    post,
    path = "/credentials/{name}/detach",
    tag = "credentials",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The credential's name"), OrgQuery),
    request_body = AttachBody,
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = "default", response = ErrorBody),
    )
)]
async fn detach(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<AttachBody>,
) -> Result<Json<CredentialView>, ApiError> {
    let (kind, target) = b.target()?;
    Ok(Json(app.vault.set_attachment(&org, &name, kind, &target, false, &admin.actor).await?.view()))
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// List routes
#[utoipa::path(
    get,
    path = "/routes",
    tag = "routes",
    security(("admin" = [])),
    params(("org" = Option<String>, Query, description = "Only this organisation; every organisation when absent")),
    responses(
        (status = 200, description = "The organisation's routes", body = [RouteView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_routes(
    _: AdminToken,
    org: Option<Org>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<RouteView>>, ApiError> {
    let routes = app.vault.list_routes(org.as_ref().map(|o| o.0.as_str())).await?;
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

impl RouteBody {
    /// What [`put_route`] hands the vault.
    fn into_route(self, org: String) -> Route {
        Route {
            name: self.name,
            org,
            upstream: self.upstream,
            credential: self.credential,
            mock: self.mock,
            check_path: self.check_path,
        }
    }
}

/// Add or replace a route
///
/// The credential must exist and be allowed to go to the upstream's host
/// (403 `destination_not_allowed`, naming the destination to add).
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
    admin: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<RouteBody>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    let route = b.into_route(org);
    app.vault.put_route(&route, &admin.actor).await?;
    let stored = app.vault.route(&route.org, &route.name).await?.unwrap_or(route);
    Ok((StatusCode::CREATED, Json(RouteView::from(&stored))))
}

/// Show a route
#[utoipa::path(
    get,
    path = "/routes/{name}",
    tag = "routes",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The route's name"), OrgQuery),
    responses(
        (status = 200, description = "The route", body = RouteView),
        (status = "default", response = ErrorBody),
    )
)]
async fn get_route(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<RouteView>, ApiError> {
    Ok(Json(RouteView::from(&app.vault.require_route(&org, &name).await?)))
}

/// Delete a route
#[utoipa::path(
    delete,
    path = "/routes/{name}",
    tag = "routes",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The route's name"), OrgQuery),
    responses(
        (status = 200, description = "The deleted route", body = RouteView),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_route(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<RouteView>, ApiError> {
    let route = app.vault.require_route(&org, &name).await?;
    if !app.vault.delete_route(&org, &name, &admin.actor).await? {
        return Err(crate::vault::agents::route_not_found(&org, &name).into());
    }
    Ok(Json(RouteView::from(&route)))
}

// ---------------------------------------------------------------------------
// Agents and identity providers
// ---------------------------------------------------------------------------

/// List agents
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    security(("admin" = [])),
    params(("org" = Option<String>, Query, description = "Only this organisation; every organisation when absent")),
    responses(
        (status = 200, description = "The organisation's agents", body = [AgentView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_agents(
    _: AdminToken,
    org: Option<Org>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let agents = app.vault.list_agents(org.as_ref().map(|o| o.0.as_str())).await?;
    let attached = app.vault.agent_credentials(org.as_ref().map(|o| o.0.as_str())).await?;
    Ok(Json(AgentView::all(agents, &attached)))
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

/// Create an agent; its token is returned once
///
/// In one transaction with its attachments: a misspelt credential (404
/// `credential_not_found`) leaves no agent behind.
#[utoipa::path(
    post,
    path = "/agents",
    tag = "agents",
    security(("admin" = [])),
    params(OrgQuery),
    request_body = AgentBody,
    responses(
        (status = 201, description = "The agent and its token", body = AgentToken),
        (status = "default", response = ErrorBody),
    )
)]
async fn create_agent(
    admin: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<AgentBody>,
) -> Result<(StatusCode, Json<AgentToken>), ApiError> {
    let issued = app.vault.create_agent_with(&org, &b.name, &b.credentials, &admin.actor).await?;
    let token = issued.token.expose().to_string();
    Ok((StatusCode::CREATED, Json(AgentToken { name: issued.agent.name, org: issued.agent.org, token })))
}

/// Show an agent
#[utoipa::path(
    get,
    path = "/agents/{name}",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    responses(
        (status = 200, description = "The agent (never its token)", body = AgentView),
        (status = "default", response = ErrorBody),
    )
)]
async fn get_agent(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(AgentView::load(&app.vault, &org, &name).await?))
}

/// Delete an agent
///
/// Refused (409 `in_use`, naming the credentials) while it is attached to
/// credentials, unless `force=true`, which detaches it from each.
#[utoipa::path(
    delete,
    path = "/agents/{name}",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery, ForceQuery),
    responses(
        (status = 200, description = "Deleted; `cascaded` names the credentials it was detached from", body = Deleted),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_agent(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Deleted>, ApiError> {
    let cascaded = app.vault.delete_agent(&org, &name, q.force, &admin.actor).await?;
    Ok(Json(Deleted { name, org, cascaded }))
}

/// Enable a disabled agent
#[utoipa::path(
    post,
    path = "/agents/{name}/enable",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = "default", response = ErrorBody),
    )
)]
async fn enable_agent(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<AgentView>, ApiError> {
    set_agent_disabled(&app, &org, &name, false, &admin.actor).await
}

/// Disable an agent: its token and JWT are refused from its next call on
#[utoipa::path(
    post,
    path = "/agents/{name}/disable",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = "default", response = ErrorBody),
    )
)]
async fn disable_agent(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<AgentView>, ApiError> {
    set_agent_disabled(&app, &org, &name, true, &admin.actor).await
}

async fn set_agent_disabled(
    app: &AppState,
    org: &str,
    name: &str,
    disabled: bool,
    actor: &str,
) -> Result<Json<AgentView>, ApiError> {
    app.vault.require_agent(org, name).await?;
    app.vault.set_agent_disabled(org, name, disabled, actor).await?;
    Ok(Json(AgentView::load(&app.vault, org, name).await?))
}

/// Re-issue an agent's token
///
/// The new token is returned once; the old one is refused from the next
/// call on, on every replica.
#[utoipa::path(
    post,
    path = "/agents/{name}/token",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    responses(
        (status = 200, description = "The agent and its new token", body = AgentToken),
        (status = "default", response = ErrorBody),
    )
)]
async fn reissue_agent_token(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<AgentToken>, ApiError> {
    let issued = app.vault.reissue_agent_token(&org, &name, &admin.actor).await?;
    let token = issued.token.expose().to_string();
    Ok(Json(AgentToken { name: issued.agent.name, org: issued.agent.org, token }))
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

/// Bind an agent (created if needed) to a JWT subject of an identity provider
#[utoipa::path(
    put,
    path = "/agents/{name}/jwt",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    request_body = BindJwtBody,
    responses(
        (status = 200, description = "An existing agent, bound", body = AgentView),
        (status = 201, description = "A new agent, bound", body = AgentView),
        (status = "default", response = ErrorBody),
    )
)]
async fn bind_agent_jwt(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<BindJwtBody>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let created = app.vault.bind_agent_jwt(&org, &name, &b.idp, &b.subject, &admin.actor).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(AgentView::load(&app.vault, &org, &name).await?)))
}

/// Remove an agent's JWT binding
///
/// 404 `attachment_not_found` when it has none.
#[utoipa::path(
    delete,
    path = "/agents/{name}/jwt",
    tag = "agents",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The agent's name"), OrgQuery),
    responses(
        (status = 200, description = "The agent, unbound", body = AgentView),
        (status = "default", response = ErrorBody),
    )
)]
async fn unbind_agent_jwt(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<AgentView>, ApiError> {
    app.vault.unbind_agent_jwt(&org, &name, &admin.actor).await?;
    Ok(Json(AgentView::load(&app.vault, &org, &name).await?))
}

/// List JWT identity providers
#[utoipa::path(
    get,
    path = "/identity-providers",
    tag = "identity-providers",
    security(("admin" = [])),
    params(("org" = Option<String>, Query, description = "Only this organisation; every organisation when absent")),
    responses(
        (status = 200, description = "The organisation's identity providers", body = [IdpView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_idps(
    _: AdminToken,
    org: Option<Org>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<IdpView>>, ApiError> {
    let all = app.vault.list_identity_providers(org.as_ref().map(|o| o.0.as_str())).await?;
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
    /// The longest a token may live, 60 seconds to 30 days.
    #[schema(default = json!(crate::vault::identity::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS))]
    max_token_lifetime_seconds: Option<i64>,
}

impl IdpBody {
    /// What [`put_idp`] hands the vault, defaults filled in.
    fn into_provider(self, org: String) -> Result<IdentityProvider, ApiError> {
        let jwks = match (self.jwks_url, self.jwks) {
            (Some(url), None) => JwksSource::Url(url),
            (None, Some(doc)) => JwksSource::Static(doc.to_string()),
            _ => return Err(ApiError::new(ErrorCode::InvalidRequest, "give exactly one of `jwks_url` and `jwks`")),
        };
        Ok(IdentityProvider {
            org,
            name: self.name,
            issuer: self.issuer,
            alg: self.alg,
            audience: self.audience,
            leeway_seconds: self.leeway_seconds.unwrap_or(crate::vault::identity::DEFAULT_LEEWAY_SECONDS),
            jwks,
            refresh_seconds: self.refresh_seconds.unwrap_or(crate::vault::identity::DEFAULT_REFRESH_SECONDS),
            subject_claim: self.subject_claim.unwrap_or_else(|| "sub".into()),
            max_token_lifetime_seconds: self
                .max_token_lifetime_seconds
                .unwrap_or(crate::vault::identity::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS),
        })
    }
}

/// Add or replace an identity provider
///
/// Its issuer (unique in the organisation: 409 `issuer_exists`), pinned
/// algorithm, audiences, and `jwks_url` or `jwks` (which must hold a key).
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
    admin: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    JsonBody(b): JsonBody<IdpBody>,
) -> Result<(StatusCode, Json<IdpView>), ApiError> {
    let p = b.into_provider(org)?;
    app.vault.put_identity_provider(&p, &admin.actor).await?;
    Ok((StatusCode::CREATED, Json(IdpView::from(&p))))
}

/// Show an identity provider
#[utoipa::path(
    get,
    path = "/identity-providers/{name}",
    tag = "identity-providers",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The identity provider's name"), OrgQuery),
    responses(
        (status = 200, description = "The identity provider", body = IdpView),
        (status = "default", response = ErrorBody),
    )
)]
async fn get_idp(
    _: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<IdpView>, ApiError> {
    Ok(Json(IdpView::from(&app.vault.get_identity_provider(&org, &name).await?)))
}

/// Delete an identity provider
///
/// Refused (409 `in_use`, naming them) while agents are bound to it, unless
/// `force=true`, which unbinds them.
#[utoipa::path(
    delete,
    path = "/identity-providers/{name}",
    tag = "identity-providers",
    security(("admin" = [])),
    params(("name" = String, Path, description = "The identity provider's name"), OrgQuery, ForceQuery),
    responses(
        (status = 200, description = "Deleted; `cascaded` names the agents unbound", body = Deleted),
        (status = "default", response = ErrorBody),
    )
)]
async fn delete_idp(
    admin: AdminToken,
    Org(org): Org,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Deleted>, ApiError> {
    let cascaded = app.vault.delete_identity_provider(&org, &name, q.force, &admin.actor).await?;
    Ok(Json(Deleted { name, org, cascaded }))
}

// ---------------------------------------------------------------------------
// Registration tokens, plugins, audit
// ---------------------------------------------------------------------------

/// A registration token's lifetime.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// How long it stays valid, as the CLI's `--ttl` takes it: `90s`, `15m`,
    /// `1h`, `2d` (1 second to 30 days).
    #[schema(default = "1h")]
    ttl: Option<String>,
}

impl TokenBody {
    /// The lifetime [`create_token`] asks for: an hour without a body or a `ttl`.
    fn ttl(body: Option<TokenBody>) -> Result<time::Duration, ApiError> {
        match body.and_then(|b| b.ttl) {
            None => Ok(crate::vault::agents::DEFAULT_REGISTRATION_TTL),
            Some(t) => crate::text::parse_duration_seconds(&t).map(time::Duration::seconds).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidArgument, format!("ttl `{t}`: give a duration like 90s, 15m, 1h or 2d"))
            }),
        }
    }
}

/// Create a registration token (lk_reg_…)
///
/// The body is optional: without one the token lives an hour.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    security(("admin" = [])),
    params(OrgQuery),
    request_body(content = Option<TokenBody>, description = "Optional"),
    responses(
        (status = 201, description = "The token, shown once", body = NewToken),
        (status = "default", response = ErrorBody),
    )
)]
async fn create_token(
    admin: AdminToken,
    Org(org): Org,
    State(app): State<Arc<AppState>>,
    body: Option<JsonBody<TokenBody>>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let ttl = TokenBody::ttl(body.map(|JsonBody(b)| b))?;
    let issued = app.vault.create_registration_token(&org, ttl, &admin.actor).await?;
    Ok((StatusCode::CREATED, Json(NewToken::from(&issued))))
}

/// List registration tokens (never their values)
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    security(("admin" = [])),
    params(("org" = Option<String>, Query, description = "Only this organisation; every organisation when absent")),
    responses(
        (status = 200, description = "The organisation's registration tokens, newest first", body = [TokenView]),
        (status = "default", response = ErrorBody),
    )
)]
async fn list_tokens(
    _: AdminToken,
    org: Option<Org>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let all = app.vault.list_registration_tokens(org.as_ref().map(|o| o.0.as_str())).await?;
    Ok(Json(all.iter().map(TokenView::from).collect()))
}

/// Revoke an unused registration token
///
/// Named by its prefix (`lk_reg_AbCd`, as listed) or its whole value.
#[utoipa::path(
    delete,
    path = "/tokens/{prefix}",
    tag = "tokens",
    security(("admin" = [])),
    params(("prefix" = String, Path, description = "The token's prefix, or the whole token"), OrgQuery),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = "default", response = ErrorBody),
    )
)]
async fn revoke_token(
    admin: AdminToken,
    Org(org): Org,
    Path(prefix): Path<String>,
    State(app): State<Arc<AppState>>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(TokenView::from(&app.vault.revoke_registration_token(&org, &prefix, &admin.actor).await?)))
}

/// A scheme plugin, as it declares itself.
#[derive(Serialize, ToSchema)]
pub(super) struct PluginView {
    /// The scheme name credentials refer to.
    pub(super) name: String,
    /// The plugin's own version.
    pub(super) version: String,
    /// One line.
    pub(super) description: String,
    /// Non-secret configuration fields.
    pub(super) config_fields: Vec<FieldView>,
    /// Secret fields, each with its exposure.
    pub(super) secret_fields: Vec<SecretFieldView>,
    /// When any secret field name is allowed, their exposure.
    pub(super) open_secret_fields: Option<&'static str>,
    /// Whether it signs the body (which the proxy then buffers).
    pub(super) reads_body: bool,
    /// Whether its answer depends only on the credential.
    pub(super) request_independent: bool,
    /// Whether it verifies incoming tokens (agents' JWTs).
    pub(super) verifies_tokens: bool,
    /// Whether it is granted raw secret values.
    pub(super) reads_raw_secrets: bool,
    /// SHA-256 of the component, lower hex.
    pub(super) sha256: String,
}

/// A configuration field.
#[derive(Serialize, ToSchema)]
pub(super) struct FieldView {
    /// The field name.
    pub(super) name: String,
    /// Whether a credential must have it.
    pub(super) required: bool,
    /// What to put there.
    pub(super) description: String,
}

/// A secret field.
#[derive(Serialize, ToSchema)]
pub(super) struct SecretFieldView {
    /// The field name.
    pub(super) name: String,
    /// Whether a credential must have it.
    pub(super) required: bool,
    /// What to put there.
    pub(super) description: String,
    /// Where its value may go: `host-only`, `wire` or `identifier`.
    pub(super) exposure: &'static str,
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
    Ok(Json(plugin_views(&app)?))
}

/// Every loaded scheme plugin as it declares itself (the admin API's and
/// the console's list).
pub(super) fn plugin_views(app: &AppState) -> Result<Vec<PluginView>, ApiError> {
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
    Ok(out)
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

/// The admin API's JSON bodies as its handlers read them, for the fuzz
/// targets (`fuzz/`): `data` parsed as each body type (as [`JsonBody`] does),
/// and each body that parses turned into what its handler hands the vault,
/// by the handler's own conversion. `None`: `data` is not that body.
#[doc(hidden)]
#[derive(Default)]
pub struct FuzzBodies {
    /// `POST /credentials`.
    pub create: Option<RawCredential>,
    /// `PATCH /credentials/{name}`.
    pub update: Option<RawUpdate>,
    /// `POST /credentials/{name}/rotate`: secrets and verbatim fields.
    pub rotate: Option<(BTreeMap<String, Secret>, BTreeSet<String>)>,
    /// `POST /credentials/{name}/attach` and `detach`.
    pub attach: Option<Result<(AttachmentKind, String), ApiError>>,
    /// `POST /routes`.
    pub route: Option<Route>,
    /// `POST /agents`: name and credentials.
    pub agent: Option<(String, Vec<String>)>,
    /// `PUT /agents/{name}/jwt`: provider and subject.
    pub bind_jwt: Option<(String, String)>,
    /// `POST /identity-providers`.
    pub idp: Option<Result<IdentityProvider, ApiError>>,
    /// `POST /tokens`: the lifetime (an empty body counts as none).
    pub token_ttl: Option<Result<time::Duration, ApiError>>,
}

#[doc(hidden)]
impl FuzzBodies {
    /// Parse `data` as every body, in organisation `org`.
    pub fn parse(data: &[u8], org: &str) -> FuzzBodies {
        fn body<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
            JsonBody::<T>::parse(data).ok().map(|JsonBody(b)| b)
        }
        FuzzBodies {
            create: body::<NewCredentialBody>(data).map(|b| b.into_raw(org.to_string())),
            update: body::<UpdateBody>(data).map(UpdateBody::into_raw),
            rotate: body::<RotateBody>(data).map(|b| (secrets(b.secrets), b.verbatim)),
            attach: body::<AttachBody>(data).map(AttachBody::target),
            route: body::<RouteBody>(data).map(|b| b.into_route(org.to_string())),
            agent: body::<AgentBody>(data).map(|b| (b.name, b.credentials)),
            bind_jwt: body::<BindJwtBody>(data).map(|b| (b.idp, b.subject)),
            idp: body::<IdpBody>(data).map(|b| b.into_provider(org.to_string())),
            token_ttl: if data.is_empty() {
                Some(TokenBody::ttl(None))
            } else {
                body::<TokenBody>(data).map(|b| TokenBody::ttl(Some(b)))
            },
        }
    }
}
