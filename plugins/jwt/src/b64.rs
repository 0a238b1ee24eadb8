//! Strict base64 decoding, for PEM bodies (standard alphabet, padded) and JWS
//! segments (URL-safe alphabet, unpadded).
//!
//! Strict means one text for one byte string: wrong padding, characters of
//! the other alphabet and non-zero trailing bits are refused. Verification of
//! incoming tokens needs that (a token must not have two spellings), and the
//! SDK only encodes.

/// Which RFC 4648 alphabet, and whether `=` padding is required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// RFC 4648 §4: `+` and `/`, padded to a multiple of four characters.
    Standard,
    /// RFC 4648 §5 without padding, as JWS uses (RFC 7515 §2).
    UrlNoPad,
}

fn value(c: u8, alphabet: Alphabet) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' if alphabet == Alphabet::Standard => 62,
        b'/' if alphabet == Alphabet::Standard => 63,
        b'-' if alphabet == Alphabet::UrlNoPad => 62,
        b'_' if alphabet == Alphabet::UrlNoPad => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decode `text` (which must contain no whitespace), or `None` if it is not
/// the canonical encoding of some byte string in that alphabet.
pub fn decode(text: &str, alphabet: Alphabet) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let data = match alphabet {
        Alphabet::Standard => {
            if !bytes.len().is_multiple_of(4) {
                return None;
            }
            let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
            if pad > 2 {
                return None;
            }
            &bytes[..bytes.len() - pad]
        }
        Alphabet::UrlNoPad => bytes,
    };
    // A lone trailing character carries only six bits: never a whole byte.
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c, alphabet)? << (18 - 6 * i);
        }
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = chunk.len() - 1;
        // Bits below the last whole byte must be zero, or two texts would
        // decode to the same bytes.
        let unused_mask = match keep {
            1 => 0xffff,
            2 => 0xff,
            _ => 0,
        };
        if n & unused_mask != 0 {
            return None;
        }
        out.extend_from_slice(&full[..keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_plugin_sdk::encoding::{base64, base64url};

    #[test]
    fn round_trips_both_alphabets() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..40 {
            let d = &data[200 - len..200];
            assert_eq!(decode(&base64(d), Alphabet::Standard).as_deref(), Some(d));
            assert_eq!(decode(&base64url(d), Alphabet::UrlNoPad).as_deref(), Some(d));
        }
    }

    #[test]
    fn refuses_non_canonical_text() {
        assert_eq!(decode("Zm9vYg==", Alphabet::Standard), Some(b"foob".to_vec()));
        assert_eq!(decode("Zm9vYg", Alphabet::Standard), None, "missing padding");
        assert_eq!(decode("Zm9vYh==", Alphabet::Standard), None, "trailing bits set");
        assert_eq!(decode("Zm9vYg==", Alphabet::UrlNoPad), None, "padding in JWS");
        assert_eq!(decode("-_8", Alphabet::UrlNoPad), Some(vec![0xfb, 0xff]));
        assert_eq!(decode("-_8=", Alphabet::Standard), None, "URL alphabet in PEM");
        assert_eq!(decode("+/8", Alphabet::UrlNoPad), None, "standard alphabet in JWS");
        assert_eq!(decode("A", Alphabet::UrlNoPad), None);
        assert_eq!(decode("Zm9v\nYmFy", Alphabet::Standard), None);
        assert_eq!(decode("===", Alphabet::Standard), None);
    }
}
