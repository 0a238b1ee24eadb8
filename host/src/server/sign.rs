//! `POST /v1/sign`: an agent names a credential attached to it and gets back
//! the signed request, which it sends itself. The surface adapts JSON to the
//! one call path ([`crate::broker`]), which refuses any answer that would
//! hand the agent a secret (`secret_in_output`): by the scheme's declaration
//! (a `wire` field such as an API key or a Basic password), by its grant of
//! raw secrets, and by a scan of what the plugin produced.

use crate::error::ErrorCode;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use base64::Engine as _;
use serde::Deserialize;

use super::{ApiError, AppState, auth};
use crate::broker::{Caller, Delivery, aws_chunked};
use crate::sign::{BodyDigest, SignInput};
use crate::vault::model::Overrides;

/// A request to sign with a credential attached to the calling agent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignBody {
    /// The credential's name.
    credential: String,
    /// The request to sign.
    request: RequestBody,
    /// The signing time (RFC 3339); now when absent.
    #[schema(format = DateTime)]
    at: Option<String>,
}

/// The outgoing request, as the agent will send it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    /// The method.
    method: String,
    /// The full URL.
    url: String,
    /// Headers in order, as `[name, value]` pairs.
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// The body, standard base64; or give `body_sha256`.
    body_base64: Option<String>,
    /// The body's SHA-256, lower hex, for a body the broker need not see.
    body_sha256: Option<String>,
}

/// Sign a request with a credential attached to the calling agent
///
/// The answer is the signed request, which the agent sends itself. An answer
/// that would hand the agent a secret is refused (`secret_in_output`).
#[utoipa::path(
    post,
    path = "/v1/sign",
    tag = "agent",
    security(("agent" = []), ("agentBasic" = [])),
    request_body = SignBody,
    responses(
        (status = 200, description = "The signed request", body = crate::sign::SignedRequest),
        (status = "default", response = super::ErrorBody),
    )
)]
pub(super) async fn sign(
    State(app): State<Arc<AppState>>,
    tls: Option<axum::Extension<auth::ArrivedOverTls>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (agent, _) = auth::agent(&app, &headers, tls.is_some()).await?;
    let body = parse(&body)?;
    let ticket = match app.broker.open(&Caller::Agent(agent), &body.credential, &Overrides::new(), None).await {
        Ok(t) => t,
        Err(e) => {
            app.metrics.call("sign", "-", "-", e.code.as_str(), started.elapsed());
            return Err(e.into());
        }
    };
    let host = url::Url::parse(&body.request.url).ok().and_then(|u| u.host_str().map(str::to_string));
    let input = match input(&app, &ticket, body) {
        Ok(i) => i,
        Err(e) => {
            app.broker.refused(&ticket, host.as_deref(), e.code);
            app.metrics.call("sign", ticket.scheme(), "-", e.code.as_str(), started.elapsed());
            return Err(e);
        }
    };
    match app.broker.sign(&ticket, &input, Delivery::Caller).await {
        Ok(signed) => {
            app.metrics.observe_plugin(ticket.scheme(), signed.plugin_time);
            app.metrics.call("sign", ticket.scheme(), "-", "ok", started.elapsed());
            Ok(Json(signed.request).into_response())
        }
        Err(e) => {
            app.metrics.call("sign", ticket.scheme(), "-", e.code.as_str(), started.elapsed());
            Err(e.into())
        }
    }
}

/// The request body as a sign request.
fn parse(body: &[u8]) -> Result<SignBody, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("the body is not a sign request: {e}")))
}

/// The sign request as the call path's input.
fn input(app: &AppState, ticket: &crate::broker::Ticket, body: SignBody) -> Result<SignInput, ApiError> {
    to_input(body, ticket.reads_body(), ticket.scheme(), app.config.max_body)
}

/// [`input`] without the server: `reads_body` and `scheme` are the
/// credential's scheme's, `max_body` the broker's body limit.
fn to_input(body: SignBody, reads_body: bool, scheme: &str, max_body: usize) -> Result<SignInput, ApiError> {
    let request = body.request;
    // The agent sends the body itself, so the broker cannot re-frame an
    // aws-chunked upload or re-sign its chunk signatures for it.
    if reads_body && aws_chunked::is_streaming(&request.headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedPayload,
            format!(
                "the request announces a streaming (aws-chunked / STREAMING-*) payload, which /v1/sign cannot sign \
                 for scheme `{scheme}`: send the decoded body (body_base64 or body_sha256, no aws-chunked encoding), \
                 or send the upload through a proxy route, which decodes it"
            ),
        ));
    }
    let (raw_body, digest) = match (request.body_base64, request.body_sha256) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "give body_base64 or body_sha256, not both"));
        }
        (Some(b64), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("body_base64: {e}")))?;
            if bytes.len() > max_body {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is {} bytes; the limit is {} (send body_sha256 instead)", bytes.len(), max_body),
                ));
            }
            (bytes, BodyDigest::Compute)
        }
        (None, Some(hex)) => (Vec::new(), BodyDigest::Given(hex)),
        (None, None) => (Vec::new(), BodyDigest::Compute),
    };
    let at = match &body.at {
        None => None,
        Some(t) => Some(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("`at` is not an RFC 3339 time: {e}")))?,
        ),
    };
    Ok(SignInput {
        method: request.method,
        url: request.url,
        headers: request.headers,
        body: raw_body,
        at,
        body_digest: digest,
        origin: None,
    })
}

/// A `/v1/sign` body as the handler reads it, for the fuzz targets
/// (`fuzz/`): parsed, then turned into the call path's input for a scheme
/// that reads the body (or not), under a `max_body` limit; the credential's
/// name comes back beside it.
#[doc(hidden)]
pub fn fuzz_body(data: &[u8], reads_body: bool, max_body: usize) -> Result<(String, SignInput), ApiError> {
    let body = parse(data)?;
    let credential = body.credential.clone();
    Ok((credential, to_input(body, reads_body, "fuzz", max_body)?))
}
