-- JWT identity providers, and agents bound to a JWT subject (sqlite).
-- Keep in step with ../postgres/0003_identity.sql.

-- A trusted issuer of agent JWTs. Its keys come from a JWKS given inline
-- (jwks_json) or fetched over HTTPS (jwks_url) and refreshed by the broker.
CREATE TABLE identity_providers (
    org             TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    issuer          TEXT    NOT NULL,           -- the exact iss claim
    alg             TEXT    NOT NULL,           -- the one algorithm accepted
    audience        TEXT,                       -- comma-separated accepted audiences
    leeway_seconds  INTEGER NOT NULL,
    jwks_url        TEXT,
    jwks_json       TEXT,
    refresh_seconds INTEGER NOT NULL,
    subject_claim   TEXT    NOT NULL,           -- the claim naming the agent (sub)
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (org, name)
);

-- An agent may be bound to one (identity provider, subject) instead of, or
-- besides, its token.
ALTER TABLE agents ADD COLUMN jwt_provider TEXT;
ALTER TABLE agents ADD COLUMN jwt_subject TEXT;
CREATE UNIQUE INDEX agents_jwt_subject ON agents (org, jwt_provider, jwt_subject);
