//! The one `bindgen!` site: host bindings for the `scheme-plugin` world.
//!
//! Import functions that can fail for host reasons return the WIT `error`
//! variant (an answer the guest handles). Only a broken host invariant traps.
// The generated items carry the WIT's doc comments, but not every field does.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "scheme-plugin",
    imports: { default: trappable },
    with: {
        "latchkey:plugin/credentials.credential": super::state::CredentialHandle,
    },
});

pub use self::latchkey::plugin::crypto::SignatureAlgorithm;
pub use self::latchkey::plugin::log::Level;
pub use self::latchkey::plugin::types::{
    CallContext, Datetime, Edit, Error as WitError, FieldInfo, Part, Request, SchemeInfo,
};
