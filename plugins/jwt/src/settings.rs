//! The credential's configuration, checked and parsed once: by
//! `validate_config` before it is stored, and again by every call, so a stored
//! configuration can never mint a token the validator would have refused.

use latchkey_plugin_sdk::{Config, Error, FieldInfo};
use serde_json::{Map, Value};

use crate::jose::{self, Alg, REGISTERED_CLAIMS};

/// The default lifetime of a minted token, in seconds.
pub const DEFAULT_TTL: i64 = 300;
/// The longest lifetime a token may be given: one day, the host cache's limit.
pub const MAX_TTL: i64 = 86_400;

/// The config fields, as `describe` declares them.
pub fn config_fields() -> Vec<FieldInfo> {
    vec![
        FieldInfo::required("alg", "Signing algorithm: HS256, RS256, ES256 or EdDSA (`none` is not allowed)"),
        FieldInfo::optional("iss", "The `iss` (issuer) claim"),
        FieldInfo::optional("sub", "The `sub` (subject) claim"),
        FieldInfo::optional(
            "aud",
            "The `aud` (audience) claim; a comma-separated list becomes a JSON array, one value a string",
        ),
        FieldInfo::optional("ttl_seconds", "Token lifetime in seconds, 1 to 86400 (default 300)"),
        FieldInfo::optional("kid", "Key id, written into the JOSE header as `kid`"),
        FieldInfo::optional(
            "claims",
            "Extra claims as one JSON object, e.g. {\"scope\":\"read\",\"admin\":true}; values may be any JSON; \
             the registered names iss, sub, aud, exp, nbf, iat and jti are refused here (they have their own \
             fields or are set by the scheme)",
        ),
        FieldInfo::optional("header", "Header to carry the token (default `Authorization`)"),
        FieldInfo::optional("prefix", "Text before the token (default `Bearer `; set it empty for none)"),
        FieldInfo::optional(
            "jti",
            "A fixed `jti`, for tests and reproducible signing; leave unset in production, where every token \
             gets 16 random bytes",
        ),
    ]
}

/// A parsed, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The signing algorithm.
    pub alg: Alg,
    /// `iss`, if any.
    pub iss: Option<String>,
    /// `sub`, if any.
    pub sub: Option<String>,
    /// The audiences, possibly none.
    pub aud: Vec<String>,
    /// Token lifetime in seconds, 1..=86400.
    pub ttl: i64,
    /// The JOSE `kid`, if any.
    pub kid: Option<String>,
    /// Extra claims; never a registered name.
    pub extra: Map<String, Value>,
    /// A fixed `jti`, for reproducible tokens.
    pub jti: Option<String>,
    /// The header carrying the token.
    pub header: String,
    /// Text before the token in that header.
    pub prefix: String,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

/// The `aud` field: comma-separated audiences, none empty (minting and
/// verification read it the same way).
pub fn audiences(config: &Config) -> Result<Vec<String>, Error> {
    let Some(list) = config.get("aud") else { return Ok(Vec::new()) };
    let items: Vec<String> = list.split(',').map(|a| a.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(invalid("`aud` has an empty entry; give comma-separated audiences"));
    }
    Ok(items)
}

/// An RFC 9110 token, as header names must be.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Settings {
    /// Check and parse a configuration. Unknown fields are refused.
    pub fn parse(config: &Config) -> Result<Settings, Error> {
        config.check_fields(&config_fields())?;
        // Two values for one field would be read differently by different
        // code paths (first wins here); the operator's intent is unknowable.
        for (i, (k, _)) in config.pairs().iter().enumerate() {
            if config.pairs()[..i].iter().any(|(seen, _)| seen == k) {
                return Err(invalid(format!("config field `{k}` is given twice")));
            }
        }
        let alg_name = config.get("alg").unwrap_or_default();
        let alg = Alg::from_name(alg_name).ok_or_else(|| {
            invalid(format!("`alg` must be one of {} (case-sensitive; unsigned tokens are never minted)", Alg::names()))
        })?;

        let aud = audiences(config)?;

        let ttl = match config.get("ttl_seconds") {
            None => DEFAULT_TTL,
            Some(t) => t
                .parse::<i64>()
                .ok()
                .filter(|t| (1..=MAX_TTL).contains(t))
                .ok_or_else(|| invalid(format!("`ttl_seconds` must be a whole number from 1 to {MAX_TTL}")))?,
        };

        let extra = match config.get("claims") {
            None => Map::new(),
            Some(text) => {
                let map =
                    jose::parse_object(text).map_err(|e| invalid(format!("`claims` must be one JSON object: {e}")))?;
                if let Some(name) = map.keys().find(|k| REGISTERED_CLAIMS.contains(&k.as_str())) {
                    return Err(invalid(format!(
                        "`claims` may not set the registered claim `{name}`: iss, sub and aud have their own \
                         fields; exp, nbf, iat and jti are set by the scheme"
                    )));
                }
                map
            }
        };

        let header = config.get("header").unwrap_or("Authorization").to_string();
        if !is_token(&header) {
            return Err(invalid("`header` must be a valid HTTP header name"));
        }
        // `Config::get` treats an empty value as unset, but an empty prefix is
        // a real choice (a header that carries the bare token), so the raw
        // pairs are read here.
        let prefix = match config.pairs().iter().find(|(k, _)| k == "prefix") {
            None => "Bearer ".to_string(),
            Some((_, p)) => p.clone(),
        };
        if prefix.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid("`prefix` may not contain control characters"));
        }

        let owned = |name: &str| config.get(name).map(str::to_string);
        Ok(Settings {
            alg,
            iss: owned("iss"),
            sub: owned("sub"),
            aud,
            ttl,
            kid: owned("kid"),
            extra,
            jti: owned("jti"),
            header,
            prefix,
        })
    }

    /// How long before expiry a cached token stops being reused: a minute, or
    /// a fifth of the lifetime for tokens shorter than five minutes (but at
    /// least a second, since a token is expired at its `exp`), so that the
    /// receiver always gets a token with time left to use it.
    pub fn reuse_margin(&self) -> i64 {
        (self.ttl / 5).clamp(1, 60)
    }

    /// Everything that changes the minted token (not `header`/`prefix`),
    /// unambiguously serialised; its hash names the cache entry. The secret
    /// is not in it: the host empties the cache when the credential changes.
    pub fn cache_material(&self) -> String {
        Value::Array(vec![
            Value::from(self.alg.name()),
            Value::from(self.iss.clone()),
            Value::from(self.sub.clone()),
            Value::from(self.aud.clone()),
            Value::from(self.ttl),
            Value::from(self.kid.clone()),
            Value::Object(self.extra.clone()),
            Value::from(self.jti.clone()),
        ])
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        match Settings::parse(&cfg(pairs)) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected invalid-config for {pairs:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::parse(&cfg(&[("alg", "HS256")])).unwrap();
        assert_eq!(s.alg, Alg::Hs256);
        assert_eq!((s.ttl, s.header.as_str(), s.prefix.as_str()), (300, "Authorization", "Bearer "));
        assert_eq!((s.iss, s.sub, s.kid, s.jti), (None, None, None, None));
        assert!(s.aud.is_empty() && s.extra.is_empty());
        assert_eq!(Settings::parse(&cfg(&[("alg", "HS256")])).unwrap().reuse_margin(), 60);
    }

    #[test]
    fn full_config() {
        let s = Settings::parse(&cfg(&[
            ("alg", "EdDSA"),
            ("iss", "latchkey"),
            ("sub", "agent-7"),
            ("aud", " https://a.example , b "),
            ("ttl_seconds", "86400"),
            ("kid", "2024-01"),
            ("claims", r#"{"scope":"read","n":1}"#),
            ("header", "X-Token"),
            ("prefix", ""),
            ("jti", "fixed"),
        ]))
        .unwrap();
        assert_eq!(s.alg, Alg::EdDsa);
        assert_eq!(s.aud, vec!["https://a.example".to_string(), "b".to_string()]);
        assert_eq!((s.ttl, s.header.as_str(), s.prefix.as_str()), (86_400, "X-Token", ""));
        assert_eq!(s.extra["scope"], "read");
        assert_eq!(s.jti.as_deref(), Some("fixed"));
    }

    #[test]
    fn refuses_bad_alg() {
        for alg in ["none", "None", "hs256", "HS512", "PS256"] {
            assert!(err(&[("alg", alg)]).contains("`alg` must be one of HS256, RS256, ES256, EdDSA"), "{alg}");
        }
        assert!(err(&[("alg", "")]).contains("`alg` is required"));
        assert!(err(&[]).contains("`alg` is required"));
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(err(&[("alg", "HS256"), ("claim.x", "1")]).contains("unknown config field `claim.x`"));
        assert!(err(&[("alg", "HS256"), ("iss", "a"), ("iss", "b")]).contains("`iss` is given twice"));
        assert!(err(&[("alg", "HS256"), ("ttl_seconds", "0")]).contains("1 to 86400"));
        assert!(err(&[("alg", "HS256"), ("ttl_seconds", "86401")]).contains("1 to 86400"));
        assert!(err(&[("alg", "HS256"), ("ttl_seconds", "5m")]).contains("ttl_seconds"));
        assert!(err(&[("alg", "HS256"), ("aud", "a,,b")]).contains("empty entry"));
        assert!(err(&[("alg", "HS256"), ("header", "X Token")]).contains("header name"));
        assert!(err(&[("alg", "HS256"), ("prefix", "Bearer\r\n")]).contains("control"));
        assert!(err(&[("alg", "HS256"), ("claims", "[1]")]).contains("one JSON object"));
        assert!(err(&[("alg", "HS256"), ("claims", "{\"a\":1,\"a\":2}")]).contains("duplicate member `a`"));
        for name in REGISTERED_CLAIMS {
            let claims = format!("{{\"{name}\":1}}");
            assert!(err(&[("alg", "HS256"), ("claims", &claims)]).contains(&format!("`{name}`")), "{name}");
        }
    }

    #[test]
    fn reuse_margin_is_a_fifth_up_to_a_minute() {
        for (ttl, margin) in [(1, 1), (4, 1), (5, 1), (9, 1), (10, 2), (100, 20), (300, 60), (86_400, 60)] {
            let s = Settings::parse(&cfg(&[("alg", "HS256"), ("ttl_seconds", &ttl.to_string())])).unwrap();
            assert_eq!(s.reuse_margin(), margin, "ttl {ttl}");
        }
    }

    #[test]
    fn cache_material_tracks_the_token_not_the_header() {
        let base = [("alg", "HS256"), ("aud", "a,b")];
        let m = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            Settings::parse(&cfg(&pairs)).unwrap().cache_material()
        };
        let plain = m(&[]);
        assert_eq!(plain, m(&[("header", "X-Jwt"), ("prefix", "")]));
        for changed in [
            m(&[("iss", "i")]),
            m(&[("sub", "s")]),
            m(&[("ttl_seconds", "60")]),
            m(&[("kid", "k")]),
            m(&[("claims", "{\"x\":1}")]),
            m(&[("jti", "j")]),
        ] {
            assert_ne!(plain, changed);
        }
        // The same text in two different fields must not collide.
        assert_ne!(
            Settings::parse(&cfg(&[("alg", "HS256"), ("aud", "a,b")])).unwrap().cache_material(),
            Settings::parse(&cfg(&[("alg", "HS256"), ("iss", "a,b")])).unwrap().cache_material()
        );
    }
}
