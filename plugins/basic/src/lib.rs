//! The `basic` scheme: `Authorization: Basic base64(username:password)` (RFC 7617).

use latchkey_plugin_sdk::encoding::base64;
use latchkey_plugin_sdk::*;

struct Basic;

impl Scheme for Basic {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "basic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "HTTP Basic authentication (RFC 7617)".into(),
            config_fields: vec![],
            secret_fields: vec![
                FieldInfo::required("username", "The user name; may not contain `:`"),
                FieldInfo::required("password", "The password"),
            ],
            writable_headers: vec!["authorization".into()],
            open_secret_fields: false,
        }
    }

    fn validate_secret(_config: &Config, field: &str, value: &str) -> Result<(), Error> {
        if field == "username" && value.contains(':') {
            return Err(Error::InvalidSecret("`username` may not contain `:` (RFC 7617 §2)".into()));
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        call.require_secret("username")?;
        call.require_secret("password")?;
        // Base64 over both values is the one thing the host cannot splice in, so
        // this scheme reads its secrets through the granted `secrets` import.
        let user = call.reveal("username")?;
        let pass = call.reveal("password")?;
        if call.url.scheme != "https" {
            log(Level::Warn, "basic credentials sent over plain http: anyone on the path can read them");
        }
        let token = base64(format!("{user}:{pass}").as_bytes());
        Ok(vec![Edit::set_header_text("authorization", format!("Basic {token}"))])
    }
}

export_scheme!(Basic);
