//! Request pieces as signers see them: the URL split without normalisation,
//! query parameters, canonical headers, and the credential's configuration.

use crate::encoding::{percent_decode, uri_encode};
use crate::{Error, FieldInfo};

/// An absolute URL split into its parts, without any normalisation.
///
/// Signers must see the path exactly as it will be sent: S3 signs `//` and
/// `/./` literally while other AWS services normalise them, so a URL type that
/// cleans paths on parse (as `url::Url` does) would make S3 signatures wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`, lower case.
    pub scheme: String,
    /// The host name, lower case, without port (IPv6 keeps its brackets).
    pub host: String,
    /// The explicit port, if one was given.
    pub port: Option<u16>,
    /// The raw path, `/` when empty.
    pub path: String,
    /// The raw query without `?`, if any.
    pub query: Option<String>,
}

impl Url {
    /// Split an absolute `http`/`https` URL. Fragments are dropped.
    pub fn parse(s: &str) -> Result<Url, Error> {
        let bad = |why: &str| Error::InvalidRequest(format!("malformed URL: {why}"));
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("not absolute"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("scheme must be http or https"));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..].parse::<u16>().map_err(|_| bad("invalid port"))?;
                (&authority[..i], Some(port))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (tail, None),
        };
        Ok(Url {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path: if path.is_empty() { "/".into() } else { path.into() },
            query,
        })
    }

    /// `host[:port]` as the `Host` header carries it: the port only when it
    /// is not the scheme's default.
    pub fn authority(&self) -> String {
        match (self.port, self.scheme.as_str()) {
            (None, _) | (Some(80), "http") | (Some(443), "https") => self.host.clone(),
            (Some(p), _) => format!("{}:{p}", self.host),
        }
    }

    /// The query as decoded `(name, value)` pairs, in order. A parameter
    /// without `=` has an empty value; empty segments (`a=1&&b=2`) are skipped.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let Some(q) = &self.query else { return Vec::new() };
        q.split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode_lossy(k), decode_lossy(v))
            })
            .collect()
    }
}

fn decode_lossy(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode(s)).into_owned()
}

/// The canonical query string of SigV4, ACS3 and TC3: every name and value
/// RFC 3986-encoded (`/` too), sorted by name then value, joined with `&`,
/// `name=` for empty values.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> =
        pairs.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
    enc.sort();
    let mut out = String::new();
    for (i, (k, v)) in enc.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// A header value as canonical requests carry it: leading and trailing
/// whitespace removed, inner runs of spaces and tabs folded to one space.
pub fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Headers grouped for a canonical request: lower-case names, sorted, values
/// of repeated headers joined with `,` in their original order, each value
/// passed through [`trim_all`].
pub fn canonical_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    let mut grouped: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = trim_all(value);
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => grouped.push((name, value)),
        }
    }
    grouped.sort_by(|a, b| a.0.cmp(&b.0));
    grouped
}

/// A credential's non-secret configuration.
#[derive(Debug, Clone, Default)]
pub struct Config(Vec<(String, String)>);

impl Config {
    /// Wrap the pairs the host passed.
    pub fn new(pairs: Vec<(String, String)>) -> Config {
        Config(pairs)
    }

    /// The value of a field, if set (and not empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// A boolean field: `true`/`false`/`1`/`0`/`yes`/`no`, default `false`.
    pub fn flag(&self, name: &str) -> Result<bool, Error> {
        match self.get(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(_) => Err(Error::InvalidConfig(format!("`{name}` must be true or false"))),
        }
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Refuse unknown fields and missing required ones.
    pub fn check_fields(&self, fields: &[FieldInfo]) -> Result<(), Error> {
        for (k, _) in &self.0 {
            if !fields.iter().any(|f| f.name == *k) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::InvalidConfig(format!(
                    "unknown config field `{k}` (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
        for f in fields.iter().filter(|f| f.required) {
            if self.get(&f.name).is_none() {
                return Err(Error::InvalidConfig(format!("config field `{}` is required", f.name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_without_normalising() {
        let u = Url::parse("https://Examplebucket.s3.amazonaws.com//a/./b%2Fc?x=1&y#frag").unwrap();
        assert_eq!(u.host, "examplebucket.s3.amazonaws.com");
        assert_eq!(u.path, "//a/./b%2Fc");
        assert_eq!(u.query.as_deref(), Some("x=1&y"));
        assert_eq!(u.query_pairs(), vec![("x".into(), "1".into()), ("y".into(), "".into())]);
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("[::1]", Some(8080), "/"));
        assert_eq!(u.authority(), "[::1]:8080");
        assert_eq!(Url::parse("https://h:443/").unwrap().authority(), "h");
        assert!(Url::parse("ftp://h/").is_err());
        assert!(Url::parse("https://u@h/").is_err());
        assert!(Url::parse("https:///x").is_err());
    }

    #[test]
    fn canonical_query_sorts_encoded() {
        let pairs = vec![
            ("b".to_string(), "2 3".to_string()),
            ("a".to_string(), "z".to_string()),
            ("a".to_string(), "".to_string()),
            ("c/d".to_string(), "+".to_string()),
        ];
        assert_eq!(canonical_query(&pairs), "a=&a=z&b=2%203&c%2Fd=%2B");
    }

    #[test]
    fn canonical_headers_fold() {
        let h = canonical_headers([("My-Header", "  a   b  "), ("x-b", "1"), ("my-header", "c")]);
        assert_eq!(h, vec![("my-header".into(), "a b,c".into()), ("x-b".into(), "1".into())]);
    }
}
