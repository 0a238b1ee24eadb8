//! The `aliyun-acs3` scheme: Alibaba Cloud's V3 request signature,
//! `ACS3-HMAC-SHA256`, as described in "V3 request structure and signature"
//! and implemented by Alibaba's OpenAPI SDKs.
//!
//! The scheme adds `x-acs-date`, `x-acs-signature-nonce`,
//! `x-acs-content-sha256` (and, for STS credentials, `x-acs-accesskey-id` and
//! `x-acs-security-token`), then signs `host`, `content-type` and every
//! `x-acs-*` header of the request as it will be sent, and sets
//! `authorization`. The caller's own headers, such as `x-acs-action` and
//! `x-acs-version`, are kept and signed.
//!
//! Canonicalisation lives in [`canonical`], which makes no host call, so it
//! can be tested natively; this file is the thin layer that hashes and MACs
//! through the host.

pub mod canonical;

use canonical::{Prepared, RequestView};
use latchkey_plugin_sdk::*;

/// The only algorithm this scheme speaks.
pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

// Exported only in the Wasm build: the component export names contain `:`
// and `@`, which a native linker refuses, and native builds exist only to run
// the unit tests of `canonical`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct AliyunAcs3;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl AliyunAcs3 {
    /// Canonicalise the call, choosing a random nonce unless the request
    /// carries one.
    fn prepare(call: &Call) -> Result<Prepared, Error> {
        call.require_secret("access_key_id")?;
        call.require_secret("access_key_secret")?;
        let view = RequestView {
            method: &call.method,
            url: &call.url,
            headers: &call.headers,
            body_sha256: call.body_sha256.as_deref(),
            now_seconds: call.now.seconds,
            security_token: call.has_secret("security_token"),
        };
        // 16 random bytes as 32 hex digits: the shape of the nonces the
        // official SDKs send (an MD5 hex digest there).
        canonical::prepare(&view, || hex(&random_bytes(16)))
    }

    /// The hex string to sign for a prepared request, hashed in the host so
    /// that a session token inside the canonical request is never read here.
    fn string_to_sign(call: &Call, prepared: &Prepared) -> Result<String, Error> {
        Ok(canonical::string_to_sign(&call.sha256_hex(&prepared.canonical_request)?))
    }
}

impl Scheme for AliyunAcs3 {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "aliyun-acs3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Alibaba Cloud V3 request signature (ACS3-HMAC-SHA256)".into(),
            config_fields: vec![],
            secret_fields: vec![
                SecretFieldInfo::required(
                    "access_key_id",
                    "The AccessKey ID (sent in the Authorization header)",
                    Exposure::Identifier,
                ),
                SecretFieldInfo::required(
                    "access_key_secret",
                    "The AccessKey secret (only ever used as an HMAC key)",
                    Exposure::HostOnly,
                ),
                SecretFieldInfo::optional(
                    "security_token",
                    "An STS security token, sent and signed as x-acs-security-token",
                    Exposure::Identifier,
                ),
            ],
            writable_headers: canonical::WRITTEN_HEADERS.iter().map(|h| h.to_string()).collect(),
            open_secret_fields: None,
            reads_body: true,
            request_independent: false,
        }
    }

    fn validate_secret(_config: &Config, field: &str, value: &str) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::InvalidSecret(format!("`{field}` {why}")));
        if value.is_empty() {
            return bad("is empty");
        }
        // The key id is spliced into `Credential=<id>,SignedHeaders=...`; a
        // comma or whitespace in it would make the header ambiguous to parse.
        if field == "access_key_id" && value.chars().any(|c| c.is_whitespace() || c == ',') {
            return bad("may not contain whitespace or commas");
        }
        if value.trim() != value {
            return bad("has leading or trailing whitespace; store the bare value");
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let prepared = Self::prepare(call)?;
        let string_to_sign = Self::string_to_sign(call, &prepared)?;
        let signature = call.hmac_sha256("access_key_secret", b"", &[], string_to_sign.as_bytes())?;
        let mut edits: Vec<Edit> =
            prepared.headers.into_iter().map(|(name, value)| Edit::set_header(name, value)).collect();
        // The key id is referred to, not read: the host splices it in.
        edits.push(Edit::set_header(
            "authorization",
            [
                Part::text(format!("{ALGORITHM} Credential=")),
                Part::secret("access_key_id"),
                Part::text(format!(",SignedHeaders={},Signature={}", prepared.signed_headers, hex(&signature))),
            ],
        ));
        Ok(edits)
    }

    fn explain(call: &Call) -> Result<String, Error> {
        let prepared = Self::prepare(call)?;
        let string_to_sign = Self::string_to_sign(call, &prepared)?;
        Ok(canonical::explain(&prepared, &string_to_sign))
    }
}

#[cfg(target_arch = "wasm32")]
export_scheme!(AliyunAcs3);
