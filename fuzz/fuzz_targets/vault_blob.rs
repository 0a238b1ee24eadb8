#![no_main]
//! `cargo fuzz run vault_blob`: see `checks::vault`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::vault::blob(data));
