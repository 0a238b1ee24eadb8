//! Test guest `huge-output`: answers with far too much.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-huge-output".into(),
            version: "0.0.0".into(),
            description: "answers with far too much".into(),
            config_fields: vec![FieldInfo::optional("mode", "which misbehaviour")],
            secret_fields: vec![SecretFieldInfo::optional("key", "a key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into(), "authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        match call.config.get("mode") {
            Some("many") => Ok((0..10_000).map(|i| Edit::set_header_text("x-test", i.to_string())).collect()),
            Some("crlf") => Ok(vec![Edit::set_header_text("x-test", "a\r\nInjected: yes")]),
            Some("nul") => Ok(vec![Edit::set_header_text("x-test", "a\0b")]),
            Some("host") => Ok(vec![Edit::set_header_text("host", "evil.example")]),
            Some("proxy") => Ok(vec![Edit::set_header_text("proxy-authorization", "x")]),
            Some("undeclared") => Ok(vec![Edit::set_header_text("x-other", "x")]),
            Some("missing-secret") => Ok(vec![Edit::set_header("x-test", [Part::secret("nope")])]),
            _ => Ok(vec![Edit::set_header_text("x-test", "v".repeat(8 << 20))]),
        }
    }
}

export_scheme!(Guest);
