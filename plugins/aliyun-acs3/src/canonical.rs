//! ACS3 canonicalisation, free of host calls so that it can be unit-tested
//! natively: from a request to the headers to add, the canonical request and
//! the signed-header list.
//!
//! The rules follow Alibaba Cloud's "V3 request structure and signature" and
//! its OpenAPI SDKs (`alibabacloud_openapi_util` `get_authorization`):
//!
//! - the canonical URI is the path with every segment RFC 3986-encoded
//!   (upper-case hex, unreserved characters kept), segments as sent: `//` and
//!   `/./` are not collapsed;
//! - the canonical query decodes the query as the gateway does (`+` is a
//!   space, as the SDKs send spaces), sorts by parameter name then value,
//!   and RFC 3986-encodes names and values; a parameter without `=` gets an
//!   empty value;
//! - the signed headers are `host`, `content-type` and every `x-acs-*`
//!   header, lower-cased and sorted; values lose leading and trailing spaces
//!   and tabs only (inner runs are kept), and the values of a repeated header
//!   are sorted and joined with `,` as the SDK does.

use latchkey_plugin_sdk::canonical::{self as sdk, CanonicalRequest, PathEncoding, QueryOrder, Repeated, Rules};
use latchkey_plugin_sdk::encoding::is_sha256_hex;
use latchkey_plugin_sdk::http::{Plus, decode_query};
use latchkey_plugin_sdk::time::Utc;
use latchkey_plugin_sdk::{Error, Part, Url};

/// The request timestamp header.
pub const DATE: &str = "x-acs-date";
/// The anti-replay nonce header.
pub const NONCE: &str = "x-acs-signature-nonce";
/// The body hash header.
pub const CONTENT_SHA256: &str = "x-acs-content-sha256";
/// The access key id header the SDKs send alongside an STS token.
pub const ACCESS_KEY_ID: &str = "x-acs-accesskey-id";
/// The STS token header.
pub const SECURITY_TOKEN: &str = "x-acs-security-token";

/// Every header the scheme may set, lower case, as `describe` declares them.
pub const WRITTEN_HEADERS: [&str; 6] = [DATE, NONCE, CONTENT_SHA256, ACCESS_KEY_ID, SECURITY_TOKEN, "authorization"];

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
    /// Whether the credential carries an STS `security_token`.
    pub security_token: bool,
}

/// The outcome of canonicalisation.
pub struct Prepared {
    /// Headers to set before `authorization`, in order.
    pub headers: Vec<(String, Vec<Part>)>,
    /// The canonical request; secret fields are referred to by name.
    pub canonical_request: Vec<Part>,
    /// `host;x-acs-...`, sorted.
    pub signed_headers: String,
    /// Whether the nonce was generated rather than taken from the request.
    pub generated_nonce: bool,
}

/// ACS3's canonicalisation, as the module documentation describes it.
pub const RULES: Rules = Rules {
    normalize_path: false,
    path: PathEncoding::Reencode,
    query_order: QueryOrder::Decoded,
    header_value: sdk::trim,
    repeated: Repeated::Sorted,
};

/// Whether ACS3 signs a header, by lower-case name.
pub fn is_signed(lower_name: &str) -> bool {
    lower_name == "host" || lower_name == "content-type" || lower_name.starts_with("x-acs-")
}

/// The canonical URI: each `/`-separated segment decoded and re-encoded, so
/// that an escaped `/` (`%2F`) stays inside its segment and lower-case or
/// missing escapes come out as the gateway computes them. Working on bytes
/// keeps escapes of invalid UTF-8 intact.
pub fn canonical_uri(path: &str) -> String {
    sdk::canonical_uri(path, RULES.normalize_path, RULES.path)
}

/// The query as the gateway decodes it: `+` is a space, then `%XX` escapes
/// (`%2B` is a literal plus).
fn query_pairs(query: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    decode_query(query, Plus::Space)
}

/// The canonical query string, from the raw query (without `?`). The SDKs
/// sort decoded names (code point order, which UTF-8 byte order preserves);
/// values break ties between repeated names.
pub fn canonical_query(query: Option<&str>) -> String {
    sdk::canonical_query(&query_pairs(query), RULES.query_order)
}

/// The string to sign, from the hex SHA-256 of the canonical request.
pub fn string_to_sign(hashed_canonical_request: &str) -> String {
    format!("{}\n{hashed_canonical_request}", crate::ALGORITHM)
}

fn body_hash(body_sha256: Option<&str>) -> Result<&str, Error> {
    let hash = body_sha256.ok_or_else(|| {
        Error::InvalidRequest(
            "the request body was not hashed (streamed body): ACS3 signs the body's SHA-256 in \
             x-acs-content-sha256, so the body must be buffered and hashed before signing"
                .into(),
        )
    })?;
    if !is_sha256_hex(hash) {
        return Err(Error::InvalidRequest("body-sha256 is not 64 lower-case hex digits".into()));
    }
    Ok(hash)
}

/// Canonicalise a request. `nonce` is called only when the request carries
/// no `x-acs-signature-nonce` of its own.
pub fn prepare(req: &RequestView, nonce: impl FnOnce() -> String) -> Result<Prepared, Error> {
    let body = body_hash(req.body_sha256)?;
    if req.now_seconds < 0 {
        return Err(Error::InvalidRequest("the signing time is before 1970".into()));
    }
    let date = Utc::from_unix(req.now_seconds).rfc3339();

    // A caller-supplied nonce is kept: it costs nothing (the gateway only
    // refuses reuse) and lets documented examples be reproduced. The date is
    // never taken from the caller: a signature for a chosen future time would
    // outlive the caller's access.
    let caller_nonce = req
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(NONCE))
        .map(|(_, value)| sdk::trim(value))
        .filter(|value| !value.is_empty());
    let (nonce, generated_nonce) = match caller_nonce {
        Some(value) => (value, false),
        None => (nonce(), true),
    };

    // The secrets go in by reference, never trimmed here: stored secrets
    // are refused when they carry surrounding whitespace.
    let mut ours: Vec<(&'static str, Part)> =
        vec![(DATE, Part::text(date)), (NONCE, Part::text(nonce)), (CONTENT_SHA256, Part::text(body))];
    if req.security_token {
        ours.push((ACCESS_KEY_ID, Part::secret("access_key_id")));
        ours.push((SECURITY_TOKEN, Part::secret("security_token")));
    }

    // The headers as they will be sent: the caller's, minus the ones this
    // scheme replaces, plus its own. `host` comes from the URL, which is what
    // the host puts on the wire.
    let mut canonical = CanonicalRequest::new(RULES, req.method, &req.url.path);
    canonical.params(query_pairs(req.url.query.as_deref()));
    for (name, value) in req.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || !is_signed(&lower) || ours.iter().any(|(n, _)| *n == lower) {
            continue;
        }
        canonical.header(&lower, value);
    }
    canonical.header_parts("host", [Part::text(req.url.authority())]);
    for (name, value) in &ours {
        canonical.header_parts(name, [value.clone()]);
    }
    let canonical = canonical.finish(body)?;

    let headers = ours.into_iter().map(|(name, value)| (name.to_string(), vec![value])).collect();
    Ok(Prepared {
        headers,
        canonical_request: canonical.parts,
        signed_headers: canonical.signed_headers,
        generated_nonce,
    })
}

/// The canonical request as text, secret fields shown as `<secret:NAME>`.
pub fn render(parts: &[Part]) -> String {
    sdk::render(parts, |field| format!("<secret:{field}>"))
}

/// The `--explain` text: canonical request, string to sign, signed headers.
pub fn explain(prepared: &Prepared, string_to_sign: &str) -> String {
    let mut out = format!(
        "Algorithm: {}\nCanonicalRequest:\n{}\nStringToSign:\n{string_to_sign}\nSignedHeaders: {}\n",
        crate::ALGORITHM,
        render(&prepared.canonical_request),
        prepared.signed_headers,
    );
    if prepared.canonical_request.iter().any(|p| matches!(p, Part::Secret(_))) {
        out.push_str("Note: <secret:...> stands for a secret value; the hash covers the real value.\n");
    }
    if prepared.generated_nonce {
        out.push_str(
            "Note: x-acs-signature-nonce was drawn at random for this explanation; each signed \
             request draws its own unless the request sets one.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn prepare_for(url: &str, method: &str, hdrs: &[(&str, &str)], token: bool) -> Prepared {
        let url = Url::parse(url).unwrap();
        let hdrs = headers(hdrs);
        let view = RequestView {
            method,
            url: &url,
            headers: &hdrs,
            body_sha256: Some(EMPTY),
            now_seconds: 1_698_315_752, // 2023-10-26T10:22:32Z
            security_token: token,
        };
        prepare(&view, || "generated".to_string()).unwrap()
    }

    /// The worked example of "V3 request structure and signature".
    #[test]
    fn reproduces_the_documented_canonical_request() {
        let p = prepare_for(
            "https://ecs.cn-shanghai.aliyuncs.com/?ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai",
            "POST",
            &[
                ("x-acs-action", "RunInstances"),
                ("x-acs-version", "2014-05-26"),
                ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ],
            false,
        );
        assert_eq!(
            render(&p.canonical_request),
            "POST\n/\nImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n\
             host:ecs.cn-shanghai.aliyuncs.com\n\
             x-acs-action:RunInstances\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2023-10-26T10:22:32Z\n\
             x-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n\
             x-acs-version:2014-05-26\n\n\
             host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(!p.generated_nonce);
        let names: Vec<&str> = p.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [DATE, NONCE, CONTENT_SHA256]);
        assert_eq!(
            string_to_sign("7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"),
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
    }

    #[test]
    fn query_is_form_decoded_sorted_and_reencoded() {
        // The SDK's own case: ' ~/*-+' encodes to '%20~%2F%2A-%2B'.
        assert_eq!(canonical_query(Some("test=+~%2F*-%2B")), "test=%20~%2F%2A-%2B");
        assert_eq!(canonical_query(Some("b=2&a&&a=1&A=x&c=")), "A=x&a=&a=1&b=2&c=");
        assert_eq!(canonical_query(Some("k=%e4%b8%ad&k2=%zz")), "k=%E4%B8%AD&k2=%25zz");
        assert_eq!(canonical_query(Some("")), "");
        assert_eq!(canonical_query(None), "");
        // Decoded names sort by code point: `é` after `z`.
        assert_eq!(canonical_query(Some("%C3%A9=1&z=2")), "z=2&%C3%A9=1");
    }

    #[test]
    fn uri_segments_are_reencoded_without_normalising() {
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//a/./b%2fc/../d e+f*"), "//a/./b%2Fc/../d%20e%2Bf%2A");
        assert_eq!(canonical_uri("/%E4%B8%AD/ü/%ff"), "/%E4%B8%AD/%C3%BC/%FF");
        assert_eq!(canonical_uri("/clusters/c1/triggers/"), "/clusters/c1/triggers/");
    }

    #[test]
    fn signs_host_content_type_and_acs_headers_only() {
        let p = prepare_for(
            "http://Example.com:8080/x?b=1",
            "GET",
            &[
                ("Content-Type", "  application/json;  charset=utf-8 "),
                ("User-Agent", "test"),
                ("Host", "ignored.example"),
                ("X-Acs-Extra", "b"),
                ("x-acs-extra", "\ta  a"),
                ("Authorization", "old"),
                ("x-acs-date", "2001-01-01T00:00:00Z"),
                ("x-acs-content-sha256", "forged"),
            ],
            false,
        );
        let cr = render(&p.canonical_request);
        assert!(cr.starts_with("GET\n/x\nb=1\ncontent-type:application/json;  charset=utf-8\nhost:example.com:8080\n"));
        assert!(cr.contains("\nx-acs-date:2023-10-26T10:22:32Z\n"), "{cr}");
        assert!(cr.contains("\nx-acs-extra:a  a,b\n"), "{cr}");
        assert!(cr.contains(&format!("\nx-acs-content-sha256:{EMPTY}\n")), "{cr}");
        assert!(cr.contains("\nx-acs-signature-nonce:generated\n"), "{cr}");
        assert_eq!(
            p.signed_headers,
            "content-type;host;x-acs-content-sha256;x-acs-date;x-acs-extra;x-acs-signature-nonce"
        );
        assert!(p.generated_nonce);
    }

    #[test]
    fn sts_token_is_signed_by_reference() {
        let p = prepare_for("https://ecs.aliyuncs.com/", "GET", &[("x-acs-security-token", "caller")], true);
        assert_eq!(
            p.signed_headers,
            "host;x-acs-accesskey-id;x-acs-content-sha256;x-acs-date;x-acs-security-token;x-acs-signature-nonce"
        );
        let cr = render(&p.canonical_request);
        assert!(cr.contains("\nx-acs-accesskey-id:<secret:access_key_id>\n"), "{cr}");
        assert!(cr.contains("\nx-acs-security-token:<secret:security_token>\n"), "{cr}");
        assert!(!cr.contains("caller"));
        assert!(p.canonical_request.iter().any(|x| matches!(x, Part::Secret(f) if f == "security_token")));
        let names: Vec<&str> = p.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [DATE, NONCE, CONTENT_SHA256, ACCESS_KEY_ID, SECURITY_TOKEN]);
    }

    #[test]
    fn refuses_unhashed_bodies() {
        let url = Url::parse("https://ecs.aliyuncs.com/").unwrap();
        let mut view = RequestView {
            method: "POST",
            url: &url,
            headers: &[],
            body_sha256: None,
            now_seconds: 0,
            security_token: false,
        };
        assert!(matches!(prepare(&view, String::new), Err(Error::InvalidRequest(m)) if m.contains("not hashed")));
        view.body_sha256 = Some("ABC");
        assert!(matches!(prepare(&view, String::new), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn explain_names_every_piece() {
        let p = prepare_for("https://ecs.aliyuncs.com/", "GET", &[], true);
        let text = explain(&p, "ACS3-HMAC-SHA256\nabc");
        assert!(text.contains("CanonicalRequest:\nGET\n/\n\nhost:ecs.aliyuncs.com\n"));
        assert!(text.contains("StringToSign:\nACS3-HMAC-SHA256\nabc\n"));
        assert!(text.contains("SignedHeaders: host;x-acs-accesskey-id;"));
        assert!(text.contains("drawn at random"));
    }
}
