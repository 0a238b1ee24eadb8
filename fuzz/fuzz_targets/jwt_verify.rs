#![no_main]
//! `cargo fuzz run jwt_verify`: see `checks::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::jwt::token(data));
