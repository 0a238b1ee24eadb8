#![no_main]
//! `cargo fuzz run edits`: see `checks::edits`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::edits::check(data));
