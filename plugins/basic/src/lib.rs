//! The `basic` scheme: `Authorization: Basic base64(username:password)` (RFC 7617).

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
                SecretFieldInfo::required("username", "The user name; may not contain `:`", Exposure::Wire),
                SecretFieldInfo::required("password", "The password", Exposure::Wire),
            ],
            writable_headers: vec!["authorization".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: true,
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
        if call.url.scheme != "https" {
            log(Level::Warn, "basic credentials sent over plain http: anyone on the path can read them");
        }
        // The host computes base64(username ":" password): this plugin never
        // reads either value and needs no `secrets` grant.
        let pair = [Segment::secret("username"), Segment::text(":"), Segment::secret("password")];
        Ok(vec![Edit::set_header("authorization", [Part::text("Basic "), Part::base64(pair)])])
    }
}

export_scheme!(Basic);
