//! The sidecar proxy: `/<prefix>/<route>/<path…>` → the route's upstream,
//! with the route's credential applied.
//!
//! - The agent authenticates with its token where its SDK puts an API key;
//!   that header (and every other credential-bearing header) is removed
//!   before the scheme runs, so the agent's token never goes upstream.
//! - The agent must be attached to the route's credential, and the upstream
//!   host must be among the credential's destinations.
//! - Request bodies stream to the upstream, except for schemes that sign the
//!   body (SigV4, ACS3, TC3 and third-party schemes), which buffer it up to
//!   the configured limit (413 beyond, never an unsigned fall-back).
//! - Responses stream back as they arrive (server-sent events token by
//!   token), with the upstream's status and headers, minus hop-by-hop ones.
//!   Redirects are passed back, never followed.
//! - A route in mock mode answers from a built-in mock upstream: the request
//!   that would have been sent, secrets redacted.
//! - The path is forwarded exactly as the agent sent it (still
//!   percent-encoded), so what the scheme signs is what the upstream gets.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use http_body_util::BodyExt as _;

use super::auth::{self, TokenSource};
use super::{ApiError, AppState};
use crate::sign::{self, BodyDigest, SignInput};
use crate::vault::UseEvent;
use crate::vault::model::{Layer, Overrides};

/// Hop-by-hop and framing headers, never forwarded either way.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"];

/// Headers of the agent's own SigV4 signature, replaced by the real one.
const AGENT_SIGV4: &[&str] = &["x-amz-date", "x-amz-content-sha256", "x-amz-security-token"];

/// Schemes that never read the body, so it can stream.
const STREAMING_SCHEMES: &[&str] = &["api-key", "basic", "custom-headers", "jwt"];

pub(super) async fn proxy_root(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(route): axum::extract::Path<String>,
    req: Request,
) -> Response {
    handle(app, route, req).await
}

pub(super) async fn proxy(
    State(app): State<Arc<AppState>>,
    axum::extract::Path((route, _)): axum::extract::Path<(String, String)>,
    req: Request,
) -> Response {
    handle(app, route, req).await
}

struct Call {
    org: String,
    agent: Option<String>,
    credential: String,
    scheme: String,
    host: Option<String>,
    layer: Option<Layer>,
}

async fn handle(app: Arc<AppState>, route_name: String, req: Request) -> Response {
    let started = Instant::now();
    let mut call = Call {
        org: String::new(),
        agent: None,
        credential: String::new(),
        scheme: "-".into(),
        host: None,
        layer: None,
    };
    let result = forward(&app, &route_name, req, &mut call).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    if !call.credential.is_empty() {
        app.vault.record_use(UseEvent {
            org: call.org.clone(),
            credential: call.credential.clone(),
            agent: call.agent.clone(),
            destination: call.host.clone(),
            outcome: outcome.to_string(),
            layer: call.layer,
        });
    }
    app.metrics.call("proxy", &call.scheme, &route_name, outcome, started.elapsed());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The raw (still percent-encoded) path after `/<prefix>/<route>`.
fn rest_of_path<'a>(uri: &'a Uri, prefix: &str) -> &'a str {
    let path = uri.path();
    let head = format!("/{}/", prefix.trim_matches('/'));
    let after = path.strip_prefix(&head).unwrap_or(path);
    // Skip the route segment (as sent, possibly percent-encoded).
    match after.find('/') {
        Some(i) => &after[i..],
        None => "",
    }
}

async fn forward(app: &Arc<AppState>, route_name: &str, req: Request, call: &mut Call) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let tls = parts.extensions.get::<auth::ArrivedOverTls>().is_some();
    let (agent, source) = auth::agent(app, &parts.headers, tls).await?;
    call.org = agent.org.clone();
    call.agent = Some(agent.name.clone());
    let route = app.vault.route(&agent.org, route_name).await?.ok_or_else(|| {
        ApiError::new("route_not_found", format!("no route named `{route_name}` (latchkey route list)"))
    })?;
    call.credential = route.credential.clone();
    let credential = app.vault.credential(&agent.org, &route.credential).await?.ok_or_else(|| {
        ApiError::new(
            "credential_not_found",
            format!("route `{}` names credential `{}`, which does not exist", route.name, route.credential),
        )
    })?;
    call.scheme = credential.scheme.clone();
    auth::check_attached(&agent, &credential)?;

    // The upstream URL: the route's base, then the path exactly as sent.
    let rest = rest_of_path(&parts.uri, &app.config.proxy_prefix);
    let mut url = format!("{}{}", route.upstream, if rest.is_empty() { "/" } else { rest });
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let parsed = url::Url::parse(&url).map_err(|e| ApiError::new("invalid_request", format!("upstream URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    call.host = Some(host.clone());
    if let Some(why) = app.config.address_policy.literal_refusal(&parsed) {
        return Err(ApiError::new("upstream_address_refused", format!("upstream {why}")));
    }
    if !credential.allows(&host) {
        return Err(ApiError::new(
            "destination_not_allowed",
            format!("credential `{}` may not be sent to `{host}`", credential.name),
        ));
    }

    // Headers to forward: not hop-by-hop, not the agent's credentials.
    let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || auth::CREDENTIAL_HEADERS.contains(&n)
            || (source == TokenSource::SigV4 && AGENT_SIGV4.contains(&n))
            || n == "content-length"
        {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| ApiError::new("invalid_request", format!("header `{n}` is not visible ASCII")))?;
        headers.push((n.to_string(), value.to_string()));
    }

    // The body: buffered for schemes that sign it, streamed otherwise.
    let streaming = STREAMING_SCHEMES.contains(&credential.scheme.as_str());
    let content_length = parts.headers.get("content-length").cloned();
    let (digest, bytes, out_body) = if streaming {
        (BodyDigest::Unknown, Vec::new(), Some(Body::new(body)))
    } else {
        let limited = http_body_util::Limited::new(body, app.config.max_body);
        let collected = limited.collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::new(
                    "payload_too_large",
                    format!(
                        "scheme `{}` signs the body, and it is over the {} byte limit",
                        credential.scheme, app.config.max_body
                    ),
                )
            } else {
                ApiError::new("invalid_request", format!("reading the request body: {e}"))
            }
        })?;
        (BodyDigest::Compute, collected.to_bytes().to_vec(), None)
    };
    let input = SignInput {
        method: parts.method.as_str().to_string(),
        url,
        headers,
        body: bytes,
        at: None,
        body_digest: digest,
    };
    let prepared = sign::prepare(&input)?;
    let resolution = app.vault.resolve(&agent.org, &route.credential, &Overrides::new()).await?;
    call.layer = Some(resolution.resolved.layer);
    resolution.check_destination(&host)?;
    let plugin = app.vault.runtime().get(&credential.scheme)?;
    let signed = app.apply_credential(&route.credential, &credential, &plugin, &resolution, &prepared)?;

    if route.mock {
        return Ok(mock_answer(
            &signed,
            &resolution.resolved.secrets,
            plugin.reads_secrets,
            &plugin.info.writable_headers,
        ));
    }

    let method = Method::from_bytes(signed.method.as_bytes())
        .map_err(|_| ApiError::new("invalid_request", "method is not valid"))?;
    let mut builder = axum::http::Request::builder().method(method).uri(signed.url.as_str());
    let out_headers = builder.headers_mut().expect("fresh builder");
    for (name, value) in &signed.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::new("invalid_request", format!("header name `{name}` is not valid")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| ApiError::new("invalid_request", format!("header `{name}` has an invalid value")))?;
        out_headers.append(name, value);
    }
    let body = match out_body {
        Some(stream) => {
            if let Some(len) = content_length {
                out_headers.insert("content-length", len);
            }
            stream
        }
        None => {
            out_headers.insert("content-length", HeaderValue::from(input.body.len()));
            Body::from(input.body)
        }
    };
    let request = builder.body(body).map_err(|e| ApiError::new("invalid_request", e.to_string()))?;
    let response = tokio::time::timeout(app.config.upstream_timeout, app.client.request(request))
        .await
        .map_err(|_| ApiError::new("upstream_timeout", format!("`{host}` did not answer in time")))?
        .map_err(|e| upstream_error(&host, &e))?;
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for h in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        if h != "host" {
            headers.remove(h.as_str());
        }
    }
}

fn upstream_error(host: &str, e: &hyper_util::client::legacy::Error) -> ApiError {
    let mut chain = format!("{e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if let Some(i) = chain.find("upstream_address_refused: ") {
        return ApiError::new("upstream_address_refused", chain[i + "upstream_address_refused: ".len()..].to_string());
    }
    ApiError::new("upstream_unreachable", format!("could not reach `{host}`: {chain}"))
}

/// What the mock upstream answers: the request as it would have been sent,
/// with every secret value (and every header a raw-secret scheme wrote)
/// replaced by `[redacted]`.
fn mock_answer(
    signed: &sign::SignedRequest,
    secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    reads_secrets: bool,
    written: &[String],
) -> Response {
    let redact = |text: &str| -> String {
        let mut out = text.to_string();
        for s in secrets.values().filter(|s| !s.expose().is_empty()) {
            out = out.replace(s.expose(), "[redacted]");
        }
        out
    };
    let headers: Vec<(String, String)> = signed
        .headers
        .iter()
        .map(|(n, v)| {
            let writer = written.iter().any(|w| w.eq_ignore_ascii_case(n));
            let value = if reads_secrets && writer { "[redacted]".to_string() } else { redact(v) };
            (n.clone(), value)
        })
        .collect();
    let body = serde_json::json!({
        "mock": true,
        "would_send": {"method": signed.method, "url": redact(&signed.url), "headers": headers},
    });
    (StatusCode::OK, [("x-latchkey-mock", "1")], Json(body)).into_response()
}
