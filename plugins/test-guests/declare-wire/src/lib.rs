//! Test guest `declare-wire`: every secret field declared `wire`.
#![allow(missing_docs)]

const NAME: &str = "test-declare-wire";
const EXPOSURE: latchkey_plugin_sdk::Exposure = latchkey_plugin_sdk::Exposure::Wire;

include!("../../declare.rs");
