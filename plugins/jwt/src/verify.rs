//! Verification of incoming JWTs (agent identity) against a JWKS.
//!
//! The host fetches and refreshes the JWKS and passes it in with the policy
//! (`alg`, `iss`, `aud`, `leeway_seconds`); this module decides. Everything
//! here is pure apart from the signature check, which is passed in as a
//! function (the host's `crypto.verify` in the plugin, a native one in unit
//! tests), so every rule is unit-tested natively.
//!
//! The rules follow RFC 8725 (JWT best current practice):
//!
//! - the algorithm is pinned by the policy, never taken from the token:
//!   `none`, any other name and a case variant are refused before any key
//!   is looked at, and HS256 cannot be configured at all (a JWKS is public, so
//!   an HMAC key in it would let anyone mint tokens: the HS/RS confusion);
//! - a key is used only if its `kty`/`crv` fit the pinned algorithm, its
//!   `use` (when given) is `sig` and its `alg` (when given) is the pinned one;
//! - `crit` is refused (no extension is understood), and `jku`, `x5u` and an
//!   embedded `jwk` are never followed;
//! - `exp` is required; `exp`, `nbf` and `iat` are checked with a small
//!   leeway; `iss` must match exactly; `aud` must contain a configured
//!   audience, and a token that names audiences is refused by a policy that
//!   configures none (RFC 7519 §4.1.3);
//! - header, claims and JWKS are parsed with duplicate member names refused.

use latchkey_plugin_sdk::{Config, Error, FieldInfo};
use serde_json::{Map, Value};

use crate::jose::{self, Alg};

/// Default clock-skew allowance for `exp`, `nbf` and `iat`, in seconds.
pub const DEFAULT_LEEWAY: i64 = 60;
/// The largest leeway a policy may set.
pub const MAX_LEEWAY: i64 = 300;
/// The longest token accepted, in bytes: far above any real JWT, small
/// enough that decoding a hostile one costs nothing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The most keys looked at in one JWKS.
pub const MAX_KEYS: usize = 64;

/// The policy fields a verifier's configuration may hold.
pub fn policy_fields() -> Vec<FieldInfo> {
    vec![
        FieldInfo::required(
            "alg",
            "The one algorithm accepted: RS256, ES256 or EdDSA (HS256 cannot be verified against a public JWKS)",
        ),
        FieldInfo::required("iss", "The issuer; the token's `iss` must equal it exactly"),
        FieldInfo::optional("aud", "Accepted audiences, comma-separated; the token's `aud` must contain one"),
        FieldInfo::optional("leeway_seconds", "Clock-skew allowance for exp, nbf and iat, 0 to 300 (default 60)"),
    ]
}

/// A parsed verification policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The pinned algorithm.
    pub alg: Alg,
    /// The required issuer.
    pub iss: String,
    /// Accepted audiences (empty: the token must name none).
    pub aud: Vec<String>,
    /// Clock-skew allowance in seconds.
    pub leeway: i64,
}

/// Token text for a message: control characters escaped, at most `max` chars.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_default).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

fn rejected(msg: impl Into<String>) -> Error {
    Error::TokenRejected(msg.into())
}

impl Policy {
    /// Check and parse a policy; unknown fields are refused.
    pub fn parse(config: &Config) -> Result<Policy, Error> {
        config.check_fields(&policy_fields())?;
        let alg = match config.get("alg").unwrap_or_default() {
            "HS256" => {
                return Err(invalid(
                    "`alg` HS256 cannot be verified against a JWKS: its keys are public, so an HMAC key there \
                     would let anyone mint tokens; use RS256, ES256 or EdDSA",
                ));
            }
            name => Alg::from_name(name).ok_or_else(|| {
                invalid("`alg` must be RS256, ES256 or EdDSA (case-sensitive; `none` is never accepted)")
            })?,
        };
        let iss =
            config.get("iss").ok_or_else(|| invalid("`iss` is required: the issuer tokens must name"))?.to_string();
        let aud = crate::settings::audiences(config)?;
        let leeway =
            match config.get("leeway_seconds") {
                None => DEFAULT_LEEWAY,
                Some(t) => t.parse::<i64>().ok().filter(|t| (0..=MAX_LEEWAY).contains(t)).ok_or_else(|| {
                    invalid(format!("`leeway_seconds` must be a whole number from 0 to {MAX_LEEWAY}"))
                })?,
            };
        Ok(Policy { alg, iss, aud, leeway })
    }
}

/// `kty` (and `crv`) a key must have for the algorithm.
fn key_fits(alg: Alg, key: &Map<String, Value>) -> bool {
    let s = |n: &str| key.get(n).and_then(Value::as_str);
    let shape = match alg {
        Alg::Rs256 => s("kty") == Some("RSA"),
        Alg::Es256 => s("kty") == Some("EC") && s("crv") == Some("P-256"),
        Alg::EdDsa => s("kty") == Some("OKP") && s("crv") == Some("Ed25519"),
        Alg::Hs256 => false,
    };
    let use_ok = key.get("use").is_none_or(|u| u.as_str() == Some("sig"));
    let alg_ok = key.get("alg").is_none_or(|a| a.as_str() == Some(alg.name()));
    let ops_ok = key
        .get("key_ops")
        .is_none_or(|ops| ops.as_array().is_some_and(|o| o.iter().any(|x| x.as_str() == Some("verify"))));
    shape && use_ok && alg_ok && ops_ok
}

/// The key ids in a JWKS (for the host's unknown-`kid` refresh, and tests).
pub fn jwks_kids(jwks: &str) -> Result<Vec<String>, String> {
    let keys = jwks_keys(jwks)?;
    Ok(keys.iter().filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string)).collect())
}

fn jwks_keys(jwks: &str) -> Result<Vec<Map<String, Value>>, String> {
    let doc = jose::parse_object(jwks).map_err(|e| format!("the JWKS is not a JSON object: {e}"))?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err("the JWKS has no `keys` array".into());
    };
    Ok(keys.iter().take(MAX_KEYS).filter_map(|k| k.as_object().cloned()).collect())
}

/// A numeric date claim (RFC 7519 §2: seconds, possibly fractional).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Error> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| rejected(format!("claim `{name}` is not a number of seconds"))),
    }
}

/// Verify `token` under `policy` against `jwks` at time `now` (seconds).
/// `check_sig(alg, jwk_json, signing_input, signature)` verifies one signature.
/// Returns the claims object.
pub fn verify(
    policy: &Policy,
    jwks: &str,
    token: &str,
    now: i64,
    check_sig: impl Fn(Alg, &str, &[u8], &[u8]) -> Result<bool, Error>,
) -> Result<Map<String, Value>, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(rejected(format!("the token is longer than {MAX_TOKEN_LEN} bytes")));
    }
    let decoded = jose::decode_jws(token).map_err(|e| rejected(format!("not a compact JWS: {e}")))?;
    let header = jose::parse_object(&decoded.header).map_err(|e| rejected(format!("bad JOSE header: {e}")))?;

    // The algorithm first: nothing else in the token is trusted until the
    // signature checks out under the pinned one.
    let alg = header.get("alg").and_then(Value::as_str).ok_or_else(|| rejected("the JOSE header has no `alg`"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(rejected("`alg: none` (an unsigned token) is never accepted"));
    }
    if alg != policy.alg.name() {
        return Err(rejected(format!(
            "the token is signed with `{}`, but this issuer is pinned to {}",
            printable(alg, 20),
            policy.alg.name()
        )));
    }
    // `typ`, when present, must name a JWT (RFC 7519 §5.1, RFC 9068 access
    // tokens); a token of another type (a logout token, a DPoP proof) is
    // not an identity assertion for this purpose.
    if let Some(typ) = header.get("typ") {
        let t = typ.as_str().unwrap_or_default().to_ascii_lowercase();
        let t = t.strip_prefix("application/").unwrap_or(&t);
        if t != "jwt" && t != "at+jwt" {
            return Err(rejected(format!("the JOSE header's `typ` {typ} is not a JWT")));
        }
    }
    if header.contains_key("crit") {
        return Err(rejected("the JOSE header has `crit` extensions, which are not supported"));
    }

    let keys = jwks_keys(jwks).map_err(invalid)?;
    let usable: Vec<&Map<String, Value>> = keys.iter().filter(|k| key_fits(policy.alg, k)).collect();
    let candidates: Vec<&Map<String, Value>> = match header.get("kid") {
        Some(Value::String(kid)) => {
            let found: Vec<_> =
                usable.iter().copied().filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid)).collect();
            if found.is_empty() {
                return Err(rejected(format!(
                    "no {} key with kid `{}` in the issuer's JWKS",
                    policy.alg.name(),
                    printable(kid, 64)
                )));
            }
            found
        }
        Some(_) => return Err(rejected("the JOSE header's `kid` is not a string")),
        None if usable.len() == 1 => usable,
        None if usable.is_empty() => {
            return Err(rejected(format!("the issuer's JWKS has no {} signing key", policy.alg.name())));
        }
        None => {
            return Err(rejected(format!(
                "the token has no `kid` and the issuer's JWKS has {} {} keys; a `kid` is needed to choose",
                usable.len(),
                policy.alg.name()
            )));
        }
    };
    if !policy.alg.signature_len_ok(decoded.signature.len()) {
        return Err(rejected(format!("a {}-byte signature is not a {} signature", decoded.signature.len(), alg)));
    }
    let signing_input = token.rsplit_once('.').map(|(i, _)| i).unwrap_or_default();
    let mut verified = false;
    for key in candidates {
        let jwk = Value::Object(key.clone()).to_string();
        if check_sig(policy.alg, &jwk, signing_input.as_bytes(), &decoded.signature)? {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(rejected("the signature does not verify with the issuer's key"));
    }

    // Claims, only now that they are known to come from the issuer: a JWS
    // payload may be any bytes, and whether they are a JWT's claims set is
    // asked after the signature (RFC 7519 §7.2, steps 9 and 10).
    let claims = std::str::from_utf8(&decoded.payload)
        .map_err(|_| "not UTF-8".to_string())
        .and_then(jose::parse_object)
        .map_err(|e| rejected(format!("the signature verifies, but the payload is not a JWT claims set: {e}")))?;
    let (now, leeway) = (now as f64, policy.leeway as f64);
    let exp = numeric_date(&claims, "exp")?
        .ok_or_else(|| rejected("the token has no `exp`: unbounded tokens are not accepted"))?;
    if now >= exp + leeway {
        return Err(rejected(format!("the token expired at {exp} (now {now}, leeway {leeway} s)")));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(rejected(format!("the token is not valid before {nbf} (now {now}, leeway {leeway} s)")));
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && now + leeway < iat
    {
        return Err(rejected(format!("the token was issued in the future, at {iat} (now {now})")));
    }
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == policy.iss => {}
        Some(iss) => {
            return Err(rejected(format!("issuer `{}` is not the configured `{}`", printable(iss, 200), policy.iss)));
        }
        None => return Err(rejected("the token has no `iss`")),
    }
    let token_aud: Vec<&str> = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| rejected("`aud` holds a non-string")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(rejected("`aud` is neither a string nor an array of strings")),
    };
    match (policy.aud.is_empty(), token_aud.is_empty()) {
        (true, true) => {}
        (true, false) => {
            return Err(rejected(
                "the token names an audience but this issuer is configured with none; set the issuer's `aud`",
            ));
        }
        (false, _) => {
            if !token_aud.iter().any(|a| policy.aud.iter().any(|p| p == a)) {
                return Err(rejected(format!(
                    "the token's audience does not include {}",
                    policy.aud.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" or ")
                )));
            }
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_plugin_sdk::encoding::base64url;

    const NOW: i64 = 1_700_000_000;

    fn policy(alg: &str, aud: Option<&str>) -> Policy {
        let mut pairs = vec![("alg".to_string(), alg.to_string()), ("iss".to_string(), "https://idp.test".to_string())];
        if let Some(a) = aud {
            pairs.push(("aud".into(), a.into()));
        }
        Policy::parse(&Config::new(pairs)).unwrap()
    }

    /// A stand-in signature: the key's `x` (or `n`) repeated over the input's
    /// length, so a token "signed" with one key verifies only with that key.
    /// The real algorithms are the host's, tested there and end to end.
    fn fake_sig(key_material: &str, input: &str, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (i, b) in key_material.bytes().chain(input.bytes()).enumerate() {
            out[i % len] ^= b.rotate_left((i % 7) as u32);
        }
        out
    }

    fn check(_alg: Alg, jwk: &str, input: &[u8], sig: &[u8]) -> Result<bool, Error> {
        let key = jose::parse_object(jwk).unwrap();
        let material = key.get("x").or(key.get("n")).and_then(Value::as_str).unwrap();
        Ok(fake_sig(material, std::str::from_utf8(input).unwrap(), sig.len()) == sig)
    }

    fn jwks() -> String {
        r#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"k1","x":"key-one","use":"sig"},
            {"kty":"OKP","crv":"Ed25519","kid":"k2","x":"key-two","alg":"EdDSA"},
            {"kty":"EC","crv":"P-256","kid":"e1","x":"ec-x","y":"ec-y"},
            {"kty":"RSA","kid":"r1","n":"rsa-n","e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","x":"key-enc","use":"enc"}
        ]}"#
        .to_string()
    }

    fn token(header: &str, claims: &str, material: &str, len: usize) -> String {
        let input = format!("{}.{}", base64url(header.as_bytes()), base64url(claims.as_bytes()));
        let sig = fake_sig(material, &input, len);
        format!("{input}.{}", base64url(&sig))
    }

    fn good_claims() -> String {
        format!(r#"{{"iss":"https://idp.test","sub":"bot-7","aud":"latchkey","iat":{NOW},"exp":{}}}"#, NOW + 300)
    }

    fn verify_ed(tok: &str) -> Result<Map<String, Value>, Error> {
        verify(&policy("EdDSA", Some("latchkey")), &jwks(), tok, NOW, check)
    }

    fn rejected_with(r: Result<Map<String, Value>, Error>, needle: &str) {
        match r {
            Err(Error::TokenRejected(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected a rejection containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_token_and_returns_claims() {
        let t = token(r#"{"alg":"EdDSA","kid":"k1"}"#, &good_claims(), "key-one", 64);
        let claims = verify_ed(&t).unwrap();
        assert_eq!(claims["sub"], "bot-7");
        let t = token(r#"{"alg":"EdDSA","kid":"k2","typ":"JWT"}"#, &good_claims(), "key-two", 64);
        assert_eq!(verify_ed(&t).unwrap()["sub"], "bot-7");
    }

    #[test]
    fn none_and_other_algorithms_are_refused_before_any_key() {
        for alg in ["none", "None", "NONE"] {
            let t = format!("{}.{}.AA", base64url(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()), base64url(b"{}"));
            rejected_with(verify_ed(&t), "never accepted");
        }
        // Unsigned with an empty signature segment is not even a compact JWS.
        let t = format!("{}.{}.", base64url(br#"{"alg":"none"}"#), base64url(good_claims().as_bytes()));
        rejected_with(verify_ed(&t), "not a compact JWS");
        // HS256 signed with the public key's text (the classic confusion).
        let t = token(r#"{"alg":"HS256","kid":"k1"}"#, &good_claims(), "key-one", 32);
        rejected_with(verify_ed(&t), "pinned to EdDSA");
        let t = token(r#"{"alg":"RS256","kid":"r1"}"#, &good_claims(), "rsa-n", 256);
        rejected_with(verify_ed(&t), "pinned to EdDSA");
        let t = token(r#"{"alg":"eddsa","kid":"k1"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "pinned");
        let t = token(r#"{"kid":"k1"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "no `alg`");
    }

    #[test]
    fn hs256_policy_cannot_be_configured() {
        let pairs = vec![("alg".to_string(), "HS256".to_string()), ("iss".to_string(), "x".to_string())];
        let err = Policy::parse(&Config::new(pairs)).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(m) if m.contains("public")));
        let pairs = vec![("alg".to_string(), "none".to_string()), ("iss".to_string(), "x".to_string())];
        assert!(Policy::parse(&Config::new(pairs)).is_err());
        let pairs = vec![("alg".to_string(), "RS256".to_string())];
        assert!(Policy::parse(&Config::new(pairs)).is_err(), "iss is required");
        let pairs = vec![
            ("alg".to_string(), "RS256".to_string()),
            ("iss".to_string(), "x".to_string()),
            ("leeway_seconds".to_string(), "301".to_string()),
        ];
        assert!(Policy::parse(&Config::new(pairs)).is_err());
    }

    #[test]
    fn wrong_key_and_key_selection() {
        // Signed by k2's key but naming k1.
        let t = token(r#"{"alg":"EdDSA","kid":"k1"}"#, &good_claims(), "key-two", 64);
        rejected_with(verify_ed(&t), "does not verify");
        // A key of an attacker's own.
        let t = token(r#"{"alg":"EdDSA","kid":"k1"}"#, &good_claims(), "attacker", 64);
        rejected_with(verify_ed(&t), "does not verify");
        // Unknown kid.
        let t = token(r#"{"alg":"EdDSA","kid":"k9"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "no EdDSA key with kid `k9`");
        // An encryption key is never used to verify.
        let t = token(r#"{"alg":"EdDSA","kid":"enc"}"#, &good_claims(), "key-enc", 64);
        rejected_with(verify_ed(&t), "no EdDSA key with kid `enc`");
        // A key of another type under the named kid.
        let t = token(r#"{"alg":"EdDSA","kid":"e1"}"#, &good_claims(), "ec-x", 64);
        rejected_with(verify_ed(&t), "no EdDSA key");
        // No kid with two usable keys: ambiguous.
        let t = token(r#"{"alg":"EdDSA"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "a `kid` is needed");
        // No kid with exactly one usable key: that key.
        let t = token(r#"{"alg":"ES256"}"#, &good_claims(), "ec-x", 64);
        let es = verify(&policy("ES256", Some("latchkey")), &jwks(), &t, NOW, check);
        assert_eq!(es.unwrap()["sub"], "bot-7");
        // A signature of the wrong length for the algorithm.
        let t = token(r#"{"alg":"ES256","kid":"e1"}"#, &good_claims(), "ec-x", 72);
        rejected_with(verify(&policy("ES256", None), &jwks(), &t, NOW, check), "72-byte");
        // Odd kids are opaque names: unknown, so rejected; never a path or a query.
        for kid in ["../../dev/null", "' OR 1=1--", &"k".repeat(10_000)] {
            let h = serde_json::json!({"alg": "EdDSA", "kid": kid}).to_string();
            rejected_with(verify_ed(&token(&h, &good_claims(), "key-one", 64)), "no EdDSA key with kid");
        }
        let t = token(r#"{"alg":"EdDSA","kid":7}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "not a string");
        // `typ` must name a JWT when present.
        let t = token(r#"{"alg":"EdDSA","kid":"k1","typ":"dpop+jwt"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "not a JWT");
        let t = token(r#"{"alg":"EdDSA","kid":"k1","typ":"application/at+jwt"}"#, &good_claims(), "key-one", 64);
        verify_ed(&t).unwrap();
        // `crit` is refused; embedded `jwk` is ignored (the JWKS key decides).
        let t = token(r#"{"alg":"EdDSA","kid":"k1","crit":["b64"],"b64":false}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "crit");
        let t = token(
            r#"{"alg":"EdDSA","kid":"k1","jwk":{"kty":"OKP","crv":"Ed25519","x":"attacker"}}"#,
            &good_claims(),
            "attacker",
            64,
        );
        rejected_with(verify_ed(&t), "does not verify");
    }

    #[test]
    fn time_claims_with_leeway() {
        let with = |claims: String| verify_ed(&token(r#"{"alg":"EdDSA","kid":"k1"}"#, &claims, "key-one", 64));
        let c = |extra: &str| format!(r#"{{"iss":"https://idp.test","aud":"latchkey",{extra}}}"#);
        rejected_with(with(c(&format!(r#""exp":{}"#, NOW - 61))), "expired");
        with(c(&format!(r#""exp":{}"#, NOW - 59))).unwrap();
        rejected_with(with(c(&format!(r#""exp":{}"#, NOW - 60))), "expired");
        with(c(&format!(r#""exp":{}.5"#, NOW + 10))).unwrap();
        rejected_with(with(c(r#""sub":"x""#)), "no `exp`");
        rejected_with(with(c(r#""exp":"tomorrow""#)), "not a number");
        rejected_with(with(c(&format!(r#""exp":{},"nbf":{}"#, NOW + 900, NOW + 61))), "not valid before");
        with(c(&format!(r#""exp":{},"nbf":{}"#, NOW + 900, NOW + 59))).unwrap();
        rejected_with(with(c(&format!(r#""exp":{},"iat":{}"#, NOW + 900, NOW + 120))), "future");
    }

    #[test]
    fn issuer_and_audience() {
        let with = |claims: String, aud: Option<&str>| {
            verify(
                &policy("EdDSA", aud),
                &jwks(),
                &token(r#"{"alg":"EdDSA","kid":"k1"}"#, &claims, "key-one", 64),
                NOW,
                check,
            )
        };
        let exp = NOW + 60;
        rejected_with(with(format!(r#"{{"iss":"https://evil.test","exp":{exp}}}"#), None), "not the configured");
        rejected_with(with(format!(r#"{{"iss":"https://idp.test/","exp":{exp}}}"#), None), "not the configured");
        rejected_with(with(format!(r#"{{"exp":{exp}}}"#), None), "no `iss`");
        with(format!(r#"{{"iss":"https://idp.test","exp":{exp}}}"#), None).unwrap();
        rejected_with(
            with(format!(r#"{{"iss":"https://idp.test","aud":"x","exp":{exp}}}"#), None),
            "configured with none",
        );
        with(format!(r#"{{"iss":"https://idp.test","aud":["a","latchkey"],"exp":{exp}}}"#), Some("latchkey,other"))
            .unwrap();
        rejected_with(
            with(format!(r#"{{"iss":"https://idp.test","aud":["a","b"],"exp":{exp}}}"#), Some("latchkey")),
            "audience",
        );
        rejected_with(with(format!(r#"{{"iss":"https://idp.test","exp":{exp}}}"#), Some("latchkey")), "audience");
        rejected_with(
            with(format!(r#"{{"iss":"https://idp.test","aud":[1],"exp":{exp}}}"#), Some("latchkey")),
            "non-string",
        );
    }

    #[test]
    fn a_payload_that_is_no_claims_set_is_refused_after_the_signature() {
        let not_claims: [&[u8]; 5] = [b"", b"foo", b"123400", b"[1]", &[0xe0, 0xe1, 0xe2]];
        for payload in not_claims {
            let input = format!("{}.{}", base64url(br#"{"alg":"EdDSA","kid":"k1"}"#), base64url(payload));
            let signed = format!("{input}.{}", base64url(&fake_sig("key-one", &input, 64)));
            rejected_with(verify_ed(&signed), "the signature verifies, but the payload is not a JWT claims set");
            let forged = format!("{input}.{}", base64url(&fake_sig("attacker", &input, 64)));
            rejected_with(verify_ed(&forged), "does not verify");
        }
    }

    #[test]
    fn duplicate_members_and_junk_are_refused() {
        let t = token(r#"{"alg":"EdDSA","alg":"none","kid":"k1"}"#, &good_claims(), "key-one", 64);
        rejected_with(verify_ed(&t), "duplicate");
        let dup =
            format!(r#"{{"iss":"https://idp.test","aud":"latchkey","exp":{},"exp":{}}}"#, NOW + 60, NOW + 999_999);
        rejected_with(verify_ed(&token(r#"{"alg":"EdDSA","kid":"k1"}"#, &dup, "key-one", 64)), "duplicate");
        rejected_with(verify_ed("not.a.jwt!"), "not a compact JWS");
        rejected_with(verify_ed(&"e".repeat(MAX_TOKEN_LEN + 1)), "longer than");
        let bad = verify(
            &policy("EdDSA", None),
            r#"{"keys":1}"#,
            &token(r#"{"alg":"EdDSA"}"#, &good_claims(), "x", 64),
            NOW,
            check,
        );
        assert!(matches!(bad, Err(Error::InvalidConfig(m)) if m.contains("keys")));
        assert_eq!(jwks_kids(&jwks()).unwrap(), ["k1", "k2", "e1", "r1", "enc"]);
    }
}
