//! JWT and JWKS parsing, on both sides: the `jwt` plugin's verifier (its
//! policy, compact-JWS decoding, strict JSON, strict base64 and PEM key
//! checks, run natively) and the host's choice of identity provider and
//! keys from a token it has not verified yet (`server::identity`).

use latchkey::server::identity;
use latchkey::vault::identity::check_jwks;
use latchkey_plugin_sdk::encoding::{base64, base64url};
use latchkey_plugin_sdk::{Config, Error};
use latchkey_scheme_jwt::b64::{self, Alphabet};
use latchkey_scheme_jwt::jose::{self, Alg};
use latchkey_scheme_jwt::key::{self, KeyKind};
use latchkey_scheme_jwt::verify::{self, Policy};
use serde_json::Value;

/// The verification time of every case: 2023-11-14T22:13:20Z.
pub const NOW: i64 = 1_700_000_000;

/// Split `data` at its first newline: a token, then a document.
fn split(data: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (text.to_string(), String::new()),
    }
}

fn policy(alg: &str, aud: Option<&str>) -> Policy {
    let mut pairs =
        vec![("alg".to_string(), alg.to_string()), ("iss".to_string(), "https://issuer.example".to_string())];
    if let Some(a) = aud {
        pairs.push(("aud".to_string(), a.to_string()));
    }
    Policy::parse(&Config::new(pairs)).expect("the corpus policies parse")
}

/// Strict base64 has one text per byte string: what decodes re-encodes to
/// the same text.
fn strict_base64(text: &str) {
    if let Some(bytes) = b64::decode(text, Alphabet::UrlNoPad) {
        assert_eq!(base64url(&bytes), text, "two base64url spellings of one byte string");
    }
    if let Some(bytes) = b64::decode(text, Alphabet::Standard) {
        assert_eq!(base64(&bytes), text, "two base64 spellings of one byte string");
    }
}

/// Target `jwt_verify`: `TOKEN\nJWKS` through the plugin's verifier, under
/// each pinned algorithm, with and without an audience. The signature check
/// is a stand-in (an even first byte verifies), so the claims rules behind
/// it are reached.
pub fn token(data: &[u8]) {
    let (token, jwks) = split(data);
    strict_base64(&token);
    for segment in token.split('.') {
        strict_base64(segment);
    }
    if let Ok(map) = jose::parse_object(&jwks) {
        // No duplicate names, so every JSON reader sees the same object.
        let loose: Value = serde_json::from_str(&jwks).expect("a strict object is JSON");
        assert_eq!(loose, Value::Object(map));
    }
    let decoded = jose::decode_compact(&token);
    if let Ok(d) = &decoded {
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);
        assert_eq!(base64url(d.header.as_bytes()), segments[0]);
        assert_eq!(base64url(d.claims.as_bytes()), segments[1]);
        assert_eq!(base64url(&d.signature), segments[2]);
    }
    let _ = verify::jwks_kids(&jwks);
    for alg in ["RS256", "ES256", "EdDSA"] {
        for aud in [None, Some("latchkey,other")] {
            let policy = policy(alg, aud);
            let check_sig = |_: Alg, _: &str, _: &[u8], sig: &[u8]| -> Result<bool, Error> {
                Ok(sig.first().is_some_and(|b| b % 2 == 0))
            };
            let Ok(claims) = verify::verify(&policy, &jwks, &token, NOW, check_sig) else { continue };
            // What verified is exactly what the rules allow.
            let d = decoded.as_ref().expect("a verified token decodes");
            let header = jose::parse_object(&d.header).expect("a verified header parses");
            assert_eq!(header.get("alg").and_then(Value::as_str), Some(alg), "verified under another alg");
            assert!(!header.contains_key("crit"));
            assert_eq!(jose::parse_object(&d.claims).ok().as_ref(), Some(&claims));
            assert_eq!(claims.get("iss").and_then(Value::as_str), Some("https://issuer.example"));
            let exp = claims.get("exp").and_then(Value::as_f64).expect("a verified token has a numeric exp");
            assert!((NOW as f64) < exp + policy.leeway as f64, "an expired token verified");
            let auds: Vec<&str> = match claims.get("aud") {
                None => vec![],
                Some(Value::String(a)) => vec![a.as_str()],
                Some(Value::Array(a)) => a.iter().map(|v| v.as_str().expect("aud strings")).collect(),
                Some(other) => panic!("aud {other} verified"),
            };
            match aud {
                None => assert!(auds.is_empty(), "a token naming audiences verified without one configured"),
                Some(_) => {
                    assert!(auds.iter().any(|a| policy.aud.iter().any(|p| p == a)), "audience mismatch verified")
                }
            }
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Target `jwt_key`: a `key` secret as the `jwt` scheme checks it at
/// storage time. A first byte below 3 wraps the rest as DER in a PEM block
/// (PKCS#8, PKCS#1, SEC1), to reach the DER reader; otherwise the bytes are
/// the secret's text.
pub fn key(data: &[u8]) {
    let text = match data.split_first() {
        Some((&b, der)) if b < 3 => pem(["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"][usize::from(b)], der),
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    strict_base64(&text);
    let kind = key::classify_pem(&text);
    for alg in Alg::ALL {
        let Ok(()) = key::check(alg, &text) else { continue };
        match alg {
            Alg::Hs256 => assert!(!text.trim_start().starts_with("-----BEGIN")),
            Alg::Rs256 => assert!(matches!(kind, Ok(KeyKind::Rsa { bits }) if bits >= 2048), "RS256 took {kind:?}"),
            Alg::Es256 => assert_eq!(kind, Ok(KeyKind::EcP256)),
            Alg::EdDsa => assert_eq!(kind, Ok(KeyKind::Ed25519)),
        }
    }
}

/// Target `jwt_host`: `TOKEN\nJWKS` as the host reads them before any
/// verification: the unverified `kid` and `iss` that choose the provider,
/// the key ids for the unknown-`kid` refresh, and the storage-time JWKS
/// check, which must agree with the plugin's reading of the same document.
pub fn host(data: &[u8]) {
    let (token, jwks) = split(data);
    let _ = identity::looks_like_jwt(&token);
    if identity::peek(&token).is_some() {
        assert!(token.contains('.'), "a token without segments named an issuer");
    }
    let host_kids = identity::kids_of(&jwks);
    if let Ok(n) = check_jwks(&jwks) {
        assert!(host_kids.len() <= n, "more kids than keys");
    }
    if let Ok(plugin_kids) = verify::jwks_kids(&jwks) {
        // The plugin reads a strict subset (the first keys, no duplicate
        // names): each kid it sees, the host's refresh logic sees too.
        for kid in &plugin_kids {
            assert!(host_kids.contains(kid), "the plugin sees kid {kid:?}, the host does not");
        }
    }
}
