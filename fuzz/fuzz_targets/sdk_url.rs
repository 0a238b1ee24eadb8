#![no_main]
//! `cargo fuzz run sdk_url`: see `checks::sdk`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::sdk::url(data));
