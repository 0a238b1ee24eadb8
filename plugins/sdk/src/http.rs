//! Request pieces as signers see them: the URL split without normalisation,
//! its query decoded without loss, and the credential's configuration.

use crate::encoding::percent_decode;
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

    /// The query as decoded `(name, value)` byte strings, in order, `+`
    /// kept as `+`: [`decode_query`] with [`Plus::Literal`].
    pub fn query_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        decode_query(self.query.as_deref(), Plus::Literal)
    }
}

/// What a `+` in a query means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    /// A literal `+`, as RFC 3986 says (SigV4).
    Literal,
    /// A space, as HTML form encoding says (`%2B` is then the literal plus),
    /// which is how Alibaba Cloud's gateway reads queries (ACS3).
    Space,
}

/// A raw query (without `?`) as decoded `(name, value)` pairs, in order. A
/// parameter without `=` has an empty value; empty segments (`a=1&&b=2`)
/// are skipped. Bytes rather than strings, so that an escape of a non-UTF-8
/// byte survives; a malformed escape is kept as it is (see
/// [`percent_decode`]).
pub fn decode_query(query: Option<&str>, plus: Plus) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(q) = query else { return Vec::new() };
    let decode = |s: &str| match plus {
        Plus::Literal => percent_decode(s),
        Plus::Space => percent_decode(&s.replace('+', " ")),
    };
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
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
    fn decodes_queries_to_bytes() {
        let q = Some("a=%2b+b&%ff=%zz&&c&d=x=y");
        let pairs = |v: &[(&[u8], &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
            v.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        };
        let want = [(&b"a"[..], &b"++b"[..]), (b"\xff", b"%zz"), (b"c", b""), (b"d", b"x=y")];
        assert_eq!(decode_query(q, Plus::Literal), pairs(&want));
        let want = [(&b"a"[..], &b"+ b"[..]), (b"\xff", b"%zz"), (b"c", b""), (b"d", b"x=y")];
        assert_eq!(decode_query(q, Plus::Space), pairs(&want));
        assert!(decode_query(None, Plus::Literal).is_empty());
    }
}
