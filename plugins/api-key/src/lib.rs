//! The `api-key` scheme: the credential's key in a header (default
//! `Authorization`, with an optional prefix such as `Bearer `) or in a query
//! parameter.

use latchkey_plugin_sdk::*;

struct ApiKey;

impl Scheme for ApiKey {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "api-key".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "An API key in a header (default Authorization) or a query parameter".into(),
            config_fields: vec![
                FieldInfo::optional("header", "Header to carry the key (default `Authorization`)"),
                FieldInfo::optional("prefix", "Text before the key, e.g. `Bearer ` (include the space)"),
                FieldInfo::optional("query", "Send the key in this query parameter instead of a header"),
            ],
            secret_fields: vec![SecretFieldInfo::required(
                "key",
                "The API key, without any `Bearer ` prefix",
                Exposure::Wire,
            )],
            writable_headers: vec!["*".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: true,
        }
    }

    fn validate_config(config: &Config) -> Result<(), Error> {
        config.check_fields(&Self::describe().config_fields)?;
        if config.get("query").is_some() && (config.get("header").is_some() || config.get("prefix").is_some()) {
            return Err(Error::InvalidConfig("`query` cannot be combined with `header` or `prefix`".into()));
        }
        Ok(())
    }

    fn validate_secret(_config: &Config, field: &str, value: &str) -> Result<(), Error> {
        if field == "key" && value.len() >= 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            return Err(Error::InvalidSecret(
                "`key` starts with `Bearer `: store the raw key; set config `prefix=Bearer ` to send the prefix".into(),
            ));
        }
        Ok(())
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        // The key is referred to, not read: the host splices it in, so it never
        // enters this plugin's memory and the plugin needs no `secrets` grant.
        call.require_secret("key")?;
        if let Some(param) = call.config.get("query") {
            return Ok(vec![Edit::append_query(param, [Part::secret("key")])]);
        }
        let header = call.config.get("header").unwrap_or("Authorization");
        let prefix = call.config.get("prefix").unwrap_or("");
        Ok(vec![Edit::set_header(header, [Part::text(prefix), Part::secret("key")])])
    }
}

export_scheme!(ApiKey);
