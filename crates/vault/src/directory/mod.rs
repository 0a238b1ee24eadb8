//! The directory: agents and their tokens, registration tokens, routes and identity providers.

pub mod agents;
pub mod identity;

use time::OffsetDateTime;

use crate::audit::AuditAction;
use crate::credentials::service::{Vault, VaultError};
use crate::storage::{StoreError, to_micros};

/// One change to a directory object, committed in the transaction of its
/// row change: the change record every replica's feed reads (`object`, such
/// as `@agent/ci-bot`) and the audit event. Build it, run the row
/// statements and [`record_change!`] in one transaction, commit, then
/// [`Vault::changed`].
#[derive(Clone)]
pub(crate) struct DirectoryChange<'a> {
    pub(crate) org: &'a str,
    pub(crate) object: String,
    pub(crate) action: AuditAction,
    pub(crate) actor: &'a str,
    pub(crate) agent: Option<&'a str>,
    pub(crate) credential: Option<&'a str>,
    pub(crate) detail: Option<String>,
    pub(crate) at: i64,
}

impl<'a> DirectoryChange<'a> {
    /// A change of `object` in `org` by `actor`, now.
    pub(crate) fn new(org: &'a str, object: String, action: AuditAction, actor: &'a str) -> DirectoryChange<'a> {
        DirectoryChange {
            org,
            object,
            action,
            actor,
            agent: None,
            credential: None,
            detail: None,
            at: to_micros(OffsetDateTime::now_utc()),
        }
    }
}

/// Insert `$change`'s change record and audit event on the transaction
/// `$tx`; evaluates to `Result<(), sqlx::Error>`.
macro_rules! record_change {
    ($tx:expr, $change:expr) => {{
        let c = &$change;
        async {
            crate::storage::insert_change_record!(&mut *$tx, c.org, &c.object, c.at)?;
            sqlx::query(
                "INSERT INTO audit_events (at, org, credential, action, actor, agent, outcome, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'ok', $7)",
            )
            .bind(c.at)
            .bind(c.org)
            .bind(c.credential.unwrap_or(""))
            .bind(c.action.as_str())
            .bind(c.actor)
            .bind(c.agent)
            .bind(c.detail.as_deref())
            .execute(&mut *$tx)
            .await?;
            Ok::<(), sqlx::Error>(())
        }
        .await
    }};
}
pub(crate) use record_change;

/// In the transaction `$tx`: attach (or detach) the agent or route
/// `$target` to credential `$credential` of `$org`, with the credential's
/// version bump, change record and audit event, as a credential write does.
/// Evaluates to `Result<bool, sqlx::Error>`: `false` when there is no such
/// credential. Attaching what is attached (or detaching what is not)
/// changes nothing.
macro_rules! attachment_in_tx {
    ($tx:expr, $org:expr, $credential:expr, $kind:expr, $target:expr, $attach:expr, $actor:expr, $at:expr) => {{
        let (org, credential, kind, target, attach, actor, at): (
            &str,
            &str,
            $crate::AttachmentKind,
            &str,
            bool,
            &str,
            i64,
        ) = ($org, $credential, $kind, $target, $attach, $actor, $at);
        async {
            let row: Option<(String, i64)> =
                sqlx::query_as("SELECT id, version FROM credentials WHERE org = $1 AND name = $2")
                    .bind(org)
                    .bind(credential)
                    .fetch_optional(&mut *$tx)
                    .await?;
            let Some((id, version)) = row else { return Ok(false) };
            let changed = if attach {
                sqlx::query(
                    "INSERT INTO credential_attachments (credential_id, kind, name) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
            } else {
                sqlx::query("DELETE FROM credential_attachments WHERE credential_id = $1 AND kind = $2 AND name = $3")
            }
            .bind(&id)
            .bind(kind.as_str())
            .bind(target)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(true);
            }
            sqlx::query("UPDATE credentials SET version = version + 1, updated_at = $1 WHERE id = $2")
                .bind(at)
                .bind(&id)
                .execute(&mut *$tx)
                .await?;
            crate::storage::insert_change_record!(&mut *$tx, org, credential, at)?;
            // The event a credential write records (`Vault::set_attachment`).
            let event = crate::audit::Change {
                org,
                credential,
                action: if attach { AuditAction::Attach } else { AuditAction::Detach },
                actor,
                version: u64::try_from(version + 1).ok(),
                detail: Some(format!("{} {}", kind.as_str(), target)),
            };
            crate::audit::insert_change_event!(&mut *$tx, at, event)?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await
    }};
}
pub(crate) use attachment_in_tx;

impl Vault {
    /// After a directory change committed: drop what this process cached of
    /// it (other replicas learn from the change record) and log the event.
    pub(crate) fn changed(&self, c: &DirectoryChange<'_>) {
        self.invalidate(c.org, &c.object);
        tracing::info!(
            target: "latchkey::audit",
            action = c.action.as_str(),
            org = %c.org,
            object = %c.object,
            agent = c.agent,
            credential = c.credential,
            detail = c.detail.as_deref(),
            actor = c.actor,
            "audit"
        );
    }
}

/// A database failure of a directory write.
pub(crate) fn db_err(e: sqlx::Error) -> VaultError {
    VaultError::Store(StoreError::from(e))
}
