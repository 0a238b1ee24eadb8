//! The plugin example of README.md, verbatim (the `readme_example` test checks it is).

use latchkey_plugin_sdk::*;

struct XApiKey;

impl Scheme for XApiKey {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "x-api-key".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "The key in X-Api-Key".into(),
            config_fields: vec![],
            secret_fields: vec![SecretFieldInfo::required("key", "The API key", Exposure::Wire)],
            writable_headers: vec!["x-api-key".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: true,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        call.require_secret("key")?;
        Ok(vec![Edit::set_header("x-api-key", [Part::secret("key")])])
    }
}

export_scheme!(XApiKey);
