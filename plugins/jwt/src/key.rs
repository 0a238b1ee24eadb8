//! Checks on the `key` secret at storage time: long enough for HMAC, or a PEM
//! private key of the kind the configured algorithm needs.
//!
//! The host parses and uses the key; this only reads the PEM label and the
//! DER structure far enough to name the key type (algorithm and curve OIDs,
//! RSA modulus size), so a mismatch is reported when the credential is stored
//! rather than on the first request. Error texts are fixed phrases: nothing
//! from the value is ever echoed.

use crate::b64::{self, Alphabet};
use crate::jose::Alg;

/// The shortest HMAC secret accepted: the output size of SHA-256 (RFC 7518
/// §3.2; THREATS 43).
pub const MIN_HMAC_KEY_BYTES: usize = 32;
/// The smallest RSA modulus accepted, in bits (RFC 7518 §3.3; THREATS 43).
pub const MIN_RSA_BITS: usize = 2048;

/// The kind of private key a PEM value holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA (PKCS#1, or PKCS#8 `rsaEncryption`), with its modulus size.
    Rsa {
        /// The modulus length in bits.
        bits: usize,
    },
    /// EC on P-256 (SEC1, or PKCS#8 `id-ecPublicKey` with `prime256v1`).
    EcP256,
    /// EC on another named curve.
    EcOtherCurve,
    /// Ed25519 (PKCS#8, RFC 8410).
    Ed25519,
    /// Something else in a private-key container (Ed448, RSA-PSS, X25519, ...).
    Other,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa { .. } => "an RSA private key",
            KeyKind::EcP256 => "an EC P-256 private key",
            KeyKind::EcOtherCurve => "an EC private key on a curve other than P-256",
            KeyKind::Ed25519 => "an Ed25519 private key",
            KeyKind::Other => "a private key of an unsupported algorithm",
        }
    }
}

fn needs(alg: Alg) -> &'static str {
    match alg {
        Alg::Hs256 => "an HMAC secret",
        Alg::Rs256 => "an RSA private key",
        Alg::Es256 => "an EC P-256 private key",
        Alg::EdDsa => "an Ed25519 private key",
    }
}

/// Check that `value` suits `alg`. The error says what is wrong with the
/// key, never what it contains.
pub fn check(alg: Alg, value: &str) -> Result<(), String> {
    let looks_pem = value.trim_start().starts_with("-----BEGIN");
    if alg == Alg::Hs256 {
        if looks_pem {
            // A PEM key as an HMAC secret is the classic HS/RS confusion:
            // refuse it even though it is long enough.
            return Err("`key` is a PEM block, but HS256 needs an HMAC secret (random bytes, not a key file)".into());
        }
        if value.len() < MIN_HMAC_KEY_BYTES {
            return Err(format!(
                "`key` is {} bytes; an HS256 secret must be at least {MIN_HMAC_KEY_BYTES} bytes (the hash size)",
                value.len()
            ));
        }
        return Ok(());
    }
    if !looks_pem {
        return Err(format!("`key` must be a PEM private key (\"-----BEGIN ...\") for {}", alg.name()));
    }
    let kind = classify_pem(value)?;
    let fits = match (alg, kind) {
        (Alg::Rs256, KeyKind::Rsa { bits }) => {
            if bits < MIN_RSA_BITS {
                return Err(format!("`key` is a {bits}-bit RSA key; RS256 needs at least {MIN_RSA_BITS} bits"));
            }
            true
        }
        (Alg::Es256, KeyKind::EcP256) | (Alg::EdDsa, KeyKind::Ed25519) => true,
        _ => false,
    };
    if fits { Ok(()) } else { Err(format!("`key` is {}, but {} needs {}", kind.describe(), alg.name(), needs(alg))) }
}

/// Read one PEM block and say what key it holds.
pub fn classify_pem(value: &str) -> Result<KeyKind, String> {
    let (label, der) = parse_pem(value)?;
    let malformed = || "`key` is a PEM private key whose contents do not parse".to_string();
    match label {
        "PRIVATE KEY" => classify_pkcs8(&der).ok_or_else(malformed),
        "RSA PRIVATE KEY" => rsa_bits_pkcs1(&der).map(|bits| KeyKind::Rsa { bits }).ok_or_else(malformed),
        "EC PRIVATE KEY" => classify_sec1(&der).ok_or_else(malformed),
        "ENCRYPTED PRIVATE KEY" => {
            Err("`key` is an encrypted private key; store it decrypted (`openssl pkey -in enc.pem`)".into())
        }
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
            Err("`key` is a public key or certificate; store the private key".into())
        }
        "OPENSSH PRIVATE KEY" => {
            Err("`key` is in OpenSSH format; convert it to PKCS#8 (`ssh-keygen -p -m PKCS8`)".into())
        }
        _ => Err("`key` is a PEM block of an unsupported type; store a PKCS#8, PKCS#1 or SEC1 private key".into()),
    }
}

/// Split a value holding exactly one PEM block (RFC 7468) into its label and
/// DER bytes. Text outside the block other than whitespace is refused, so a
/// key stored next to parameters or a certificate is caught here rather than
/// guessed at by the host.
fn parse_pem(value: &str) -> Result<(&str, Vec<u8>), String> {
    let value = value.trim();
    let rest = value.strip_prefix("-----BEGIN ").ok_or("`key` does not start with a PEM header")?;
    let (label, rest) = rest.split_once("-----").ok_or("`key` has a malformed PEM header")?;
    let end_line = format!("-----END {label}-----");
    let (body, after) = rest.split_once(end_line.as_str()).ok_or("`key` has no matching PEM footer")?;
    if !after.trim().is_empty() {
        return Err("`key` holds more than one PEM block; keep only the private key".into());
    }
    if body.contains(':') {
        return Err("`key` is an encrypted legacy PEM (Proc-Type header); store it decrypted".into());
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = b64::decode(&compact, Alphabet::Standard).ok_or("`key` has a PEM body that is not valid base64")?;
    Ok((label, der))
}

/// A minimal DER reader: enough to walk the few structures above.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }

    /// The next element's contents, if it has `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }

    /// The contents of a whole-input SEQUENCE.
    fn sequence(bytes: &'a [u8]) -> Option<Der<'a>> {
        let mut outer = Der(bytes);
        let inner = outer.expect(SEQUENCE)?;
        outer.0.is_empty().then_some(Der(inner))
    }
}

const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const CONTEXT_0: u8 = 0xa0;

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// PKCS#8 `PrivateKeyInfo` (RFC 5208): version, algorithm identifier, key.
fn classify_pkcs8(der: &[u8]) -> Option<KeyKind> {
    let mut info = Der::sequence(der)?;
    info.expect(INTEGER)?;
    let mut algorithm = Der(info.expect(SEQUENCE)?);
    let oid = algorithm.expect(OID)?;
    let key = info.expect(OCTET_STRING)?;
    Some(if oid == OID_RSA_ENCRYPTION {
        KeyKind::Rsa { bits: rsa_bits_pkcs1(key)? }
    } else if oid == OID_EC_PUBLIC_KEY {
        if algorithm.expect(OID)? == OID_PRIME256V1 { KeyKind::EcP256 } else { KeyKind::EcOtherCurve }
    } else if oid == OID_ED25519 {
        // RFC 8410 §7: the key is an OCTET STRING of 32 bytes, wrapped again.
        if Der(key).expect(OCTET_STRING)?.len() != 32 {
            return None;
        }
        KeyKind::Ed25519
    } else {
        KeyKind::Other
    })
}

/// PKCS#1 `RSAPrivateKey` (RFC 8017 A.1.2): version, then the modulus.
fn rsa_bits_pkcs1(der: &[u8]) -> Option<usize> {
    let mut key = Der::sequence(der)?;
    key.expect(INTEGER)?;
    let modulus = key.expect(INTEGER)?;
    let modulus = match modulus {
        [0, rest @ ..] => rest,
        m => m,
    };
    let (&top, _) = modulus.split_first()?;
    Some(modulus.len() * 8 - top.leading_zeros() as usize)
}

/// SEC1 `ECPrivateKey` (RFC 5915): version 1, the scalar, then the named
/// curve in `[0]` when present. Without it, a 32-byte scalar is taken as
/// P-256; the host refuses the key if it is not.
fn classify_sec1(der: &[u8]) -> Option<KeyKind> {
    let mut key = Der::sequence(der)?;
    if key.expect(INTEGER)? != [1] {
        return None;
    }
    let scalar = key.expect(OCTET_STRING)?;
    match key.next() {
        Some((CONTEXT_0, params)) => {
            let curve = Der(params).expect(OID)?;
            Some(if curve == OID_PRIME256V1 { KeyKind::EcP256 } else { KeyKind::EcOtherCurve })
        }
        _ if scalar.len() == 32 => Some(KeyKind::EcP256),
        _ => Some(KeyKind::EcOtherCurve),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test keys generated with `openssl genpkey` for these tests only; see
    // `testdata/README.md`. They sign nothing anywhere else.
    const RSA2048_PKCS8: &str = include_str!("../testdata/rsa2048-pkcs8.pem");
    const RSA2048_PKCS1: &str = include_str!("../testdata/rsa2048-pkcs1.pem");
    const RSA1024: &str = include_str!("../testdata/rsa1024-pkcs8.pem");
    const P256_PKCS8: &str = include_str!("../testdata/p256-pkcs8.pem");
    const P256_SEC1: &str = include_str!("../testdata/p256-sec1.pem");
    const P256_SEC1_WITH_PARAMS: &str = include_str!("../testdata/p256-sec1-with-params.pem");
    const P384_PKCS8: &str = include_str!("../testdata/p384-pkcs8.pem");
    const ED25519: &str = include_str!("../testdata/ed25519-pkcs8.pem");
    const ED448: &str = include_str!("../testdata/ed448-pkcs8.pem");
    const ENCRYPTED: &str = include_str!("../testdata/p256-encrypted.pem");
    const PUBLIC: &str = include_str!("../testdata/p256-public.pem");

    #[test]
    fn classifies_keys() {
        assert_eq!(classify_pem(RSA2048_PKCS8), Ok(KeyKind::Rsa { bits: 2048 }));
        assert_eq!(classify_pem(RSA2048_PKCS1), Ok(KeyKind::Rsa { bits: 2048 }));
        assert_eq!(classify_pem(RSA1024), Ok(KeyKind::Rsa { bits: 1024 }));
        assert_eq!(classify_pem(P256_PKCS8), Ok(KeyKind::EcP256));
        assert_eq!(classify_pem(P256_SEC1), Ok(KeyKind::EcP256));
        assert_eq!(classify_pem(P384_PKCS8), Ok(KeyKind::EcOtherCurve));
        assert_eq!(classify_pem(ED25519), Ok(KeyKind::Ed25519));
        assert_eq!(classify_pem(ED448), Ok(KeyKind::Other));
        // CRLF line ends and surrounding whitespace are fine.
        assert_eq!(classify_pem(&format!("\n {}\n", ED25519.replace('\n', "\r\n"))), Ok(KeyKind::Ed25519));
    }

    #[test]
    fn accepts_matching_keys() {
        assert_eq!(check(Alg::Rs256, RSA2048_PKCS8), Ok(()));
        assert_eq!(check(Alg::Rs256, RSA2048_PKCS1), Ok(()));
        assert_eq!(check(Alg::Es256, P256_PKCS8), Ok(()));
        assert_eq!(check(Alg::Es256, P256_SEC1), Ok(()));
        assert_eq!(check(Alg::EdDsa, ED25519), Ok(()));
        assert_eq!(check(Alg::Hs256, &"k".repeat(32)), Ok(()));
    }

    #[test]
    fn refuses_mismatches_without_echoing_the_key() {
        let cases: &[(Alg, &str, &str)] = &[
            (Alg::Hs256, "0123456789abcdef0123456789abcde", "31 bytes"),
            (Alg::Hs256, RSA2048_PKCS8, "PEM block, but HS256"),
            (Alg::Hs256, PUBLIC, "PEM block, but HS256"),
            (Alg::Rs256, &"k".repeat(64), "must be a PEM private key"),
            (Alg::Rs256, RSA1024, "1024-bit RSA key"),
            (Alg::Rs256, P256_PKCS8, "is an EC P-256 private key, but RS256 needs an RSA private key"),
            (Alg::Es256, RSA2048_PKCS1, "is an RSA private key, but ES256"),
            (Alg::Es256, P384_PKCS8, "curve other than P-256"),
            (Alg::Es256, ED25519, "is an Ed25519 private key, but ES256"),
            (Alg::EdDsa, ED448, "unsupported algorithm"),
            (Alg::EdDsa, P256_SEC1, "but EdDSA needs an Ed25519 private key"),
            (Alg::Es256, ENCRYPTED, "encrypted"),
            (Alg::Es256, PUBLIC, "public key or certificate"),
            (Alg::Es256, P256_SEC1_WITH_PARAMS, "more than one PEM block"),
            (Alg::EdDsa, "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI!==\n-----END PRIVATE KEY-----", "base64"),
            (Alg::EdDsa, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "do not parse"),
            (Alg::EdDsa, "-----BEGIN PRIVATE KEY-----\nAAAA\n", "footer"),
            (Alg::EdDsa, "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----", "OpenSSH"),
        ];
        for (alg, value, want) in cases {
            let e = check(*alg, value).expect_err(want);
            assert!(e.contains(want), "{alg:?}: {e}");
            // No line of the value (a base64 run or the secret itself) appears.
            for line in value.lines().filter(|l| l.len() > 8 && !l.starts_with("-----")) {
                assert!(!e.contains(line), "{e}");
            }
        }
    }

    #[test]
    fn der_reader_survives_truncation() {
        let (_, der) = parse_pem(RSA2048_PKCS8).unwrap();
        for len in 0..der.len() {
            // Truncated structures are malformed, never a panic.
            let _ = classify_pkcs8(&der[..len]);
            let _ = classify_sec1(&der[..len]);
            let _ = rsa_bits_pkcs1(&der[..len]);
        }
    }
}
