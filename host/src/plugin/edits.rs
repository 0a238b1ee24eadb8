//! Checking a plugin's answer and applying it to the request.
//!
//! Plugins are never trusted with the request: every edit is checked against
//! RFC 9110, size caps, the scheme's declared writable headers and a fixed
//! deny-list before anything changes. One bad edit refuses the whole answer.

use super::bindings::{Edit, Part};
use super::state::CallCredential;

/// At most this many edits in one answer.
pub const MAX_EDITS: usize = 64;
/// At most this many bytes in one header or query value (after splicing).
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// At most this many bytes across all values of one answer.
pub const MAX_TOTAL_LEN: usize = 64 * 1024;
/// At most this many bytes in a header or parameter name.
pub const MAX_NAME_LEN: usize = 256;

/// Header names no plugin may touch, whatever it declares: they decide where
/// the request goes, how it is framed, or what proxies believe about it.
const DENIED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "forwarded",
    "via",
];

/// Whether `name` is an RFC 9110 `token`.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` is a valid RFC 9110 field value: visible ASCII, obs-text,
/// and inner spaces or tabs; never CR, LF, NUL or another control character.
pub fn is_field_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

/// Why a header name is refused to plugins, if it is.
pub fn denied_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if DENIED.contains(&lower.as_str()) {
        Some("is reserved to the host")
    } else if lower.starts_with("proxy-") {
        Some("is a Proxy-* header")
    } else if lower.starts_with("x-forwarded-") {
        Some("is an X-Forwarded-* header")
    } else {
        None
    }
}

/// A header value after splicing; `sensitive` when it contains a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    /// The value.
    pub text: String,
    /// Whether a secret was spliced into it.
    pub sensitive: bool,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sensitive { f.write_str("[redacted]") } else { self.text.fmt(f) }
    }
}

/// A checked edit, secrets spliced in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Set a header (replace in place, or append).
    Set(String, Value),
    /// Append a header.
    Append(String, Value),
    /// Remove every header of this name.
    Remove(String),
    /// Append a query parameter (unencoded name and value).
    Query(String, Value),
}

fn splice(cred: &CallCredential, parts: &[Part]) -> Result<Value, String> {
    let mut text = String::new();
    let mut sensitive = false;
    for p in parts {
        match p {
            Part::Text(t) => text.push_str(t),
            Part::Secret(f) => {
                let s = cred
                    .secret(f)
                    .ok_or_else(|| format!("refers to secret field `{f}`, which the credential lacks"))?;
                text.push_str(s.expose());
                sensitive = true;
            }
        }
        if text.len() > MAX_VALUE_LEN {
            return Err(format!("a value longer than {MAX_VALUE_LEN} bytes"));
        }
    }
    Ok(Value { text, sensitive })
}

/// Check a plugin's edits against `writable` (lower-case names, or `*`) and
/// splice secrets in. The error says what was wrong, never a value.
pub fn check(edits: Vec<Edit>, writable: &[String], cred: &CallCredential) -> Result<Vec<Checked>, String> {
    if edits.len() > MAX_EDITS {
        return Err(format!("returned {} edits; the limit is {MAX_EDITS}", edits.len()));
    }
    let any = writable.iter().any(|w| w == "*");
    let header_ok = |name: &str| -> Result<(), String> {
        let shown: String = name.chars().take(64).collect::<String>().escape_debug().to_string();
        if name.len() > MAX_NAME_LEN || !is_token(name) {
            return Err(format!("header name \"{shown}\" is not a valid RFC 9110 token"));
        }
        if let Some(why) = denied_header(name) {
            return Err(format!("header `{name}` {why}"));
        }
        if !any && !writable.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            return Err(format!("header `{name}` is not among the scheme's declared writable headers"));
        }
        Ok(())
    };
    let value_ok = |name: &str, v: Value| -> Result<Value, String> {
        if !is_field_value(&v.text) {
            return Err(format!("value of `{name}` contains CR, LF, NUL or another control character"));
        }
        Ok(v)
    };
    let mut total = 0usize;
    let mut out = Vec::with_capacity(edits.len());
    for edit in edits {
        let is_set = matches!(edit, Edit::SetHeader(_));
        let checked = match edit {
            Edit::SetHeader((name, parts)) | Edit::AppendHeader((name, parts)) => {
                header_ok(&name)?;
                let v = value_ok(&name, splice(cred, &parts)?)?;
                total += name.len() + v.text.len();
                if is_set { Checked::Set(name, v) } else { Checked::Append(name, v) }
            }
            Edit::RemoveHeader(name) => {
                header_ok(&name)?;
                Checked::Remove(name)
            }
            Edit::AppendQuery((name, parts)) => {
                if name.is_empty() || name.len() > MAX_NAME_LEN {
                    return Err("query parameter name is empty or too long".into());
                }
                let v = splice(cred, &parts)?;
                total += name.len() + v.text.len();
                Checked::Query(name, v)
            }
        };
        if total > MAX_TOTAL_LEN {
            return Err(format!("returned more than {MAX_TOTAL_LEN} bytes of headers and parameters"));
        }
        out.push(checked);
    }
    Ok(out)
}

/// One header of an outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name, as written.
    pub name: String,
    /// The value; sensitive when a secret was spliced in.
    pub value: Value,
}

/// Apply checked edits: `Set` replaces the first header of that name in place
/// and drops the others (or appends); new headers come after the originals,
/// in edit order; query parameters are appended RFC 3986-encoded.
pub fn apply(url: &mut String, headers: &mut Vec<Header>, edits: Vec<Checked>) {
    for e in edits {
        match e {
            Checked::Set(name, value) => {
                let mut seen = false;
                headers.retain_mut(|h| {
                    if !h.name.eq_ignore_ascii_case(&name) {
                        return true;
                    }
                    if seen {
                        return false;
                    }
                    seen = true;
                    h.value = value.clone();
                    true
                });
                if !seen {
                    headers.push(Header { name, value });
                }
            }
            Checked::Append(name, value) => headers.push(Header { name, value }),
            Checked::Remove(name) => headers.retain(|h| !h.name.eq_ignore_ascii_case(&name)),
            Checked::Query(name, value) => {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&encode(&name));
                url.push('=');
                url.push_str(&encode(&value.text));
            }
        }
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn cred() -> CallCredential {
        let mut s = std::collections::BTreeMap::new();
        s.insert("key".to_string(), Secret::new("s3cr3t"));
        s.insert("bad".to_string(), Secret::new("a\r\nInjected: 1"));
        CallCredential::new("c", 1, vec![], s)
    }

    fn set(name: &str, parts: Vec<Part>) -> Edit {
        Edit::SetHeader((name.to_string(), parts))
    }

    #[test]
    fn refuses_reserved_and_undeclared_headers() {
        let w = vec!["authorization".to_string()];
        for name in ["Host", "proxy-authorization", "X-Forwarded-For", "Transfer-Encoding", "TE", "content-length"] {
            let err = check(vec![set(name, vec![])], &["*".into()], &cred()).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
        assert!(check(vec![set("x-other", vec![])], &w, &cred()).unwrap_err().contains("declared"));
        assert!(check(vec![set("bad name", vec![])], &w, &cred()).unwrap_err().contains("token"));
        assert!(check(vec![set("Authorization", vec![Part::Text("ok".into())])], &w, &cred()).is_ok());
    }

    #[test]
    fn refuses_control_characters_even_from_secrets() {
        let w = vec!["*".to_string()];
        for parts in [vec![Part::Text("a\nb".into())], vec![Part::Text("a\0".into())], vec![Part::Secret("bad".into())]]
        {
            let err = check(vec![set("x-a", parts)], &w, &cred()).unwrap_err();
            assert!(err.contains("control") && !err.contains("Injected"), "{err}");
        }
    }

    #[test]
    fn caps_count_and_size() {
        let w = vec!["*".to_string()];
        let many: Vec<Edit> = (0..10_000).map(|i| set(&format!("x-{i}"), vec![])).collect();
        assert!(check(many, &w, &cred()).unwrap_err().contains("limit"));
        let big = vec![set("x-a", vec![Part::Text("v".repeat(1 << 20))])];
        assert!(check(big, &w, &cred()).unwrap_err().contains("longer"));
        let wide: Vec<Edit> = (0..10).map(|i| set(&format!("x-{i}"), vec![Part::Text("v".repeat(10_000))])).collect();
        assert!(check(wide, &w, &cred()).unwrap_err().contains("more than"));
    }

    #[test]
    fn splices_secrets_and_marks_them() {
        let w = vec!["*".to_string()];
        let c = check(vec![set("x-a", vec![Part::Text("Bearer ".into()), Part::Secret("key".into())])], &w, &cred())
            .unwrap();
        let Checked::Set(_, v) = &c[0] else { panic!() };
        assert_eq!((v.text.as_str(), v.sensitive), ("Bearer s3cr3t", true));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(check(vec![set("x-a", vec![Part::Secret("nope".into())])], &w, &cred()).unwrap_err().contains("nope"));
    }

    #[test]
    fn applies_in_place_and_appends() {
        let v = |s: &str| Value { text: s.into(), sensitive: false };
        let mut headers = vec![
            Header { name: "A".into(), value: v("1") },
            Header { name: "X-Amz-Date".into(), value: v("old") },
            Header { name: "B".into(), value: v("2") },
            Header { name: "x-amz-date".into(), value: v("dup") },
        ];
        let mut url = "https://h/p".to_string();
        apply(
            &mut url,
            &mut headers,
            vec![
                Checked::Set("x-amz-date".into(), v("new")),
                Checked::Append("c".into(), v("3")),
                Checked::Remove("b".into()),
                Checked::Query("k y".into(), v("a/b+c")),
                Checked::Query("z".into(), v("")),
            ],
        );
        let flat: Vec<(&str, &str)> = headers.iter().map(|h| (h.name.as_str(), h.value.text.as_str())).collect();
        assert_eq!(flat, vec![("A", "1"), ("X-Amz-Date", "new"), ("c", "3")]);
        assert_eq!(url, "https://h/p?k%20y=a%2Fb%2Bc&z=");
    }
}
