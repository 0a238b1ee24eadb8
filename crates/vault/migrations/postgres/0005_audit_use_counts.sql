-- Uses are counted, not stored one row each (postgres): one row per (org,
-- credential, agent, outcome, minute), added to by the audit writer's
-- batched upserts. The full event of each use goes to the audit sink.
-- `agent` is '' when no agent is known; `minute` is the start of the
-- minute in Unix microseconds, like every other time.
-- Keep in step with ../sqlite/0005_audit_use_counts.sql.
CREATE TABLE audit_use_counts (
    org        TEXT    NOT NULL,
    credential TEXT    NOT NULL,
    agent      TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    minute     BIGINT  NOT NULL,
    count      BIGINT  NOT NULL,
    PRIMARY KEY (org, credential, agent, outcome, minute)
);
CREATE INDEX audit_use_counts_minute ON audit_use_counts (minute);
