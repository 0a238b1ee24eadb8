#![no_main]
//! `cargo fuzz run sdk_canonical`: see `checks::sdk`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::sdk::canonical(data));
