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
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        // Unbounded in practice: the stack cap is reached long before `n`
        // could wrap, which is what this guest exists to show.
        fn down(n: u64) -> u64 {
            if n == u64::MAX {
                return 0;
            }
            std::hint::black_box(down(n + 1)) + 1
        }
        let _ = call;
        Ok(vec![Edit::set_header_text("x-test", down(0).to_string())])
    }
}

export_scheme!(Guest);
