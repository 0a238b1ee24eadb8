//! The `tencent-tc3` scheme: Tencent Cloud API 3.0 request signature,
//! `TC3-HMAC-SHA256`, as described in "Signature v3" and implemented by
//! Tencent's official SDKs.
//!
//! The scheme sets `x-tc-timestamp` (and `x-tc-token` for temporary
//! credentials), signs `content-type` and `host` (plus any headers named in
//! `extra_signed_headers`) and sets `authorization`. The caller's own headers,
//! such as `X-TC-Action`, `X-TC-Version` and `X-TC-Region`, are kept.
//!
//! Canonicalisation lives in [`canonical`], which makes no host call, so it
//! can be tested natively; this file is the thin layer that hashes and MACs
//! through the host.

pub mod canonical;

use canonical::{Prepared, RequestView};
use latchkey_plugin_sdk::*;

/// The only algorithm this scheme speaks.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";

// Exported only in the Wasm build: the component export names contain `:`
// and `@`, which a native linker refuses, and native builds exist only to run
// the unit tests of `canonical`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct TencentTc3;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl TencentTc3 {
    /// Canonicalise the call and build its string to sign.
    fn prepare(call: &Call) -> Result<(Prepared, String), Error> {
        call.require_secret("secret_id")?;
        call.require_secret("secret_key")?;
        let extra = canonical::parse_extra_signed_headers(call.config.get("extra_signed_headers"))?;
        let view = RequestView {
            method: &call.method,
            url: &call.url,
            headers: &call.headers,
            body_sha256: call.body_sha256.as_deref(),
            now_seconds: call.now.seconds,
            service: call.config.get("service"),
            extra_signed_headers: &extra,
        };
        let prepared = canonical::prepare(&view)?;
        // No secret enters a TC3 canonical request, so it is hashed as text.
        let digest = sha256(prepared.canonical_request.as_bytes());
        let string_to_sign = canonical::string_to_sign(&prepared, &hex(&digest));
        Ok((prepared, string_to_sign))
    }
}

impl Scheme for TencentTc3 {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "tencent-tc3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Tencent Cloud API 3.0 signature (TC3-HMAC-SHA256)".into(),
            config_fields: vec![
                FieldInfo::optional(
                    "service",
                    "The product in the credential scope, e.g. `cvm`; inferred from a \
                     `<service>.tencentcloudapi.com` host when absent",
                ),
                FieldInfo::optional(
                    "extra_signed_headers",
                    "Headers to sign besides content-type and host, separated by `;` \
                     (e.g. `x-tc-action`); absent headers are skipped",
                ),
            ],
            secret_fields: vec![
                SecretFieldInfo::required(
                    "secret_id",
                    "The SecretId (sent in the Authorization header)",
                    Exposure::Identifier,
                ),
                SecretFieldInfo::required(
                    "secret_key",
                    "The SecretKey (only ever used as an HMAC key)",
                    Exposure::HostOnly,
                ),
                SecretFieldInfo::optional(
                    "token",
                    "A temporary credential's token, sent as X-TC-Token",
                    Exposure::Identifier,
                ),
            ],
            writable_headers: canonical::WRITTEN_HEADERS.iter().map(|h| h.to_string()).collect(),
            open_secret_fields: None,
            reads_body: true,
            request_independent: false,
        }
    }

    fn validate_config(config: &Config) -> Result<(), Error> {
        config.check_fields(&Self::describe().config_fields)?;
        if let Some(service) = config.get("service") {
            canonical::check_service(service)?;
        }
        canonical::parse_extra_signed_headers(config.get("extra_signed_headers"))?;
        Ok(())
    }

    fn validate_secret(_config: &Config, field: &str, value: &str) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::InvalidSecret(format!("`{field}` {why}")));
        if value.is_empty() {
            return bad("is empty");
        }
        // The SecretId is spliced into `Credential=<id>/<date>/...`; a slash,
        // comma or whitespace in it would make the header ambiguous to parse.
        if field == "secret_id" && value.chars().any(|c| c.is_whitespace() || c == ',' || c == '/') {
            return bad("may not contain whitespace, commas or slashes");
        }
        if value.trim() != value {
            return bad("has leading or trailing whitespace; store the bare value");
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let (prepared, string_to_sign) = Self::prepare(call)?;
        let date = prepared.date.as_bytes();
        let service = prepared.service.as_bytes();
        let signature =
            call.hmac_sha256("secret_key", b"TC3", &[date, service, b"tc3_request"], string_to_sign.as_bytes())?;
        let mut edits = vec![Edit::set_header_text(canonical::TIMESTAMP, prepared.timestamp.clone())];
        if call.has_secret("token") {
            // The token is referred to, not read: the host splices it in.
            edits.push(Edit::set_header(canonical::TOKEN, [Part::secret("token")]));
        }
        edits.push(Edit::set_header(
            "authorization",
            [
                Part::text(format!("{ALGORITHM} Credential=")),
                Part::secret("secret_id"),
                Part::text(format!(
                    "/{}, SignedHeaders={}, Signature={}",
                    prepared.credential_scope(),
                    prepared.signed_headers,
                    hex(&signature)
                )),
            ],
        ));
        Ok(edits)
    }

    fn explain(call: &Call) -> Result<String, Error> {
        let (prepared, string_to_sign) = Self::prepare(call)?;
        Ok(canonical::explain(&prepared, &string_to_sign))
    }
}

#[cfg(target_arch = "wasm32")]
export_scheme!(TencentTc3);
