//! TC3 canonicalisation, free of host calls so that it can be unit-tested
//! natively: from a request to the canonical request, the signed-header list
//! and the credential scope.
//!
//! The rules follow Tencent Cloud's "Signature v3" and its official SDKs
//! (`tencentcloud-sdk-python-common` `_get_tc3_signature`, the Go SDK's
//! `sendWithSignatureV3`):
//!
//! - the canonical URI is the path as sent (`/` for every API 3.0 call);
//! - the canonical query string is the query exactly as sent for `GET`, and
//!   empty for every other method: the SDKs sign the very string they put in
//!   the URL, unsorted and with `+` for spaces, so the server must use the
//!   query it received as it is;
//! - the signed headers are `content-type` and `host` (what the SDKs sign),
//!   plus any configured extra ones (the current documentation's example
//!   signs `x-tc-action`); names and values are lower-cased and trimmed of
//!   leading and trailing spaces and tabs, as the documentation says;
//! - the payload hash is the SHA-256 of the body; `GET` requests have an
//!   empty payload by definition.

use latchkey_plugin_sdk::canonical::{CanonicalRequest, PathEncoding, QueryOrder, Repeated, Rules, trim_lowercase};
use latchkey_plugin_sdk::encoding::is_sha256_hex;
use latchkey_plugin_sdk::time::Utc;
use latchkey_plugin_sdk::{Error, Part, Url};

/// The request timestamp header.
pub const TIMESTAMP: &str = "x-tc-timestamp";
/// The temporary credential token header.
pub const TOKEN: &str = "x-tc-token";

/// The header that switches TC3 to an unsigned payload.
pub const CONTENT_SHA256: &str = "x-tc-content-sha256";

/// Every header the scheme may set, lower case, as `describe` declares them.
pub const WRITTEN_HEADERS: [&str; 3] = [TIMESTAMP, TOKEN, "authorization"];

/// SHA-256 of the empty string: the payload hash of a request without body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What canonicalisation needs from a call, without the credential handle.
pub struct RequestView<'a> {
    /// The HTTP method, upper case.
    pub method: &'a str,
    /// The target URL, not normalised.
    pub url: &'a Url,
    /// The caller's headers, in order.
    pub headers: &'a [(String, String)],
    /// Lower-case hex SHA-256 of the body, when the host hashed it.
    pub body_sha256: Option<&'a str>,
    /// The signing time, seconds since the Unix epoch.
    pub now_seconds: i64,
    /// The configured service, if any.
    pub service: Option<&'a str>,
    /// Lower-case names of extra headers to sign, from the configuration.
    pub extra_signed_headers: &'a [String],
}

/// The outcome of canonicalisation.
#[derive(Debug)]
pub struct Prepared {
    /// The canonical request. TC3 never signs a secret, so it is plain text.
    pub canonical_request: String,
    /// `content-type;host[;...]`, sorted.
    pub signed_headers: String,
    /// The `x-tc-timestamp` value: Unix seconds.
    pub timestamp: String,
    /// The UTC date of the timestamp, `YYYY-MM-DD`.
    pub date: String,
    /// The product in the credential scope.
    pub service: String,
}

impl Prepared {
    /// `date/service/tc3_request`.
    pub fn credential_scope(&self) -> String {
        format!("{}/{}/tc3_request", self.date, self.service)
    }
}

/// A service name is a lower-case label: it goes into the credential scope
/// and the key derivation, where anything else can only fail.
pub fn check_service(service: &str) -> Result<(), Error> {
    let ok = !service.is_empty()
        && service.len() <= 63
        && service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(
            "`service` must be a lower-case product name such as `cvm` (letters, digits, `-`)".into(),
        ))
    }
}

/// The service: configured, or the first label of a
/// `<service>[.<region>].tencentcloudapi.com` host.
pub fn service_for(configured: Option<&str>, host: &str) -> Result<String, Error> {
    if let Some(service) = configured {
        check_service(service)?;
        return Ok(service.to_string());
    }
    let inferred = host
        .strip_suffix(".tencentcloudapi.com")
        .and_then(|rest| rest.split('.').next())
        .filter(|s| check_service(s).is_ok());
    inferred.map(str::to_string).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "config `service` is not set and cannot be inferred from host `{host}` \
             (expected `<service>.tencentcloudapi.com`)"
        ))
    })
}

/// Parse `extra_signed_headers`: names separated by `;` or `,`, lower-cased.
/// `content-type` and `host` are always signed and may be repeated here.
pub fn parse_extra_signed_headers(value: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let mut names: Vec<String> = Vec::new();
    for name in value.split([';', ',']).map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()) {
        let token = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Error::InvalidConfig(format!("`extra_signed_headers`: `{name}` is not a header name")));
        }
        if name == TOKEN || name == "authorization" {
            // TC3 lower-cases signed values, which the host cannot do to a
            // secret it splices in; and the authorization is the signature.
            return Err(Error::InvalidConfig(format!("`extra_signed_headers`: `{name}` cannot be signed")));
        }
        if name != "content-type" && name != "host" && !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// TC3's canonicalisation, as the module documentation describes it. The
/// query is signed as sent, so there is no parameter order; no signed header
/// repeats (see `prepare`).
pub const RULES: Rules = Rules {
    normalize_path: false,
    path: PathEncoding::AsSent,
    query_order: QueryOrder::Encoded,
    header_value: trim_lowercase,
    repeated: Repeated::InOrder,
};

fn body_hash(body_sha256: Option<&str>) -> Result<&str, Error> {
    let hash = body_sha256.ok_or_else(|| {
        Error::InvalidRequest(
            "the request body was not hashed (streamed body): TC3 signs the body's SHA-256, so the \
             body must be buffered and hashed before signing"
                .into(),
        )
    })?;
    if !is_sha256_hex(hash) {
        return Err(Error::InvalidRequest("body-sha256 is not 64 lower-case hex digits".into()));
    }
    Ok(hash)
}

/// The one value of a signed header, or an error when it is absent (for
/// `required`) or repeated: how a server would combine repeated values is
/// not specified, so signing them could only fail later.
fn single_value<'a>(headers: &'a [(String, String)], name: &str, required: bool) -> Result<Option<&'a str>, Error> {
    let mut values = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::InvalidRequest(format!("header `{name}` is repeated; TC3 signs it, so send it once")));
    }
    if first.is_none() && required {
        return Err(Error::InvalidRequest(format!(
            "header `{name}` is missing; TC3 always signs it (`application/json; charset=utf-8` for POST, \
             `application/x-www-form-urlencoded` for GET)"
        )));
    }
    Ok(first)
}

/// Canonicalise a request.
pub fn prepare(req: &RequestView) -> Result<Prepared, Error> {
    let body = body_hash(req.body_sha256)?;
    if req.now_seconds < 0 {
        return Err(Error::InvalidRequest("the signing time is before 1970".into()));
    }
    if req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(CONTENT_SHA256)) {
        // The SDKs' `UNSIGNED-PAYLOAD` mode makes the server hash that literal
        // instead of the body, which would leave the body open to change.
        return Err(Error::InvalidRequest(format!(
            "header `{CONTENT_SHA256}` is set: this scheme always signs the payload; remove the header"
        )));
    }
    let service = service_for(req.service, &req.url.host)?;
    let timestamp = req.now_seconds.to_string();
    let date = Utc::from_unix(req.now_seconds).date_dashed();

    let query = req.url.query.as_deref().unwrap_or("");
    let canonical_query = if req.method == "GET" {
        if body != EMPTY_SHA256 {
            return Err(Error::InvalidRequest(
                "a GET request has a body: TC3 signs GET requests with an empty payload, so send the \
                 parameters in the query string or use POST"
                    .into(),
            ));
        }
        query
    } else {
        if !query.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "a {} request has a query string: TC3 signs an empty query string for every method but \
                 GET, so the query would go unsigned; send the parameters in the body",
                req.method
            )));
        }
        ""
    };

    let mut canonical = CanonicalRequest::new(RULES, req.method, &req.url.path);
    canonical.raw_query(canonical_query);
    canonical.header("content-type", single_value(req.headers, "content-type", true)?.unwrap_or(""));
    canonical.header_parts("host", [Part::text(req.url.authority())]);
    for name in req.extra_signed_headers {
        if name == TIMESTAMP {
            // The scheme replaces the caller's timestamp with its own.
            canonical.header_parts(name, [Part::text(timestamp.clone())]);
        } else if let Some(value) = single_value(req.headers, name, false)? {
            canonical.header(name, value);
        }
    }
    let canonical = canonical.finish(body)?;
    let canonical_request =
        canonical.text().ok_or_else(|| Error::Internal(Some("a secret in the TC3 canonical request".into())))?;

    Ok(Prepared { canonical_request, signed_headers: canonical.signed_headers, timestamp, date, service })
}

/// The string to sign, from the hex SHA-256 of the canonical request.
pub fn string_to_sign(prepared: &Prepared, hashed_canonical_request: &str) -> String {
    format!("{}\n{}\n{}\n{hashed_canonical_request}", crate::ALGORITHM, prepared.timestamp, prepared.credential_scope())
}

/// The `--explain` text: canonical request, string to sign, signed headers.
pub fn explain(prepared: &Prepared, string_to_sign: &str) -> String {
    format!(
        "Algorithm: {}\nCanonicalRequest:\n{}\nStringToSign:\n{string_to_sign}\nSignedHeaders: {}\n\
         CredentialScope: {}\n",
        crate::ALGORITHM,
        prepared.canonical_request,
        prepared.signed_headers,
        prepared.credential_scope(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn prepare_with(
        method: &str,
        url: &str,
        hdrs: &[(&str, &str)],
        body: &str,
        service: Option<&str>,
        extra: &[&str],
    ) -> Result<Prepared, Error> {
        let url = Url::parse(url).unwrap();
        let hdrs = headers(hdrs);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        prepare(&RequestView {
            method,
            url: &url,
            headers: &hdrs,
            body_sha256: Some(body),
            now_seconds: 1_551_113_065,
            service,
            extra_signed_headers: &extra,
        })
    }

    const DOC_HEADERS: &[(&str, &str)] = &[
        ("Content-Type", "application/json; charset=utf-8"),
        ("Host", "cvm.tencentcloudapi.com"),
        ("X-TC-Action", "DescribeInstances"),
        ("X-TC-Version", "2017-03-12"),
        ("X-TC-Region", "ap-guangzhou"),
    ];

    /// "Signature v3", the version whose body names the instance "unnamed":
    /// its hashed canonical request is `2815843035…dda7a`.
    #[test]
    fn reproduces_the_documented_canonical_request() {
        let p = prepare_with(
            "POST",
            "https://cvm.tencentcloudapi.com/",
            DOC_HEADERS,
            "99d58dfbc6745f6747f36bfca17dee5e6881dc0428a0a36f96199342bc5b4907",
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            p.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n99d58dfbc6745f6747f36bfca17dee5e6881dc0428a0a36f96199342bc5b4907"
        );
        assert_eq!(p.credential_scope(), "2019-02-25/cvm/tc3_request");
        assert_eq!(
            string_to_sign(&p, "2815843035062fffda5fd6f2a44ea8a34818b0dc46f024b8b3786976a3adda7a"),
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n\
             2815843035062fffda5fd6f2a44ea8a34818b0dc46f024b8b3786976a3adda7a"
        );
    }

    /// The current version of the documentation signs `x-tc-action`, with
    /// its value lower-cased.
    #[test]
    fn signs_extra_headers_lower_cased() {
        let p = prepare_with(
            "POST",
            "https://cvm.tencentcloudapi.com/",
            DOC_HEADERS,
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            Some("cvm"),
            &["x-tc-action", "x-tc-missing"],
        )
        .unwrap();
        assert_eq!(
            p.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\
             x-tc-action:describeinstances\n\ncontent-type;host;x-tc-action\n\
             35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let p = prepare_with("POST", "https://cvm.tencentcloudapi.com/", DOC_HEADERS, EMPTY_SHA256, None, &[TIMESTAMP])
            .unwrap();
        assert!(p.canonical_request.contains("\nx-tc-timestamp:1551113065\n"));
    }

    #[test]
    fn get_signs_the_raw_query_and_an_empty_payload() {
        let p = prepare_with(
            "GET",
            "https://cvm.ap-guangzhou.tencentcloudapi.com/?Limit=10&Offset=0&Name=a+b%2Fc&flag&Limit=2",
            &[("content-type", "  Application/X-WWW-Form-Urlencoded\t")],
            EMPTY_SHA256,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            p.canonical_request,
            format!(
                "GET\n/\nLimit=10&Offset=0&Name=a+b%2Fc&flag&Limit=2\n\
                 content-type:application/x-www-form-urlencoded\nhost:cvm.ap-guangzhou.tencentcloudapi.com\n\n\
                 content-type;host\n{EMPTY_SHA256}"
            )
        );
        assert_eq!(p.service, "cvm");
        let err = prepare_with("GET", "https://cvm.tencentcloudapi.com/", DOC_HEADERS, &"a".repeat(64), None, &[]);
        assert!(matches!(err, Err(Error::InvalidRequest(m)) if m.contains("GET request has a body")));
    }

    #[test]
    fn refuses_what_it_cannot_sign_faithfully() {
        let post_query =
            prepare_with("POST", "https://cvm.tencentcloudapi.com/?a=1", DOC_HEADERS, EMPTY_SHA256, None, &[]);
        assert!(matches!(post_query, Err(Error::InvalidRequest(m)) if m.contains("query string")));
        let no_ct = prepare_with("POST", "https://cvm.tencentcloudapi.com/", &[], EMPTY_SHA256, None, &[]);
        assert!(matches!(no_ct, Err(Error::InvalidRequest(m)) if m.contains("content-type` is missing")));
        let two_ct = prepare_with(
            "POST",
            "https://cvm.tencentcloudapi.com/",
            &[("content-type", "a"), ("Content-Type", "b")],
            EMPTY_SHA256,
            None,
            &[],
        );
        assert!(matches!(two_ct, Err(Error::InvalidRequest(m)) if m.contains("repeated")));
        let unsigned = prepare_with(
            "POST",
            "https://cvm.tencentcloudapi.com/",
            &[("content-type", "application/json"), ("X-TC-Content-SHA256", "UNSIGNED-PAYLOAD")],
            EMPTY_SHA256,
            None,
            &[],
        );
        assert!(matches!(unsigned, Err(Error::InvalidRequest(m)) if m.contains("always signs the payload")));
        let no_service = prepare_with("POST", "https://example.com/", DOC_HEADERS, EMPTY_SHA256, None, &[]);
        assert!(matches!(no_service, Err(Error::InvalidConfig(m)) if m.contains("cannot be inferred")));
        let url = Url::parse("https://cvm.tencentcloudapi.com/").unwrap();
        let unhashed = prepare(&RequestView {
            method: "POST",
            url: &url,
            headers: &headers(DOC_HEADERS),
            body_sha256: None,
            now_seconds: 0,
            service: None,
            extra_signed_headers: &[],
        });
        assert!(matches!(unhashed, Err(Error::InvalidRequest(m)) if m.contains("not hashed")));
    }

    #[test]
    fn config_parsing() {
        assert_eq!(
            parse_extra_signed_headers(Some(" X-TC-Action ; host,x-tc-region;x-tc-action")).unwrap(),
            ["x-tc-action", "x-tc-region"]
        );
        assert!(parse_extra_signed_headers(Some("x-tc-token")).is_err());
        assert!(parse_extra_signed_headers(Some("bad name")).is_err());
        assert!(check_service("cvm").is_ok());
        assert!(check_service("CVM").is_err());
        assert!(check_service("").is_err());
        assert_eq!(service_for(None, "tmt.ap-beijing.tencentcloudapi.com").unwrap(), "tmt");
        assert_eq!(service_for(Some("hunyuan"), "example.com").unwrap(), "hunyuan");
        assert!(service_for(None, "tencentcloudapi.com").is_err());
    }

    #[test]
    fn explain_names_every_piece() {
        let p = prepare_with("POST", "https://cvm.tencentcloudapi.com/", DOC_HEADERS, EMPTY_SHA256, None, &[]).unwrap();
        let text = explain(&p, &string_to_sign(&p, "abc"));
        assert!(text.contains("CanonicalRequest:\nPOST\n/\n\ncontent-type:"));
        assert!(text.contains("StringToSign:\nTC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\nabc\n"));
        assert!(text.contains("SignedHeaders: content-type;host\n"));
    }
}
