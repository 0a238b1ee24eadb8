//! An in-memory S3 that checks requests the way S3 does, for the tests that
//! send S3 calls through the broker: path-style addressing, SigV4 verified by
//! recomputing it with the `aws-sigv4` crate (S3's flavour: single
//! percent-encoding, no path normalisation, `x-amz-content-sha256` signed),
//! the payload hash, `aws-chunked` bodies (decoded, with their chunk and
//! trailer signatures checked when signed, and their trailing checksums
//! moved into the object), and the flexible checksums (`x-amz-checksum-*`,
//! in a header or a trailer).
//!
//! It is strict where S3 is strict, so a broker that forwards a request S3
//! would refuse fails here too. Like S3, a body sent with
//! `Content-Encoding: aws-chunked` but a plain SHA-256 as its content hash is
//! stored as received, framing and all: a later GET then returns the framed
//! bytes and the test comparing them fails.
//!
//! What it does not do: presigned URLs, virtual-hosted addressing, versions,
//! copies, pagination of listings, `Content-MD5` (ring has no MD5, so it is
//! accepted unchecked). ETags are quoted hex, but of a SHA-256 prefix rather
//! than an MD5 (botocore and s3transfer never check them against the body).
//! Every request must be signed for `us-east-1` and the service `s3`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};

/// The region every request must be signed for.
const REGION: &str = "us-east-1";
/// The largest body read, framing included.
const MAX_BODY: usize = 64 << 20;
/// How far `x-amz-date` may be from now, as S3 allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// S3's smallest part, except the last one.
const MIN_PART: usize = 5 << 20;
const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// What the fake S3 holds: objects by (bucket, key) with their bytes, plus a log of refused requests.
#[derive(Clone, Default)]
pub(crate) struct S3State {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    buckets: BTreeMap<String, BTreeMap<String, Object>>,
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    refusals: Vec<String>,
}

struct Object {
    data: Vec<u8>,
    etag: String,
    /// Only for an object uploaded whole with a checksum (or completed with a
    /// full-object one): S3 returns it on a GET with `x-amz-checksum-mode`.
    checksum: Option<(Algo, String)>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    meta: Vec<(String, String)>,
}

struct Upload {
    bucket: String,
    key: String,
    algorithm: Option<Algo>,
    content_type: Option<String>,
    meta: Vec<(String, String)>,
    parts: BTreeMap<u32, Part>,
}

struct Part {
    data: Vec<u8>,
    etag: String,
    checksum: Option<(Algo, String)>,
}

impl S3State {
    /// The bytes stored under `key` in `bucket`.
    pub(crate) fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().buckets.get(bucket)?.get(key).map(|o| o.data.clone())
    }

    /// The keys in `bucket`, sorted.
    pub(crate) fn keys(&self, bucket: &str) -> Vec<String> {
        self.lock().buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    /// One line per refused request: the request line, S3's error code, and why.
    /// A `NoSuchKey` is an answer, not a refusal, and is not listed.
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.lock().refusals.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An S3 that accepts only requests signed with `access_key`/`secret` (the
/// real credential the broker must sign with) for the Host `host` (the value
/// the upstream is reached at, e.g. "localhost:PORT", filled in after
/// binding; until then the request's own Host is used).
pub(crate) fn s3_upstream(
    state: S3State,
    access_key: &'static str,
    secret: &'static str,
    host: Arc<OnceLock<String>>,
) -> Router {
    let ctx = Arc::new(Ctx { state, access_key, secret, host });
    Router::new().fallback(move |req: Request<Body>| {
        let ctx = ctx.clone();
        async move { ctx.handle(req).await }
    })
}

struct Ctx {
    state: S3State,
    access_key: &'static str,
    secret: &'static str,
    host: Arc<OnceLock<String>>,
}

/// An S3 error response.
#[derive(Debug)]
struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
    S3Error { status, code, message: message.into() }
}

fn bad(code: &'static str, message: impl Into<String>) -> S3Error {
    err(StatusCode::BAD_REQUEST, code, message)
}

fn denied(code: &'static str, message: impl Into<String>) -> S3Error {
    err(StatusCode::FORBIDDEN, code, message)
}

type Reply = Result<Response<Body>, S3Error>;

impl Ctx {
    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let line = format!("{} {}", parts.method, parts.uri);
        let head = parts.method == Method::HEAD;
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return self.refuse(&line, head, bad("IncompleteBody", format!("reading the body failed: {e}"))),
        };
        match self.serve(&parts, &body) {
            Ok(r) => r,
            Err(e) => self.refuse(&line, head, e),
        }
    }

    fn refuse(&self, line: &str, head: bool, e: S3Error) -> Response<Body> {
        if e.code != "NoSuchKey" {
            self.state.lock().refusals.push(format!("{line}: {}: {}", e.code, e.message));
        }
        let body = if head {
            Body::empty()
        } else {
            Body::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>fake</RequestId></Error>",
                e.code,
                xml_escape(&e.message)
            ))
        };
        Response::builder()
            .status(e.status)
            .header("content-type", "application/xml")
            .header("x-amz-request-id", "fake")
            .body(body)
            .expect("a valid response")
    }

    fn serve(&self, parts: &Parts, raw: &[u8]) -> Reply {
        let headers = &parts.headers;
        if headers.values().any(|v| String::from_utf8_lossy(v.as_bytes()).contains("lk_agt_")) {
            return Err(denied("AccessDenied", "an agent token reached the upstream"));
        }
        if let Some(cl) = headers.get("content-length") {
            let cl: usize = cl
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("InvalidArgument", "bad Content-Length"))?;
            if cl != raw.len() {
                return Err(bad("IncompleteBody", format!("Content-Length is {cl} but {} bytes came", raw.len())));
            }
        }
        let content_sha = header(headers, "x-amz-content-sha256")
            .ok_or_else(|| bad("InvalidRequest", "Missing required header for this request: x-amz-content-sha256"))?;
        let mode = PayloadMode::parse(content_sha)?;
        let signer = self.verify_signature(parts, content_sha)?;
        let (payload, trailers) = match mode {
            PayloadMode::Hash(h) => {
                let actual = hex::encode(ring::digest::digest(&ring::digest::SHA256, raw));
                if actual != h.to_ascii_lowercase() {
                    return Err(bad(
                        "XAmzContentSHA256Mismatch",
                        format!(
                            "The provided 'x-amz-content-sha256' header ({h}) does not match what was computed ({actual})."
                        ),
                    ));
                }
                // Stored as received, even with `Content-Encoding: aws-chunked`: S3 decodes only the
                // streaming modes.
                (raw.to_vec(), Vec::new())
            }
            PayloadMode::Unsigned => (raw.to_vec(), Vec::new()),
            PayloadMode::Streaming { signed, trailer } => {
                let decoded_len = header(headers, "x-amz-decoded-content-length").ok_or_else(|| {
                    err(
                        StatusCode::LENGTH_REQUIRED,
                        "MissingContentLength",
                        "x-amz-decoded-content-length is required with an aws-chunked body",
                    )
                })?;
                let (payload, trailers) = decode_aws_chunked(raw, signed.then_some(&signer), trailer)?;
                if decoded_len.parse::<usize>().ok() != Some(payload.len()) {
                    return Err(bad(
                        "IncompleteBody",
                        format!(
                            "x-amz-decoded-content-length is {decoded_len} but the chunks hold {} bytes",
                            payload.len()
                        ),
                    ));
                }
                let declared: Vec<String> = header(headers, "x-amz-trailer")
                    .map(|t| t.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect())
                    .unwrap_or_default();
                for name in &declared {
                    if !trailers.iter().any(|(n, _)| n == name) {
                        return Err(bad("InvalidRequest", format!("the declared trailer {name} is not in the body")));
                    }
                }
                if let Some((n, _)) = trailers.iter().find(|(n, _)| !declared.contains(n)) {
                    return Err(bad("InvalidRequest", format!("the trailer {n} was not declared in x-amz-trailer")));
                }
                (payload, trailers)
            }
        };
        let path = parts.uri.path();
        let rest = path.strip_prefix('/').ok_or_else(|| bad("InvalidURI", "the path does not start with /"))?;
        let (bucket, key) = match rest.split_once('/') {
            Some((b, k)) if !k.is_empty() => (b, Some(percent_decode(k)?)),
            Some((b, _)) => (b, None),
            None => (rest, None),
        };
        let bucket = percent_decode(bucket)?;
        if bucket.is_empty() {
            return Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "ListBuckets is not implemented"));
        }
        let query = parse_query(parts.uri.query().unwrap_or_default())?;
        let req = Req { headers, bucket, query, payload, trailers, raw_len: raw.len() };
        let m = &parts.method;
        match key {
            None if m == Method::PUT => self.create_bucket(&req),
            None if m == Method::HEAD => self.head_bucket(&req),
            None if m == Method::GET && req.query.get("list-type").map(String::as_str) == Some("2") => {
                self.list_objects_v2(&req)
            }
            Some(key) if m == Method::PUT && req.query.contains_key("uploadId") => self.upload_part(&req, &key),
            Some(_) if m == Method::PUT && headers.contains_key("x-amz-copy-source") => {
                Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "CopyObject is not implemented"))
            }
            Some(key) if m == Method::PUT => self.put_object(&req, &key),
            Some(key) if m == Method::POST && req.query.contains_key("uploads") => self.create_upload(&req, &key),
            Some(key) if m == Method::POST && req.query.contains_key("uploadId") => self.complete_upload(&req, &key),
            Some(key) if m == Method::GET || m == Method::HEAD => self.get_object(&req, &key, m == Method::HEAD),
            Some(key) if m == Method::DELETE && req.query.contains_key("uploadId") => self.abort_upload(&req, &key),
            Some(key) if m == Method::DELETE => self.delete_object(&req, &key),
            _ => Err(err(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "this operation is not implemented here")),
        }
    }

    /// Checks the `Authorization` header as S3 does; returns what checking
    /// chunk signatures needs.
    fn verify_signature(&self, parts: &Parts, content_sha: &str) -> Result<Signer, S3Error> {
        let headers = &parts.headers;
        if parts.uri.query().is_some_and(|q| q.contains("X-Amz-Signature=")) {
            return Err(denied("AccessDenied", "presigned URLs are not supported by this fake S3"));
        }
        let auth =
            header(headers, "authorization").ok_or_else(|| denied("AccessDenied", "Anonymous access is refused"))?;
        let client = AuthHeader::parse(auth)?;
        let scope: Vec<&str> = client.credential.split('/').collect();
        let [key_id, date, region, service, terminator] = scope[..] else {
            return Err(bad(
                "AuthorizationHeaderMalformed",
                format!("malformed credential scope {}", client.credential),
            ));
        };
        if terminator != "aws4_request" || service != "s3" {
            return Err(bad(
                "AuthorizationHeaderMalformed",
                format!("the credential scope {} is not for s3", client.credential),
            ));
        }
        if key_id != self.access_key {
            return Err(denied(
                "InvalidAccessKeyId",
                format!("The AWS Access Key Id you provided ({key_id}) does not exist in our records."),
            ));
        }
        if region != REGION {
            return Err(bad(
                "AuthorizationHeaderMalformed",
                format!("the region '{region}' is wrong; expecting '{REGION}'"),
            ));
        }
        if headers.contains_key("x-amz-security-token") {
            return Err(bad("InvalidToken", "The provided token is malformed or otherwise invalid."));
        }
        let amz_date = header(headers, "x-amz-date")
            .ok_or_else(|| denied("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"))?;
        let time = parse_amz_date(amz_date).ok_or_else(|| {
            denied("AccessDenied", format!("x-amz-date {amz_date} is not of the form YYYYMMDDTHHMMSSZ"))
        })?;
        if !amz_date.starts_with(date) || date.len() != 8 {
            return Err(bad(
                "AuthorizationHeaderMalformed",
                format!("Invalid credential date {date}: it is not the same as X-Amz-Date {amz_date}."),
            ));
        }
        let now = SystemTime::now();
        let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
        if skew > MAX_SKEW {
            return Err(denied(
                "RequestTimeTooSkewed",
                format!("The difference between the request time ({amz_date}) and the current time is too large."),
            ));
        }
        let unsigned: Vec<&str> = headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| n.starts_with("x-amz-") && !client.signed_headers.iter().any(|s| s == n))
            .collect();
        if !unsigned.is_empty() {
            return Err(denied(
                "AccessDenied",
                format!("There were headers present in the request which were not signed: {}", unsigned.join(", ")),
            ));
        }
        // The Host the client signed is the one it sent; it must be this
        // upstream's, as S3 routes by it.
        let sent_host =
            header(headers, "host").map(str::to_string).or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let host = match (self.host.get(), sent_host) {
            (Some(ours), Some(sent)) if *ours != sent => {
                return Err(bad("InvalidRequest", format!("the Host header {sent} is not this upstream's ({ours})")));
            }
            (Some(ours), _) => ours.clone(),
            (None, Some(sent)) => sent,
            (None, None) => return Err(bad("InvalidRequest", "no Host header")),
        };

        let mut signed: Vec<(&str, String)> = vec![("host", host.clone())];
        for name in &client.signed_headers {
            if matches!(name.as_str(), "host" | "x-amz-date" | "x-amz-content-sha256") {
                continue; // the signer adds these three itself
            }
            for v in headers.get_all(name.as_str()) {
                let v = v.to_str().map_err(|_| bad("InvalidArgument", format!("the header {name} is not ASCII")))?;
                signed.push((name.as_str(), v.to_string()));
            }
        }
        let identity: Identity =
            aws_credential_types::Credentials::new(self.access_key, self.secret, None, None, "s3-upstream").into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        // Sign exactly the headers the client listed, whatever they are.
        settings.excluded_headers = Some(Vec::new());
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| bad("InvalidRequest", e.to_string()))?
            .into();
        let uri = format!("https://{host}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let signable = SignableRequest::new(
            parts.method.as_str(),
            uri,
            signed.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Precomputed(content_sha.to_string()),
        )
        .map_err(|e| bad("InvalidRequest", format!("cannot canonicalise the request: {e}")))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| bad("InvalidRequest", e.to_string()))?.into_parts();
        let (expected, _) = instructions.into_parts();
        let expected = expected
            .iter()
            .find(|h| h.name() == "authorization")
            .map(|h| h.value().to_string())
            .ok_or_else(|| bad("InvalidRequest", "the signer produced no Authorization"))?;
        let expected = AuthHeader::parse(&expected)?;
        if expected.signed_headers != client.signed_headers {
            return Err(denied(
                "SignatureDoesNotMatch",
                format!(
                    "SignedHeaders {} do not match the request's ({}); S3 needs host, x-amz-date and x-amz-content-sha256 signed, and every signed header sent",
                    client.signed_headers.join(";"),
                    expected.signed_headers.join(";")
                ),
            ));
        }
        if expected.signature != client.signature {
            return Err(denied(
                "SignatureDoesNotMatch",
                format!(
                    "The request signature we calculated does not match the signature you provided (signed headers {}, host {host}, payload {content_sha})",
                    client.signed_headers.join(";")
                ),
            ));
        }
        Ok(Signer { identity, time, seed: client.signature })
    }

    fn create_bucket(&self, req: &Req<'_>) -> Reply {
        self.state.lock().buckets.entry(req.bucket.clone()).or_default();
        Ok(Response::builder().header("location", format!("/{}", req.bucket)).body(Body::empty()).expect("response"))
    }

    fn head_bucket(&self, req: &Req<'_>) -> Reply {
        if !self.state.lock().buckets.contains_key(&req.bucket) {
            return Err(no_such_bucket(&req.bucket));
        }
        Ok(Response::builder().header("x-amz-bucket-region", REGION).body(Body::empty()).expect("response"))
    }

    fn list_objects_v2(&self, req: &Req<'_>) -> Reply {
        let q = |n: &str| req.query.get(n).cloned().unwrap_or_default();
        let (prefix, delimiter, start_after) = (q("prefix"), q("delimiter"), q("start-after"));
        let url = q("encoding-type") == "url";
        let enc = |s: &str| if url { url_encode(s) } else { s.to_string() };
        let inner = self.state.lock();
        let bucket = inner.buckets.get(&req.bucket).ok_or_else(|| no_such_bucket(&req.bucket))?;
        let mut contents = String::new();
        let mut common = BTreeSet::new();
        let mut count = 0;
        for (key, o) in bucket.range(start_after.clone()..) {
            if *key == start_after || !key.starts_with(&prefix) {
                continue;
            }
            count += 1;
            let rest = &key[prefix.len()..];
            match rest.find(&delimiter) {
                Some(i) if !delimiter.is_empty() => {
                    common.insert(format!("{prefix}{}", &rest[..i + delimiter.len()]));
                }
                _ => contents.push_str(&format!(
                    "<Contents><Key>{}</Key><LastModified>2025-01-01T00:00:00.000Z</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                    xml_escape(&enc(key)),
                    xml_escape(&o.etag),
                    o.data.len()
                )),
            }
        }
        let common: String = common
            .iter()
            .map(|p| format!("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", xml_escape(&enc(p))))
            .collect();
        let encoding = if url { "<EncodingType>url</EncodingType>" } else { "" };
        let delimiter = if delimiter.is_empty() {
            String::new()
        } else {
            format!("<Delimiter>{}</Delimiter>", xml_escape(&enc(&delimiter)))
        };
        Ok(xml_response(format!(
            "<ListBucketResult xmlns=\"{XMLNS}\"><Name>{}</Name><Prefix>{}</Prefix>{delimiter}<KeyCount>{count}</KeyCount><MaxKeys>1000</MaxKeys>{encoding}<IsTruncated>false</IsTruncated>{contents}{common}</ListBucketResult>",
            xml_escape(&req.bucket),
            xml_escape(&enc(&prefix)),
        )))
    }

    fn put_object(&self, req: &Req<'_>, key: &str) -> Reply {
        req.require_content_length()?;
        let checksum = req.checksum()?;
        let etag = etag(&req.payload);
        let mut inner = self.state.lock();
        let bucket = inner.buckets.get_mut(&req.bucket).ok_or_else(|| no_such_bucket(&req.bucket))?;
        bucket.insert(
            key.to_string(),
            Object {
                data: req.payload.clone(),
                etag: etag.clone(),
                checksum: checksum.clone(),
                content_type: header(req.headers, "content-type").map(str::to_string),
                content_encoding: stored_encoding(req.headers),
                meta: req.meta(),
            },
        );
        let mut r = Response::builder().header("etag", etag);
        if let Some((algo, value)) = checksum {
            r = r.header(algo.header(), value).header("x-amz-checksum-type", "FULL_OBJECT");
        }
        Ok(r.body(Body::empty()).expect("response"))
    }

    fn create_upload(&self, req: &Req<'_>, key: &str) -> Reply {
        let algorithm = match header(req.headers, "x-amz-checksum-algorithm") {
            Some(a) => {
                Some(Algo::parse(a).ok_or_else(|| bad("InvalidRequest", format!("unknown checksum algorithm {a}")))?)
            }
            None => None,
        };
        let mut inner = self.state.lock();
        if !inner.buckets.contains_key(&req.bucket) {
            return Err(no_such_bucket(&req.bucket));
        }
        inner.next_upload += 1;
        let id = format!("fake-upload-{}", inner.next_upload);
        inner.uploads.insert(
            id.clone(),
            Upload {
                bucket: req.bucket.clone(),
                key: key.to_string(),
                algorithm,
                content_type: header(req.headers, "content-type").map(str::to_string),
                meta: req.meta(),
                parts: BTreeMap::new(),
            },
        );
        let mut r = xml_response(format!(
            "<InitiateMultipartUploadResult xmlns=\"{XMLNS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            xml_escape(&req.bucket),
            xml_escape(key)
        ));
        if let Some(a) = algorithm {
            let h = r.headers_mut();
            h.insert("x-amz-checksum-algorithm", a.name().to_ascii_uppercase().parse().expect("ascii"));
            h.insert("x-amz-checksum-type", "COMPOSITE".parse().expect("ascii"));
        }
        Ok(r)
    }

    fn upload_part(&self, req: &Req<'_>, key: &str) -> Reply {
        req.require_content_length()?;
        let number: u32 =
            req.query.get("partNumber").and_then(|n| n.parse().ok()).filter(|n| (1..=10_000).contains(n)).ok_or_else(
                || bad("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive"),
            )?;
        let checksum = req.checksum()?;
        let mut inner = self.state.lock();
        let upload = req.upload(&mut inner, key)?;
        if let Some(want) = upload.algorithm
            && checksum.as_ref().map(|(a, _)| *a) != Some(want)
        {
            return Err(bad(
                "InvalidRequest",
                format!(
                    "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                    want.name(),
                    checksum.as_ref().map(|(a, _)| a.name()).unwrap_or("null")
                ),
            ));
        }
        let etag = etag(&req.payload);
        upload.parts.insert(number, Part { data: req.payload.clone(), etag: etag.clone(), checksum: checksum.clone() });
        let mut r = Response::builder().header("etag", etag);
        if let Some((algo, value)) = checksum {
            r = r.header(algo.header(), value);
        }
        Ok(r.body(Body::empty()).expect("response"))
    }

    fn complete_upload(&self, req: &Req<'_>, key: &str) -> Reply {
        let xml = std::str::from_utf8(&req.payload).map_err(|_| bad("MalformedXML", "the body is not UTF-8"))?;
        let listed = elements(xml, "Part")
            .into_iter()
            .map(|p| {
                let number = elements(p, "PartNumber").first().and_then(|n| n.trim().parse::<u32>().ok());
                let etag = elements(p, "ETag").first().map(|e| xml_unescape(e));
                let sums: Vec<(Algo, String)> = Algo::ALL
                    .iter()
                    .filter_map(|a| {
                        elements(p, a.xml_member()).first().map(|v| (*a, xml_unescape(v).trim().to_string()))
                    })
                    .collect();
                match (number, etag) {
                    (Some(n), Some(e)) => Ok((n, e, sums)),
                    _ => Err(bad("MalformedXML", "a Part lacks its PartNumber or ETag")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listed.is_empty() {
            return Err(bad("MalformedXML", "CompleteMultipartUpload lists no parts"));
        }
        let mut inner = self.state.lock();
        let upload = req.upload(&mut inner, key)?;
        let mut data = Vec::new();
        let mut etags = Vec::new();
        for (i, (number, etag, sums)) in listed.iter().enumerate() {
            if i > 0 && *number <= listed[i - 1].0 {
                return Err(bad("InvalidPartOrder", "The list of parts was not in ascending order."));
            }
            let part = upload.parts.get(number).filter(|p| unquote(&p.etag) == unquote(etag)).ok_or_else(|| {
                bad("InvalidPart", format!("Part {number} with ETag {etag} was not uploaded to this upload"))
            })?;
            if let Some(want) = upload.algorithm {
                match sums.iter().find(|(a, _)| *a == want) {
                    None => {
                        return Err(bad(
                            "InvalidRequest",
                            format!(
                                "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {number} in the request.",
                                want.name()
                            ),
                        ));
                    }
                    Some((_, v)) if part.checksum.as_ref().map(|(_, c)| c) != Some(v) => {
                        return Err(bad("InvalidPart", format!("the {} of part {number} is not {v}", want.name())));
                    }
                    Some(_) => {}
                }
            }
            if i + 1 < listed.len() && part.data.len() < MIN_PART {
                return Err(bad(
                    "EntityTooSmall",
                    format!(
                        "Part {number} has {} bytes; all but the last must have at least {MIN_PART}",
                        part.data.len()
                    ),
                ));
            }
            data.extend_from_slice(&part.data);
            etags.push(unquote(&part.etag).to_string());
        }
        // A full-object checksum, if one is given, is of the whole object.
        let full = match req.header_checksum()? {
            Some((algo, value)) => {
                let actual = algo.compute(&data);
                if actual != value {
                    return Err(bad("BadDigest", format!("the full-object {} is {actual}, not {value}", algo.name())));
                }
                Some((algo, value))
            }
            None => None,
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, etags.concat().as_bytes());
        let etag = format!("\"{}-{}\"", &hex::encode(digest)[..32], listed.len());
        let upload = inner.uploads.remove(req.query.get("uploadId").expect("routed on uploadId")).expect("just found");
        let object = Object {
            data,
            etag: etag.clone(),
            checksum: full,
            content_type: upload.content_type,
            content_encoding: None,
            meta: upload.meta,
        };
        inner.buckets.get_mut(&req.bucket).ok_or_else(|| no_such_bucket(&req.bucket))?.insert(key.to_string(), object);
        Ok(xml_response(format!(
            "<CompleteMultipartUploadResult xmlns=\"{XMLNS}\"><Location>/{}/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml_escape(&req.bucket),
            xml_escape(&url_encode(key)),
            xml_escape(&req.bucket),
            xml_escape(key),
            xml_escape(&etag)
        )))
    }

    fn abort_upload(&self, req: &Req<'_>, key: &str) -> Reply {
        let mut inner = self.state.lock();
        req.upload(&mut inner, key)?;
        inner.uploads.remove(req.query.get("uploadId").expect("routed on uploadId"));
        Ok(Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).expect("response"))
    }

    fn delete_object(&self, req: &Req<'_>, key: &str) -> Reply {
        let mut inner = self.state.lock();
        let bucket = inner.buckets.get_mut(&req.bucket).ok_or_else(|| no_such_bucket(&req.bucket))?;
        bucket.remove(key);
        Ok(Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).expect("response"))
    }

    fn get_object(&self, req: &Req<'_>, key: &str, head: bool) -> Reply {
        let inner = self.state.lock();
        let bucket = inner.buckets.get(&req.bucket).ok_or_else(|| no_such_bucket(&req.bucket))?;
        let o = bucket.get(key).ok_or_else(|| {
            err(StatusCode::NOT_FOUND, "NoSuchKey", format!("The specified key does not exist: {key}"))
        })?;
        if let Some(m) = header(req.headers, "if-match")
            && m != "*"
            && !m.split(',').any(|e| unquote(e.trim()) == unquote(&o.etag))
        {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            ));
        }
        if let Some(m) = header(req.headers, "if-none-match")
            && (m == "*" || m.split(',').any(|e| unquote(e.trim()) == unquote(&o.etag)))
        {
            return Ok(Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("etag", &o.etag)
                .body(Body::empty())
                .expect("response"));
        }
        let len = o.data.len();
        let range = match header(req.headers, "range") {
            Some(r) => Some(parse_range(r, len).ok_or_else(|| {
                err(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    format!("The requested range {r} is not satisfiable"),
                )
            })?),
            None => None,
        };
        let (start, end) = range.unwrap_or((0, len));
        let mut r = Response::builder()
            .header("etag", &o.etag)
            .header("accept-ranges", "bytes")
            .header("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT")
            .header("content-type", o.content_type.as_deref().unwrap_or("binary/octet-stream"))
            .header("content-length", end - start);
        if let Some(e) = &o.content_encoding {
            r = r.header("content-encoding", e);
        }
        for (k, v) in &o.meta {
            r = r.header(k, v);
        }
        if range.is_some() {
            r = r
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {start}-{}/{len}", end - 1));
        } else if header(req.headers, "x-amz-checksum-mode").is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"))
            && let Some((algo, value)) = &o.checksum
        {
            // Only for an object uploaded whole: botocore checks this against the
            // body, and skips only the composite (`…-N`) form.
            r = r.header(algo.header(), value).header("x-amz-checksum-type", "FULL_OBJECT");
        }
        let body = if head { Body::empty() } else { Body::from(o.data[start..end].to_vec()) };
        Ok(r.body(body).expect("response"))
    }
}

/// One parsed request, after the signature and the payload were checked.
struct Req<'a> {
    headers: &'a HeaderMap,
    bucket: String,
    query: BTreeMap<String, String>,
    payload: Vec<u8>,
    /// Trailing headers of an aws-chunked body, names in lower case.
    trailers: Vec<(String, String)>,
    raw_len: usize,
}

impl Req<'_> {
    /// S3 takes no plain `Transfer-Encoding: chunked` upload: without
    /// aws-chunked framing the length must be known.
    fn require_content_length(&self) -> Result<(), S3Error> {
        if self.headers.contains_key("content-length") || self.headers.contains_key("x-amz-decoded-content-length") {
            return Ok(());
        }
        Err(err(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            format!("You must provide the Content-Length HTTP header ({} bytes came without one).", self.raw_len),
        ))
    }

    fn meta(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-amz-meta-"))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect()
    }

    /// The `x-amz-checksum-*` headers' single checksum, if any.
    fn header_checksum(&self) -> Result<Option<(Algo, String)>, S3Error> {
        let mut found = Vec::new();
        for (name, value) in self.headers {
            let Some(algo) = name.as_str().strip_prefix("x-amz-checksum-") else { continue };
            if matches!(algo, "algorithm" | "type" | "mode") {
                continue;
            }
            let algo =
                Algo::parse(algo).ok_or_else(|| bad("InvalidRequest", format!("unknown checksum header {name}")))?;
            let value = value.to_str().map_err(|_| bad("InvalidRequest", format!("{name} is not ASCII")))?;
            found.push((algo, value.trim().to_string()));
        }
        if found.len() > 1 {
            return Err(bad(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            ));
        }
        Ok(found.pop())
    }

    /// The body's checksum from a header or a trailer, checked against the
    /// body: `BadDigest` if it differs.
    fn checksum(&self) -> Result<Option<(Algo, String)>, S3Error> {
        let mut found: Vec<(Algo, String)> = self.header_checksum()?.into_iter().collect();
        for (name, value) in &self.trailers {
            let Some(algo) = name.strip_prefix("x-amz-checksum-") else {
                return Err(bad("InvalidRequest", format!("the trailer {name} is not a checksum")));
            };
            let algo =
                Algo::parse(algo).ok_or_else(|| bad("InvalidRequest", format!("unknown checksum trailer {name}")))?;
            found.push((algo, value.clone()));
        }
        if found.len() > 1 {
            return Err(bad(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            ));
        }
        if let Some(sdk) = header(self.headers, "x-amz-sdk-checksum-algorithm") {
            let declared = header(self.headers, "x-amz-trailer")
                .is_some_and(|t| t.split(',').any(|n| n.trim().eq_ignore_ascii_case(&format!("x-amz-checksum-{sdk}"))));
            if !declared && !found.iter().any(|(a, _)| a.name().eq_ignore_ascii_case(sdk)) {
                return Err(bad(
                    "InvalidRequest",
                    format!(
                        "x-amz-sdk-checksum-algorithm specified ({sdk}), but no corresponding x-amz-checksum-* or x-amz-trailer headers were found."
                    ),
                ));
            }
        }
        let Some((algo, value)) = found.pop() else { return Ok(None) };
        let actual = algo.compute(&self.payload);
        if actual != value {
            return Err(bad(
                "BadDigest",
                format!(
                    "The {} you specified ({value}) did not match the calculated checksum ({actual}).",
                    algo.name().to_ascii_uppercase()
                ),
            ));
        }
        Ok(Some((algo, value)))
    }

    fn upload<'i>(&self, inner: &'i mut Inner, key: &str) -> Result<&'i mut Upload, S3Error> {
        let id = self.query.get("uploadId").map(String::as_str).unwrap_or_default();
        inner.uploads.get_mut(id).filter(|u| u.bucket == self.bucket && u.key == key).ok_or_else(|| {
            err(StatusCode::NOT_FOUND, "NoSuchUpload", format!("The specified upload {id} does not exist."))
        })
    }
}

/// The parts of an `AWS4-HMAC-SHA256` Authorization header.
struct AuthHeader {
    credential: String,
    signed_headers: Vec<String>,
    signature: String,
}

impl AuthHeader {
    fn parse(value: &str) -> Result<Self, S3Error> {
        let rest = value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
            bad("AuthorizationHeaderMalformed", "only AWS4-HMAC-SHA256 Authorization headers are supported")
        })?;
        let mut fields = HashMap::new();
        for field in rest.split(',') {
            let (k, v) = field
                .trim()
                .split_once('=')
                .ok_or_else(|| bad("AuthorizationHeaderMalformed", format!("malformed Authorization field {field}")))?;
            fields.insert(k, v);
        }
        let field = |k: &str| {
            fields
                .get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| bad("AuthorizationHeaderMalformed", format!("the Authorization header has no {k}")))
        };
        Ok(Self {
            credential: field("Credential")?,
            signed_headers: field("SignedHeaders")?.split(';').map(str::to_string).collect(),
            signature: field("Signature")?,
        })
    }
}

/// What `x-amz-content-sha256` says the body is.
enum PayloadMode<'a> {
    Hash(&'a str),
    Unsigned,
    Streaming { signed: bool, trailer: bool },
}

impl<'a> PayloadMode<'a> {
    fn parse(value: &'a str) -> Result<Self, S3Error> {
        Ok(match value {
            "UNSIGNED-PAYLOAD" => Self::Unsigned,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Self::Streaming { signed: false, trailer: true },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Self::Streaming { signed: true, trailer: false },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => Self::Streaming { signed: true, trailer: true },
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Self::Hash(h),
            other => {
                return Err(bad(
                    "InvalidArgument",
                    format!(
                        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER], or a valid sha256 value, not {other}"
                    ),
                ));
            }
        })
    }
}

/// What checking chunk and trailer signatures needs: they chain from the
/// request's signature (the seed), with the same key and scope.
struct Signer {
    identity: Identity,
    time: SystemTime,
    seed: String,
}

impl Signer {
    fn params(&self) -> Result<v4::SigningParams<'_, ()>, S3Error> {
        v4::SigningParams::builder()
            .identity(&self.identity)
            .region(REGION)
            .name("s3")
            .time(self.time)
            .settings(())
            .build()
            .map_err(|e| bad("InvalidRequest", e.to_string()))
    }

    fn chunk(&self, data: &[u8], previous: &str) -> Result<String, S3Error> {
        let params = self.params()?;
        let out = v4::sign_chunk(&bytes::Bytes::copy_from_slice(data), previous, &params)
            .map_err(|e| bad("InvalidRequest", e.to_string()))?;
        Ok(out.signature().to_string())
    }

    fn trailer(&self, trailers: &[(String, String)], previous: &str) -> Result<String, S3Error> {
        let params = self.params()?;
        let mut headers = aws_smithy_runtime_api::http::Headers::new();
        for (k, v) in trailers {
            headers.try_insert(k.clone(), v.clone()).map_err(|e| bad("InvalidRequest", e.to_string()))?;
        }
        let out = v4::sign_trailer(&headers, previous, &params).map_err(|e| bad("InvalidRequest", e.to_string()))?;
        Ok(out.signature().to_string())
    }
}

/// A decoded aws-chunked body: its data and its trailers.
type Decoded = (Vec<u8>, Vec<(String, String)>);

/// Decodes an aws-chunked body (`<hex size>[;chunk-signature=<sig>]\r\n<data>\r\n`
/// …, a zero-size chunk, trailing `name:value\r\n` lines, then `\r\n`), as S3
/// does. With a signer, every chunk signature is checked (each chains from the
/// previous one, the first from the request's), and so is
/// `x-amz-trailer-signature` when there are trailers; without one, chunks
/// must carry no signature. Returns the data and the trailers (lower-case
/// names, the trailer signature removed).
fn decode_aws_chunked(body: &[u8], signer: Option<&Signer>, trailer: bool) -> Result<Decoded, S3Error> {
    let framing = |m: String| bad("IncompleteBody", format!("bad aws-chunked body: {m}"));
    let mut out = Vec::with_capacity(body.len());
    let mut pos = 0;
    let mut previous = signer.map(|s| s.seed.clone()).unwrap_or_default();
    loop {
        let (line, next) = read_line(body, pos).ok_or_else(|| framing(format!("no chunk header at byte {pos}")))?;
        pos = next;
        let (size, ext) = match line.split_once(';') {
            Some((s, e)) => (s, Some(e)),
            None => (line, None),
        };
        if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(framing(format!("chunk size {size:?} is not hex")));
        }
        let size = usize::from_str_radix(size, 16).map_err(|e| framing(e.to_string()))?;
        if size > body.len() - pos {
            return Err(framing(format!("a chunk of {size} bytes runs past the end")));
        }
        let data = &body[pos..pos + size];
        pos += size;
        match (signer, ext) {
            (Some(s), Some(ext)) => {
                let sig = ext
                    .strip_prefix("chunk-signature=")
                    .ok_or_else(|| framing(format!("chunk extension {ext:?} is not a chunk-signature")))?;
                let want = s.chunk(data, &previous)?;
                if sig != want {
                    return Err(denied(
                        "SignatureDoesNotMatch",
                        format!("the chunk signature {sig} does not match ({want})"),
                    ));
                }
                previous = want;
            }
            (Some(_), None) => {
                return Err(denied("SignatureDoesNotMatch", "a chunk of a signed stream has no chunk-signature"));
            }
            (None, Some(ext)) => return Err(framing(format!("an unsigned stream's chunk has the extension {ext:?}"))),
            (None, None) => {}
        }
        if size == 0 {
            break;
        }
        out.extend_from_slice(data);
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err(framing(format!("no CRLF after the chunk ending at byte {pos}")));
        }
        pos += 2;
    }
    let mut trailers = Vec::new();
    loop {
        let (line, next) =
            read_line(body, pos).ok_or_else(|| framing("the trailer section has no final empty line".into()))?;
        pos = next;
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| framing(format!("trailer line {line:?} has no colon")))?;
        trailers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    if pos != body.len() {
        return Err(framing(format!("{} bytes after the end of the stream", body.len() - pos)));
    }
    if !trailer && !trailers.is_empty() {
        return Err(framing("trailers in a stream declared without them".into()));
    }
    let sig_at = trailers.iter().position(|(n, _)| n == "x-amz-trailer-signature");
    match (signer, sig_at) {
        (Some(s), Some(i)) if trailer => {
            let (_, sig) = trailers.remove(i);
            let want = s.trailer(&trailers, &previous)?;
            if sig != want {
                return Err(denied(
                    "SignatureDoesNotMatch",
                    format!("the trailer signature {sig} does not match ({want})"),
                ));
            }
        }
        (Some(_), None) if trailer => {
            return Err(denied("SignatureDoesNotMatch", "a signed stream's trailers have no x-amz-trailer-signature"));
        }
        (None, Some(_)) => return Err(framing("an unsigned stream's trailers carry a signature".into())),
        _ => {}
    }
    Ok((out, trailers))
}

/// The text of the CRLF-ended line at `pos`, and where the next one starts.
fn read_line(body: &[u8], pos: usize) -> Option<(&str, usize)> {
    // Chunk headers and trailer lines are short; do not scan the data.
    let window = &body[pos..body.len().min(pos + 4096)];
    let end = window.windows(2).position(|w| w == b"\r\n")?;
    Some((std::str::from_utf8(&window[..end]).ok()?, pos + end + 2))
}

/// The flexible checksums S3 takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    const ALL: [Algo; 5] = [Algo::Crc32, Algo::Crc32c, Algo::Crc64Nvme, Algo::Sha1, Algo::Sha256];

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "crc32",
            Algo::Crc32c => "crc32c",
            Algo::Crc64Nvme => "crc64nvme",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name())
    }

    /// The member of a CompleteMultipartUpload `Part` that holds it.
    fn xml_member(self) -> &'static str {
        match self {
            Algo::Crc32 => "ChecksumCRC32",
            Algo::Crc32c => "ChecksumCRC32C",
            Algo::Crc64Nvme => "ChecksumCRC64NVME",
            Algo::Sha1 => "ChecksumSHA1",
            Algo::Sha256 => "ChecksumSHA256",
        }
    }

    /// Base64 of the big-endian digest, as S3 writes it.
    fn compute(self, data: &[u8]) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Algo::Crc32 => b64(&crc32fast::hash(data).to_be_bytes()),
            Algo::Crc32c => b64(&crc32_reflected(&CRC32C_TABLE, data).to_be_bytes()),
            Algo::Crc64Nvme => b64(&crc64nvme(data).to_be_bytes()),
            Algo::Sha1 => b64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref()),
            Algo::Sha256 => b64(ring::digest::digest(&ring::digest::SHA256, data).as_ref()),
        }
    }
}

const fn crc32_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

const CRC32C_TABLE: [u32; 256] = crc32_table(0x82F6_3B78);

fn crc32_reflected(table: &[u32; 256], data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

const CRC64NVME_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x9A6C_9329_AC4B_C9B5 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc64nvme(data: &[u8]) -> u64 {
    !data.iter().fold(!0u64, |c, &b| CRC64NVME_TABLE[((c ^ u64::from(b)) & 0xff) as usize] ^ (c >> 8))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The Content-Encoding S3 keeps: the request's, less `aws-chunked`.
fn stored_encoding(headers: &HeaderMap) -> Option<String> {
    let kept: Vec<&str> = header(headers, "content-encoding")?
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

fn etag(data: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(ring::digest::digest(&ring::digest::SHA256, data))[..32])
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

fn no_such_bucket(bucket: &str) -> S3Error {
    err(StatusCode::NOT_FOUND, "NoSuchBucket", format!("The specified bucket does not exist: {bucket}"))
}

fn xml_response(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/xml")
        .body(Body::from(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}")))
        .expect("response")
}

/// Percent-decodes once, as S3 does with the path (`+` stays `+`; a `%` not
/// followed by two hex digits stays as it is).
fn percent_decode(s: &str) -> Result<String, S3Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("InvalidURI", format!("{s} does not decode to UTF-8")))
}

fn parse_query(q: &str) -> Result<BTreeMap<String, String>, S3Error> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k)?).or_insert(percent_decode(v)?);
    }
    Ok(out)
}

/// `encoding-type=url`: everything but unreserved characters and `/` as `%XX`.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The inner text of each `<tag>…</tag>` (or `<tag attr…>`) in `xml`, not nested.
fn elements<'x>(xml: &'x str, tag: &str) -> Vec<&'x str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<Part>` must not match `<PartNumber>`.
        if !after.starts_with('>') && !after.starts_with(' ') {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// A single `bytes=` range, as `[start, end)`; `None` if unsatisfiable.
fn parse_range(r: &str, len: usize) -> Option<(usize, usize)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: usize = n.parse().ok()?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (a.parse().ok()?, b.parse::<usize>().ok()?.saturating_add(1).min(len)),
    };
    (start < end && start < len).then_some((start, end))
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = time::PrimitiveDateTime::parse(
        s,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()?
    .assume_utc();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service as _;

    const ID: &str = "AKIDS3UPSTREAMTEST";
    const SECRET: &str = "fake-secret-for-the-s3-upstream-tests";

    #[test]
    fn checksums_match_their_check_values() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_reflected(&CRC32C_TABLE, b"123456789"), 0xE306_9283);
        assert_eq!(crc64nvme(b"123456789"), 0xAE8B_1486_0A79_9888);
    }

    /// The worked examples of S3's documentation ("Transferring payload in
    /// multiple chunks", and its variant with trailers): 66560 bytes of `a` in
    /// chunks of 65536, 1024 and 0, with the documentation's example key.
    #[test]
    fn the_documented_streaming_examples_decode() {
        let time = parse_amz_date("20130524T000000Z").expect("date");
        let identity: Identity = aws_credential_types::Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "doc",
        )
        .into();
        let a = |n: usize| "a".repeat(n);
        let wire = |sigs: [&str; 3], trailer: &str| {
            format!(
                "10000;chunk-signature={}\r\n{}\r\n400;chunk-signature={}\r\n{}\r\n0;chunk-signature={}\r\n{trailer}\r\n",
                sigs[0],
                a(65536),
                sigs[1],
                a(1024),
                sigs[2]
            )
            .into_bytes()
        };
        let plain = Signer {
            identity: identity.clone(),
            time,
            seed: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9".into(),
        };
        let sigs = [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ];
        let (data, trailers) = decode_aws_chunked(&wire(sigs, ""), Some(&plain), false).expect("decodes");
        assert_eq!(data, a(66560).into_bytes());
        assert!(trailers.is_empty());
        let mut corrupt = wire(sigs, "");
        corrupt[100] = b'b';
        assert_eq!(
            decode_aws_chunked(&corrupt, Some(&plain), false).expect_err("refused").code,
            "SignatureDoesNotMatch"
        );

        let with_trailer =
            Signer { identity, time, seed: "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e".into() };
        let sigs = [
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ];
        let trailer = "x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n";
        let (data, trailers) = decode_aws_chunked(&wire(sigs, trailer), Some(&with_trailer), true).expect("decodes");
        assert_eq!(data, a(66560).into_bytes());
        assert_eq!(trailers, vec![("x-amz-checksum-crc32c".to_string(), "sOO8/Q==".to_string())]);
        assert_eq!(Algo::Crc32c.compute(&data), "sOO8/Q==");
        let forged = trailer.replace("sOO8/Q==", "AAAAAA==");
        let e = decode_aws_chunked(&wire(sigs, &forged), Some(&with_trailer), true).expect_err("refused");
        assert!(e.message.contains("trailer signature"), "{}", e.message);
    }

    fn now_amz() -> (SystemTime, String) {
        let now = SystemTime::now();
        let t = time::OffsetDateTime::from(now);
        let s =
            t.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z")).expect("formats");
        (parse_amz_date(&s).expect("parses"), s)
    }

    /// A request signed with `secret`, its content hash `content_sha`.
    fn signed(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_sha: &str,
        body: Vec<u8>,
        secret: &str,
    ) -> (Request<Body>, String) {
        let (time, amz) = now_amz();
        let mut all: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.push(("host".into(), "localhost:1".into()));
        all.push(("x-amz-date".into(), amz.clone()));
        all.push(("x-amz-content-sha256".into(), content_sha.into()));
        let identity: Identity = aws_credential_types::Credentials::new(ID, secret, None, None, "t").into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params =
            v4::SigningParams::builder().identity(&identity).region(REGION).name("s3").time(time).settings(settings);
        let params = params.build().expect("params").into();
        let uri = format!("https://localhost:1{path}");
        let signable = SignableRequest::new(
            method,
            uri.as_str(),
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Precomputed(content_sha.to_string()),
        )
        .expect("signable");
        let (instructions, signature) = sign(signable, &params).expect("signs").into_parts();
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in &all {
            b = b.header(k, v);
        }
        for (k, v) in instructions.headers() {
            if k == "authorization" {
                b = b.header(k, v);
            }
        }
        b = b.header("content-length", body.len());
        (b.body(Body::from(body)).expect("request"), signature)
    }

    async fn call(router: &mut Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let r = router.call(req).await.expect("infallible");
        let status = r.status();
        (status, axum::body::to_bytes(r.into_body(), MAX_BODY).await.expect("body").to_vec())
    }

    fn world() -> (S3State, Router) {
        let state = S3State::default();
        let host = Arc::new(OnceLock::new());
        host.set("localhost:1".to_string()).expect("unset");
        (state.clone(), s3_upstream(state, ID, SECRET, host))
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
    }

    #[tokio::test]
    async fn signed_chunks_are_checked_and_decoded() {
        let (state, mut router) = world();
        let (req, _) = signed("PUT", "/b", &[], &sha(b""), Vec::new(), SECRET);
        assert_eq!(call(&mut router, req).await.0, StatusCode::OK);

        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let crc = Algo::Crc32.compute(&data);
        let frame = |tamper: bool| {
            let headers = [
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", "70000"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ];
            // The seed signature is only known once the request is signed, and the
            // body depends on it: sign with an empty body first (the content hash
            // does not cover the body in this mode).
            let (req, seed) =
                signed("PUT", "/b/k%20ey", &headers, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", Vec::new(), SECRET);
            let time = parse_amz_date(req.headers()["x-amz-date"].to_str().expect("ascii")).expect("date");
            let identity = aws_credential_types::Credentials::new(ID, SECRET, None, None, "t").into();
            let signer = Signer { identity, time, seed: seed.clone() };
            let mut body = Vec::new();
            let mut previous = seed;
            for chunk in data.chunks(65_536).chain([&[][..]]) {
                let sig = signer.chunk(chunk, &previous).expect("signs");
                body.extend(format!("{:x};chunk-signature={sig}\r\n", chunk.len()).into_bytes());
                if !chunk.is_empty() {
                    let mut c = chunk.to_vec();
                    if tamper {
                        c[0] ^= 1;
                    }
                    body.extend(c);
                    body.extend(b"\r\n");
                }
                previous = sig;
            }
            let trailers = vec![("x-amz-checksum-crc32".to_string(), crc.clone())];
            let tsig = signer.trailer(&trailers, &previous).expect("signs");
            body.extend(format!("x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{tsig}\r\n\r\n").into_bytes());
            let (mut parts, _) = req.into_parts();
            parts.headers.insert("content-length", body.len().into());
            Request::from_parts(parts, Body::from(body))
        };
        let (status, body) = call(&mut router, frame(false)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(state.object("b", "k ey").as_deref(), Some(&data[..]));
        assert!(state.refusals().is_empty(), "{:?}", state.refusals());

        let (status, _) = call(&mut router, frame(true)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(state.refusals()[0].contains("chunk signature"), "{:?}", state.refusals());
    }

    #[tokio::test]
    async fn a_framed_body_under_a_plain_hash_is_stored_framed() {
        let (state, mut router) = world();
        let (req, _) = signed("PUT", "/b", &[], &sha(b""), Vec::new(), SECRET);
        assert_eq!(call(&mut router, req).await.0, StatusCode::OK);
        let framed = b"5\r\nhello\r\n0\r\n\r\n".to_vec();
        let (req, _) =
            signed("PUT", "/b/k", &[("content-encoding", "aws-chunked")], &sha(&framed), framed.clone(), SECRET);
        assert_eq!(call(&mut router, req).await.0, StatusCode::OK);
        assert_eq!(state.object("b", "k"), Some(framed));
        assert_eq!(state.keys("b"), vec!["k".to_string()]);

        let (req, _) = signed("PUT", "/b/k", &[], &sha(b"x"), b"x".to_vec(), "wrong-secret");
        let (status, body) = call(&mut router, req).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(String::from_utf8_lossy(&body).contains("<Code>SignatureDoesNotMatch</Code>"));
        assert_eq!(state.refusals().len(), 1);
    }
}
