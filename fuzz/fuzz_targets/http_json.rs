#![no_main]
//! `cargo fuzz run http_json`: see `checks::http`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_fuzz::http::check(data));
