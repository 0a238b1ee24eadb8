//! The pure half of SigV4: what goes into the canonical request (which
//! headers and parameters are signed, the payload hash) and under which rules
//! the SDK's builder canonicalises it (the path normalised and encoded twice,
//! or for S3 kept as sent and encoded once; values folded; parameters sorted
//! by their encoded form), the string to sign and the edits that carry the
//! signature. Secrets are referred to, never read. No host calls happen
//! here, so all of it is unit-tested natively.

use latchkey_plugin_sdk::canonical::{self as sdk, CanonicalRequest, PathEncoding, QueryOrder, Repeated, Rules};
use latchkey_plugin_sdk::encoding::is_sha256_hex;
use latchkey_plugin_sdk::time::Utc;
use latchkey_plugin_sdk::{Edit, Error, Part, Url};

use crate::settings::{Location, Settings};

/// The signing algorithm name.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash that means "the body is not signed".
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The secret fields.
pub const ACCESS_KEY_ID: &str = "access_key_id";
/// The secret the signing key derives from.
pub const SECRET_ACCESS_KEY: &str = "secret_access_key";
/// The optional temporary-credential token.
pub const SESSION_TOKEN: &str = "session_token";

/// Headers never signed: hop-by-hop headers, headers proxies and HTTP clients
/// rewrite or add after signing (so signing them would break the signature on
/// the way), tracing headers, and our own `authorization`. The list is
/// botocore's and aws-c-auth's, plus the forwarding headers.
const UNSIGNED_HEADERS: &[&str] = &[
    "authorization",
    "baggage",
    "connection",
    "expect",
    "forwarded",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-amzn-trace-id",
];

/// Headers this scheme writes, so any copy in the request is replaced rather
/// than signed alongside ours.
const OWN_HEADERS: &[&str] = &["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

/// Query parameters that belong to a presigned URL; a request already carrying
/// one is refused, as aws-c-auth does, rather than signed twice.
const AUTH_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
];

/// The request as the signer sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The method, upper case.
    pub method: &'a str,
    /// The target URL, exactly as it will be sent.
    pub url: &'a Url,
    /// The headers, in order.
    pub headers: &'a [(String, String)],
    /// Lower-case hex SHA-256 of the body, when the host hashed it.
    pub body_sha256: Option<&'a str>,
    /// Whether the credential has a session token.
    pub has_session_token: bool,
}

/// Everything about one signature except the two host computations (the hash
/// of the canonical request and the HMAC).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The canonical request, secrets by reference. The host hashes it.
    pub canonical_request: Vec<Part>,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// `YYYYMMDD`, the first link of the key derivation.
    pub date_stamp: String,
    /// `date/region/service/aws4_request`.
    pub scope: String,
    /// `host;x-amz-date;...`.
    pub signed_headers: String,
    /// The payload hash the canonical request ends with.
    pub payload_hash: String,
    /// The signing region and service.
    pub region: String,
    /// See `region`.
    pub service: String,
    /// Edits that come before the signature (headers or query parameters).
    pub edits: Vec<Edit>,
    /// Header or query signing.
    pub location: Location,
}

impl Plan {
    /// The string to sign, given the hex SHA-256 of the canonical request.
    pub fn string_to_sign(&self, canonical_hash: &str) -> String {
        format!("{ALGORITHM}\n{}\n{}\n{canonical_hash}", self.amz_date, self.scope)
    }

    /// The key derivation chain after the `AWS4` + secret prefix.
    pub fn derivation(&self) -> [&[u8]; 4] {
        [self.date_stamp.as_bytes(), self.region.as_bytes(), self.service.as_bytes(), b"aws4_request"]
    }

    /// All the edits, given the hex signature: the `Authorization` header or
    /// the `X-Amz-Signature` parameter comes last.
    pub fn finish(mut self, signature: &str) -> Vec<Edit> {
        match self.location {
            Location::Header => self.edits.push(Edit::set_header(
                "authorization",
                [
                    Part::text(format!("{ALGORITHM} Credential=")),
                    Part::secret(ACCESS_KEY_ID),
                    Part::text(format!(
                        "/{}, SignedHeaders={}, Signature={signature}",
                        self.scope, self.signed_headers
                    )),
                ],
            )),
            Location::Query { .. } => {
                self.edits.push(Edit::append_query("X-Amz-Signature", [Part::text(signature)]));
            }
        }
        self.edits
    }
}

/// Build the plan for one request.
pub fn plan(settings: &Settings, req: &Request<'_>, now: Utc) -> Result<Plan, Error> {
    let url = req.url;
    let authority = url.authority();
    check_host_header(req.headers, &authority)?;
    let query = url.query_pairs();
    if let Some((k, _)) = query.iter().find(|(k, _)| AUTH_PARAMS.iter().any(|p| p.as_bytes().eq_ignore_ascii_case(k))) {
        return Err(Error::InvalidRequest(format!(
            "the URL already carries `{}`: it is presigned or signed already; remove the X-Amz-* authentication parameters",
            String::from_utf8_lossy(k)
        )));
    }

    let amz_date = now.amz_date();
    let date_stamp = now.date_stamp();
    let scope = format!("{date_stamp}/{}/{}/aws4_request", settings.region, settings.service);
    let query_mode = matches!(settings.location, Location::Query { .. });
    let token = req.has_session_token;
    let sign_token = token && !settings.omit_session_token;

    let payload_hash = payload_hash(settings, req)?;
    let content_header = !query_mode
        && (settings.content_sha256_header
            || req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256")));

    let rules = Rules {
        normalize_path: settings.normalize_path,
        path: if settings.double_encode { PathEncoding::EncodeAgain } else { PathEncoding::KeepEscapes },
        query_order: QueryOrder::Encoded,
        header_value: sdk::fold,
        repeated: Repeated::InOrder,
    };
    let mut cr = CanonicalRequest::new(rules, req.method, &url.path);

    // The headers to sign: the request's own, less the unsignable ones and the
    // ones this scheme replaces, plus what this scheme adds.
    let own = |n: &str| {
        if query_mode { n == "authorization" } else { OWN_HEADERS.contains(&n) }
    };
    for (name, value) in req.headers {
        let n = name.to_ascii_lowercase();
        let kept = n != "host" && !UNSIGNED_HEADERS.contains(&n.as_str()) && !own(&n)
            // A token header the credential did not supply is removed below.
            && (token || n != "x-amz-security-token");
        if kept {
            cr.header(&n, value);
        }
    }
    cr.header_parts("host", [Part::text(authority)]);
    if !query_mode {
        cr.header_parts("x-amz-date", [Part::text(amz_date.clone())]);
        if sign_token {
            cr.header_parts("x-amz-security-token", [Part::secret(SESSION_TOKEN)]);
        }
        if content_header {
            cr.header_parts("x-amz-content-sha256", [Part::text(payload_hash.clone())]);
        }
    }
    let signed_headers = cr.signed_headers();

    // Edits before the signature, in aws-c-auth's order.
    let mut edits = Vec::new();
    let has_header = |name: &str| req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !token && has_header("x-amz-security-token") {
        // Never send a caller's token next to this credential's signature.
        edits.push(Edit::RemoveHeader("x-amz-security-token".into()));
    }
    match settings.location {
        Location::Header => {
            if token {
                edits.push(Edit::set_header("x-amz-security-token", [Part::secret(SESSION_TOKEN)]));
            }
            edits.push(Edit::set_header_text("x-amz-date", amz_date.clone()));
            if content_header {
                edits.push(Edit::set_header_text("x-amz-content-sha256", payload_hash.clone()));
            }
        }
        Location::Query { expires } => {
            if sign_token {
                // The token would have to be URI-encoded inside the hashed
                // canonical query, and the host splices secrets verbatim.
                return Err(Error::InvalidConfig(
                    "presigning (signature_location=query) with a session token is not supported: the token would \
                     have to be URI-encoded inside the signed hash, which the host interface cannot do without \
                     revealing it; use header signing, or `omit_session_token=true` where the service accepts an \
                     unsigned token"
                        .into(),
                ));
            }
            if has_header("authorization") {
                // AWS refuses a request that carries two authentication methods.
                edits.push(Edit::RemoveHeader("authorization".into()));
            }
            // Signed in the canonical query too. Their names are unique, so
            // the secret inside a value (the access key id) never takes part
            // in the ordering, and it is spliced unencoded, which is exact
            // because access key ids are unreserved characters only.
            let credential = vec![Part::secret(ACCESS_KEY_ID), Part::text(format!("/{scope}"))];
            let auth_params = [
                ("X-Amz-Algorithm", vec![Part::text(ALGORITHM)]),
                ("X-Amz-Credential", credential),
                ("X-Amz-Date", vec![Part::text(amz_date.clone())]),
                ("X-Amz-SignedHeaders", vec![Part::text(signed_headers.clone())]),
                ("X-Amz-Expires", vec![Part::text(expires.to_string())]),
            ];
            for (name, value) in auth_params {
                cr.param(name, value.clone());
                edits.push(Edit::append_query(name, value));
            }
            if token {
                edits.push(Edit::append_query("X-Amz-Security-Token", [Part::secret(SESSION_TOKEN)]));
            }
        }
    }

    // The canonical query: the URL's parameters and ours, encoded, sorted by
    // name then value.
    cr.params(query);
    let cr = cr.finish(&payload_hash)?;

    Ok(Plan {
        canonical_request: cr.parts,
        amz_date,
        date_stamp,
        scope,
        signed_headers,
        payload_hash,
        region: settings.region.clone(),
        service: settings.service.clone(),
        edits,
        location: settings.location,
    })
}

/// The payload hash: the body's, or `UNSIGNED-PAYLOAD` when configured (and
/// for S3 presigned URLs, whose body is unknown when the URL is made). A
/// missing body hash with signed payloads is an error, never a silent switch
/// to an unsigned payload.
fn payload_hash(settings: &Settings, req: &Request<'_>) -> Result<String, Error> {
    let query_mode = matches!(settings.location, Location::Query { .. });
    if settings.unsigned_payload || (query_mode && settings.is_s3()) {
        return Ok(UNSIGNED_PAYLOAD.into());
    }
    match req.body_sha256 {
        Some(h) if is_sha256_hex(h) => Ok(h.to_string()),
        Some(_) => Err(Error::InvalidRequest("the body hash is not 64 lower-case hex digits".into())),
        None => Err(Error::InvalidRequest(
            "the body was not hashed (streamed), and this credential signs payloads: buffer the body, or set \
             config `unsigned_payload=true` to sign UNSIGNED-PAYLOAD"
                .into(),
        )),
    }
}

/// Refuse a `Host` header that names another host than the URL: the signed
/// host must be the one connected to.
fn check_host_header(headers: &[(String, String)], authority: &str) -> Result<(), Error> {
    for (n, v) in headers {
        if n.eq_ignore_ascii_case("host") && !v.trim().eq_ignore_ascii_case(authority) {
            return Err(Error::InvalidRequest(format!(
                "the Host header `{}` does not match the URL's host `{authority}`",
                v.trim()
            )));
        }
    }
    Ok(())
}

/// Resolve `.` and `..` segments and drop empty ones, as services other
/// than S3 do before signing (this crate's tests call it by this name).
#[cfg(test)]
pub fn normalize(path: &str) -> String {
    sdk::canonical_uri(path, true, PathEncoding::AsSent)
}

/// The wire path as single-encoding services (S3) sign it.
#[cfg(test)]
pub fn encode_single(path: &str) -> String {
    sdk::canonical_uri(path, false, PathEncoding::KeepEscapes)
}

/// RFC 3986 encoding of raw bytes, as the host encodes appended query
/// parameters (this crate's tests rebuild the signed URL with it).
#[cfg(test)]
pub use latchkey_plugin_sdk::encoding::uri_encode_bytes as encode;

/// The canonical request as text for `--explain`, with secrets shown as
/// `<field>` placeholders.
pub fn display(parts: &[Part]) -> String {
    sdk::render(parts, |field| format!("<{field}>"))
}
