//! Wycheproof's JSON Web Signature vectors (THREATS.md case 37) through the
//! verifier the broker uses: the `jwt` plugin's `verifier` export, run by
//! `Runtime::verify` with the host's `crypto.verify`, as
//! `server::identity::authenticate` runs it for an agent's bearer JWT.
//!
//! The vectors are `tests/vectors/wycheproof/json_web_signature_test.json`,
//! unchanged (source and licence in tests/vectors/README.md). A group's key
//! is the JWKS (its public JWK, or the one JWK of an HMAC group), and every
//! case is verified under each algorithm an identity provider can be pinned
//! to. A Wycheproof case is a JWS, not a JWT: its payload (`foo`, nothing,
//! binary bytes) is never a claims set, so in the end the broker refuses
//! every one of them. What is compared with the suite's verdict is whether
//! the *signature* was accepted, which the verifier says, and says only,
//! when it refuses a payload after the signature verified.
//!
//! - `invalid`: refused under every pin, and never past the signature;
//! - `valid` with an algorithm the verifier implements: past the signature
//!   under its own pin, refused under the others;
//! - `valid` with any other algorithm: not runnable, counted and named in
//!   the output, and still refused under every pin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey::PluginError;
use latchkey::plugin::{Datetime, SchemeError};
use serde_json::{Value, json};

use crate::support::runtime;

/// The algorithms an identity provider can be pinned to (HS256 cannot be:
/// a JWKS is public).
const PINS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// What the verifier says after a signature verified and the payload turned
/// out to be no claims set (`plugins/jwt/src/verify.rs`).
const PAST_THE_SIGNATURE: &str = "the signature verifies, but the payload is not a JWT claims set";

/// The suite's own count in the vendored version: cases cannot vanish.
const PINNED_CASES: usize = 401;

/// How one verification ended.
enum Verdict {
    /// Accepted as a JWT (claims returned).
    Accepted,
    /// The signature verified; the payload was refused as no claims set.
    SignatureAccepted,
    /// Refused before or at the signature, with this error code.
    Refused(&'static str),
    /// The call itself failed (a trap, a timeout): never expected.
    Failed(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Accepted => f.write_str("accepted as a JWT"),
            Verdict::SignatureAccepted => f.write_str("signature accepted"),
            Verdict::Refused(code) => write!(f, "refused ({code})"),
            Verdict::Failed(why) => write!(f, "the call failed: {why}"),
        }
    }
}

fn verify(pin: &str, jwks: &str, token: &str) -> Verdict {
    let rt = runtime();
    let verifier = rt.verifier().expect("the jwt plugin exports `verifier`");
    let policy = vec![
        ("alg".to_string(), pin.to_string()),
        ("iss".to_string(), "https://wycheproof.test".to_string()),
        ("leeway_seconds".to_string(), "60".to_string()),
    ];
    let now = Datetime { seconds: 1_700_000_000, nanoseconds: 0 };
    match rt.verify(&verifier, &policy, now, jwks, token) {
        Ok(_) => Verdict::Accepted,
        Err(PluginError::Scheme { error: SchemeError::TokenRejected(m), .. }) if m.starts_with(PAST_THE_SIGNATURE) => {
            Verdict::SignatureAccepted
        }
        Err(e @ PluginError::Scheme { .. }) => Verdict::Refused(e.code().as_str()),
        Err(e) => Verdict::Failed(e.to_string()),
    }
}

/// The `alg` a compact token's header names, if it has one.
fn header_alg(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: Value = serde_json::from_slice(&header).ok()?;
    header.get("alg")?.as_str().map(str::to_string)
}

#[test]
fn every_case_through_the_brokers_verifier() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/wycheproof/json_web_signature_test.json");
    let suite: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let declared = suite["numberOfTests"].as_u64().unwrap() as usize;

    let mut cases = 0;
    let mut mismatches = Vec::new();
    let mut invalid_refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut valid_accepted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut not_runnable: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut verifications = 0;

    for group in suite["testGroups"].as_array().unwrap() {
        assert_eq!(group["type"], "JsonWebSignature", "a group of another type in the JWS suite");
        let key = group.get("public").unwrap_or(&group["private"]);
        assert!(key.is_object(), "group {} has no key", group["comment"]);
        let jwks = json!({ "keys": [key] }).to_string();
        for case in group["tests"].as_array().unwrap() {
            cases += 1;
            let id = case["tcId"].as_u64().unwrap();
            let comment = case["comment"].as_str().unwrap_or_default();
            let token = match &case["jws"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let valid = match case["result"].as_str() {
                Some("valid") => true,
                Some("invalid") => false,
                other => panic!("tc {id}: result {other:?} is neither valid nor invalid"),
            };
            let alg = header_alg(&token);
            let runnable = valid && alg.as_deref().is_some_and(|a| PINS.contains(&a));
            for pin in PINS {
                verifications += 1;
                let verdict = verify(pin, &jwks, &token);
                let own_pin = alg.as_deref() == Some(pin);
                let expect_signature = runnable && own_pin;
                match (&verdict, expect_signature) {
                    (Verdict::SignatureAccepted, true) => {
                        valid_accepted.entry(pin.to_string()).or_default().push(id);
                    }
                    (Verdict::Refused(code), false) => {
                        if !valid {
                            *invalid_refused.entry(code).or_default() += 1;
                        }
                    }
                    (verdict, true) => {
                        mismatches.push(format!("tc {id} ({comment}): valid under {pin}, got {verdict}"))
                    }
                    (verdict, false) => mismatches.push(format!(
                        "tc {id} ({comment}): {} under {pin}, must be refused before the signature, got {verdict}",
                        if valid { "another algorithm" } else { "invalid" }
                    )),
                }
            }
            if valid && !runnable {
                let why = match alg.as_deref() {
                    Some("HS256") => "HS256 (never verifiable against a public JWKS)".to_string(),
                    Some(a) => format!("{a} (not implemented)"),
                    None => "a header that does not decode, so no alg".to_string(),
                };
                not_runnable.entry(why).or_default().push(id);
            }
        }
    }

    // HS256 cases cannot be run because no policy can pin HS256.
    let rt = runtime();
    let hs = rt.verify(
        &rt.verifier().unwrap(),
        &[("alg".into(), "HS256".into()), ("iss".into(), "x".into())],
        Datetime { seconds: 0, nanoseconds: 0 },
        r#"{"keys":[]}"#,
        "e30.e30.AA",
    );
    assert!(matches!(&hs, Err(e) if e.code().as_str() == "invalid_config"), "an HS256 pin was allowed: {hs:?}");

    let list = |m: &BTreeMap<String, Vec<u64>>| {
        m.iter()
            .map(|(k, ids)| {
                format!("{k}: {} [{}]", ids.len(), ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let invalid: usize = invalid_refused.values().sum::<usize>() / PINS.len();
    let accepted: usize = valid_accepted.values().map(Vec::len).sum();
    let skipped: usize = not_runnable.values().map(Vec::len).sum();
    eprintln!("wycheproof JWS: {cases} cases, {verifications} verifications under pins {}", PINS.join(", "));
    eprintln!("  invalid, refused under every pin: {invalid} (refusals by code: {invalid_refused:?})");
    eprintln!("  valid, signature accepted under its own pin: {accepted} ({})", list(&valid_accepted));
    eprintln!("  valid, not runnable (and refused under every pin): {skipped} ({})", list(&not_runnable));
    assert!(mismatches.is_empty(), "verdicts differ from Wycheproof:\n{}", mismatches.join("\n"));
    assert_eq!(cases, declared, "not every case was run");
    assert!(declared >= PINNED_CASES, "{declared} cases, fewer than the {PINNED_CASES} vendored");
    assert_eq!(invalid + accepted + skipped, cases, "every case is counted once");
}
