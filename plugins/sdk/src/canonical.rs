//! The canonical request that AWS SigV4, Alibaba ACS3 and Tencent TC3 sign,
//! built in one place, with each provider's differences given as [`Rules`]:
//!
//! ```text
//! METHOD
//! canonical URI
//! canonical query
//! name:value          (one line per signed header, names lower case, sorted)
//! ...
//!
//! name;name;...       (the signed headers)
//! payload hash
//! ```
//!
//! Which headers to sign is the caller's choice: it adds the request's
//! headers it signs with [`CanonicalRequest::header`] (the value is
//! canonicalised by the rules) and the values it computes, or the secrets it
//! refers to, with [`CanonicalRequest::header_parts`] (taken as they are).
//! The result is a list of [`Part`]s: a secret stays a reference, so the host
//! can hash the request ([`Call::sha256_hex`](crate::Call::sha256_hex))
//! without the plugin reading the secret.
//!
//! ```
//! use latchkey_plugin_sdk::canonical::*;
//! use latchkey_plugin_sdk::{Part, Url};
//!
//! let rules = Rules {
//!     normalize_path: true,
//!     path: PathEncoding::EncodeAgain,
//!     query_order: QueryOrder::Encoded,
//!     header_value: fold,
//!     repeated: Repeated::InOrder,
//! };
//! let url = Url::parse("https://example.amazonaws.com/a/../b%20c?y=2&x=1").unwrap();
//! let mut cr = CanonicalRequest::new(rules, "GET", &url.path);
//! cr.params(url.query_pairs());
//! cr.header("My-Header", "  a   b ");
//! cr.header_parts("host", [Part::text(url.authority())]);
//! let canonical = cr.finish("UNSIGNED-PAYLOAD").unwrap();
//! assert_eq!(canonical.signed_headers, "host;my-header");
//! assert_eq!(
//!     canonical.text().unwrap(),
//!     "GET\n/b%2520c\nx=1&y=2\nhost:example.amazonaws.com\nmy-header:a b\n\nhost;my-header\nUNSIGNED-PAYLOAD"
//! );
//! ```

use crate::encoding::{percent_decode, uri_encode, uri_encode_bytes};
use crate::{Error, Part};

/// How the canonical URI is made from the path as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEncoding {
    /// The path exactly as sent (TC3).
    AsSent,
    /// The path encoded once, as S3 computes it from the object key: valid
    /// `%XX` escapes, unreserved characters and `/` stay as sent; anything
    /// else (a raw space, `+`, `$`, UTF-8, a `%` not starting an escape) is
    /// percent-encoded (SigV4 for S3).
    KeepEscapes,
    /// The path as sent, encoded once more: everything but unreserved
    /// characters and `/` is percent-encoded, `%` included, so `%2F` becomes
    /// `%252F` (SigV4 for every service but S3).
    EncodeAgain,
    /// Each `/`-separated segment percent-decoded and encoded again, `/`
    /// included: an escaped `/` stays inside its segment, and lower-case or
    /// missing escapes come out as upper-case ones. Works on bytes, so an
    /// escape of invalid UTF-8 survives (ACS3).
    Reencode,
}

/// How the query parameters are sorted. Names and values are always
/// RFC 3986-encoded (`/` too) and joined as `name=value` with `&`, `name=`
/// for an empty value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOrder {
    /// By encoded name, then encoded value (SigV4).
    Encoded,
    /// By decoded name, then decoded value, bytewise: code point order for
    /// UTF-8, so `é` sorts after `z` (ACS3).
    Decoded,
}

/// A request header's value with leading and trailing spaces and tabs
/// removed and inner runs of them folded to one space (SigV4).
pub fn fold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A request header's value with leading and trailing spaces and tabs
/// removed; inner runs are kept (ACS3).
pub fn trim(value: &str) -> String {
    value.trim_matches([' ', '\t']).to_string()
}

/// A request header's value trimmed as by [`trim`], then lower-cased,
/// non-ASCII letters too (TC3).
pub fn trim_lowercase(value: &str) -> String {
    value.trim_matches([' ', '\t']).to_lowercase()
}

/// How the values of a header added more than once are joined into its one
/// canonical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeated {
    /// Joined with `,` in the order they were added (SigV4).
    InOrder,
    /// Sorted, then joined with `,` (ACS3). A secret reference cannot be
    /// sorted: [`CanonicalRequest::finish`] fails if one is among them.
    Sorted,
}

/// One provider's canonicalisation rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Resolve `.` and `..` segments and drop empty ones (see
    /// [`canonical_uri`]) before the path is encoded.
    pub normalize_path: bool,
    /// How the path is encoded.
    pub path: PathEncoding,
    /// How query parameters are sorted (unused with
    /// [`CanonicalRequest::raw_query`]).
    pub query_order: QueryOrder,
    /// How the value of a request header added with
    /// [`CanonicalRequest::header`] is canonicalised: [`fold`], [`trim`],
    /// [`trim_lowercase`], or a scheme's own function. A function rather than
    /// a choice, so that a plugin links only the one it uses (lower-casing
    /// brings Unicode tables along).
    pub header_value: fn(&str) -> String,
    /// How the values of a repeated header are joined.
    pub repeated: Repeated,
}

/// A canonical request being built. Add the query and the signed headers in
/// any order, then [`finish`](CanonicalRequest::finish) it with the payload
/// hash.
#[derive(Debug, Clone)]
pub struct CanonicalRequest {
    rules: Rules,
    method: String,
    uri: String,
    params: Vec<Param>,
    raw_query: Option<String>,
    /// Lower-case name, then the values added under it (in order, or
    /// sorted for [`Repeated::Sorted`]); kept sorted by name.
    headers: Vec<(String, Vec<Vec<Part>>)>,
}

/// One query parameter: encoded name and value, and the key it sorts by.
#[derive(Debug, Clone)]
struct Param {
    key: (Vec<u8>, Vec<u8>),
    name: String,
    value: Vec<Part>,
}

/// The finished canonical request.
#[derive(Debug, Clone)]
pub struct Canonical {
    /// The canonical request: literal text and secret references, in order,
    /// as few parts as possible. The host hashes their concatenation.
    pub parts: Vec<Part>,
    /// The signed header names, sorted and joined with `;`.
    pub signed_headers: String,
}

impl Canonical {
    /// The canonical request as one string, unless it refers to a secret.
    pub fn text(&self) -> Option<String> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }
}

impl CanonicalRequest {
    /// Start a canonical request for `method` (as it is sent, upper case) and
    /// the path as sent, which `rules` turn into the canonical URI.
    pub fn new(rules: Rules, method: &str, path: &str) -> CanonicalRequest {
        CanonicalRequest {
            rules,
            method: method.to_string(),
            uri: canonical_uri(path, rules.normalize_path, rules.path),
            params: Vec::new(),
            raw_query: None,
            headers: Vec::new(),
        }
    }

    /// Add decoded query parameters (see [`crate::http::decode_query`]); they
    /// are encoded and sorted by the rules.
    pub fn params(&mut self, pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> &mut Self {
        let order = self.rules.query_order;
        self.params.extend(pairs.into_iter().map(|(name, value)| param(&name, &value, order)));
        sort_params(&mut self.params);
        self
    }

    /// Add one query parameter whose value may refer to secrets, such as a
    /// presigned URL's credential. The name and the text parts are encoded;
    /// a secret is spliced in as it is, so only a secret of unreserved
    /// characters can go here, and it takes no part in the ordering: give
    /// such a parameter a name no other one has.
    pub fn param(&mut self, name: &str, value: impl IntoIterator<Item = Part>) -> &mut Self {
        let mut raw = Vec::new();
        let mut encoded = String::new();
        let value: Vec<Part> = value
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => {
                    raw.extend_from_slice(t.as_bytes());
                    let e = uri_encode(&t, true);
                    encoded.push_str(&e);
                    Part::Text(e)
                }
                secret => secret,
            })
            .collect();
        let name_encoded = uri_encode(name, true);
        let key = match self.rules.query_order {
            QueryOrder::Encoded => (name_encoded.clone().into_bytes(), encoded.into_bytes()),
            QueryOrder::Decoded => (name.as_bytes().to_vec(), raw),
        };
        self.params.push(Param { key, name: name_encoded, value });
        sort_params(&mut self.params);
        self
    }

    /// Use `query` as the canonical query exactly as given, instead of the
    /// sorted parameters (TC3 signs the query as sent). Add no parameters
    /// besides.
    pub fn raw_query(&mut self, query: &str) -> &mut Self {
        self.raw_query = Some(query.to_string());
        self
    }

    /// Sign a request header: the name is lower-cased, the value
    /// canonicalised by the rules. Adding a name again adds a value to its
    /// line (see [`Repeated`]).
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        let value = (self.rules.header_value)(value);
        self.header_parts(name, [Part::Text(value)])
    }

    /// Sign a header with a value taken as it is: a value the scheme
    /// computed, or a secret reference. The name is lower-cased.
    pub fn header_parts(&mut self, name: &str, value: impl IntoIterator<Item = Part>) -> &mut Self {
        let name = name.to_ascii_lowercase();
        let mut parts = Parts::default();
        value.into_iter().for_each(|p| parts.push(p));
        // A value of text only is now one text part.
        let value = parts.finish();
        match self.headers.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(i) => {
                let values = &mut self.headers[i].1;
                let at = match (self.rules.repeated, as_text(&value)) {
                    // Sorted as they come, so no sort is needed later; a
                    // secret among them fails in `finish`.
                    (Repeated::Sorted, Some(new)) => values.partition_point(|v| as_text(v).is_some_and(|t| t <= new)),
                    _ => values.len(),
                };
                values.insert(at, value);
            }
            Err(i) => self.headers.insert(i, (name, vec![value])),
        }
        self
    }

    /// The signed header names so far, sorted and joined with `;` (a
    /// presigned URL carries them in a query parameter, before the request
    /// is finished).
    pub fn signed_headers(&self) -> String {
        self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";")
    }

    /// The canonical request, ending with `payload_hash`.
    pub fn finish(self, payload_hash: &str) -> Result<Canonical, Error> {
        let signed_headers = self.signed_headers();
        let mut out = Parts::default();
        out.text(&self.method);
        out.text("\n");
        out.text(&self.uri);
        out.text("\n");
        match &self.raw_query {
            Some(query) => out.text(query),
            None => write_query(&mut out, &self.params),
        }
        out.text("\n");
        for (name, values) in &self.headers {
            if values.len() > 1
                && self.rules.repeated == Repeated::Sorted
                && values.iter().any(|v| as_text(v).is_none())
            {
                return Err(Error::Internal(Some("repeated secret header".into())));
            }
            out.text(name);
            out.text(":");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.text(",");
                }
                value.iter().for_each(|p| out.part(p));
            }
            out.text("\n");
        }
        out.text("\n");
        out.text(&signed_headers);
        out.text("\n");
        out.text(payload_hash);
        Ok(Canonical { parts: out.finish(), signed_headers })
    }
}

/// The canonical URI of a path as sent: `.` and `..` segments resolved and
/// empty ones dropped first when `normalize` is set (AWS services treat `//`
/// as `/`; the result starts with `/` and ends with `/` only when the path
/// did, as in aws-c-auth and botocore), then encoded as `encoding` says.
pub fn canonical_uri(path: &str, normalize: bool, encoding: PathEncoding) -> String {
    let normalized;
    let path = if normalize {
        normalized = normalize_path(path);
        normalized.as_str()
    } else {
        path
    };
    match encoding {
        PathEncoding::AsSent => path.to_string(),
        PathEncoding::KeepEscapes => keep_escapes(path),
        PathEncoding::EncodeAgain => uri_encode(path, false),
        PathEncoding::Reencode => path
            .split('/')
            .map(|segment| uri_encode_bytes(&percent_decode(segment), true))
            .collect::<Vec<_>>()
            .join("/"),
    }
}

/// The canonical query of decoded parameters (see
/// [`crate::http::decode_query`]): each name and value RFC 3986-encoded,
/// sorted by `order`, joined as `name=value` with `&`.
pub fn canonical_query(pairs: &[(Vec<u8>, Vec<u8>)], order: QueryOrder) -> String {
    let mut params: Vec<Param> = pairs.iter().map(|(name, value)| param(name, value, order)).collect();
    sort_params(&mut params);
    let mut out = Parts::default();
    write_query(&mut out, &params);
    out.text
}

/// A canonical request's parts as text for `--explain`: each secret shown as
/// `secret` renders its field name (a placeholder, never the value), base64
/// of secrets as `<base64 of secrets>`.
pub fn render(parts: &[Part], secret: impl Fn(&str) -> String) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.clone(),
            Part::Secret(field) => secret(field),
            Part::Base64(_) => "<base64 of secrets>".to_string(),
        })
        .collect()
}

fn param(name: &[u8], value: &[u8], order: QueryOrder) -> Param {
    let (name_encoded, value_encoded) = (uri_encode_bytes(name, true), uri_encode_bytes(value, true));
    let key = match order {
        QueryOrder::Encoded => (name_encoded.as_bytes().to_vec(), value_encoded.as_bytes().to_vec()),
        QueryOrder::Decoded => (name.to_vec(), value.to_vec()),
    };
    Param { key, name: name_encoded, value: vec![Part::Text(value_encoded)] }
}

/// Sort the parameters by their keys. Done as they are added rather than in
/// `finish`, so that a scheme that adds none (TC3) does not link a sort; a
/// stable sort of sorted runs costs little.
fn sort_params(params: &mut [Param]) {
    params.sort_by(|a, b| a.key.cmp(&b.key));
}

fn write_query(out: &mut Parts, params: &[Param]) {
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.text("&");
        }
        out.text(&p.name);
        out.text("=");
        p.value.iter().for_each(|v| out.part(v));
    }
}

/// Resolve `.` and `..` segments and drop empty ones.
fn normalize_path(path: &str) -> String {
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

/// [`PathEncoding::KeepEscapes`].
fn keep_escapes(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            out.push_str(&path[i..i + 3]);
            i += 3;
            continue;
        }
        out.push_str(&uri_encode_bytes(&b[i..i + 1], false));
        i += 1;
    }
    out
}

/// The text of a header value that refers to no secret (one text part, as
/// `header_parts` stores it).
fn as_text(value: &[Part]) -> Option<&str> {
    match value {
        [Part::Text(t)] => Some(t),
        _ => None,
    }
}

/// Accumulates literal text and secret references into as few parts as
/// possible.
#[derive(Default)]
struct Parts {
    parts: Vec<Part>,
    text: String,
}

impl Parts {
    fn text(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn part(&mut self, part: &Part) {
        match part {
            Part::Text(t) => self.text.push_str(t),
            other => self.push(other.clone()),
        }
    }

    fn push(&mut self, part: Part) {
        match part {
            Part::Text(t) => self.text.push_str(&t),
            other => {
                if !self.text.is_empty() {
                    self.parts.push(Part::Text(std::mem::take(&mut self.text)));
                }
                self.parts.push(other);
            }
        }
    }

    fn finish(mut self) -> Vec<Part> {
        if !self.text.is_empty() || self.parts.is_empty() {
            self.parts.push(Part::Text(self.text));
        }
        self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        normalize_path: false,
        path: PathEncoding::AsSent,
        query_order: QueryOrder::Encoded,
        header_value: fold,
        repeated: Repeated::InOrder,
    };

    fn pairs(p: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        p.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn query_sorts_encoded_or_decoded() {
        let p = pairs(&[("b", "2 3"), ("a", "z"), ("a", ""), ("c/d", "+"), ("é", "1"), ("z", "2")]);
        assert_eq!(canonical_query(&p, QueryOrder::Encoded), "%C3%A9=1&a=&a=z&b=2%203&c%2Fd=%2B&z=2");
        assert_eq!(canonical_query(&p, QueryOrder::Decoded), "a=&a=z&b=2%203&c%2Fd=%2B&z=2&%C3%A9=1");
        assert_eq!(canonical_query(&[(vec![0xff], vec![])], QueryOrder::Encoded), "%FF=");
        assert_eq!(canonical_query(&[], QueryOrder::Decoded), "");
    }

    #[test]
    fn paths() {
        let uri = |p, n, e| canonical_uri(p, n, e);
        let path = "/a//b/./c/../d%2Fe%20f+g/%E2%82%AC";
        assert_eq!(uri(path, false, PathEncoding::AsSent), path);
        assert_eq!(uri(path, false, PathEncoding::KeepEscapes), "/a//b/./c/../d%2Fe%20f%2Bg/%E2%82%AC");
        assert_eq!(uri(path, true, PathEncoding::EncodeAgain), "/a/b/d%252Fe%2520f%2Bg/%25E2%2582%25AC");
        assert_eq!(uri("/a b+c%2fd%zz~/é", false, PathEncoding::KeepEscapes), "/a%20b%2Bc%2fd%25zz~/%C3%A9");
        assert_eq!(uri("//a/./b%2fc/../d e+f*", false, PathEncoding::Reencode), "//a/./b%2Fc/../d%20e%2Bf%2A");
        assert_eq!(uri("/%ff/", false, PathEncoding::Reencode), "/%FF/");
        for (p, n) in [("/", "/"), ("//", "/"), ("/example/..", "/"), ("/a/b/..", "/a"), ("//example//", "/example/")] {
            assert_eq!(uri(p, true, PathEncoding::AsSent), n);
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(fold("  a   b \t c  "), "a b c");
        assert_eq!(trim("\t a   b  "), "a   b");
        assert_eq!(trim_lowercase(" ÉCOLE A "), "école a");
    }

    #[test]
    fn builds_with_grouped_sorted_headers_and_secrets() {
        let mut cr = CanonicalRequest::new(RULES, "GET", "/");
        cr.header("My-Header", "  a   b  ").header("x-b", "1").header("my-header", "c");
        cr.header_parts("x-token", [Part::secret("token")]);
        cr.params(pairs(&[("b", "1")]));
        cr.param("A-Cred", [Part::secret("id"), Part::text("/x y")]);
        assert_eq!(cr.signed_headers(), "my-header;x-b;x-token");
        let c = cr.finish("PAYLOAD").unwrap();
        let shapes: Vec<String> = c
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => format!("text {t:?}"),
                Part::Secret(f) => format!("secret {f}"),
                Part::Base64(_) => "base64".into(),
            })
            .collect();
        assert_eq!(
            shapes,
            [
                r#"text "GET\n/\nA-Cred=""#,
                "secret id",
                r#"text "%2Fx%20y&b=1\nmy-header:a b,c\nx-b:1\nx-token:""#,
                "secret token",
                r#"text "\n\nmy-header;x-b;x-token\nPAYLOAD""#,
            ]
        );
        assert_eq!(c.text(), None);
        assert_eq!(
            render(&c.parts, |f| format!("<{f}>")),
            "GET\n/\nA-Cred=<id>%2Fx%20y&b=1\nmy-header:a b,c\nx-b:1\nx-token:<token>\n\nmy-header;x-b;x-token\nPAYLOAD"
        );
    }

    #[test]
    fn sorted_repeats_and_raw_queries() {
        let rules = Rules { header_value: trim, repeated: Repeated::Sorted, ..RULES };
        let mut cr = CanonicalRequest::new(rules, "POST", "/p");
        cr.raw_query("b=2&a=1+1").header("x-a", "b ").header("X-A", "\ta  a");
        assert_eq!(cr.finish("h").unwrap().text().unwrap(), "POST\n/p\nb=2&a=1+1\nx-a:a  a,b\n\nx-a\nh");
        let mut cr = CanonicalRequest::new(rules, "POST", "/p");
        cr.header("x-a", "b").header_parts("x-a", [Part::secret("s")]);
        assert!(matches!(cr.finish("h"), Err(Error::Internal(_))));
    }
}
