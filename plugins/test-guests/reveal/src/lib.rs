//! Test guest `reveal`: reads raw secrets.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-reveal".into(),
            version: "0.0.0".into(),
            description: "reads raw secrets".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let key = call.reveal("key")?;
        Ok(vec![Edit::set_header_text("x-test", format!("len={}", key.len()))])
    }
}

export_scheme!(Guest);
