//! The guest SDK's request pieces: the unnormalised URL, the query decoder,
//! the encodings and the canonical-request builder every signer uses. They
//! run inside plugins, where a panic is a trap and fails the call; here they
//! must not panic at all, and their encodings must hold their contracts.

use latchkey_plugin_sdk::canonical::{self, CanonicalRequest, PathEncoding, QueryOrder, Repeated, Rules};
use latchkey_plugin_sdk::encoding::{self, percent_decode, uri_encode_bytes};
use latchkey_plugin_sdk::http::{Plus, decode_query};
use latchkey_plugin_sdk::{Part, Url};

use super::input::Input;

/// Whether `s` holds only unreserved characters, `%XX` escapes and (if
/// `slash`) `/`.
fn is_encoded(s: &str, slash: bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len() || !b[i + 1].is_ascii_hexdigit() || !b[i + 2].is_ascii_hexdigit() {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) || (slash && c == b'/') => i += 1,
            _ => return false,
        }
    }
    true
}

/// Target `sdk_url`: `data` as a URL, a query and bytes to encode.
pub fn url(data: &[u8]) {
    // Encodings of the raw bytes.
    for slash in [false, true] {
        let e = uri_encode_bytes(data, slash);
        assert!(is_encoded(&e, !slash), "uri_encode_bytes left a reserved byte: {e:?}");
        assert_eq!(percent_decode(&e), data, "percent_decode(uri_encode(x)) != x");
    }
    let hex = encoding::hex(data);
    assert_eq!(hex.len(), data.len() * 2);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(encoding::base64(data).len(), data.len().div_ceil(3) * 4);
    let url64 = encoding::base64url(data);
    assert!(!url64.contains(['=', '+', '/']));

    let text = String::from_utf8_lossy(data);
    // Decoding never loses or invents a byte outside escapes.
    assert!(percent_decode(&text).len() <= text.len());
    for plus in [Plus::Literal, Plus::Space] {
        for (k, v) in decode_query(Some(&text), plus) {
            assert!(k.len() + v.len() <= text.len());
        }
    }
    let Ok(u) = Url::parse(&text) else { return };
    assert!(u.scheme == "http" || u.scheme == "https");
    assert!(!u.host.is_empty() && !u.host.contains(['@', '/', '?', '#']), "host {:?}", u.host);
    assert_eq!(u.host, u.host.to_ascii_lowercase());
    assert!(u.path.starts_with('/'), "path {:?}", u.path);
    assert!(!u.path.contains(['?', '#']) && !u.query.as_deref().unwrap_or_default().contains('#'));
    // The parts put back together parse to the same URL: nothing was
    // normalised or lost.
    let port = u.port.map(|p| format!(":{p}")).unwrap_or_default();
    let query = u.query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
    let again = format!("{}://{}{port}{}{query}", u.scheme, u.host, u.path);
    assert_eq!(Url::parse(&again).ok().as_ref(), Some(&u), "{again:?} parses differently");
    let authority = u.authority();
    assert!(authority.starts_with(&u.host));
    let _ = u.query_pairs();
}

fn header_fn(input: &mut Input<'_>) -> fn(&str) -> String {
    input.pick(&[canonical::fold as fn(&str) -> String, canonical::trim, canonical::trim_lowercase])
}

/// Target `sdk_canonical`: rules, a request and signed headers, drawn from
/// `data`, through the canonical-request builder.
pub fn canonical(data: &[u8]) {
    let mut input = Input::new(data);
    let path = input.pick(&[
        PathEncoding::AsSent,
        PathEncoding::KeepEscapes,
        PathEncoding::EncodeAgain,
        PathEncoding::Reencode,
    ]);
    let rules = Rules {
        normalize_path: input.bool(),
        path,
        query_order: input.pick(&[QueryOrder::Encoded, QueryOrder::Decoded]),
        header_value: header_fn(&mut input),
        repeated: input.pick(&[Repeated::InOrder, Repeated::Sorted]),
    };
    let method = input.word(&["GET", "PUT", "POST"]);
    let raw_path = input.word(&["/", "//a/./b/../c", "/%2F%zz%4", "/a b/é", "", "/..", "/./"]);
    let query = input.word(&["a=1&b=2", "x=%2b+y&&z", "=&=", "%ff=%00"]);
    let mut cr = CanonicalRequest::new(rules, &method, &raw_path);
    let raw_query = input.below(4) == 0;
    if raw_query {
        cr.raw_query(&query);
    } else {
        cr.params(decode_query(Some(&query), input.pick(&[Plus::Literal, Plus::Space])));
        for _ in 0..input.below(3) {
            let name = input.word(&["X-Amz-Credential", "a", ""]);
            let value: Vec<Part> = (0..input.below(3))
                .map(|_| if input.bool() { Part::text(input.text()) } else { Part::secret("key") })
                .collect();
            cr.param(&name, value);
        }
    }
    let mut secret_header = false;
    // Requests reach a plugin with RFC 9110 token names only (the host
    // checks them); other names must not panic, but may join ambiguously.
    let mut tokens = true;
    for _ in 0..input.below(6) {
        let name = input.word(&["Host", "X-Amz-Date", "x-amz-date", "Content-Type", "ÄÖ"]);
        tokens &= latchkey::plugin::edits::is_token(&name);
        if input.bool() {
            let value = input.word(&["  a   b ", "\t", "ÉÀ", ""]);
            cr.header(&name, &value);
        } else {
            let value: Vec<Part> = (0..input.below(3))
                .map(|_| if input.bool() { Part::text(input.text()) } else { Part::secret("key") })
                .collect();
            secret_header |= value.iter().any(|p| !matches!(p, Part::Text(_)));
            cr.header_parts(&name, value);
        }
    }
    let signed = cr.signed_headers();
    let names: Vec<&str> = if signed.is_empty() { vec![] } else { signed.split(';').collect() };
    if tokens {
        assert!(names.windows(2).all(|w| w[0] < w[1]), "signed headers not sorted and unique: {signed:?}");
    }
    assert!(names.iter().all(|n| *n == n.to_ascii_lowercase()));
    let payload = input.word(&["UNSIGNED-PAYLOAD", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]);
    let Ok(done) = cr.finish(&payload) else {
        assert!(secret_header && rules.repeated == Repeated::Sorted, "finish failed without a repeated secret");
        return;
    };
    assert_eq!(done.signed_headers, signed);
    let text = canonical::render(&done.parts, |f| format!("<{f}>"));
    assert!(text.starts_with(&format!("{method}\n")));
    assert!(text.ends_with(&format!("\n{signed}\n{payload}")));
    if done.parts.iter().all(|p| matches!(p, Part::Text(_))) {
        assert_eq!(done.text().as_deref(), Some(text.as_str()));
    }

    // The URI and query builders on their own.
    let uri = canonical::canonical_uri(&raw_path, rules.normalize_path, path);
    if rules.normalize_path {
        assert!(uri.starts_with('/'), "normalised URI {uri:?}");
    }
    if matches!(path, PathEncoding::EncodeAgain | PathEncoding::KeepEscapes | PathEncoding::Reencode) {
        assert!(is_encoded(&uri, true), "canonical URI {uri:?} is not encoded");
    }
    let pairs = decode_query(Some(&query), Plus::Literal);
    let q = canonical::canonical_query(&pairs, rules.query_order);
    assert!(
        q.split('&')
            .filter(|s| !s.is_empty())
            .all(|kv| kv.split_once('=').is_some_and(|(k, v)| is_encoded(k, false) && is_encoded(v, false))),
        "canonical query {q:?}"
    );
}
