#![no_main]
//! `cargo fuzz run vault_fields`: see `checks::vault`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::vault::fields(data));
