//! The JSON bodies of the broker's HTTP surfaces: the admin API's, `POST
//! /v1/sign`'s and `POST /v1/agents/register`'s. Any bytes are refused or
//! turned into what the handler hands on, by the handler's own code, and
//! what the handler would hand the vault or the call path then goes
//! through the checks that follow (the credential model's hygiene, the
//! identity provider check, the signing request's input checks).

use std::collections::BTreeMap;

use latchkey::error::ErrorCode;
use latchkey::secret::Secret;
use latchkey::server::fuzzing::{self, FuzzBodies};
use latchkey::vault::agents::check_token_shape;
use latchkey::vault::identity::JwksSource;
use latchkey::vault::model::{self, ModelError, RawCredential};
use latchkey_core::{FieldSpec, SchemeCatalogue, SchemeFields, SchemeRefusal};
use latchkey_plugin_sdk::Config;
use latchkey_scheme_jwt::verify::{self, Policy};

/// Two schemes, with the shapes the model treats differently: declared
/// fields (`api-key`) and open secret fields (`custom-headers`). The
/// schemes' own checks accept everything: what is fuzzed is the host's.
struct Catalogue;

fn field(name: &str, required: bool) -> FieldSpec {
    FieldSpec { name: name.into(), required, description: String::new() }
}

impl SchemeCatalogue for Catalogue {
    fn fields(&self, scheme: &str) -> Result<SchemeFields, SchemeRefusal> {
        let (config_fields, secret_fields, open) = match scheme {
            "api-key" => (vec![field("header", false), field("prefix", false)], vec![field("key", true)], false),
            "custom-headers" => (vec![], vec![], true),
            _ => {
                return Err(SchemeRefusal { code: ErrorCode::UnknownScheme, message: format!("no scheme {scheme:?}") });
            }
        };
        Ok(SchemeFields { name: scheme.into(), config_fields, secret_fields, open_secret_fields: open })
    }

    fn validate_config(&self, _: &str, _: &[(String, String)]) -> Result<(), SchemeRefusal> {
        Ok(())
    }

    fn validate_secret(&self, _: &str, _: &[(String, String)], _: &str, _: &Secret) -> Result<(), SchemeRefusal> {
        Ok(())
    }
}

/// A stored credential for updates to apply to.
fn current() -> model::Credential {
    let mut raw = RawCredential::new("openai", "api-key");
    raw.secrets.insert("key".into(), Secret::new("sk-test-0123456789"));
    raw.destinations = vec!["api.openai.com".into()];
    let v = model::validate_new(&Catalogue, raw).expect("the base credential is valid");
    v.value.into_credential(time::OffsetDateTime::UNIX_EPOCH).0
}

/// Target `http_json`: `data` as every JSON body.
pub fn check(data: &[u8]) {
    let b = FuzzBodies::parse(data, "default");
    if let Some(raw) = b.create
        && let Ok(v) = model::validate_new(&Catalogue, raw)
    {
        let c = v.value;
        assert!(model::CredentialName::parse(c.name().as_str()).is_ok(), "a stored name does not parse again");
        for d in c.destinations() {
            assert!(model::Destination::parse(&d.to_string()).is_ok(), "destination {d} does not parse again");
        }
        for (k, v) in c.config() {
            assert!(!k.is_empty() && !v.contains(['\r', '\n', '\0']), "config {k:?} holds a control character");
        }
    }
    let cur = current();
    for raw in [
        b.update,
        b.rotate.map(|(secrets, verbatim)| model::RawUpdate { secrets: Some(secrets), verbatim, ..Default::default() }),
    ]
    .into_iter()
    .flatten()
    {
        let stored = || Ok::<_, ModelError>(BTreeMap::from([("key".to_string(), Secret::new("sk-test-0123456789"))]));
        if let Ok(u) = model::validate_update(&Catalogue, &cur, raw, stored) {
            let mut c = cur.clone();
            let _ = c.apply_update(&u.value, time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1));
        }
    }
    if let Some(Ok(p)) = b.idp
        && p.check().is_ok()
    {
        // The vault stores only providers the verifier can run: their
        // policy parses, and an inline JWKS is one the plugin reads.
        let policy = Policy::parse(&Config::new(p.policy()));
        assert!(policy.is_ok(), "a stored identity provider's policy is refused by the verifier: {:?}", p.policy());
        if let JwksSource::Static(doc) = &p.jwks {
            assert!(verify::jwks_kids(doc).is_ok(), "a stored inline JWKS is refused by the verifier: {doc}");
        }
    }
    if let Some(Ok(ttl)) = b.token_ttl {
        let _ = ttl.whole_seconds();
    }
    let _ = (b.attach, b.route, b.agent, b.bind_jwt);
    for reads_body in [false, true] {
        let Ok((_credential, input)) = fuzzing::sign_body(data, reads_body, 1 << 20) else { continue };
        assert!(input.body.len() <= 1 << 20);
        let Ok(prepared) = latchkey::sign::prepare(&input) else { continue };
        let r = prepared.request();
        assert!(r.url.bytes().all(|b| b > 0x20 && b < 0x7f), "URL {:?} passed", r.url);
        assert!(url::Url::parse(&r.url).is_ok());
        for (name, value) in &r.headers {
            assert!(latchkey::plugin::edits::is_token(name), "header name {name:?} passed");
            assert!(!value.contains(['\r', '\n', '\0']), "header value with CR, LF or NUL passed");
        }
        if let Some(h) = &r.body_sha256 {
            assert!(h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
    }
    if let Some((token, _org, _name)) = fuzzing::register_body(data) {
        let _ = check_token_shape(&token, "lk_reg_", "registration token");
    }
}
