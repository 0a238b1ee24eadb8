-- Registration tokens can be revoked before use (postgres).
-- Keep in step with ../sqlite/0006_token_revocation.sql.

-- When an operator revoked the token; a revoked token is never redeemed.
ALTER TABLE registration_tokens ADD COLUMN revoked_at BIGINT;
