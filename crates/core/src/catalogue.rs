//! The scheme catalogue: the narrow view of the plugin runtime that storage
//! needs to check a credential (a scheme's declared fields, and the scheme's
//! own verdict on a config or a secret value). The runtime implements it;
//! storage never sees a plugin, an engine or an instance.

use crate::error::ErrorCode;
use crate::secret::Secret;

/// One declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field name.
    pub name: String,
    /// Whether a credential must give it.
    pub required: bool,
    /// The scheme's description.
    pub description: String,
}

/// What a scheme declares about its credentials' fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeFields {
    /// The scheme name.
    pub name: String,
    /// Its config fields.
    pub config_fields: Vec<FieldSpec>,
    /// Its secret fields.
    pub secret_fields: Vec<FieldSpec>,
    /// Secret fields of any name are accepted (custom headers).
    pub open_secret_fields: bool,
}

/// A refusal by the catalogue or the scheme: unknown scheme, invalid config
/// or secret by the scheme's rules, a failed plugin call. The message is
/// the scheme's, escaped and capped by the runtime; storage scrubs the
/// values it passed from it before showing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SchemeRefusal {
    /// The stable code.
    pub code: ErrorCode,
    /// What the scheme or runtime said.
    pub message: String,
}

/// The schemes storage can validate credentials against.
pub trait SchemeCatalogue: Send + Sync {
    /// The declared fields of `scheme`; `unknown_scheme` when there is none.
    fn fields(&self, scheme: &str) -> Result<SchemeFields, SchemeRefusal>;

    /// The scheme's own check of a config.
    fn validate_config(&self, scheme: &str, config: &[(String, String)]) -> Result<(), SchemeRefusal>;

    /// The scheme's own check of one secret value under a config.
    fn validate_secret(
        &self,
        scheme: &str,
        config: &[(String, String)],
        field: &str,
        value: &Secret,
    ) -> Result<(), SchemeRefusal>;
}
