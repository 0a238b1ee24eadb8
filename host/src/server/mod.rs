//! The broker's HTTP surfaces (axum): the signing endpoint, the sidecar
//! proxy, agent registration, health and metrics.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a
//! stable code and the status [`crate::error::ErrorCode::http_status`] gives
//! it. No message or log line carries a secret or a whole token.

mod admin;
pub mod auth;
pub mod check;
pub mod identity;
pub mod metrics;
pub mod net;
mod proxy;
mod sign;

use crate::error::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;

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
    /// Accept `Authorization: Basic` agent credentials over plain HTTP.
    /// Off by default: Basic is accepted only on a TLS listener.
    pub allow_basic_over_http: bool,
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
            allow_basic_over_http: false,
        }
    }
}

/// Shared state of every handler.
pub struct AppState {
    /// The vault.
    pub vault: Arc<Vault>,
    /// The configuration.
    pub config: ServerConfig,
    /// The upstream client.
    pub client: net::UpstreamClient,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Identity providers' key sets.
    pub jwks: identity::JwksStore,
    /// The one call path every surface signs through.
    pub broker: crate::broker::Broker,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"latchkey\""));
        }
        r
    }
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

/// Build the state (the upstream client) for `vault`.
pub fn state(vault: Arc<Vault>, config: ServerConfig) -> Result<Arc<AppState>, String> {
    let client = net::client(Arc::new(config.address_policy.clone()), &config.tls)?;
    Ok(Arc::new(AppState {
        broker: crate::broker::Broker::new(vault.clone()),
        vault,
        config,
        client,
        metrics: metrics::Metrics::default(),
        jwks: identity::JwksStore::default(),
    }))
}

/// The router of every surface.
pub fn router(state: Arc<AppState>) -> Router {
    let prefix = format!("/{}", state.config.proxy_prefix.trim_matches('/'));
    let max_body = state.config.max_body;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .route("/v1/sign", post(sign::sign).layer(DefaultBodyLimit::max(max_body.saturating_mul(2))))
        .route("/v1/agents/register", post(register))
        .route("/v1/openapi.json", get(admin::openapi))
        .nest("/v1/admin", admin::routes())
        .route(&format!("{prefix}/{{route}}"), any(proxy::proxy_root))
        .route(&format!("{prefix}/{{route}}/{{*rest}}"), any(proxy::proxy))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Give every request an id: the caller's `X-Request-Id` when it is a short
/// token, else a random one. It is echoed in the response and set on the
/// request's tracing span, so every log line of the request carries it.
async fn request_id(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string);
    let id = given.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        hex::encode(b)
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", v);
    }
    // The path only, never the query: queries can carry keys.
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %crate::plugin::sanitize_for_log(req.uri().path(), 200));
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.vault.ping().await {
        Ok(()) => {
            (StatusCode::OK, Json(serde_json::json!({"status": "ready", "vault": app.vault.location().backend()})))
                .into_response()
        }
        // Not ready is 503 whatever the cause; the cause's own code is in the message.
        Err(e) => {
            ApiError::new(ErrorCode::VaultUnavailable, format!("not ready: {} ({})", e, e.code())).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    token: String,
    org: String,
    name: String,
}

/// `POST /v1/agents/register`: redeem a registration token for an agent token.
async fn register(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let body: RegisterBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, format!("expected {{\"token\", \"org\", \"name\"}}: {e}"))
    })?;
    let issued = app.vault.redeem_registration_token(&body.token, &body.org, &body.name).await?;
    app.metrics.registrations.inc();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "agent": {"id": issued.agent.id, "org": issued.agent.org, "name": issued.agent.name},
            "token": issued.token.expose(),
        })),
    )
        .into_response())
}

/// The broker's own TLS: a certificate chain and key from PEM files.
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject as _;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("--tls-cert {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {} holds no certificate", cert_file.display()));
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("--tls-key {}: {e}", key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
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
    // axum::serve speaks plain TCP only; this is its accept loop with a TLS
    // handshake in front, on hyper-util's connection builder and graceful
    // shutdown watcher.
    let app = router(state).layer(axum::Extension(auth::ArrivedOverTls));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serve `router` on `listener` until `shutdown` resolves, finishing
/// in-flight calls.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
