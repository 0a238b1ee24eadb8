//! The admin API (`/v1/admin/…`): credentials, routes, agents, registration
//! tokens, plugins and the audit trail over HTTP, for operators and their
//! automation. Authenticated separately from agents: `Authorization: Bearer
//! <admin token>`, where the token is `LATCHKEY_ADMIN_TOKEN` (compared as
//! SHA-256 digests in constant time). Without a configured token the admin
//! API answers 403 `admin_disabled`. The OpenAPI document is at
//! `/v1/openapi.json`.

use crate::error::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use ring::digest;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;

use super::{ApiError, AppState};
use crate::secret::Secret;
use crate::vault::agents::Route;
use crate::vault::identity::{IdentityProvider, JwksSource};
use crate::vault::model::{RawCredential, RawUpdate};
use crate::vault::{AuditAction, AuditFilter, CredentialInfo};

/// The admin routes (nested under `/v1/admin`).
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/credentials", get(list_credentials).post(create_credential))
        .route("/credentials/{name}", get(get_credential).patch(update_credential).delete(delete_credential))
        .route("/credentials/{name}/enable", post(enable))
        .route("/credentials/{name}/disable", post(disable))
        .route("/credentials/{name}/rotate", post(rotate))
        .route("/credentials/{name}/check", post(check))
        .route("/routes", get(list_routes).post(put_route))
        .route("/routes/{name}", axum::routing::delete(delete_route))
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{name}/jwt", axum::routing::put(bind_agent_jwt))
        .route("/identity-providers", get(list_idps).post(put_idp))
        .route("/identity-providers/{name}", axum::routing::delete(delete_idp))
        .route("/tokens", post(create_token))
        .route("/plugins", get(plugins))
        .route("/audit", get(audit))
}

const ACTOR: &str = "admin-api";

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &app.config.admin_token_sha256 else {
        return Err(ApiError::new(
            ErrorCode::AdminDisabled,
            "the admin API is disabled: start the broker with LATCHKEY_ADMIN_TOKEN set",
        ));
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidAdminToken, "send `Authorization: Bearer <admin token>`"))?;
    let got = digest::digest(&digest::SHA256, presented.as_bytes());
    if bool::from(subtle::ConstantTimeEq::ct_eq(got.as_ref(), expected.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::InvalidAdminToken, "the admin token is not valid"))
    }
}

#[derive(Deserialize, Default)]
struct OrgQuery {
    org: Option<String>,
    #[serde(default)]
    force: bool,
}

impl OrgQuery {
    fn org(&self) -> Result<String, ApiError> {
        Ok(crate::vault::parse_org(self.org.as_deref())?.to_string())
    }
}

fn credential_json(info: &CredentialInfo) -> serde_json::Value {
    info.to_json()
}

fn with_notices(info: &CredentialInfo, notices: &[crate::vault::model::Notice]) -> serde_json::Value {
    let mut v = credential_json(info);
    v["notices"] = notices.iter().map(|n| n.message.clone()).collect::<Vec<_>>().into();
    v
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("malformed JSON body: {e}")))
}

async fn list_credentials(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let org = q.org.as_deref().map(|o| crate::vault::parse_org(Some(o))).transpose()?;
    let all = app.vault.list(org.as_ref().map(|o| o.as_str())).await?;
    Ok(Json(all.iter().map(credential_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredentialBody {
    name: String,
    scheme: String,
    #[serde(default)]
    config: Vec<(String, String)>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    verbatim: BTreeSet<String>,
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

fn secrets(map: BTreeMap<String, String>) -> BTreeMap<String, Secret> {
    map.into_iter().map(|(k, v)| (k, Secret::new(v))).collect()
}

async fn create_credential(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: NewCredentialBody = parse(&body)?;
    let raw = RawCredential {
        name: b.name,
        org: Some(q.org()?),
        scheme: b.scheme,
        config: b.config,
        secrets: secrets(b.secrets),
        verbatim: b.verbatim,
        enabled: b.enabled,
        destinations: b.destinations,
    };
    let done = app.vault.create(raw, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(with_notices(&done.value, &done.notices))).into_response())
}

async fn get_credential(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    Ok(Json(credential_json(&app.vault.get(&q.org()?, &name).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    config: Option<Vec<(String, String)>>,
    secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    verbatim: BTreeSet<String>,
    destinations: Option<Vec<String>>,
    enabled: Option<bool>,
    expected_version: Option<u64>,
}

async fn update_credential(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: UpdateBody = parse(&body)?;
    let raw = RawUpdate {
        config: b.config,
        secrets: b.secrets.map(secrets),
        verbatim: b.verbatim,
        enabled: b.enabled,
        destinations: b.destinations,
        expected_version: b.expected_version,
    };
    let done = app.vault.update(&q.org()?, &name, raw, ACTOR).await?;
    Ok(Json(with_notices(&done.value, &done.notices)).into_response())
}

async fn delete_credential(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let gone = app.vault.delete(&q.org()?, &name, q.force, ACTOR).await?;
    Ok(Json(credential_json(&gone)).into_response())
}

async fn set_enabled(
    app: Arc<AppState>,
    headers: HeaderMap,
    name: String,
    q: OrgQuery,
    on: bool,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let info = app.vault.set_enabled(&q.org()?, &name, on, ACTOR).await?;
    Ok(Json(credential_json(&info)).into_response())
}

async fn enable(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    set_enabled(app, headers, name, q, true).await
}

async fn disable(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    set_enabled(app, headers, name, q, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    verbatim: BTreeSet<String>,
}

async fn rotate(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: RotateBody = parse(&body)?;
    let done = app.vault.rotate(&q.org()?, &name, secrets(b.secrets), b.verbatim, ACTOR).await?;
    Ok(Json(with_notices(&done.value, &done.notices)).into_response())
}

async fn check(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let o = super::check::check_credential(&app, &q.org()?, &name).await?;
    Ok(Json(
        serde_json::json!({"credential": name, "state": o.state, "status": o.status, "url": o.url, "detail": o.detail}),
    )
    .into_response())
}

fn route_json(r: &Route) -> serde_json::Value {
    serde_json::json!({"name": r.name, "org": r.org, "upstream": r.upstream, "credential": r.credential,
        "mock": r.mock, "check_path": r.check_path})
}

async fn list_routes(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let routes = app.vault.list_routes(Some(&q.org()?)).await?;
    Ok(Json(routes.iter().map(route_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    name: String,
    upstream: String,
    credential: String,
    #[serde(default)]
    mock: bool,
    check_path: Option<String>,
}

async fn put_route(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: RouteBody = parse(&body)?;
    let route = Route {
        name: b.name,
        org: q.org()?,
        upstream: b.upstream,
        credential: b.credential,
        mock: b.mock,
        check_path: b.check_path,
    };
    app.vault.put_route(&route, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(route_json(&route))).into_response())
}

async fn delete_route(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let org = q.org()?;
    if !app.vault.delete_route(&org, &name, ACTOR).await? {
        return Err(ApiError::new(ErrorCode::RouteNotFound, format!("no route named `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_agents(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let agents = app.vault.list_agents(Some(&q.org()?)).await?;
    Ok(Json(
        agents
            .iter()
            .map(|a| {
                serde_json::json!({"name": a.name, "org": a.org, "disabled": a.disabled,
                "created_at": a.created_at.format(&Rfc3339).ok(),
                "jwt": a.jwt.as_ref().map(|(idp, subject)| serde_json::json!({"idp": idp, "subject": subject}))})
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    name: String,
    #[serde(default)]
    credentials: Vec<String>,
}

async fn create_agent(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: AgentBody = parse(&body)?;
    let org = q.org()?;
    let issued = app.vault.create_agent(&org, &b.name, ACTOR).await?;
    for c in &b.credentials {
        app.vault.set_attachment(&org, c, crate::vault::AttachmentKind::Agent, &b.name, true, ACTOR).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"name": issued.agent.name, "org": issued.agent.org, "token": issued.token.expose()})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindJwtBody {
    idp: String,
    subject: String,
}

async fn bind_agent_jwt(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: BindJwtBody = parse(&body)?;
    let org = q.org()?;
    let created = app.vault.bind_agent_jwt(&org, &name, &b.idp, &b.subject, ACTOR).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::json!({"name": name, "org": org, "jwt": {"idp": b.idp, "subject": b.subject}})))
        .into_response())
}

fn idp_json(p: &IdentityProvider) -> serde_json::Value {
    let (url, jwks) = match &p.jwks {
        JwksSource::Url(u) => (Some(u.clone()), None),
        JwksSource::Static(d) => (None, serde_json::from_str::<serde_json::Value>(d).ok()),
    };
    serde_json::json!({"name": p.name, "org": p.org, "issuer": p.issuer, "alg": p.alg, "audience": p.audience,
        "leeway_seconds": p.leeway_seconds, "jwks_url": url, "jwks": jwks, "refresh_seconds": p.refresh_seconds,
        "subject_claim": p.subject_claim})
}

async fn list_idps(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let all = app.vault.list_identity_providers(Some(&q.org()?)).await?;
    Ok(Json(all.iter().map(idp_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdpBody {
    name: String,
    issuer: String,
    alg: String,
    #[serde(default)]
    audience: Vec<String>,
    jwks_url: Option<String>,
    jwks: Option<serde_json::Value>,
    leeway_seconds: Option<i64>,
    refresh_seconds: Option<i64>,
    subject_claim: Option<String>,
}

async fn put_idp(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: IdpBody = parse(&body)?;
    let jwks = match (b.jwks_url, b.jwks) {
        (Some(url), None) => JwksSource::Url(url),
        (None, Some(doc)) => JwksSource::Static(doc.to_string()),
        _ => return Err(ApiError::new(ErrorCode::InvalidRequest, "give exactly one of `jwks_url` and `jwks`")),
    };
    let p = IdentityProvider {
        org: q.org()?,
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
    Ok((StatusCode::CREATED, Json(idp_json(&p))).into_response())
}

async fn delete_idp(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    if !app.vault.delete_identity_provider(&q.org()?, &name, ACTOR).await? {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no identity provider named `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    ttl_seconds: Option<i64>,
}

async fn create_token(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let b: TokenBody = if body.is_empty() { TokenBody { ttl_seconds: None } } else { parse(&body)? };
    let ttl = b.ttl_seconds.map(time::Duration::seconds).unwrap_or(crate::vault::agents::DEFAULT_REGISTRATION_TTL);
    let issued = app.vault.create_registration_token(&q.org()?, ttl, ACTOR).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"token": issued.token.expose(), "org": issued.org,
            "expires_at": issued.expires_at.format(&Rfc3339).ok()})),
    )
        .into_response())
}

async fn plugins(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let rt = app.vault.runtime();
    let mut out = Vec::new();
    for name in rt.scheme_names() {
        let p = rt.get(&name)?;
        let fields = |fs: &[crate::plugin::FieldInfo]| -> Vec<serde_json::Value> {
            fs.iter()
                .map(|f| serde_json::json!({"name": f.name, "required": f.required, "description": f.description}))
                .collect()
        };
        out.push(serde_json::json!({"name": p.info.name, "version": p.info.version, "description": p.info.description,
            "config_fields": fields(&p.info.config_fields),
            "secret_fields": p.info.secret_fields.iter().map(|f| serde_json::json!({"name": f.name,
                "required": f.required, "description": f.description,
                "exposure": crate::plugin::exposure_name(f.exposure)})).collect::<Vec<_>>(),
            "open_secret_fields": p.info.open_secret_fields.map(crate::plugin::exposure_name),
            "reads_body": p.info.reads_body, "request_independent": p.info.request_independent,
            "verifies_tokens": p.exports_verifier(),
            "reads_raw_secrets": p.reads_secrets, "sha256": p.digest}));
    }
    Ok(Json(out).into_response())
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    org: Option<String>,
    credential: Option<String>,
    action: Option<String>,
    limit: Option<u32>,
}

async fn audit(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let action = match q.action.as_deref() {
        None => None,
        Some(a) => Some(
            AuditAction::parse(a)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("unknown action `{a}`")))?,
        ),
    };
    let filter = AuditFilter { org: q.org, credential: q.credential, action, since: None, limit: q.limit };
    Ok(Json(app.vault.audit(&filter).await?).into_response())
}

/// The OpenAPI 3.1 document of every HTTP surface.
pub(super) async fn openapi() -> Json<serde_json::Value> {
    let err = serde_json::json!({"$ref": "#/components/responses/Error"});
    let admin = |summary: &str| {
        serde_json::json!({"summary": summary, "security": [{"admin": []}],
        "parameters": [{"$ref": "#/components/parameters/org"}], "responses": {"200": {"description": "OK"}, "default": err}})
    };
    let agent = |summary: &str| {
        serde_json::json!({"summary": summary, "security": [{"agent": []}, {"agentBasic": []}],
        "responses": {"200": {"description": "OK"}, "default": err}})
    };
    Json(serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "Latchkey broker", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A credential broker for AI agents. Errors are {\"error\": {\"code\", \"message\"}} with stable codes."},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: the vault is reachable", "responses": {"200": {"description": "ready"}, "503": err}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OpenMetrics text"}}}},
            "/v1/sign": {"post": agent("Sign a request with a credential attached to the calling agent")},
            "/v1/agents/register": {"post": {"summary": "Redeem a registration token for an agent token",
                "responses": {"201": {"description": "the agent and its token"}, "default": err}}},
            "/proxy/{route}/{path}": {"get": agent("Sidecar proxy: forward to the route's upstream with its credential (any method)")},
            "/v1/admin/credentials": {"get": admin("List credentials"), "post": admin("Create a credential")},
            "/v1/admin/credentials/{name}": {"get": admin("Show a credential"), "patch": admin("Update a credential"),
                                              "delete": admin("Delete a credential (?force=true while attached)")},
            "/v1/admin/credentials/{name}/enable": {"post": admin("Enable")},
            "/v1/admin/credentials/{name}/disable": {"post": admin("Disable: every use fails with credential_disabled")},
            "/v1/admin/credentials/{name}/rotate": {"post": admin("Replace the secret values")},
            "/v1/admin/credentials/{name}/check": {"post": admin("Probe the provider: valid, invalid, forbidden, quota, unreachable")},
            "/v1/admin/routes": {"get": admin("List routes"), "post": admin("Add or replace a route")},
            "/v1/admin/routes/{name}": {"delete": admin("Delete a route")},
            "/v1/admin/agents": {"get": admin("List agents"), "post": admin("Create an agent; its token is returned once")},
            "/v1/admin/agents/{name}/jwt": {"put": admin("Bind an agent (created if needed) to a JWT subject of an identity provider")},
            "/v1/admin/identity-providers": {"get": admin("List JWT identity providers"),
                "post": admin("Add or replace an identity provider (issuer, pinned alg, audiences, jwks_url or jwks)")},
            "/v1/admin/identity-providers/{name}": {"delete": admin("Delete an identity provider (refused while agents are bound)")},
            "/v1/admin/tokens": {"post": admin("Create a registration token (lk_reg_…)")},
            "/v1/admin/plugins": {"get": admin("List schemes")},
            "/v1/admin/audit": {"get": admin("The audit trail")},
        },
        "components": {
            "securitySchemes": {
                "agent": {"type": "http", "scheme": "bearer", "description": "An agent token (lk_agt_…; X-Api-Key also accepted), or a JWT from a trusted identity provider (see /v1/admin/identity-providers)"},
                "agentBasic": {"type": "http", "scheme": "basic", "description": "agent-name:agent-token; only over TLS unless --allow-basic-over-http"},
                "admin": {"type": "http", "scheme": "bearer", "description": "LATCHKEY_ADMIN_TOKEN"},
            },
            "parameters": {"org": {"name": "org", "in": "query", "required": false, "schema": {"type": "string", "default": "default"}}},
            "responses": {"Error": {"description": "An error with a stable code", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}}}}}}},
        },
    }))
}
