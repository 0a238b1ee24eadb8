//! The guest SDK for Latchkey auth-scheme plugins: WIT bindings, a [`Scheme`]
//! trait to implement, and the helpers every request signer needs: the
//! canonical-request builder of SigV4, ACS3 and TC3 ([`canonical`]), URL and
//! query handling without normalisation or loss ([`http`]), encodings
//! ([`encoding`]) and time formats ([`time`]).
//!
//! A scheme is a type implementing [`Scheme`], exported with [`export_scheme!`]:
//!
//! ```ignore
//! use latchkey_plugin_sdk::*;
//!
//! struct Hello;
//! impl Scheme for Hello {
//!     fn describe() -> SchemeInfo { /* name, fields, writable headers */ }
//!     fn apply(call: &Call) -> Result<Vec<Edit>, Error> {
//!         Ok(vec![Edit::set_header("x-hello", [Part::text("world")])])
//!     }
//! }
//! export_scheme!(Hello);
//! ```

pub mod canonical;
pub mod encoding;
pub mod http;
pub mod time;

/// Generated bindings for the `scheme-plugin` world: the imports every
/// plugin may use and the `scheme` export. Plugins rarely need these
/// directly: the SDK re-exports the types and wraps the host calls.
/// [`export_scheme!`] exports this world, so a scheme that verifies nothing
/// has no `verifier` export (the host finds verifiers by that export).
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "scheme-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_scheme_plugin",
        default_bindings_module: "latchkey_plugin_sdk::bindings",
    });
}

pub use bindings::latchkey::plugin::credentials::Credential;
pub use bindings::latchkey::plugin::crypto::SignatureAlgorithm;
pub use bindings::latchkey::plugin::log::Level;
pub use bindings::latchkey::plugin::types::{
    CallContext, Datetime, Edit, Error, Exposure, FieldInfo, Part, Request, SchemeInfo, SecretFieldInfo, Segment,
};
pub use encoding::{hex, uri_encode};
pub use http::{Config, Url};

use bindings::latchkey::plugin as host;

/// One call of [`Scheme::apply`] or [`Scheme::explain`]: the request, the
/// credential handle, the configuration and the signing time.
pub struct Call<'a> {
    /// The signing time given by the host. Plugins have no other clock.
    pub now: Datetime,
    /// The credential's non-secret configuration.
    pub config: Config,
    /// The credential bound to this call.
    pub credential: &'a Credential,
    /// The HTTP method, upper case.
    pub method: String,
    /// The target URL, split but not normalised.
    pub url: Url,
    /// The request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Lowercase hex SHA-256 of the body, when the host hashed it.
    pub body_sha256: Option<String>,
}

impl<'a> Call<'a> {
    /// Build a call from what the host passed in.
    pub fn new(ctx: CallContext, credential: &'a Credential, req: Request) -> Result<Self, Error> {
        let url = Url::parse(&req.url)?;
        Ok(Call {
            now: ctx.now,
            config: Config::new(ctx.config),
            credential,
            method: req.method,
            url,
            headers: req.headers,
            body_sha256: req.body_sha256,
        })
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the credential has this secret field.
    pub fn has_secret(&self, field: &str) -> bool {
        self.credential.has_secret(field)
    }

    /// Fail with `missing-secret` unless the credential has this field.
    pub fn require_secret(&self, field: &str) -> Result<(), Error> {
        if self.has_secret(field) { Ok(()) } else { Err(Error::MissingSecret(field.to_string())) }
    }

    /// HMAC-SHA256 in the host, keyed by `key_prefix || secret(field)` and then
    /// derived through `derivation` (see `crypto.hmac-sha256` in the WIT).
    pub fn hmac_sha256(
        &self,
        field: &str,
        key_prefix: &[u8],
        derivation: &[&[u8]],
        message: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let chain: Vec<Vec<u8>> = derivation.iter().map(|d| d.to_vec()).collect();
        host::crypto::hmac_sha256(self.credential, field, key_prefix, &chain, message)
    }

    /// Sign with the private key or HMAC secret in `field`, in the host.
    pub fn sign(&self, field: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, Error> {
        host::crypto::sign(self.credential, field, algorithm, message)
    }

    /// SHA-256 over parts that may name secret fields (spliced in by the host).
    pub fn sha256_parts(&self, parts: &[Part]) -> Result<Vec<u8>, Error> {
        host::crypto::sha256_parts(self.credential, parts)
    }

    /// [`Call::sha256_parts`] as lower-case hex: the hash of a canonical
    /// request ([`canonical::Canonical::parts`]) as a string to sign has it.
    pub fn sha256_hex(&self, parts: &[Part]) -> Result<String, Error> {
        Ok(hex(&self.sha256_parts(parts)?))
    }

    /// The raw value of a secret field. Only for schemes that must put a secret
    /// on the wire as it is (API key, Basic): the host refuses to load any
    /// other plugin that uses it.
    pub fn reveal(&self, field: &str) -> Result<String, Error> {
        host::secrets::reveal(self.credential, field)
    }

    /// A value this plugin cached for this credential, unless expired.
    pub fn cache_get(&self, key: &str) -> Option<String> {
        host::cache::get(self.credential, key)
    }

    /// Cache a value for this credential until `expires`.
    pub fn cache_set(&self, key: &str, value: &str, expires: Datetime) {
        host::cache::set(self.credential, key, value, expires)
    }
}

/// Verify `signature` over `message` with one public JWK, in the host. Only
/// asymmetric algorithms verify: a JWKS is public, so the host refuses HS256.
pub fn verify_signature(
    algorithm: SignatureAlgorithm,
    jwk: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, Error> {
    host::crypto::verify(algorithm, jwk, message, signature)
}

/// SHA-256 computed by the host (native code, faster than hashing in Wasm).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    host::crypto::sha256(data)
}

/// `n` (at most 1024) cryptographically secure random bytes from the host.
pub fn random_bytes(n: u32) -> Vec<u8> {
    host::random::bytes(n)
}

/// Write a line into the host's log. Never log secret values.
pub fn log(level: Level, message: &str) {
    host::log::log(level, message)
}

impl Part {
    /// A literal piece of text.
    pub fn text(s: impl Into<String>) -> Part {
        Part::Text(s.into())
    }

    /// A reference to a secret field, replaced by its value in the host.
    pub fn secret(field: impl Into<String>) -> Part {
        Part::Secret(field.into())
    }

    /// Standard base64 of the segments, computed in the host (Basic's
    /// `base64(user ":" password)` without reading either).
    pub fn base64(segments: impl IntoIterator<Item = Segment>) -> Part {
        Part::Base64(segments.into_iter().collect())
    }
}

impl Segment {
    /// A literal piece of text.
    pub fn text(s: impl Into<String>) -> Segment {
        Segment::Text(s.into())
    }

    /// A reference to a secret field.
    pub fn secret(field: impl Into<String>) -> Segment {
        Segment::Secret(field.into())
    }
}

impl Edit {
    /// Set a header (replacing any of the same name).
    pub fn set_header(name: impl Into<String>, value: impl IntoIterator<Item = Part>) -> Edit {
        Edit::SetHeader((name.into(), value.into_iter().collect()))
    }

    /// Set a header to a literal value.
    pub fn set_header_text(name: impl Into<String>, value: impl Into<String>) -> Edit {
        Edit::set_header(name, [Part::text(value)])
    }

    /// Append a query parameter (given unencoded).
    pub fn append_query(name: impl Into<String>, value: impl IntoIterator<Item = Part>) -> Edit {
        Edit::AppendQuery((name.into(), value.into_iter().collect()))
    }
}

impl FieldInfo {
    /// A required field.
    pub fn required(name: &str, description: &str) -> FieldInfo {
        FieldInfo { name: name.into(), description: description.into(), required: true }
    }

    /// An optional field.
    pub fn optional(name: &str, description: &str) -> FieldInfo {
        FieldInfo { name: name.into(), description: description.into(), required: false }
    }
}

impl SecretFieldInfo {
    /// A required secret field with its exposure.
    pub fn required(name: &str, description: &str, exposure: Exposure) -> SecretFieldInfo {
        SecretFieldInfo { name: name.into(), description: description.into(), required: true, exposure }
    }

    /// An optional secret field with its exposure.
    pub fn optional(name: &str, description: &str, exposure: Exposure) -> SecretFieldInfo {
        SecretFieldInfo { name: name.into(), description: description.into(), required: false, exposure }
    }
}

/// An auth scheme. Implement it and export it with [`export_scheme!`].
///
/// Implementations keep no state between calls: the host runs every call in a
/// fresh instance.
pub trait Scheme {
    /// Name, version, fields (secret ones with their exposure), writable
    /// headers, and whether `apply` needs the body hash or the request at all.
    fn describe() -> SchemeInfo;

    /// Check a configuration before a credential is stored. The default
    /// accepts only the declared config fields, and requires the required ones.
    fn validate_config(config: &Config) -> Result<(), Error> {
        let info = Self::describe();
        config.check_fields(&info.config_fields)
    }

    /// Check one secret value before it is stored. Never echo the value.
    fn validate_secret(_config: &Config, _field: &str, _value: &str) -> Result<(), Error> {
        Ok(())
    }

    /// Compute the edits that authenticate the request.
    fn apply(call: &Call) -> Result<Vec<Edit>, Error>;

    /// Describe what `apply` signs (canonical request, string to sign). Never
    /// include a secret.
    fn explain(_call: &Call) -> Result<String, Error> {
        Ok(String::new())
    }
}

/// A scheme that also verifies incoming tokens (agent identity), exported
/// with [`export_verifier!`].
pub trait Verifier {
    /// Verify `token` against `jwks` (a JWKS document fetched by the host)
    /// under the policy in `config`, at time `now`. Returns the claims as a
    /// JSON object text, or [`Error::TokenRejected`] saying why.
    fn verify(now: Datetime, config: &Config, jwks: &str, token: &str) -> Result<String, Error>;
}

/// The `scheme` interface's `Guest` impl for a [`Scheme`], in one bindings
/// module. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __impl_scheme_guest {
    ($scheme:ty, $export:ident, [$($bindings:tt)*]) => {
        impl $($bindings)*::exports::latchkey::plugin::scheme::Guest for $export {
            fn describe() -> $crate::SchemeInfo {
                <$scheme as $crate::Scheme>::describe()
            }

            fn validate_config(config: ::std::vec::Vec<(String, String)>) -> Result<(), $crate::Error> {
                <$scheme as $crate::Scheme>::validate_config(&$crate::Config::new(config))
            }

            fn validate_secret(
                config: ::std::vec::Vec<(String, String)>,
                field: String,
                value: String,
            ) -> Result<(), $crate::Error> {
                <$scheme as $crate::Scheme>::validate_secret(&$crate::Config::new(config), &field, &value)
            }

            fn apply(
                ctx: $crate::CallContext,
                cred: &$crate::Credential,
                req: $crate::Request,
            ) -> Result<::std::vec::Vec<$crate::Edit>, $crate::Error> {
                let call = $crate::Call::new(ctx, cred, req)?;
                <$scheme as $crate::Scheme>::apply(&call)
            }

            fn explain(
                ctx: $crate::CallContext,
                cred: &$crate::Credential,
                req: $crate::Request,
            ) -> Result<String, $crate::Error> {
                let call = $crate::Call::new(ctx, cred, req)?;
                <$scheme as $crate::Scheme>::explain(&call)
            }
        }
    };
}

/// Export a [`Scheme`] implementation as the component's `scheme` interface
/// (the `scheme-plugin` world: no `verifier` export).
#[macro_export]
macro_rules! export_scheme {
    ($scheme:ty) => {
        #[allow(dead_code)]
        struct __LatchkeyExport;

        $crate::__impl_scheme_guest!($scheme, __LatchkeyExport, [$crate::bindings]);

        // The export names contain `:`, which native linkers refuse; the
        // export exists only in the wasm build, so plugin crates can still run
        // their unit tests natively.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_scheme_plugin!(__LatchkeyExport with_types_in $crate::bindings);
    };
}

/// Export a type implementing both [`Scheme`] and [`Verifier`] (the
/// `verifier-plugin` world): the component's `verifier` export runs
/// [`Verifier::verify`], and the host finds it by that export.
///
/// The crate generates the world's bindings itself, reusing the SDK's types
/// for every imported interface (one `generate!` per crate may define the
/// world's export macros), and names that module here:
///
/// ```ignore
/// mod verifier_bindings {
///     wit_bindgen::generate!({
///         path: "wit", // the WIT of latchkey:plugin@0.2.0
///         world: "verifier-plugin",
///         with: {
///             "latchkey:plugin/types@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::types,
///             "latchkey:plugin/credentials@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::credentials,
///             "latchkey:plugin/crypto@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::crypto,
///             "latchkey:plugin/secrets@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::secrets,
///             "latchkey:plugin/cache@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::cache,
///             "latchkey:plugin/log@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::log,
///             "latchkey:plugin/random@0.2.0": latchkey_plugin_sdk::bindings::latchkey::plugin::random,
///         },
///     });
/// }
/// latchkey_plugin_sdk::export_verifier!(MyScheme, verifier_bindings);
/// ```
#[macro_export]
macro_rules! export_verifier {
    ($scheme:ty, $($bindings:ident)::+) => {
        #[allow(dead_code)]
        struct __LatchkeyExport;

        $crate::__impl_scheme_guest!($scheme, __LatchkeyExport, [$($bindings)::+]);

        impl $($bindings)::+::exports::latchkey::plugin::verifier::Guest for __LatchkeyExport {
            fn verify(ctx: $crate::CallContext, jwks: String, token: String) -> Result<String, $crate::Error> {
                <$scheme as $crate::Verifier>::verify(ctx.now, &$crate::Config::new(ctx.config), &jwks, &token)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $($bindings)::+::export!(__LatchkeyExport with_types_in $($bindings)::+);
    };
}
