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
//!
//! It runs on every answer `/v1/sign` hands out, so it allocates once per
//! call: each decoding is written into buffers sized for the longest text
//! (zeroed when the scan ends) and searched at once, and what cannot hold a
//! secret is skipped — a text or run shorter than the shortest value
//! (every encoding undone here is at least as long as what it encodes; hex
//! twice as long), a percent decoding of a text with no `%` or `+`.

use std::collections::BTreeMap;

use base64::Engine as _;
use memchr::memmem::Finder;
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
    let wanted: Vec<(&'a str, Finder<'a>)> = secrets
        .iter()
        .filter(|(_, s)| s.expose().len() >= MIN_SCANNED)
        .map(|(f, s)| (f.as_str(), Finder::new(s.expose().as_bytes())))
        .collect();
    let shortest = wanted.iter().map(|(_, f)| f.needle().len()).min()?;
    let longest_text = texts.iter().map(String::len).max().unwrap_or(0);
    if longest_text < shortest {
        return None;
    }
    let mut scan = Scan { wanted: &wanted, shortest, buffers: Buffers::new(longest_text) };
    texts.iter().find_map(|text| scan.text(text.as_bytes()))
}

/// Scratch space for decodings: each at most as long as the text decoded.
struct Buffers {
    /// A percent decoding of the whole text.
    percent: Zeroizing<Vec<u8>>,
    /// One run of the base64 alphabet, in the standard alphabet, unpadded.
    run: Zeroizing<Vec<u8>>,
    /// A base64 or hex decoding of a run.
    decoded: Zeroizing<Vec<u8>>,
}

impl Buffers {
    fn new(len: usize) -> Buffers {
        // Sized once, so nothing decoded is left behind by a reallocation.
        let zeroed = || Zeroizing::new(vec![0u8; len + 4]);
        Buffers { percent: zeroed(), run: zeroed(), decoded: zeroed() }
    }
}

struct Scan<'s, 'a> {
    wanted: &'s [(&'a str, Finder<'a>)],
    shortest: usize,
    buffers: Buffers,
}

impl<'a> Scan<'_, 'a> {
    fn hit(wanted: &[(&'a str, Finder<'a>)], hay: &[u8]) -> Option<&'a str> {
        wanted.iter().find(|(_, f)| f.find(hay).is_some()).map(|(field, _)| *field)
    }

    /// `text` and every decoding of it (and of its runs) worth searching.
    fn text(&mut self, text: &[u8]) -> Option<&'a str> {
        if text.len() < self.shortest {
            return None;
        }
        if let Some(f) = Self::hit(self.wanted, text) {
            return Some(f);
        }
        let has_percent = memchr::memchr(b'%', text).is_some();
        let has_plus = memchr::memchr(b'+', text).is_some();
        for plus_is_space in [false, true] {
            if !(has_percent || plus_is_space && has_plus) {
                continue;
            }
            let mut percent = std::mem::take(&mut self.buffers.percent);
            let n = percent_decode(text, plus_is_space, &mut percent);
            let found = if percent[..n] != *text {
                // Decoded text may itself hold base64 or hex (a percent-encoded token).
                Self::hit(self.wanted, &percent[..n]).or_else(|| self.runs(&percent[..n]))
            } else {
                None
            };
            self.buffers.percent = percent;
            if found.is_some() {
                return found;
            }
        }
        self.runs(text)
    }

    /// Base64 and hex decodings of every long enough run of their alphabets.
    fn runs(&mut self, text: &[u8]) -> Option<&'a str> {
        let b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=');
        let Buffers { run: standard, decoded, .. } = &mut self.buffers;
        // Base64 needs 4 symbols for 3 bytes: a run shorter than the value cannot hold it.
        for run in text.split(|b| !b64(b)).filter(|r| r.len() >= self.shortest.max(4)) {
            // One copy of the run in the standard alphabet, without padding;
            // each alignment decodes a slice of it.
            let mut len = 0;
            for &b in run.iter().filter(|b| **b != b'=') {
                standard[len] = match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    b => b,
                };
                len += 1;
            }
            // Every alignment: the run may start inside an encoded value.
            for skip in 0..4.min(len) {
                let part = &standard[skip..len];
                // A length of 4n+1 is never valid base64: drop the odd symbol.
                let usable = if part.len() % 4 == 1 { part.len() - 1 } else { part.len() };
                if let Ok(n) = LENIENT.decode_slice(&part[..usable], &mut decoded[..])
                    && let Some(f) = Self::hit(self.wanted, &decoded[..n])
                {
                    return Some(f);
                }
            }
        }
        // Hex needs 2 symbols a byte.
        let min_hex = (self.shortest * 2).max(8);
        for run in text.split(|b| !b.is_ascii_hexdigit()).filter(|r| r.len() >= min_hex) {
            for skip in 0..2.min(run.len()) {
                let part = &run[skip..];
                let even = part.len() - part.len() % 2;
                let out = &mut decoded[..even / 2];
                if hex::decode_to_slice(&part[..even], out).is_ok()
                    && let Some(f) = Self::hit(self.wanted, out)
                {
                    return Some(f);
                }
            }
        }
        None
    }
}

/// Percent-decode `bytes` into `out` (at least as long), returning the
/// decoded length. Malformed `%` sequences stay as they are, as a lenient
/// scan wants; form encoding adds `+` for a space.
fn percent_decode(bytes: &[u8], plus_is_space: bool, out: &mut [u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[n] = match (b, bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                i += 2;
                hi << 4 | lo
            }
            (b'+', _, _) if plus_is_space => b' ',
            _ => b,
        };
        n += 1;
        i += 1;
    }
    n
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
    fn the_skips_never_hide_a_value() {
        let e = base64::engine::general_purpose::STANDARD;
        // The shortest value scanned, base64-encoded after 0, 1 and 2 bytes
        // of padding text: its run is never shorter than the value.
        let four = BTreeMap::from([("k".to_string(), Secret::new("w0rd"))]);
        for prefix in ["", "a", "ab"] {
            let text = format!("x {}", e.encode(format!("{prefix}w0rd")));
            assert_eq!(find(std::slice::from_ref(&text), &four), Some("k"), "{text}");
        }
        // A space as form `+` with no `%` anywhere.
        let spaced = BTreeMap::from([("k".to_string(), Secret::new("pass word here"))]);
        assert_eq!(find(&["q=pass+word+here".to_string()], &spaced), Some("k"));
        // Long texts: the buffers are sized for the longest text scanned,
        // whichever of them it is.
        let long = "s3cr3t-".repeat(300);
        let big = BTreeMap::from([("k".to_string(), Secret::new(long.as_str()))]);
        let texts = ["short".to_string(), format!("h={}", hex::encode(&long)), "x".repeat(10)];
        assert_eq!(find(&texts, &big), Some("k"));
        let texts = [format!("t={}", pct(&e.encode(format!("zz{long}"))))];
        assert_eq!(find(&texts, &big), Some("k"));
        // Texts shorter than every value hold none of them.
        assert_eq!(find(&["w0r".to_string()], &four), None);
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
