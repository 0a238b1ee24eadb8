#![no_main]
//! `cargo fuzz run jwt_key`: see `checks::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::jwt::key(data));
