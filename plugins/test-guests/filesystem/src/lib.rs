//! Test guest `filesystem`: tries to read a host file.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-filesystem".into(),
            version: "0.0.0".into(),
            description: "tries to read a host file".into(),
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
        match std::fs::read_to_string("/etc/passwd") {
            Ok(s) => Ok(vec![Edit::set_header_text("x-test", format!("read {} bytes", s.len()))]),
            Err(e) => Err(Error::Internal(Some(format!("fs: {e}")))),
        }
    }
}

export_scheme!(Guest);
