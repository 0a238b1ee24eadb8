//! The vault's sealed-blob decoder (THREATS case 3): any bytes open to the
//! credential's fields or fail with a typed error, never a panic, and never
//! a partial or default value.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use latchkey::Secret;
use latchkey::vault::crypto::{
    self, BLOB_OVERHEAD, CredentialAad, Keyring, MAX_BLOB_LEN, MAX_FIELD_NAME_LEN, MAX_FIELDS, MAX_SECRET_BYTES,
    MasterKey, VaultCryptoError,
};

/// What every blob of the corpus is bound to.
pub const AAD: CredentialAad<'static> = CredentialAad { org: "default", credential_id: "cred-1", secret_version: 1 };

/// The same blob read as another organisation's (THREATS case 2).
const OTHER_ORG: CredentialAad<'static> = CredentialAad { org: "other", credential_id: "cred-1", secret_version: 1 };

/// Where the data section starts (the pinned format: magic, version, term,
/// wrap nonce, wrapped key and its tag); `rewrap` copies it unchanged.
const DATA_SECTION_AT: usize = 68;

/// The corpus keyring: term 1 (`0x11` × 32) and term 2 (`0x22` × 32), term 2
/// current, so a term-1 blob is re-wrapped and a term-3 blob is unknown.
pub fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let key = |b: u8| MasterKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([b; 32])).unwrap();
        let mut ring = Keyring::new(1, key(0x11)).unwrap();
        ring.add(2, key(0x22)).unwrap();
        ring.set_current(2).unwrap();
        ring
    })
}

fn plain(fields: &BTreeMap<String, Secret>) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect()
}

fn outcome(r: &Result<BTreeMap<String, Secret>, VaultCryptoError>) -> Result<Vec<(String, String)>, &'static str> {
    r.as_ref().map(plain).map_err(|e| e.code().as_str())
}

/// Target `vault_blob`: `data` as a sealed blob.
pub fn blob(data: &[u8]) {
    let ring = keyring();
    let term = crypto::blob_term(data);
    if let Ok(t) = term {
        assert_ne!(t, 0, "term 0 is never issued");
        assert!((BLOB_OVERHEAD..=MAX_BLOB_LEN).contains(&data.len()), "a blob of {} bytes has a term", data.len());
    }
    let opened = crypto::open(ring, data, &AAD);
    match &opened {
        Ok(fields) => {
            assert!(term.is_ok(), "a blob opened without a readable header");
            assert!(crypto::open(ring, data, &OTHER_ORG).is_err(), "a blob opened for another organisation");
            // One map has one encoding: sealed again, the fields take the
            // same space and open to the same values.
            let again = crypto::seal(ring, fields, &AAD).expect("fields that opened seal again");
            assert_eq!(again.len(), data.len());
            assert_eq!(outcome(&crypto::open(ring, &again, &AAD)), outcome(&opened));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if term.is_err() {
                assert!(
                    matches!(e, VaultCryptoError::BadBlob(_) | VaultCryptoError::UnsupportedVersion(_)),
                    "a blob without a header failed as {e:?}"
                );
            }
        }
    }
    // A re-wrap checks only the key wrap and moves the data section as it
    // is, so the new blob opens exactly as the old one did.
    match crypto::rewrap(ring, data, &AAD) {
        Ok(new) => {
            assert_eq!(crypto::blob_term(&new).ok(), Some(ring.current()));
            assert_eq!(new.len(), data.len());
            assert_eq!(new[DATA_SECTION_AT..], data[DATA_SECTION_AT..]);
            assert_eq!(outcome(&crypto::open(ring, &new, &AAD)), outcome(&opened));
        }
        Err(e) => assert!(opened.is_err(), "a blob that opens failed to re-wrap: {e:?}"),
    }
}

/// Target `vault_fields`: `data` as the decrypted secret fields (what
/// `open` decodes once both tags verify).
pub fn fields(data: &[u8]) {
    let Some(fields) = crypto::decode_fields(data) else { return };
    assert!(fields.len() <= MAX_FIELDS);
    for name in fields.keys() {
        assert!(!name.is_empty() && name.len() <= MAX_FIELD_NAME_LEN, "field name of {} bytes", name.len());
    }
    // The encoding is canonical: the decoded fields seal to a blob of the
    // plaintext's length plus the fixed overhead, and open to themselves.
    if data.len() <= MAX_SECRET_BYTES {
        let ring = keyring();
        let blob = crypto::seal(ring, &fields, &AAD).expect("decoded fields seal");
        assert_eq!(blob.len(), BLOB_OVERHEAD + data.len());
        let opened = crypto::open(ring, &blob, &AAD).expect("a fresh blob opens");
        assert_eq!(plain(&opened), plain(&fields));
    }
}
