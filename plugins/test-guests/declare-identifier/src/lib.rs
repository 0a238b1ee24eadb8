//! Test guest `declare-identifier`: every secret field declared `identifier`.
#![allow(missing_docs)]

const NAME: &str = "test-declare-identifier";
const EXPOSURE: latchkey_plugin_sdk::Exposure = latchkey_plugin_sdk::Exposure::Identifier;

include!("../../declare.rs");
