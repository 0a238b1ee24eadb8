//! Test guest `sockets`: imports wasi:sockets.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-sockets".into(),
            version: "0.0.0".into(),
            description: "imports wasi:sockets".into(),
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
        match std::net::TcpStream::connect("169.254.169.254:80") {
            Ok(_) => Ok(vec![Edit::set_header_text("x-test", "connected")]),
            Err(e) => Err(Error::Internal(Some(e.to_string()))),
        }
    }
}

export_scheme!(Guest);
