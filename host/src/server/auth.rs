//! Agent identity on both surfaces.
//!
//! An agent presents its token (`lk_agt_…`) in one of the places SDKs put an
//! API key, so pointing an SDK at Latchkey with the agent token as its "API
//! key" is all it takes:
//!
//! - `Authorization: Bearer <token>` (OpenAI and most SDKs);
//! - `X-Api-Key: <token>` (Anthropic), the raw token with no prefix;
//! - the access key id of an AWS SigV4 `Authorization` header
//!   (`Credential=<token>/…`), so boto3 configured with the agent token as
//!   its access key id authenticates (the signature itself is discarded: the
//!   broker re-signs with the real credential).
//!
//! Two more kinds of identity share the `Authorization` header:
//!
//! - `Authorization: Bearer <JWT>` from an identity provider the operator
//!   trusts (`latchkey idp add`), verified by the `jwt` plugin against the
//!   provider's JWKS ([`super::identity`]) and mapped to the agent bound to
//!   its subject (`latchkey agent bind-jwt`);
//! - `Authorization: Basic base64(agent-name:agent-token)`, for clients that
//!   can only do Basic. Basic puts the token on the wire in a reversible
//!   form, so it is refused on a plain-HTTP listener unless the operator
//!   allows it (`--allow-basic-over-http`).
//!
//! Prefix confusion is refused with a message that says what was wrong
//! (`X-Api-Key: Bearer …`, `Authorization: <token>` without `Bearer`), and a
//! whitespace-damaged or truncated token is reported as such. Logs show a
//! redacted prefix only.

use crate::error::ErrorCode;
use std::sync::Arc;

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::vault::Vault;
use crate::vault::agents::{AGENT_TOKEN_PREFIX, Agent, check_token_shape, redact_token};

/// The headers an agent token may arrive in; the proxy removes them all
/// before the credential is applied.
pub const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization", "x-amz-security-token"];

/// Where the token came from, to strip it and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer`.
    Bearer,
    /// `X-Api-Key`.
    ApiKeyHeader,
    /// A SigV4 `Authorization` header's access key id.
    SigV4,
    /// `Authorization: Bearer <JWT>`.
    Jwt,
    /// `Authorization: Basic`.
    Basic,
}

/// Marks a request that arrived on a TLS listener (set by the server).
#[derive(Debug, Clone, Copy)]
pub struct ArrivedOverTls;

/// Whether `presented` is the admin token whose SHA-256 is `expected`
/// (compared as digests, in constant time; `benches/timing.rs` measures it).
pub fn admin_token_matches(expected: &[u8], presented: &str) -> bool {
    let got = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    bool::from(subtle::ConstantTimeEq::ct_eq(got.as_ref(), expected))
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidAgentToken, message)
}

/// Find the agent token in the request headers.
pub fn presented_token(headers: &HeaderMap) -> Result<(String, TokenSource), ApiError> {
    if let Some(v) = headers.get("x-api-key") {
        let v = v.to_str().map_err(|_| unauthorized("X-Api-Key is not ASCII text"))?;
        if v.trim_start().to_ascii_lowercase().starts_with("bearer ") {
            return Err(unauthorized("X-Api-Key takes the raw agent token, without a `Bearer ` prefix"));
        }
        return Ok((v.to_string(), TokenSource::ApiKeyHeader));
    }
    if let Some(v) = headers.get("authorization") {
        let v = v.to_str().map_err(|_| unauthorized("Authorization is not ASCII text"))?;
        if let Some(rest) = v.strip_prefix("AWS4-HMAC-SHA256 ") {
            let id = rest
                .split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("Credential="))
                .and_then(|c| c.split('/').next())
                .ok_or_else(|| unauthorized("a SigV4 Authorization header without Credential="))?;
            return Ok((id.to_string(), TokenSource::SigV4));
        }
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok((token.to_string(), TokenSource::Basic));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            if v.starts_with(AGENT_TOKEN_PREFIX) {
                return Err(unauthorized("Authorization needs `Bearer ` before the agent token"));
            }
            return Err(unauthorized(format!(
                "Authorization scheme `{}` is not accepted; send `Bearer <agent token>`",
                crate::plugin::sanitize_for_log(scheme, 20)
            )));
        }
        if super::identity::looks_like_jwt(token) {
            return Ok((token.to_string(), TokenSource::Jwt));
        }
        return Ok((token.to_string(), TokenSource::Bearer));
    }
    Err(unauthorized(
        "no agent token: send it as `Authorization: Bearer lk_agt_…` or `X-Api-Key: lk_agt_…` (set it as your SDK's API key)",
    ))
}

/// Authenticate the calling agent. `tls` says whether the request came in
/// on a TLS listener.
pub async fn agent(app: &Arc<AppState>, headers: &HeaderMap, tls: bool) -> Result<(Agent, TokenSource), ApiError> {
    let result = authenticate(app, headers, tls).await;
    if let Err(e) = &result {
        let kind = match presented_token(headers) {
            Ok((_, TokenSource::Jwt)) => "jwt",
            Ok((_, TokenSource::Basic)) => "basic",
            _ => "token",
        };
        app.metrics.auth_refused(kind, e.code);
    }
    result
}

async fn authenticate(app: &Arc<AppState>, headers: &HeaderMap, tls: bool) -> Result<(Agent, TokenSource), ApiError> {
    let (presented, source) = presented_token(headers)?;
    let (token, basic_user) = match source {
        TokenSource::Jwt => return Ok((super::identity::authenticate(app, &presented).await?, source)),
        TokenSource::Basic => {
            if !tls && !app.config.allow_basic_over_http {
                return Err(ApiError::new(
                    ErrorCode::InsecureTransport,
                    "Basic credentials are refused over plain HTTP, where anyone on the path can read them; \
                     connect over TLS (latchkey serve --tls-cert/--tls-key), use `Authorization: Bearer`, or start \
                     the broker with --allow-basic-over-http",
                ));
            }
            let (user, token) = basic_credentials(&presented)?;
            (token, Some(user))
        }
        _ => (presented, None),
    };
    let vault: &Vault = &app.vault;
    check_token_shape(&token, AGENT_TOKEN_PREFIX, "agent token").map_err(|e| unauthorized(e.to_string()))?;
    match vault.authenticate_agent(&token).await? {
        // With Basic, the user name must be the agent's: a token alone
        // authenticates, but a mismatched name is a configuration mistake
        // worth reporting rather than ignoring.
        Some(agent) if basic_user.as_ref().is_some_and(|u| *u != agent.name) => {
            Err(unauthorized("the Basic user name is not the name of the agent this token belongs to"))
        }
        Some(agent) => Ok((agent, source)),
        None => {
            tracing::warn!(token = %redact_token(&token), "unknown or disabled agent token");
            Err(unauthorized(format!("agent token {} is not known or its agent is disabled", redact_token(&token))))
        }
    }
}

/// Decode `base64(user:password)`.
fn basic_credentials(value: &str) -> Result<(String, String), ApiError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| unauthorized("the Basic credentials are not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| unauthorized("the Basic credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| unauthorized("Basic credentials are `agent-name:agent-token`; the `:` is missing"))?;
    Ok((user.to_string(), password.to_string()))
}

/// Refuse unless `agent` is attached to the credential.
pub fn check_attached(agent: &Agent, credential: &crate::vault::model::Credential) -> Result<(), ApiError> {
    if credential.attachments.agents.contains(&agent.name) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::CredentialNotAttached,
            format!(
                "agent `{}` may not use credential `{}`: it is not attached (latchkey credential attach {} --agent {})",
                agent.name, credential.name, credential.name, agent.name
            ),
        ))
    }
}
