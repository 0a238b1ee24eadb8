-- The lifecycle: registration tokens can be revoked before use, and no attachment names a missing agent (postgres).
-- Keep in step with ../sqlite/0006_lifecycle.sql.

-- When an operator revoked the token; a revoked token is never redeemed.
ALTER TABLE registration_tokens ADD COLUMN revoked_at BIGINT;

-- Attachments are checked when made from now on. One an earlier version
-- accepted for an agent that did not exist (a typo, or a name not yet
-- registered) would hand the credential to whoever later registers that
-- name: such attachments are removed.
DELETE FROM credential_attachments
WHERE kind = 'agent'
  AND NOT EXISTS (
    SELECT 1 FROM agents a, credentials c
    WHERE c.id = credential_attachments.credential_id AND a.org = c.org AND a.name = credential_attachments.name
  );

-- The longest lifetime a provider's tokens may have (exp after iat and
-- after now); a token claiming to live longer is refused.
ALTER TABLE identity_providers ADD COLUMN max_token_lifetime_seconds BIGINT NOT NULL DEFAULT 86400;
