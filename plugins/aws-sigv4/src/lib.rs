//! The `aws-sigv4` scheme: AWS Signature Version 4 (`AWS4-HMAC-SHA256`), in an
//! `Authorization` header or as a presigned URL, with the key kept in the host.
//!
//! The plugin never reads a secret. The access key id and the session token
//! go on the wire and into the hashed canonical request as `Part::secret`
//! references; the signing key is derived and used inside the host by
//! `crypto.hmac-sha256` (`AWS4` + secret, then date, region, service,
//! `aws4_request`).
//!
//! What is not here: SigV4a (ECDSA over a derived P-256 key, which the host's
//! crypto interface does not offer) and chunked `aws-chunked` uploads.

mod canonical;
mod settings;

use canonical::{ACCESS_KEY_ID, Plan, Request, SECRET_ACCESS_KEY, SESSION_TOKEN};
use latchkey_plugin_sdk::time::Utc;
use latchkey_plugin_sdk::*;
use settings::{Location, Origin, Settings};

struct AwsSigV4;

/// Resolve the settings and build the signing plan for a call.
fn prepare(call: &Call) -> Result<(Settings, Plan), Error> {
    call.require_secret(ACCESS_KEY_ID)?;
    call.require_secret(SECRET_ACCESS_KEY)?;
    let settings = Settings::resolve(&call.config, &call.url.host)?;
    let req = Request {
        method: &call.method,
        url: &call.url,
        headers: &call.headers,
        body_sha256: call.body_sha256.as_deref(),
        has_session_token: call.has_secret(SESSION_TOKEN),
    };
    let plan = canonical::plan(&settings, &req, Utc::from(call.now))?;
    Ok((settings, plan))
}

/// The hex SHA-256 of the canonical request, secrets spliced in by the host.
fn canonical_hash(call: &Call, plan: &Plan) -> Result<String, Error> {
    call.sha256_hex(&plan.canonical_request)
}

impl Scheme for AwsSigV4 {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "aws-sigv4".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "AWS Signature Version 4 (AWS4-HMAC-SHA256), as a header or a presigned URL".into(),
            config_fields: settings::config_fields(),
            secret_fields: vec![
                SecretFieldInfo::required(
                    ACCESS_KEY_ID,
                    "The access key id, e.g. `AKIA...` or `ASIA...`",
                    Exposure::Identifier,
                ),
                SecretFieldInfo::required(SECRET_ACCESS_KEY, "The secret access key", Exposure::HostOnly),
                SecretFieldInfo::optional(
                    SESSION_TOKEN,
                    "The session token of temporary (STS) credentials",
                    Exposure::Identifier,
                ),
            ],
            writable_headers: vec![
                "authorization".into(),
                "x-amz-date".into(),
                "x-amz-content-sha256".into(),
                "x-amz-security-token".into(),
            ],
            open_secret_fields: None,
            reads_body: true,
            request_independent: false,
        }
    }

    fn validate_config(config: &Config) -> Result<(), Error> {
        settings::check(config)
    }

    fn validate_secret(_config: &Config, field: &str, value: &str) -> Result<(), Error> {
        match field {
            ACCESS_KEY_ID => {
                // The key id is spliced verbatim into a presigned URL's signed
                // query, so it must not need URI-encoding; AWS's own ids are
                // upper-case letters and digits.
                let ok = (1..=128).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
                if !ok {
                    return Err(Error::InvalidSecret(
                        "`access_key_id` must be 1 to 128 letters, digits or `-._~` (AWS key ids look like `AKIA...`)"
                            .into(),
                    ));
                }
            }
            SECRET_ACCESS_KEY => {
                if value.is_empty() {
                    return Err(Error::InvalidSecret("`secret_access_key` is empty".into()));
                }
            }
            SESSION_TOKEN => {
                // The token is signed as a header value, which SigV4 trims and
                // folds: whitespace would make the signed value differ from
                // the sent one.
                if value.is_empty() || value.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                    return Err(Error::InvalidSecret(
                        "`session_token` is empty or contains whitespace or control characters".into(),
                    ));
                }
            }
            other => {
                return Err(Error::InvalidSecret(format!(
                    "unknown secret field `{other}` (known: access_key_id, secret_access_key, session_token)"
                )));
            }
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let (_, plan) = prepare(call)?;
        let string_to_sign = plan.string_to_sign(&canonical_hash(call, &plan)?);
        let signature = call.hmac_sha256(SECRET_ACCESS_KEY, b"AWS4", &plan.derivation(), string_to_sign.as_bytes())?;
        Ok(plan.finish(&hex(&signature)))
    }

    fn explain(call: &Call) -> Result<String, Error> {
        let (settings, plan) = prepare(call)?;
        let string_to_sign = plan.string_to_sign(&canonical_hash(call, &plan)?);
        let origin = |o: Origin| match o {
            Origin::Configured => "configured",
            Origin::Inferred => "inferred from the host",
        };
        let location = match settings.location {
            Location::Header => "Authorization header".to_string(),
            Location::Query { expires } => format!("presigned URL, X-Amz-Expires={expires}"),
        };
        Ok(format!(
            "AWS Signature Version 4 ({location})\n\
             service: {} ({})\nregion: {} ({})\n\
             path: {}, {}\npayload: {}\nsigned headers: {}\n\n\
             canonical request:\n{}\n\nstring to sign:\n{string_to_sign}\n",
            settings.service,
            origin(settings.service_origin),
            settings.region,
            origin(settings.region_origin),
            if settings.normalize_path { "normalised" } else { "not normalised" },
            if settings.double_encode { "encoded twice" } else { "encoded once" },
            plan.payload_hash,
            plan.signed_headers,
            canonical::display(&plan.canonical_request),
        ))
    }
}

export_scheme!(AwsSigV4);

#[cfg(test)]
mod tests;
