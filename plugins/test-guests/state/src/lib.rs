//! Test guest `state`: counts calls in a static, to prove each call gets a fresh instance.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-state".into(),
            version: "0.0.0".into(),
            description: "counts calls in a static, to prove each call gets a fresh instance".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static CALLS: AtomicU32 = AtomicU32::new(0);
        let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if call.config.get("mode") == Some("trap") {
            panic!("trap after counting");
        }
        Ok(vec![Edit::set_header_text("x-test", n.to_string())])
    }
}

export_scheme!(Guest);
