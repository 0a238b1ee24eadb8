//! JOSE pieces shared by minting and (later) verification: the algorithm
//! names, the header and claims JSON, the compact serialisation, and a JSON
//! object parser that refuses duplicate member names.
//!
//! Everything here is pure, so it is unit-tested natively; the host calls
//! (signing, randomness, the cache) live in `lib.rs`.

use latchkey_plugin_sdk::SignatureAlgorithm;
use latchkey_plugin_sdk::encoding::base64url;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

use crate::b64::{self, Alphabet};

/// A JWS algorithm this scheme signs with. There is deliberately no `none`:
/// an unsigned token cannot be expressed, so it cannot be minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC-SHA256.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256, `r || s` signatures.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Alg {
    /// Every supported algorithm, in the order error messages list them.
    pub const ALL: [Alg; 4] = [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// The algorithm named by a JOSE `alg` value. Names are case-sensitive
    /// (RFC 7515 §4.1.1), so `hs256` and `None` are refused like `none`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The host's algorithm: each signing call is bound to one, so the host
    /// can never use a key under an algorithm it was not meant for.
    pub fn host_algorithm(self) -> SignatureAlgorithm {
        match self {
            Alg::Hs256 => SignatureAlgorithm::Hs256,
            Alg::Rs256 => SignatureAlgorithm::Rs256,
            Alg::Es256 => SignatureAlgorithm::Es256,
            Alg::EdDsa => SignatureAlgorithm::Ed25519,
        }
    }

    /// Whether a signature of `len` bytes has the shape JWS needs: 32 bytes
    /// for HS256, 64 (`r || s`, RFC 7518 §3.4) for ES256, 64 for Ed25519, and
    /// at least 256 (a 2048-bit modulus) for RS256.
    pub fn signature_len_ok(self, len: usize) -> bool {
        match self {
            Alg::Hs256 => len == 32,
            Alg::Es256 | Alg::EdDsa => len == 64,
            Alg::Rs256 => len >= 256,
        }
    }

    /// The names, for error messages.
    pub fn names() -> String {
        Alg::ALL.map(Alg::name).join(", ")
    }
}

/// The registered claim names of RFC 7519 §4.1. Minting sets them from their
/// own config fields, so extra claims may not use them: a second `exp` would
/// make a token that different verifiers read differently.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The `aud` claim: one audience is a plain string (RFC 7519 §4.1.3), more
/// are an array.
pub fn audience_value(aud: &[String]) -> Option<Value> {
    match aud {
        [] => None,
        [one] => Some(Value::String(one.clone())),
        many => Some(Value::Array(many.iter().cloned().map(Value::String).collect())),
    }
}

/// Serialise members in the given order. `serde_json::Map` sorts its keys,
/// and a token reads best with the registered claims first, so objects are
/// written member by member.
pub fn object_json<'a>(members: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(name.to_string()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// The JOSE header: `alg`, `typ` and, when configured, `kid`.
pub fn header_json(alg: Alg, kid: Option<&str>) -> String {
    let alg = Value::String(alg.name().into());
    let typ = Value::String("JWT".into());
    let kid = kid.map(|k| Value::String(k.into()));
    let mut members = vec![("alg", &alg), ("typ", &typ)];
    if let Some(kid) = &kid {
        members.push(("kid", kid));
    }
    object_json(members)
}

/// What goes into one token's claims besides the extra claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered<'a> {
    /// `iss`, when configured.
    pub iss: Option<&'a str>,
    /// `sub`, when configured.
    pub sub: Option<&'a str>,
    /// `aud`, possibly empty.
    pub aud: &'a [String],
    /// `iat` and `nbf`, in seconds since the epoch.
    pub iat: i64,
    /// `exp`, in seconds since the epoch.
    pub exp: i64,
    /// `jti`.
    pub jti: &'a str,
}

/// The claims JSON: the registered claims in a fixed order (`iss`, `sub`,
/// `aud`, `iat`, `nbf`, `exp`, `jti`), then the extra claims sorted by name.
/// `extra` must not contain registered names; config validation refuses them,
/// and they are skipped here as well so a duplicate can never be written.
pub fn claims_json(reg: &Registered, extra: &Map<String, Value>) -> String {
    let iss = reg.iss.map(|s| Value::String(s.into()));
    let sub = reg.sub.map(|s| Value::String(s.into()));
    let aud = audience_value(reg.aud);
    let iat = Value::from(reg.iat);
    let exp = Value::from(reg.exp);
    let jti = Value::String(reg.jti.into());
    let mut members: Vec<(&str, &Value)> = Vec::new();
    for (name, value) in [("iss", &iss), ("sub", &sub), ("aud", &aud)] {
        if let Some(v) = value {
            members.push((name, v));
        }
    }
    members.extend([("iat", &iat), ("nbf", &iat), ("exp", &exp), ("jti", &jti)]);
    members
        .extend(extra.iter().filter(|(k, _)| !REGISTERED_CLAIMS.contains(&k.as_str())).map(|(k, v)| (k.as_str(), v)));
    object_json(members)
}

/// `BASE64URL(header) || '.' || BASE64URL(claims)`, the bytes a JWS signs
/// (RFC 7515 §5.1).
pub fn signing_input(header: &[u8], claims: &[u8]) -> String {
    format!("{}.{}", base64url(header), base64url(claims))
}

/// The compact serialisation: the signing input, `.`, the signature.
pub fn compact(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", base64url(signature))
}

/// A compact JWS split into its decoded header and claims JSON texts. The
/// signature is checked only for being well-formed base64url here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The JOSE header, as JSON text.
    pub header: String,
    /// The claims, as JSON text.
    pub claims: String,
    /// The raw signature bytes.
    pub signature: Vec<u8>,
}

/// A compact JWS as RFC 7515 §7.1 defines it: the header as JSON text, the
/// payload and the signature as bytes. The payload may be empty or any
/// octets; whether it is a JWT's claims set is the JWT layer's question,
/// asked only once the signature verified (RFC 7519 §7.2, steps 9 and 10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jws {
    /// The JOSE header, as JSON text.
    pub header: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The raw signature bytes.
    pub signature: Vec<u8>,
}

/// Split and decode a compact JWS: exactly three canonical base64url
/// segments; the header non-empty and UTF-8, the signature non-empty, the
/// payload any bytes (empty included).
pub fn decode_jws(token: &str) -> Result<Jws, String> {
    let segments: Vec<&str> = token.split('.').collect();
    let [h, p, s] = segments[..] else {
        return Err(format!("a compact JWS has 3 segments, not {}", segments.len()));
    };
    let decode = |seg: &str, what: &str| {
        b64::decode(seg, Alphabet::UrlNoPad).ok_or_else(|| format!("{what} is not canonical base64url"))
    };
    let nonempty =
        |seg: &str, what: &str| if seg.is_empty() { Err(format!("empty {what}")) } else { decode(seg, what) };
    let header = String::from_utf8(nonempty(h, "header")?).map_err(|_| "header is not UTF-8".to_string())?;
    let payload = if p.is_empty() { Vec::new() } else { decode(p, "payload")? };
    Ok(Jws { header, payload, signature: nonempty(s, "signature")? })
}

/// Split and decode a compact JWS whose payload is text: [`decode_jws`],
/// with the payload non-empty and UTF-8.
pub fn decode_compact(token: &str) -> Result<Decoded, String> {
    let Jws { header, payload, signature } = decode_jws(token)?;
    if payload.is_empty() {
        return Err("empty claims".into());
    }
    let claims = String::from_utf8(payload).map_err(|_| "claims is not UTF-8".to_string())?;
    Ok(Decoded { header, claims, signature })
}

/// Parse a JSON object, refusing duplicate member names at any depth.
///
/// `serde_json` keeps the last of two equal names while other parsers keep
/// the first, so a document with duplicates means different things to
/// different readers (THREATS 42); it is refused instead.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, String> {
    let Strict(value) = serde_json::from_str::<Strict>(text).map_err(|e| e.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("not a JSON object".into()),
    }
}

/// A JSON value parsed by a visitor that refuses duplicate object keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format_args!("duplicate member `{key}`")));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_are_exact_and_none_does_not_exist() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
        }
        for bad in ["none", "None", "NONE", "", "hs256", "HS384", "RS512", "PS256", "ES256K", "Ed25519", "eddsa"] {
            assert_eq!(Alg::from_name(bad), None, "{bad}");
        }
        assert_eq!(Alg::names(), "HS256, RS256, ES256, EdDSA");
        assert_eq!(Alg::EdDsa.host_algorithm(), SignatureAlgorithm::Ed25519);
        assert!(Alg::Es256.signature_len_ok(64) && !Alg::Es256.signature_len_ok(71));
        assert!(Alg::Rs256.signature_len_ok(256) && !Alg::Rs256.signature_len_ok(128));
    }

    #[test]
    fn header_in_fixed_order() {
        assert_eq!(header_json(Alg::Hs256, None), r#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(header_json(Alg::EdDsa, Some("k-1\"x")), r#"{"alg":"EdDSA","typ":"JWT","kid":"k-1\"x"}"#);
    }

    #[test]
    fn claims_registered_first_then_sorted_extras() {
        let aud = vec!["a".to_string(), "b".to_string()];
        let extra = parse_object(r#"{"zeta":[1,2],"scope":"read write","admin":true,"exp":1}"#).unwrap();
        let reg = Registered { iss: Some("me"), sub: Some("bot"), aud: &aud, iat: 100, exp: 400, jti: "j" };
        assert_eq!(
            claims_json(&reg, &extra),
            r#"{"iss":"me","sub":"bot","aud":["a","b"],"iat":100,"nbf":100,"exp":400,"jti":"j","admin":true,"scope":"read write","zeta":[1,2]}"#
        );
        let one = vec!["only".to_string()];
        let reg = Registered { iss: None, sub: None, aud: &one, iat: -5, exp: 0, jti: "x" };
        assert_eq!(claims_json(&reg, &Map::new()), r#"{"aud":"only","iat":-5,"nbf":-5,"exp":0,"jti":"x"}"#);
        let reg = Registered { aud: &[], ..reg };
        assert_eq!(claims_json(&reg, &Map::new()), r#"{"iat":-5,"nbf":-5,"exp":0,"jti":"x"}"#);
    }

    #[test]
    fn escapes_strings_in_json() {
        let reg = Registered { iss: Some("a\"b\\c\n\u{1}ü"), sub: None, aud: &[], iat: 1, exp: 2, jti: "j" };
        let json = claims_json(&reg, &Map::new());
        assert!(json.starts_with(r#"{"iss":"a\"b\\c\n\u0001ü","#), "{json}");
        assert_eq!(parse_object(&json).unwrap()["iss"], "a\"b\\c\n\u{1}ü");
    }

    #[test]
    fn rfc7515_a1_signing_input() {
        // RFC 7515 Appendix A.1: the header and claims as the RFC gives them
        // (with CR LF and spaces, which this scheme never writes) produce the
        // RFC's signing input. The HMAC itself is the host's.
        let header = b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let claims = b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        assert_eq!(
            signing_input(header, claims),
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
             .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        );
        let sig = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212, 37, 77, 105, 214, 191,
            240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let token = compact(&signing_input(header, claims), &sig);
        assert!(token.ends_with(".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        let d = decode_compact(&token).unwrap();
        assert_eq!(d.header.as_bytes(), header);
        assert_eq!(d.claims.as_bytes(), claims);
        assert_eq!(d.signature, sig);
    }

    #[test]
    fn decode_compact_refuses_malformed() {
        assert!(decode_compact("a.b").is_err());
        assert!(decode_compact("e30.e30.").is_err(), "empty signature");
        assert!(decode_compact("e30.e30.AA.AA").is_err());
        assert!(decode_compact("e30=.e30.AA").is_err());
        assert!(decode_compact("/w.e30.AA").is_err(), "not UTF-8");
        assert_eq!(decode_compact("e30.e30.AA").unwrap().header, "{}");
        assert!(decode_compact("e30..AA").is_err(), "empty claims");
        assert!(decode_compact("e30.4OE.AA").is_err(), "claims not UTF-8");
    }

    #[test]
    fn a_jws_payload_may_be_empty_or_any_bytes() {
        let jws = decode_jws("e30..AA").unwrap();
        assert_eq!((jws.header.as_str(), jws.payload.as_slice(), jws.signature.as_slice()), ("{}", &b""[..], &[0][..]));
        assert_eq!(decode_jws("e30.4OE.AA").unwrap().payload, [0xe0, 0xe1]);
        assert!(decode_jws(".e30.AA").is_err(), "empty header");
        assert!(decode_jws("e30.e30.").is_err(), "empty signature");
        assert!(decode_jws("e30.4OE=.AA").is_err(), "padded payload");
        assert!(decode_jws("e30.4OF.AA").is_err(), "non-zero unused bits");
        assert!(decode_jws("e30.e30").is_err() && decode_jws("e30.e30.AA.").is_err());
    }

    #[test]
    fn strict_json_refuses_duplicates_at_any_depth() {
        assert!(parse_object(r#"{"a":1,"a":2}"#).unwrap_err().contains("duplicate member `a`"));
        assert!(parse_object(r#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_object(r#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_object(r#"[1]"#).is_err());
        assert!(parse_object(r#"{"a":1} x"#).is_err());
        let m = parse_object(r#"{"n":null,"f":1.5,"i":-3,"u":18446744073709551615,"s":"x","b":false}"#).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m["u"], Value::from(u64::MAX));
    }
}
