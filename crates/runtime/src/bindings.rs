//! The one `bindgen!` site: host bindings for the `scheme-plugin` world.
//!
//! Import functions that can fail for host reasons return the WIT `error`
//! variant (an answer the guest handles). Only a broken host invariant traps.
// The generated items carry the WIT's doc comments, but not every field does.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "scheme-plugin",
    imports: { default: trappable },
    with: {
        "latchkey:plugin/credentials.credential": super::state::CredentialHandle,
    },
});

pub use self::latchkey::plugin::crypto::SignatureAlgorithm;
pub use self::latchkey::plugin::log::Level;
pub use self::latchkey::plugin::types::{
    CallContext, Datetime, Edit, Error as WitError, Exposure, FieldInfo, Part, Request, SchemeInfo, SecretFieldInfo,
    Segment,
};

/// Host bindings for the `verifier-plugin` world: the imports are the ones
/// above (so one linker serves both worlds); only the exports are new.
pub mod verifier {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "verifier-plugin",
        imports: { default: trappable },
        with: {
            "latchkey:plugin/types": super::latchkey::plugin::types,
            "latchkey:plugin/credentials": super::latchkey::plugin::credentials,
            "latchkey:plugin/crypto": super::latchkey::plugin::crypto,
            "latchkey:plugin/secrets": super::latchkey::plugin::secrets,
            "latchkey:plugin/cache": super::latchkey::plugin::cache,
            "latchkey:plugin/log": super::latchkey::plugin::log,
            "latchkey:plugin/random": super::latchkey::plugin::random,
        },
    });
}
