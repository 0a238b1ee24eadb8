//! The `aliyun-acs3` scheme. (Being written: see the issue.)

use latchkey_plugin_sdk::*;

struct Todo;

impl Scheme for Todo {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "aliyun-acs3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "not yet implemented".into(),
            config_fields: vec![],
            secret_fields: vec![],
            writable_headers: vec![],
            open_secret_fields: false,
        }
    }

    fn apply(_call: &Call) -> Result<Vec<Edit>, Error> {
        Err(Error::Internal(Some("not yet implemented".into())))
    }
}

export_scheme!(Todo);
