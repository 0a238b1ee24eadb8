//! The `jwt` scheme: a JWT minted for each request (HS256, RS256, ES256 or
//! EdDSA), signed in the host with the credential's `key`, cached until near
//! its expiry, and sent in a header (default `Authorization: Bearer <jwt>`).
//!
//! The plugin never reads the key: it builds the signing input and asks the
//! host to sign it under one pinned algorithm.
//!
//! The same component verifies incoming JWTs (agent identity, the `verifier`
//! export, [`verify`]): the host fetches the issuer's JWKS and passes it in
//! with the issuer's policy; signatures are checked by the host's
//! `crypto.verify` under the pinned algorithm.

pub mod b64;
pub mod jose;
pub mod key;
pub mod mint;
pub mod settings;
pub mod verify;

use latchkey_plugin_sdk::encoding::base64url;
use latchkey_plugin_sdk::*;

use mint::CacheEntry;
use settings::Settings;

/// The secret field holding the HMAC secret or PEM private key.
const KEY: &str = "key";
/// Random bytes in a generated `jti`: 128 bits, so tokens never share one.
const JTI_BYTES: u32 = 16;

struct Jwt;

impl Scheme for Jwt {
    fn describe() -> SchemeInfo {
        SchemeInfo {
            name: "jwt".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A freshly minted JWT (HS256, RS256, ES256 or EdDSA) in a header, cached until near expiry"
                .into(),
            config_fields: settings::config_fields(),
            secret_fields: vec![SecretFieldInfo::required(
                KEY,
                "For HS256 an HMAC secret of at least 32 bytes; otherwise a PEM private key \
                 (PKCS#8, PKCS#1 for RSA of 2048+ bits, or SEC1 for EC P-256)",
                Exposure::HostOnly,
            )],
            // The header name is configurable, so no fixed list can name it;
            // the host still refuses its deny-list (`Host`, hop-by-hop,
            // `Proxy-*`, `X-Forwarded-*`, framing headers) for every scheme.
            writable_headers: vec!["*".into()],
            open_secret_fields: None,
            reads_body: false,
            // A minted token depends on the time (its `iat` and `exp`).
            request_independent: false,
        }
    }

    fn validate_config(config: &Config) -> Result<(), Error> {
        Settings::parse(config).map(|_| ())
    }

    fn validate_secret(config: &Config, field: &str, value: &str) -> Result<(), Error> {
        if field != KEY {
            return Err(Error::InvalidSecret(format!("unknown secret field `{field}` (known: {KEY})")));
        }
        let settings = Settings::parse(config)?;
        key::check(settings.alg, value).map_err(Error::InvalidSecret)
    }

    fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
        let s = Settings::parse(&call.config)?;
        call.require_secret(KEY)?;
        let entry = match cached(call, &s) {
            Some(entry) => entry,
            None => {
                let entry = mint_token(call, &s)?;
                call.cache_set(&cache_key(&s), &entry.encode(), entry.expires(s.reuse_margin()));
                entry
            }
        };
        Ok(vec![Edit::set_header(&s.header, [Part::text(format!("{}{}", s.prefix, entry.token))])])
    }

    fn explain(call: &Call) -> Result<String, Error> {
        let s = Settings::parse(&call.config)?;
        let margin = s.reuse_margin();
        // A cached token is what `apply` sends, so when there is one it is
        // what is shown. Otherwise this is the token `apply` would mint now,
        // except for a random `jti`, which `apply` draws afresh.
        let (source, header, claims, input, exp) = match cached(call, &s) {
            Some(entry) => {
                let d = jose::decode_compact(&entry.token).map_err(|e| Error::Internal(Some(e)))?;
                let input = entry.token.rsplit_once('.').map(|(i, _)| i.to_string()).unwrap_or_default();
                (format!("cached, minted at {}", entry.iat), d.header, d.claims, input, entry.exp)
            }
            None => {
                let (jti, note) = match &s.jti {
                    Some(j) => (j.clone(), "fixed `jti` from the config"),
                    None => (random_jti(), "`jti` is random per token; this one is illustrative"),
                };
                let u = mint::unsigned(&s, call.now, &jti)?;
                (format!("not cached, minted at {} ({note})", u.iat), u.header, u.claims, u.signing_input, u.exp)
            }
        };
        Ok(format!(
            "token: {source}, expires at {exp}, reused until {}\n\
             JOSE header: {header}\n\
             claims: {claims}\n\
             signing input: {input}\n\
             signature: {} computed by the host with secret field `{KEY}`\n\
             header: {}: {}<jwt>\n",
            exp - margin,
            s.alg.name(),
            s.header,
            s.prefix,
        ))
    }
}

/// The cache entry name: a hash of everything that shapes the token (hashed
/// because extra claims can be long and the host caps keys at 512 bytes).
fn cache_key(s: &Settings) -> String {
    format!("token:{}", hex(&sha256(s.cache_material().as_bytes())))
}

/// The cached token for these settings, if it may still be handed out.
fn cached(call: &Call, s: &Settings) -> Option<CacheEntry> {
    call.cache_get(&cache_key(s))
        .as_deref()
        .and_then(CacheEntry::decode)
        .filter(|e| e.usable(call.now, s.reuse_margin()))
}

fn random_jti() -> String {
    base64url(&random_bytes(JTI_BYTES))
}

/// Mint and sign a new token in the host.
fn mint_token(call: &Call, s: &Settings) -> Result<CacheEntry, Error> {
    let jti = s.jti.clone().unwrap_or_else(random_jti);
    let u = mint::unsigned(s, call.now, &jti)?;
    let signature = call.sign(KEY, s.alg.host_algorithm(), u.signing_input.as_bytes())?;
    if !s.alg.signature_len_ok(signature.len()) {
        // An ES256 signature in DER rather than `r || s`, say: a token no
        // verifier would accept, so it is not sent.
        return Err(Error::Internal(Some(format!(
            "the host returned a {}-byte {} signature",
            signature.len(),
            s.alg.name()
        ))));
    }
    Ok(CacheEntry { iat: u.iat, exp: u.exp, token: jose::compact(&u.signing_input, &signature) })
}

impl Verifier for Jwt {
    fn verify(now: Datetime, config: &Config, jwks: &str, token: &str) -> Result<String, Error> {
        let policy = verify::Policy::parse(config)?;
        let claims = verify::verify(&policy, jwks, token, now.seconds, |alg, jwk, input, sig| {
            verify_signature(alg.host_algorithm(), jwk, input, sig)
        })?;
        Ok(serde_json::Value::Object(claims).to_string())
    }
}

/// Bindings for the `verifier-plugin` world, on the SDK's types.
#[allow(missing_docs)]
mod verifier_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "verifier-plugin",
        with: {
            "latchkey:plugin/types@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::types,
            "latchkey:plugin/credentials@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::credentials,
            "latchkey:plugin/crypto@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::crypto,
            "latchkey:plugin/secrets@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::secrets,
            "latchkey:plugin/cache@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::cache,
            "latchkey:plugin/log@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::log,
            "latchkey:plugin/random@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::random,
        },
    });
}

export_verifier!(Jwt, verifier_bindings);
