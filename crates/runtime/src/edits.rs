//! Checking a plugin's answer and applying it to the request.
//!
//! Plugins are never trusted with the request: every edit is checked against
//! RFC 9110, size caps, the scheme's declared writable headers and a fixed
//! deny-list before anything changes. One bad edit refuses the whole answer.

use super::bindings::{Edit, Exposure, Part, SchemeInfo, Segment};
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

/// A header value after splicing; `sensitive` when it carries a `wire`
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    /// The value.
    pub text: String,
    /// Whether a `wire` secret was spliced into it (verbatim or encoded).
    pub sensitive: bool,
    /// `text` with every declared-`identifier` splice replaced by NUL: what
    /// the output scan searches for secret values the scheme did not
    /// declare (see `broker::leak`). Empty for values the host did not take
    /// from a plugin.
    pub scan: String,
    /// `text` as a mock answer may show it: every `wire` or host-only secret
    /// (and any `base64` holding one) as `[redacted]`; all of it for a
    /// plugin granted raw secrets.
    pub shown: String,
}

impl Value {
    /// A value that came from the caller, not from a plugin.
    pub fn plain(text: impl Into<String>) -> Value {
        let text = text.into();
        Value { shown: text.clone(), text, sensitive: false, scan: String::new() }
    }
}

/// Where each secret field of one call may go: the scheme's declaration,
/// tightened by what the call did (a field used as a key is host-only).
#[derive(Clone, Copy)]
pub struct Exposures<'a> {
    /// The scheme's declaration.
    pub info: &'a SchemeInfo,
    /// Fields the call used as a key.
    pub keyed: &'a [String],
    /// Whether the plugin is granted raw secrets (so its text may hold them).
    pub granted: bool,
}

impl Exposures<'_> {
    /// The exposure of `field` for this call. A field the scheme does not
    /// declare (and that no open declaration covers) is host-only.
    pub fn of(&self, field: &str) -> Exposure {
        if self.keyed.iter().any(|k| k == field) {
            return Exposure::HostOnly;
        }
        match self.info.secret_fields.iter().find(|f| f.name == field) {
            Some(f) => f.exposure,
            None => self.info.open_secret_fields.unwrap_or(Exposure::HostOnly),
        }
    }
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

fn splice(cred: &CallCredential, exposures: Exposures<'_>, parts: &[Part]) -> Result<Value, String> {
    use base64::Engine as _;
    let mut value = Value { text: String::new(), sensitive: false, scan: String::new(), shown: String::new() };
    const REDACTED: &str = "[redacted]";
    // One secret field's value, refused when its exposure keeps it in the host.
    let take = |f: &str, value: &mut Value| -> Result<(Exposure, &latchkey_core::secret::Secret), String> {
        let s = cred.secret(f).ok_or_else(|| format!("refers to secret field `{f}`, which the credential lacks"))?;
        let exposure = exposures.of(f);
        match exposure {
            Exposure::HostOnly => {
                return Err(format!(
                    "places secret field `{f}` in the request, but it is host-only (declared so, or used as a key \
                     in this call)"
                ));
            }
            Exposure::Wire => value.sensitive = true,
            Exposure::Identifier => {}
        }
        Ok((exposure, s))
    };
    for p in parts {
        match p {
            Part::Text(t) => {
                value.text.push_str(t);
                value.scan.push_str(t);
                value.shown.push_str(t);
            }
            Part::Secret(f) => {
                let (exposure, s) = take(f, &mut value)?;
                value.text.push_str(s.expose());
                if exposure == Exposure::Identifier {
                    value.scan.push('\0');
                    value.shown.push_str(s.expose());
                } else {
                    value.scan.push_str(s.expose());
                    value.shown.push_str(REDACTED);
                }
            }
            Part::Base64(segments) => {
                let mut inner = zeroize::Zeroizing::new(String::new());
                let (mut identifiers, mut wire) = (false, false);
                for seg in segments {
                    match seg {
                        Segment::Text(t) => inner.push_str(t),
                        Segment::Secret(f) => {
                            let (exposure, s) = take(f, &mut value)?;
                            inner.push_str(s.expose());
                            identifiers |= exposure == Exposure::Identifier;
                            wire |= exposure == Exposure::Wire;
                        }
                    }
                    if inner.len() > MAX_VALUE_LEN {
                        return Err(format!("a value longer than {MAX_VALUE_LEN} bytes"));
                    }
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(inner.as_bytes());
                value.text.push_str(&encoded);
                value.shown.push_str(if wire { REDACTED } else { &encoded });
                // Identifiers may be encoded; what else is there is scanned.
                if identifiers && !wire {
                    value.scan.push('\0');
                } else {
                    value.scan.push_str(&encoded);
                }
            }
        }
        if value.text.len() > MAX_VALUE_LEN {
            return Err(format!("a value longer than {MAX_VALUE_LEN} bytes"));
        }
    }
    if exposures.granted {
        value.shown = REDACTED.to_string();
    }
    Ok(value)
}

/// Check a plugin's edits against its declaration — writable headers
/// (lower-case names, or `*`) and each secret field's exposure — and splice
/// secrets in. The error says what was wrong, never a value.
pub fn check(edits: Vec<Edit>, exposures: Exposures<'_>, cred: &CallCredential) -> Result<Vec<Checked>, String> {
    let writable = &exposures.info.writable_headers;
    if edits.len() > MAX_EDITS {
        return Err(format!("returned {} edits; the limit is {MAX_EDITS}", edits.len()));
    }
    let any = writable.iter().any(|w| w == "*");
    let header_ok = |name: &str| -> Result<(), String> {
        if name.len() > MAX_NAME_LEN || !is_token(name) {
            let shown: String = name.chars().take(64).collect::<String>().escape_debug().to_string();
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
                let v = value_ok(&name, splice(cred, exposures, &parts)?)?;
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
                let v = splice(cred, exposures, &parts)?;
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
    use latchkey_core::secret::Secret;

    fn cred() -> CallCredential {
        let mut s = std::collections::BTreeMap::new();
        s.insert("key".to_string(), Secret::new("s3cr3t"));
        s.insert("bad".to_string(), Secret::new("a\r\nInjected: 1"));
        CallCredential::new("c", 1, vec![], s)
    }

    fn info(writable: &[String], exposure: Exposure) -> SchemeInfo {
        SchemeInfo {
            name: "t".into(),
            version: "0".into(),
            description: String::new(),
            config_fields: vec![],
            secret_fields: vec![],
            writable_headers: writable.to_vec(),
            open_secret_fields: Some(exposure),
            reads_body: false,
            request_independent: false,
        }
    }

    /// `check` with every field of the given exposure.
    fn check_as(
        edits: Vec<Edit>,
        writable: &[String],
        exposure: Exposure,
        keyed: &[String],
    ) -> Result<Vec<Checked>, String> {
        let info = info(writable, exposure);
        super::check(edits, Exposures { info: &info, keyed, granted: false }, &cred())
    }

    fn check(edits: Vec<Edit>, writable: &[String], _cred: &CallCredential) -> Result<Vec<Checked>, String> {
        check_as(edits, writable, Exposure::Wire, &[])
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
    fn enforces_declared_exposure() {
        let w = vec!["*".to_string()];
        let key = || vec![set("x-a", vec![Part::Secret("key".into())])];
        let b64 =
            || vec![set("x-a", vec![Part::Base64(vec![Segment::Text("u:".into()), Segment::Secret("key".into())])])];
        // Host-only fields never reach the request, verbatim or encoded.
        for edits in [key(), b64()] {
            let err = check_as(edits, &w, Exposure::HostOnly, &[]).unwrap_err();
            assert!(err.contains("host-only") && !err.contains("s3cr3t"), "{err}");
        }
        // A field used as a key in the call is host-only whatever was declared.
        let err = check_as(key(), &w, Exposure::Identifier, &["key".into()]).unwrap_err();
        assert!(err.contains("host-only"), "{err}");
        // Wire: spliced and marked sensitive; the scan text keeps the value.
        let c = check_as(b64(), &w, Exposure::Wire, &[]).unwrap();
        let Checked::Set(_, v) = &c[0] else { panic!() };
        assert_eq!((v.text.as_str(), v.sensitive), ("dTpzM2NyM3Q=", true));
        assert_eq!(v.scan, v.text);
        // Identifier: spliced, not sensitive, masked in the scan text.
        let c = check_as(
            vec![set("x-a", vec![Part::Text("id=".into()), Part::Secret("key".into())])],
            &w,
            Exposure::Identifier,
            &[],
        )
        .unwrap();
        let Checked::Set(_, v) = &c[0] else { panic!() };
        assert_eq!((v.text.as_str(), v.sensitive, v.scan.as_str()), ("id=s3cr3t", false, "id=\0"));
    }

    #[test]
    fn applies_in_place_and_appends() {
        let v = |s: &str| Value::plain(s);
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
