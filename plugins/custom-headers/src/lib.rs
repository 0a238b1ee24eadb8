//! The `custom-headers` scheme: each secret field is a header, set to the
//! field's value (`X-Api-Key`, `X-Tenant-Secret`, ...).

use latchkey_plugin_sdk::*;

struct CustomHeaders;

/// An RFC 9110 field name (`token`): what a secret field name must be here.
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Scheme for CustomHeaders {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "custom-headers".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "One secret per header: field name = header name, value sent as-is".into(),
            config_fields: vec![],
            secret_fields: vec![SecretFieldInfo::optional(
                "<Header-Name>",
                "Any header name (e.g. `X-Api-Key`); its value is the header's value",
                Exposure::Wire,
            )],
            writable_headers: vec!["*".into()],
            // Every field, whatever its name, is a header value sent as is.
            open_secret_fields: Some(Exposure::Wire),
            reads_body: false,
            request_independent: true,
        }
    }

    fn validate_secret(_config: &Config, field: &str, _value: &str) -> Result<(), Error> {
        if !is_token(field) {
            return Err(Error::InvalidSecret(format!("`{field}` is not a valid HTTP header name")));
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let names = call.credential.secret_names();
        if names.is_empty() {
            return Err(Error::MissingSecret("<Header-Name>".into()));
        }
        // Values are spliced in by the host: this plugin never reads them.
        Ok(names.into_iter().map(|n| Edit::set_header(n.clone(), [Part::secret(n)])).collect())
    }
}

export_scheme!(CustomHeaders);
