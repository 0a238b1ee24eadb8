//! The pure half of SigV4: canonical path, query and headers, the canonical
//! request (with secrets referred to, never read), the string to sign and the
//! edits that carry the signature. No host calls happen here, so all of it is
//! unit-tested natively.

use latchkey_plugin_sdk::encoding::percent_decode;
use latchkey_plugin_sdk::time::Utc;
use latchkey_plugin_sdk::{Edit, Error, Part, Url, uri_encode};

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
    let query = query_pairs(url.query.as_deref());
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

    // The headers to sign: the request's own, less the unsignable ones and the
    // ones this scheme replaces, plus what this scheme adds.
    let mut signed: Vec<(String, Vec<Part>)> = Vec::new();
    let own = |n: &str| {
        if query_mode { n == "authorization" } else { OWN_HEADERS.contains(&n) }
    };
    let kept = req.headers.iter().filter(|(n, _)| {
        let n = n.to_ascii_lowercase();
        n != "host" && !UNSIGNED_HEADERS.contains(&n.as_str()) && !own(&n)
            // A token header the credential did not supply is removed below.
            && (token || n != "x-amz-security-token")
    });
    for (name, value) in latchkey_plugin_sdk::http::canonical_headers(kept.map(|(n, v)| (n.as_str(), v.as_str()))) {
        signed.push((name, vec![Part::text(value)]));
    }
    signed.push(("host".into(), vec![Part::text(authority)]));
    if !query_mode {
        signed.push(("x-amz-date".into(), vec![Part::text(amz_date.clone())]));
        if sign_token {
            signed.push(("x-amz-security-token".into(), vec![Part::secret(SESSION_TOKEN)]));
        }
        if content_header {
            signed.push(("x-amz-content-sha256".into(), vec![Part::text(payload_hash.clone())]));
        }
    }
    signed.sort_by(|a, b| a.0.cmp(&b.0));
    let signed_headers = signed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");

    // Edits before the signature, in aws-c-auth's order.
    let mut edits = Vec::new();
    let has_header = |name: &str| req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !token && has_header("x-amz-security-token") {
        // Never send a caller's token next to this credential's signature.
        edits.push(Edit::RemoveHeader("x-amz-security-token".into()));
    }
    let mut auth_params: Vec<(&str, Vec<Part>)> = Vec::new();
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
            let credential = vec![Part::secret(ACCESS_KEY_ID), Part::text(format!("/{scope}"))];
            auth_params.push(("X-Amz-Algorithm", vec![Part::text(ALGORITHM)]));
            auth_params.push(("X-Amz-Credential", credential));
            auth_params.push(("X-Amz-Date", vec![Part::text(amz_date.clone())]));
            auth_params.push(("X-Amz-SignedHeaders", vec![Part::text(signed_headers.clone())]));
            auth_params.push(("X-Amz-Expires", vec![Part::text(expires.to_string())]));
            for (name, value) in &auth_params {
                edits.push(Edit::append_query(*name, value.clone()));
            }
            if token {
                edits.push(Edit::append_query("X-Amz-Security-Token", [Part::secret(SESSION_TOKEN)]));
            }
        }
    }

    // The canonical query: the URL's parameters and ours, encoded, sorted by
    // name then value. Ours have unique names, so a secret inside a value
    // (the access key id) never takes part in the ordering.
    let mut params: Vec<(String, String, Vec<Part>)> =
        query.iter().map(|(k, v)| (encode(k, true), encode(v, true), Vec::new())).collect();
    for (name, value) in auth_params {
        params.push((name.to_string(), String::new(), encode_parts(value)));
    }
    params.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let path = canonical_path(&url.path, settings);
    let cr = canonical_request(req.method, &path, params, &signed, &signed_headers, &payload_hash);

    Ok(Plan {
        canonical_request: cr,
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

/// Assemble the canonical request: method, path, query, headers, signed
/// header names, payload hash, one per line. Secrets stay references.
fn canonical_request(
    method: &str,
    path: &str,
    params: Vec<(String, String, Vec<Part>)>,
    headers: &[(String, Vec<Part>)],
    signed_headers: &str,
    payload_hash: &str,
) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    let mut text = format!("{method}\n{path}\n");
    for (i, (k, v, parts)) in params.into_iter().enumerate() {
        if i > 0 {
            text.push('&');
        }
        text.push_str(&k);
        text.push('=');
        text.push_str(&v);
        for p in parts {
            push_part(&mut out, &mut text, p);
        }
    }
    text.push('\n');
    for (name, value) in headers {
        text.push_str(name);
        text.push(':');
        for p in value {
            push_part(&mut out, &mut text, p.clone());
        }
        text.push('\n');
    }
    text.push('\n');
    text.push_str(signed_headers);
    text.push('\n');
    text.push_str(payload_hash);
    out.push(Part::Text(text));
    out
}

/// Append a part to the canonical request being built: text accumulates,
/// a secret flushes the text and goes in by reference.
fn push_part(out: &mut Vec<Part>, text: &mut String, part: Part) {
    match part {
        Part::Text(t) => text.push_str(&t),
        other @ (Part::Secret(_) | Part::Base64(_)) => {
            out.push(Part::Text(std::mem::take(text)));
            out.push(other);
        }
    }
}

/// A query value made of parts, encoded as the canonical query needs: text is
/// encoded here; a secret is spliced as it is, which is exact because the
/// secrets allowed there (the access key id) are unreserved characters only.
fn encode_parts(parts: Vec<Part>) -> Vec<Part> {
    parts
        .into_iter()
        .map(|p| match p {
            Part::Text(t) => Part::Text(uri_encode(&t, true)),
            secret => secret,
        })
        .collect()
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
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(h.to_string())
        }
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

/// The canonical URI: optionally normalised, then encoded once more (most
/// services) or kept as sent with only what may not appear raw encoded (S3).
pub fn canonical_path(path: &str, settings: &Settings) -> String {
    let path = if settings.normalize_path { normalize(path) } else { path.to_string() };
    if settings.double_encode { uri_encode(&path, false) } else { encode_single(&path) }
}

/// Resolve `.` and `..` segments and drop empty ones (AWS services treat `//`
/// as `/`), as aws-c-auth and botocore do: the result starts with `/` and
/// ends with `/` only when the input did.
pub fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    s.push('/');
    s.push_str(&out.join("/"));
    if path.ends_with('/') && !out.is_empty() {
        s.push('/');
    }
    s
}

/// Encode the wire path for single-encoding services: existing `%XX` escapes
/// and unreserved characters stay as sent, anything else (a raw space, `+`,
/// `$`, UTF-8) is percent-encoded, which is what S3 computes from the key.
pub fn encode_single(path: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            out.push_str(&path[i..i + 3]);
            i += 3;
            continue;
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(DIGITS[(c >> 4) as usize] as char);
            out.push(DIGITS[(c & 0xf) as usize] as char);
        }
        i += 1;
    }
    out
}

/// The URL's query as decoded byte strings, in order: `+` stays `+` (RFC
/// 3986), a name without `=` has an empty value, empty segments are skipped.
/// Bytes rather than strings, so that an escape of a non-UTF-8 byte survives.
pub fn query_pairs(query: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// RFC 3986 encoding of raw bytes: unreserved characters kept, `/` kept unless
/// `encode_slash`, everything else `%XX` with upper-case hex.
pub fn encode(bytes: &[u8], encode_slash: bool) -> String {
    latchkey_plugin_sdk::encoding::uri_encode_bytes(bytes, encode_slash)
}

/// The canonical request as text for `--explain`, with secrets shown as
/// `<field>` placeholders.
pub fn display(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.clone(),
            Part::Secret(f) => format!("<{f}>"),
            Part::Base64(_) => "<base64 of secrets>".to_string(),
        })
        .collect()
}
