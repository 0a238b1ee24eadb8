//! Signing one request with a scheme: input checks, the plugin call, and the
//! outgoing request. Offline `latchkey sign` calls it directly; every
//! vault-backed surface reaches it through the one call path in
//! [`crate::broker`].

use crate::error::ErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;

use ring::digest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::plugin::edits::{self, Header, Value};
use crate::plugin::{CallCredential, Datetime, Plugin, PluginError, Runtime};
use crate::secret::Secret;
use crate::vault::model::check_secret_fields;

/// Errors of signing, each with a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// A secret field is missing or not declared by the scheme.
    #[error("{0}")]
    Secret(String, ErrorCode),
    /// The plugin runtime or the scheme refused.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl SignError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SignError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            SignError::Secret(_, code) => *code,
            SignError::Plugin(e) => e.code(),
        }
    }
}

/// A request to sign.
#[derive(Debug, Clone, Default)]
pub struct SignInput {
    /// The HTTP method.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The signing time.
    pub at: Option<OffsetDateTime>,
    /// How the scheme learns the body's digest.
    pub body_digest: BodyDigest,
}

/// The body digest a scheme gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BodyDigest {
    /// SHA-256 of `body` (the default).
    #[default]
    Compute,
    /// This hex SHA-256, given by the caller (the body itself is not sent to `sign`).
    Given(String),
    /// Unknown: the body streams and the scheme does not sign it.
    Unknown,
}

/// The outgoing request after the scheme was applied, as `latchkey sign`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedRequest {
    /// The method.
    pub method: String,
    /// The URL, with any query parameters the scheme added.
    pub url: String,
    /// Original headers in order, then added ones.
    pub headers: Vec<(String, String)>,
    /// Whether a `wire` secret was spliced into a header or parameter
    /// (api-key, basic, custom-headers): such a request must only go
    /// upstream, never back to an agent.
    #[serde(skip)]
    pub carries_secret: bool,
}

/// A checked request, ready for a plugin.
pub struct Prepared {
    /// The plugin's view, which also holds the URL (fragment dropped) and
    /// the headers as they will be sent before the plugin's edits.
    request: crate::plugin::Request,
    host: String,
    now: Datetime,
}

/// The largest body `sign` hashes.
pub const MAX_BODY: usize = 64 << 20;

/// Check the request and turn it into the plugin's view of it.
pub fn prepare(input: &SignInput) -> Result<Prepared, SignError> {
    let bad = |m: String| SignError::InvalidRequest(m);
    if !edits::is_token(&input.method) {
        return Err(bad(format!("method {:?} is not a valid HTTP method", input.method)));
    }
    // The URL is sent exactly as signed, so it must already be in wire form:
    // a raw space or non-ASCII byte would be encoded by some clients and not
    // by others, and the signature would no longer match what is sent.
    if let Some(i) = input.url.bytes().position(|b| b <= 0x20 || b >= 0x7f) {
        return Err(bad(format!("URL has a raw space, control or non-ASCII character at byte {i}; percent-encode it")));
    }
    let parsed = url::Url::parse(&input.url).map_err(|e| bad(format!("malformed URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!("URL scheme `{}` is not http or https", parsed.scheme())));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("URL must not contain user information (`user@host`)".into()));
    }
    let Some(host) = parsed.host_str() else { return Err(bad("URL has no host".into())) };
    let host_name = host.to_string();
    // Keep the URL as written (S3 signs `//` and `/./` literally); only the
    // fragment goes, since it is never sent.
    let url = input.url.split('#').next().unwrap_or_default().to_string();
    let authority = || match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    for (name, value) in &input.headers {
        if !edits::is_token(name) {
            return Err(bad(format!("header name {name:?} is not a valid RFC 9110 token")));
        }
        if !edits::is_field_value(value) {
            return Err(bad(format!("header `{name}` has a value with CR, LF, NUL or another control character")));
        }
        if name.eq_ignore_ascii_case("host") {
            let authority = authority();
            if !value.eq_ignore_ascii_case(&authority) {
                return Err(bad(format!("Host header `{value}` does not match the URL's authority `{authority}`")));
            }
        }
    }
    if input.body.len() > MAX_BODY {
        return Err(bad(format!("body of {} bytes is over the {MAX_BODY} byte limit", input.body.len())));
    }
    let at = input.at.unwrap_or_else(OffsetDateTime::now_utc);
    let now = Datetime { seconds: at.unix_timestamp(), nanoseconds: at.nanosecond() };
    let request = crate::plugin::Request {
        method: input.method.clone(),
        url,
        headers: input.headers.clone(),
        body_sha256: match &input.body_digest {
            BodyDigest::Compute => Some(hex::encode(digest::digest(&digest::SHA256, &input.body))),
            BodyDigest::Given(hex) => {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("body_sha256 must be 64 hex digits".into()));
                }
                Some(hex.to_ascii_lowercase())
            }
            BodyDigest::Unknown => None,
        },
    };
    Ok(Prepared { request, host: host_name, now })
}

/// Check secret fields against what the scheme declares (the vault's rule,
/// [`check_secret_fields`]), then with the scheme.
pub fn check_credential(
    runtime: &Runtime,
    plugin: &Plugin,
    config: &[(String, String)],
    secrets: &BTreeMap<String, Secret>,
) -> Result<(), SignError> {
    runtime.validate_config(plugin, config)?;
    let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
    check_secret_fields(&crate::plugin::scheme_fields(&plugin.info), &names).map_err(|e| {
        // Offline signing has no other layer to fall back on, so a missing
        // field is the call's missing key, as a scheme would report it.
        let code = match e.code() {
            ErrorCode::MissingSecretField => ErrorCode::ProviderKeyMissing,
            code => code,
        };
        SignError::Secret(e.to_string(), code)
    })?;
    for (field, value) in secrets {
        runtime.validate_secret(plugin, config, field, value)?;
    }
    Ok(())
}

/// Apply the credential's scheme to a prepared request.
pub fn sign(
    runtime: &Runtime,
    plugin: &Plugin,
    cred: &Arc<CallCredential>,
    prepared: &Prepared,
) -> Result<SignedRequest, SignError> {
    let checked = runtime.apply(plugin, cred, prepared.now, &prepared.request)?;
    Ok(finish(prepared, checked))
}

/// Apply checked edits to a prepared request: the outgoing request.
pub fn finish(prepared: &Prepared, checked: Vec<edits::Checked>) -> SignedRequest {
    let carries_secret = checked.iter().any(|e| edit_value(e).is_some_and(|(_, v)| v.sensitive));
    let (mut url, mut headers) = prepared.url_and_headers();
    edits::apply(&mut url, &mut headers, checked);
    SignedRequest {
        method: prepared.request.method.clone(),
        url,
        headers: headers.into_iter().map(|h| (h.name, h.value.text)).collect(),
        carries_secret,
    }
}

/// The name and value an edit writes, if it writes one.
fn edit_value(e: &edits::Checked) -> Option<(&str, &Value)> {
    match e {
        edits::Checked::Set(n, v) | edits::Checked::Append(n, v) | edits::Checked::Query(n, v) => Some((n, v)),
        edits::Checked::Remove(_) => None,
    }
}

/// What the plugin produced (header names and values, query names and
/// values), identifier splices masked: what `broker::leak` scans.
pub fn produced(checked: &[edits::Checked]) -> Vec<String> {
    checked.iter().filter_map(edit_value).flat_map(|(n, v)| [n.to_string(), v.scan.clone()]).collect()
}

/// The URL and headers as a mock answer shows them: every `wire` or
/// host-only secret the plugin placed (query parameters included) replaced
/// by `[redacted]` before encoding.
pub fn shown(prepared: &Prepared, checked: &[edits::Checked]) -> (String, Vec<(String, String)>) {
    let show = |v: &Value| Value::plain(v.shown.clone());
    let shown_edits = checked
        .iter()
        .map(|e| match e {
            edits::Checked::Set(n, v) => edits::Checked::Set(n.clone(), show(v)),
            edits::Checked::Append(n, v) => edits::Checked::Append(n.clone(), show(v)),
            edits::Checked::Query(n, v) => edits::Checked::Query(n.clone(), show(v)),
            edits::Checked::Remove(n) => edits::Checked::Remove(n.clone()),
        })
        .collect();
    let (mut url, mut headers) = prepared.url_and_headers();
    edits::apply(&mut url, &mut headers, shown_edits);
    // The marker reads as itself, not percent-encoded, in a query.
    (url.replace("%5Bredacted%5D", "[redacted]"), headers.into_iter().map(|h| (h.name, h.value.text)).collect())
}

impl Prepared {
    /// The URL and headers as sent, for the edits to apply to: made from
    /// the plugin's view, which holds them once.
    fn url_and_headers(&self) -> (String, Vec<Header>) {
        let headers = self
            .request
            .headers
            .iter()
            .map(|(n, v)| Header { name: n.clone(), value: Value::plain(v.clone()) })
            .collect();
        (self.request.url.clone(), headers)
    }

    /// The plugin's view of the request.
    pub fn request(&self) -> &crate::plugin::Request {
        &self.request
    }

    /// The signing time.
    pub fn now(&self) -> Datetime {
        self.now
    }

    /// The URL's host, as the destination check compares it.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The plugin's account of what it signs (`--explain`).
pub fn explain(
    runtime: &Runtime,
    plugin: &Plugin,
    cred: &Arc<CallCredential>,
    prepared: &Prepared,
) -> Result<String, SignError> {
    Ok(runtime.explain(plugin, cred, prepared.now, &prepared.request)?)
}
