//! Test guest `recurse`: recurses without bound.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-recurse".into(),
            version: "0.0.0".into(),
            description: "recurses without bound".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![FieldInfo::optional("key", "a key")],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        fn down(n: u64) -> u64 {
            std::hint::black_box(down(n + 1)) + 1
        }
        let _ = call;
        Ok(vec![Edit::set_header_text("x-test", down(0).to_string())])
    }
}

export_scheme!(Guest);
