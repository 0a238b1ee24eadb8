//! The broker's HTTP surfaces (axum): the signing endpoint, the sidecar
//! proxy, agent registration, the admin API, health and metrics.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a
//! stable code and the status [`crate::error::ErrorCode::http_status`] gives
//! it. No message or log line carries a secret or a whole token.
//!
//! The OpenAPI 3.1 document (`/v1/openapi.json`) is generated from the
//! handlers: each carries its operation (`#[utoipa::path]`: parameters,
//! request and response types, security), and the router registers it with
//! `utoipa_axum::routes!`, so the routes served and the paths documented
//! come from the same declarations.

mod admin;
pub mod auth;
pub mod check;
pub mod console;
pub mod identity;
pub mod metrics;
pub mod net;
mod proxy;
mod sign;
pub mod views;
pub mod workers;

/// The JSON bodies of the broker's own routes as their handlers read them,
/// for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::admin::FuzzBodies;
    pub use super::sign::fuzz_body as sign_body;

    /// A `POST /v1/agents/register` body: token, organisation and name.
    pub fn register_body(data: &[u8]) -> Option<(String, String, String)> {
        let b: super::RegisterBody = serde_json::from_slice(data).ok()?;
        Some((b.token, b.org, b.name))
    }
}

use crate::error::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, OptionalFromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::any;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi as _, ToResponse, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::vault::agents::RegistrationError;
use crate::vault::{Vault, VaultError};

/// How the broker serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Path prefix of the sidecar proxy: routes live at `/<prefix>/<route>/…`.
    pub proxy_prefix: String,
    /// Largest request body `/v1/sign` accepts, and the largest body the
    /// proxy buffers for a scheme that signs the body.
    pub max_body: usize,
    /// Networks upstreams may resolve to despite being private or loopback.
    pub address_policy: net::AddressPolicy,
    /// Upstream TLS.
    pub tls: net::TlsOptions,
    /// How long a proxied call may take to produce response headers.
    pub upstream_timeout: Duration,
    /// SHA-256 of the admin token (`LATCHKEY_ADMIN_TOKEN`); `None` disables the admin API.
    pub admin_token_sha256: Option<Vec<u8>>,
    /// The admin token's name, for the audit trail (`admin:<name>`).
    pub admin_token_name: String,
    /// Accept `Authorization: Basic` agent credentials over plain HTTP.
    /// Off by default: Basic is accepted only on a TLS listener.
    pub allow_basic_over_http: bool,
    /// HTTP worker threads, each with its own runtime and upstream
    /// connections; by default one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            proxy_prefix: "proxy".into(),
            max_body: 16 << 20,
            address_policy: net::AddressPolicy::default(),
            tls: net::TlsOptions::default(),
            upstream_timeout: Duration::from_secs(300),
            admin_token_sha256: None,
            admin_token_name: "admin".into(),
            allow_basic_over_http: false,
            workers: workers::default_count(),
        }
    }
}

/// Shared state of every handler.
pub struct AppState {
    /// The vault.
    pub vault: Arc<Vault>,
    /// The configuration.
    pub config: ServerConfig,
    /// The upstream clients, one per HTTP worker.
    pub client: net::Clients,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Identity providers' key sets.
    pub jwks: identity::JwksStore,
    /// The one call path every surface signs through.
    pub broker: crate::broker::Broker,
    /// The console's sessions.
    pub console: console::Sessions,
    /// Routes' upstream URLs, parsed once each (see [`proxy::Upstream`]).
    pub(crate) upstreams: proxy::Upstreams,
}

/// An API error: a stable code (which gives the status) and a message.
#[derive(Debug)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// One sentence, no secrets.
    pub message: String,
}

impl ApiError {
    /// An error with the status its code maps to.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema, ToResponse)]
#[response(description = "An error with a stable code (see `code`); its HTTP status is the code's")]
struct ErrorBody {
    /// The error.
    error: ErrorDetail,
}

/// A stable code and one sentence.
#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// The stable, machine-readable code.
    #[schema(schema_with = error_code_schema)]
    code: ErrorCode,
    /// One sentence for a person, never a secret.
    message: String,
}

/// The schema of an error code: a string, one of [`ErrorCode::ALL`].
fn error_code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
        .build()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"latchkey\""));
        }
        r
    }
}

/// A JSON request body, for any content type (the API never required
/// one). A body that is not the expected JSON — malformed, a missing field,
/// an unknown one where the type denies them — is answered 400
/// `invalid_request` in the error shape above; a body over the limit 413
/// `payload_too_large`. As `Option<JsonBody<T>>` an empty body is `None`.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        JsonBody::parse(&body_bytes(req, state).await?)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<JsonBody<T>>, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() { Ok(None) } else { JsonBody::parse(&bytes).map(Some) }
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    fn parse(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("malformed JSON body: {e}")))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<bytes::Bytes, ApiError> {
    bytes::Bytes::from_request(req, state).await.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::InvalidRequest
        };
        ApiError::new(code, e.body_text())
    })
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<crate::sign::SignError> for ApiError {
    fn from(e: crate::sign::SignError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<crate::broker::aws_chunked::PayloadError> for ApiError {
    fn from(e: crate::broker::aws_chunked::PayloadError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<crate::broker::CallError> for ApiError {
    fn from(e: crate::broker::CallError) -> ApiError {
        ApiError::new(e.code, e.message)
    }
}

impl From<crate::plugin::PluginError> for ApiError {
    fn from(e: crate::plugin::PluginError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl ServerConfig {
    /// Enable the admin API with this token (only its digest is kept).
    pub fn with_admin_token(mut self, token: &str) -> ServerConfig {
        self.admin_token_sha256 = Some(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().to_vec());
        self
    }
}

/// Build the state (the upstream client) for `vault`, with plugins run on `runtime`.
pub fn state(
    vault: Arc<Vault>,
    runtime: Arc<crate::Runtime>,
    config: ServerConfig,
) -> Result<Arc<AppState>, net::TlsSetupError> {
    let client = net::clients(Arc::new(config.address_policy.clone()), &config.tls, config.workers)?;
    Ok(Arc::new(AppState {
        broker: crate::broker::Broker::new(vault.clone(), runtime),
        vault,
        config,
        client,
        metrics: metrics::Metrics::default(),
        jwks: identity::JwksStore::default(),
        console: console::Sessions::default(),
        upstreams: proxy::Upstreams::default(),
    }))
}

/// The router of every surface.
pub fn router(state: Arc<AppState>) -> Router {
    let prefix = format!("/{}", state.config.proxy_prefix.trim_matches('/'));
    let max_body = state.config.max_body;
    // The document is served by a route of the router it describes: the
    // handler reads it from this cell, filled once the router is complete.
    let document = Document::default();
    let with_document = {
        let document = document.clone();
        move |r: axum::routing::MethodRouter<Arc<AppState>>| r.layer(axum::Extension(document))
    };
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::render))
        .routes(routes!(sign::sign).layer(DefaultBodyLimit::max(max_body.saturating_mul(2))))
        .routes(routes!(register))
        .routes(routes!(openapi).map(with_document))
        .nest("/v1/admin", admin::routes())
        .split_for_parts();
    // The proxy's paths depend on the configured prefix, so they are
    // documented here, from the handlers' declarations, at that prefix.
    // `{*rest}` matches any number of segments; OpenAPI has no such
    // parameter, so the document calls it `{rest}`.
    document_at::<proxy::__path_proxy_root>(&mut api, &format!("{prefix}/{{route}}"), "agent");
    document_at::<proxy::__path_proxy>(&mut api, &format!("{prefix}/{{route}}/{{rest}}"), "agent");
    let json = serde_json::to_vec(&api).unwrap_or_default();
    let _ = document.0.set(bytes::Bytes::from(json));
    router
        .layer(axum::middleware::map_response(json_error_shape))
        .nest("/ui", console::routes())
        .route(&format!("{prefix}/{{route}}"), any(proxy::proxy_root))
        .route(&format!("{prefix}/{{route}}/{{*rest}}"), any(proxy::proxy))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Add the operation `P` declares (`#[utoipa::path]`) to `api` at `path`,
/// under `tag`, once per method, each with its own operation id
/// (`proxy_get`, `proxy_post`, …: ids are unique in a document).
fn document_at<P: utoipa::Path>(api: &mut utoipa::openapi::OpenApi, path: &str, tag: &str) {
    let methods = P::methods();
    let several = methods.len() > 1;
    for method in methods {
        let mut op = P::operation();
        op.tags = Some(vec![tag.to_string()]);
        if several {
            let name = serde_json::to_value(&method).ok().and_then(|v| v.as_str().map(str::to_string));
            op.operation_id = op.operation_id.zip(name).map(|(id, m)| format!("{id}_{m}"));
        }
        api.paths.add_path_operation(path, vec![method], op);
    }
}

/// What the document says besides its operations: the title, the security
/// schemes and the error body. The operations come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Latchkey broker",
        description = "A credential broker for AI agents. Errors are {\"error\": {\"code\", \"message\"}} with stable codes."
    ),
    components(schemas(ErrorBody, ErrorDetail), responses(ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The security schemes operations name: `admin` (the admin token),
/// `agent` and `agentBasic` (agent credentials).
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let http = |scheme, description: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(scheme).description(Some(description)).build())
        };
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin", http(HttpAuthScheme::Bearer, "LATCHKEY_ADMIN_TOKEN"));
        components.add_security_scheme(
            "agent",
            http(
                HttpAuthScheme::Bearer,
                "An agent token (lk_agt_…; X-Api-Key also accepted), or a JWT from a trusted identity provider \
                 (see /v1/admin/identity-providers)",
            ),
        );
        components.add_security_scheme(
            "agentBasic",
            http(HttpAuthScheme::Basic, "agent-name:agent-token; only over TLS unless --allow-basic-over-http"),
        );
    }
}

/// The serialised OpenAPI document, once the router is built.
#[derive(Clone, Default)]
struct Document(Arc<std::sync::OnceLock<bytes::Bytes>>);

/// The OpenAPI document
///
/// The OpenAPI 3.1 document of every HTTP surface: this one.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi(axum::Extension(document): axum::Extension<Document>) -> Response {
    let json = document.0.get().cloned().unwrap_or_default();
    ([(CONTENT_TYPE, "application/json")], json).into_response()
}

/// Give every request an id: the caller's `X-Request-Id` when it is a short
/// token, else a random one. It is echoed in the response and set on the
/// request's tracing span, so every log line of the request carries it.
async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    with_request_id(req, |req| next.run(req)).await
}

/// What [`request_id`] does, around `serve`: the id, the framing check
/// (refused requests never reach `serve`), the span, the id on the answer.
/// The proxy's fast path ([`Front`]) and the router's middleware share it.
async fn with_request_id<F: Future<Output = Response>>(
    mut req: axum::extract::Request,
    serve: impl FnOnce(axum::extract::Request) -> F,
) -> Response {
    use tracing::Instrument as _;
    let given = req
        .headers()
        .get("x-request-id")
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 64 && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        })
        .cloned();
    // A header value already: the caller's, or the new id's digits.
    let id = given.unwrap_or_else(|| HeaderValue::try_from(fresh_request_id()).expect("hex digits"));
    let shown = || id.to_str().unwrap_or_default();
    if let Some(why) = ambiguous_framing(req.headers()) {
        let mut response = ApiError::new(ErrorCode::InvalidRequest, why).into_response();
        // Nothing after this request on the connection is read as another.
        response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        response.headers_mut().insert("x-request-id", id.clone());
        tracing::warn!(request_id = %shown(), reason = why, "refused a request with ambiguous framing");
        return response;
    }
    req.headers_mut().insert("x-request-id", id.clone());
    // The path only, never the query: queries can carry keys; a token in
    // the path (`DELETE /v1/admin/tokens/lk_reg_…` given a whole token) is
    // logged redacted.
    let span = tracing::info_span!("request", request_id = %shown(), method = %req.method(), path = %loggable_path(req.uri().path()));
    let mut response = serve(req).instrument(span).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

/// The service every connection is served by: a request on the proxy's
/// paths goes straight to the proxy, anything else through the router.
/// The router would reach the same handler, after matching every route
/// and a middleware layer (about a tenth of a proxied call's CPU time,
/// BENCHMARKS.md); requests the router would treat differently from the
/// plain `/<prefix>/<route>[/<path>]` shape (an empty or percent-encoded
/// route segment, a bare trailing slash) are left to the router.
#[derive(Clone)]
pub struct Front {
    router: Router,
    app: Arc<AppState>,
    /// `/<prefix>/`.
    prefix: Arc<str>,
    tls: bool,
}

impl Front {
    /// The front of [`router`] for `app`; `tls` marks every request
    /// [`auth::ArrivedOverTls`], on either path.
    pub fn new(app: Arc<AppState>, tls: bool) -> Front {
        let router = router(app.clone());
        let prefix = format!("/{}/", app.config.proxy_prefix.trim_matches('/')).into();
        Front { router, app, prefix, tls }
    }
}

/// The route's name when `path` is a plain proxy path under `prefix`
/// (`/<prefix>/`): `/<prefix>/<route>` or `/<prefix>/<route>/<path>`, the
/// route neither empty nor percent-encoded and the path not a bare `/`.
fn proxy_route<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let after = path.strip_prefix(prefix)?;
    let (route, rest) = after.split_once('/').map_or((after, ""), |(r, _)| (r, &after[r.len()..]));
    let plain = !route.is_empty() && !route.contains('%') && rest != "/";
    plain.then_some(route)
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let mut req = req.map(axum::body::Body::new);
        if self.tls {
            req.extensions_mut().insert(auth::ArrivedOverTls);
        }
        let Some(route) = proxy_route(&self.prefix, req.uri().path()).map(str::to_string) else {
            // axum's router is always ready: it may be called without `poll_ready`.
            let mut router = self.router.clone();
            return Box::pin(async move { tower_service::Service::call(&mut router, req).await });
        };
        let app = self.app.clone();
        Box::pin(async move { Ok(with_request_id(req, |req| proxy::handle(app, route, req)).await) })
    }
}

/// A new request id: 16 hex digits, unique within the process. An id
/// correlates log lines, so it must be unique, not secret: one random key
/// per process, mixed with a counter by SplitMix64's finaliser (a bijection
/// of 64-bit words, so no two counters give one id), instead of a
/// `getrandom` system call on every request.
fn fresh_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    });
    let mut z = key.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// Why a request's body framing could be read two ways (THREATS.md case
/// 30), or `None`. hyper reads a body by `Transfer-Encoding` when both are
/// present and accepts codings before `chunked`; a front proxy that reads
/// `Content-Length` instead would see another request where hyper sees
/// body. Such requests are refused and their connection closed.
fn ambiguous_framing(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let lengths: Vec<&[u8]> = headers.get_all(CONTENT_LENGTH).iter().map(|v| v.as_bytes()).collect();
    let codings: Vec<&[u8]> = headers.get_all(TRANSFER_ENCODING).iter().map(|v| v.as_bytes()).collect();
    if !lengths.is_empty() && !codings.is_empty() {
        return Some("the request has both Content-Length and Transfer-Encoding");
    }
    if lengths.len() > 1 {
        return Some("the request has more than one Content-Length");
    }
    if lengths.first().is_some_and(|l| l.is_empty() || !l.iter().all(u8::is_ascii_digit)) {
        return Some("Content-Length must be digits only");
    }
    let only_chunked = matches!(codings.as_slice(), [one] if one.eq_ignore_ascii_case(b"chunked"));
    if !codings.is_empty() && !only_chunked {
        return Some("the only transfer coding accepted is `chunked`, once");
    }
    None
}

/// A request path as logs show it: control characters escaped, capped,
/// and any segment holding a Latchkey token (`lk_reg_…`, `lk_agt_…`)
/// reduced to its redacted prefix.
fn loggable_path(path: &str) -> String {
    use crate::vault::agents::{AGENT_TOKEN_PREFIX, REGISTRATION_TOKEN_PREFIX, redact_token};
    let redacted: Vec<String> = path
        .split('/')
        .map(|seg| {
            let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            if decoded.starts_with(REGISTRATION_TOKEN_PREFIX) || decoded.starts_with(AGENT_TOKEN_PREFIX) {
                redact_token(&decoded)
            } else {
                seg.to_string()
            }
        })
        .collect();
    crate::plugin::sanitize_for_log(&redacted.join("/"), 200)
}

/// The answers axum makes itself — 405 for a method a path does not
/// serve, 413 from a body limit, 400/415 from an extractor — in the one
/// error shape, keeping their headers (`Allow`). Answers already JSON are
/// left alone. A layer of the broker's own endpoints only: what the proxy
/// relays from an upstream is the upstream's.
async fn json_error_shape(response: Response) -> Response {
    let status = response.status();
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            ErrorCode::InvalidRequest
        }
        _ => return response,
    };
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let message = match code {
        ErrorCode::MethodNotAllowed => {
            "this endpoint does not take that method (its `Allow` header lists those it takes)".to_string()
        }
        ErrorCode::PayloadTooLarge => "the request body is over this endpoint's limit".to_string(),
        _ => "the request is malformed".to_string(),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = ApiError::new(code, message).into_response();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

/// `GET /healthz`'s answer.
#[derive(Serialize, ToSchema)]
struct Alive {
    /// `ok`.
    status: &'static str,
}

/// Liveness
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "Alive", body = Alive)))]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// `GET /readyz`'s answer.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// `ready`.
    status: &'static str,
    /// The vault's backend (`sqlite`, `postgres`).
    vault: &'static str,
}

/// Readiness: the vault is reachable
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, response = ErrorBody),
    )
)]
async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    match app.vault.ping().await {
        Ok(()) => Ok(Json(Ready { status: "ready", vault: app.vault.location().backend() })),
        // Not ready is 503 whatever the cause; the cause's own code is in the message.
        Err(e) => Err(ApiError::new(ErrorCode::VaultUnavailable, format!("not ready: {} ({})", e, e.code()))),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A registration token redeemed for an agent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    /// The registration token (`lk_reg_…`).
    token: String,
    /// The organisation the token was made for.
    org: String,
    /// The new agent's name.
    name: String,
}

/// `POST /v1/agents/register`'s answer: the agent, and its token (shown once).
#[derive(Serialize, ToSchema)]
struct Registered {
    /// The new agent.
    agent: RegisteredAgent,
    /// Its token (`lk_agt_…`); only its hash is stored.
    token: String,
}

/// The agent a registration created.
#[derive(Serialize, ToSchema)]
struct RegisteredAgent {
    /// Random id.
    id: String,
    /// Its organisation.
    org: String,
    /// Its name.
    name: String,
}

/// Redeem a registration token for an agent token
#[utoipa::path(
    post,
    path = "/v1/agents/register",
    tag = "agent",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The agent and its token", body = Registered),
        (status = "default", response = ErrorBody),
    )
)]
async fn register(
    State(app): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let body: RegisterBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, format!("expected {{\"token\", \"org\", \"name\"}}: {e}"))
    })?;
    let issued = app.vault.redeem_registration_token(&body.token, &body.org, &body.name).await?;
    app.metrics.registrations.inc();
    let agent = RegisteredAgent { id: issued.agent.id, org: issued.agent.org, name: issued.agent.name };
    Ok((StatusCode::CREATED, Json(Registered { agent, token: issued.token.expose().to_string() })))
}

/// The broker's own TLS: a certificate chain and key from PEM files.
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, net::TlsSetupError> {
    use net::TlsSetupError;
    use rustls_pki_types::pem::PemObject as _;
    let cert_error = |source| TlsSetupError::File { what: "--tls-cert", path: cert_file.to_path_buf(), source };
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert_file)
        .map_err(cert_error)?
        .collect::<Result<_, _>>()
        .map_err(cert_error)?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty { what: "--tls-cert", path: cert_file.to_path_buf() });
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsSetupError::File {
        what: "--tls-key",
        path: key_file.to_path_buf(),
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsSetupError::Rustls { what: "server TLS", source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsSetupError::Rustls { what: "--tls-cert/--tls-key", source })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serve over TLS on `listener` until `shutdown` resolves, then stop
/// accepting and wait for in-flight calls (as [`serve`] does). Requests are
/// marked [`auth::ArrivedOverTls`], which Basic agent credentials need.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let workers = state.config.workers;
    workers::serve(listener, Front::new(state, true), Some(acceptor), workers, shutdown).await
}

/// Serve on `listener` until `shutdown` resolves, finishing in-flight
/// calls, on [`ServerConfig::workers`] worker threads (see `workers.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let workers = state.config.workers;
    workers::serve(listener, Front::new(state, false), None, workers, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::proxy_route;

    #[test]
    fn only_plain_proxy_paths_take_the_fast_path() {
        let p = "/proxy/";
        assert_eq!(proxy_route(p, "/proxy/bench/anything"), Some("bench"));
        assert_eq!(proxy_route(p, "/proxy/bench/a/b?c"), Some("bench"));
        assert_eq!(proxy_route(p, "/proxy/bench"), Some("bench"));
        assert_eq!(proxy_route(p, "/proxy/bench//x"), Some("bench"));
        // Left to the router, which decodes, matches or refuses them itself.
        for path in
            ["/proxy/bench/", "/proxy//x", "/proxy/", "/proxy", "/proxy/%62ench/x", "/proxyx/bench", "/v1/sign", "/"]
        {
            assert_eq!(proxy_route(p, path), None, "{path}");
        }
    }
}
