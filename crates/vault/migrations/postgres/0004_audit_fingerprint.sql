-- Use events name the credential version they used (the existing `version`
-- column) and carry an HMAC fingerprint of its secret values under the
-- installation's salt, so an auditor can tell which secret a call used
-- without the store holding anything derived from it in the clear (postgres).
-- Keep in step with ../sqlite/0004_audit_fingerprint.sql.
ALTER TABLE audit_events ADD COLUMN fingerprint TEXT;

-- Installation-wide values every replica shares: `audit_salt` (32 random
-- bytes created by the first process that opens the vault, sealed under the
-- master keyring like a credential's secrets, re-wrapped on rotation).
CREATE TABLE installation (
    key   TEXT NOT NULL PRIMARY KEY,
    value BYTEA NOT NULL
);
