//! The sidecar proxy: `/<prefix>/<route>/<path…>` → the route's upstream,
//! with the route's credential applied.
//!
//! - The agent authenticates with its token where its SDK puts an API key;
//!   that header (and every other credential-bearing header) is removed
//!   before the scheme runs, so the agent's token never goes upstream.
//! - The agent must be attached to the route's credential, and the upstream
//!   host must be among the credential's destinations. The host is the
//!   route's: the agent's `Host` is dropped (the client sets the route's),
//!   and the forwarding headers an agent could forge toward the provider
//!   (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are dropped too, so they
//!   are neither sent nor signed.
//! - Request bodies stream to the upstream, except for schemes that declare
//!   `reads-body` (SigV4, ACS3, TC3, or any third-party scheme that says so),
//!   which buffer it up to the configured limit (413 beyond, never an
//!   unsigned fall-back). For those, an `aws-chunked` / `STREAMING-*` upload
//!   (boto3's default over HTTPS) is decoded to its plain payload first, its
//!   trailing checksums moved into headers, so what is signed and sent is
//!   what the upstream stores; a mode that cannot be decoded is refused.
//! - Everything about the credential goes through the one call path
//!   ([`crate::broker`]); this file adapts HTTP to it.
//! - Responses stream back as they arrive (server-sent events token by
//!   token), with the upstream's status and headers, minus hop-by-hop ones.
//!   Redirects are passed back, never followed.
//! - A route in mock mode answers from a built-in mock upstream: the request
//!   that would have been sent, secrets redacted.
//! - The path is forwarded exactly as the agent sent it (still
//!   percent-encoded), so what the scheme signs is what the upstream gets.

use crate::error::ErrorCode;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use http_body_util::BodyExt as _;

use super::auth::{self, TokenSource};
use super::{ApiError, AppState};
use crate::broker::{Caller, Delivery, Ticket, aws_chunked};
use crate::sign::{BodyDigest, SignInput};
use crate::vault::model::Overrides;

/// Hop-by-hop and framing headers, never forwarded either way. `Expect`
/// belongs to this hop too: the broker has already answered it (or buffered
/// the body), and the upstream gets the body at once.
/// Constant names, so neither direction parses a name per call.
const HOP_BY_HOP: [HeaderName; 9] = [
    axum::http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    axum::http::header::TE,
    axum::http::header::TRAILER,
    axum::http::header::TRANSFER_ENCODING,
    axum::http::header::UPGRADE,
    axum::http::header::HOST,
    axum::http::header::EXPECT,
];

/// Whether `name` (lower case) is a forwarding header: what a proxy in front
/// of the upstream says about the client. The agent is the client here and
/// could claim any host or address in them; the broker adds none of its own.
fn is_forwarding(name: &str) -> bool {
    name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
}

/// Headers of the agent's own SigV4 signature, replaced by the real one.
const AGENT_SIGV4: &[&str] = &["x-amz-date", "x-amz-content-sha256", "x-amz-security-token"];

/// Sidecar proxy, at the route's root: forward to the route's upstream with its credential
///
/// Any method; the path is relative to the configured proxy prefix.
#[utoipa::path(
    method(get, put, post, delete, options, head, patch, trace),
    path = "/{route}",
    security(("agent" = []), ("agentBasic" = [])),
    params(("route" = String, Path, description = "The route's name")),
    responses(
        (
            status = 200,
            description = "The upstream's answer: its status, headers and body, streamed",
            content_type = "*/*",
            body = String
        ),
        (status = "default", response = super::ErrorBody),
    )
)]
pub(super) async fn proxy_root(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(route): axum::extract::Path<String>,
    req: Request,
) -> Response {
    handle(app, route, req).await
}

/// Sidecar proxy: forward to the route's upstream with its credential
///
/// Any method; the path after the route is forwarded as sent. The path is
/// relative to the configured proxy prefix.
#[utoipa::path(
    method(get, put, post, delete, options, head, patch, trace),
    path = "/{route}/{rest}",
    security(("agent" = []), ("agentBasic" = [])),
    params(
        ("route" = String, Path, description = "The route's name"),
        ("rest" = String, Path, description = "The upstream path: any number of segments"),
    ),
    responses(
        (
            status = 200,
            description = "The upstream's answer: its status, headers and body, streamed",
            content_type = "*/*",
            body = String
        ),
        (status = "default", response = super::ErrorBody),
    )
)]
pub(super) async fn proxy(
    State(app): State<Arc<AppState>>,
    axum::extract::Path((route, _rest)): axum::extract::Path<(String, String)>,
    req: Request,
) -> Response {
    handle(app, route, req).await
}

pub(super) async fn handle(app: Arc<AppState>, route_name: String, req: Request) -> Response {
    let started = Instant::now();
    let mut scheme = String::from("-");
    let result = forward(&app, &route_name, req, &mut scheme).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    app.metrics.call("proxy", &scheme, &route_name, outcome, started.elapsed());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The raw (still percent-encoded) path after `/<prefix>/<route>`.
fn rest_of_path<'a>(uri: &'a Uri, prefix: &str) -> &'a str {
    let path = uri.path();
    let after = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(prefix.trim_matches('/')))
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path);
    // Skip the route segment (as sent, possibly percent-encoded).
    match after.find('/') {
        Some(i) => &after[i..],
        None => "",
    }
}

async fn forward(
    app: &Arc<AppState>,
    route_name: &str,
    req: Request,
    scheme: &mut String,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let tls = parts.extensions.get::<auth::ArrivedOverTls>().is_some();
    let (agent, source) = auth::agent(app, &parts.headers, tls).await?;
    let route = app.vault.route(&agent.org, route_name).await?.ok_or_else(|| {
        ApiError::new(ErrorCode::RouteNotFound, format!("no route named `{route_name}` (latchkey route list)"))
    })?;
    let ticket = app.broker.open(&Caller::Agent(agent), &route.credential, &Overrides::new(), None).await?;
    *scheme = ticket.scheme().to_string();
    let mut host = None;
    let (input, out_body) = match proxy_input(app, &route, &ticket, parts, body, source, &mut host).await {
        Ok(x) => x,
        Err(e) => {
            // The proxy's own refusals; the call path records its own.
            app.broker.refused(&ticket, host.as_deref(), e.code);
            return Err(e);
        }
    };
    let host = host.unwrap_or_default();
    let delivery = if route.mock { Delivery::Mock } else { Delivery::Upstream };
    let signed = app.broker.sign(&ticket, &input, delivery).await?;
    app.metrics.observe_plugin(ticket.scheme(), signed.plugin_time);
    if let Some(shown) = &signed.shown {
        return Ok(mock_answer(&signed.request.method, shown, ticket.secrets()));
    }
    let signed = signed.request;

    let method = Method::from_bytes(signed.method.as_bytes())
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "method is not valid"))?;
    let mut builder = axum::http::Request::builder().method(method).uri(signed.url);
    let out_headers = builder.headers_mut().expect("fresh builder");
    out_headers.reserve(signed.headers.len() + 1);
    // The values move into the request (no copy).
    for (name, value) in signed.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("header name `{name}` is not valid")))?;
        let value = HeaderValue::try_from(value)
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("header `{name}` has an invalid value")))?;
        out_headers.append(name, value);
    }
    let body = match out_body {
        OutBody::Stream(stream, content_length) => {
            if let Some(len) = content_length {
                out_headers.insert("content-length", len);
            }
            stream
        }
        OutBody::Buffered => {
            out_headers.insert("content-length", HeaderValue::from(input.body.len()));
            Body::from(input.body)
        }
    };
    let request = builder.body(body).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let response = tokio::time::timeout(app.config.upstream_timeout, app.client.get().request(request))
        .await
        .map_err(|_| ApiError::new(ErrorCode::UpstreamTimeout, format!("`{host}` did not answer in time")))?
        .map_err(|e| upstream_error(&host, &e))?;
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

/// A route's upstream base URL as the proxy checks it: its host, and why
/// the address policy refuses it if its host is an address literal the
/// policy refuses.
pub(crate) struct Upstream {
    host: String,
    refusal: Option<String>,
    /// The base as a signing origin (`None`: each URL is parsed in full).
    origin: Option<Arc<crate::sign::Origin>>,
}

/// Upstream base URLs parsed once each (they are few: one per route), so a
/// proxied call does not parse its route's URL again. Keyed by the URL
/// text, so a route changed to another upstream is parsed afresh.
#[derive(Default)]
pub(crate) struct Upstreams(std::sync::RwLock<std::collections::HashMap<String, Arc<Upstream>>>);

/// Upstream URLs kept at most; when full, the map starts again.
const MAX_UPSTREAMS: usize = 10_000;

impl Upstreams {
    fn get(&self, base: &str, policy: &super::net::AddressPolicy) -> Result<Arc<Upstream>, ApiError> {
        if let Some(u) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(base) {
            return Ok(u.clone());
        }
        let parsed = url::Url::parse(base)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("upstream URL: {e}")))?;
        let upstream = Arc::new(Upstream {
            host: parsed.host_str().unwrap_or_default().to_string(),
            refusal: policy.literal_refusal(&parsed),
            origin: crate::sign::Origin::of(base, &parsed).map(Arc::new),
        });
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_UPSTREAMS {
            map.clear();
        }
        map.insert(base.to_string(), upstream.clone());
        Ok(upstream)
    }
}

/// How the request body travels.
enum OutBody {
    /// Streamed as it arrives, with the agent's Content-Length.
    Stream(Body, Option<HeaderValue>),
    /// Buffered in `SignInput::body` (the scheme hashes it).
    Buffered,
}

/// The proxy's half of the call: the upstream URL, the headers to forward,
/// the body as the scheme's declaration needs it.
async fn proxy_input(
    app: &Arc<AppState>,
    route: &crate::vault::agents::Route,
    ticket: &Ticket,
    parts: axum::http::request::Parts,
    body: Body,
    source: TokenSource,
    host_out: &mut Option<String>,
) -> Result<(SignInput, OutBody), ApiError> {
    // The upstream URL: the route's base, then the path exactly as sent.
    // The path and query cannot change the host: the path starts with `/`.
    let rest = rest_of_path(&parts.uri, &app.config.proxy_prefix);
    let mut url = String::with_capacity(route.upstream.len() + rest.len() + parts.uri.query().map_or(1, str::len) + 1);
    url.push_str(&route.upstream);
    url.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let upstream = app.upstreams.get(&route.upstream, &app.config.address_policy)?;
    *host_out = Some(upstream.host.clone());
    if let Some(why) = &upstream.refusal {
        return Err(ApiError::new(ErrorCode::UpstreamAddressRefused, format!("upstream {why}")));
    }
    ticket.check_destination(&upstream.host)?;

    // Headers to forward: not hop-by-hop, not the agent's credentials, not
    // the agent's claims about hosts and addresses.
    let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(name)
            || auth::CREDENTIAL_HEADERS.contains(&n)
            || n == "content-length"
            || is_forwarding(n)
        {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("header `{n}` is not visible ASCII")))?;
        headers.push((n.to_string(), value.to_string()));
    }

    // The body: buffered for schemes that declare they read it, streamed otherwise.
    let content_length = parts.headers.get("content-length").cloned();
    let (digest, bytes, out_body) = if !ticket.reads_body() {
        (BodyDigest::Unknown, Vec::new(), OutBody::Stream(Body::new(body), content_length))
    } else {
        let limited = http_body_util::Limited::new(body, app.config.max_body);
        let collected = limited.collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "scheme `{}` signs the body, and it is over the {} byte limit",
                        ticket.scheme(),
                        app.config.max_body
                    ),
                )
            } else {
                ApiError::new(ErrorCode::InvalidRequest, format!("reading the request body: {e}"))
            }
        })?;
        let mut bytes = collected.to_bytes().to_vec();
        // A streaming upload is re-framed as the plain payload it carries,
        // so the scheme signs (and the upstream stores) exactly those bytes.
        if let Some(plain) = aws_chunked::decode_request(&mut headers, &bytes)? {
            bytes = plain;
        }
        (BodyDigest::Compute, bytes, OutBody::Buffered)
    };
    if source == TokenSource::SigV4 {
        // The agent's own signature headers (made with its throwaway key).
        headers.retain(|(n, _)| !AGENT_SIGV4.contains(&n.as_str()));
    }
    let input = SignInput {
        method: parts.method.as_str().to_string(),
        url,
        headers,
        body: bytes,
        at: None,
        body_digest: digest,
        // `url` is the route's base followed by a path, whose origin was parsed once.
        origin: upstream.origin.clone(),
    };
    Ok((input, out_body))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    use axum::http::header;
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .filter(|h| *h != header::HOST)
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP.iter().filter(|h| **h != header::HOST) {
        headers.remove(h);
    }
}

/// An upstream client error with every cause (`client error (Connect):
/// invalid peer certificate: UnknownIssuer`), as the proxy and the provider
/// check report it.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = format!("{e}");
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

pub(super) fn upstream_error(host: &str, e: &hyper_util::client::legacy::Error) -> ApiError {
    if let Some(refused) = super::net::AddressRefused::find(e) {
        return ApiError::new(ErrorCode::UpstreamAddressRefused, refused.to_string());
    }
    // The body being streamed from the agent failed (a malformed chunk, a
    // connection cut mid-body): the agent's request is at fault, not the
    // upstream, and the broker's connection to the agent closes.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user) {
            return ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the request body could not be read: {}", error_chain(e)),
            );
        }
        cause = c.source();
    }
    ApiError::new(ErrorCode::UpstreamUnreachable, format!("could not reach `{host}`: {}", error_chain(e)))
}

/// What the mock upstream answers: the request as it would have been sent,
/// with every secret the plugin placed replaced by `[redacted]` before it was
/// encoded (query parameters and `base64` values included; all of a granted
/// plugin's values), and any secret value left anywhere redacted too.
fn mock_answer(
    method: &str,
    (url, headers): &(String, Vec<(String, String)>),
    secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
) -> Response {
    let redact = |text: &str| -> String {
        let mut out = text.to_string();
        for s in secrets.values().filter(|s| !s.expose().is_empty()) {
            out = out.replace(s.expose(), "[redacted]");
        }
        out
    };
    let headers: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.clone(), redact(v))).collect();
    let body = serde_json::json!({
        "mock": true,
        "would_send": {"method": method, "url": redact(url), "headers": headers},
    });
    (StatusCode::OK, [("x-latchkey-mock", "1")], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_from_answers() {
        let mut headers = HeaderMap::new();
        for name in HOP_BY_HOP {
            headers.insert(name, HeaderValue::from_static("x"));
        }
        headers.append("connection", HeaderValue::from_static("x-hop, host"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // `host` is not a response header the broker strips; the rest of
        // the list and what `Connection` names are.
        assert_eq!(left, ["host", "x-kept"]);
    }
}
