//! Minting, without the host: the unsigned token for a time and a `jti`, and
//! the cache entry that lets a token be reused until near its expiry.

use latchkey_plugin_sdk::{Datetime, Error};

use crate::jose::{self, Registered};
use crate::settings::Settings;

/// A token before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsigned {
    /// The JOSE header JSON.
    pub header: String,
    /// The claims JSON.
    pub claims: String,
    /// What the signature covers: `b64url(header).b64url(claims)`.
    pub signing_input: String,
    /// `iat` (and `nbf`).
    pub iat: i64,
    /// `exp`.
    pub exp: i64,
}

/// The token the settings describe at `now`, with this `jti`. `iat` and `nbf`
/// are `now` in whole seconds; `exp` is `iat + ttl_seconds`.
pub fn unsigned(s: &Settings, now: Datetime, jti: &str) -> Result<Unsigned, Error> {
    let iat = now.seconds;
    let exp = iat.checked_add(s.ttl).ok_or_else(|| Error::InvalidRequest("the signing time is out of range".into()))?;
    let header = jose::header_json(s.alg, s.kid.as_deref());
    let reg = Registered { iss: s.iss.as_deref(), sub: s.sub.as_deref(), aud: &s.aud, iat, exp, jti };
    let claims = jose::claims_json(&reg, &s.extra);
    let signing_input = jose::signing_input(header.as_bytes(), claims.as_bytes());
    Ok(Unsigned { header, claims, signing_input, iat, exp })
}

/// A minted token as kept in the host's cache: `"<iat> <exp> <token>"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The token's `iat`.
    pub iat: i64,
    /// The token's `exp`.
    pub exp: i64,
    /// The compact JWS.
    pub token: String,
}

impl CacheEntry {
    /// The cache value.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.iat, self.exp, self.token)
    }

    /// Read a cache value; anything malformed is a miss.
    pub fn decode(value: &str) -> Option<CacheEntry> {
        let mut it = value.splitn(3, ' ');
        let iat = it.next()?.parse().ok()?;
        let exp = it.next()?.parse().ok()?;
        let token = it.next()?.to_string();
        Some(CacheEntry { iat, exp, token })
    }

    /// Whether the token may be handed out at `now`: already valid (a call
    /// replayed at an earlier `--at` must not get a token from its future)
    /// and at least `margin` seconds from expiry. The host expires the entry
    /// at `exp - margin` too; this check does not rely on it.
    pub fn usable(&self, now: Datetime, margin: i64) -> bool {
        // Time left, rounded down to whole seconds.
        let left = self.exp.saturating_sub(now.seconds).saturating_sub(i64::from(now.nanoseconds > 0));
        self.iat <= now.seconds && left >= margin
    }

    /// When the host should drop the entry.
    pub fn expires(&self, margin: i64) -> Datetime {
        Datetime { seconds: self.exp - margin, nanoseconds: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::decode_compact;
    use latchkey_plugin_sdk::Config;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::parse(&Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())).unwrap()
    }

    fn at(seconds: i64, nanoseconds: u32) -> Datetime {
        Datetime { seconds, nanoseconds }
    }

    #[test]
    fn unsigned_token_for_a_fixed_time() {
        let s = settings(&[
            ("alg", "ES256"),
            ("iss", "https://issuer.example"),
            ("aud", "api"),
            ("kid", "k1"),
            ("ttl_seconds", "600"),
            ("claims", r#"{"scope":"read"}"#),
        ]);
        let u = unsigned(&s, at(1_700_000_000, 999_999_999), "abc").unwrap();
        assert_eq!(u.header, r#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#);
        assert_eq!(
            u.claims,
            r#"{"iss":"https://issuer.example","aud":"api","iat":1700000000,"nbf":1700000000,"exp":1700000600,"jti":"abc","scope":"read"}"#
        );
        assert_eq!((u.iat, u.exp), (1_700_000_000, 1_700_000_600));
        let d = decode_compact(&format!("{}.AA", u.signing_input)).unwrap();
        assert_eq!((d.header, d.claims), (u.header, u.claims));
        assert!(unsigned(&s, at(i64::MAX - 10, 0), "j").is_err());
    }

    #[test]
    fn cache_entry_round_trip_and_reuse_window() {
        let e = CacheEntry { iat: 1000, exp: 1300, token: "a.b.c".into() };
        assert_eq!(CacheEntry::decode(&e.encode()), Some(e.clone()));
        for bad in ["", "1 2", "x 2 t", "1 y t"] {
            assert_eq!(CacheEntry::decode(bad), None, "{bad}");
        }
        assert!(e.usable(at(1000, 0), 60));
        assert!(e.usable(at(1240, 0), 60));
        assert!(!e.usable(at(1240, 1), 60), "59.999 s left is under a minute");
        assert!(!e.usable(at(1241, 0), 60));
        assert!(!e.usable(at(999, 0), 60), "not yet issued at that time");
        assert!(e.usable(at(1299, 0), 1) && !e.usable(at(1300, 0), 1));
        assert_eq!((e.expires(60).seconds, e.expires(60).nanoseconds), (1240, 0));
    }
}
