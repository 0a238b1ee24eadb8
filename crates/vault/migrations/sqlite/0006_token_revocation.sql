-- Registration tokens can be revoked before use (sqlite).
-- Keep in step with ../postgres/0006_token_revocation.sql.

-- When an operator revoked the token; a revoked token is never redeemed.
ALTER TABLE registration_tokens ADD COLUMN revoked_at INTEGER;
