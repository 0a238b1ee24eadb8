-- Agents, their tokens, registration tokens and proxy routes (SQLite).
-- Keep in step with ../postgres/0002_agents.sql.

-- An agent: a caller of the broker. Its token is stored as a SHA-256 hash only.
CREATE TABLE agents (
    id          TEXT    NOT NULL PRIMARY KEY,
    org         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    token_hash  BLOB    UNIQUE,                 -- SHA-256 of the agent token; NULL for JWT/Basic agents
    created_at  INTEGER NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (org, name)
);

-- Single-use registration tokens (lk_reg_…), stored as hashes. Redemption is
-- one conditional UPDATE: of concurrent redeemers exactly one matches.
CREATE TABLE registration_tokens (
    token_hash  BLOB    NOT NULL PRIMARY KEY,
    prefix      TEXT    NOT NULL,               -- the redacted prefix shown in logs
    org         TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    agent_id    TEXT
);

-- Sidecar routes: a path under the proxy prefix bound to an upstream and a credential.
CREATE TABLE routes (
    name        TEXT    NOT NULL,
    org         TEXT    NOT NULL,
    upstream    TEXT    NOT NULL,
    credential  TEXT    NOT NULL,
    mock        BOOLEAN NOT NULL DEFAULT FALSE,
    check_path  TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (org, name)
);

-- The last provider check of a credential (latchkey credential check).
ALTER TABLE credentials ADD COLUMN check_state TEXT;
ALTER TABLE credentials ADD COLUMN checked_at INTEGER;
