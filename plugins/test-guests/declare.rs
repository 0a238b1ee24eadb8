// Shared by the `declare-*` test guests: each declares every secret field
// (any name: an open set) with one exposure, `EXPOSURE`, and places the
// fields in its answer as the config's `mode` says. The host must enforce
// the declaration whatever the names are (`token`, `access_key_id`, ...).

use latchkey_plugin_sdk::*;

struct Guest;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: NAME.into(),
            version: "0.0.0".into(),
            description: "declares every secret field with one exposure".into(),
            config_fields: vec![FieldInfo::optional("mode", "header, base64, query, keyed, hmac, digest")],
            secret_fields: vec![],
            writable_headers: vec!["*".into()],
            open_secret_fields: Some(EXPOSURE),
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let names = call.credential.secret_names();
        let each_in_header =
            || names.iter().map(|n| Edit::set_header(n.clone(), [Part::secret(n.clone())])).collect::<Vec<_>>();
        match call.config.get("mode").unwrap_or("header") {
            // Every field verbatim in a header named after it.
            "header" => Ok(each_in_header()),
            // Basic-style: base64 of the fields joined by `:`.
            "base64" => {
                let mut segments = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        segments.push(Segment::text(":"));
                    }
                    segments.push(Segment::secret(n.clone()));
                }
                Ok(vec![Edit::set_header("authorization", [Part::text("Basic "), Part::base64(segments)])])
            }
            // Every field in a query parameter named after it.
            "query" => Ok(names.iter().map(|n| Edit::append_query(n.clone(), [Part::secret(n.clone())])).collect()),
            // Every field used as an HMAC key, then placed verbatim.
            "keyed" => {
                for n in &names {
                    call.hmac_sha256(n, b"", &[], b"message")?;
                }
                Ok(each_in_header())
            }
            // Only a signature: nothing secret leaves.
            "hmac" => {
                let mut edits = Vec::new();
                for n in &names {
                    let mac = call.hmac_sha256(n, b"", &[], b"message")?;
                    edits.push(Edit::set_header_text(format!("x-mac-{}", n.to_ascii_lowercase()), hex(&mac)));
                }
                Ok(edits)
            }
            // A bare SHA-256 of each field, computed by the host.
            "digest" => {
                let mut edits = Vec::new();
                for n in &names {
                    let h = call.sha256_parts(&[Part::secret(n.clone())])?;
                    edits.push(Edit::set_header_text(format!("x-digest-{}", n.to_ascii_lowercase()), hex(&h)));
                }
                Ok(edits)
            }
            other => Err(Error::InvalidConfig(format!("unknown mode `{other}`"))),
        }
    }
}

export_scheme!(Guest);
