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
//! Prefix confusion is refused with a message that says what was wrong
//! (`X-Api-Key: Bearer …`, `Authorization: <token>` without `Bearer`), and a
//! whitespace-damaged or truncated token is reported as such. Logs show a
//! redacted prefix only.

use axum::http::HeaderMap;

use super::ApiError;
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
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new("invalid_agent_token", message)
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
        if !scheme.eq_ignore_ascii_case("bearer") {
            if v.starts_with(AGENT_TOKEN_PREFIX) {
                return Err(unauthorized("Authorization needs `Bearer ` before the agent token"));
            }
            return Err(unauthorized(format!(
                "Authorization scheme `{}` is not accepted; send `Bearer <agent token>`",
                crate::plugin::sanitize_for_log(scheme, 20)
            )));
        }
        return Ok((token.to_string(), TokenSource::Bearer));
    }
    Err(unauthorized(
        "no agent token: send it as `Authorization: Bearer lk_agt_…` or `X-Api-Key: lk_agt_…` (set it as your SDK's API key)",
    ))
}

/// Authenticate the calling agent.
pub async fn agent(vault: &Vault, headers: &HeaderMap) -> Result<(Agent, TokenSource), ApiError> {
    let (token, source) = presented_token(headers)?;
    check_token_shape(&token, AGENT_TOKEN_PREFIX, "agent token").map_err(unauthorized)?;
    match vault.authenticate_agent(&token).await? {
        Some(agent) => Ok((agent, source)),
        None => {
            tracing::warn!(token = %redact_token(&token), "unknown or disabled agent token");
            Err(unauthorized(format!("agent token {} is not known or its agent is disabled", redact_token(&token))))
        }
    }
}

/// Refuse unless `agent` is attached to the credential.
pub fn check_attached(agent: &Agent, credential: &crate::vault::model::Credential) -> Result<(), ApiError> {
    if credential.attachments.agents.contains(&agent.name) {
        Ok(())
    } else {
        Err(ApiError::new(
            "credential_not_attached",
            format!(
                "agent `{}` may not use credential `{}`: it is not attached (latchkey credential attach {} --agent {})",
                agent.name, credential.name, credential.name, agent.name
            ),
        ))
    }
}
