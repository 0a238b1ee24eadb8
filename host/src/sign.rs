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
    /// The origin `url` starts with, already parsed and checked (a proxy
    /// route's base URL, [`Origin::of`]): a URL it covers is not parsed
    /// again. Anything else is parsed in full, as without it.
    pub origin: Option<Arc<Origin>>,
}

/// A base URL parsed and checked once as [`prepare`] checks a URL (http or
/// https, no user information, a host; and no query or fragment), so that
/// the URLs made of it and a path need not be parsed per call.
#[derive(Debug)]
pub struct Origin {
    base: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// `base` (`parsed` is its parse) as an origin, or `None` if [`prepare`]
    /// would refuse it or it has a query or fragment (its URLs are then
    /// parsed in full).
    pub fn of(base: &str, parsed: &url::Url) -> Option<Origin> {
        if raw_byte(base).is_some() || parsed.query().is_some() || parsed.fragment().is_some() {
            return None;
        }
        let (host, port) = checked_authority(parsed).ok()?;
        Some(Origin { base: base.to_string(), host, port })
    }

    /// Whether `url` is the base followed by nothing or by a path (`/…`).
    /// The base ends inside or after its authority, and a `/` ends an
    /// authority, so such a URL has the base's host and port.
    fn covers(&self, url: &str) -> bool {
        url.strip_prefix(self.base.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Where `url` has its first raw space, control or non-ASCII byte: a URL
/// with one is not in wire form.
fn raw_byte(url: &str) -> Option<usize> {
    url.bytes().position(|b| b <= 0x20 || b >= 0x7f)
}

/// A parsed URL's host and port, if it passes what every signed URL must:
/// http or https, no user information, a host.
fn checked_authority(parsed: &url::Url) -> Result<(String, Option<u16>), String> {
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("URL scheme `{}` is not http or https", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URL must not contain user information (`user@host`)".into());
    }
    let host = parsed.host_str().ok_or("URL has no host")?;
    Ok((host.to_string(), parsed.port()))
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
    if let Some(i) = raw_byte(&input.url) {
        return Err(bad(format!("URL has a raw space, control or non-ASCII character at byte {i}; percent-encode it")));
    }
    let (host_name, port) = match input.origin.as_deref().filter(|o| o.covers(&input.url)) {
        Some(origin) => (origin.host.clone(), origin.port),
        None => {
            let parsed = url::Url::parse(&input.url).map_err(|e| bad(format!("malformed URL: {e}")))?;
            checked_authority(&parsed).map_err(bad)?
        }
    };
    let host = host_name.as_str();
    // Keep the URL as written (S3 signs `//` and `/./` literally); only the
    // fragment goes, since it is never sent.
    let url = input.url.split('#').next().unwrap_or_default().to_string();
    let authority = || match port {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(base: &str) -> Option<Origin> {
        Origin::of(base, &url::Url::parse(base).ok()?)
    }

    fn input(url: &str, origin: Option<&Arc<Origin>>) -> SignInput {
        SignInput {
            method: "GET".into(),
            url: url.into(),
            headers: vec![("host".into(), "example.test:8443".into())],
            body_digest: BodyDigest::Unknown,
            origin: origin.cloned(),
            ..SignInput::default()
        }
    }

    /// A URL the origin covers is prepared as a full parse would prepare
    /// it; one it does not cover is parsed in full, so a wrong origin
    /// cannot lend it its host.
    #[test]
    fn an_origin_stands_for_the_parse_it_replaces() {
        let origin = Arc::new(self::origin("https://Example.TEST:8443/v1").expect("a valid base"));
        for url in ["https://Example.TEST:8443/v1", "https://Example.TEST:8443/v1/a//b/./c?x=1&y"] {
            let (with, without) = (prepare(&input(url, Some(&origin))).unwrap(), prepare(&input(url, None)).unwrap());
            assert_eq!(with.host, "example.test");
            assert_eq!(with.host, without.host);
            assert_eq!(with.request.url, without.request.url);
        }
        // Not the base followed by a path: parsed in full, with its own host.
        let bare = Arc::new(self::origin("https://example.test:8443").unwrap());
        for (url, host) in [
            ("https://example.test:8443.evil.test/x", None),
            ("https://example.test:8443@evil.test/x", None),
            ("https://other.test:8443/v1/x", Some("other.test")),
        ] {
            assert!(!bare.covers(url), "{url}");
            let mut call = input(url, Some(&bare));
            call.headers.clear();
            match (prepare(&call), host) {
                (Ok(p), Some(host)) => assert_eq!(p.host, host, "{url}"),
                (Err(_), None) => {}
                (p, host) => panic!("{url}: {:?} / {host:?}", p.map(|p| p.host)),
            }
        }
        assert!(bare.covers("https://example.test:8443") && bare.covers("https://example.test:8443/x?y"));
        // The Host check runs on the origin's authority as on a parsed one.
        let mut wrong_host = input("https://Example.TEST:8443/v1/x", Some(&origin));
        wrong_host.headers = vec![("host".into(), "evil.test".into())];
        let refused = prepare(&wrong_host).err().expect("a Host that is not the origin's is refused");
        assert!(refused.to_string().contains("does not match"), "{refused}");
        // Bases prepare would refuse, or with a query, are no origin.
        for base in
            ["ftp://example.test", "https://u:p@example.test", "https://example.test/?q", "https://ex ample.test"]
        {
            assert!(self::origin(base).is_none(), "{base}");
        }
    }
}
