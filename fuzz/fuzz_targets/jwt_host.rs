#![no_main]
//! `cargo fuzz run jwt_host`: see `checks::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::jwt::host(data));
