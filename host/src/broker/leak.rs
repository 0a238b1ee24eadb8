//! The output scan of the signing endpoint: does what a plugin produced
//! carry a secret value of the credential, raw or in an encoding the host
//! can undo?
//!
//! Declarations decide first (a `wire` secret in the answer refuses it); this
//! scan is the second lock, for a plugin whose declaration is wrong. It reads
//! only what the plugin produced (header names and values, query names and
//! values, with declared-`identifier` splices masked by the edit checker),
//! never the caller's own input, so it cannot be used as an oracle to test
//! guesses of a secret.
//!
//! Encodings undone: percent-encoding (RFC 3986 and form `+`), standard and
//! URL-safe base64 (padded or not, at every alignment, so `Basic
//! base64(user:pass)` is found), and hex. Values shorter than
//! [`MIN_SCANNED`] bytes are not scanned (they would match by chance); the
//! declarations still cover them.

use std::collections::BTreeMap;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// Shorter secret values are not searched for.
pub const MIN_SCANNED: usize = 4;

/// Base64 that decodes what a misaligned or unpadded run gives it.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The first secret field whose value appears in `texts`, raw or encoded.
pub fn find<'a>(texts: &[String], secrets: &'a BTreeMap<String, Secret>) -> Option<&'a str> {
    let wanted: Vec<(&str, &[u8])> = secrets
        .iter()
        .map(|(f, s)| (f.as_str(), s.expose().as_bytes()))
        .filter(|(_, v)| v.len() >= MIN_SCANNED)
        .collect();
    if wanted.is_empty() {
        return None;
    }
    for text in texts {
        for hay in haystacks(text) {
            if let Some((field, _)) = wanted.iter().find(|(_, v)| contains(&hay, v)) {
                return Some(field);
            }
        }
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `text` and every decoding of it (and of its runs) worth searching.
fn haystacks(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![Zeroizing::new(text.as_bytes().to_vec())];
    let percent = percent_decode(text.as_bytes(), false);
    let form = percent_decode(text.as_bytes(), true);
    for decoded in [percent, form] {
        if decoded[..] != *text.as_bytes() {
            // Decoded text may itself hold base64 or hex (a percent-encoded token).
            let inner = String::from_utf8_lossy(&decoded).into_owned();
            out.extend(encoded_runs(&inner));
            out.push(decoded);
        }
    }
    out.extend(encoded_runs(text));
    out
}

/// Base64 and hex decodings of every long enough run of their alphabets.
fn encoded_runs(text: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = Vec::new();
    let b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
    for run in runs(text.as_bytes(), b64, 4) {
        // One copy of the run in the standard alphabet, without padding;
        // each alignment decodes a slice of it.
        let standard: Vec<u8> = run
            .iter()
            .filter(|b| **b != b'=')
            .map(|b| match b {
                b'-' => b'+',
                b'_' => b'/',
                b => *b,
            })
            .collect();
        // Every alignment: the run may start inside an encoded value.
        for skip in 0..4.min(standard.len()) {
            let part = &standard[skip..];
            // A length of 4n+1 is never valid base64: drop the odd symbol.
            let len = if part.len() % 4 == 1 { part.len() - 1 } else { part.len() };
            if let Ok(d) = LENIENT.decode(&part[..len]) {
                out.push(Zeroizing::new(d));
            }
        }
    }
    for run in runs(text.as_bytes(), |b| b.is_ascii_hexdigit(), 8) {
        for skip in 0..2.min(run.len()) {
            let part = &run[skip..];
            if let Ok(d) = hex::decode(&part[..part.len() - part.len() % 2]) {
                out.push(Zeroizing::new(d));
            }
        }
    }
    out
}

fn runs(bytes: &[u8], member: impl Fn(u8) -> bool, min: usize) -> Vec<&[u8]> {
    bytes.split(|b| !member(*b)).filter(|r| r.len() >= min).collect()
}

fn percent_decode(bytes: &[u8], plus_is_space: bool) -> Zeroizing<Vec<u8>> {
    // `percent-encoding` keeps malformed `%` sequences as they are, as a
    // lenient scan wants; form encoding adds `+` for a space.
    let decoded: Vec<u8> = if plus_is_space {
        let spaced: Zeroizing<Vec<u8>> =
            Zeroizing::new(bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect());
        percent_encoding::percent_decode(&spaced).collect()
    } else {
        percent_encoding::percent_decode(bytes).collect()
    };
    Zeroizing::new(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "pa55/w+rd=secret";
    const USER: &str = "alice";

    fn secrets() -> BTreeMap<String, Secret> {
        BTreeMap::from([
            ("password".to_string(), Secret::new(PASS)),
            ("username".to_string(), Secret::new(USER)),
            ("tiny".to_string(), Secret::new("ab")),
        ])
    }

    fn found(text: &str) -> Option<String> {
        find(&[text.to_string()], &secrets()).map(str::to_string)
    }

    fn pct(s: &str) -> String {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    }

    #[test]
    fn finds_every_encoding_it_can_undo() {
        let e = base64::engine::general_purpose::STANDARD;
        let u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let cases = [
            format!("x {PASS} y"),
            format!("Basic {}", e.encode(format!("{USER}:{PASS}"))),
            format!("Basic {}", e.encode(format!("someone:{PASS}"))),
            format!("tok={}", u.encode(format!("prefix-{PASS}-suffix"))),
            format!("k={}", pct(PASS)),
            format!("k={}", pct(PASS).to_lowercase()),
            format!("k={}", PASS.replace(' ', "+")),
            format!("h={}", hex::encode(PASS)),
            format!("h=0{}", hex::encode_upper(PASS)),
            pct(&e.encode(PASS)),
        ];
        for text in cases {
            assert_eq!(found(&text).as_deref(), Some("password"), "not found in {text:?}");
        }
        assert_eq!(found(&format!("user={USER}")).as_deref(), Some("username"));
    }

    #[test]
    fn masked_and_short_values_are_not_reported() {
        // What the edit checker masks (declared identifiers) is NUL, never the value.
        assert_eq!(found("AWS4-HMAC-SHA256 Credential=\0/20260101/us-east-1/s3/aws4_request"), None);
        assert_eq!(found("ab ab ab"), None, "values under MIN_SCANNED bytes are left to the declarations");
        assert_eq!(found(&hex::encode([0u8; 32])), None);
        assert_eq!(found("Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"), None);
    }
}
