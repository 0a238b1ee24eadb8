//! Envelope encryption of a credential's secret fields, and the master
//! keyring that protects them.
//!
//! A credential's secret fields are sealed into one opaque, versioned blob
//! that the storage layer keeps in a single column next to the credential
//! row. This module does no storage and no network I/O: it computes blobs,
//! and reads a key file or the environment only when asked to load a key.
//!
//! # Envelope
//!
//! [`seal`] draws a fresh random 256-bit data key (DEK) on every call, so a
//! credential gets a new DEK every time its secret changes. The encoded secret
//! fields are encrypted under the DEK with AES-256-GCM and a random 96-bit
//! nonce; the DEK is then wrapped (encrypted) under the keyring's current
//! master key with AES-256-GCM and its own random nonce. [`open`] reverses
//! both steps and returns every field or an error, never a partial result.
//! [`rewrap`] re-wraps the DEK under the current master key without touching
//! the encrypted fields, which is how the master key rotates.
//!
//! # Blob format, version 1
//!
//! All integers are big-endian. `n` is the length of the encoded fields.
//!
//! | offset   | length | content                                            |
//! |----------|--------|----------------------------------------------------|
//! | 0        | 3      | magic `LKV`                                        |
//! | 3        | 1      | format version, `1`                                |
//! | 4        | 4      | master key term (u32, never 0)                     |
//! | 8        | 12     | nonce of the DEK wrap                              |
//! | 20       | 32     | wrapped DEK (AES-256-GCM ciphertext)               |
//! | 52       | 16     | tag of the DEK wrap                                |
//! | 68       | 12     | nonce of the data encryption                       |
//! | 80       | n      | encrypted secret fields                            |
//! | 80 + n   | 16     | tag of the data encryption                         |
//!
//! A blob is therefore [`BLOB_OVERHEAD`] (96) bytes plus the encoded fields,
//! and at most [`MAX_BLOB_LEN`]. The data ciphertext runs to the tag at the
//! end, so bytes appended to a blob shift the tag and fail authentication.
//!
//! ## Associated data
//!
//! Both encryptions bind the blob to its credential through associated data
//! ([`CredentialAad`]). Fields are length-prefixed (`u32` length, then the
//! bytes) after a domain-separation label, so no two different contexts
//! encode to the same bytes and a wrap can never be mistaken for a data
//! encryption:
//!
//! ```text
//! wrap AAD = lp("latchkey/vault/v1/wrap-dek")      || lp(org) || lp(credential_id) || term (u32)
//! data AAD = lp("latchkey/vault/v1/secret-fields") || lp(org) || lp(credential_id) || secret_version (u64)
//! lp(x)    = len(x) (u32) || x
//! ```
//!
//! The data AAD leaves the term out on purpose: rotation re-wraps the DEK
//! under a new term without re-encrypting the data.
//!
//! ## Encoded secret fields (the plaintext)
//!
//! ```text
//! count (u32) || count × ( lp(name) || lp(value) )
//! ```
//!
//! Names are non-empty UTF-8 of at most [`MAX_FIELD_NAME_LEN`] bytes, in
//! strictly increasing byte order (the order of a `BTreeMap<String, _>`, so
//! one map has exactly one encoding); values are UTF-8. The encoding is at
//! most [`MAX_SECRET_BYTES`] long. The plaintext only ever lives in
//! [`Zeroizing`] buffers and [`Secret`] values.
//!
//! # Master keys and the keyring
//!
//! A [`MasterKey`] is 32 random bytes, written as standard base64 (44
//! characters). A [`Keyring`] holds master keys by term (`u32`, from 1) and
//! names one current term, used for every new wrap. Older terms stay in the
//! keyring until every blob has been re-wrapped off them.
//!
//! [`Keyring::from_env`] reads two variables:
//!
//! - `LATCHKEY_MASTER_KEY` ([`MASTER_KEY_ENV`]): the current key, as `BASE64`
//!   (term 1) or `TERM:BASE64`.
//! - `LATCHKEY_KEYRING_FILE` ([`KEYRING_FILE_ENV`]): the path of a keyring
//!   file, which must not be accessible by group or others.
//!
//! A keyring file holds one entry per line; surrounding whitespace is ignored:
//!
//! ```text
//! # Lines starting with '#' and blank lines are ignored.
//! 1:BASE64_KEY_OF_TERM_1
//! 2:BASE64_KEY_OF_TERM_2
//! current = 2
//! ```
//!
//! Without a `current` line the highest term is current; with
//! `LATCHKEY_MASTER_KEY` set, its term is current. A file holding a single
//! bare `BASE64` line (what [`MasterKey::create_dev_key_file`] writes) is a
//! keyring with that key as term 1.
//!
//! # Threats answered (see THREATS.md, "Vault, crypto, storage")
//!
//! 1. *One flipped bit.* Both layers are AES-GCM, so any change to the
//!    wrapped DEK, the ciphertext or a tag fails with
//!    [`VaultCryptoError::Integrity`]. The term is bound into the wrap AAD and
//!    selects the key, so a flipped term fails as `Integrity` when the
//!    keyring holds the resulting term and as `UnknownTerm` when it does not;
//!    the magic and version bytes fail as `BadBlob` and `UnsupportedVersion`.
//!    Nothing is returned before both tags verify.
//! 2. *Org A's ciphertext on org B's row.* The AAD binds the organisation
//!    and the credential id on both layers, the term on the wrap and the
//!    secret version on the data, so a copied or replayed blob fails.
//! 3. *Truncated, oversized, unknown version or term.* Lengths, magic,
//!    version and term are checked before any cryptography, each with its
//!    own typed error; the decoder never indexes past a checked length.
//! 4. *Rotation killed half-way.* [`rewrap`] returns a complete new blob that
//!    the storage layer writes in one statement, so every row always holds
//!    either its old blob (old term, still in the keyring) or its new one.
//!    New seals use the current term. [`blob_term`] lets the rotation job
//!    count the rows still on an old term before that term is dropped.
//! 5. *A replica sees a newer term.* `UnknownTerm(term)` tells the caller to
//!    reload its keyring and retry once, instead of failing for good.
//! 6. *Nonce budget.* Each DEK encrypts exactly one message, so its random
//!    nonce can never repeat under it. A master key performs one wrap per
//!    seal or rewrap, so a term stays far below 2^32 random-nonce encryptions
//!    unless it wraps billions of secret changes; rotate long before that.
//! 7. *Wrong or missing master key.* Loading fails with `MasterKeyMissing`,
//!    `MasterKeyInvalid`, `KeyFile` or `KeyringInvalid`; a wrong key for a
//!    term fails every open with `Integrity` at the key unwrap. No error
//!    quotes key material or plaintext.
//! 8. *Crash during a write.* Durability belongs to the storage layer; this
//!    module gives it a single self-describing value to write atomically.
//! 10. *Canary secrets.* [`MasterKey`] and [`Keyring`] print no key bytes,
//!     secret values are [`Secret`]s, and error messages are built from
//!     fixed text, lengths, terms and paths only.
//!
//! Two copies of key material are outside this module's control: `ring` does
//! not zero its expanded AES key schedules when they are dropped, and a key
//! passed through `LATCHKEY_MASTER_KEY` also stays in the process
//! environment. Prefer a keyring file in production.

use latchkey_core::error::ErrorCode;
use std::collections::BTreeMap;
use std::env::VarError;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use latchkey_core::secret::Secret;

/// The environment variable holding the current master key, as `BASE64`
/// (term 1) or `TERM:BASE64`.
pub const MASTER_KEY_ENV: &str = "LATCHKEY_MASTER_KEY";

/// The environment variable holding the path of a keyring file.
pub const KEYRING_FILE_ENV: &str = "LATCHKEY_KEYRING_FILE";

/// The length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// The blob format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// The bytes a blob adds to its encoded secret fields.
pub const BLOB_OVERHEAD: usize = DATA_AT + TAG_LEN;

/// The largest encoded secret fields of one credential, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The largest blob this build writes or accepts.
pub const MAX_BLOB_LEN: usize = BLOB_OVERHEAD + MAX_SECRET_BYTES;

/// The most secret fields one credential may hold.
pub const MAX_FIELDS: usize = 256;

/// The longest secret field name, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 256;

/// The longest organisation or credential id bound into a blob, in bytes.
pub const MAX_ID_LEN: usize = 1024;

const MAGIC: [u8; 3] = *b"LKV";
const TAG_LEN: usize = 16;
const DEK_LEN: usize = 32;
const VERSION_AT: usize = MAGIC.len();
const TERM_AT: usize = VERSION_AT + 1;
const WRAP_NONCE_AT: usize = TERM_AT + 4;
const WRAPPED_DEK_AT: usize = WRAP_NONCE_AT + NONCE_LEN;
const DATA_NONCE_AT: usize = WRAPPED_DEK_AT + DEK_LEN + TAG_LEN;
const DATA_AT: usize = DATA_NONCE_AT + NONCE_LEN;

const WRAP_LABEL: &[u8] = b"latchkey/vault/v1/wrap-dek";
const DATA_LABEL: &[u8] = b"latchkey/vault/v1/secret-fields";

/// A key file is a few dozen bytes; the cap keeps a wrong path (a log, a
/// device) from being read into memory.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

const KEY_FILE_EXISTS: &str = "already exists; refusing to overwrite a master key";

/// Errors of the vault's cryptography and key loading. Messages never contain
/// key material or plaintext; [`VaultCryptoError::code`] gives a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultCryptoError {
    /// No master key is configured.
    #[error("no master key configured: set {MASTER_KEY_ENV} or {KEYRING_FILE_ENV}")]
    MasterKeyMissing,
    /// A master key is malformed; the reason says how, never what it was.
    #[error("master key invalid: {0}")]
    MasterKeyInvalid(String),
    /// A key or keyring file cannot be used (missing, unreadable, too open).
    #[error("master key file {}: {reason}", .path.display())]
    KeyFile {
        /// The file, as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A keyring is inconsistent: duplicate or conflicting terms, bad lines.
    #[error("keyring invalid: {0}")]
    KeyringInvalid(String),
    /// The bytes are not a well-formed blob of a version this build reads.
    #[error("not a usable vault blob: {0}")]
    BadBlob(&'static str),
    /// The blob was written by a format version this build does not read.
    #[error("vault blob format version {0} is not supported; this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u8),
    /// The blob was wrapped under a term the keyring does not hold. The
    /// caller should reload its keyring and retry once (THREATS case 5).
    #[error(
        "vault blob was sealed under master key term {0}, which the keyring does not hold; reload the keyring and retry once"
    )]
    UnknownTerm(u32),
    /// Authentication failed: the blob was altered, belongs to another
    /// credential, or the master key is wrong.
    #[error("{0}")]
    Integrity(IntegrityStage),
    /// The caller's input cannot be sealed or bound (too large, empty names).
    #[error("invalid vault input: {0}")]
    InvalidInput(String),
    /// The random number generator or the AES implementation failed.
    #[error("vault crypto failed: {0}")]
    Crypto(&'static str),
}

impl VaultCryptoError {
    /// A stable machine-readable code. The `master_key_*` and
    /// `keyring_invalid` codes are configuration problems (503 on a server).
    pub fn code(&self) -> ErrorCode {
        match self {
            VaultCryptoError::MasterKeyMissing => ErrorCode::MasterKeyMissing,
            VaultCryptoError::MasterKeyInvalid(_) => ErrorCode::MasterKeyInvalid,
            VaultCryptoError::KeyFile { .. } => ErrorCode::MasterKeyFile,
            VaultCryptoError::KeyringInvalid(_) => ErrorCode::KeyringInvalid,
            VaultCryptoError::BadBlob(_) => ErrorCode::VaultBadBlob,
            VaultCryptoError::UnsupportedVersion(_) => ErrorCode::VaultUnsupportedVersion,
            VaultCryptoError::UnknownTerm(_) => ErrorCode::VaultUnknownTerm,
            VaultCryptoError::Integrity(_) => ErrorCode::VaultIntegrity,
            VaultCryptoError::InvalidInput(_) => ErrorCode::VaultInvalidInput,
            VaultCryptoError::Crypto(_) => ErrorCode::VaultCryptoFailed,
        }
    }
}

/// Which layer of the envelope failed authentication. A failure at the key
/// unwrap on every row points at a wrong master key; a failure on the secret
/// fields alone points at a wrong secret version or altered data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityStage {
    /// Unwrapping the data key under the master key of the blob's term.
    KeyUnwrap,
    /// Decrypting the secret fields under the data key.
    SecretFields,
}

impl fmt::Display for IntegrityStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntegrityStage::KeyUnwrap => {
                "vault blob failed authentication while unwrapping its data key: it was altered, it belongs to \
                 another credential or organisation, or the master key for its term is wrong"
            }
            IntegrityStage::SecretFields => {
                "vault blob failed authentication while decrypting its secret fields: it was altered or belongs \
                 to another secret version"
            }
        })
    }
}

/// What a blob is bound to. The storage layer passes the same values to
/// [`seal`] and [`open`]; any difference fails authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialAad<'a> {
    /// The organisation owning the credential.
    pub org: &'a str,
    /// The credential's stable id (not its renameable name).
    pub credential_id: &'a str,
    /// Incremented by the storage layer on every change of the secret fields,
    /// so an older blob cannot be replayed onto the row.
    pub secret_version: u64,
}

impl CredentialAad<'_> {
    fn check(&self) -> Result<(), VaultCryptoError> {
        for (what, value) in [("organisation", self.org), ("credential id", self.credential_id)] {
            if value.is_empty() {
                return Err(VaultCryptoError::InvalidInput(format!("the {what} is empty")));
            }
            if value.len() > MAX_ID_LEN {
                return Err(VaultCryptoError::InvalidInput(format!("the {what} is longer than {MAX_ID_LEN} bytes")));
            }
        }
        Ok(())
    }

    fn wrap_aad(&self, term: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + WRAP_LABEL.len() + self.org.len() + self.credential_id.len());
        put_chunk(&mut out, WRAP_LABEL);
        put_chunk(&mut out, self.org.as_bytes());
        put_chunk(&mut out, self.credential_id.as_bytes());
        out.extend_from_slice(&term.to_be_bytes());
        out
    }

    fn data_aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + DATA_LABEL.len() + self.org.len() + self.credential_id.len());
        put_chunk(&mut out, DATA_LABEL);
        put_chunk(&mut out, self.org.as_bytes());
        put_chunk(&mut out, self.credential_id.as_bytes());
        out.extend_from_slice(&self.secret_version.to_be_bytes());
        out
    }
}

/// Append a `u32` length prefix and the bytes. Every caller has bounded the
/// length well below `u32::MAX` (labels, checked ids, capped payloads).
fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A 256-bit master key: zeroed on drop, never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl MasterKey {
    /// Parse standard base64 (44 characters, 32 bytes). Surrounding
    /// whitespace is ignored, because values copied from files and secret
    /// stores often end with a newline.
    pub fn from_base64(text: &str) -> Result<MasterKey, VaultCryptoError> {
        decode_master_key(text).map_err(VaultCryptoError::MasterKeyInvalid)
    }

    /// Read a file holding one base64 key and an optional trailing newline.
    /// On unix the file must not be accessible by group or others.
    pub fn from_file(path: impl AsRef<Path>) -> Result<MasterKey, VaultCryptoError> {
        let path = path.as_ref();
        let bytes = read_private_file(path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| VaultCryptoError::MasterKeyInvalid(format!("{}: is not UTF-8 text", path.display())))?;
        decode_master_key(text)
            .map_err(|reason| VaultCryptoError::MasterKeyInvalid(format!("{}: {reason}", path.display())))
    }

    /// A new key from the operating system's random number generator.
    pub fn generate() -> Result<MasterKey, VaultCryptoError> {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        SystemRandom::new().fill_bytes(&mut *key)?;
        Ok(MasterKey(key))
    }

    /// Create `path` holding a new random key (base64 and a newline), with
    /// mode 0600 on unix, and return the key. Refuses to overwrite anything.
    ///
    /// The key is written and synced to a private temporary file in the same
    /// directory, then hard-linked to `path`: the link either appears with the
    /// whole key or fails because `path` exists, so a crash never leaves a
    /// half-written key under the final name.
    pub fn create_dev_key_file(path: impl AsRef<Path>) -> Result<MasterKey, VaultCryptoError> {
        let path = path.as_ref();
        let fail = |reason: String| VaultCryptoError::KeyFile { path: path.to_owned(), reason };
        let name = path.file_name().ok_or_else(|| fail("has no file name".into()))?;
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        // A friendly early answer; the hard link below is what actually
        // guarantees that nothing is overwritten.
        if fs::symlink_metadata(path).is_ok() {
            return Err(fail(KEY_FILE_EXISTS.into()));
        }
        let key = MasterKey::generate()?;
        let mut suffix = [0u8; 8];
        SystemRandom::new().fill_bytes(&mut suffix)?;
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex::encode(suffix)));
        let mut file = new_private_file(&tmp)
            .map_err(|e| fail(format!("could not create a temporary file beside it: {}", io_reason(&e))))?;
        let linked = write_key(&mut file, &key).and_then(|()| fs::hard_link(&tmp, path));
        drop(file);
        if let Err(e) = fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove the temporary copy of a new master key");
        }
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(fail(KEY_FILE_EXISTS.into())),
            Err(e) => return Err(fail(format!("could not be created: {}", io_reason(&e)))),
        }
        sync_dir(dir).map_err(|e| fail(format!("was created but its directory could not be synced: {e}")))?;
        Ok(key)
    }

    /// The key as standard base64, for writing it where an operator asked.
    /// This is the only way to the key bytes outside this module; keep it
    /// easy to find in review.
    pub fn to_base64(&self) -> Zeroizing<String> {
        // A slice, not the array by value, so no unzeroed copy lands on the stack.
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    /// Compare two keys without an early exit. Both keys come from local
    /// configuration, so this is hygiene rather than a defence.
    fn same_as(&self, other: &MasterKey) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Decode a base64 master key, or say why not without quoting it (the
/// decoder's own errors name the offending character, so they are dropped).
fn decode_master_key(text: &str) -> Result<MasterKey, String> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err("is empty; expected 44 base64 characters (32 bytes)".into());
    }
    if text.len() > 64 {
        return Err(format!("is {} characters long; a master key is 44 base64 characters (32 bytes)", text.len()));
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    let len = STANDARD
        .decode_slice(text, &mut *buf)
        .map_err(|_| "is not standard base64 (A-Z, a-z, 0-9, '+', '/', padded with '=')".to_owned())?;
    if len != MASTER_KEY_LEN {
        return Err(format!("decodes to {len} bytes; a master key is exactly 32 bytes (44 base64 characters)"));
    }
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    key.copy_from_slice(&buf[..MASTER_KEY_LEN]);
    if key.iter().all(|&b| b == 0) {
        return Err("is all zero bytes: a placeholder, not a key".into());
    }
    Ok(MasterKey(key))
}

/// Parse a term: decimal digits only (no sign), from 1 to `u32::MAX`.
fn parse_term(text: &str) -> Result<u32, String> {
    let bad = || "a term must be a whole number from 1 to 4294967295".to_owned();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(term) => Ok(term),
    }
}

/// Master keys by term, and the current term used for new wraps.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, MasterKey>,
    current: u32,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("current", &self.current).field("terms", &self.keys.keys()).finish()
    }
}

impl Keyring {
    /// A keyring holding one key as term 1, current.
    pub fn single(key: MasterKey) -> Keyring {
        Keyring { keys: BTreeMap::from([(1, key)]), current: 1 }
    }

    /// A keyring holding one key under `term`, current.
    pub fn new(term: u32, key: MasterKey) -> Result<Keyring, VaultCryptoError> {
        check_term(term)?;
        Ok(Keyring { keys: BTreeMap::from([(term, key)]), current: term })
    }

    /// Add a key under `term` without changing the current term, so a new
    /// key can reach every replica before any replica writes with it. Adding
    /// the same key twice is a no-op; a different key under a held term is an
    /// error.
    pub fn add(&mut self, term: u32, key: MasterKey) -> Result<(), VaultCryptoError> {
        check_term(term)?;
        match self.keys.get(&term) {
            Some(held) if held.same_as(&key) => Ok(()),
            Some(_) => {
                Err(VaultCryptoError::KeyringInvalid(format!("term {term} is already held with a different key")))
            }
            None => {
                self.keys.insert(term, key);
                Ok(())
            }
        }
    }

    /// Make `term`, which the keyring must hold, the term of new wraps.
    pub fn set_current(&mut self, term: u32) -> Result<(), VaultCryptoError> {
        if !self.keys.contains_key(&term) {
            return Err(VaultCryptoError::KeyringInvalid(format!("term {term} is not in the keyring")));
        }
        self.current = term;
        Ok(())
    }

    /// A copy of this keyring whose current term is `term`.
    pub fn with_current(&self, term: u32) -> Result<Keyring, VaultCryptoError> {
        let mut ring = self.clone();
        ring.set_current(term)?;
        Ok(ring)
    }

    /// The current term: the one new wraps use.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Whether the keyring holds `term`.
    pub fn contains(&self, term: u32) -> bool {
        self.keys.contains_key(&term)
    }

    /// The terms held, in increasing order.
    pub fn terms(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// Parse the text of a keyring file (format in the module docs).
    pub fn parse(text: &str) -> Result<Keyring, VaultCryptoError> {
        let (keys, current) = parse_keyring_text(text).map_err(VaultCryptoError::KeyringInvalid)?;
        Ok(Keyring::from_parts(keys, current))
    }

    /// Read a keyring file. On unix it must not be accessible by group or
    /// others.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Keyring, VaultCryptoError> {
        let (keys, current) = read_keyring_file(path.as_ref())?;
        Ok(Keyring::from_parts(keys, current))
    }

    /// Build the keyring from a `LATCHKEY_MASTER_KEY` value and a keyring
    /// file, either of which may be absent. The environment's key is current
    /// and must agree with the file on its term and on any `current` line.
    pub fn load(master_key: Option<&str>, keyring_file: Option<&Path>) -> Result<Keyring, VaultCryptoError> {
        let ring = match (master_key, keyring_file) {
            (None, None) => return Err(VaultCryptoError::MasterKeyMissing),
            (None, Some(path)) => Keyring::from_file(path)?,
            (Some(value), file) => {
                let (term, key) = parse_env_value(value)?;
                let mut ring = Keyring::new(term, key)?;
                if let Some(path) = file {
                    let (keys, file_current) = read_keyring_file(path)?;
                    if let Some(named) = file_current
                        && named != term
                    {
                        return Err(VaultCryptoError::KeyringInvalid(format!(
                            "{MASTER_KEY_ENV} holds term {term} but {} says `current = {named}`; keep one of them",
                            path.display()
                        )));
                    }
                    for (file_term, key) in keys {
                        ring.add(file_term, key).map_err(|_| {
                            VaultCryptoError::KeyringInvalid(format!(
                                "{MASTER_KEY_ENV} and {} hold different keys for term {file_term}",
                                path.display()
                            ))
                        })?;
                    }
                }
                ring
            }
        };
        tracing::debug!(terms = ?ring.keys.keys(), current = ring.current, "master keyring loaded");
        Ok(ring)
    }

    /// [`Keyring::load`] from `LATCHKEY_MASTER_KEY` and
    /// `LATCHKEY_KEYRING_FILE`. Call it again to reload after
    /// [`VaultCryptoError::UnknownTerm`].
    pub fn from_env() -> Result<Keyring, VaultCryptoError> {
        let master_key = match std::env::var(MASTER_KEY_ENV) {
            Ok(value) => Some(Zeroizing::new(value)),
            Err(VarError::NotPresent) => None,
            Err(VarError::NotUnicode(_)) => {
                return Err(VaultCryptoError::MasterKeyInvalid(format!("{MASTER_KEY_ENV} is not valid UTF-8")));
            }
        };
        let file = match std::env::var_os(KEYRING_FILE_ENV) {
            Some(path) if path.is_empty() => {
                return Err(VaultCryptoError::KeyringInvalid(format!("{KEYRING_FILE_ENV} is set but empty")));
            }
            Some(path) => Some(PathBuf::from(path)),
            None => None,
        };
        Keyring::load(master_key.as_deref().map(String::as_str), file.as_deref())
    }

    /// The current term and its key. Every constructor and `set_current`
    /// keep the current term among the keys; the error only keeps this total.
    fn current_key(&self) -> Result<(u32, &MasterKey), VaultCryptoError> {
        let key = self.keys.get(&self.current).ok_or_else(|| {
            VaultCryptoError::KeyringInvalid(format!("the current term {} is not in the keyring", self.current))
        })?;
        Ok((self.current, key))
    }

    /// The key of `term`, or `UnknownTerm`.
    fn key(&self, term: u32) -> Result<&MasterKey, VaultCryptoError> {
        self.keys.get(&term).ok_or(VaultCryptoError::UnknownTerm(term))
    }

    /// A keyring from parsed parts; `keys` is never empty and `current`, when
    /// given, is among them (the parser checks both).
    fn from_parts(keys: BTreeMap<u32, MasterKey>, current: Option<u32>) -> Keyring {
        let highest = keys.keys().next_back().copied().unwrap_or(1);
        Keyring { keys, current: current.unwrap_or(highest) }
    }
}

/// Add a freshly generated master key to the keyring file at `path` under
/// the next term and make it current; return the new term. A file holding one
/// bare key (a development key file) becomes a keyring file with that key as
/// term 1. The new text is written and synced to a private temporary file
/// beside it and renamed over the old one, so a crash leaves either the old
/// keyring or the new one, never a mix; the old terms stay in the file so
/// blobs not yet re-wrapped still open.
pub fn add_term_to_keyring_file(path: impl AsRef<Path>) -> Result<u32, VaultCryptoError> {
    let path = path.as_ref();
    let fail = |reason: String| VaultCryptoError::KeyFile { path: path.to_owned(), reason };
    let (mut keys, _) = read_keyring_file(path)?;
    let term = keys
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| VaultCryptoError::KeyringInvalid("the keyring has used every term".into()))?;
    keys.insert(term, MasterKey::generate()?);
    let name = path.file_name().ok_or_else(|| fail("has no file name".into()))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    SystemRandom::new().fill_bytes(&mut suffix)?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex::encode(suffix)));
    let written = (|| -> io::Result<()> {
        let mut file = new_private_file(&tmp)?;
        file.write_all(b"# Latchkey master keyring: TERM:BASE64_KEY lines; `current` is used for new seals.\n")?;
        for (t, key) in &keys {
            file.write_all(format!("{t}:").as_bytes())?;
            file.write_all(key.to_base64().as_bytes())?;
            file.write_all(b"\n")?;
        }
        file.write_all(format!("current = {term}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail(format!("could not be rewritten with a new term: {}", io_reason(&e))));
    }
    sync_dir(dir).map_err(|e| fail(format!("was rewritten but its directory could not be synced: {e}")))?;
    Ok(term)
}

fn check_term(term: u32) -> Result<(), VaultCryptoError> {
    if term == 0 {
        return Err(VaultCryptoError::KeyringInvalid("term 0 is reserved; terms start at 1".into()));
    }
    Ok(())
}

/// Parse a `LATCHKEY_MASTER_KEY` value: `BASE64` (term 1) or `TERM:BASE64`.
fn parse_env_value(value: &str) -> Result<(u32, MasterKey), VaultCryptoError> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(VaultCryptoError::MasterKeyInvalid(format!("{MASTER_KEY_ENV} is set but empty")));
    }
    let (term, key) = match value.split_once(':') {
        Some((term, key)) => {
            let term = parse_term(term.trim_ascii())
                .map_err(|reason| VaultCryptoError::MasterKeyInvalid(format!("{MASTER_KEY_ENV}: {reason}")))?;
            (term, key)
        }
        None => (1, value),
    };
    let key = decode_master_key(key)
        .map_err(|reason| VaultCryptoError::MasterKeyInvalid(format!("{MASTER_KEY_ENV}: the key {reason}")))?;
    Ok((term, key))
}

fn read_keyring_file(path: &Path) -> Result<(BTreeMap<u32, MasterKey>, Option<u32>), VaultCryptoError> {
    let bytes = read_private_file(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| VaultCryptoError::KeyringInvalid(format!("{}: is not UTF-8 text", path.display())))?;
    parse_keyring_text(text).map_err(|reason| VaultCryptoError::KeyringInvalid(format!("{}: {reason}", path.display())))
}

/// Parse keyring text into keys and the `current` line, if any. Errors name
/// the line number, never the line.
fn parse_keyring_text(text: &str) -> Result<(BTreeMap<u32, MasterKey>, Option<u32>), String> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut keys = BTreeMap::new();
    let mut current = None;
    for &(n, line) in &lines {
        // Base64 never holds ':' and has '=' only at its end, so a `current`
        // line cannot be mistaken for a key and the forms below are disjoint.
        if let Some(value) = line.strip_prefix("current").and_then(|rest| rest.trim_ascii_start().strip_prefix('=')) {
            let term = parse_term(value.trim_ascii()).map_err(|reason| format!("line {n}: {reason}"))?;
            if current.replace(term).is_some() {
                return Err(format!("line {n}: `current` is given twice"));
            }
        } else if let Some((term, key)) = line.split_once(':') {
            let term = parse_term(term.trim_ascii()).map_err(|reason| format!("line {n}: {reason}"))?;
            let key = decode_master_key(key).map_err(|reason| format!("line {n}: the key of term {term} {reason}"))?;
            if keys.insert(term, key).is_some() {
                return Err(format!("line {n}: term {term} appears twice"));
            }
        } else if lines.len() == 1 {
            // A file of one bare key is a single key file, such as the one
            // `create_dev_key_file` writes: its key is term 1.
            let key = decode_master_key(line).map_err(|reason| format!("line {n}: the key {reason}"))?;
            keys.insert(1, key);
        } else {
            return Err(format!("line {n}: expected `TERM:BASE64_KEY`, `current = TERM`, a comment or a blank line"));
        }
    }
    if keys.is_empty() {
        return Err("holds no master keys".into());
    }
    if let Some(term) = current
        && !keys.contains_key(&term)
    {
        return Err(format!("`current = {term}` names a term the file does not hold"));
    }
    Ok((keys, current))
}

/// Read a small file that holds key material, refusing one that group or
/// others can access. The buffer is allocated once at its cap, so reading
/// never leaves a reallocated copy of the key behind.
fn read_private_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, VaultCryptoError> {
    let fail = |reason: String| VaultCryptoError::KeyFile { path: path.to_owned(), reason };
    let file = File::open(path).map_err(|e| fail(io_reason(&e)))?;
    // The checks use the open handle, so they describe the file that is read.
    let meta = file.metadata().map_err(|e| fail(io_reason(&e)))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "is accessible by group or others (mode {mode:04o}); a master key file must be private to its \
                 owner: chmod 600 it"
            )));
        }
    }
    let too_large = || fail(format!("is larger than {MAX_KEY_FILE_LEN} bytes; not a key file"));
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(too_large());
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut buf).map_err(|e| fail(io_reason(&e)))?;
    if buf.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(too_large());
    }
    Ok(buf)
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist".into(),
        io::ErrorKind::PermissionDenied => "cannot be accessed: permission denied".into(),
        _ => e.to_string(),
    }
}

fn new_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Write the key and a newline in two writes, so no second buffer holding
/// the key is allocated.
fn write_key(file: &mut File, key: &MasterKey) -> io::Result<()> {
    file.write_all(key.to_base64().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// A source of random bytes. Production code uses the operating system's
/// generator; the format test pins the bytes to check the layout exactly.
trait FillBytes {
    fn fill_bytes(&self, dest: &mut [u8]) -> Result<(), VaultCryptoError>;
}

impl FillBytes for SystemRandom {
    fn fill_bytes(&self, dest: &mut [u8]) -> Result<(), VaultCryptoError> {
        self.fill(dest).map_err(|_| VaultCryptoError::Crypto("the system random number generator failed"))
    }
}

/// AES-256-GCM as every layer uses it: a 32-byte key, a 96-bit nonce and a
/// 128-bit tag. The Wycheproof test runs these exact two functions.
fn aead_seal(key: &[u8; 32], nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<Tag, VaultCryptoError> {
    aead_key(key)?
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map_err(|_| VaultCryptoError::Crypto("AES-256-GCM refused to encrypt"))
}

/// Decrypt `ciphertext || tag` in place; `None` when authentication fails.
fn aead_open<'a>(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &'a mut [u8],
) -> Result<Option<&'a mut [u8]>, VaultCryptoError> {
    Ok(aead_key(key)?.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out).ok())
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, VaultCryptoError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| VaultCryptoError::Crypto("AES-256-GCM key setup failed"))
}

/// The fixed-size parts of a blob, after its structure has been checked.
struct Layout<'a> {
    term: u32,
    wrap_nonce: [u8; NONCE_LEN],
    /// The wrapped DEK and its tag.
    wrapped: &'a [u8],
    data_nonce: [u8; NONCE_LEN],
    /// The data ciphertext and its tag.
    data: &'a [u8],
    /// Everything from the data nonce on, copied unchanged by `rewrap`.
    data_section: &'a [u8],
}

impl<'a> Layout<'a> {
    /// Check magic, version, length bounds and term, in that order, before
    /// any cryptography. After the length checks every slice below is in
    /// bounds.
    fn parse(blob: &'a [u8]) -> Result<Layout<'a>, VaultCryptoError> {
        if !blob.starts_with(&MAGIC) {
            return Err(if MAGIC.starts_with(blob) {
                VaultCryptoError::BadBlob("truncated: shorter than its header")
            } else {
                VaultCryptoError::BadBlob("it does not start with the LKV magic")
            });
        }
        let Some(&version) = blob.get(VERSION_AT) else {
            return Err(VaultCryptoError::BadBlob("truncated: shorter than its header"));
        };
        if version != FORMAT_VERSION {
            return Err(VaultCryptoError::UnsupportedVersion(version));
        }
        if blob.len() < BLOB_OVERHEAD {
            return Err(VaultCryptoError::BadBlob("truncated: shorter than the smallest blob"));
        }
        if blob.len() > MAX_BLOB_LEN {
            return Err(VaultCryptoError::BadBlob("longer than the largest blob this format allows"));
        }
        let term = u32::from_be_bytes(array(&blob[TERM_AT..WRAP_NONCE_AT]));
        if term == 0 {
            return Err(VaultCryptoError::BadBlob("term 0 is never issued"));
        }
        Ok(Layout {
            term,
            wrap_nonce: array(&blob[WRAP_NONCE_AT..WRAPPED_DEK_AT]),
            wrapped: &blob[WRAPPED_DEK_AT..DATA_NONCE_AT],
            data_nonce: array(&blob[DATA_NONCE_AT..DATA_AT]),
            data: &blob[DATA_AT..],
            data_section: &blob[DATA_NONCE_AT..],
        })
    }
}

/// Copy a slice whose length the caller has fixed into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Wrap `dek` under `key` for `term` and append nonce, wrapped key and tag.
fn wrap_dek(
    rng: &dyn FillBytes,
    key: &MasterKey,
    term: u32,
    dek: &[u8; DEK_LEN],
    aad: &CredentialAad<'_>,
    out: &mut Vec<u8>,
) -> Result<(), VaultCryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce)?;
    let mut wrapped = Zeroizing::new(*dek);
    let tag = aead_seal(&key.0, nonce, &aad.wrap_aad(term), &mut *wrapped)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&*wrapped);
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Unwrap the DEK of a parsed blob under `key`.
fn unwrap_dek(
    key: &MasterKey,
    layout: &Layout<'_>,
    aad: &CredentialAad<'_>,
) -> Result<Zeroizing<[u8; DEK_LEN]>, VaultCryptoError> {
    let mut buf = Zeroizing::new([0u8; DEK_LEN + TAG_LEN]);
    buf.copy_from_slice(layout.wrapped);
    let dek = aead_open(&key.0, layout.wrap_nonce, &aad.wrap_aad(layout.term), &mut *buf)?
        .ok_or(VaultCryptoError::Integrity(IntegrityStage::KeyUnwrap))?;
    Ok(Zeroizing::new(array(dek)))
}

/// Seal `fields` for the credential `aad` under a fresh data key, wrapped
/// under the keyring's current term. Every call gives a different blob.
pub fn seal(
    keyring: &Keyring,
    fields: &BTreeMap<String, Secret>,
    aad: &CredentialAad<'_>,
) -> Result<Vec<u8>, VaultCryptoError> {
    seal_with(&SystemRandom::new(), keyring, fields, aad)
}

/// [`seal`] with its random bytes drawn in a fixed order: the DEK, the wrap
/// nonce, then the data nonce.
fn seal_with(
    rng: &dyn FillBytes,
    keyring: &Keyring,
    fields: &BTreeMap<String, Secret>,
    aad: &CredentialAad<'_>,
) -> Result<Vec<u8>, VaultCryptoError> {
    aad.check()?;
    let payload_len = encoded_len(fields)?;
    let (term, master) = keyring.current_key()?;
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    rng.fill_bytes(&mut *dek)?;
    // The fields are encoded straight into the blob and encrypted in place.
    // The buffer is sized exactly, so it never reallocates, and it is zeroed
    // if anything fails before the plaintext has been encrypted.
    let mut blob = Zeroizing::new(Vec::with_capacity(BLOB_OVERHEAD + payload_len));
    blob.extend_from_slice(&MAGIC);
    blob.push(FORMAT_VERSION);
    blob.extend_from_slice(&term.to_be_bytes());
    wrap_dek(rng, master, term, &dek, aad, &mut blob)?;
    let mut data_nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut data_nonce)?;
    blob.extend_from_slice(&data_nonce);
    encode_fields(&mut blob, fields);
    let tag = aead_seal(&dek, data_nonce, &aad.data_aad(), &mut blob[DATA_AT..])?;
    blob.extend_from_slice(tag.as_ref());
    debug_assert_eq!(blob.len(), BLOB_OVERHEAD + payload_len);
    Ok(std::mem::take(&mut *blob))
}

/// Open a blob sealed for the credential `aad`: all of its fields, or an
/// error. `UnknownTerm` means the keyring should be reloaded.
pub fn open(
    keyring: &Keyring,
    blob: &[u8],
    aad: &CredentialAad<'_>,
) -> Result<BTreeMap<String, Secret>, VaultCryptoError> {
    aad.check()?;
    let layout = Layout::parse(blob)?;
    let dek = unwrap_dek(keyring.key(layout.term)?, &layout, aad)?;
    let mut data = Zeroizing::new(layout.data.to_vec());
    let plain = aead_open(&dek, layout.data_nonce, &aad.data_aad(), &mut data)?
        .ok_or(VaultCryptoError::Integrity(IntegrityStage::SecretFields))?;
    decode_fields(plain).ok_or(VaultCryptoError::BadBlob("its decrypted secret fields are malformed"))
}

/// Re-wrap a blob's data key under the keyring's current term, leaving the
/// encrypted fields byte for byte unchanged; the plaintext is never
/// decrypted. The wrap is verified against `aad` first (its secret version is
/// not used: the data layer is not opened). A blob already at the current
/// term is returned unchanged; a blob at any other held term, newer ones
/// included, moves to the current term.
pub fn rewrap(keyring: &Keyring, blob: &[u8], aad: &CredentialAad<'_>) -> Result<Vec<u8>, VaultCryptoError> {
    rewrap_with(&SystemRandom::new(), keyring, blob, aad)
}

fn rewrap_with(
    rng: &dyn FillBytes,
    keyring: &Keyring,
    blob: &[u8],
    aad: &CredentialAad<'_>,
) -> Result<Vec<u8>, VaultCryptoError> {
    aad.check()?;
    let layout = Layout::parse(blob)?;
    let dek = unwrap_dek(keyring.key(layout.term)?, &layout, aad)?;
    let (term, master) = keyring.current_key()?;
    if layout.term == term {
        return Ok(blob.to_vec());
    }
    let mut out = Vec::with_capacity(blob.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&term.to_be_bytes());
    wrap_dek(rng, master, term, &dek, aad, &mut out)?;
    out.extend_from_slice(layout.data_section);
    Ok(out)
}

/// The master key term a blob was wrapped under, from its header alone (no
/// key needed), so a rotation job can find the rows still on an old term.
pub fn blob_term(blob: &[u8]) -> Result<u32, VaultCryptoError> {
    Layout::parse(blob).map(|layout| layout.term)
}

/// Check the fields against the limits and return their encoded length.
fn encoded_len(fields: &BTreeMap<String, Secret>) -> Result<usize, VaultCryptoError> {
    if fields.len() > MAX_FIELDS {
        return Err(VaultCryptoError::InvalidInput(format!(
            "{} secret fields; a credential holds at most {MAX_FIELDS}",
            fields.len()
        )));
    }
    let mut len: usize = 4;
    for (name, value) in fields {
        if name.is_empty() {
            return Err(VaultCryptoError::InvalidInput("a secret field name is empty".into()));
        }
        if name.len() > MAX_FIELD_NAME_LEN {
            return Err(VaultCryptoError::InvalidInput(format!(
                "a secret field name is longer than {MAX_FIELD_NAME_LEN} bytes"
            )));
        }
        len = len.saturating_add(8).saturating_add(name.len()).saturating_add(value.expose().len());
    }
    if len > MAX_SECRET_BYTES {
        return Err(VaultCryptoError::InvalidInput(format!(
            "the secret fields take {len} bytes encoded; a credential holds at most {MAX_SECRET_BYTES}"
        )));
    }
    Ok(len)
}

/// Append the encoding of `fields`, already checked by `encoded_len`.
fn encode_fields(out: &mut Vec<u8>, fields: &BTreeMap<String, Secret>) {
    out.extend_from_slice(&u32::try_from(fields.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (name, value) in fields {
        put_chunk(out, name.as_bytes());
        put_chunk(out, value.expose().as_bytes());
    }
}

/// Decode authenticated plaintext, strictly: the exact layout, names in
/// increasing order, UTF-8, nothing left over. On any failure the fields
/// decoded so far are dropped, and so zeroed. Public only for the fuzz
/// targets (`fuzz/`), which cannot reach it through [`open`] with bytes that
/// fail authentication.
#[doc(hidden)]
pub fn decode_fields(plain: &[u8]) -> Option<BTreeMap<String, Secret>> {
    let mut reader = Reader(plain);
    let count = usize::try_from(reader.u32()?).ok()?;
    if count > MAX_FIELDS {
        return None;
    }
    let mut fields = BTreeMap::new();
    let mut previous: &[u8] = &[];
    for _ in 0..count {
        let name = reader.chunk()?;
        if name.is_empty() || name.len() > MAX_FIELD_NAME_LEN || name <= previous {
            return None;
        }
        previous = name;
        let value = reader.chunk()?;
        let name = std::str::from_utf8(name).ok()?;
        let value = std::str::from_utf8(value).ok()?;
        fields.insert(name.to_owned(), Secret::new(value));
    }
    reader.0.is_empty().then_some(fields)
}

/// A cursor over bytes that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(array(b)))
    }

    fn chunk(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const CANARY: &str = "canary-7f3b9d2e41c8";

    fn aad<'a>(org: &'a str, credential_id: &'a str, secret_version: u64) -> CredentialAad<'a> {
        CredentialAad { org, credential_id, secret_version }
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs.iter().map(|(name, value)| (name.to_string(), Secret::new(*value))).collect()
    }

    fn plain(opened: &BTreeMap<String, Secret>) -> Vec<(String, String)> {
        opened.iter().map(|(name, value)| (name.clone(), value.expose().to_owned())).collect()
    }

    fn key() -> MasterKey {
        MasterKey::generate().unwrap()
    }

    /// Which error a case expects, without caring about its text.
    fn kind(err: &VaultCryptoError) -> String {
        match err {
            VaultCryptoError::Integrity(stage) => format!("integrity/{stage:?}"),
            VaultCryptoError::UnknownTerm(term) => format!("unknown_term/{term}"),
            VaultCryptoError::UnsupportedVersion(v) => format!("unsupported_version/{v}"),
            other => other.code().as_str().to_owned(),
        }
    }

    /// Random bytes in a fixed order: 0, 1, 2, …
    struct Counter(Cell<u8>);

    impl FillBytes for Counter {
        fn fill_bytes(&self, dest: &mut [u8]) -> Result<(), VaultCryptoError> {
            for byte in dest {
                *byte = self.0.get();
                self.0.set(self.0.get().wrapping_add(1));
            }
            Ok(())
        }
    }

    /// A small deterministic generator for the garbage-input test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::single(key());
        let ctx = aad("org_a", "cred_1", 3);
        for input in [
            fields(&[("access_key_id", "AKID"), ("secret_access_key", "s3cr3t/+="), ("session_token", "")]),
            fields(&[("key", "ключ 🔑 with\nnewlines\0and nul")]),
            fields(&[]),
            fields(&[("key", &"x".repeat(MAX_SECRET_BYTES - 4 - 8 - 3))]),
        ] {
            let blob = seal(&ring, &input, &ctx).unwrap();
            assert_eq!(blob.len(), BLOB_OVERHEAD + encoded_len(&input).unwrap());
            assert_eq!(blob_term(&blob).unwrap(), 1);
            assert_eq!(plain(&open(&ring, &blob, &ctx).unwrap()), plain(&input));
        }
    }

    /// The format is pinned by a blob computed independently (Python's
    /// `cryptography`) from the layout in the module docs, with the random
    /// bytes fixed: DEK 00..1f, wrap nonce 20..2b, data nonce 2c..37. Stored
    /// blobs must keep opening, so this test must never be regenerated.
    #[test]
    fn format_matches_the_documented_layout() {
        const GOLDEN: &str = concat!(
            "4c4b560100000001202122232425262728292a2b9bbfd987523db6ef196800b652099a5c2cb6b6ecfc8479535620a888",
            "50596980e6607cee44660acfc9e9e4bb8fa315e02c2d2e2f303132333435363752fd25146291e4c157abfe8348903573",
            "b07377a5026527af5e29d9d55fe0c0c36774f26140d14d5719388cdc4a3858f3a7e62562b33427d7ed4de369d8bcf0b5",
            "6e85304b4a70631c2bc390cb958e26ebcb4191b3a0d7fc622dbd2a5ac2b3cc1f2398621ffcb7b3474e7af2305c859c6e",
            "94dcc98362",
        );
        let ring = Keyring::single(MasterKey::from_base64("gIGCg4SFhoeIiYqLjI2Oj5CRkpOUlZaXmJmam5ydnp8=").unwrap());
        let ctx = aad("org_example", "cred_01", 7);
        let input = fields(&[
            ("access_key_id", "AKIDEXAMPLE"),
            ("secret_access_key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        ]);
        let blob = seal_with(&Counter(Cell::new(0)), &ring, &input, &ctx).unwrap();
        assert_eq!(hex::encode(&blob), GOLDEN);
        assert_eq!(plain(&open(&ring, &hex::decode(GOLDEN).unwrap(), &ctx).unwrap()), plain(&input));
        assert_eq!(AES_256_GCM.tag_len(), TAG_LEN);
        assert_eq!(AES_256_GCM.nonce_len(), NONCE_LEN);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let ctx = aad("o", "c", 1);
        let master = key();
        let blob = seal(&Keyring::single(master.clone()), &fields(&[("k", "v")]), &ctx).unwrap();
        // The reading keyring also holds every term one bit away from 1, so a
        // flipped term meets a real but wrong key.
        let mut ring = Keyring::single(master.clone());
        for bit in 1..32 {
            ring.add(1 ^ (1 << bit), key()).unwrap();
        }
        assert_eq!(blob.len(), BLOB_OVERHEAD + 14);
        let only_term_1 = Keyring::single(master);
        for bit in 0..blob.len() * 8 {
            let mut flipped = blob.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let err = open(&ring, &flipped, &ctx).unwrap_err();
            let expected = match bit / 8 {
                0..VERSION_AT => "vault_bad_blob".to_owned(),
                VERSION_AT => format!("unsupported_version/{}", flipped[VERSION_AT]),
                TERM_AT..WRAP_NONCE_AT if blob_term(&flipped).is_err() => "vault_bad_blob".to_owned(),
                TERM_AT..DATA_NONCE_AT => "integrity/KeyUnwrap".to_owned(),
                _ => "integrity/SecretFields".to_owned(),
            };
            assert_eq!(kind(&err), expected, "bit {bit}");
            // With only term 1 held, a flipped term cannot be checked at all:
            // the answer is to reload the keyring (THREATS case 5).
            if (TERM_AT..WRAP_NONCE_AT).contains(&(bit / 8))
                && let Ok(term) = blob_term(&flipped)
            {
                assert_eq!(kind(&open(&only_term_1, &flipped, &ctx).unwrap_err()), format!("unknown_term/{term}"));
            }
            // Rewrap verifies the wrap and copies the data, so it catches
            // every flip up to the data nonce.
            if bit / 8 < DATA_NONCE_AT {
                assert!(rewrap(&ring, &flipped, &ctx).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn aad_binds_org_credential_and_version() {
        let ring = Keyring::single(key());
        let input = fields(&[("key", "v")]);
        let blob = seal(&ring, &input, &aad("org_a", "cred_1", 5)).unwrap();
        // THREATS case 2: org A's row copied onto org B's.
        for (ctx, expected) in [
            (aad("org_b", "cred_1", 5), "integrity/KeyUnwrap"),
            (aad("org_a", "cred_2", 5), "integrity/KeyUnwrap"),
            (aad("org_a", "cred_1", 4), "integrity/SecretFields"),
            (aad("org_a", "cred_1", 6), "integrity/SecretFields"),
            // Length prefixes keep shifted boundaries apart.
            (aad("org_ac", "red_1", 5), "integrity/KeyUnwrap"),
        ] {
            assert_eq!(kind(&open(&ring, &blob, &ctx).unwrap_err()), expected, "{ctx:?}");
        }
        assert!(open(&ring, &blob, &aad("org_a", "cred_1", 5)).is_ok());
        assert_ne!(aad("ab", "c", 0).wrap_aad(1), aad("a", "bc", 0).wrap_aad(1));
        assert_ne!(aad("a", "b", 1).wrap_aad(1)[..], aad("a", "b", 1).data_aad()[..]);
    }

    #[test]
    fn truncation_at_every_length_fails_cleanly() {
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let blob = seal(&ring, &fields(&[("key", "value")]), &ctx).unwrap();
        for len in 0..blob.len() {
            let cut = &blob[..len];
            let expected = if len < BLOB_OVERHEAD { "vault_bad_blob" } else { "integrity/SecretFields" };
            assert_eq!(kind(&open(&ring, cut, &ctx).unwrap_err()), expected, "length {len}");
            // Rewrap checks the structure and the wrap but never opens the
            // data, so a cut inside the data is left for `open` to catch.
            match rewrap(&ring, cut, &ctx) {
                Err(err) => assert!(len < BLOB_OVERHEAD && err.code() == "vault_bad_blob", "length {len}"),
                Ok(same) => assert!(len >= BLOB_OVERHEAD && same == cut, "length {len}"),
            }
            assert_eq!(blob_term(cut).is_ok(), len >= BLOB_OVERHEAD, "length {len}");
        }
    }

    #[test]
    fn appended_and_oversized_blobs_fail() {
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let blob = seal(&ring, &fields(&[("key", "value")]), &ctx).unwrap();
        for extra in [&[0u8][..], &[0; 16], b"trailing"] {
            let longer = [&blob[..], extra].concat();
            assert_eq!(kind(&open(&ring, &longer, &ctx).unwrap_err()), "integrity/SecretFields");
        }
        let mut huge = blob.clone();
        huge.resize(MAX_BLOB_LEN + 1, 0);
        assert_eq!(kind(&open(&ring, &huge, &ctx).unwrap_err()), "vault_bad_blob");
        assert_eq!(kind(&rewrap(&ring, &huge, &ctx).unwrap_err()), "vault_bad_blob");
    }

    #[test]
    fn unknown_version_and_bad_magic() {
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let blob = seal(&ring, &fields(&[("key", "value")]), &ctx).unwrap();
        for version in [0u8, 2, 255] {
            let mut other = blob.clone();
            other[VERSION_AT] = version;
            let err = open(&ring, &other, &ctx).unwrap_err();
            assert_eq!(kind(&err), format!("unsupported_version/{version}"));
            assert_eq!(err.code(), "vault_unsupported_version");
        }
        for not_a_blob in [&b""[..], b"L", b"LK", b"LKV", b"{\"key\":\"v\"}", b"lkv\x01"] {
            assert_eq!(open(&ring, not_a_blob, &ctx).unwrap_err().code(), "vault_bad_blob");
        }
    }

    #[test]
    fn unknown_term_then_reload() {
        // THREATS case 5: replica A has rotated to term 2 and writes; replica
        // B still holds term 1 only, sees the unknown term, reloads, reads.
        let (k1, k2) = (key(), key());
        let mut replica_a = Keyring::single(k1.clone());
        replica_a.add(2, k2.clone()).unwrap();
        replica_a.set_current(2).unwrap();
        let ctx = aad("o", "c", 1);
        let blob = seal(&replica_a, &fields(&[("key", "v")]), &ctx).unwrap();
        assert_eq!(blob_term(&blob).unwrap(), 2);
        let mut replica_b = Keyring::single(k1.clone());
        let err = open(&replica_b, &blob, &ctx).unwrap_err();
        assert!(matches!(err, VaultCryptoError::UnknownTerm(2)));
        assert_eq!(err.code(), "vault_unknown_term");
        let reloaded = format!("1:{}\n2:{}\n", &*k1.to_base64(), &*k2.to_base64());
        replica_b = Keyring::parse(&reloaded).unwrap();
        assert_eq!(replica_b.current(), 2);
        assert_eq!(plain(&open(&replica_b, &blob, &ctx).unwrap()), vec![("key".into(), "v".into())]);
    }

    #[test]
    fn wrong_master_key_fails_at_the_unwrap() {
        let ctx = aad("o", "c", 1);
        let blob = seal(&Keyring::single(key()), &fields(&[("key", CANARY)]), &ctx).unwrap();
        let err = open(&Keyring::single(key()), &blob, &ctx).unwrap_err();
        assert!(matches!(err, VaultCryptoError::Integrity(IntegrityStage::KeyUnwrap)));
        assert!(err.to_string().contains("master key"));
        assert!(matches!(
            rewrap(&Keyring::single(key()), &blob, &ctx),
            Err(VaultCryptoError::Integrity(IntegrityStage::KeyUnwrap))
        ));
    }

    #[test]
    fn rewrap_moves_the_key_and_keeps_the_data() {
        let (k1, k2) = (key(), key());
        let old = Keyring::single(k1.clone());
        let ctx = aad("o", "c", 9);
        let input = fields(&[("key", "value"), ("other", "x")]);
        let blob = seal(&old, &input, &ctx).unwrap();

        let mut rotating = Keyring::single(k1);
        rotating.add(2, k2.clone()).unwrap();
        rotating.set_current(2).unwrap();
        let moved = rewrap(&rotating, &blob, &ctx).unwrap();
        assert_eq!(blob_term(&moved).unwrap(), 2);
        assert_eq!(moved.len(), blob.len());
        assert_eq!(moved[DATA_NONCE_AT..], blob[DATA_NONCE_AT..], "the data layer is not re-encrypted");
        assert_ne!(moved[WRAP_NONCE_AT..DATA_NONCE_AT], blob[WRAP_NONCE_AT..DATA_NONCE_AT]);

        let new_only = Keyring::new(2, k2).unwrap();
        assert_eq!(plain(&open(&new_only, &moved, &ctx).unwrap()), plain(&input));
        assert!(matches!(open(&new_only, &blob, &ctx), Err(VaultCryptoError::UnknownTerm(1))));
        // A blob already at the current term comes back unchanged.
        assert_eq!(rewrap(&rotating, &moved, &ctx).unwrap(), moved);
        assert_eq!(rewrap(&new_only, &moved, &ctx).unwrap(), moved);
        // Rewrap checks the binding of the wrap, and needs the old term.
        assert_eq!(kind(&rewrap(&rotating, &blob, &aad("other", "c", 9)).unwrap_err()), "integrity/KeyUnwrap");
        assert!(matches!(rewrap(&new_only, &blob, &ctx), Err(VaultCryptoError::UnknownTerm(1))));
        // The version is not used by rewrap; open still checks it.
        let moved_other_version = rewrap(&rotating, &blob, &aad("o", "c", 10)).unwrap();
        assert!(open(&new_only, &moved_other_version, &aad("o", "c", 10)).is_err());
    }

    #[test]
    fn rotation_killed_half_way_leaves_every_row_readable() {
        // THREATS case 4: the rewrap job dies after some rows; every row still
        // decrypts under some held term, and new rows use the new term.
        let (k1, k2) = (key(), key());
        let old = Keyring::single(k1.clone());
        let ids: Vec<String> = (0..8).map(|i| format!("cred_{i}")).collect();
        let mut rows: Vec<Vec<u8>> =
            ids.iter().map(|id| seal(&old, &fields(&[("key", id)]), &aad("o", id, 1)).unwrap()).collect();
        let mut rotating = old.clone();
        rotating.add(2, k2.clone()).unwrap();
        rotating.set_current(2).unwrap();
        for (row, id) in rows.iter_mut().zip(&ids).take(3) {
            *row = rewrap(&rotating, row, &aad("o", id, 1)).unwrap();
        }
        for (row, id) in rows.iter().zip(&ids) {
            assert_eq!(open(&rotating, row, &aad("o", id, 1)).unwrap()["key"].expose(), id);
        }
        assert_eq!(rows.iter().filter(|row| blob_term(row).unwrap() == 1).count(), 5);
        let fresh = seal(&rotating, &fields(&[("key", "new")]), &aad("o", "cred_new", 1)).unwrap();
        assert_eq!(blob_term(&fresh).unwrap(), 2);
        // Restarting the job finishes the rest, rewrapping done rows as no-ops.
        for (row, id) in rows.iter_mut().zip(&ids) {
            *row = rewrap(&rotating, row, &aad("o", id, 1)).unwrap();
        }
        let new_only = Keyring::new(2, k2).unwrap();
        for (row, id) in rows.iter().zip(&ids) {
            assert_eq!(open(&new_only, row, &aad("o", id, 1)).unwrap()["key"].expose(), id);
        }
    }

    #[test]
    fn two_seals_of_the_same_fields_differ() {
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let input = fields(&[("key", "same")]);
        let (a, b) = (seal(&ring, &input, &ctx).unwrap(), seal(&ring, &input, &ctx).unwrap());
        assert_eq!(a.len(), b.len());
        for (what, range) in [
            ("wrap nonce", WRAP_NONCE_AT..WRAPPED_DEK_AT),
            ("wrapped DEK", WRAPPED_DEK_AT..DATA_NONCE_AT),
            ("data nonce", DATA_NONCE_AT..DATA_AT),
            ("data", DATA_AT..a.len()),
        ] {
            assert_ne!(a[range.clone()], b[range], "{what}");
        }
    }

    #[test]
    fn seal_limits() {
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let too_many: BTreeMap<String, Secret> =
            (0..=MAX_FIELDS).map(|i| (format!("f{i}"), Secret::new("v"))).collect();
        let long_name = "n".repeat(MAX_FIELD_NAME_LEN + 1);
        let big = "x".repeat(MAX_SECRET_BYTES);
        for input in [too_many, fields(&[("", "v")]), fields(&[(&long_name, "v")]), fields(&[("key", &big)])] {
            assert_eq!(seal(&ring, &input, &ctx).unwrap_err().code(), "vault_invalid_input");
        }
        let long_id = "i".repeat(MAX_ID_LEN + 1);
        for bad in [aad("", "c", 1), aad("o", "", 1), aad(&long_id, "c", 1)] {
            assert_eq!(seal(&ring, &fields(&[("k", "v")]), &bad).unwrap_err().code(), "vault_invalid_input");
            assert_eq!(open(&ring, b"LKV", &bad).unwrap_err().code(), "vault_invalid_input");
        }
    }

    #[test]
    fn decoder_is_strict() {
        let enc = |pairs: &[(&[u8], &[u8])], count: u32| {
            let mut out = count.to_be_bytes().to_vec();
            for (name, value) in pairs {
                put_chunk(&mut out, name);
                put_chunk(&mut out, value);
            }
            out
        };
        assert!(decode_fields(&enc(&[(b"a", b"1"), (b"b", b"2")], 2)).is_some());
        for bad in [
            enc(&[(b"b", b"1"), (b"a", b"2")], 2),
            enc(&[(b"a", b"1"), (b"a", b"2")], 2),
            enc(&[(b"", b"1")], 1),
            enc(&[(b"a", b"\xff")], 1),
            enc(&[(b"\xff", b"1")], 1),
            enc(&[(b"a", b"1")], 2),
            enc(&[(b"a", b"1")], 0),
            [enc(&[(b"a", b"1")], 1), vec![0]].concat(),
            vec![0, 0, 0],
            u32::MAX.to_be_bytes().to_vec(),
            [1u32.to_be_bytes(), u32::MAX.to_be_bytes()].concat(),
        ] {
            assert!(decode_fields(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A stand-in for the fuzz target until `cargo fuzz` runs the decoder.
        let ring = Keyring::single(key());
        let ctx = aad("o", "c", 1);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in 0..3000 {
            let len = (rng.next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                let header = b"LKV\x01\x00\x00\x00\x01";
                let n = header.len().min(bytes.len());
                bytes[..n].copy_from_slice(&header[..n]);
            }
            assert!(open(&ring, &bytes, &ctx).is_err());
            let _ = rewrap(&ring, &bytes, &ctx);
            let _ = blob_term(&bytes);
        }
    }

    #[test]
    fn keys_and_keyrings_print_no_key_bytes() {
        let k = key();
        let encoded = k.to_base64();
        let raw_hex = hex::encode(k.0.as_slice());
        let mut ring = Keyring::single(k.clone());
        ring.add(7, key()).unwrap();
        for printed in [format!("{k:?}"), format!("{ring:?}"), format!("{ring:#?}"), format!("{:?}", Some(&k))] {
            assert!(!printed.contains(encoded.as_str()) && !printed.contains(&raw_hex), "{printed}");
        }
        assert_eq!(format!("{k:?}"), "[redacted]");
        assert_eq!(format!("{ring:?}"), "Keyring { current: 1, terms: [1, 7] }");
    }

    #[test]
    fn a_canary_secret_never_reaches_the_blob_or_an_error() {
        let master = key();
        let ring = Keyring::single(master.clone());
        let ctx = aad("o", "c", 1);
        let blob = seal(&ring, &fields(&[("key", CANARY), ("other", &format!("x{CANARY}x"))]), &ctx).unwrap();
        assert!(!blob.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
        let opened = open(&ring, &blob, &ctx).unwrap();
        assert!(!format!("{opened:?}").contains(CANARY));

        let mut errors = vec![
            open(&ring, &blob, &aad("p", "c", 1)).unwrap_err(),
            open(&ring, &blob, &aad("o", "c", 2)).unwrap_err(),
            open(&Keyring::single(key()), &blob, &ctx).unwrap_err(),
            open(&Keyring::new(3, key()).unwrap(), &blob, &ctx).unwrap_err(),
            open(&ring, &blob[..blob.len() - 1], &ctx).unwrap_err(),
            rewrap(&Keyring::single(key()), &blob, &ctx).unwrap_err(),
            MasterKey::from_base64(CANARY).unwrap_err(),
            MasterKey::from_base64(&format!("{CANARY}{CANARY}{CANARY}{CANARY}")).unwrap_err(),
            Keyring::parse(&format!("1:{CANARY}")).unwrap_err(),
            Keyring::parse(&format!("{CANARY}\n{CANARY}")).unwrap_err(),
            Keyring::load(Some(&format!("2:{CANARY}")), None).unwrap_err(),
            seal(&ring, &fields(&[("key", &CANARY.repeat(MAX_SECRET_BYTES / CANARY.len() + 1))]), &ctx).unwrap_err(),
        ];
        for bit in (0..blob.len() * 8).step_by(7) {
            let mut flipped = blob.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            errors.push(open(&ring, &flipped, &ctx).unwrap_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, CANARY).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        errors.push(MasterKey::from_file(&path).unwrap_err());
        errors.push(Keyring::from_file(&path).unwrap_err());

        let encoded = master.to_base64();
        for err in &errors {
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(CANARY), "{text}");
                assert!(!text.contains(encoded.as_str()), "{text}");
            }
        }
    }

    #[test]
    fn master_key_parsing() {
        let k = key();
        let encoded = k.to_base64();
        assert_eq!(encoded.len(), 44);
        let again = MasterKey::from_base64(&format!("  {}\r\n", &*encoded)).unwrap();
        assert!(again.same_as(&k));
        for (bad, says) in [
            ("", "is empty"),
            ("   \n", "is empty"),
            ("AAAA", "decodes to 3 bytes"),
            (&STANDARD.encode([1u8; 31]), "decodes to 31 bytes"),
            (&STANDARD.encode([1u8; 33]), "decodes to 33 bytes"),
            (&STANDARD.encode([0u8; 32]), "all zero bytes"),
            (&encoded.replace('=', ""), "not standard base64"),
            (&format!("{}!", &encoded[..43]), "not standard base64"),
            (&format!("{}{}", &*encoded, &*encoded), "characters long"),
        ] {
            let err = MasterKey::from_base64(bad).unwrap_err();
            assert_eq!(err.code(), "master_key_invalid");
            assert!(err.to_string().contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn keyring_file_format() {
        let (k1, k2, k3) = (key(), key(), key());
        let (b1, b2, b3) = (k1.to_base64(), k2.to_base64(), k3.to_base64());
        let text = format!("# rotation in progress\n\n 1:{}\n2 : {}  \n3:{}\n", &*b1, &*b2, &*b3);
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.terms().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(ring.current(), 3);
        let ring = Keyring::parse(&format!("{text}current = 2\n")).unwrap();
        assert_eq!(ring.current(), 2);
        assert!(Keyring::parse(&format!("{text}current=1")).unwrap().contains(1));
        // A single bare key is term 1.
        let ring = Keyring::parse(&format!("{}\n", &*b1)).unwrap();
        assert_eq!((ring.current(), ring.terms().collect::<Vec<_>>()), (1, vec![1]));

        for (bad, says) in [
            (String::new(), "holds no master keys"),
            ("# only a comment\n".into(), "holds no master keys"),
            (format!("1:{}\n1:{}", &*b1, &*b2), "line 2: term 1 appears twice"),
            (format!("0:{}", &*b1), "line 1: a term must be"),
            (format!("+1:{}", &*b1), "line 1: a term must be"),
            (format!("4294967296:{}", &*b1), "line 1: a term must be"),
            (format!("1:{}\n{}", &*b1, &*b2), "line 2: expected"),
            (format!("1:{}\ncurrent = 2", &*b1), "names a term the file does not hold"),
            (format!("1:{}\ncurrent = 1\ncurrent = 1", &*b1), "line 3: `current` is given twice"),
            (format!("1:{}\ncurrent 1", &*b1), "line 2: expected"),
            ("1:AAAA".into(), "line 1: the key of term 1 decodes to 3 bytes"),
        ] {
            let err = Keyring::parse(&bad).unwrap_err();
            assert_eq!(err.code(), "keyring_invalid");
            assert!(err.to_string().contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn keyring_adding_and_current() {
        let (k1, k2) = (key(), key());
        let mut ring = Keyring::single(k1.clone());
        ring.add(1, k1.clone()).unwrap();
        assert_eq!(ring.add(1, k2.clone()).unwrap_err().code(), "keyring_invalid");
        assert_eq!(ring.add(0, k2.clone()).unwrap_err().code(), "keyring_invalid");
        assert!(Keyring::new(0, k2.clone()).is_err());
        ring.add(5, k2).unwrap();
        assert_eq!(ring.current(), 1, "adding a key does not switch writers to it");
        assert!(ring.set_current(4).is_err());
        ring.set_current(5).unwrap();
        let blob = seal(&ring, &fields(&[("k", "v")]), &aad("o", "c", 1)).unwrap();
        assert_eq!(blob_term(&blob).unwrap(), 5);
    }

    #[cfg(unix)]
    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn loading_from_environment_values_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2, k3) = (key(), key(), key());
        let (b1, b2, b3) = (k1.to_base64(), k2.to_base64(), k3.to_base64());
        let file = private_file(dir.path(), "keyring", &format!("1:{}\n2:{}\n", &*b1, &*b2));

        assert_eq!(Keyring::load(None, None).unwrap_err().code(), "master_key_missing");
        let only_env = Keyring::load(Some(&b1), None).unwrap();
        assert_eq!((only_env.current(), only_env.terms().collect::<Vec<_>>()), (1, vec![1]));
        let only_file = Keyring::load(None, Some(&file)).unwrap();
        assert_eq!((only_file.current(), only_file.terms().collect::<Vec<_>>()), (2, vec![1, 2]));
        // The environment's key is current: here a new term 3 beside the file.
        let both = Keyring::load(Some(&format!("3:{}", &*b3)), Some(&file)).unwrap();
        assert_eq!((both.current(), both.terms().collect::<Vec<_>>()), (3, vec![1, 2, 3]));
        // The same key in both places is fine; the env may name an old term.
        let both = Keyring::load(Some(&format!("1:{}", &*b1)), Some(&file)).unwrap();
        assert_eq!(both.current(), 1);

        for (env, says) in [
            (format!("2:{}", &*b3), "hold different keys for term 2"),
            (String::new(), "set but empty"),
            (format!("x:{}", &*b1), "a term must be"),
        ] {
            let err = Keyring::load(Some(&env), Some(&file)).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let named = private_file(dir.path(), "named", &format!("1:{}\n2:{}\ncurrent = 1\n", &*b1, &*b2));
        let err = Keyring::load(Some(&format!("2:{}", &*b2)), Some(&named)).unwrap_err();
        assert!(err.to_string().contains("keep one of them"), "{err}");
        let err = Keyring::load(None, Some(&dir.path().join("absent"))).unwrap_err();
        assert_eq!(err.code(), "master_key_file");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let path = private_file(dir.path(), "key", &format!("{}\n", &*k.to_base64()));
        assert!(MasterKey::from_file(&path).unwrap().same_as(&k));
        assert!(Keyring::from_file(&path).unwrap().contains(1));
        for mode in [0o644, 0o640, 0o604, 0o620, 0o601] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            for err in [MasterKey::from_file(&path).unwrap_err(), Keyring::from_file(&path).unwrap_err()] {
                assert_eq!(err.code(), "master_key_file");
                assert!(err.to_string().contains("chmod 600"), "{err}");
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::from_file(&path).is_ok());
        assert_eq!(MasterKey::from_file(dir.path()).unwrap_err().code(), "master_key_file");
        let two_lines = private_file(dir.path(), "two", &format!("{}\n{}\n", &*k.to_base64(), &*k.to_base64()));
        assert_eq!(MasterKey::from_file(&two_lines).unwrap_err().code(), "master_key_invalid");
    }

    #[cfg(unix)]
    #[test]
    fn dev_key_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.key");
        let created = MasterKey::create_dev_key_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(MasterKey::from_file(&path).unwrap().same_as(&created));
        assert!(Keyring::from_file(&path).unwrap().contains(1));
        let before = fs::read(&path).unwrap();
        assert_eq!(before.len(), 45, "44 base64 characters and a newline");

        let err = MasterKey::create_dev_key_file(&path).unwrap_err();
        assert_eq!(err.code(), "master_key_file");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        // A file that is not a key is not overwritten either.
        let other = dir.path().join("other");
        fs::write(&other, "not a key").unwrap();
        assert!(MasterKey::create_dev_key_file(&other).is_err());
        assert_eq!(fs::read(&other).unwrap(), b"not a key");
        // No temporary copy of a key is left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["dev.key", "other"]);
        assert!(MasterKey::create_dev_key_file(dir.path().join("missing-dir/key")).is_err());
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (VaultCryptoError::MasterKeyMissing, "master_key_missing"),
            (VaultCryptoError::MasterKeyInvalid(String::new()), "master_key_invalid"),
            (VaultCryptoError::KeyFile { path: PathBuf::new(), reason: String::new() }, "master_key_file"),
            (VaultCryptoError::KeyringInvalid(String::new()), "keyring_invalid"),
            (VaultCryptoError::BadBlob(""), "vault_bad_blob"),
            (VaultCryptoError::UnsupportedVersion(2), "vault_unsupported_version"),
            (VaultCryptoError::UnknownTerm(2), "vault_unknown_term"),
            (VaultCryptoError::Integrity(IntegrityStage::KeyUnwrap), "vault_integrity"),
            (VaultCryptoError::Integrity(IntegrityStage::SecretFields), "vault_integrity"),
            (VaultCryptoError::InvalidInput(String::new()), "vault_invalid_input"),
            (VaultCryptoError::Crypto(""), "vault_crypto_failed"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }

    /// Project Wycheproof's AES-GCM vectors with 256-bit keys, 96-bit IVs and
    /// 128-bit tags (the only shape this module uses), run through the exact
    /// `aead_seal` and `aead_open` that every layer of the envelope calls.
    #[test]
    fn wycheproof_aes_256_gcm() {
        let suite: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/wycheproof_aes_gcm_256.json")).unwrap();
        let hex_field = |case: &serde_json::Value, name: &str| hex::decode(case[name].as_str().unwrap()).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in suite["testGroups"].as_array().unwrap() {
            assert_eq!(
                (group["keySize"].as_u64(), group["ivSize"].as_u64(), group["tagSize"].as_u64()),
                (Some(256), Some(96), Some(128))
            );
            for case in group["tests"].as_array().unwrap() {
                let id = case["tcId"].as_u64().unwrap();
                let key: [u8; 32] = hex_field(case, "key").try_into().unwrap();
                let nonce: [u8; NONCE_LEN] = hex_field(case, "iv").try_into().unwrap();
                let (aad, msg, ct, tag) =
                    (hex_field(case, "aad"), hex_field(case, "msg"), hex_field(case, "ct"), hex_field(case, "tag"));
                let mut in_out = [&ct[..], &tag[..]].concat();
                let opened = aead_open(&key, nonce, &aad, &mut in_out).unwrap().map(|p| p.to_vec());
                match case["result"].as_str().unwrap() {
                    "valid" => {
                        assert_eq!(opened.as_deref(), Some(&msg[..]), "tcId {id}: decrypt");
                        let mut sealed = msg.clone();
                        let sealed_tag = aead_seal(&key, nonce, &aad, &mut sealed).unwrap();
                        assert_eq!((sealed, sealed_tag.as_ref()), (ct, &tag[..]), "tcId {id}: encrypt");
                        valid += 1;
                    }
                    "invalid" => {
                        assert_eq!(opened, None, "tcId {id}: must be rejected");
                        invalid += 1;
                    }
                    other => panic!("tcId {id}: unexpected result {other:?}"),
                }
            }
        }
        assert_eq!((valid, invalid), (39, 27));
        assert_eq!(suite["numberOfTests"].as_u64(), Some(valid + invalid));
    }
}
