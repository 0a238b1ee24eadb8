//! The credential model: names, organisations, destinations, the credential
//! record and its input types, input hygiene for what operators paste, and
//! the resolution layers that decide which secret a call uses.
//!
//! Everything here is pure: no storage, no network, no clock (callers pass
//! `now`) and no process environment (callers pass a lookup function). The
//! storage layer keeps [`Credential`]s and their encrypted secrets; the CLI
//! and the admin API call [`validate_new`] / [`validate_update`], print the
//! returned [`Notice`]s, and turn a [`ModelError`] into their own error shape
//! with [`ModelError::code`] and [`ModelError::http_status`].
//!
//! # Decisions
//!
//! - **Credential names** are 1 to 64 characters: an ASCII letter or `_`,
//!   then ASCII letters, digits, `_` and `-`. Non-ASCII letters are refused
//!   because names travel through URLs, log lines, metric labels and
//!   environment mappings, and look-alike letters (Cyrillic `а` for Latin
//!   `a`) would let two different names read the same. Names are
//!   case-sensitive, as Vault paths are. An error about a name never echoes
//!   the name: the usual way to get one wrong is to paste a key into it.
//! - **Organisation names** are 1 to 64 characters: a lower-case ASCII
//!   letter, then lower-case letters, digits, `_` and `-`. Lower case only,
//!   because `Acme` and `acme` being two organisations is a support ticket
//!   waiting to happen. A credential created without one belongs to
//!   [`DEFAULT_ORG`].
//! - **Destinations** are exact host names, IP addresses, or `*.suffix`
//!   patterns. A pattern matches one *or more* labels in front of the suffix
//!   (`*.amazonaws.com` must cover `s3.us-east-1.amazonaws.com`), never the
//!   suffix itself, and needs at least two labels after `*.` (`*.com` is
//!   refused; without a public-suffix list `*.co.uk` is not caught).
//!   Matching is ASCII case-insensitive and ignores one trailing dot.
//!   Non-ASCII names are refused with their punycode form as a suggestion;
//!   IP addresses are allowed as exact destinations only, and host names
//!   whose last label is numeric must be strict dotted-quad IPv4. URLs,
//!   ports, paths and user information are refused with a message that says
//!   which part to drop. An empty destination list allows no host at all
//!   (validation warns about it): the spec's promise is that a secret never
//!   leaves for a host outside the list.
//! - **Secret hygiene** ([`validate_new`]): one or more trailing line breaks
//!   (a file, `echo`, a terminal paste) and leading line breaks or a
//!   byte-order mark are *trimmed*, with a [`Notice`]. Surrounding spaces,
//!   tabs and other whitespace are *refused*, since they may belong to a
//!   password and silently cutting them would store a different secret.
//!   Line breaks inside a single-line value, control characters and
//!   invisible characters (zero-width spaces, bidi controls) are refused.
//!   PEM blocks (`-----BEGIN `) are multi-line by nature: their inner and
//!   trailing line breaks are kept. An empty value is refused. A field the
//!   operator marks *verbatim* skips all of this except the NUL and size
//!   checks, for the rare password with a trailing space, an intentionally
//!   empty Basic password, or a multi-line JSON key of a third-party scheme.
//!   Then the scheme validates each value itself (the `api-key` scheme
//!   refuses a `Bearer ` prefix); its error reaches the caller unchanged,
//!   except that any secret text it might echo is replaced by `[redacted]`.
//!   No message built here contains a secret value, only field names,
//!   counts and character positions.
//! - **Resolution** ([`resolve`]): per-call overrides beat the vault, which
//!   beats the host environment. A disabled vault credential fails with
//!   `credential_disabled` whatever the environment holds; an override still
//!   wins over it, because an override is the caller's own key and using it
//!   does not use the disabled secret. A layer supplies a credential whole
//!   or not at all: fields are never mixed across layers.

use crate::error::ErrorCode;
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::plugin::{Plugin, PluginError, Runtime, SchemeError, SchemeInfo, sanitize_for_log};
use crate::secret::Secret;

/// The longest credential or organisation name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// The largest secret value, in bytes. An RSA-4096 PEM key is about 3.3 KiB;
/// the cap leaves room for key files with chains without letting one
/// credential bloat the vault.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// The largest config value, in bytes.
pub const MAX_CONFIG_BYTES: usize = 16 << 10;
/// The most secret or config fields one credential may have: the same cap the
/// runtime puts on the fields a scheme may declare.
pub const MAX_FIELDS: usize = 128;
/// The most destinations one credential may have.
pub const MAX_DESTINATIONS: usize = 256;
/// The organisation of a credential created without one.
pub const DEFAULT_ORG: &str = "default";

/// A scheme's plugin error text shorter than this is not scrubbed for secret
/// values: replacing every `ab` in a message would mangle it and protect
/// nothing.
const MIN_SCRUB_LEN: usize = 4;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Which kind of name an [`ModelError::InvalidName`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A credential name.
    Credential,
    /// An organisation name.
    Organisation,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Credential => "credential name",
            NameKind::Organisation => "organisation name",
        })
    }
}

/// What one resolution layer reported when it did not supply the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCheck {
    /// The layer.
    pub layer: Layer,
    /// What it found, e.g. "OPENAI_API_KEY is unset".
    pub finding: String,
}

/// Errors of the credential model, each with a stable code. No message
/// contains a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A credential or organisation name breaks the rules.
    #[error("{kind} {reason}")]
    InvalidName {
        /// Which kind of name.
        kind: NameKind,
        /// What is wrong, without echoing the name.
        reason: String,
    },
    /// A destination host or pattern is malformed.
    #[error("destination {0}")]
    InvalidDestination(String),
    /// A secret value (or a secret field name) is unusable as given.
    #[error("{0}")]
    InvalidSecret(String),
    /// A secret field the scheme does not declare.
    #[error("scheme `{scheme}` has no secret field `{field}` (known: {})", known_list(known))]
    UnknownSecretField {
        /// The scheme.
        scheme: String,
        /// The field given.
        field: String,
        /// The fields the scheme declares.
        known: Vec<String>,
    },
    /// A required secret field is absent.
    #[error("scheme `{scheme}` needs secret field `{field}` ({description})")]
    MissingSecretField {
        /// The scheme.
        scheme: String,
        /// The missing field.
        field: String,
        /// The scheme's description of the field.
        description: String,
    },
    /// The non-secret configuration is malformed before the scheme sees it.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// An environment mapping entry is malformed.
    #[error("environment mapping: {0}")]
    InvalidEnvMapping(String),
    /// The plugin runtime or the scheme refused (unknown scheme, invalid
    /// config or secret by the scheme's own rules, a failed plugin call).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// No resolution layer has the secret.
    #[error("no layer has a secret for `{name}`: {}", findings(checked))]
    ProviderKeyMissing {
        /// What was looked for (a credential or provider name).
        name: String,
        /// Every layer checked, in precedence order, with what it found.
        checked: Vec<LayerCheck>,
    },
    /// The vault credential is disabled.
    #[error("credential `{name}` is disabled; every use fails until an operator enables it again")]
    CredentialDisabled {
        /// The credential.
        name: String,
    },
    /// No credential of that name.
    #[error("no credential named `{name}`")]
    CredentialNotFound {
        /// The name asked for.
        name: String,
    },
    /// A credential of that name already exists.
    #[error("a credential named `{name}` already exists")]
    CredentialExists {
        /// The name.
        name: String,
    },
    /// Delete refused while agents or routes use the credential.
    #[error("credential `{name}` is attached to {attachments}; detach it first, or force the delete")]
    CredentialAttached {
        /// The credential.
        name: String,
        /// Who uses it, e.g. "1 agent (ci-bot) and 1 route (openai)".
        attachments: String,
    },
    /// The credential changed since the caller read it.
    #[error(
        "credential `{name}` is at version {actual}, not {expected}: it changed since it was read; read it again and retry"
    )]
    VersionConflict {
        /// The credential.
        name: String,
        /// The version the caller based its change on.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() { "none".to_string() } else { known.join(", ") }
}

fn findings(checked: &[LayerCheck]) -> String {
    checked.iter().map(|c| format!("{}: {}", c.layer, c.finding)).collect::<Vec<_>>().join("; ")
}

impl ModelError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ModelError::InvalidName { .. } => ErrorCode::InvalidName,
            ModelError::InvalidDestination(_) => ErrorCode::InvalidDestination,
            ModelError::InvalidSecret(_) => ErrorCode::InvalidSecret,
            ModelError::UnknownSecretField { .. } => ErrorCode::UnknownSecretField,
            ModelError::MissingSecretField { .. } => ErrorCode::MissingSecretField,
            ModelError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            ModelError::InvalidEnvMapping(_) => ErrorCode::InvalidEnvMapping,
            ModelError::Plugin(e) => e.code(),
            ModelError::ProviderKeyMissing { .. } => ErrorCode::ProviderKeyMissing,
            ModelError::CredentialDisabled { .. } => ErrorCode::CredentialDisabled,
            ModelError::CredentialNotFound { .. } => ErrorCode::CredentialNotFound,
            ModelError::CredentialExists { .. } => ErrorCode::CredentialExists,
            ModelError::CredentialAttached { .. } => ErrorCode::CredentialAttached,
            ModelError::VersionConflict { .. } => ErrorCode::VersionConflict,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// How a character is shown in messages: printable ASCII as itself, the rest
/// by name or code point, so invisible or look-alike characters are visible.
fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\t' => "a tab".into(),
        '\r' | '\n' => "a line break".into(),
        '\0' => "a NUL character".into(),
        '\u{a0}' => "a no-break space (U+00A0)".into(),
        '\u{200b}' => "a zero-width space (U+200B)".into(),
        '\u{feff}' => "a byte-order mark (U+FEFF)".into(),
        c if c.is_ascii_graphic() => format!("`{c}`"),
        c if c.is_whitespace() => format!("a whitespace character (U+{:04X})", c as u32),
        c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
        c if is_invisible(c) => format!("an invisible character (U+{:04X})", c as u32),
        c => format!("U+{:04X} (not ASCII)", c as u32),
    }
}

/// Characters that render as nothing and survive copy-paste from web pages
/// and chat tools: zero-width spaces and joiners, direction marks and bidi
/// controls (the "Trojan Source" set), word joiners, the soft hyphen and the
/// byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

fn check_name(kind: NameKind, s: &str) -> Result<(), ModelError> {
    let err = |reason: String| ModelError::InvalidName { kind, reason };
    let len = s.chars().count();
    if len == 0 {
        return Err(err(format!("is empty; it must be 1 to {MAX_NAME_LEN} characters")));
    }
    if len > MAX_NAME_LEN {
        return Err(err(format!("is {len} characters long; the limit is {MAX_NAME_LEN}")));
    }
    let lower_only = kind == NameKind::Organisation;
    for (i, c) in s.chars().enumerate() {
        if lower_only && c.is_ascii_uppercase() {
            return Err(err(format!(
                "has the upper-case letter `{c}` at position {}; organisation names are lower case",
                i + 1
            )));
        }
        let letter = c.is_ascii_alphabetic();
        if i == 0 {
            let (ok, rule) = match kind {
                NameKind::Credential => (letter || c == '_', "an ASCII letter or `_`"),
                NameKind::Organisation => (letter, "a lower-case ASCII letter"),
            };
            if !ok {
                return Err(err(format!("must start with {rule}, not {}", describe_char(c))));
            }
        } else if !(letter || c.is_ascii_digit() || c == '_' || c == '-') {
            return Err(err(format!(
                "has {} at position {}; only ASCII letters, digits, `_` and `-` are allowed",
                describe_char(c),
                i + 1
            )));
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Check a name against the rules; nothing is trimmed or changed.
            pub fn parse(s: &str) -> Result<$ty, ModelError> {
                check_name($kind, s)?;
                Ok($ty(s.to_string()))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<$ty, ModelError> {
                $ty::parse(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = ModelError;
            fn try_from(s: String) -> Result<$ty, ModelError> {
                check_name($kind, &s)?;
                Ok($ty(s))
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A credential's name: 1 to 64 characters, an ASCII letter or `_`, then
    /// ASCII letters, digits, `_` and `-`. Case-sensitive.
    CredentialName,
    NameKind::Credential
);

name_type!(
    /// An organisation's name: 1 to 64 characters, a lower-case ASCII letter,
    /// then lower-case letters, digits, `_` and `-`.
    OrgId,
    NameKind::Organisation
);

impl Default for OrgId {
    fn default() -> OrgId {
        OrgId(DEFAULT_ORG.to_string())
    }
}

// ---------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------

/// A host a credential may be sent to: an exact host name, an IP address, or
/// `*.example.com`, which matches one or more labels before `example.com` but
/// not `example.com` itself. See the module documentation for the rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Destination(Pattern);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Pattern {
    /// A lower-case host name without a trailing dot.
    Host(String),
    /// The suffix after `*.`, lower case, without a trailing dot.
    Subdomains(String),
    /// An IP address, IPv4-mapped IPv6 folded to IPv4.
    Ip(IpAddr),
}

/// What a syntactically valid host turned out to be.
enum HostKind {
    Name,
    Ipv4(Ipv4Addr),
}

/// Check a lower-case host name without a trailing dot. Underscores are
/// allowed because real internal names have them (and URL parsers accept
/// them); `*` is handled by the caller.
fn check_host(s: &str) -> Result<HostKind, String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > 253 {
        return Err(format!("is {} characters long; a host name has at most 253", s.len()));
    }
    let labels: Vec<&str> = s.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("has an empty label (`..`, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("has a label of {} characters; a label has at most 63", label.len()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("has {}, which no host name contains", describe_char(c)));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("has the label `{label}`, which starts or ends with `-`"));
        }
    }
    // URL parsers read a host whose last label is a number as an IPv4
    // address (`127.1`, `0x7f.0.0.1`); only the unambiguous dotted quad is
    // accepted, so what is allowed is what is connected to.
    let last = labels[labels.len() - 1];
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.strip_prefix("0x").is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return s
            .parse::<Ipv4Addr>()
            .map(HostKind::Ipv4)
            .map_err(|_| "looks like an IP address but is not a dotted-quad IPv4 address such as `10.0.0.1`".into());
    }
    Ok(HostKind::Name)
}

/// The punycode (A-label) form of a non-ASCII host, for the error message.
fn punycode_hint(host: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://{host}/")).ok()?;
    url.host_str().filter(|h| h.is_ascii()).map(str::to_string)
}

impl Destination {
    /// Parse an exact host, an IP address (IPv6 with or without brackets) or
    /// a `*.suffix` pattern. Case is folded and one trailing dot dropped;
    /// nothing else is changed or guessed.
    pub fn parse(input: &str) -> Result<Destination, ModelError> {
        let shown = sanitize_for_log(input, 100);
        let err = |why: String| ModelError::InvalidDestination(format!("`{shown}` {why}"));
        if input.is_empty() {
            return Err(ModelError::InvalidDestination(
                "is empty; give a host such as `api.openai.com` or a pattern such as `*.example.com`".into(),
            ));
        }
        if input.trim() != input {
            return Err(err("has surrounding whitespace".into()));
        }
        if input.contains("://") {
            let host = url::Url::parse(input).ok().and_then(|u| u.host_str().map(str::to_string));
            return Err(err(match host {
                Some(h) => format!("is a URL; give only its host, `{h}`"),
                None => "is a URL; give only its host".into(),
            }));
        }
        let bare = input.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(input);
        if let Ok(ip) = bare.parse::<Ipv6Addr>() {
            return Ok(Destination(Pattern::Ip(IpAddr::V6(ip).to_canonical())));
        }
        if !input.is_ascii() {
            let (star, host) = match input.strip_prefix("*.") {
                Some(rest) => ("*.", rest),
                None => ("", input),
            };
            return Err(err(match punycode_hint(host) {
                Some(p) => format!("is not ASCII; give its punycode form, `{star}{p}`"),
                None => "is not ASCII; give its punycode (`xn--`) form".into(),
            }));
        }
        if input.contains('/') {
            return Err(err("has a path; give only the host".into()));
        }
        if input.contains('@') {
            return Err(err("has user information (`user@`); give only the host".into()));
        }
        if let Some((_, port)) = input.rsplit_once(':') {
            return Err(err(if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                "has a port; a destination is a host and covers every port".into()
            } else {
                "has `:`, which no host name contains".into()
            }));
        }
        let lower = input.to_ascii_lowercase();
        let body = lower.strip_suffix('.').unwrap_or(&lower);
        if body == "*" {
            return Err(err(
                "would allow every host; list the hosts (or `*.example.com` patterns) the credential may be sent to"
                    .into(),
            ));
        }
        if let Some(suffix) = body.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(err("may have `*` only as its whole first label, as in `*.example.com`".into()));
            }
            match check_host(suffix).map_err(&err)? {
                HostKind::Ipv4(_) => Err(err("is a wildcard over an IP address; give IP addresses exactly".into())),
                HostKind::Name if !suffix.contains('.') => Err(err(format!(
                    "would cover all of `{suffix}`; a wildcard needs at least two labels after `*.`, as in `*.example.{suffix}`"
                ))),
                HostKind::Name => Ok(Destination(Pattern::Subdomains(suffix.to_string()))),
            }
        } else {
            if body.contains('*') {
                return Err(err("may have `*` only as its whole first label, as in `*.example.com`".into()));
            }
            match check_host(body).map_err(&err)? {
                HostKind::Ipv4(ip) => Ok(Destination(Pattern::Ip(IpAddr::V4(ip)))),
                HostKind::Name => Ok(Destination(Pattern::Host(body.to_string()))),
            }
        }
    }

    /// Whether `host` (as a URL gives it: a name, an IPv4 address, or an IPv6
    /// address in brackets; no port) may receive the credential. A host that
    /// is not a well-formed name or address never matches.
    pub fn matches(&self, host: &str) -> bool {
        let bare = host.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<Ipv6Addr>() {
            return self.0 == Pattern::Ip(IpAddr::V6(ip).to_canonical());
        }
        if !host.is_ascii() {
            return false;
        }
        let lower = host.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        match (check_host(name), &self.0) {
            (Ok(HostKind::Ipv4(ip)), Pattern::Ip(want)) => IpAddr::V4(ip) == *want,
            (Ok(HostKind::Name), Pattern::Host(want)) => name == want,
            (Ok(HostKind::Name), Pattern::Subdomains(suffix)) => {
                // At least one whole label before the suffix: `a.example.com`
                // and `a.b.example.com`, never `example.com` or `badexample.com`.
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            _ => false,
        }
    }

    /// Whether this is a `*.suffix` pattern.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.0, Pattern::Subdomains(_))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Pattern::Host(h) => f.write_str(h),
            Pattern::Subdomains(s) => write!(f, "*.{s}"),
            Pattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Pattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

impl FromStr for Destination {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Destination, ModelError> {
        Destination::parse(s)
    }
}

impl TryFrom<String> for Destination {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Destination, ModelError> {
        Destination::parse(&s)
    }
}

impl From<Destination> for String {
    fn from(d: Destination) -> String {
        d.to_string()
    }
}

/// Whether any destination in the list matches `host`. An empty list allows
/// nothing.
pub fn destinations_allow(destinations: &[Destination], host: &str) -> bool {
    destinations.iter().any(|d| d.matches(host))
}

// ---------------------------------------------------------------------------
// The credential record
// ---------------------------------------------------------------------------

/// Who uses a credential. Delete is refused while this is not empty, unless
/// forced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Agents allowed to use the credential.
    pub agents: BTreeSet<String>,
    /// Routes that send it upstream.
    pub routes: BTreeSet<String>,
}

impl Attachments {
    /// Whether nothing uses the credential.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.routes.is_empty()
    }
}

impl fmt::Display for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |set: &BTreeSet<String>, one: &str, many: &str| {
            let names: Vec<&str> = set.iter().map(String::as_str).collect();
            format!("{} {} ({})", set.len(), if set.len() == 1 { one } else { many }, names.join(", "))
        };
        match (self.agents.is_empty(), self.routes.is_empty()) {
            (true, true) => f.write_str("nothing"),
            (false, true) => f.write_str(&part(&self.agents, "agent", "agents")),
            (true, false) => f.write_str(&part(&self.routes, "route", "routes")),
            (false, false) => {
                write!(f, "{} and {}", part(&self.agents, "agent", "agents"), part(&self.routes, "route", "routes"))
            }
        }
    }
}

/// A stored credential, without its secret values (the storage layer keeps
/// those encrypted, keyed by the names in `secret_fields`). Nothing here is
/// secret, so the derived `Debug` is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The name, unique within the vault.
    pub name: CredentialName,
    /// The organisation it belongs to.
    pub org: OrgId,
    /// The scheme that applies it.
    pub scheme: String,
    /// Non-secret configuration, in the order given.
    pub config: Vec<(String, String)>,
    /// The names of its secret fields.
    pub secret_fields: BTreeSet<String>,
    /// Whether it may be used; disabled → every use fails with 401.
    pub enabled: bool,
    /// Hosts it may be sent to; empty allows none.
    pub destinations: Vec<Destination>,
    /// Agents and routes that use it (maintained by the storage layer).
    pub attachments: Attachments,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
    /// 1 at creation, plus one for every change.
    pub version: u64,
}

impl Credential {
    /// Whether the credential may be sent to `host`.
    pub fn allows(&self, host: &str) -> bool {
        destinations_allow(&self.destinations, host)
    }

    /// `credential_disabled` unless enabled.
    pub fn check_enabled(&self) -> Result<(), ModelError> {
        if self.enabled { Ok(()) } else { Err(ModelError::CredentialDisabled { name: self.name.to_string() }) }
    }

    /// Refuse a delete while the credential is attached, unless forced.
    pub fn check_delete(&self, force: bool) -> Result<(), ModelError> {
        if force || self.attachments.is_empty() {
            return Ok(());
        }
        Err(ModelError::CredentialAttached { name: self.name.to_string(), attachments: self.attachments.to_string() })
    }

    /// Apply a validated update. Returns whether anything changed; only then
    /// do `version` and `updated_at` move. Replacing the secrets always counts
    /// as a change (a rotation is a change even to the same value). The
    /// storage layer calls this inside its transaction, so the version check
    /// is against the row it is about to write.
    pub fn apply_update(&mut self, update: &CredentialUpdate, now: OffsetDateTime) -> Result<bool, ModelError> {
        if let Some(expected) = update.expected_version
            && expected != self.version
        {
            return Err(ModelError::VersionConflict { name: self.name.to_string(), expected, actual: self.version });
        }
        let mut changed = false;
        if let Some(config) = &update.config
            && *config != self.config
        {
            self.config = config.clone();
            changed = true;
        }
        if let Some(secrets) = &update.secrets {
            self.secret_fields = secrets.keys().cloned().collect();
            changed = true;
        }
        if let Some(enabled) = update.enabled
            && enabled != self.enabled
        {
            self.enabled = enabled;
            changed = true;
        }
        if let Some(destinations) = &update.destinations
            && *destinations != self.destinations
        {
            self.destinations = destinations.clone();
            changed = true;
        }
        if changed {
            self.version += 1;
            // Replicas' clocks differ a little; `updated_at` never goes back.
            self.updated_at = now.max(self.updated_at);
        }
        Ok(changed)
    }
}

/// A validated new credential with its secret values, made only by
/// [`validate_new`]. `Debug` shows secret field names, never values.
#[derive(Debug, Clone)]
pub struct NewCredential {
    name: CredentialName,
    org: OrgId,
    scheme: String,
    config: Vec<(String, String)>,
    secrets: BTreeMap<String, Secret>,
    enabled: bool,
    destinations: Vec<Destination>,
}

impl NewCredential {
    /// The name.
    pub fn name(&self) -> &CredentialName {
        &self.name
    }

    /// The organisation.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The scheme.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The non-secret configuration.
    pub fn config(&self) -> &[(String, String)] {
        &self.config
    }

    /// The cleaned secret values, by field.
    pub fn secrets(&self) -> &BTreeMap<String, Secret> {
        &self.secrets
    }

    /// Whether it starts enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Where it may be sent.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// The record to store (version 1, created and updated `now`, nothing
    /// attached) and the secret values to encrypt beside it.
    pub fn into_credential(self, now: OffsetDateTime) -> (Credential, BTreeMap<String, Secret>) {
        let credential = Credential {
            name: self.name,
            org: self.org,
            scheme: self.scheme,
            config: self.config,
            secret_fields: self.secrets.keys().cloned().collect(),
            enabled: self.enabled,
            destinations: self.destinations,
            attachments: Attachments::default(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        (credential, self.secrets)
    }
}

/// A validated change to a credential, made only by [`validate_update`];
/// apply it with [`Credential::apply_update`]. `None` leaves a part as it is.
#[derive(Debug, Clone, Default)]
pub struct CredentialUpdate {
    config: Option<Vec<(String, String)>>,
    secrets: Option<BTreeMap<String, Secret>>,
    enabled: Option<bool>,
    destinations: Option<Vec<Destination>>,
    expected_version: Option<u64>,
}

impl CredentialUpdate {
    /// The new configuration, replacing the old one whole.
    pub fn config(&self) -> Option<&[(String, String)]> {
        self.config.as_deref()
    }

    /// The new secret values, replacing the stored set whole.
    pub fn secrets(&self) -> Option<&BTreeMap<String, Secret>> {
        self.secrets.as_ref()
    }

    /// Enable or disable.
    pub fn enabled(&self) -> Option<bool> {
        self.enabled
    }

    /// The new destinations, replacing the old list whole.
    pub fn destinations(&self) -> Option<&[Destination]> {
        self.destinations.as_deref()
    }

    /// The version the change was based on, if the caller gave one.
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }
}

// ---------------------------------------------------------------------------
// Input hygiene
// ---------------------------------------------------------------------------

/// What an operator typed or pasted to create a credential, before any
/// check. `Debug` shows secret field names, never values.
#[derive(Debug, Clone)]
pub struct RawCredential {
    /// The name as given.
    pub name: String,
    /// The organisation; `None` for [`DEFAULT_ORG`].
    pub org: Option<String>,
    /// The scheme name.
    pub scheme: String,
    /// Config pairs, in order.
    pub config: Vec<(String, String)>,
    /// Secret values by field.
    pub secrets: BTreeMap<String, Secret>,
    /// Secret fields to store exactly as given (see the module docs).
    pub verbatim: BTreeSet<String>,
    /// Whether it starts enabled.
    pub enabled: bool,
    /// Destination hosts and patterns as given.
    pub destinations: Vec<String>,
}

impl RawCredential {
    /// An enabled credential with no config, secrets or destinations yet.
    pub fn new(name: impl Into<String>, scheme: impl Into<String>) -> RawCredential {
        RawCredential {
            name: name.into(),
            org: None,
            scheme: scheme.into(),
            config: Vec::new(),
            secrets: BTreeMap::new(),
            verbatim: BTreeSet::new(),
            enabled: true,
            destinations: Vec::new(),
        }
    }
}

/// What an operator gave to change a credential. `None` leaves a part as it
/// is; the name, organisation and scheme cannot change.
#[derive(Debug, Clone, Default)]
pub struct RawUpdate {
    /// A new configuration, replacing the old one whole.
    pub config: Option<Vec<(String, String)>>,
    /// New secret values, replacing the stored set whole (a rotation gives
    /// every field, so old and new halves of a key pair never mix).
    pub secrets: Option<BTreeMap<String, Secret>>,
    /// Secret fields of `secrets` to store exactly as given.
    pub verbatim: BTreeSet<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New destinations, replacing the old list whole.
    pub destinations: Option<Vec<String>>,
    /// The version the change is based on; a different stored version fails
    /// with `version_conflict`.
    pub expected_version: Option<u64>,
}

/// Whether a [`Notice`] reports a change made to the input or only a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The input was changed (trimmed, de-duplicated) before it was accepted.
    Changed,
    /// The input was accepted as given, but looks like a mistake.
    Warning,
}

/// Something validation wants the operator to know that is not an error.
/// Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Change or warning.
    pub kind: NoticeKind,
    /// One sentence for the operator.
    pub message: String,
}

impl Notice {
    fn changed(message: String) -> Notice {
        Notice { kind: NoticeKind::Changed, message }
    }

    fn warning(message: String) -> Notice {
        Notice { kind: NoticeKind::Warning, message }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A validated value and the notices produced on the way.
#[derive(Debug)]
pub struct Validated<T> {
    /// The value.
    pub value: T,
    /// Changes made and warnings, in the order they arose.
    pub notices: Vec<Notice>,
}

/// Check a credential's secret field names against what its scheme declares:
/// every field must be declared (unless the scheme's fields are open) and
/// every required one present. Shared with `latchkey sign`.
pub fn check_secret_fields(info: &SchemeInfo, fields: &[&str]) -> Result<(), ModelError> {
    for field in fields {
        if info.open_secret_fields.is_none() && !info.secret_fields.iter().any(|f| f.name == *field) {
            return Err(ModelError::UnknownSecretField {
                scheme: info.name.clone(),
                field: sanitize_for_log(field, 80),
                known: info.secret_fields.iter().map(|f| f.name.clone()).collect(),
            });
        }
    }
    if info.open_secret_fields.is_none() {
        for f in info.secret_fields.iter().filter(|f| f.required) {
            if !fields.contains(&f.name.as_str()) {
                return Err(ModelError::MissingSecretField {
                    scheme: info.name.clone(),
                    field: f.name.clone(),
                    description: f.description.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Check and clean what an operator gave for a new credential: the name and
/// organisation, the scheme, the config (then the scheme's own check), the
/// secrets (field names, hygiene, then the scheme's own check of each value)
/// and the destinations. Errors come first-found, with a stable code and a
/// message that never contains a secret value; what was trimmed or looks
/// wrong comes back as notices.
pub fn validate_new(runtime: &Runtime, raw: RawCredential) -> Result<Validated<NewCredential>, ModelError> {
    let mut notices = Vec::new();
    let name = CredentialName::parse(trim_identifier(&raw.name, "the credential name", &mut notices))?;
    let org = match &raw.org {
        Some(o) => OrgId::parse(trim_identifier(o, "the organisation name", &mut notices))?,
        None => OrgId::default(),
    };
    let plugin = runtime.get(trim_identifier(&raw.scheme, "the scheme name", &mut notices))?;
    let config = clean_config(&plugin.info, raw.config, &mut notices)?;
    runtime.validate_config(&plugin, &config)?;
    let secrets = clean_secrets(runtime, &plugin, &config, &raw.secrets, &raw.verbatim, &mut notices)?;
    let destinations = clean_destinations(&raw.destinations, &mut notices)?;
    let value = NewCredential {
        name,
        org,
        scheme: plugin.info.name.clone(),
        config,
        secrets,
        enabled: raw.enabled,
        destinations,
    };
    Ok(Validated { value, notices })
}

/// Check and clean a change to `current`, as [`validate_new`] does for the
/// parts it replaces. When the config changes and the secrets do not, the
/// stored secrets are checked again against the new config (a `jwt` switch
/// from HS256 to ES256 makes an HMAC key unusable): `stored_secrets` is
/// called for them then, and only then, so the storage layer decrypts only
/// when it must. The version check here is early feedback; the binding one
/// is in [`Credential::apply_update`].
pub fn validate_update<E: From<ModelError>>(
    runtime: &Runtime,
    current: &Credential,
    raw: RawUpdate,
    stored_secrets: impl FnOnce() -> Result<BTreeMap<String, Secret>, E>,
) -> Result<Validated<CredentialUpdate>, E> {
    let mut notices = Vec::new();
    if let Some(expected) = raw.expected_version
        && expected != current.version
    {
        return Err(
            ModelError::VersionConflict { name: current.name.to_string(), expected, actual: current.version }.into()
        );
    }
    let plugin = runtime.get(&current.scheme).map_err(ModelError::from)?;
    let config = match raw.config {
        Some(c) => {
            let c = clean_config(&plugin.info, c, &mut notices)?;
            runtime.validate_config(&plugin, &c).map_err(ModelError::from)?;
            Some(c)
        }
        None => None,
    };
    let effective_config = config.as_deref().unwrap_or(&current.config);
    let secrets = match &raw.secrets {
        Some(s) => Some(clean_secrets(runtime, &plugin, effective_config, s, &raw.verbatim, &mut notices)?),
        None => {
            if let Some(field) = raw.verbatim.iter().next() {
                return Err(ModelError::InvalidSecret(format!(
                    "secret `{}` is marked verbatim, but the update gives no secrets",
                    sanitize_for_log(field, 80)
                ))
                .into());
            }
            if config.as_ref().is_some_and(|c| *c != current.config) {
                let stored = stored_secrets()?;
                let all: Vec<&Secret> = stored.values().collect();
                for (field, value) in &stored {
                    runtime
                        .validate_secret(&plugin, effective_config, field, value)
                        .map_err(|e| ModelError::from(scrub_plugin_error(e, &all)))?;
                }
            }
            None
        }
    };
    let destinations = match &raw.destinations {
        Some(d) => Some(clean_destinations(d, &mut notices)?),
        None => None,
    };
    let value = CredentialUpdate {
        config,
        secrets,
        enabled: raw.enabled,
        destinations,
        expected_version: raw.expected_version,
    };
    Ok(Validated { value, notices })
}

/// Names and scheme names never contain whitespace, so whitespace around one
/// is a paste artefact: trim it, and say so.
fn trim_identifier<'a>(s: &'a str, what: &str, notices: &mut Vec<Notice>) -> &'a str {
    let trimmed = s.trim();
    if trimmed.len() != s.len() && !trimmed.is_empty() {
        notices.push(Notice::changed(format!("trimmed surrounding whitespace from {what}")));
        trimmed
    } else {
        s
    }
}

fn clean_config(
    info: &SchemeInfo,
    config: Vec<(String, String)>,
    notices: &mut Vec<Notice>,
) -> Result<Vec<(String, String)>, ModelError> {
    let bad = |m: String| ModelError::InvalidConfig(m);
    if config.len() > MAX_FIELDS {
        return Err(bad(format!("{} config fields; the limit is {MAX_FIELDS}", config.len())));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(config.len());
    for (key, value) in config {
        let shown = sanitize_for_log(&key, 80);
        if key.is_empty() {
            return Err(bad("a config field has an empty name".into()));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)) {
            return Err(bad(format!("config field name `{shown}` contains whitespace or an invisible character")));
        }
        if !seen.insert(key.clone()) {
            return Err(bad(format!("config field `{shown}` is given twice")));
        }
        // Catch the secret typed as config before the scheme calls it an
        // unknown field: as config it would be stored unencrypted and printed.
        if info.secret_fields.iter().any(|f| f.name == key) && !info.config_fields.iter().any(|f| f.name == key) {
            return Err(bad(format!(
                "`{shown}` is a secret field of scheme `{}`: give it as a secret, which is encrypted and never printed",
                info.name
            )));
        }
        if value.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("config `{shown}` is {} bytes; the limit is {MAX_CONFIG_BYTES}", value.len())));
        }
        // Config values keep surrounding spaces (`prefix=Bearer ` needs its
        // space); only trailing line breaks, which no config value needs, go.
        let trimmed = value.trim_end_matches(['\r', '\n']);
        if let Some(c) =
            trimmed.chars().find(|c| (c.is_control() && !matches!(c, '\t' | '\r' | '\n')) || is_invisible(*c))
        {
            return Err(bad(format!("config `{shown}` contains {}", describe_char(c))));
        }
        let value = if trimmed.len() != value.len() {
            notices.push(Notice::changed(format!("trimmed a trailing line break from config `{shown}`")));
            trimmed.to_string()
        } else {
            value
        };
        out.push((key, value));
    }
    Ok(out)
}

fn clean_secrets(
    runtime: &Runtime,
    plugin: &Plugin,
    config: &[(String, String)],
    secrets: &BTreeMap<String, Secret>,
    verbatim: &BTreeSet<String>,
    notices: &mut Vec<Notice>,
) -> Result<BTreeMap<String, Secret>, ModelError> {
    let info = &plugin.info;
    if secrets.len() > MAX_FIELDS {
        return Err(ModelError::InvalidSecret(format!(
            "{} secret fields given; the limit is {MAX_FIELDS}",
            secrets.len()
        )));
    }
    for field in secrets.keys() {
        let shown = sanitize_for_log(field, 80);
        if field.is_empty() {
            return Err(ModelError::InvalidSecret("a secret field has an empty name".into()));
        }
        if field.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)) {
            return Err(ModelError::InvalidSecret(format!(
                "secret field name `{shown}` contains whitespace or an invisible character"
            )));
        }
    }
    if let Some(field) = verbatim.iter().find(|f| !secrets.contains_key(*f)) {
        return Err(ModelError::InvalidSecret(format!(
            "secret `{}` is marked verbatim but has no value",
            sanitize_for_log(field, 80)
        )));
    }
    let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
    check_secret_fields(info, &names)?;
    if info.open_secret_fields.is_some() && secrets.is_empty() {
        let (field, description) = info
            .secret_fields
            .first()
            .map(|f| (f.name.clone(), f.description.clone()))
            .unwrap_or_else(|| ("<field>".into(), "any name".into()));
        return Err(ModelError::MissingSecretField {
            scheme: info.name.clone(),
            field,
            description: format!("at least one secret field is needed; {description}"),
        });
    }
    let mut out = BTreeMap::new();
    for (field, value) in secrets {
        out.insert(field.clone(), clean_secret_value(field, value, verbatim.contains(field), notices)?);
    }
    // The scheme may echo what it was given despite its contract; scrub both
    // the raw and the cleaned values from anything it says.
    let all: Vec<&Secret> = secrets.values().chain(out.values()).collect();
    for (field, value) in &out {
        runtime.validate_secret(plugin, config, field, value).map_err(|e| scrub_plugin_error(e, &all))?;
    }
    Ok(out)
}

/// The whitespace run at one end of a value, described for a message.
fn describe_run(run: &[char]) -> String {
    let first = run[0];
    if run.len() == 1 {
        describe_char(first)
    } else if run.iter().all(|c| *c == first) {
        match first {
            ' ' => format!("{} spaces", run.len()),
            '\t' => format!("{} tabs", run.len()),
            c => format!("{} × {}", run.len(), describe_char(c)),
        }
    } else {
        format!("{} whitespace characters", run.len())
    }
}

fn clean_secret_value(
    field: &str,
    value: &Secret,
    verbatim: bool,
    notices: &mut Vec<Notice>,
) -> Result<Secret, ModelError> {
    let shown = sanitize_for_log(field, 80);
    let bad = |reason: String| ModelError::InvalidSecret(format!("secret `{shown}` {reason}"));
    let raw = value.expose();
    if raw.len() > MAX_SECRET_BYTES {
        return Err(bad(format!("is {} bytes; the limit is {MAX_SECRET_BYTES}", raw.len())));
    }
    if raw.contains('\0') {
        return Err(bad("contains a NUL character, which no header value or key file holds".into()));
    }
    if verbatim {
        return Ok(value.clone());
    }

    let mut s = raw;
    let mut removed: Vec<String> = Vec::new();
    if let Some(rest) = s.strip_prefix('\u{feff}') {
        s = rest;
        removed.push("a byte-order mark".into());
    }
    let rest = s.trim_start_matches(['\r', '\n']);
    if rest.len() != s.len() {
        removed.push(line_breaks(&s[..s.len() - rest.len()], "leading"));
        s = rest;
    }
    let pem = s.starts_with("-----BEGIN ");
    if !pem {
        // A PEM file ends with a line break by definition, so it is kept
        // there; anywhere else a trailing line break is a file or paste
        // artefact.
        let rest = s.trim_end_matches(['\r', '\n']);
        if rest.len() != s.len() {
            removed.push(line_breaks(&s[rest.len()..], "trailing"));
            s = rest;
        }
    }
    if s.is_empty() {
        return Err(bad(if removed.is_empty() {
            "is empty; to store an empty value on purpose (a Basic password, say), mark the field verbatim".into()
        } else {
            format!("is empty once {} are removed", removed.join(" and "))
        }));
    }
    if !pem && s.contains(['\r', '\n']) {
        return Err(bad(format!(
            "has a line break inside it (it spans {} lines), which a single-line secret cannot hold; check that the \
             paste took in only the value, or mark the field verbatim if the scheme expects several lines",
            s.lines().count()
        )));
    }
    let ws = |c: &char| c.is_whitespace() || is_invisible(*c);
    let leading: Vec<char> = s.chars().take_while(ws).collect();
    // A PEM block's final line break is part of it, not whitespace around it.
    let body = if pem { s.trim_end_matches(['\r', '\n']) } else { s };
    let trailing: Vec<char> = body.chars().rev().take_while(ws).collect();
    for (run, end) in [(&leading, "leading"), (&trailing, "trailing")] {
        if !run.is_empty() {
            return Err(bad(format!(
                "has {end} whitespace ({}); surrounding whitespace is almost always a copy-paste accident, so it is \
                 refused: remove it, or mark the field verbatim if it belongs to the value",
                describe_run(run)
            )));
        }
    }
    let line_ok = |c: char| pem && matches!(c, '\r' | '\n' | '\t');
    if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| (c.is_control() || is_invisible(*c)) && !line_ok(*c)) {
        return Err(bad(format!(
            "contains {} at character {}; it is invisible when pasted and would end up in the request",
            describe_char(c),
            i + 1
        )));
    }
    let quoted =
        s.len() >= 2 && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')));
    if quoted {
        notices.push(Notice::warning(format!(
            "secret `{shown}` starts and ends with a quote; if the quotes came from a shell or a .env file, store the \
             value without them"
        )));
    }
    if removed.is_empty() {
        return Ok(value.clone());
    }
    notices.push(Notice::changed(format!("removed {} from secret `{shown}`", removed.join(" and "))));
    Ok(Secret::new(s))
}

fn line_breaks(run: &str, end: &str) -> String {
    let n = run.matches('\n').count().max(run.matches('\r').count());
    if n == 1 { format!("a {end} line break") } else { format!("{n} {end} line breaks") }
}

fn clean_destinations(raw: &[String], notices: &mut Vec<Notice>) -> Result<Vec<Destination>, ModelError> {
    if raw.len() > MAX_DESTINATIONS {
        return Err(ModelError::InvalidDestination(format!(
            "list has {} entries; the limit is {MAX_DESTINATIONS}",
            raw.len()
        )));
    }
    let mut out: Vec<Destination> = Vec::with_capacity(raw.len());
    for d in raw {
        let trimmed = d.trim();
        if trimmed.len() != d.len() && !trimmed.is_empty() {
            notices.push(Notice::changed(format!(
                "trimmed surrounding whitespace from destination `{}`",
                sanitize_for_log(trimmed, 100)
            )));
        }
        let dest = Destination::parse(if trimmed.is_empty() { d } else { trimmed })?;
        if out.contains(&dest) {
            notices.push(Notice::changed(format!("destination `{dest}` is listed twice; kept once")));
            continue;
        }
        out.push(dest);
    }
    for exact in out.iter().filter(|d| !d.is_wildcard()) {
        if let Some(wild) = out.iter().find(|w| w.is_wildcard() && w.matches(&exact.to_string())) {
            notices.push(Notice::warning(format!("destination `{exact}` is already covered by `{wild}`")));
        }
    }
    if out.is_empty() {
        notices.push(Notice::warning(
            "no destinations: the credential will not be sent to any host until one is added".into(),
        ));
    }
    Ok(out)
}

/// Replace any secret text in a plugin's error with `[redacted]`. Multi-line
/// values (PEM keys) are also scrubbed line by line, so an echoed line of a
/// key is caught too.
fn scrub_plugin_error(e: PluginError, secrets: &[&Secret]) -> PluginError {
    let mut needles: Vec<&str> = Vec::new();
    for s in secrets {
        let v = s.expose();
        needles.push(v);
        needles.extend(v.lines().map(str::trim));
    }
    needles.retain(|n| n.len() >= MIN_SCRUB_LEN);
    // Longest first, so a whole value is replaced before its lines are.
    needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let clean = |mut text: String| {
        for n in &needles {
            if text.contains(n) {
                text = text.replace(n, "[redacted]");
            }
        }
        text
    };
    match e {
        PluginError::Scheme { plugin, error } => {
            let error = match error {
                SchemeError::MissingSecret(m) => SchemeError::MissingSecret(clean(m)),
                SchemeError::InvalidConfig(m) => SchemeError::InvalidConfig(clean(m)),
                SchemeError::InvalidSecret(m) => SchemeError::InvalidSecret(clean(m)),
                SchemeError::InvalidRequest(m) => SchemeError::InvalidRequest(clean(m)),
                SchemeError::TokenRejected(m) => SchemeError::TokenRejected(clean(m)),
                SchemeError::Denied(m) => SchemeError::Denied(clean(m)),
                SchemeError::Internal(m) => SchemeError::Internal(m.map(clean)),
            };
            PluginError::Scheme { plugin, error }
        }
        PluginError::Failed { plugin, reason } => PluginError::Failed { plugin, reason: clean(reason) },
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Resolution layers
// ---------------------------------------------------------------------------

/// Where a call's secret came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Passed with the call or the agent session.
    Override,
    /// The credential vault.
    Vault,
    /// The host's environment variables.
    Environment,
}

impl Layer {
    /// Every layer, in precedence order.
    pub const ALL: [Layer; 3] = [Layer::Override, Layer::Vault, Layer::Environment];

    /// The name used in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Override => "override",
            Layer::Vault => "vault",
            Layer::Environment => "environment",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One environment variable feeding one secret field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The secret field it fills (`key` for the single-key providers).
    pub field: String,
    /// The variable name.
    pub var: String,
    /// Whether the environment layer has the credential only when it is set.
    pub required: bool,
}

/// Which environment variables stand for which credential or provider name.
/// The default maps the common LLM providers' `*_API_KEY` variables to field
/// `key` (the `api-key` scheme's field) and the cloud providers' standard
/// variables to their signing schemes' fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvMapping {
    entries: BTreeMap<String, Vec<EnvVar>>,
}

type BuiltinEnv = (&'static str, &'static [(&'static str, &'static str, bool)]);

const BUILTIN_ENV: &[BuiltinEnv] = &[
    ("anthropic", &[("key", "ANTHROPIC_API_KEY", true)]),
    (
        "aliyun",
        &[
            ("access_key_id", "ALIBABA_CLOUD_ACCESS_KEY_ID", true),
            ("access_key_secret", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", true),
            ("security_token", "ALIBABA_CLOUD_SECURITY_TOKEN", false),
        ],
    ),
    (
        "aws",
        &[
            ("access_key_id", "AWS_ACCESS_KEY_ID", true),
            ("secret_access_key", "AWS_SECRET_ACCESS_KEY", true),
            ("session_token", "AWS_SESSION_TOKEN", false),
        ],
    ),
    ("deepseek", &[("key", "DEEPSEEK_API_KEY", true)]),
    ("gemini", &[("key", "GEMINI_API_KEY", true)]),
    ("google", &[("key", "GOOGLE_API_KEY", true)]),
    ("groq", &[("key", "GROQ_API_KEY", true)]),
    ("mistral", &[("key", "MISTRAL_API_KEY", true)]),
    ("openai", &[("key", "OPENAI_API_KEY", true)]),
    ("openrouter", &[("key", "OPENROUTER_API_KEY", true)]),
    ("tencent", &[("secret_id", "TENCENTCLOUD_SECRET_ID", true), ("secret_key", "TENCENTCLOUD_SECRET_KEY", true)]),
];

impl Default for EnvMapping {
    fn default() -> EnvMapping {
        let entries = BUILTIN_ENV
            .iter()
            .map(|(name, vars)| {
                let vars = vars
                    .iter()
                    .map(|(field, var, required)| EnvVar {
                        field: field.to_string(),
                        var: var.to_string(),
                        required: *required,
                    })
                    .collect();
                (name.to_string(), vars)
            })
            .collect();
        EnvMapping { entries }
    }
}

fn check_var_name(var: &str) -> Result<(), ModelError> {
    let ok = !var.is_empty()
        && var.len() <= 128
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !var.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ModelError::InvalidEnvMapping(format!(
            "`{}` is not an environment variable name (letters, digits and `_`, not starting with a digit)",
            sanitize_for_log(var, 80)
        )))
    }
}

impl EnvMapping {
    /// No mappings: the environment layer never has anything.
    pub fn empty() -> EnvMapping {
        EnvMapping { entries: BTreeMap::new() }
    }

    /// The variables for a name, if it is mapped.
    pub fn get(&self, name: &str) -> Option<&[EnvVar]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// Every mapping, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[EnvVar])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Map `name` to one variable for field `key` (`openai` →
    /// `OPENAI_API_KEY`), replacing any mapping it had.
    pub fn set(&mut self, name: &str, var: &str) -> Result<(), ModelError> {
        self.set_fields(name, vec![EnvVar { field: "key".into(), var: var.into(), required: true }])
    }

    /// Map `name` to several variables, one per secret field, replacing any
    /// mapping it had. An empty list removes the mapping.
    pub fn set_fields(&mut self, name: &str, vars: Vec<EnvVar>) -> Result<(), ModelError> {
        let bad = |m: String| ModelError::InvalidEnvMapping(m);
        let name = CredentialName::parse(name).map_err(|e| bad(e.to_string()))?;
        if vars.is_empty() {
            self.entries.remove(name.as_str());
            return Ok(());
        }
        let mut fields = BTreeSet::new();
        for v in &vars {
            check_var_name(&v.var)?;
            if v.field.is_empty() || v.field.chars().any(|c| c.is_whitespace() || c.is_control() || ":,=?".contains(c))
            {
                return Err(bad(format!("`{}` is not a secret field name", sanitize_for_log(&v.field, 80))));
            }
            if !fields.insert(v.field.as_str()) {
                return Err(bad(format!("field `{}` of `{name}` is mapped twice", v.field)));
            }
        }
        if !vars.iter().any(|v| v.required) {
            return Err(bad(format!("`{name}` needs at least one required variable")));
        }
        self.entries.insert(name.to_string(), vars);
        Ok(())
    }

    /// Remove the mapping of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Apply one entry as written in a config file or on the command line:
    /// `openai=OPENAI_API_KEY` (field `key`),
    /// `aws=access_key_id:AWS_ACCESS_KEY_ID,secret_access_key:AWS_SECRET_ACCESS_KEY,session_token:AWS_SESSION_TOKEN?`
    /// (a trailing `?` marks an optional variable), or `openai=` to remove
    /// the mapping.
    pub fn apply_entry(&mut self, entry: &str) -> Result<(), ModelError> {
        let shown = sanitize_for_log(entry, 200);
        let Some((name, spec)) = entry.split_once('=') else {
            return Err(ModelError::InvalidEnvMapping(format!("`{shown}` is not of the form name=VARIABLE")));
        };
        let (name, spec) = (name.trim(), spec.trim());
        if spec.is_empty() {
            self.remove(name);
            return Ok(());
        }
        if !spec.contains(':') {
            return self.set(name, spec);
        }
        let mut vars = Vec::new();
        for item in spec.split(',') {
            let Some((field, var)) = item.trim().split_once(':') else {
                return Err(ModelError::InvalidEnvMapping(format!(
                    "`{}` in `{shown}` is not of the form field:VARIABLE",
                    sanitize_for_log(item, 80)
                )));
            };
            let (var, required) = match var.strip_suffix('?') {
                Some(v) => (v, false),
                None => (var, true),
            };
            vars.push(EnvVar { field: field.to_string(), var: var.to_string(), required });
        }
        self.set_fields(name, vars)
    }
}

/// Secrets passed with one call or agent session, the highest layer. They
/// are given by credential name and field, or as job environment variables
/// (`OPENAI_API_KEY=...`), which are read through the [`EnvMapping`].
/// `Debug` shows names, never values.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    by_name: BTreeMap<String, BTreeMap<String, Secret>>,
    by_var: BTreeMap<String, Secret>,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Overrides {
        Overrides::default()
    }

    /// Override field `field` of credential `name`.
    pub fn set(&mut self, name: &str, field: &str, value: Secret) {
        self.by_name.entry(name.to_string()).or_default().insert(field.to_string(), value);
    }

    /// Override through a job environment variable.
    pub fn set_var(&mut self, var: &str, value: Secret) {
        self.by_var.insert(var.to_string(), value);
    }

    /// The credential names given overrides for.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_var.is_empty()
    }
}

/// The vault's credential for a name, as [`resolve`] needs it. The secrets
/// of a disabled credential are never read, so the storage layer may pass an
/// empty map for one instead of decrypting.
#[derive(Debug, Clone, Copy)]
pub struct VaultEntry<'a> {
    /// Whether the credential is enabled.
    pub enabled: bool,
    /// Its decrypted secrets.
    pub secrets: &'a BTreeMap<String, Secret>,
}

/// The winning layer and its secrets. `Debug` shows field names, never values.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The layer that supplied the secret.
    pub layer: Layer,
    /// Where in that layer, e.g. "OPENAI_API_KEY" or "credential `openai`".
    pub source: String,
    /// The secret values by field.
    pub secrets: BTreeMap<String, Secret>,
}

/// What the variables of one layer (job variables or the host environment)
/// hold: the secrets and the names of the variables read, when every
/// required one is set; otherwise a finding saying which are not.
fn read_vars(
    vars: &[EnvVar],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(BTreeMap<String, Secret>, String), String> {
    let mut found = BTreeMap::new();
    let mut used = Vec::new();
    let mut problems = Vec::new();
    for v in vars {
        match lookup(&v.var) {
            Some(value) if !value.trim().is_empty() => {
                let trimmed = value.trim();
                if trimmed.len() != value.len() {
                    tracing::warn!(variable = %v.var, "ignored surrounding whitespace in an environment variable");
                }
                found.insert(v.field.clone(), Secret::new(trimmed));
                used.push(v.var.as_str());
            }
            Some(_) if v.required => problems.push(format!("{} is set but empty", v.var)),
            None if v.required => problems.push(format!("{} is unset", v.var)),
            _ => {}
        }
    }
    if problems.is_empty() { Ok((found, used.join(", "))) } else { Err(problems.join(", ")) }
}

/// Decide which secret a call uses: per-call overrides, then the vault, then
/// the host environment through `mapping`; `env` looks a variable up (pass
/// `|v| std::env::var(v).ok()` in production, a map in tests). A disabled
/// vault credential fails with `credential_disabled` before the environment
/// is consulted. When no layer has the secret, `provider_key_missing` names
/// what was looked for in every layer. The winning layer is logged, never
/// the value.
pub fn resolve(
    name: &str,
    overrides: &Overrides,
    vault: Option<VaultEntry<'_>>,
    mapping: &EnvMapping,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, ModelError> {
    let shown = sanitize_for_log(name, 80);
    let vars = mapping.get(name).unwrap_or(&[]);
    let var_list = vars.iter().map(|v| v.var.as_str()).collect::<Vec<_>>().join(", ");
    let mut checked = Vec::with_capacity(3);

    let override_finding = match overrides.by_name.get(name).filter(|m| !m.is_empty()) {
        Some(secrets) => return Ok(won(&shown, Layer::Override, format!("credential `{shown}`"), secrets.clone())),
        None if vars.is_empty() => format!("none given for `{shown}`"),
        None => {
            let given = vars.iter().any(|v| overrides.by_var.contains_key(&v.var));
            match read_vars(vars, |v| overrides.by_var.get(v).map(|s| s.expose().to_string())) {
                Ok((secrets, used)) => return Ok(won(&shown, Layer::Override, used, secrets)),
                Err(problems) if given => format!("incomplete job variables: {problems}"),
                Err(_) => format!("none given for `{shown}` or {var_list}"),
            }
        }
    };
    checked.push(LayerCheck { layer: Layer::Override, finding: override_finding });

    match vault {
        Some(entry) if !entry.enabled => return Err(ModelError::CredentialDisabled { name: shown }),
        Some(entry) if !entry.secrets.is_empty() => {
            return Ok(won(&shown, Layer::Vault, format!("credential `{shown}`"), entry.secrets.clone()));
        }
        Some(_) => {
            checked.push(LayerCheck { layer: Layer::Vault, finding: format!("credential `{shown}` holds no secret") })
        }
        None => checked.push(LayerCheck { layer: Layer::Vault, finding: format!("no credential named `{shown}`") }),
    }

    let env_finding = if vars.is_empty() {
        format!("no variable is mapped to `{shown}`")
    } else {
        match read_vars(vars, env) {
            Ok((secrets, used)) => return Ok(won(&shown, Layer::Environment, used, secrets)),
            Err(problems) => problems,
        }
    };
    checked.push(LayerCheck { layer: Layer::Environment, finding: env_finding });
    Err(ModelError::ProviderKeyMissing { name: shown, checked })
}

fn won(name: &str, layer: Layer, source: String, secrets: BTreeMap<String, Secret>) -> Resolved {
    tracing::info!(credential = %name, layer = layer.as_str(), source = %source, "credential resolved");
    Resolved { layer, source, secrets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, OnceLock};

    use crate::plugin::RuntimeConfig;

    /// One runtime for the whole module: creating one is cheap, but compiling
    /// the built-in schemes on first use is not.
    fn rt() -> &'static Runtime {
        static RT: OnceLock<Runtime> = OnceLock::new();
        RT.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
    }

    const CANARY: &str = "sk-canary-7Qz9x2Lw";

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn raw(name: &str, scheme: &str, secrets: &[(&str, &str)]) -> RawCredential {
        let mut r = RawCredential::new(name, scheme);
        r.secrets = secrets.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect();
        r.destinations = vec!["api.example.com".into()];
        r
    }

    /// The error for `r`, checked to carry `code` and not to leak the canary
    /// in its message or its `Debug` form.
    fn refused(r: RawCredential, code: &str) -> String {
        let err = validate_new(rt(), r).expect_err("input should be refused");
        let (msg, dbg) = (err.to_string(), format!("{err:?}"));
        assert_eq!(err.code(), code, "{msg}");
        assert!(!msg.contains(CANARY) && !dbg.contains(CANARY), "secret leaked: {msg} / {dbg}");
        assert!(!msg.contains("7Qz9x2Lw"), "part of the secret leaked: {msg}");
        msg
    }

    fn accepted(r: RawCredential) -> Validated<NewCredential> {
        let ok = validate_new(rt(), r).expect("input should be accepted");
        let dbg = format!("{ok:?}");
        assert!(!dbg.contains(CANARY), "secret in Debug: {dbg}");
        for n in &ok.notices {
            assert!(!n.message.contains(CANARY), "secret in a notice: {}", n.message);
        }
        ok
    }

    // --- names ---------------------------------------------------------

    #[test]
    fn credential_names_at_the_boundaries() {
        let err = CredentialName::parse("").unwrap_err();
        assert_eq!(err.code(), "invalid_name");
        assert_eq!(err.to_string(), "credential name is empty; it must be 1 to 64 characters");
        for ok in
            ["a", "_", "A", "my-llm-key", "_x-1_Y", "a".repeat(64).as_str(), format!("_{}", "9".repeat(63)).as_str()]
        {
            assert_eq!(CredentialName::parse(ok).unwrap().as_str(), ok);
        }
        let long = format!("sk{}", "x".repeat(63));
        let err = CredentialName::parse(&long).unwrap_err();
        assert_eq!(err.to_string(), "credential name is 65 characters long; the limit is 64");
        assert!(!err.to_string().contains(&long[..10]), "a too-long name may be a pasted key: never echo it");
        let cases = [
            ("1abc", "credential name must start with an ASCII letter or `_`, not `1`"),
            ("-abc", "credential name must start with an ASCII letter or `_`, not `-`"),
            ("éa", "credential name must start with an ASCII letter or `_`, not U+00E9 (not ASCII)"),
            (
                "caf\u{e9}",
                "credential name has U+00E9 (not ASCII) at position 4; only ASCII letters, digits, `_` and `-` are allowed",
            ),
            // Cyrillic `а`, which looks like Latin `a`.
            (
                "b\u{430}d",
                "credential name has U+0430 (not ASCII) at position 2; only ASCII letters, digits, `_` and `-` are allowed",
            ),
            ("a b", "credential name has a space at position 2; only ASCII letters, digits, `_` and `-` are allowed"),
            ("a.b", "credential name has `.` at position 2; only ASCII letters, digits, `_` and `-` are allowed"),
            (" a", "credential name must start with an ASCII letter or `_`, not a space"),
        ];
        for (input, want) in cases {
            assert_eq!(CredentialName::parse(input).unwrap_err().to_string(), want, "{input:?}");
        }
        // Length counts characters, so 64 non-ASCII letters fail on the
        // character, not on bytes.
        let err = CredentialName::parse(&"é".repeat(64)).unwrap_err();
        assert!(err.to_string().contains("U+00E9"), "{err}");
        assert!(CredentialName::parse(&"é".repeat(65)).unwrap_err().to_string().contains("65 characters"));
        // Case-sensitive, and round-trips through serde as a plain string.
        assert_ne!(CredentialName::parse("Key").unwrap(), CredentialName::parse("key").unwrap());
        let n: CredentialName = serde_json::from_str("\"my-key\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"my-key\"");
        assert!(serde_json::from_str::<CredentialName>("\"9key\"").is_err());
    }

    #[test]
    fn organisation_names() {
        assert_eq!(OrgId::default().as_str(), DEFAULT_ORG);
        for ok in ["a", "acme", "acme-eu_2", "o".repeat(64).as_str()] {
            OrgId::parse(ok).unwrap();
        }
        let cases = [
            ("", "organisation name is empty; it must be 1 to 64 characters"),
            (
                "Acme",
                "organisation name has the upper-case letter `A` at position 1; organisation names are lower case",
            ),
            ("_acme", "organisation name must start with a lower-case ASCII letter, not `_`"),
            ("9acme", "organisation name must start with a lower-case ASCII letter, not `9`"),
            (
                "ac me",
                "organisation name has a space at position 3; only ASCII letters, digits, `_` and `-` are allowed",
            ),
        ];
        for (input, want) in cases {
            let err = OrgId::parse(input).unwrap_err();
            assert_eq!((err.code().as_str(), err.to_string().as_str()), ("invalid_name", want), "{input:?}");
        }
        assert!(OrgId::parse(&"o".repeat(65)).is_err());
    }

    // --- destinations --------------------------------------------------

    fn dest(s: &str) -> Destination {
        Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn wildcards_match_one_or_more_labels_never_the_apex() {
        let d = dest("*.example.com");
        assert!(d.is_wildcard());
        for yes in ["a.example.com", "a.b.example.com", "x-1.y_2.example.com", "A.Example.COM", "a.example.com."] {
            assert!(d.matches(yes), "{yes}");
        }
        for no in [
            "example.com",
            "example.com.",
            "badexample.com",
            ".example.com",
            "a..example.com",
            "a.example.com.evil.test",
            "a.example.co",
            "a.example.com:443",
            "10.0.0.1",
            "[::1]",
            "",
            "ä.example.com",
        ] {
            assert!(!d.matches(no), "{no}");
        }
        // A trailing dot on the pattern is the same pattern.
        assert_eq!(dest("*.Example.COM."), d);
        assert_eq!(d.to_string(), "*.example.com");
        // AWS's hosts are several labels deep: the reason for one-or-more.
        assert!(dest("*.amazonaws.com").matches("s3.us-east-1.amazonaws.com"));
    }

    #[test]
    fn exact_hosts_and_ip_addresses() {
        let d = dest("API.OpenAI.com");
        assert_eq!(d.to_string(), "api.openai.com");
        assert!(d.matches("api.openai.com") && d.matches("API.OPENAI.COM") && d.matches("api.openai.com."));
        assert!(!d.matches("x.api.openai.com") && !d.matches("openai.com") && !d.matches("api.openai.com.."));
        assert!(dest("localhost").matches("localhost"));
        let v4 = dest("10.0.0.1");
        assert!(v4.matches("10.0.0.1") && v4.matches("[::ffff:10.0.0.1]") && !v4.matches("10.0.0.2"));
        let v6 = dest("[2001:DB8::1]");
        assert_eq!(v6, dest("2001:db8::1"));
        assert_eq!(v6.to_string(), "[2001:db8::1]");
        assert!(v6.matches("[2001:db8:0::1]") && !v6.matches("2001:db8::2"));
        // Serde round trip as the display form.
        let json = serde_json::to_string(&vec![d.clone(), dest("*.x.test"), v6.clone()]).unwrap();
        assert_eq!(json, r#"["api.openai.com","*.x.test","[2001:db8::1]"]"#);
        let back: Vec<Destination> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![d, dest("*.x.test"), v6]);
    }

    #[test]
    fn malformed_destinations_say_what_to_change() {
        let cases = [
            ("", "destination is empty; give a host such as `api.openai.com` or a pattern such as `*.example.com`"),
            (
                "https://api.openai.com/v1",
                "destination `https://api.openai.com/v1` is a URL; give only its host, `api.openai.com`",
            ),
            (
                "api.openai.com:443",
                "destination `api.openai.com:443` has a port; a destination is a host and covers every port",
            ),
            ("api.openai.com/v1", "destination `api.openai.com/v1` has a path; give only the host"),
            ("user@h.test", "destination `user@h.test` has user information (`user@`); give only the host"),
            (
                "bücher.example",
                "destination `bücher.example` is not ASCII; give its punycode form, `xn--bcher-kva.example`",
            ),
            (
                "*.bücher.example",
                "destination `*.bücher.example` is not ASCII; give its punycode form, `*.xn--bcher-kva.example`",
            ),
            (
                "*",
                "destination `*` would allow every host; list the hosts (or `*.example.com` patterns) the credential may be sent to",
            ),
            (
                "*.com",
                "destination `*.com` would cover all of `com`; a wildcard needs at least two labels after `*.`, as in `*.example.com`",
            ),
            ("a.*.com", "destination `a.*.com` may have `*` only as its whole first label, as in `*.example.com`"),
            (
                "*a.example.com",
                "destination `*a.example.com` may have `*` only as its whole first label, as in `*.example.com`",
            ),
            (
                "*.*.example.com",
                "destination `*.*.example.com` may have `*` only as its whole first label, as in `*.example.com`",
            ),
            ("*.10.0.0.1", "destination `*.10.0.0.1` is a wildcard over an IP address; give IP addresses exactly"),
            (
                "127.1",
                "destination `127.1` looks like an IP address but is not a dotted-quad IPv4 address such as `10.0.0.1`",
            ),
            (
                "0x7f.0.0.1",
                "destination `0x7f.0.0.1` looks like an IP address but is not a dotted-quad IPv4 address such as `10.0.0.1`",
            ),
            ("a..b", "destination `a..b` has an empty label (`..`, or a leading dot)"),
            (".example.com", "destination `.example.com` has an empty label (`..`, or a leading dot)"),
            ("-a.example.com", "destination `-a.example.com` has the label `-a`, which starts or ends with `-`"),
            (" api.test", "destination ` api.test` has surrounding whitespace"),
            ("a b.test", "destination `a b.test` has a space, which no host name contains"),
            ("fe80::1%eth0", "destination `fe80::1%eth0` has `:`, which no host name contains"),
        ];
        for (input, want) in cases {
            let err = Destination::parse(input).unwrap_err();
            assert_eq!(err.code(), "invalid_destination");
            assert_eq!(err.http_status(), 400);
            assert_eq!(err.to_string(), want, "{input:?}");
        }
        let long_label = format!("{}.test", "a".repeat(64));
        assert!(Destination::parse(&long_label).unwrap_err().to_string().contains("at most 63"));
        let long_name = format!("{}test", "abcdefghi.".repeat(26));
        assert!(Destination::parse(&long_name).unwrap_err().to_string().contains("at most 253"));
    }

    // --- hygiene -------------------------------------------------------

    #[test]
    fn a_clean_credential_passes_unchanged() {
        let mut r = raw("my-llm-key", "api-key", &[("key", CANARY)]);
        r.config = vec![("prefix".into(), "Bearer ".into())];
        r.org = Some("acme".into());
        let ok = accepted(r);
        assert!(ok.notices.is_empty(), "{:?}", ok.notices);
        let c = &ok.value;
        assert_eq!((c.name().as_str(), c.org().as_str(), c.scheme()), ("my-llm-key", "acme", "api-key"));
        assert_eq!(c.config(), &[("prefix".to_string(), "Bearer ".to_string())], "config spaces are kept");
        assert_eq!(c.secrets()["key"].expose(), CANARY);
        assert!(c.enabled());
        assert_eq!(c.destinations(), &[dest("api.example.com")]);
    }

    #[test]
    fn trailing_line_breaks_are_trimmed_with_a_notice() {
        for (input, notice) in [
            (format!("{CANARY}\n"), "removed a trailing line break from secret `key`"),
            (format!("{CANARY}\r\n"), "removed a trailing line break from secret `key`"),
            (format!("{CANARY}\n\n"), "removed 2 trailing line breaks from secret `key`"),
            (format!("\n{CANARY}\n"), "removed a leading line break and a trailing line break from secret `key`"),
            (format!("\u{feff}{CANARY}\n"), "removed a byte-order mark and a trailing line break from secret `key`"),
        ] {
            let ok = accepted(raw("k", "api-key", &[("key", &input)]));
            assert_eq!(ok.value.secrets()["key"].expose(), CANARY, "{input:?}");
            assert_eq!(ok.notices, vec![Notice::changed(notice.into())], "{input:?}");
            assert_eq!(ok.notices[0].kind, NoticeKind::Changed);
        }
    }

    #[test]
    fn surrounding_whitespace_and_inner_breaks_are_refused() {
        let cases = [
            (format!(" {CANARY}"), "secret `key` has leading whitespace (a space)"),
            (format!("{CANARY}  "), "secret `key` has trailing whitespace (2 spaces)"),
            (format!("{CANARY}\t"), "secret `key` has trailing whitespace (a tab)"),
            (format!("{CANARY} \n"), "secret `key` has trailing whitespace (a space)"),
            (format!("\u{a0}{CANARY}"), "secret `key` has leading whitespace (a no-break space (U+00A0))"),
            (format!("{CANARY}\u{200b}"), "secret `key` has trailing whitespace (a zero-width space (U+200B))"),
            (format!("{CANARY} \t"), "secret `key` has trailing whitespace (2 whitespace characters)"),
            (
                format!("{CANARY}\n{CANARY}"),
                "secret `key` has a line break inside it (it spans 2 lines), which a single-line secret cannot hold",
            ),
            (format!("sk\u{200b}{CANARY}"), "secret `key` contains a zero-width space (U+200B) at character 3"),
            (format!("sk\t{CANARY}"), "secret `key` contains a tab at character 3"),
            (format!("sk\u{202e}{CANARY}"), "secret `key` contains an invisible character (U+202E) at character 3"),
            (format!("sk{CANARY}\0"), "secret `key` contains a NUL character"),
            (String::new(), "secret `key` is empty; to store an empty value on purpose"),
            ("\n\n".to_string(), "secret `key` is empty once 2 leading line breaks are removed"),
        ];
        for (input, want) in cases {
            let msg = refused(raw("k", "api-key", &[("key", &input)]), "invalid_secret");
            assert!(msg.starts_with(want), "{input:?}: {msg}");
        }
        let msg = refused(raw("k", "api-key", &[("key", &format!("{CANARY} "))]), "invalid_secret");
        assert!(msg.contains("copy-paste accident") && msg.contains("verbatim"), "{msg}");
        let huge = "x".repeat(MAX_SECRET_BYTES + 1);
        let msg = refused(raw("k", "api-key", &[("key", &huge)]), "invalid_secret");
        assert_eq!(msg, format!("secret `key` is {} bytes; the limit is {MAX_SECRET_BYTES}", huge.len()));
    }

    #[test]
    fn bearer_prefix_is_refused_by_the_scheme_with_its_reason() {
        for input in [format!("Bearer {CANARY}"), format!("bearer {CANARY}\n")] {
            let msg = refused(raw("k", "api-key", &[("key", &input)]), "invalid_secret");
            assert_eq!(
                msg,
                "api-key: invalid secret: `key` starts with `Bearer `: store the raw key; set config `prefix=Bearer ` \
                 to send the prefix"
            );
        }
    }

    #[test]
    fn undeclared_and_missing_fields_are_refused() {
        let msg = refused(raw("k", "api-key", &[("key", CANARY), ("token", CANARY)]), "unknown_secret_field");
        assert_eq!(msg, "scheme `api-key` has no secret field `token` (known: key)");
        let msg = refused(raw("k", "basic", &[("username", "u")]), "missing_secret_field");
        assert_eq!(msg, "scheme `basic` needs secret field `password` (The password)");
        let msg = refused(raw("k", "aws-sigv4", &[("access_key_id", "AKIDEXAMPLE")]), "missing_secret_field");
        assert!(msg.starts_with("scheme `aws-sigv4` needs secret field `secret_access_key`"), "{msg}");
        let msg = refused(raw("k", "api-key", &[(" key", CANARY)]), "invalid_secret");
        assert_eq!(msg, "secret field name ` key` contains whitespace or an invisible character");
        // Open fields: any header name, but at least one.
        let ok = accepted(raw("k", "custom-headers", &[("X-Api-Key", CANARY), ("X-Tenant", "t-1")]));
        assert_eq!(ok.value.secrets().len(), 2);
        let msg = refused(raw("k", "custom-headers", &[]), "missing_secret_field");
        assert!(msg.starts_with("scheme `custom-headers` needs secret field `<Header-Name>` (at least one"), "{msg}");
        let msg = refused(raw("k", "custom-headers", &[("X:Bad", CANARY)]), "invalid_secret");
        assert!(msg.contains("`X:Bad` is not a valid HTTP header name"), "{msg}");
    }

    #[test]
    fn config_is_checked_here_and_by_the_scheme() {
        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.config = vec![("colour".into(), "red".into())];
        let msg = refused(r, "invalid_config");
        assert!(msg.contains("unknown config field `colour`"), "{msg}");

        let mut r = raw("k", "api-key", &[]);
        r.config = vec![("key".into(), CANARY.into())];
        let msg = refused(r, "invalid_config");
        assert_eq!(
            msg,
            "invalid config: `key` is a secret field of scheme `api-key`: give it as a secret, which is encrypted \
             and never printed"
        );

        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.config = vec![("header".into(), "X-A".into()), ("header".into(), "X-B".into())];
        assert_eq!(refused(r, "invalid_config"), "invalid config: config field `header` is given twice");

        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.config = vec![("header".into(), "X-Api-Key\n".into())];
        let ok = accepted(r);
        assert_eq!(ok.value.config(), &[("header".to_string(), "X-Api-Key".to_string())]);
        assert_eq!(ok.notices, vec![Notice::changed("trimmed a trailing line break from config `header`".into())]);

        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.config = vec![("query".into(), "k".into()), ("prefix".into(), "x".into())];
        let msg = refused(r, "invalid_config");
        assert!(msg.contains("`query` cannot be combined"), "{msg}");
    }

    #[test]
    fn pem_keys_keep_their_line_breaks() {
        let pem = include_str!("../../../plugins/jwt/testdata/p256-pkcs8.pem");
        assert!(pem.ends_with('\n') && pem.trim_end().contains('\n'));
        let mut r = raw("signer", "jwt", &[("key", pem)]);
        r.config = vec![("alg".into(), "ES256".into())];
        let ok = accepted(r.clone());
        assert_eq!(ok.value.secrets()["key"].expose(), pem, "PEM must be stored byte for byte");
        assert!(ok.notices.is_empty(), "{:?}", ok.notices);
        // Spaces after the block are refused like any surrounding whitespace.
        r.secrets.insert("key".into(), Secret::new(format!("{pem}  ")));
        let err = validate_new(rt(), r.clone()).unwrap_err();
        assert!(err.to_string().starts_with("secret `key` has trailing whitespace (3 whitespace characters)"), "{err}");
        // A blank line pasted before the block goes, with a notice.
        r.secrets.insert("key".into(), Secret::new(format!("\n{pem}")));
        let ok = accepted(r.clone());
        assert_eq!(ok.value.secrets()["key"].expose(), pem);
        assert_eq!(ok.notices, vec![Notice::changed("removed a leading line break from secret `key`".into())]);
        // The scheme's own check still runs on PEM values, and its message
        // names the field without echoing any line of the key.
        r.config = vec![("alg".into(), "HS256".into())];
        r.secrets.insert("key".into(), Secret::new(pem));
        let err = validate_new(rt(), r).unwrap_err();
        assert_eq!(err.code(), "invalid_secret");
        assert!(err.to_string().contains("HS256 needs an HMAC secret"), "{err}");
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!err.to_string().contains(line), "{err}");
        }
    }

    #[test]
    fn verbatim_fields_keep_what_was_given() {
        let mut r = raw("b", "basic", &[("username", CANARY), ("password", " spaced ")]);
        r.verbatim.insert("password".into());
        let ok = accepted(r);
        assert_eq!(ok.value.secrets()["password"].expose(), " spaced ");
        let mut r = raw("b", "basic", &[("username", CANARY), ("password", "")]);
        r.verbatim.insert("password".into());
        assert_eq!(accepted(r).value.secrets()["password"].expose(), "");
        let mut r = raw("b", "basic", &[("username", CANARY), ("password", "p")]);
        r.verbatim.insert("pasword".into());
        assert_eq!(refused(r, "invalid_secret"), "secret `pasword` is marked verbatim but has no value");
        let mut r = raw("b", "basic", &[("username", CANARY), ("password", "a\0b")]);
        r.verbatim.insert("password".into());
        assert!(refused(r, "invalid_secret").contains("NUL"));
    }

    #[test]
    fn names_scheme_and_destinations_are_tidied_with_notices() {
        let mut r = raw("  my-key\n", " api-key ", &[("key", &format!("\"{CANARY}\""))]);
        r.org = Some("acme\n".into());
        r.destinations =
            vec![" api.example.com ".into(), "API.example.com".into(), "*.example.com".into(), "x.test".into()];
        let ok = accepted(r);
        assert_eq!(ok.value.name().as_str(), "my-key");
        assert_eq!(ok.value.org().as_str(), "acme");
        assert_eq!(ok.value.destinations(), &[dest("api.example.com"), dest("*.example.com"), dest("x.test")]);
        let messages: Vec<(NoticeKind, &str)> = ok.notices.iter().map(|n| (n.kind, n.message.as_str())).collect();
        assert_eq!(
            messages,
            vec![
                (NoticeKind::Changed, "trimmed surrounding whitespace from the credential name"),
                (NoticeKind::Changed, "trimmed surrounding whitespace from the organisation name"),
                (NoticeKind::Changed, "trimmed surrounding whitespace from the scheme name"),
                (
                    NoticeKind::Warning,
                    "secret `key` starts and ends with a quote; if the quotes came from a shell or a .env file, store \
                     the value without them"
                ),
                (NoticeKind::Changed, "trimmed surrounding whitespace from destination `api.example.com`"),
                (NoticeKind::Changed, "destination `api.example.com` is listed twice; kept once"),
                (NoticeKind::Warning, "destination `api.example.com` is already covered by `*.example.com`"),
            ]
        );
        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.destinations.clear();
        let ok = accepted(r);
        assert_eq!(ok.notices[0].kind, NoticeKind::Warning);
        assert!(ok.notices[0].message.starts_with("no destinations"), "{:?}", ok.notices);
        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.destinations = vec!["https://api.example.com/".into()];
        refused(r, "invalid_destination");
    }

    #[test]
    fn name_and_scheme_errors_come_before_secrets_are_looked_at() {
        assert!(refused(raw("1k", "api-key", &[("key", CANARY)]), "invalid_name").starts_with("credential name"));
        let mut r = raw("k", "api-key", &[("key", CANARY)]);
        r.org = Some("Acme".into());
        assert!(refused(r, "invalid_name").starts_with("organisation name"));
        let msg = refused(raw("k", "no-such", &[("key", CANARY)]), "unknown_scheme");
        assert!(msg.contains("no-such") && msg.contains("api-key"), "{msg}");
        // A key pasted into the name is never echoed back.
        let err = validate_new(rt(), raw(&format!("{CANARY}+/="), "api-key", &[])).unwrap_err();
        assert_eq!(err.code(), "invalid_name");
        assert!(!err.to_string().contains(CANARY), "{err}");
    }

    #[test]
    fn plugin_errors_are_scrubbed_of_secret_text() {
        let secret = Secret::new(CANARY);
        let e = PluginError::Scheme {
            plugin: "evil".into(),
            error: SchemeError::InvalidSecret(format!("bad key {CANARY}!")),
        };
        let e = scrub_plugin_error(e, &[&secret]);
        assert_eq!(e.to_string(), "evil: invalid secret: bad key [redacted]!");
        assert_eq!(e.code(), "invalid_secret");
        let pem = Secret::new("-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----\n");
        let e = PluginError::Failed { plugin: "evil".into(), reason: "line AAAABBBBCCCC".into() };
        assert_eq!(scrub_plugin_error(e, &[&pem]).to_string(), "plugin `evil` failed: line [redacted]");
    }

    // --- the record and updates ---------------------------------------

    fn stored(r: RawCredential) -> (Credential, BTreeMap<String, Secret>) {
        validate_new(rt(), r).unwrap().value.into_credential(at(1_000))
    }

    #[test]
    fn a_new_credential_starts_at_version_one() {
        let (c, secrets) = stored(raw("k", "api-key", &[("key", CANARY)]));
        assert_eq!((c.version, c.created_at, c.updated_at), (1, at(1_000), at(1_000)));
        assert_eq!(c.secret_fields, BTreeSet::from(["key".to_string()]));
        assert_eq!(secrets["key"].expose(), CANARY);
        assert!(c.attachments.is_empty() && c.enabled);
        assert!(c.allows("api.example.com") && !c.allows("evil.test"));
        assert!(!format!("{c:?}").contains(CANARY));
    }

    #[test]
    fn every_change_bumps_the_version_and_no_change_does_not() {
        let (mut c, _) = stored(raw("k", "api-key", &[("key", CANARY)]));
        let never = || -> Result<BTreeMap<String, Secret>, ModelError> { panic!("stored secrets are not needed") };
        let up = |c: &Credential, u: RawUpdate| validate_update(rt(), c, u, never).unwrap().value;

        let u = up(&c, RawUpdate { enabled: Some(false), ..Default::default() });
        assert!(c.apply_update(&u, at(2_000)).unwrap());
        assert_eq!((c.version, c.enabled, c.updated_at), (2, false, at(2_000)));
        assert_eq!(c.check_enabled().unwrap_err().code(), "credential_disabled");
        assert_eq!(c.check_enabled().unwrap_err().http_status(), 401);

        // The same value again is not a change.
        assert!(!c.apply_update(&u, at(3_000)).unwrap());
        assert_eq!((c.version, c.updated_at), (2, at(2_000)));

        // A rotation always is, and `updated_at` never goes back.
        let mut secrets = BTreeMap::new();
        secrets.insert("key".to_string(), Secret::new(format!("{CANARY}\n")));
        let v = validate_update(rt(), &c, RawUpdate { secrets: Some(secrets), ..Default::default() }, never).unwrap();
        assert_eq!(v.value.secrets().unwrap()["key"].expose(), CANARY);
        assert_eq!(v.notices.len(), 1);
        assert!(c.apply_update(&v.value, at(1_500)).unwrap());
        assert_eq!((c.version, c.updated_at), (3, at(2_000)));

        let u = up(&c, RawUpdate { destinations: Some(vec!["*.example.com".into()]), ..Default::default() });
        assert!(c.apply_update(&u, at(4_000)).unwrap());
        assert_eq!(c.version, 4);
        assert!(c.allows("a.b.example.com"));

        // Stale writers are refused, at validation and at apply.
        let stale = RawUpdate { enabled: Some(true), expected_version: Some(3), ..Default::default() };
        let err = validate_update(rt(), &c, stale, never).unwrap_err();
        assert_eq!((err.code().as_str(), err.http_status()), ("version_conflict", 409));
        let u = up(&c, RawUpdate { enabled: Some(true), expected_version: Some(4), ..Default::default() });
        let mut other = c.clone();
        other.version = 5;
        assert_eq!(other.apply_update(&u, at(5_000)).unwrap_err().code(), "version_conflict");
        assert!(c.apply_update(&u, at(5_000)).unwrap());
        assert_eq!(c.version, 5);
    }

    #[test]
    fn a_config_change_rechecks_the_stored_secrets() {
        let hmac = "h".repeat(40);
        let mut r = raw("signer", "jwt", &[("key", &hmac)]);
        r.config = vec![("alg".into(), "HS256".into())];
        let (c, secrets) = stored(r);
        let calls = std::cell::Cell::new(0);
        let fetch = || -> Result<BTreeMap<String, Secret>, ModelError> {
            calls.set(calls.get() + 1);
            Ok(secrets.clone())
        };
        let to_es256 = RawUpdate { config: Some(vec![("alg".into(), "ES256".into())]), ..Default::default() };
        let err = validate_update(rt(), &c, to_es256, fetch).unwrap_err();
        assert_eq!(err.code(), "invalid_secret");
        assert!(err.to_string().contains("PEM private key") && !err.to_string().contains(&hmac), "{err}");
        assert_eq!(calls.get(), 1);
        // A config change that keeps the key valid passes, and an update
        // without a config change never asks for the secrets.
        let ttl = RawUpdate {
            config: Some(vec![("alg".into(), "HS256".into()), ("ttl_seconds".into(), "60".into())]),
            ..Default::default()
        };
        validate_update(rt(), &c, ttl, fetch).unwrap();
        assert_eq!(calls.get(), 2);
        validate_update(rt(), &c, RawUpdate { enabled: Some(false), ..Default::default() }, fetch).unwrap();
        assert_eq!(calls.get(), 2);
        let bad = RawUpdate { config: Some(vec![("alg".into(), "none".into())]), ..Default::default() };
        assert_eq!(validate_update(rt(), &c, bad, fetch).unwrap_err().code(), "invalid_config");
    }

    #[test]
    fn delete_is_refused_while_attached_unless_forced() {
        let (mut c, _) = stored(raw("k", "api-key", &[("key", CANARY)]));
        c.check_delete(false).unwrap();
        c.attachments.agents.insert("ci-bot".into());
        c.attachments.routes.extend(["openai".to_string(), "azure".to_string()]);
        let err = c.check_delete(false).unwrap_err();
        assert_eq!((err.code().as_str(), err.http_status()), ("credential_attached", 409));
        assert_eq!(
            err.to_string(),
            "credential `k` is attached to 1 agent (ci-bot) and 2 routes (azure, openai); detach it first, or force \
             the delete"
        );
        c.check_delete(true).unwrap();
    }

    // --- resolution ----------------------------------------------------

    fn secrets_of(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect()
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| pairs.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string())
    }

    #[test]
    fn precedence_over_every_combination() {
        #[derive(Clone, Copy, Debug)]
        enum O {
            None,
            ByName,
            ByVar,
        }
        #[derive(Clone, Copy, Debug)]
        enum V {
            None,
            Enabled,
            Disabled,
        }
        let mapping = EnvMapping::default();
        let vault_secrets = secrets_of(&[("key", "from-vault")]);
        for o in [O::None, O::ByName, O::ByVar] {
            for v in [V::None, V::Enabled, V::Disabled] {
                for env_set in [false, true] {
                    let mut overrides = Overrides::new();
                    match o {
                        O::None => {}
                        O::ByName => overrides.set("openai", "key", Secret::new("from-override")),
                        O::ByVar => overrides.set_var("OPENAI_API_KEY", Secret::new("from-override")),
                    }
                    let vault = match v {
                        V::None => None,
                        V::Enabled => Some(VaultEntry { enabled: true, secrets: &vault_secrets }),
                        V::Disabled => Some(VaultEntry { enabled: false, secrets: &vault_secrets }),
                    };
                    let env = |var: &str| (env_set && var == "OPENAI_API_KEY").then(|| "from-env".to_string());
                    let got = resolve("openai", &overrides, vault, &mapping, env);
                    let case = format!("{o:?} {v:?} env={env_set}");
                    let want: Result<(Layer, &str), &str> = match (o, v, env_set) {
                        (O::ByName | O::ByVar, _, _) => Ok((Layer::Override, "from-override")),
                        (O::None, V::Disabled, _) => Err("credential_disabled"),
                        (O::None, V::Enabled, _) => Ok((Layer::Vault, "from-vault")),
                        (O::None, V::None, true) => Ok((Layer::Environment, "from-env")),
                        (O::None, V::None, false) => Err("provider_key_missing"),
                    };
                    match (got, want) {
                        (Ok(r), Ok((layer, value))) => {
                            assert_eq!((r.layer, r.secrets["key"].expose()), (layer, value), "{case}");
                            assert!(!format!("{r:?}").contains(value), "{case}: value in Debug");
                        }
                        (Err(e), Err(code)) => assert_eq!(e.code(), code, "{case}: {e}"),
                        (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn disabled_beats_every_lower_layer() {
        let secrets = secrets_of(&[("key", "from-vault")]);
        let err = resolve(
            "openai",
            &Overrides::new(),
            Some(VaultEntry { enabled: false, secrets: &secrets }),
            &EnvMapping::default(),
            env_of(&[("OPENAI_API_KEY", "from-env")]),
        )
        .unwrap_err();
        assert_eq!((err.code().as_str(), err.http_status()), ("credential_disabled", 401));
        assert_eq!(
            err.to_string(),
            "credential `openai` is disabled; every use fails until an operator enables it again"
        );
    }

    #[test]
    fn missing_names_what_was_looked_for_in_every_layer() {
        let err = resolve("openai", &Overrides::new(), None, &EnvMapping::default(), env_of(&[])).unwrap_err();
        assert_eq!((err.code().as_str(), err.http_status()), ("provider_key_missing", 404));
        assert_eq!(
            err.to_string(),
            "no layer has a secret for `openai`: override: none given for `openai` or OPENAI_API_KEY; vault: no \
             credential named `openai`; environment: OPENAI_API_KEY is unset"
        );
        let ModelError::ProviderKeyMissing { checked, .. } = &err else { panic!("{err:?}") };
        assert_eq!(checked.iter().map(|c| c.layer).collect::<Vec<_>>(), Layer::ALL);

        // Set but empty counts as unset, and says so.
        let err =
            resolve("openai", &Overrides::new(), None, &EnvMapping::default(), env_of(&[("OPENAI_API_KEY", " ")]))
                .unwrap_err();
        assert!(err.to_string().ends_with("environment: OPENAI_API_KEY is set but empty"), "{err}");

        // An unmapped name, and a vault credential without secrets.
        let empty = BTreeMap::new();
        let err = resolve(
            "my-llm-key",
            &Overrides::new(),
            Some(VaultEntry { enabled: true, secrets: &empty }),
            &EnvMapping::default(),
            env_of(&[]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no layer has a secret for `my-llm-key`: override: none given for `my-llm-key`; vault: credential \
             `my-llm-key` holds no secret; environment: no variable is mapped to `my-llm-key`"
        );
    }

    #[test]
    fn multi_variable_layers_are_whole_or_nothing() {
        let mapping = EnvMapping::default();
        let half = env_of(&[("AWS_ACCESS_KEY_ID", "AKID")]);
        let err = resolve("aws", &Overrides::new(), None, &mapping, half).unwrap_err();
        assert!(err.to_string().ends_with("environment: AWS_SECRET_ACCESS_KEY is unset"), "{err}");

        let full = env_of(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "sk\n")]);
        let r = resolve("aws", &Overrides::new(), None, &mapping, full).unwrap();
        assert_eq!(r.layer, Layer::Environment);
        assert_eq!(r.source, "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY", "only the variables read");
        assert_eq!(r.secrets.keys().collect::<Vec<_>>(), ["access_key_id", "secret_access_key"]);
        assert_eq!(r.secrets["secret_access_key"].expose(), "sk", "surrounding whitespace is ignored");

        // A partial job override does not win, and is reported; the vault
        // then supplies the credential whole rather than field by field.
        let mut overrides = Overrides::new();
        overrides.set_var("AWS_SECRET_ACCESS_KEY", Secret::new("job-sk"));
        let err = resolve("aws", &overrides, None, &mapping, env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("override: incomplete job variables: AWS_ACCESS_KEY_ID is unset"), "{err}");
        let vault = secrets_of(&[("access_key_id", "V"), ("secret_access_key", "VS")]);
        let r = resolve("aws", &overrides, Some(VaultEntry { enabled: true, secrets: &vault }), &mapping, env_of(&[]))
            .unwrap();
        assert_eq!((r.layer, r.secrets["secret_access_key"].expose()), (Layer::Vault, "VS"));
    }

    #[test]
    fn the_log_names_the_layer_never_the_value() {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).without_time().finish();
        let secrets = secrets_of(&[("key", CANARY)]);
        tracing::subscriber::with_default(subscriber, || {
            let r = resolve(
                "openai",
                &Overrides::new(),
                Some(VaultEntry { enabled: true, secrets: &secrets }),
                &EnvMapping::default(),
                env_of(&[("OPENAI_API_KEY", "sk-env-value-123")]),
            )
            .unwrap();
            assert_eq!(r.layer, Layer::Vault);
            resolve(
                "openai",
                &Overrides::new(),
                None,
                &EnvMapping::default(),
                env_of(&[("OPENAI_API_KEY", "sk-env-value-123 ")]),
            )
            .unwrap();
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("credential resolved") && log.contains("layer=\"vault\""), "{log}");
        assert!(log.contains("layer=\"environment\"") && log.contains("OPENAI_API_KEY"), "{log}");
        assert!(!log.contains(CANARY) && !log.contains("sk-env-value"), "{log}");
    }

    #[test]
    fn env_mapping_is_configurable() {
        let mut m = EnvMapping::default();
        assert_eq!(m.get("openai").unwrap()[0].var, "OPENAI_API_KEY");
        assert_eq!(m.get("anthropic").unwrap()[0].var, "ANTHROPIC_API_KEY");
        m.apply_entry("my-llm-key=TEAM_LLM_KEY").unwrap();
        assert_eq!(
            m.get("my-llm-key").unwrap(),
            &[EnvVar { field: "key".into(), var: "TEAM_LLM_KEY".into(), required: true }]
        );
        m.apply_entry("tencent=secret_id:TC_ID,secret_key:TC_KEY,token:TC_TOKEN?").unwrap();
        let t = m.get("tencent").unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t[2].required && t[2].var == "TC_TOKEN");
        m.apply_entry("openai=").unwrap();
        assert!(m.get("openai").is_none());
        let r = resolve("my-llm-key", &Overrides::new(), None, &m, env_of(&[("TEAM_LLM_KEY", "v")])).unwrap();
        assert_eq!((r.layer, r.source.as_str()), (Layer::Environment, "TEAM_LLM_KEY"));

        for bad in ["openai", "1x=A", "x=1A", "x=A B", "x=f:A,f:B", "x=f:A?", "x=f A:B"] {
            let err = m.apply_entry(bad).unwrap_err();
            assert_eq!((err.code().as_str(), err.http_status()), ("invalid_env_mapping", 500), "{bad}");
        }
        assert!(EnvMapping::empty().iter().next().is_none());
    }

    #[test]
    fn every_code_has_its_status() {
        let e = ModelError::CredentialNotFound { name: "x".into() };
        assert_eq!(
            (e.code().as_str(), e.http_status(), e.to_string().as_str()),
            ("credential_not_found", 404, "no credential named `x`")
        );
        let e = ModelError::CredentialExists { name: "x".into() };
        assert_eq!((e.code().as_str(), e.http_status()), ("credential_exists", 409));
    }
}
