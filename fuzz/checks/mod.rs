//! The fuzz targets' bodies: each target in `fuzz_targets/` calls one of
//! these, and the host's regression test (`host/tests/all/fuzz_corpus.rs`)
//! runs every file of `corpus/<target>/` through the same function, so a
//! committed corpus is a test on stable. Each body asserts its function's
//! contract: no panic, and the invariants that are cheap to state.

pub mod edits;
pub mod http;
pub mod input;
pub mod jwt;
pub mod sdk;
pub mod vault;

/// A target: its name (its file in `fuzz_targets/`, its corpus directory)
/// and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("vault_blob", vault::blob),
    ("vault_fields", vault::fields),
    ("edits", edits::check),
    ("sdk_url", sdk::url),
    ("sdk_canonical", sdk::canonical),
    ("jwt_verify", jwt::token),
    ("jwt_key", jwt::key),
    ("jwt_host", jwt::host),
    ("http_json", http::check),
];
