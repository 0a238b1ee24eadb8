//! Asymmetric signing and JWK verification with `ring`, for the `crypto`
//! import. Keys are parsed once per credential version and field, and each
//! parsed key is bound to the one algorithm it was parsed for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::bindings::{SignatureAlgorithm, WitError};
use latchkey_core::secret::Secret;

/// A parsed private key, usable only with the algorithm it was parsed for.
enum ParsedKey {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Parsed keys of one credential, by (field, algorithm).
#[derive(Default)]
pub(crate) struct KeyCache(Mutex<HashMap<(String, u8), Arc<ParsedKey>>>);

fn alg_id(a: SignatureAlgorithm) -> u8 {
    match a {
        SignatureAlgorithm::Hs256 => 0,
        SignatureAlgorithm::Rs256 => 1,
        SignatureAlgorithm::Es256 => 2,
        SignatureAlgorithm::Ed25519 => 3,
    }
}

fn invalid(field: &str, why: &str) -> WitError {
    WitError::InvalidSecret(format!("secret field `{field}`: {why}"))
}

/// Parse a PEM private key for `alg`. Errors name the field and the reason,
/// never the key.
fn parse(field: &str, pem: &str, alg: SignatureAlgorithm, rng: &SystemRandom) -> Result<ParsedKey, WitError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| invalid(field, "not a PEM private key (expected PKCS#8 `PRIVATE KEY`, or `RSA PRIVATE KEY`)"))?;
    match (alg, &der) {
        (SignatureAlgorithm::Rs256, PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        (SignatureAlgorithm::Rs256, PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        (SignatureAlgorithm::Rs256, _) => return Err(invalid(field, "RS256 needs an RSA private key")),
        (SignatureAlgorithm::Es256, PrivateKeyDer::Pkcs8(k)) => {
            return EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der(), rng)
                .map(ParsedKey::Ecdsa)
                .map_err(|_| invalid(field, "ES256 needs a P-256 private key in PKCS#8"));
        }
        (SignatureAlgorithm::Es256, PrivateKeyDer::Sec1(k)) => {
            let pkcs8 = zeroize::Zeroizing::new(sec1_p256_to_pkcs8(k.secret_sec1_der()));
            return EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, rng)
                .map(ParsedKey::Ecdsa)
                .map_err(|_| invalid(field, "ES256 needs a P-256 private key that includes its public key"));
        }
        (SignatureAlgorithm::Es256, _) => return Err(invalid(field, "ES256 needs an EC P-256 private key")),
        (SignatureAlgorithm::Ed25519, PrivateKeyDer::Pkcs8(k)) => {
            return Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                .map(ParsedKey::Ed25519)
                .map_err(|_| invalid(field, "EdDSA needs an Ed25519 private key in PKCS#8"));
        }
        (SignatureAlgorithm::Ed25519, _) => return Err(invalid(field, "EdDSA needs an Ed25519 key in PKCS#8")),
        (SignatureAlgorithm::Hs256, _) => unreachable!("HMAC keys are not PEM"),
    }
    .map(ParsedKey::Rsa)
    .map_err(|e| invalid(field, &format!("unusable RSA key ({e}); RS256 needs 2048 bits or more")))
}

/// Wrap a SEC1 `ECPrivateKey` (`-----BEGIN EC PRIVATE KEY-----`, what
/// `openssl ecparam -genkey` writes) in a P-256 PKCS#8 envelope, the one form
/// ring reads. Hand-written because the envelope is a fixed prefix around the
/// SEC1 bytes; ring itself checks the curve and the key inside.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    fn der_len(out: &mut Vec<u8>, len: usize) {
        match len {
            0..=127 => out.push(len as u8),
            128..=255 => out.extend_from_slice(&[0x81, len as u8]),
            _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        }
    }
    // version 0, AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const HEAD: &[u8] = &[
        0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut octets = vec![0x04];
    der_len(&mut octets, sec1.len());
    octets.extend_from_slice(sec1);
    let mut out = vec![0x30];
    der_len(&mut out, HEAD.len() + octets.len());
    out.extend_from_slice(HEAD);
    out.extend_from_slice(&octets);
    out
}

/// Check that a secret value is a usable key for `alg` (used before storing).
pub fn check_key(field: &str, value: &str, alg: SignatureAlgorithm) -> Result<(), WitError> {
    match alg {
        SignatureAlgorithm::Hs256 if value.len() < 32 => {
            Err(invalid(field, "an HS256 secret must be at least 32 bytes (the hash size)"))
        }
        SignatureAlgorithm::Hs256 => Ok(()),
        _ => parse(field, value, alg, &SystemRandom::new()).map(|_| ()),
    }
}

/// Sign `message` with the key in `secret` under `alg`.
pub(crate) fn sign_with(
    keys: &KeyCache,
    field: &str,
    secret: &Secret,
    alg: SignatureAlgorithm,
    message: &[u8],
    rng: &SystemRandom,
) -> Result<Vec<u8>, WitError> {
    if alg == SignatureAlgorithm::Hs256 {
        check_key(field, secret.expose(), alg)?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
        return Ok(ring::hmac::sign(&key, message).as_ref().to_vec());
    }
    let cache_key = (field.to_string(), alg_id(alg));
    let parsed = {
        let mut map = keys.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&cache_key) {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(parse(field, secret.expose(), alg, rng)?);
                map.insert(cache_key, k.clone());
                k
            }
        }
    };
    let internal = |_| WitError::Internal(Some("signing failed".into()));
    match &*parsed {
        ParsedKey::Rsa(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(&signature::RSA_PKCS1_SHA256, rng, message, &mut sig).map_err(internal)?;
            Ok(sig)
        }
        ParsedKey::Ecdsa(k) => Ok(k.sign(rng, message).map_err(internal)?.as_ref().to_vec()),
        ParsedKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
    }
}

/// Verify a signature with a public key given as one JWK. Only asymmetric
/// keys are accepted: a JWKS is public, so an HMAC key in it would let anyone
/// forge tokens.
pub(crate) fn verify_jwk(alg: SignatureAlgorithm, jwk: &str, message: &[u8], sig: &[u8]) -> Result<bool, WitError> {
    let bad = |why: &str| WitError::InvalidConfig(format!("unusable JWK: {why}"));
    let v: serde_json::Value = serde_json::from_str(jwk).map_err(|_| bad("not JSON"))?;
    let s = |name: &str| -> Result<Vec<u8>, WitError> {
        let text = v.get(name).and_then(|x| x.as_str()).ok_or_else(|| bad(&format!("missing `{name}`")))?;
        URL_SAFE_NO_PAD.decode(text).map_err(|_| bad(&format!("`{name}` is not base64url")))
    };
    let kty = v.get("kty").and_then(|x| x.as_str()).unwrap_or_default();
    let ok = match (alg, kty) {
        (SignatureAlgorithm::Rs256, "RSA") => {
            let (n, e) = (s("n")?, s("e")?);
            // ring refuses these keys too, but only as "does not verify"; say
            // why instead, since an unusable key is an error, not a verdict.
            if n.first() == Some(&0) || e.first() == Some(&0) {
                return Err(bad("RSA `n` and `e` must not have leading zero octets (RFC 7518 §6.3.1.1)"));
            }
            let bits = n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err(bad(&format!("RS256 needs an RSA modulus of 2048 to 8192 bits, not {bits}")));
            }
            let key = signature::RsaPublicKeyComponents { n, e };
            key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig).is_ok()
        }
        (SignatureAlgorithm::Es256, "EC") => {
            if v.get("crv").and_then(|x| x.as_str()) != Some("P-256") {
                return Err(bad("ES256 needs crv P-256"));
            }
            let (x, y) = (s("x")?, s("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(bad("P-256 coordinates must be 32 bytes"));
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig).is_ok()
        }
        (SignatureAlgorithm::Ed25519, "OKP") => {
            if v.get("crv").and_then(|x| x.as_str()) != Some("Ed25519") {
                return Err(bad("EdDSA needs crv Ed25519"));
            }
            let x = s("x")?;
            if x.len() != 32 {
                return Err(bad("an Ed25519 `x` must be 32 bytes"));
            }
            signature::UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok()
        }
        (SignatureAlgorithm::Hs256, _) => return Err(bad("symmetric keys are not accepted from a JWKS")),
        _ => return Err(bad("key type does not match the algorithm")),
    };
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    #[test]
    fn hmac_key_shorter_than_hash_is_refused() {
        let err = check_key("key", "short", SignatureAlgorithm::Hs256).unwrap_err();
        assert!(matches!(err, WitError::InvalidSecret(m) if m.contains("32 bytes") && !m.contains("short")));
        check_key("key", &"k".repeat(32), SignatureAlgorithm::Hs256).unwrap();
    }

    #[test]
    fn garbage_pem_names_field_not_value() {
        let err = check_key("key", "canary-value-77", SignatureAlgorithm::Rs256).unwrap_err();
        let WitError::InvalidSecret(m) = err else { panic!() };
        assert!(m.contains("`key`") && !m.contains("canary"));
    }

    #[test]
    fn es256_accepts_sec1_and_pkcs8() {
        let rng = SystemRandom::new();
        let sec1 = include_str!("../../../plugins/jwt/testdata/p256-sec1.pem");
        let pkcs8 = include_str!("../../../plugins/jwt/testdata/p256-pkcs8.pem");
        for pem in [sec1, pkcs8] {
            let sig = sign_with(&KeyCache::default(), "key", &Secret::new(pem), SignatureAlgorithm::Es256, b"m", &rng);
            assert_eq!(sig.unwrap().len(), 64);
        }
    }

    #[test]
    fn ed25519_round_trip_through_jwk() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let secret = Secret::new(pem);
        let keys = KeyCache::default();
        let sig = sign_with(&keys, "key", &secret, SignatureAlgorithm::Ed25519, b"msg", &rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk =
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()));
        assert!(verify_jwk(SignatureAlgorithm::Ed25519, &jwk, b"msg", &sig).unwrap());
        assert!(!verify_jwk(SignatureAlgorithm::Ed25519, &jwk, b"msh", &sig).unwrap());
        // The same key can never be used under another algorithm.
        assert!(verify_jwk(SignatureAlgorithm::Es256, &jwk, b"msg", &sig).is_err());
        assert!(sign_with(&keys, "key", &secret, SignatureAlgorithm::Rs256, b"m", &rng).is_err());
    }
}

/// Wycheproof vectors through `verify_jwk` (threat catalogue cases 37 and 43).
#[cfg(test)]
#[path = "crypto_wycheproof.rs"]
mod wycheproof;
