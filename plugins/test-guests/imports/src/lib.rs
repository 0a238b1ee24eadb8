//! Test guest `imports`: calls the host import named by `mode` `count` times
//! in one call, to prove every import is bounded per call.
#![allow(missing_docs)]

use latchkey_plugin_sdk::*;

struct Guest;

const JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

impl Scheme for Guest {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "test-imports".into(),
            version: "0.0.0".into(),
            description: "calls one host import more often than a call may".into(),
            config_fields: vec![
                FieldInfo::optional("mode", "which import to call: see `apply`"),
                FieldInfo::optional("count", "how many times"),
            ],
            secret_fields: vec![SecretFieldInfo::optional("key", "an HMAC key", Exposure::HostOnly)],
            writable_headers: vec!["x-test".into()],
            open_secret_fields: None,
            reads_body: false,
            request_independent: false,
        }
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let count: u32 = call.config.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
        let mut served = 0u32;
        for i in 0..count {
            match call.config.get("mode").unwrap_or_default() {
                "sign" => {
                    call.sign("key", SignatureAlgorithm::Hs256, b"m")?;
                }
                "sign-rsa" => {
                    call.sign("key", SignatureAlgorithm::Rs256, b"m")?;
                }
                "hmac" => {
                    call.hmac_sha256("key", b"", &[], b"m")?;
                }
                "digest" => {
                    sha256(b"m");
                }
                "verify" => {
                    verify_signature(SignatureAlgorithm::Ed25519, JWK, b"m", &[0; 64])?;
                }
                "random" => {
                    random_bytes(1024);
                }
                "log" => log(Level::Info, &format!("line {i}")),
                "cache" => {
                    let expires = Datetime { seconds: call.now.seconds + 3600, nanoseconds: 0 };
                    call.cache_set(&format!("k{i}"), "v", expires);
                }
                "cache-read" => {
                    served += u32::from(call.cache_get(&format!("k{i}")).is_some());
                }
                "cache-read-first" => {
                    served += u32::from(call.cache_get("k0").is_some());
                }
                "hmac-chain" => {
                    let steps = vec![b"step".as_slice(); 100_000];
                    call.hmac_sha256("key", b"", &steps, b"m")?;
                }
                "digest-big" => {
                    sha256(&vec![0u8; 8 << 20]);
                }
                "parts-bomb" => {
                    let parts = vec![Part::secret("key"); 40_000];
                    call.sha256_parts(&parts)?;
                }
                "forge-handle" => {
                    // A handle the host never gave out, as if it named another
                    // tenant's credential.
                    // SAFETY: deliberately invalid; the host must trap.
                    let forged = unsafe { Credential::from_handle(0xdead + i) };
                    let name = forged.name();
                    std::mem::forget(forged);
                    return Ok(vec![Edit::set_header_text("x-test", name)]);
                }
                other => return Err(Error::InvalidConfig(format!("unknown mode `{other}`"))),
            }
        }
        Ok(vec![Edit::set_header_text("x-test", served.to_string())])
    }
}

export_scheme!(Guest);
