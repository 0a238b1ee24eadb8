//! The audit trail: every lifecycle change and every use of a credential,
//! stored in the vault and emitted as a `tracing` event (target
//! `latchkey::audit`). No event carries a secret: only names, hosts, codes,
//! layers and versions.
//!
//! Lifecycle events (create, update, enable, disable, delete, rotate, attach,
//! detach, rewrap) are written in the transaction of the change they record,
//! so there is never a change without its event or an event without its
//! change.
//!
//! Use events come in two kinds. A call that releases a credential (the
//! proxy forwarding, `/v1/sign` answering) waits for its event to be
//! committed **before** the credential leaves the process
//! ([`UseRecorder::record_durable`]): if the store refuses the write, or the
//! queue is full, or the commit does not come in time, the call fails with
//! `audit_unavailable` and nothing is sent (fail closed). A refused call
//! (no credential left) is queued without waiting. One writer task commits
//! whatever is queued as one transaction (group commit, up to [`BATCH`]
//! events), so under load many calls share one commit; it also updates
//! `last_used_at`. Every use event is also in the log the moment it happens.
//! Use events name the credential version and carry an HMAC fingerprint of
//! its secret values under the installation's salt ([`fingerprint`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::credentials::model::Layer;
use crate::storage::{Db, StoreError, from_micros, on_db, to_micros};

/// Most use events written in one transaction.
pub const BATCH: usize = 512;
/// Use events queued before new ones are refused (durable) or dropped.
pub const QUEUE: usize = 65_536;
/// Longest a releasing call waits for its use event to commit.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// HMAC-SHA256 fingerprint of a credential's secret values under the
/// installation's audit salt: 32 hex digits. Equal secrets give equal
/// fingerprints on every replica; the value cannot be recovered from it.
pub fn fingerprint(salt: &[u8], secrets: &std::collections::BTreeMap<String, latchkey_core::secret::Secret>) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt);
    let mut ctx = ring::hmac::Context::with_key(&key);
    for (field, value) in secrets {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        for part in [field.as_bytes(), value.expose().as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    hex::encode(&ctx.sign().as_ref()[..16])
}

/// The use event of a call that releases a credential could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit trail cannot record this use ({0}), so the credential was not released")]
pub struct AuditUnavailable(pub String);

/// What happened to a credential or a directory object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    /// Created.
    Create,
    /// Config, destinations or secrets changed.
    Update,
    /// Enabled.
    Enable,
    /// Disabled.
    Disable,
    /// Deleted.
    Delete,
    /// Secret values replaced.
    Rotate,
    /// An agent or route attached.
    Attach,
    /// An agent or route detached.
    Detach,
    /// Data key re-wrapped under a new master key term.
    Rewrap,
    /// Used for a call.
    Use,
    /// An agent created.
    AgentCreate,
    /// An agent enabled.
    AgentEnable,
    /// An agent disabled.
    AgentDisable,
    /// An agent bound to a JWT subject.
    AgentBindJwt,
    /// A registration token created.
    TokenCreate,
    /// A registration token redeemed by a new agent.
    Register,
    /// A route added or replaced.
    RoutePut,
    /// A route deleted.
    RouteDelete,
    /// An identity provider added or replaced.
    IdpPut,
    /// An identity provider deleted.
    IdpDelete,
}

impl AuditAction {
    /// Every action, for parsing and help text.
    pub const ALL: [AuditAction; 20] = [
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Enable,
        AuditAction::Disable,
        AuditAction::Delete,
        AuditAction::Rotate,
        AuditAction::Attach,
        AuditAction::Detach,
        AuditAction::Rewrap,
        AuditAction::Use,
        AuditAction::AgentCreate,
        AuditAction::AgentEnable,
        AuditAction::AgentDisable,
        AuditAction::AgentBindJwt,
        AuditAction::TokenCreate,
        AuditAction::Register,
        AuditAction::RoutePut,
        AuditAction::RouteDelete,
        AuditAction::IdpPut,
        AuditAction::IdpDelete,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Enable => "enable",
            AuditAction::Disable => "disable",
            AuditAction::Delete => "delete",
            AuditAction::Rotate => "rotate",
            AuditAction::Attach => "attach",
            AuditAction::Detach => "detach",
            AuditAction::Rewrap => "rewrap",
            AuditAction::Use => "use",
            AuditAction::AgentCreate => "agent-create",
            AuditAction::AgentEnable => "agent-enable",
            AuditAction::AgentDisable => "agent-disable",
            AuditAction::AgentBindJwt => "agent-bind-jwt",
            AuditAction::TokenCreate => "token-create",
            AuditAction::Register => "register",
            AuditAction::RoutePut => "route-put",
            AuditAction::RouteDelete => "route-delete",
            AuditAction::IdpPut => "idp-put",
            AuditAction::IdpDelete => "idp-delete",
        }
    }

    /// Parse a stored or typed name.
    pub fn parse(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One audit record as stored and as `latchkey audit --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the trail (increasing).
    pub seq: i64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The credential's organisation.
    pub org: String,
    /// The credential's name.
    pub credential: String,
    /// What happened (see [`AuditAction`]).
    pub action: String,
    /// Who made a change (`cli:alice`, an admin token id).
    pub actor: Option<String>,
    /// The agent that used the credential.
    pub agent: Option<String>,
    /// The destination host of a use.
    pub destination: Option<String>,
    /// `ok`, or the error code the action or call ended with.
    pub outcome: String,
    /// For a use, the resolution layer that supplied the secret.
    pub layer: Option<String>,
    /// The credential's version after a change, or the version a use used.
    pub version: Option<u64>,
    /// A short, secret-free detail (which parts changed, what was attached).
    pub detail: Option<String>,
    /// For a use that released the credential, the HMAC fingerprint of the
    /// secret values used ([`fingerprint`]).
    pub fingerprint: Option<String>,
}

/// A lifecycle event to write with its change.
#[derive(Debug, Clone)]
pub(crate) struct Change<'a> {
    pub org: &'a str,
    pub credential: &'a str,
    pub action: AuditAction,
    pub actor: &'a str,
    pub version: Option<u64>,
    pub detail: Option<String>,
}

/// One use of a credential, as the call path reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseEvent {
    /// The credential's organisation.
    pub org: String,
    /// The credential (or provider) name asked for.
    pub credential: String,
    /// The calling agent, when known.
    pub agent: Option<String>,
    /// The destination host.
    pub destination: Option<String>,
    /// `ok` or the error code.
    pub outcome: String,
    /// The layer that supplied the secret, when one did.
    pub layer: Option<Layer>,
    /// The credential version used, when the vault supplied it.
    pub version: Option<u64>,
    /// HMAC fingerprint of the secret values used ([`fingerprint`]).
    pub fingerprint: Option<String>,
}

/// Which events [`crate::Vault::audit`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this organisation.
    pub org: Option<String>,
    /// Only this credential.
    pub credential: Option<String>,
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many, the most recent ones (default 100).
    pub limit: Option<u32>,
}

/// Emit the tracing event for a stored record.
pub(crate) fn emit(e: &AuditEvent) {
    tracing::info!(
        target: "latchkey::audit",
        action = %e.action,
        org = %e.org,
        credential = %e.credential,
        actor = e.actor.as_deref(),
        agent = e.agent.as_deref(),
        destination = e.destination.as_deref(),
        outcome = %e.outcome,
        layer = e.layer.as_deref(),
        version = e.version,
        detail = e.detail.as_deref(),
        "audit"
    );
}

/// Insert a lifecycle event on the executor `$conn` (a transaction).
macro_rules! insert_change_event {
    ($conn:expr, $at:expr, $c:expr) => {
        sqlx::query(
            "INSERT INTO audit_events (at, org, credential, action, actor, outcome, version, detail) \
             VALUES ($1, $2, $3, $4, $5, 'ok', $6, $7)",
        )
        .bind($at)
        .bind($c.org)
        .bind($c.credential)
        .bind($c.action.as_str())
        .bind($c.actor)
        .bind($c.version.map($crate::storage::db_int))
        .bind($c.detail.as_deref())
        .execute($conn)
        .await
    };
}
pub(crate) use insert_change_event;

impl Change<'_> {
    /// The record as it will read back, for the tracing event.
    pub(crate) fn event(&self, at: OffsetDateTime) -> AuditEvent {
        AuditEvent {
            seq: 0,
            at,
            org: self.org.to_string(),
            credential: self.credential.to_string(),
            action: self.action.as_str().to_string(),
            actor: Some(self.actor.to_string()),
            agent: None,
            destination: None,
            outcome: "ok".into(),
            layer: None,
            version: self.version,
            detail: self.detail.clone(),
            fingerprint: None,
        }
    }
}

/// Read events matching `filter`, oldest first.
pub(crate) async fn query(db: &Db, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
    let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 100_000));
    let since = filter.since.map(to_micros);
    let action = filter.action.map(AuditAction::as_str);
    let mut events = on_db!(db, pool => {
        let rows = sqlx::query(
            "SELECT seq, at, org, credential, action, actor, agent, destination, outcome, layer, version, detail, \
             fingerprint FROM audit_events \
             WHERE ($1 IS NULL OR org = $1) AND ($2 IS NULL OR credential = $2) \
               AND ($3 IS NULL OR action = $3) AND ($4 IS NULL OR at >= $4) \
             ORDER BY seq DESC LIMIT $5",
        )
        .bind(filter.org.as_deref())
        .bind(filter.credential.as_deref())
        .bind(action)
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row as _;
                Ok(AuditEvent {
                    seq: r.try_get(0)?,
                    at: from_micros(r.try_get(1)?),
                    org: r.try_get(2)?,
                    credential: r.try_get(3)?,
                    action: r.try_get(4)?,
                    actor: r.try_get(5)?,
                    agent: r.try_get(6)?,
                    destination: r.try_get(7)?,
                    outcome: r.try_get(8)?,
                    layer: r.try_get(9)?,
                    version: r.try_get::<Option<i64>, _>(10)?.and_then(|v| u64::try_from(v).ok()),
                    detail: r.try_get(11)?,
                    fingerprint: r.try_get(12)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    events.reverse();
    Ok(events)
}

type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    Use(UseEvent, OffsetDateTime, Option<Ack>),
    Flush(oneshot::Sender<()>),
}

/// Refusal events queued before new ones are dropped. They have a queue of
/// their own, written after the releasing uses, so a flood of refusals
/// cannot hold up (or fail) the calls that wait for their record.
pub const REFUSAL_QUEUE: usize = 8_192;

/// The queues of use events and their writer task.
pub(crate) struct UseRecorder {
    tx: mpsc::Sender<Msg>,
    refusals: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl UseRecorder {
    /// Start the writer task on the current tokio runtime.
    pub(crate) fn start(db: Db) -> UseRecorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (refusals, refusals_rx) = mpsc::channel(REFUSAL_QUEUE);
        tokio::spawn(writer(db, rx, refusals_rx));
        UseRecorder { tx, refusals, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queue a use that released nothing; never waits. The tracing event is
    /// emitted now.
    pub(crate) fn record(&self, event: UseEvent) {
        let at = Self::log(&event);
        if self.refusals.try_send(Msg::Use(event, at, None)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit queue full: use events are being dropped from the store");
            }
        }
    }

    /// Store a use and wait until it is committed: the call may release
    /// its credential only after this returns `Ok`.
    pub(crate) async fn record_durable(&self, event: UseEvent) -> Result<(), AuditUnavailable> {
        let at = Self::log(&event);
        let (ack, committed) = oneshot::channel();
        self.tx.try_send(Msg::Use(event, at, Some(ack))).map_err(|e| {
            AuditUnavailable(match e {
                mpsc::error::TrySendError::Full(_) => format!("the audit queue is full ({QUEUE} events)"),
                mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped".into(),
            })
        })?;
        match tokio::time::timeout(DURABLE_TIMEOUT, committed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(AuditUnavailable(why)),
            Ok(Err(_)) => Err(AuditUnavailable("the audit writer has stopped".into())),
            Err(_) => Err(AuditUnavailable(format!("the audit store did not commit within {DURABLE_TIMEOUT:?}"))),
        }
    }

    fn log(event: &UseEvent) -> OffsetDateTime {
        let at = OffsetDateTime::now_utc();
        tracing::info!(
            target: "latchkey::audit",
            action = "use",
            org = %event.org,
            credential = %event.credential,
            agent = event.agent.as_deref(),
            destination = event.destination.as_deref(),
            outcome = %event.outcome,
            layer = event.layer.map(Layer::as_str),
            version = event.version,
            fingerprint = event.fingerprint.as_deref(),
            "audit"
        );
        at
    }

    /// Wait until every use queued so far is stored.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Use events dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Msg>, mut refusals: mpsc::Receiver<Msg>) {
    let mut batch: Vec<(UseEvent, OffsetDateTime)> = Vec::with_capacity(BATCH);
    let mut acks: Vec<Option<Ack>> = Vec::with_capacity(BATCH);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        // Releasing uses first; refusals when none wait.
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            Some(m) = refusals.recv() => Some(m),
        };
        let Some(first) = first else { break };
        let mut flush = false;
        let mut take = |msg: Msg, batch: &mut Vec<_>, acks: &mut Vec<Option<Ack>>, flush: &mut bool| match msg {
            // A caller that gave up waiting has already failed closed: its
            // use must not be recorded as a release.
            Msg::Use(_, _, Some(ack)) if ack.is_closed() => {}
            Msg::Use(e, at, ack) => {
                batch.push((e, at));
                acks.push(ack);
            }
            Msg::Flush(done) => {
                waiting.push(done);
                *flush = true;
            }
        };
        // Group commit: everything already queued goes into this transaction;
        // calls that arrive while it commits form the next one.
        take(first, &mut batch, &mut acks, &mut flush);
        while batch.len() < BATCH {
            let Ok(msg) = rx.try_recv() else { break };
            take(msg, &mut batch, &mut acks, &mut flush);
        }
        while batch.len() < BATCH || flush {
            let Ok(msg) = refusals.try_recv() else { break };
            take(msg, &mut batch, &mut acks, &mut flush);
        }
        if !batch.is_empty() {
            let result = write_uses(&db, &batch).await.map_err(|e| e.to_string());
            match result {
                Ok(()) => {
                    for ack in acks.drain(..).flatten() {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) if batch.len() > 1 => {
                    // One bad row must not fail the others: write each alone.
                    tracing::warn!(error = %e, events = batch.len(), "a batch of use events failed; writing them one by one");
                    for (event, ack) in batch.iter().zip(acks.drain(..)) {
                        let one = write_uses(&db, std::slice::from_ref(event)).await.map_err(|e| e.to_string());
                        if let Err(e) = &one {
                            tracing::error!(error = %e, "could not store a use event; a call waiting on it fails closed");
                        }
                        if let Some(ack) = ack {
                            let _ = ack.send(one);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store a use event; a call waiting on it fails closed");
                    for ack in acks.drain(..).flatten() {
                        let _ = ack.send(Err(e.clone()));
                    }
                }
            }
            batch.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn write_uses(db: &Db, batch: &[(UseEvent, OffsetDateTime)]) -> Result<(), StoreError> {
    use crate::storage::BeginWrite as _;
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        for (e, at) in batch {
            sqlx::query(
                "INSERT INTO audit_events \
                 (at, org, credential, action, agent, destination, outcome, layer, version, fingerprint) \
                 VALUES ($1, $2, $3, 'use', $4, $5, $6, $7, $8, $9)",
            )
            .bind(to_micros(*at))
            .bind(&e.org)
            .bind(&e.credential)
            .bind(e.agent.as_deref())
            .bind(e.destination.as_deref())
            .bind(&e.outcome)
            .bind(e.layer.map(Layer::as_str))
            .bind(e.version.map(crate::storage::db_int))
            .bind(e.fingerprint.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        // One update per credential used, to its latest use in the batch.
        let mut last: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for (e, at) in batch.iter().filter(|(e, _)| e.outcome == "ok" && e.layer == Some(Layer::Vault)) {
            let t = last.entry((e.org.as_str(), e.credential.as_str())).or_default();
            *t = (*t).max(to_micros(*at));
        }
        for ((org, name), at) in last {
            sqlx::query(
                "UPDATE credentials SET last_used_at = $1 \
                 WHERE org = $2 AND name = $3 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(at)
            .bind(org)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    })
}
