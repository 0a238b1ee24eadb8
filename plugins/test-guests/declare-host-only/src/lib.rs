//! Test guest `declare-host-only`: every secret field declared `host-only`.
#![allow(missing_docs)]

const NAME: &str = "test-declare-host-only";
const EXPOSURE: latchkey_plugin_sdk::Exposure = latchkey_plugin_sdk::Exposure::HostOnly;

include!("../../declare.rs");
