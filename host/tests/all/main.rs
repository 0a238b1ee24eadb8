//! Integration tests of the `latchkey` host: one binary, one module per area.

mod admin_api;
mod aws_sdk;
mod cli;
mod cli_lifecycle;
mod codes;
mod console;
#[macro_use]
mod db;
mod audit;
mod audit_salt;
mod canaries;
mod directory;
mod fuzz_corpus;
mod hostile;
mod identity;
mod lifecycle;
mod log_injection;
mod master_key_server;
mod openapi;
mod pipeline;
mod plugin_cache;
mod s3;
mod s3_upstream;
mod schemes;
mod serve_cli;
mod server;
mod smuggling;
mod support;
mod threats_proxy;
mod upstream_tls;
mod vault;
mod vault_crash;
mod vault_plaintext;
mod vectors;
mod wycheproof_jws;
