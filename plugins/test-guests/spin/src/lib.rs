//! Test guest `spin`: loops forever unless mode=ok.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-spin".into(),
            version: "0.0.0".into(),
            description: "loops forever unless mode=ok".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        if call.config.get("mode") == Some("ok") {
            return Ok(vec![Edit::set_header_text("x-test", "ok")]);
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_scheme!(Guest);
