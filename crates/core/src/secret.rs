//! Secret values: zeroed on drop, never printed.

use std::fmt;
use zeroize::Zeroizing;

/// A secret string. `Debug` and `Display` print `[redacted]`; the memory is
/// zeroed when the value is dropped. The only way to the plaintext is
/// [`Secret::expose`], which is easy to grep for in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The plaintext. Use it only to hand the value to crypto or the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("canary-3f9a");
        assert_eq!(format!("{s:?} {s} {:?}", vec![s.clone()]), "[redacted] [redacted] [[redacted]]");
        assert_eq!(s.expose(), "canary-3f9a");
    }
}
