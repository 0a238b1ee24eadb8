-- The credential vault (PostgreSQL). Keep in step with ../sqlite/0001_vault.sql:
-- the same tables and columns, in each dialect's types.
-- Times are Unix microseconds (UTC).

CREATE TABLE credentials (
    id             TEXT    NOT NULL PRIMARY KEY,
    org            TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    scheme         TEXT    NOT NULL,
    config         TEXT    NOT NULL,
    secret_fields  TEXT    NOT NULL,
    secret_blob    BYTEA   NOT NULL,
    secret_version BIGINT  NOT NULL,
    key_term       BIGINT  NOT NULL,
    enabled        BOOLEAN NOT NULL,
    destinations   TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    last_used_at   BIGINT,
    version        BIGINT  NOT NULL,
    UNIQUE (org, name)
);
CREATE INDEX credentials_key_term ON credentials (key_term);

CREATE TABLE credential_attachments (
    credential_id TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('agent', 'route')),
    name          TEXT NOT NULL,
    PRIMARY KEY (credential_id, kind, name)
);

CREATE TABLE vault_changes (
    seq  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org  TEXT   NOT NULL,
    name TEXT   NOT NULL,
    at   BIGINT NOT NULL
);

-- Every committed change reaches every replica at once: the notification is
-- sent when the writing transaction commits, never for one that rolls back.
-- The channel is named after the schema, so vaults in different schemas of one
-- database do not hear each other.
CREATE FUNCTION latchkey_vault_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('latchkey_vault_' || current_schema(), json_build_object('seq', NEW.seq, 'org', NEW.org, 'name', NEW.name)::text);
    RETURN NEW;
END;
$$;
CREATE TRIGGER vault_changes_notify AFTER INSERT ON vault_changes
    FOR EACH ROW EXECUTE FUNCTION latchkey_vault_notify();

CREATE TABLE audit_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    org         TEXT   NOT NULL,
    credential  TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    actor       TEXT,
    agent       TEXT,
    destination TEXT,
    outcome     TEXT   NOT NULL,
    layer       TEXT,
    version     BIGINT,
    detail      TEXT
);
CREATE INDEX audit_events_credential ON audit_events (org, credential, seq);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE TABLE vault_key_checks (
    term BIGINT NOT NULL PRIMARY KEY,
    blob BYTEA  NOT NULL
);
