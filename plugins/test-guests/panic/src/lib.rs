//! Test guest `panic`: panics with a message.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-panic".into(),
            version: "0.0.0".into(),
            description: "panics with a message".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let _ = call;
        panic!("deliberate test panic")
    }
}

export_scheme!(Guest);
