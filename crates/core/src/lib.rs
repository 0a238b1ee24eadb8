//! What every Latchkey crate shares: the stable error codes, the secret type, and the scheme catalogue storage validates with.

pub mod catalogue;
pub mod error;
pub mod secret;
pub mod text;

pub use catalogue::{FieldSpec, SchemeCatalogue, SchemeFields, SchemeRefusal};
pub use error::ErrorCode;
pub use secret::Secret;
