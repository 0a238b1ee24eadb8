//! Decodes S3 `aws-chunked` streaming uploads into a plain payload, so the broker can re-sign them.
//!
//! The AWS SDKs upload to S3 in the `aws-chunked` content coding: the payload is cut into chunks framed as
//! `hex-size[;chunk-signature=64hex]\r\n<data>\r\n`, ended by a zero-size chunk, optional trailer lines
//! (`x-amz-checksum-crc32:BASE64\r\n`, and in signed-trailer mode `x-amz-trailer-signature:64hex\r\n`) and a
//! final empty line. The `x-amz-content-sha256` header names the mode (`STREAMING-…`). botocore, by default
//! over HTTPS, sends `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with the exact bytes
//! `<hex>\r\n<data>\r\n` … `0\r\nx-amz-checksum-crc32:<base64>\r\n\r\n`.
//!
//! The chunk and trailer signatures were made with the agent's throwaway key, so they are neither verified nor
//! forwarded: [`decode_request`] returns the payload and rewrites the headers into those of an ordinary upload
//! (trailers become headers), which the caller then signs with the payload's hash. Anything self-contradictory
//! is refused rather than guessed at, so the broker never forwards bytes that S3 would store wrongly.
//!
//! The framing headers `Content-Length` and `Transfer-Encoding` describe the encoded body and are left to the
//! caller, which drops them and sets the length of the decoded payload.

use crate::error::ErrorCode;

/// Why a streaming upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The framing or headers are malformed or contradict each other (400, code `invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// A payload mode the broker cannot re-sign (400, code `unsupported_payload`), e.g. SigV4a chunks.
    #[error("{0}")]
    Unsupported(String),
}

impl PayloadError {
    /// The API error code for this refusal: `invalid_request` or `unsupported_payload`.
    pub fn code(&self) -> ErrorCode {
        match self {
            PayloadError::Invalid(_) => ErrorCode::InvalidRequest,
            PayloadError::Unsupported(_) => ErrorCode::UnsupportedPayload,
        }
    }
}

const CONTENT_SHA256: &str = "x-amz-content-sha256";
const CONTENT_ENCODING: &str = "content-encoding";
const AMZ_TRAILER: &str = "x-amz-trailer";
const DECODED_LENGTH: &str = "x-amz-decoded-content-length";
const TRAILER_SIGNATURE: &str = "x-amz-trailer-signature";
const AWS_CHUNKED: &str = "aws-chunked";
const STREAMING_PREFIX: &str = "STREAMING-";
/// The only trailers S3 defines; any other name would let a body smuggle in arbitrary headers.
const CHECKSUM_PREFIX: &str = "x-amz-checksum-";
const SIGNATURE_EXTENSION: &[u8] = b"chunk-signature=";
/// At most 16 hex digits in a chunk size: a `u64`, never more.
const MAX_SIZE_DIGITS: usize = 16;
/// A chunk line or trailer line longer than this is refused without scanning further.
const MAX_LINE: usize = 4096;

/// What an `x-amz-content-sha256` streaming marker announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Every chunk line carries `;chunk-signature=`.
    signed: bool,
    /// Trailer lines follow the final chunk (`-TRAILER` markers).
    trailer: bool,
}

fn invalid(message: impl Into<String>) -> PayloadError {
    PayloadError::Invalid(message.into())
}

fn unsupported(message: impl Into<String>) -> PayloadError {
    PayloadError::Unsupported(message.into())
}

fn is_named(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

fn starts_with_ignore_case(value: &str, prefix: &str) -> bool {
    value.len() >= prefix.len() && value.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether `value` is an RFC 9110 token (the syntax of a header name).
fn is_token(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_hex(value: &[u8], len: usize) -> bool {
    value.len() == len && value.iter().all(u8::is_ascii_hexdigit)
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// The tokens of a comma-separated header list, trimmed, empty elements skipped.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(|item| item.trim_matches([' ', '\t'])).filter(|item| !item.is_empty())
}

fn has_aws_chunked(value: &str) -> bool {
    list_items(value).any(|item| is_named(item, AWS_CHUNKED))
}

fn is_streaming_marker(value: &str) -> bool {
    starts_with_ignore_case(value.trim(), STREAMING_PREFIX)
}

/// Whether these headers announce a streaming (aws-chunked) payload — lets a caller that cannot decode
/// (the signing endpoint, which never sees the body) refuse early with the same error.
///
/// True when `Content-Encoding` has the `aws-chunked` token, `x-amz-content-sha256` holds a `STREAMING-*`
/// marker, or `X-Amz-Trailer` or `X-Amz-Decoded-Content-Length` is present. Exactly then
/// [`decode_request`] either decodes the body or refuses it; it never returns `Ok(None)`.
pub fn is_streaming(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(name, value)| {
        (is_named(name, CONTENT_ENCODING) && has_aws_chunked(value))
            || (is_named(name, CONTENT_SHA256) && is_streaming_marker(value))
            || is_named(name, AMZ_TRAILER)
            || is_named(name, DECODED_LENGTH)
    })
}

/// The one `x-amz-content-sha256` value, trimmed; several headers must agree.
fn content_sha256(headers: &[(String, String)]) -> Result<Option<&str>, PayloadError> {
    let mut found: Option<&str> = None;
    for (name, value) in headers {
        if !is_named(name, CONTENT_SHA256) {
            continue;
        }
        let value = value.trim();
        match found {
            Some(previous) if previous != value => {
                return Err(invalid("the request has several x-amz-content-sha256 headers with different values"));
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The mode a `STREAMING-*` marker announces, or why the broker cannot take it.
fn mode_of(marker: &str) -> Result<Mode, PayloadError> {
    match marker {
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Ok(Mode { signed: false, trailer: true }),
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Ok(Mode { signed: true, trailer: false }),
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => Ok(Mode { signed: true, trailer: true }),
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD" | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => {
            Err(unsupported(format!(
                "x-amz-content-sha256 `{marker}` announces SigV4a (ECDSA) signed chunks, which the broker cannot \
                 re-sign; sign the upload with SigV4 instead"
            )))
        }
        _ if marker.len() <= 64 && marker.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => Err(unsupported(
            format!("x-amz-content-sha256 `{marker}` is a streaming payload mode the broker does not know"),
        )),
        _ => Err(unsupported("x-amz-content-sha256 announces a streaming payload mode the broker does not know")),
    }
}

/// The names X-Amz-Trailer declares, in order, checked against the mode and the other headers.
fn declared_trailers(headers: &[(String, String)], mode: Mode, marker: &str) -> Result<Vec<String>, PayloadError> {
    let mut declared: Vec<String> = Vec::new();
    for (name, value) in headers {
        if !is_named(name, AMZ_TRAILER) {
            continue;
        }
        for item in list_items(value) {
            if !is_token(item.as_bytes()) {
                return Err(invalid("X-Amz-Trailer lists a name that is not a valid header name"));
            }
            if is_named(item, TRAILER_SIGNATURE) {
                return Err(invalid(
                    "X-Amz-Trailer must not list x-amz-trailer-signature, which ends every signed trailer on its own",
                ));
            }
            if !starts_with_ignore_case(item, CHECKSUM_PREFIX) {
                return Err(unsupported(format!(
                    "X-Amz-Trailer declares trailer `{item}`, but the broker only forwards x-amz-checksum-* trailers"
                )));
            }
            if declared.iter().any(|d| is_named(d, item)) {
                return Err(invalid(format!("X-Amz-Trailer lists trailer `{item}` more than once")));
            }
            if headers.iter().any(|(other, _)| is_named(other, item)) {
                return Err(invalid(format!(
                    "trailer `{item}` declared in X-Amz-Trailer would duplicate the request header of that name"
                )));
            }
            declared.push(item.to_string());
        }
    }
    if !mode.trailer && !declared.is_empty() {
        return Err(invalid(format!(
            "X-Amz-Trailer declares trailers, but x-amz-content-sha256 `{marker}` announces a body without trailers"
        )));
    }
    Ok(declared)
}

/// Every X-Amz-Decoded-Content-Length value, parsed.
fn decoded_lengths(headers: &[(String, String)]) -> Result<Vec<u64>, PayloadError> {
    headers
        .iter()
        .filter(|(name, _)| is_named(name, DECODED_LENGTH))
        .map(|(_, value)| {
            let value = value.trim();
            if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("X-Amz-Decoded-Content-Length is not a non-negative decimal number"));
            }
            value.parse::<u64>().map_err(|_| invalid("X-Amz-Decoded-Content-Length is too large"))
        })
        .collect()
}

/// One trailer line of the body, already checked for syntax.
struct Trailer {
    name: String,
    value: String,
}

/// Reads the aws-chunked framing, strictly: CRLF lines, hex sizes, nothing after the final empty line.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end(&self) -> bool {
        self.pos == self.body.len()
    }

    /// The next CRLF-terminated line, without its CRLF; `what` names it in errors.
    fn line(&mut self, what: &str) -> Result<&'a [u8], PayloadError> {
        let rest = &self.body[self.pos..];
        let window = &rest[..rest.len().min(MAX_LINE + 2)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            return Err(if rest.len() > MAX_LINE + 1 {
                invalid(format!("the aws-chunked body has {what} longer than {MAX_LINE} bytes"))
            } else {
                invalid(format!("the aws-chunked body ends inside {what}"))
            });
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(invalid(format!("the aws-chunked body ends {what} with a bare LF instead of CRLF")));
        }
        let line = &rest[..lf - 1];
        if line.contains(&b'\r') {
            return Err(invalid(format!("the aws-chunked body has a stray CR in {what}")));
        }
        self.pos += lf + 1;
        Ok(line)
    }

    /// Exactly `len` bytes of chunk data, then the CRLF that must follow them.
    fn data(&mut self, len: usize) -> Result<&'a [u8], PayloadError> {
        let rest = &self.body[self.pos..];
        if len > rest.len() {
            return Err(invalid(
                "the aws-chunked body ends inside a chunk's data (a chunk size is larger than the data sent)",
            ));
        }
        let (data, after) = rest.split_at(len);
        if after.len() < 2 {
            return Err(invalid("the aws-chunked body ends right after a chunk's data, without its CRLF"));
        }
        if &after[..2] != b"\r\n" {
            return Err(invalid("a chunk's data in the aws-chunked body is not followed by CRLF (its size is wrong)"));
        }
        self.pos += len + 2;
        Ok(data)
    }
}

/// The size on a chunk line, after checking its extension against the mode.
fn chunk_size(line: &[u8], mode: Mode) -> Result<usize, PayloadError> {
    let (size, extension) = match line.iter().position(|&b| b == b';') {
        Some(semi) => (&line[..semi], Some(&line[semi + 1..])),
        None => (line, None),
    };
    if size.is_empty() || size.len() > MAX_SIZE_DIGITS || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid(format!(
            "the aws-chunked body has a chunk size that is not 1 to {MAX_SIZE_DIGITS} hexadecimal digits"
        )));
    }
    let mut value: u64 = 0;
    for &digit in size {
        // At most 16 digits, so this never overflows a u64.
        value = (value << 4) | u64::from(char::from(digit).to_digit(16).unwrap_or(0));
    }
    let size =
        usize::try_from(value).map_err(|_| invalid("the aws-chunked body has a chunk size that is too large"))?;
    match (mode.signed, extension) {
        (true, Some(extension)) => {
            let signature = extension.strip_prefix(SIGNATURE_EXTENSION);
            if !signature.is_some_and(|s| is_hex(s, 64)) {
                return Err(invalid(
                    "a chunk line in the aws-chunked body has an extension other than `chunk-signature=` and 64 hex digits",
                ));
            }
        }
        (true, None) => {
            return Err(invalid(
                "a chunk line in the aws-chunked body has no chunk-signature, but x-amz-content-sha256 announces signed chunks",
            ));
        }
        (false, Some(_)) => {
            return Err(invalid(
                "a chunk line in the aws-chunked body has an extension, but x-amz-content-sha256 announces unsigned chunks",
            ));
        }
        (false, None) => {}
    }
    Ok(size)
}

/// One `name:value` trailer line, syntax-checked (the name a token, the value visible ASCII).
fn trailer_line(line: &[u8]) -> Result<Trailer, PayloadError> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(invalid("a trailer line in the aws-chunked body has no `:`"));
    };
    let name = &line[..colon];
    if !is_token(name) {
        return Err(invalid("a trailer line in the aws-chunked body has a name that is not a valid header name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.is_empty() {
        return Err(invalid("a trailer line in the aws-chunked body has an empty value"));
    }
    if !value.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Err(invalid("a trailer value in the aws-chunked body has control or non-ASCII characters"));
    }
    // Both parts are ASCII, checked just above.
    Ok(Trailer { name: String::from_utf8_lossy(name).into_owned(), value: String::from_utf8_lossy(value).into_owned() })
}

/// The decoded payload and the trailer lines of a framed body.
fn parse_body(body: &[u8], mode: Mode) -> Result<(Vec<u8>, Vec<Trailer>), PayloadError> {
    let mut reader = Reader { body, pos: 0 };
    let mut payload = Vec::new();
    loop {
        if reader.at_end() {
            return Err(invalid("the aws-chunked body ends before its final zero-size chunk"));
        }
        let size = chunk_size(reader.line("a chunk size line")?, mode)?;
        if size == 0 {
            break;
        }
        payload.extend_from_slice(reader.data(size)?);
    }
    let mut trailers = Vec::new();
    loop {
        if reader.at_end() {
            return Err(invalid("the aws-chunked body ends before the empty line that closes it"));
        }
        let line = reader.line("a trailer line")?;
        if line.is_empty() {
            break;
        }
        trailers.push(trailer_line(line)?);
    }
    if !reader.at_end() {
        return Err(invalid("the aws-chunked body has bytes after the empty line that closes it"));
    }
    Ok((payload, trailers))
}

/// The trailers to add as headers: exactly the declared ones, each once; the trailer signature checked and dropped.
fn check_trailers(
    trailers: Vec<Trailer>,
    declared: &[String],
    mode: Mode,
    marker: &str,
) -> Result<Vec<(String, String)>, PayloadError> {
    let mut seen = vec![false; declared.len()];
    // Body order, not declaration order.
    let mut ordered: Vec<(String, String)> = Vec::with_capacity(declared.len());
    let mut signature_seen = false;
    for Trailer { name, value } in trailers {
        if is_named(&name, TRAILER_SIGNATURE) {
            if !(mode.signed && mode.trailer) {
                return Err(invalid(format!(
                    "the aws-chunked body has an x-amz-trailer-signature, but x-amz-content-sha256 `{marker}` \
                     announces no signed trailers"
                )));
            }
            if signature_seen {
                return Err(invalid("the aws-chunked body has more than one x-amz-trailer-signature"));
            }
            if !is_hex(value.as_bytes(), 64) {
                return Err(invalid("the x-amz-trailer-signature in the aws-chunked body is not 64 hex digits"));
            }
            signature_seen = true;
            continue;
        }
        if !mode.trailer {
            return Err(invalid(format!(
                "the aws-chunked body has trailers, but x-amz-content-sha256 `{marker}` announces a body without trailers"
            )));
        }
        if signature_seen {
            return Err(invalid(
                "the aws-chunked body has a trailer after x-amz-trailer-signature, which must come last",
            ));
        }
        let Some(index) = declared.iter().position(|d| is_named(d, &name)) else {
            return Err(invalid("the aws-chunked body has a trailer that X-Amz-Trailer does not declare"));
        };
        if seen[index] {
            return Err(invalid(format!("the aws-chunked body has trailer `{}` more than once", declared[index])));
        }
        seen[index] = true;
        ordered.push((name, value));
    }
    if mode.signed && mode.trailer && !signature_seen {
        return Err(invalid(format!(
            "the aws-chunked body has no x-amz-trailer-signature, but x-amz-content-sha256 `{marker}` announces signed trailers"
        )));
    }
    if let Some(index) = seen.iter().position(|s| !s) {
        return Err(invalid(format!(
            "trailer `{}` declared in X-Amz-Trailer is missing from the aws-chunked body",
            declared[index]
        )));
    }
    Ok(ordered)
}

/// If the request is an aws-chunked / STREAMING-* upload, decode it: return the plain payload and rewrite `headers`.
///
/// Header names are compared case-insensitively and the other headers keep their order. On success the
/// `aws-chunked` token is removed from Content-Encoding (the header is dropped when nothing is left), X-Amz-Trailer
/// and X-Amz-Decoded-Content-Length (checked against the decoded length) are removed, and so is the streaming
/// x-amz-content-sha256 marker; each declared trailer is appended as a header (`x-amz-checksum-crc32: …`), in
/// body order. Chunk signatures and `x-amz-trailer-signature` are checked for form only and dropped: they were
/// made with the agent's throwaway key, not the real one. Only `x-amz-checksum-*` trailers are accepted.
///
/// Otherwise (plain body, `UNSIGNED-PAYLOAD`, a hex hash, no header) this returns `Ok(None)` and leaves `headers`
/// untouched; that is exactly when [`is_streaming`] is false.
///
/// Refused as [`PayloadError::Invalid`]: aws-chunked Content-Encoding without a `STREAMING-*` x-amz-content-sha256;
/// X-Amz-Trailer or X-Amz-Decoded-Content-Length on a body that is not streamed; a body that is not valid framing
/// for its marker; trailers X-Amz-Trailer did not declare, or declared ones absent; trailers in a mode without
/// `-TRAILER`; a trailer duplicating a header; a decoded length that is not a number or does not match; several
/// x-amz-content-sha256 headers with different values. Refused as [`PayloadError::Unsupported`]: the SigV4a
/// (ECDSA) markers, unknown `STREAMING-*` markers, and trailers other than `x-amz-checksum-*`.
/// On any error `headers` is left untouched, and no message contains body bytes.
pub fn decode_request(headers: &mut Vec<(String, String)>, body: &[u8]) -> Result<Option<Vec<u8>>, PayloadError> {
    let marker = content_sha256(headers)?;
    let mut chunked_tokens = 0usize;
    for (name, value) in headers.iter() {
        if is_named(name, CONTENT_ENCODING) {
            chunked_tokens += list_items(value).filter(|item| is_named(item, AWS_CHUNKED)).count();
        }
    }
    if chunked_tokens > 1 {
        return Err(invalid("Content-Encoding names aws-chunked more than once"));
    }
    let Some(marker) = marker.filter(|m| is_streaming_marker(m)) else {
        if chunked_tokens > 0 {
            return Err(invalid(if marker.is_some() {
                "Content-Encoding is aws-chunked, but x-amz-content-sha256 is not a STREAMING-* marker"
            } else {
                "Content-Encoding is aws-chunked, but there is no x-amz-content-sha256 STREAMING-* marker"
            }));
        }
        if headers.iter().any(|(name, _)| is_named(name, AMZ_TRAILER)) {
            return Err(invalid("X-Amz-Trailer is only valid on an aws-chunked upload with a STREAMING-* marker"));
        }
        if headers.iter().any(|(name, _)| is_named(name, DECODED_LENGTH)) {
            return Err(invalid(
                "X-Amz-Decoded-Content-Length is only valid on an aws-chunked upload with a STREAMING-* marker",
            ));
        }
        return Ok(None);
    };
    let mode = mode_of(marker)?;
    let declared = declared_trailers(headers, mode, marker)?;
    let lengths = decoded_lengths(headers)?;
    let (payload, trailers) = parse_body(body, mode)?;
    let trailers = check_trailers(trailers, &declared, mode, marker)?;
    if lengths.iter().any(|&length| u64::try_from(payload.len()).ok() != Some(length)) {
        return Err(invalid("X-Amz-Decoded-Content-Length does not match the length of the decoded aws-chunked body"));
    }

    let mut rewritten: Vec<(String, String)> = Vec::with_capacity(headers.len() + trailers.len());
    for (name, value) in headers.drain(..) {
        if is_named(&name, CONTENT_SHA256) || is_named(&name, AMZ_TRAILER) || is_named(&name, DECODED_LENGTH) {
            continue;
        }
        if is_named(&name, CONTENT_ENCODING) && has_aws_chunked(&value) {
            let rest: Vec<&str> = list_items(&value).filter(|item| !is_named(item, AWS_CHUNKED)).collect();
            if !rest.is_empty() {
                let joined = rest.join(",");
                rewritten.push((name, joined));
            }
            continue;
        }
        rewritten.push((name, value));
    }
    rewritten.extend(trailers);
    *headers = rewritten;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648";
    const SIG2: &str = "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497";
    const TRAILER_SIG: &str = "63bddb248ad2590c92712055f51b8e78ab024eead08276b24f010b0efd74843f";

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// The headers botocore sends for `put_object(Body=b"hello world")` over HTTPS (default checksum CRC32),
    /// minus the hop-by-hop Transfer-Encoding and the Authorization header.
    fn botocore_headers(decoded_len: &str) -> Vec<(String, String)> {
        hdrs(&[
            ("User-Agent", "Boto3/1.38.0 md/Botocore#1.38.0 ua/2.1 os/linux"),
            ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ("Content-Encoding", "aws-chunked"),
            ("X-Amz-Trailer", "x-amz-checksum-crc32"),
            ("X-Amz-Decoded-Content-Length", decoded_len),
            ("X-Amz-Date", "20250101T000000Z"),
            ("X-Amz-Content-SHA256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ])
    }

    /// What remains of [`botocore_headers`] after decoding, with the trailer appended.
    fn botocore_decoded(crc: &str) -> Vec<(String, String)> {
        hdrs(&[
            ("User-Agent", "Boto3/1.38.0 md/Botocore#1.38.0 ua/2.1 os/linux"),
            ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ("X-Amz-Date", "20250101T000000Z"),
            ("x-amz-checksum-crc32", crc),
        ])
    }

    /// Frames `chunks` exactly as botocore's AwsChunkedWrapper does: `hex(len)[2:]\r\n<data>\r\n` per chunk,
    /// then `0\r\nname:value\r\n\r\n`.
    fn botocore_body(chunks: &[&[u8]], name: &str, checksum: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("0\r\n{name}:{checksum}\r\n\r\n").as_bytes());
        body
    }

    /// A body of `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` framing, signatures made up.
    fn signed_body(chunks: &[&[u8]], trailers: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(format!("{:x};chunk-signature={SIG}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("0;chunk-signature={SIG2}\r\n{trailers}\r\n").as_bytes());
        body
    }

    fn unsigned_headers() -> Vec<(String, String)> {
        hdrs(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ])
    }

    /// Decodes with [`unsigned_headers`]; the error, checking that headers stayed untouched.
    fn refuse_unsigned(body: &[u8]) -> PayloadError {
        refuse(unsigned_headers(), body)
    }

    fn refuse(headers: Vec<(String, String)>, body: &[u8]) -> PayloadError {
        let mut h = headers.clone();
        let err = decode_request(&mut h, body).expect_err("must be refused");
        assert_eq!(h, headers, "headers must be untouched on error");
        err
    }

    fn is_invalid(err: &PayloadError) -> bool {
        matches!(err, PayloadError::Invalid(_))
    }

    fn is_unsupported(err: &PayloadError) -> bool {
        matches!(err, PayloadError::Unsupported(_))
    }

    #[test]
    fn botocore_single_chunk() {
        let body = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        assert_eq!(botocore_body(&[b"hello world"], "x-amz-checksum-crc32", "DUoRhQ=="), body.to_vec());
        let mut h = botocore_headers("11");
        assert!(is_streaming(&h));
        let out = decode_request(&mut h, body).unwrap();
        assert_eq!(out.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(h, botocore_decoded("DUoRhQ=="));
    }

    #[test]
    fn botocore_multi_chunk() {
        let first = [b'a'; 0x1a];
        let body = botocore_body(&[&first, b"0123456789", b"z"], "x-amz-checksum-crc32", "AAAAAA==");
        assert!(body.starts_with(b"1a\r\naaaa"));
        let mut h = botocore_headers("37");
        let out = decode_request(&mut h, &body).unwrap().unwrap();
        let mut want = first.to_vec();
        want.extend_from_slice(b"0123456789z");
        assert_eq!(out, want);
        assert_eq!(h, botocore_decoded("AAAAAA=="));
    }

    #[test]
    fn uppercase_hex_sizes_and_leading_zeros() {
        let mut body = b"1A\r\n".to_vec();
        body.extend_from_slice(&[7u8; 26]);
        body.extend_from_slice(b"\r\n0001\r\nx\r\n00\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
        let mut h = unsigned_headers();
        let out = decode_request(&mut h, &body).unwrap().unwrap();
        let mut want = vec![7u8; 26];
        want.push(b'x');
        assert_eq!(out, want);
    }

    #[test]
    fn botocore_empty_payload() {
        let body = b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        assert_eq!(botocore_body(&[], "x-amz-checksum-crc32", "AAAAAA=="), body.to_vec());
        let mut h = botocore_headers("0");
        assert_eq!(decode_request(&mut h, body).unwrap(), Some(Vec::new()));
        assert_eq!(h, botocore_decoded("AAAAAA=="));
    }

    #[test]
    fn binary_data_with_crlf_inside_chunks() {
        let data: &[u8] = b"\r\n0\r\n\r\n\x00\xff\r\nx-amz-checksum-crc32:evil\r\n\r\n";
        let body = botocore_body(&[data, b"\r\n"], "x-amz-checksum-crc32", "AAAAAA==");
        let mut h = unsigned_headers();
        let out = decode_request(&mut h, &body).unwrap().unwrap();
        let mut want = data.to_vec();
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);
        assert_eq!(h, hdrs(&[("x-amz-checksum-crc32", "AAAAAA==")]));
    }

    #[test]
    fn signed_chunks_without_trailer() {
        let body = signed_body(&[b"hello ", b"world"], "");
        assert!(body.ends_with(format!("0;chunk-signature={SIG2}\r\n\r\n").as_bytes()));
        let mut h = hdrs(&[
            ("Host", "bucket.s3.amazonaws.com"),
            ("Content-Encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("x-amz-decoded-content-length", "11"),
            ("Content-Type", "text/plain"),
        ]);
        let out = decode_request(&mut h, &body).unwrap();
        assert_eq!(out.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(h, hdrs(&[("Host", "bucket.s3.amazonaws.com"), ("Content-Type", "text/plain")]));
    }

    #[test]
    fn signed_chunks_with_trailer_and_trailer_signature() {
        let trailers = format!("x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:{TRAILER_SIG}\r\n");
        let body = signed_body(&[b"hello world"], &trailers);
        let mut h = hdrs(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
            ("x-amz-trailer", "x-amz-checksum-crc32c"),
            ("x-amz-decoded-content-length", "11"),
            ("x-amz-storage-class", "STANDARD"),
        ]);
        let out = decode_request(&mut h, &body).unwrap();
        assert_eq!(out.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(h, hdrs(&[("x-amz-storage-class", "STANDARD"), ("x-amz-checksum-crc32c", "sOO8/Q==")]));
    }

    #[test]
    fn aws_chunked_gzip_keeps_gzip() {
        for encoding in ["aws-chunked,gzip", "gzip,aws-chunked", "gzip, AWS-Chunked"] {
            let mut h = hdrs(&[
                ("Content-Encoding", encoding),
                ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
                ("X-Amz-Trailer", "x-amz-checksum-crc32"),
            ]);
            let body = botocore_body(&[b"\x1f\x8b"], "x-amz-checksum-crc32", "AAAAAA==");
            assert_eq!(decode_request(&mut h, &body).unwrap(), Some(b"\x1f\x8b".to_vec()), "{encoding}");
            assert_eq!(h, hdrs(&[("Content-Encoding", "gzip"), ("x-amz-checksum-crc32", "AAAAAA==")]), "{encoding}");
        }
    }

    #[test]
    fn several_trailers_in_body_order_and_trimmed_values() {
        let body = b"1\r\nx\r\n0\r\nx-amz-checksum-sha256: \tabc= \t\r\nX-Amz-Checksum-CRC32:AAAAAA==\r\n\r\n";
        let mut h = hdrs(&[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("x-amz-trailer", "x-amz-checksum-crc32, x-amz-checksum-sha256"),
        ]);
        assert_eq!(decode_request(&mut h, body).unwrap(), Some(b"x".to_vec()));
        assert_eq!(h, hdrs(&[("x-amz-checksum-sha256", "abc="), ("X-Amz-Checksum-CRC32", "AAAAAA==")]));
    }

    #[test]
    fn streaming_marker_without_content_encoding_is_decoded() {
        let body = signed_body(&[b"abc"], "");
        let mut h = hdrs(&[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]);
        assert_eq!(decode_request(&mut h, &body).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(h, Vec::<(String, String)>::new());
    }

    #[test]
    fn repeated_identical_marker_is_accepted() {
        let mut h = unsigned_headers();
        h.push(("X-Amz-Content-Sha256".into(), "STREAMING-UNSIGNED-PAYLOAD-TRAILER".into()));
        let body = botocore_body(&[b"a"], "x-amz-checksum-crc32", "AAAAAA==");
        assert_eq!(decode_request(&mut h, &body).unwrap(), Some(b"a".to_vec()));
        assert_eq!(h, hdrs(&[("x-amz-checksum-crc32", "AAAAAA==")]));
    }

    #[test]
    fn plain_bodies_are_left_alone() {
        let hash = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        for headers in [
            hdrs(&[("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("Content-Encoding", "gzip")]),
            hdrs(&[("x-amz-content-sha256", hash)]),
            hdrs(&[("Content-Type", "text/plain")]),
            Vec::new(),
        ] {
            let mut h = headers.clone();
            assert!(!is_streaming(&h));
            assert_eq!(decode_request(&mut h, b"0\r\n\r\n").unwrap(), None);
            assert_eq!(h, headers);
        }
    }

    #[test]
    fn is_streaming_matches_decode() {
        for headers in [
            hdrs(&[("Content-Encoding", "gzip, aws-chunked")]),
            hdrs(&[("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")]),
            hdrs(&[("x-amz-content-sha256", "streaming-unsigned-payload-trailer")]),
            hdrs(&[("X-Amz-Trailer", "x-amz-checksum-crc32")]),
            hdrs(&[("X-Amz-Decoded-Content-Length", "5")]),
        ] {
            assert!(is_streaming(&headers), "{headers:?}");
            refuse(headers, b"hello");
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(invalid("x").code(), "invalid_request");
        assert_eq!(unsupported("x").code(), "unsupported_payload");
    }

    // ---- header contradictions ----

    #[test]
    fn refuses_aws_chunked_with_unsigned_payload() {
        let h = hdrs(&[("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]);
        assert!(is_invalid(&refuse(h, b"0\r\n\r\n")));
    }

    #[test]
    fn refuses_aws_chunked_with_hex_hash() {
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let h = hdrs(&[("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", hash)]);
        assert!(is_invalid(&refuse(h, b"0\r\n\r\n")));
    }

    #[test]
    fn refuses_aws_chunked_without_marker() {
        let h = hdrs(&[("Content-Encoding", "aws-chunked")]);
        assert!(is_invalid(&refuse(h, b"0\r\n\r\n")));
    }

    #[test]
    fn refuses_aws_chunked_twice() {
        let mut h = unsigned_headers();
        h.push(("Content-Encoding".into(), "aws-chunked".into()));
        assert!(is_invalid(&refuse(h, b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_conflicting_content_sha256() {
        let mut h = unsigned_headers();
        h.push(("X-Amz-Content-SHA256".into(), "UNSIGNED-PAYLOAD".into()));
        assert!(is_invalid(&refuse(h, b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
        let h = hdrs(&[("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("x-amz-content-sha256", "abc")]);
        assert!(is_invalid(&refuse(h, b"plain")));
    }

    #[test]
    fn refuses_trailer_header_on_plain_body() {
        let h = hdrs(&[("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("X-Amz-Trailer", "x-amz-checksum-crc32")]);
        assert!(is_invalid(&refuse(h, b"plain")));
    }

    #[test]
    fn refuses_decoded_length_on_plain_body() {
        let h = hdrs(&[("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("X-Amz-Decoded-Content-Length", "5")]);
        assert!(is_invalid(&refuse(h, b"plain")));
    }

    #[test]
    fn refuses_sigv4a_markers() {
        for marker in ["STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"] {
            let h = hdrs(&[("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", marker)]);
            assert!(is_unsupported(&refuse(h, &signed_body(&[b"abc"], ""))), "{marker}");
        }
    }

    #[test]
    fn refuses_unknown_streaming_marker() {
        let h = hdrs(&[("Content-Encoding", "aws-chunked"), ("x-amz-content-sha256", "STREAMING-FOO-PAYLOAD")]);
        let err = refuse(h, b"0\r\n\r\n");
        assert!(is_unsupported(&err));
        assert!(err.to_string().contains("STREAMING-FOO-PAYLOAD"));
        let h = hdrs(&[("x-amz-content-sha256", "streaming-unsigned-payload-trailer")]);
        assert!(is_unsupported(&refuse(h, b"0\r\n\r\n")));
    }

    #[test]
    fn refuses_decoded_length_mismatch() {
        let body = botocore_body(&[b"hello world"], "x-amz-checksum-crc32", "DUoRhQ==");
        assert!(is_invalid(&refuse(botocore_headers("10"), &body)));
        let mut h = botocore_headers("11");
        h.push(("x-amz-decoded-content-length".into(), "12".into()));
        assert!(is_invalid(&refuse(h, &body)));
    }

    #[test]
    fn refuses_decoded_length_not_a_number() {
        let body = botocore_body(&[b"hello world"], "x-amz-checksum-crc32", "DUoRhQ==");
        for bad in ["", "+11", "-11", "11a", "0x0b", "1 1", "99999999999999999999999"] {
            assert!(is_invalid(&refuse(botocore_headers(bad), &body)), "{bad:?}");
        }
    }

    #[test]
    fn refuses_trailer_duplicating_a_header() {
        let mut h = unsigned_headers();
        h.push(("X-Amz-Checksum-Crc32".into(), "AAAAAA==".into()));
        assert!(is_invalid(&refuse(h, b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_non_checksum_trailer() {
        for name in ["authorization", "x-amz-meta-a"] {
            let mut h = unsigned_headers();
            h[2].1 = name.to_string();
            assert!(is_unsupported(&refuse(h, format!("0\r\n{name}:x\r\n\r\n").as_bytes())), "{name}");
        }
    }

    #[test]
    fn refuses_trailer_signature_declared() {
        let h = hdrs(&[
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
            ("x-amz-trailer", "x-amz-trailer-signature"),
        ]);
        let body = signed_body(&[], &format!("x-amz-trailer-signature:{TRAILER_SIG}\r\n"));
        assert!(is_invalid(&refuse(h, &body)));
    }

    #[test]
    fn refuses_declared_twice() {
        let mut h = unsigned_headers();
        h[2].1 = "x-amz-checksum-crc32,X-AMZ-CHECKSUM-CRC32".into();
        assert!(is_invalid(&refuse(h, b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_declared_name_not_a_token() {
        let mut h = unsigned_headers();
        h[2].1 = "x-amz-checksum crc32".into();
        assert!(is_invalid(&refuse(h, b"0\r\n\r\n")));
    }

    // ---- trailers against the declaration and the mode ----

    #[test]
    fn refuses_undeclared_trailer() {
        let body = b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-checksum-sha1:secretvalue\r\n\r\n";
        let err = refuse_unsigned(body);
        assert!(is_invalid(&err));
        assert!(!err.to_string().contains("sha1") && !err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn refuses_trailer_without_x_amz_trailer() {
        let h = hdrs(&[("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")]);
        assert!(is_invalid(&refuse(h, b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_declared_trailer_absent() {
        assert!(is_invalid(&refuse_unsigned(b"1\r\na\r\n0\r\n\r\n")));
    }

    #[test]
    fn refuses_duplicate_trailer_in_body() {
        assert!(is_invalid(&refuse_unsigned(
            b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
        )));
    }

    #[test]
    fn refuses_trailers_in_mode_without_trailer() {
        let h = hdrs(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ]);
        let body = signed_body(&[b"abc"], "x-amz-checksum-crc32:AAAAAA==\r\n");
        assert!(is_invalid(&refuse(h, &body)));
    }

    #[test]
    fn refuses_x_amz_trailer_in_mode_without_trailer() {
        let h = hdrs(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ]);
        let body = signed_body(&[b"abc"], "x-amz-checksum-crc32:AAAAAA==\r\n");
        assert!(is_invalid(&refuse(h, &body)));
    }

    #[test]
    fn refuses_trailer_signature_in_unsigned_mode() {
        let body = format!("0\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:{TRAILER_SIG}\r\n\r\n");
        assert!(is_invalid(&refuse_unsigned(body.as_bytes())));
    }

    fn signed_trailer_headers() -> Vec<(String, String)> {
        hdrs(&[
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ])
    }

    #[test]
    fn refuses_missing_trailer_signature_in_signed_trailer_mode() {
        let body = signed_body(&[b"abc"], "x-amz-checksum-crc32:AAAAAA==\r\n");
        assert!(is_invalid(&refuse(signed_trailer_headers(), &body)));
    }

    #[test]
    fn refuses_trailer_after_trailer_signature() {
        let body = signed_body(
            &[b"abc"],
            &format!("x-amz-trailer-signature:{TRAILER_SIG}\r\nx-amz-checksum-crc32:AAAAAA==\r\n"),
        );
        assert!(is_invalid(&refuse(signed_trailer_headers(), &body)));
    }

    #[test]
    fn refuses_malformed_trailer_signature() {
        let body = signed_body(&[b"abc"], "x-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:abc\r\n");
        assert!(is_invalid(&refuse(signed_trailer_headers(), &body)));
    }

    // ---- framing ----

    #[test]
    fn refuses_plain_body_under_streaming_marker() {
        assert!(is_invalid(&refuse_unsigned(b"hello world")));
    }

    #[test]
    fn refuses_empty_body_under_streaming_marker() {
        assert!(is_invalid(&refuse_unsigned(b"")));
    }

    #[test]
    fn refuses_bad_chunk_sizes() {
        for line in ["+1", " 1", "1 ", "0x1", "-1", "g", "", "00000000000000001"] {
            let body = format!("{line}\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
            assert!(is_invalid(&refuse_unsigned(body.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn refuses_huge_chunk_size() {
        let body = b"ffffffffffffffff\r\nabc\r\n0\r\n\r\n";
        assert!(is_invalid(&refuse_unsigned(body)));
    }

    #[test]
    fn refuses_bare_lf_in_chunk_line() {
        assert!(is_invalid(&refuse_unsigned(b"1\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_bare_lf_after_data() {
        assert!(is_invalid(&refuse_unsigned(b"1\r\na\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_bare_lf_in_trailer_section() {
        assert!(is_invalid(&refuse_unsigned(b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\n\r\n")));
        assert!(is_invalid(&refuse_unsigned(b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\n")));
    }

    #[test]
    fn refuses_stray_cr_in_line() {
        assert!(is_invalid(&refuse_unsigned(b"1\r\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_data_not_followed_by_crlf() {
        // Size says 1, two bytes follow: the size is wrong.
        assert!(is_invalid(&refuse_unsigned(b"1\r\nab\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n")));
    }

    #[test]
    fn refuses_chunk_longer_than_body() {
        assert!(is_invalid(&refuse_unsigned(b"10\r\nabc\r\n")));
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc")));
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r")));
    }

    #[test]
    fn refuses_missing_final_chunk() {
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r\n")));
    }

    #[test]
    fn refuses_missing_final_empty_line() {
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n")));
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==")));
    }

    #[test]
    fn refuses_trailing_bytes() {
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\nextra")));
        assert!(is_invalid(&refuse_unsigned(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n\r\n")));
    }

    #[test]
    fn refuses_overlong_line() {
        let mut body = vec![b'0'; MAX_LINE + 10];
        body.extend_from_slice(b"1\r\na\r\n0\r\n\r\n");
        assert!(is_invalid(&refuse_unsigned(&body)));
    }

    #[test]
    fn refuses_trailer_name_not_a_token() {
        for line in ["x-amz-checksum crc32:AAAAAA==", "x-amz-checksum-crc32 :AAAAAA==", ":AAAAAA==", "no-colon"] {
            let mut h = unsigned_headers();
            h.remove(2);
            let body = format!("0\r\n{line}\r\n\r\n");
            assert!(is_invalid(&refuse(h, body.as_bytes())), "{line:?}");
        }
    }

    #[test]
    fn refuses_trailer_value_with_control_characters() {
        for value in ["AAA\x01AA==", "AAA\tAA==", "AAA\x7fAA==", "AAA\u{e9}AA==", " \t "] {
            let body = format!("0\r\nx-amz-checksum-crc32:{value}\r\n\r\n");
            assert!(is_invalid(&refuse_unsigned(body.as_bytes())), "{value:?}");
        }
    }

    #[test]
    fn refuses_extension_in_unsigned_mode() {
        let body = format!("1;chunk-signature={SIG}\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
        assert!(is_invalid(&refuse_unsigned(body.as_bytes())));
    }

    #[test]
    fn refuses_missing_chunk_signature_in_signed_mode() {
        let h = hdrs(&[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]);
        assert!(is_invalid(&refuse(h.clone(), b"1\r\na\r\n0\r\n\r\n")));
        let last_unsigned = format!("1;chunk-signature={SIG}\r\na\r\n0\r\n\r\n");
        assert!(is_invalid(&refuse(h, last_unsigned.as_bytes())));
    }

    #[test]
    fn refuses_malformed_chunk_signature() {
        let h = hdrs(&[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]);
        let short = &SIG[..63];
        for ext in [
            format!("chunk-signature={short}"),
            format!("chunk-signature={SIG}0"),
            format!("sig={SIG}"),
            format!("chunk-signature={SIG};x=1"),
        ] {
            let body = format!("1;{ext}\r\na\r\n0;chunk-signature={SIG2}\r\n\r\n");
            assert!(is_invalid(&refuse(h.clone(), body.as_bytes())), "{ext}");
        }
    }

    #[test]
    fn messages_never_echo_body_bytes() {
        let secret = "TOPSECRETBYTES";
        for body in [
            format!("{secret}\r\n"),
            format!("1\r\n{secret}\r\n0\r\n\r\n"),
            format!("0\r\nx-amz-checksum-crc32:AAAAAA==\r\n{secret}:x\r\n\r\n"),
            format!("0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n{secret}"),
        ] {
            let err = refuse_unsigned(body.as_bytes());
            assert!(!err.to_string().contains(secret), "{err}");
        }
    }
}
