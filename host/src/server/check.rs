//! Provider checks (`latchkey credential check NAME`): probe the upstream
//! with a cheap call through the credential's route and report what the
//! provider thinks of the key: `valid` (2xx), `invalid` (401), `forbidden`
//! (403, e.g. no access to a model), `quota` (402 or 429), `unreachable`
//! (no answer), or `error` (any other status). The state is stored with the
//! credential and shown by `credential list`. A route in mock mode is
//! answered by the mock (`mock`), never by the provider. The upstream is
//! reached through the broker's own client, so the proxy's address policy
//! (no private or loopback address without `--allow-upstream-network`) and
//! TLS roots apply.

use crate::error::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method};

use super::{ApiError, AppState};
use crate::broker::{Caller, Delivery};
use crate::sign::{BodyDigest, SignInput};
use crate::vault::model::Overrides;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// `valid`, `invalid`, `forbidden`, `quota`, `unreachable`, `error`, or
    /// `mock` for a route in mock mode.
    pub state: &'static str,
    /// The upstream status, when there was one.
    pub status: Option<u16>,
    /// The URL probed.
    pub url: String,
    /// One line for the operator.
    pub detail: String,
}

/// The state for an upstream status.
pub fn classify(status: u16) -> &'static str {
    match status {
        200..=299 => "valid",
        401 => "invalid",
        403 => "forbidden",
        402 | 429 => "quota",
        _ => "error",
    }
}

/// Probe credential `name` of `org` through the first route that uses it
/// (its `check_path`, or `/`), and store the result.
pub async fn check_credential(app: &Arc<AppState>, org: &str, name: &str) -> Result<CheckOutcome, ApiError> {
    let routes = app.vault.list_routes(Some(org)).await?;
    let mut using: Vec<_> = routes.into_iter().filter(|r| r.credential == name).collect();
    using.sort_by_key(|r| r.check_path.is_none());
    let route = using.into_iter().next().ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "no route uses credential `{name}`, so there is no upstream to probe; add one with \
                 `latchkey route add NAME --upstream URL --credential {name} --check-path /v1/models`"
            ),
        )
    })?;
    let url = format!("{}{}", route.upstream, route.check_path.as_deref().unwrap_or("/"));
    // The same address rule as the proxy, for literal addresses (names are
    // checked after resolution by the upstream client).
    if let Some(why) = url::Url::parse(&url).ok().and_then(|u| app.config.address_policy.literal_refusal(&u)) {
        return Err(ApiError::new(ErrorCode::UpstreamAddressRefused, format!("upstream {why}")));
    }
    let input = SignInput {
        method: "GET".into(),
        url: url.clone(),
        headers: Vec::new(),
        body: Vec::new(),
        at: None,
        body_digest: BodyDigest::Compute,
        origin: None,
    };
    let caller = Caller::Operator { org: org.to_string(), actor: "check".into() };
    let ticket = app.broker.open(&caller, name, &Overrides::new(), None).await?;
    if route.mock {
        // A mock route never reaches its provider, and neither does its
        // check: the scheme applies the credential (so a broken one still
        // fails here), and the mock answers. Nothing is recorded: the
        // provider gave no verdict.
        let signed = app.broker.sign(&ticket, &input, Delivery::Mock).await?;
        return Ok(CheckOutcome {
            state: "mock",
            status: None,
            url: signed.request.url.clone(),
            detail: format!(
                "route `{}` is in mock mode: the credential was applied and the built-in mock answered; the \
                 provider was not asked (the same route without `--mock` is checked for real)",
                route.name
            ),
        });
    }
    let signed = app.broker.sign(&ticket, &input, Delivery::Upstream).await?;
    app.metrics.observe_plugin(ticket.scheme(), signed.plugin_time);
    let signed = signed.request;
    let mut builder = axum::http::Request::builder().method(Method::GET).uri(signed.url.as_str());
    for (n, v) in &signed.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
            builder = builder.header(n, v);
        }
    }
    let request = builder.body(Body::empty()).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let outcome = match tokio::time::timeout(Duration::from_secs(15), app.client.get().request(request)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let state = classify(status);
            let detail = match state {
                "valid" => "the provider accepted the credential".to_string(),
                "invalid" => "the provider rejected the key (401): rotate it with `latchkey credential rotate`".into(),
                "forbidden" => {
                    "the key is valid but not allowed this call (403): check its model or project access".into()
                }
                "quota" => format!("the provider reports a quota or billing limit ({status})"),
                _ => format!("the provider answered {status}"),
            };
            CheckOutcome { state, status: Some(status), url: signed.url.clone(), detail }
        }
        Ok(Err(e)) => {
            // The proxy's rule, the proxy's code: an address the policy
            // refuses is not an unreachable provider.
            if let Some(refused) = super::net::AddressRefused::find(&e) {
                return Err(ApiError::new(ErrorCode::UpstreamAddressRefused, refused.to_string()));
            }
            let detail = super::proxy::error_chain(&e);
            CheckOutcome { state: "unreachable", status: None, url: signed.url.clone(), detail }
        }
        Err(_) => CheckOutcome {
            state: "unreachable",
            status: None,
            url: signed.url.clone(),
            detail: "no answer within 15 s".into(),
        },
    };
    app.vault.record_check(org, name, outcome.state).await?;
    Ok(outcome)
}
