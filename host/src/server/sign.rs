//! `POST /v1/sign`: an agent names a credential attached to it and gets back
//! the signed request, which it sends itself.
//!
//! Only for schemes whose output does not carry the secret: a signature
//! (SigV4, ACS3, TC3) or a short-lived token (JWT) may go back to the agent;
//! a request with the API key, a Basic password or a custom secret header in
//! it would hand the agent the very key it must never hold, so it is refused
//! with `secret_in_output` (use a proxy route for those credentials). The
//! check is on the output itself (any secret value found verbatim, other than
//! key ids and session tokens, which signing protocols send by design) and
//! on the scheme (a scheme granted raw secrets may encode them).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use base64::Engine as _;
use serde::Deserialize;

use super::{ApiError, AppState, auth};
use crate::sign::{self, BodyDigest, SignInput};
use crate::vault::UseEvent;
use crate::vault::model::Overrides;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    credential: String,
    request: RequestBody,
    at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    body_base64: Option<String>,
    body_sha256: Option<String>,
}

pub(super) async fn sign(
    State(app): State<Arc<AppState>>,
    tls: Option<axum::Extension<auth::ArrivedOverTls>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (agent, _) = auth::agent(&app, &headers, tls.is_some()).await?;
    let body: SignBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new("invalid_request", format!("the body is not a sign request: {e}")))?;
    let name = body.credential;
    let host = url::Url::parse(&body.request.url).ok().and_then(|u| u.host_str().map(str::to_string));
    let record = |outcome: &str, layer| {
        app.vault.record_use(UseEvent {
            org: agent.org.clone(),
            credential: name.clone(),
            agent: Some(agent.name.clone()),
            destination: host.clone(),
            outcome: outcome.to_string(),
            layer,
        });
    };
    let mut layer = None;
    let result = async {
        let credential = app
            .vault
            .credential(&agent.org, &name)
            .await?
            .ok_or_else(|| ApiError::new("credential_not_found", format!("no credential named `{name}`")))?;
        auth::check_attached(&agent, &credential)?;
        let plugin = app.vault.runtime().get(&credential.scheme)?;
        if plugin.reads_secrets {
            return Err(secret_in_output(&name, &credential.scheme));
        }
        let (raw_body, digest) = match (&body.request.body_base64, &body.request.body_sha256) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new("invalid_request", "give body_base64 or body_sha256, not both"));
            }
            (Some(b64), None) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ApiError::new("invalid_request", format!("body_base64: {e}")))?;
                if bytes.len() > app.config.max_body {
                    return Err(ApiError::new(
                        "payload_too_large",
                        format!(
                            "the body is {} bytes; the limit is {} (send body_sha256 instead)",
                            bytes.len(),
                            app.config.max_body
                        ),
                    ));
                }
                (bytes, BodyDigest::Compute)
            }
            (None, Some(hex)) => (Vec::new(), BodyDigest::Given(hex.clone())),
            (None, None) => (Vec::new(), BodyDigest::Compute),
        };
        let at = match &body.at {
            None => None,
            Some(t) => Some(
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| ApiError::new("invalid_request", format!("`at` is not an RFC 3339 time: {e}")))?,
            ),
        };
        let input = SignInput {
            method: body.request.method.clone(),
            url: body.request.url.clone(),
            headers: body.request.headers.clone(),
            body: raw_body,
            at,
            body_digest: digest,
        };
        let prepared = sign::prepare(&input)?;
        let resolution = app.vault.resolve(&agent.org, &name, &Overrides::new()).await?;
        layer = Some(resolution.resolved.layer);
        resolution.check_destination(host.as_deref().unwrap_or_default())?;
        let signed = app.apply_credential(&name, &credential, &plugin, &resolution, &prepared)?;
        // Key ids and session tokens travel in every signed request by
        // protocol and sign nothing without the key; any other secret value
        // in the output means the agent would get the key itself.
        let leaked = resolution
            .resolved
            .secrets
            .iter()
            .filter(|(field, _)| !WIRE_FIELDS.contains(&field.as_str()))
            .map(|(_, s)| s.expose())
            .filter(|s| s.len() >= 4)
            .any(|s| signed.url.contains(s) || signed.headers.iter().any(|(_, v)| v.contains(s)));
        if leaked {
            return Err(secret_in_output(&name, &credential.scheme));
        }
        Ok::<_, ApiError>((signed, credential.scheme.clone()))
    }
    .await;
    match result {
        Ok((signed, scheme)) => {
            record("ok", layer);
            app.metrics.call("sign", &scheme, "-", "ok", started.elapsed());
            Ok(Json(signed).into_response())
        }
        Err(error) => {
            record(error.code, layer);
            app.metrics.call("sign", "-", "-", error.code, started.elapsed());
            Err(error)
        }
    }
}

/// Secret fields that signing protocols put on the wire themselves: key ids
/// and session tokens (useless without the signing key).
const WIRE_FIELDS: &[&str] = &["access_key_id", "secret_id", "session_token", "security_token", "token"];

fn secret_in_output(name: &str, scheme: &str) -> ApiError {
    ApiError::new(
        "secret_in_output",
        format!(
            "credential `{name}` uses scheme `{scheme}`, which puts the secret itself into the request; \
             /v1/sign would hand it to the agent. Send the call through a proxy route instead"
        ),
    )
}
