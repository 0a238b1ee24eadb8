-- The credential vault (SQLite). Keep in step with ../postgres/0001_vault.sql:
-- the same tables and columns, in each dialect's types.
-- Times are Unix microseconds (UTC).

-- One row per credential. Secret values live only in `secret_blob`, sealed by
-- vault::crypto (envelope encryption, bound to org, id and secret_version).
CREATE TABLE credentials (
    id             TEXT    NOT NULL PRIMARY KEY,  -- random, never reused; bound into the blob
    org            TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    scheme         TEXT    NOT NULL,
    config         TEXT    NOT NULL,              -- JSON [[key, value], ...], in order
    secret_fields  TEXT    NOT NULL,              -- JSON ["field", ...]: names only
    secret_blob    BLOB    NOT NULL,
    secret_version INTEGER NOT NULL,              -- + 1 whenever the secret values change
    key_term       INTEGER NOT NULL,              -- master key term of secret_blob
    enabled        BOOLEAN NOT NULL,
    destinations   TEXT    NOT NULL,              -- JSON ["host" | "*.suffix", ...]
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    version        INTEGER NOT NULL,              -- + 1 on every change
    UNIQUE (org, name)
);
CREATE INDEX credentials_key_term ON credentials (key_term);

-- Agents and routes that use a credential.
CREATE TABLE credential_attachments (
    credential_id TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('agent', 'route')),
    name          TEXT NOT NULL,
    PRIMARY KEY (credential_id, kind, name)
);

-- One row per committed change to a credential, written in the change's own
-- transaction: replicas and other processes read it to invalidate caches.
CREATE TABLE vault_changes (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    org  TEXT    NOT NULL,
    name TEXT    NOT NULL,
    at   INTEGER NOT NULL
);

-- The audit trail: lifecycle changes (written with the change) and uses.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    org         TEXT    NOT NULL,
    credential  TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    actor       TEXT,
    agent       TEXT,
    destination TEXT,
    outcome     TEXT    NOT NULL,
    layer       TEXT,
    version     INTEGER,
    detail      TEXT
);
CREATE INDEX audit_events_credential ON audit_events (org, credential, seq);
CREATE INDEX audit_events_at ON audit_events (at);

-- A known blob sealed under each master key term, so a wrong or missing key
-- is reported at start-up instead of on the first call.
CREATE TABLE vault_key_checks (
    term INTEGER NOT NULL PRIMARY KEY,
    blob BLOB    NOT NULL
);
