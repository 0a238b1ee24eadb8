//! Structured values drawn from fuzz bytes, for the targets whose function
//! takes more than bytes. Every draw succeeds: once the bytes run out, they
//! read as zeros, so any input is a valid (if dull) case.

/// A cursor over the fuzzer's bytes.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// Draw from `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    /// One byte.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// A coin toss.
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A run of bytes: a length byte, 255 meaning a two-byte length to follow
    /// (so values can pass the caps of a few KiB), then that many bytes or
    /// what is left.
    pub fn bytes(&mut self) -> &'a [u8] {
        let mut len = usize::from(self.byte());
        if len == 255 {
            len = usize::from(u16::from_be_bytes([self.byte(), self.byte()]));
        }
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// Text: a run of bytes, read as UTF-8 with invalid sequences replaced.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// A word of `words` half the time, otherwise any text.
    pub fn word(&mut self, words: &[&str]) -> String {
        if self.bool() { self.pick(words).to_string() } else { self.text() }
    }
}
