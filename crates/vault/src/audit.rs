//! The audit trail: every lifecycle change and every use of a credential.
//! No event carries a secret: only names, hosts, codes, layers, versions and
//! HMAC fingerprints.
//!
//! Lifecycle events (create, update, enable, disable, delete, rotate, attach,
//! detach, rewrap, and the directory's) are rows of `audit_events`, written
//! in the transaction of the change they record, so there is never a change
//! without its event or an event without its change. Each is also emitted as
//! a `tracing` event (target `latchkey::audit`).
//!
//! Uses are too many for one row each (a gateway makes thousands a second).
//! The store keeps **counts**: table `audit_use_counts`, one row per (org,
//! credential, agent, outcome, minute), so `latchkey audit --action use`
//! still says who used which credential when, in a table whose size follows
//! the number of distinct callers, not the call rate. The **full event** of
//! each use (org, credential, version, agent, destination, outcome, layer,
//! fingerprint, time) goes to the [`AuditSink`] the operator chose: the
//! `tracing` log (the default), JSON lines on stdout, or a size-rotated
//! JSON-lines file ([`sink`]).
//!
//! Fail closed: a call that releases a credential (the proxy forwarding,
//! `/v1/sign` answering) does so only once a **committed** count covers its
//! use ([`UseRecorder::record_durable`]); if the store refuses the write, the
//! queue is full, or the commit does not come in time, the call fails with
//! `audit_unavailable` and nothing is sent.
//!
//! Leases keep that rule off the hot path. The commit that a key's waiting
//! uses share (org, credential, agent, `ok`, minute; vault-layer uses only)
//! also adds a lease: [`LEASE_FIRST`] more uses, committed ahead. Later
//! calls on that key take one from the lease under a mutex and go on
//! without waiting; when half is spent the writer commits the next lease
//! (twice the last, at most [`LEASE_MAX`]) while the rest is spent. The
//! unused part is given back (`count = count - unused`) when the minute
//! ends, on a flush (so an audit query through this vault reads exact
//! counts; another process reading the current minute may see this one's
//! reserved uses) and on close.
//! At every moment the store's count of a key is at least the uses it
//! released; a crash can leave it above them by at most 2.5 × [`LEASE_MAX`]
//! (this minute's lease and top-up, and the next minute's lease taken in
//! this minute's last seconds), never below. A store that stops accepting writes stops the calls once the
//! leases already committed are spent. A refused call (nothing
//! released) never waits: its use is added to an in-memory map of counts,
//! which the writer commits with the next batch (or within [`TICK`]); the
//! map is bounded by distinct keys, not by the call rate, so no refusal is
//! dropped, and counts whose commit failed stay in the map and are retried.
//!
//! One writer thread does every write (group commit: all the uses waiting
//! form one transaction of multi-row upserts, plus `last_used_at`), writes
//! the sink, and prunes counts older than the retention. Its connection runs
//! with relaxed durability, so a commit costs no fsync: on SQLite
//! `synchronous=NORMAL` (in WAL mode a commit then survives a crash of the
//! process but not a power loss or kernel crash: the last moments of counts
//! may be lost; the credentials, written on the other connections with
//! `synchronous=FULL`, are not affected), on PostgreSQL
//! `synchronous_commit=off` (a crash of the database server may lose the
//! last few hundred milliseconds of commits; it never corrupts). A call is
//! released only after the database has accepted its commit, so a broken or
//! full store still stops calls.

pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::credentials::model::Layer;
use crate::storage::{Db, Location, StoreError, from_micros, on_db, redact_url, to_micros};

pub use sink::AuditSink;

/// Most releasing uses committed in one transaction.
pub const BATCH: usize = 512;
/// Releasing uses queued before new ones are refused (the call fails closed).
pub const QUEUE: usize = 65_536;
/// How often the writer commits refusals when no releasing use carries them,
/// retries counts whose commit failed, and hands events to the sink.
pub const TICK: Duration = Duration::from_millis(200);
/// Distinct count keys of refusals held in memory before further refusals
/// of new keys are counted under the credential name [`OTHER`] (so a caller
/// asking for endless invented names cannot grow the map without bound;
/// the count per org, agent and outcome stays exact).
pub const MAX_PENDING_KEYS: usize = 50_000;
/// The credential name counts are folded under beyond [`MAX_PENDING_KEYS`].
pub const OTHER: &str = "(other)";
/// How often the writer prunes counts older than the retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest a releasing call waits for its use event to commit.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);
/// In the last this-many microseconds of a minute, a key's top-up also
/// commits a lease of the same size for the key's next minute, so a key
/// busy at the turn of the minute does not start the next one with its
/// calls waiting on commits (16, then 32, 64 … uses at a time).
const LEASE_AHEAD_US: i64 = 10_000_000;
/// The first lease of committed uses a count key gets (see [`UseRecorder`]).
pub const LEASE_FIRST: u64 = 16;
/// The largest lease: each top-up doubles the last, up to this. A crash can
/// leave a key's count at most 2.5 × this above the uses released (half a
/// lease left when the top-up is asked for, the top-up, and in a minute's
/// last seconds the next minute's lease).
pub const LEASE_MAX: u64 = 1024;

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
    /// An agent's JWT binding removed.
    AgentUnbindJwt,
    /// An agent's token replaced (the old one refused from then on).
    AgentTokenReissue,
    /// An agent deleted.
    AgentDelete,
    /// A registration token created.
    TokenCreate,
    /// A registration token redeemed by a new agent.
    Register,
    /// A registration token revoked before use.
    TokenRevoke,
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
    pub const ALL: [AuditAction; 24] = [
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
        AuditAction::AgentUnbindJwt,
        AuditAction::AgentTokenReissue,
        AuditAction::AgentDelete,
        AuditAction::TokenCreate,
        AuditAction::Register,
        AuditAction::TokenRevoke,
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
            AuditAction::AgentUnbindJwt => "agent-unbind-jwt",
            AuditAction::AgentTokenReissue => "agent-token-reissue",
            AuditAction::AgentDelete => "agent-delete",
            AuditAction::TokenCreate => "token-create",
            AuditAction::Register => "register",
            AuditAction::TokenRevoke => "token-revoke",
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
    /// Position in the trail (increasing); 0 for a count of uses.
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
    /// For a count of uses (`seq` 0, `at` the start of its minute): how many
    /// uses of this credential by this agent ended with this outcome in that
    /// minute. `None` for an event row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
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

/// How the vault records uses: where the full events go and how long the
/// counts are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOptions {
    /// Where each use's full event goes (the `tracing` log by default).
    pub sink: AuditSink,
    /// Counts (and legacy per-use rows) older than this are pruned by the
    /// writer thread, at start and every [`PRUNE_EVERY`]; `None` keeps them
    /// all. `latchkey serve` sets it (default 90 days); one-shot commands
    /// leave it `None`, so they never prune.
    pub retention: Option<Duration>,
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

/// Log a change a forced delete made along with its own (a detach, a
/// route deleted with its credential, an unbinding): stored in the same
/// transaction, logged here once committed.
pub(crate) fn emit_cascade(org: &str, credential: &str, action: AuditAction, actor: &str, detail: &str) {
    tracing::info!(
        target: "latchkey::audit",
        action = action.as_str(),
        org = %org,
        credential = %credential,
        actor = actor,
        outcome = "ok",
        detail = detail,
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
            count: None,
        }
    }
}

/// Microseconds in a minute: counts are kept per minute.
const MINUTE_US: i64 = 60_000_000;

/// The start of the minute holding `us` (Unix microseconds).
fn minute_of(us: i64) -> i64 {
    us - us.rem_euclid(MINUTE_US)
}

/// Read events matching `filter`, oldest first: lifecycle rows (and any
/// legacy per-use rows) from `audit_events`, and counts of uses from
/// `audit_use_counts` as events with [`AuditEvent::count`] set, merged by
/// time (a count sorts at the start of its minute).
pub(crate) async fn query(db: &Db, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
    let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 100_000));
    let since = filter.since.map(to_micros);
    let action = filter.action.map(AuditAction::as_str);
    let with_counts = matches!(filter.action, None | Some(AuditAction::Use));
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
        let mut events = rows.iter()
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
                    count: None,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if with_counts {
            // A minute that began before `since` may hold uses after it. The
            // boundary minute is read whole, so the most recent `limit` are
            // chosen below in one order (the database's collation may differ).
            let rows = sqlx::query(
                "SELECT minute, org, credential, agent, outcome, count FROM audit_use_counts \
                 WHERE ($1 IS NULL OR org = $1) AND ($2 IS NULL OR credential = $2) AND ($3 IS NULL OR minute >= $3) \
                   AND minute >= COALESCE((SELECT MIN(minute) FROM (SELECT minute FROM audit_use_counts \
                     WHERE ($1 IS NULL OR org = $1) AND ($2 IS NULL OR credential = $2) \
                       AND ($3 IS NULL OR minute >= $3) ORDER BY minute DESC LIMIT $4) AS recent), 0)",
            )
            .bind(filter.org.as_deref())
            .bind(filter.credential.as_deref())
            .bind(since.map(minute_of))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            for r in &rows {
                use sqlx::Row as _;
                let agent: String = r.try_get(3)?;
                let count = u64::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0);
                events.push(AuditEvent {
                    seq: 0,
                    at: from_micros(r.try_get(0)?),
                    org: r.try_get(1)?,
                    credential: r.try_get(2)?,
                    action: AuditAction::Use.as_str().into(),
                    actor: None,
                    agent: (!agent.is_empty()).then_some(agent),
                    destination: None,
                    outcome: r.try_get(4)?,
                    layer: None,
                    version: None,
                    detail: Some(format!("count {count}")),
                    fingerprint: None,
                    count: Some(count),
                });
            }
        }
        events
    });
    // Most recent `limit`, oldest first.
    events.sort_by(|a, b| {
        (a.at, a.seq, &a.org, &a.credential, &a.agent, &a.outcome).cmp(&(
            b.at,
            b.seq,
            &b.org,
            &b.credential,
            &b.agent,
            &b.outcome,
        ))
    });
    let excess = events.len().saturating_sub(limit as usize);
    events.drain(..excess);
    Ok(events)
}

/// What a count row is keyed by (the primary key's order, which is also the
/// order a batch upserts in, so two replicas lock rows in the same order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct CountKey {
    org: String,
    credential: String,
    /// `""` when no agent is known.
    agent: String,
    outcome: String,
    minute: i64,
}

impl CountKey {
    fn of(e: &UseEvent, at: OffsetDateTime, outcome: &str) -> CountKey {
        CountKey {
            org: e.org.clone(),
            credential: e.credential.clone(),
            agent: e.agent.clone().unwrap_or_default(),
            outcome: outcome.to_string(),
            minute: minute_of(to_micros(at)),
        }
    }
}

/// Add `n` to `key` in a map of refusals, folding a new key under [`OTHER`]
/// once the map holds [`MAX_PENDING_KEYS`].
fn add_bounded(map: &mut BTreeMap<CountKey, u64>, mut key: CountKey, n: u64) {
    if map.len() >= MAX_PENDING_KEYS && !map.contains_key(&key) {
        key.credential = OTHER.into();
    }
    *map.entry(key).or_default() += n;
}

/// A use and when it happened.
type Stamped = (UseEvent, OffsetDateTime);

type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    /// A releasing use: acknowledged once committed.
    Use(UseEvent, OffsetDateTime, Ack),
    /// Commit everything recorded so far and flush the sink.
    Flush(oneshot::Sender<()>),
    /// Prune now; answers the number of rows deleted.
    Prune(oneshot::Sender<Result<u64, String>>),
    /// A key's lease is half spent: commit the next one.
    Refill(CountKey),
    /// Commit everything recorded so far, flush the sink, close the store
    /// and stop.
    Close(oneshot::Sender<()>),
}

/// What the call path leaves for the writer without waiting for it.
#[derive(Default)]
struct Queued {
    /// Refusals since the writer last took them.
    refusals: BTreeMap<CountKey, u64>,
    /// Full events of those refusals and of uses released on a lease, for
    /// the sink (at most [`sink::BACKLOG`]).
    events: Vec<Stamped>,
    /// Committed uses not yet released, per count key.
    leases: HashMap<CountKey, Lease>,
}

/// Uses of one count key committed ahead of the calls that release them.
#[derive(Debug, Default)]
struct Lease {
    /// Committed and not yet released.
    left: u64,
    /// The last grant.
    size: u64,
    /// A top-up has been asked for and not yet answered.
    refilling: bool,
    /// The latest release on this lease not yet written to `last_used_at`.
    last_used: Option<i64>,
}

/// State shared by the call path and the writer.
struct Shared {
    queued: Mutex<Queued>,
    /// Whether the sink takes events at all.
    sink_on: bool,
    /// Events the sink did not get (its backlog was full).
    sink_dropped: AtomicU64,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sink_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.sink_dropped.fetch_add(n, Ordering::Relaxed);
        if (before + n).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
            tracing::warn!(
                dropped = before + n,
                "audit sink backlog full: full use events are being dropped (the counts in the store are exact)"
            );
        }
    }
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The audit store could not be opened.
    #[error("{0}")]
    Store(StoreError),
    /// The sink could not be opened.
    #[error("{0}")]
    Sink(std::io::Error),
}

/// The queue of releasing uses, the map of refusals, the leases, and their
/// writer thread.
pub(crate) struct UseRecorder {
    tx: mpsc::SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl UseRecorder {
    /// Open the audit store's own connection and the sink, and start the
    /// writer thread.
    pub(crate) async fn start(location: &Location, options: &AuditOptions) -> Result<UseRecorder, StartError> {
        let out = sink::Output::open(&options.sink).map_err(StartError::Sink)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            queued: Mutex::default(),
            sink_on: options.sink != AuditSink::None,
            sink_dropped: AtomicU64::new(0),
        });
        let (opened, open) = oneshot::channel();
        let (location, retention, writer_shared) = (location.clone(), options.retention, shared.clone());
        std::thread::Builder::new()
            .name("latchkey-audit".into())
            .spawn(move || match Store::open(&location) {
                Ok(store) => {
                    let _ = opened.send(Ok(()));
                    Writer { store, retention, out, shared: writer_shared, rx }.run();
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(|e| StartError::Store(StoreError::Database(format!("cannot start the audit writer: {e}"))))?;
        match open.await {
            Ok(Ok(())) => Ok(UseRecorder { tx, shared }),
            Ok(Err(e)) => Err(StartError::Store(e)),
            Err(_) => Err(StartError::Store(StoreError::Database("the audit writer stopped while starting".into()))),
        }
    }

    /// Count a use that released nothing; never waits and never drops it.
    pub(crate) fn record(&self, event: UseEvent) {
        let at = OffsetDateTime::now_utc();
        let key = CountKey::of(&event, at, &event.outcome);
        let mut r = self.shared.queue();
        add_bounded(&mut r.refusals, key, 1);
        if self.shared.sink_on {
            if r.events.len() < sink::BACKLOG {
                r.events.push((event, at));
            } else {
                drop(r);
                self.shared.sink_dropped(1);
            }
        }
    }

    /// Count a use and wait until it is committed: the call may release
    /// its credential only after this returns `Ok`. A use covered by its
    /// key's lease (already committed) returns at once.
    pub(crate) async fn record_durable(&self, event: UseEvent) -> Result<(), AuditUnavailable> {
        let at = OffsetDateTime::now_utc();
        let Some(event) = self.take_leased(event, at) else { return Ok(()) };
        let (ack, committed) = oneshot::channel();
        self.tx.try_send(Msg::Use(event, at, ack)).map_err(|e| {
            AuditUnavailable(match e {
                mpsc::TrySendError::Full(_) => format!("the audit queue is full ({QUEUE} events)"),
                mpsc::TrySendError::Disconnected(_) => "the audit writer has stopped".into(),
            })
        })?;
        match tokio::time::timeout(DURABLE_TIMEOUT, committed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(AuditUnavailable(why)),
            Ok(Err(_)) => Err(AuditUnavailable("the audit writer has stopped".into())),
            Err(_) => Err(AuditUnavailable(format!("the audit store did not commit within {DURABLE_TIMEOUT:?}"))),
        }
    }

    /// Release `event` on a use its key's lease holds, if there is one:
    /// the count that covers it is committed already. Only successful
    /// vault-layer uses are leased (the uses that recur at gateway rates).
    /// Gives the event back when no lease covers it.
    fn take_leased(&self, event: UseEvent, at: OffsetDateTime) -> Option<UseEvent> {
        if event.outcome != "ok" || event.layer != Some(Layer::Vault) {
            return Some(event);
        }
        let key = CountKey::of(&event, at, "ok");
        let mut q = self.shared.queue();
        let Some(lease) = q.leases.get_mut(&key).filter(|l| l.left > 0) else { return Some(event) };
        lease.left -= 1;
        lease.last_used = lease.last_used.max(Some(to_micros(at)));
        let refill = !lease.refilling && lease.left <= lease.size / 2;
        lease.refilling |= refill;
        if self.shared.sink_on {
            if q.events.len() < sink::BACKLOG {
                q.events.push((event, at));
            } else {
                drop(q);
                self.shared.sink_dropped(1);
            }
        } else {
            drop(q);
        }
        if refill {
            // If the queue is full the top-up is skipped: the lease runs
            // out, the next call waits, and its commit grants a new lease.
            let _ = self.tx.try_send(Msg::Refill(key));
        }
        None
    }

    /// Hand `msg` to the writer, waiting for room in its queue off the
    /// async workers (the queue is full only under an overload).
    async fn send(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Disconnected(_)) => false,
            Err(mpsc::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                matches!(tokio::task::spawn_blocking(move || tx.send(msg).is_ok()).await, Ok(true))
            }
        }
    }

    /// Wait until every use recorded so far is committed (or its commit
    /// failed) and handed to the sink, and the sink flushed.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Msg::Flush(done)).await {
            let _ = wait.await;
        }
    }

    /// Prune counts (and legacy per-use rows) older than the retention now;
    /// the number of rows deleted (0 without a retention).
    pub(crate) async fn prune(&self) -> Result<u64, StoreError> {
        let (done, wait) = oneshot::channel();
        let stopped = || StoreError::Database("the audit writer has stopped".into());
        if !self.send(Msg::Prune(done)).await {
            return Err(stopped());
        }
        wait.await.map_err(|_| stopped())?.map_err(StoreError::Database)
    }

    /// Full use events the sink did not get because its backlog was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.sink_dropped.load(Ordering::Relaxed)
    }

    /// Commit and flush everything, then close the writer's connection and
    /// stop its thread.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Msg::Close(done)).await {
            let _ = wait.await;
        }
    }
}

/// A batch of releasing uses, grouped by count key.
#[derive(Default)]
struct Releases {
    groups: BTreeMap<CountKey, Vec<(Stamped, Ack)>>,
    len: usize,
}

impl Releases {
    fn push(&mut self, e: UseEvent, at: OffsetDateTime, ack: Ack) {
        let key = CountKey::of(&e, at, &e.outcome);
        self.groups.entry(key).or_default().push(((e, at), ack));
        self.len += 1;
    }
}

/// The writer's connection to the audit tables.
///
/// Every releasing call waits for a commit here, so a commit must cost as
/// few thread hand-offs as possible. On SQLite the writer's own thread owns
/// the connection (`rusqlite`: the statements run on that thread, with no
/// executor and no connection worker between the batch and the disk); sqlx
/// would run each statement of the transaction on its connection's worker
/// thread and wake the caller after each one. On PostgreSQL, where a commit
/// is a network round trip anyway, the thread drives an sqlx pool on a
/// runtime of its own, so the writer does not depend on the server's
/// runtime and closes cleanly whenever the vault is dropped.
enum Store {
    Sqlite(rusqlite::Connection),
    Postgres { rt: tokio::runtime::Runtime, pool: sqlx::PgPool },
}

/// The upsert of `rows` count rows: the same text on both backends.
fn upsert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO audit_use_counts (org, credential, agent, outcome, minute, count) VALUES ");
    for i in 0..rows {
        let b = i * 6;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
    }
    sql.push_str(
        " ON CONFLICT (org, credential, agent, outcome, minute) \
         DO UPDATE SET count = audit_use_counts.count + excluded.count",
    );
    sql
}

const LAST_USED_SQL: &str = "UPDATE credentials SET last_used_at = $1 \
     WHERE org = $2 AND name = $3 AND (last_used_at IS NULL OR last_used_at < $1)";
/// Give back a lease's unused uses: never below zero.
const RETURN_SQL: &str = "UPDATE audit_use_counts SET count = count - $1 \
     WHERE org = $2 AND credential = $3 AND agent = $4 AND outcome = $5 AND minute = $6 AND count >= $1";
const PRUNE_COUNTS_SQL: &str = "DELETE FROM audit_use_counts WHERE minute < $1";
const PRUNE_USES_SQL: &str = "DELETE FROM audit_events WHERE seq IN \
     (SELECT seq FROM audit_events WHERE action = 'use' AND at < $1 LIMIT $2)";

/// Rows per upsert statement (6 parameters each, well under both
/// backends' limits).
const UPSERT_ROWS: usize = 500;

/// Rows deleted per statement while pruning, so no transaction holds the
/// write lock for long.
const PRUNE_CHUNK: i64 = 10_000;

impl Store {
    fn open(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::SqliteFile(path) => {
                let fail = |e: rusqlite::Error| StoreError::Database(format!("{}: {e}", path.display()));
                // The vault created the file, its WAL journal and the tables.
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(fail)?;
                conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
                conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;").map_err(fail)?;
                conn.set_prepared_statement_cache_capacity(32);
                Ok(Store::Sqlite(conn))
            }
            Location::Postgres(url) => {
                let fail = |e: &dyn std::fmt::Display| StoreError::Database(format!("{}: {e}", redact_url(url)));
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| fail(&e))?;
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .map_err(|e| fail(&e))?
                    .options([("synchronous_commit", "off")]);
                let pool = rt
                    .block_on(
                        sqlx::postgres::PgPoolOptions::new()
                            .max_connections(1)
                            .acquire_timeout(Duration::from_secs(10))
                            .connect_with(options),
                    )
                    .map_err(|e| fail(&e))?;
                Ok(Store::Postgres { rt, pool })
            }
        }
    }

    /// Add `counts` to `audit_use_counts` and move `last_used_at` forward,
    /// in one transaction, in key order.
    fn write_counts(
        &mut self,
        counts: &BTreeMap<CountKey, u64>,
        last_used: &BTreeMap<(String, String), i64>,
    ) -> Result<(), String> {
        let rows: Vec<(&CountKey, &u64)> = counts.iter().collect();
        match self {
            Store::Sqlite(conn) => {
                let run = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
                    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    for chunk in rows.chunks(UPSERT_ROWS) {
                        let mut stmt = tx.prepare_cached(&upsert_sql(chunk.len()))?;
                        let mut i = 0;
                        for (k, n) in chunk {
                            stmt.raw_bind_parameter(i + 1, k.org.as_str())?;
                            stmt.raw_bind_parameter(i + 2, k.credential.as_str())?;
                            stmt.raw_bind_parameter(i + 3, k.agent.as_str())?;
                            stmt.raw_bind_parameter(i + 4, k.outcome.as_str())?;
                            stmt.raw_bind_parameter(i + 5, k.minute)?;
                            stmt.raw_bind_parameter(i + 6, crate::storage::db_int(**n))?;
                            i += 6;
                        }
                        stmt.raw_execute()?;
                    }
                    {
                        let mut stmt = tx.prepare_cached(LAST_USED_SQL)?;
                        for ((org, name), at) in last_used {
                            stmt.execute(rusqlite::params![at, org, name])?;
                        }
                    }
                    tx.commit()
                };
                run(conn).map_err(|e| e.to_string())
            }
            Store::Postgres { rt, pool } => rt
                .block_on(async {
                    let mut tx = pool.begin().await?;
                    for chunk in rows.chunks(UPSERT_ROWS) {
                        let sql = upsert_sql(chunk.len());
                        let mut q = sqlx::query(&sql);
                        for (k, n) in chunk {
                            q = q
                                .bind(k.org.as_str())
                                .bind(k.credential.as_str())
                                .bind(k.agent.as_str())
                                .bind(k.outcome.as_str())
                                .bind(k.minute)
                                .bind(crate::storage::db_int(**n));
                        }
                        q.execute(&mut *tx).await?;
                    }
                    for ((org, name), at) in last_used {
                        sqlx::query(LAST_USED_SQL)
                            .bind(*at)
                            .bind(org.as_str())
                            .bind(name.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Subtract the unused part of expired or withdrawn leases, in one
    /// transaction.
    fn return_unused(&mut self, returns: &BTreeMap<CountKey, u64>) -> Result<(), String> {
        match self {
            Store::Sqlite(conn) => {
                let run = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
                    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    {
                        let mut stmt = tx.prepare_cached(RETURN_SQL)?;
                        for (k, n) in returns {
                            stmt.execute(rusqlite::params![
                                crate::storage::db_int(*n),
                                k.org,
                                k.credential,
                                k.agent,
                                k.outcome,
                                k.minute
                            ])?;
                        }
                    }
                    tx.commit()
                };
                run(conn).map_err(|e| e.to_string())
            }
            Store::Postgres { rt, pool } => rt
                .block_on(async {
                    let mut tx = pool.begin().await?;
                    for (k, n) in returns {
                        sqlx::query(RETURN_SQL)
                            .bind(crate::storage::db_int(*n))
                            .bind(k.org.as_str())
                            .bind(k.credential.as_str())
                            .bind(k.agent.as_str())
                            .bind(k.outcome.as_str())
                            .bind(k.minute)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Delete counts of minutes before `cutoff` and legacy per-use rows of
    /// `audit_events` older than it; lifecycle events are kept. The number
    /// of rows deleted.
    fn prune(&mut self, cutoff: OffsetDateTime) -> Result<u64, String> {
        let cutoff = to_micros(cutoff);
        let mut total = 0;
        loop {
            let (n, n2) = match self {
                Store::Sqlite(conn) => {
                    let run = |conn: &rusqlite::Connection| -> rusqlite::Result<(u64, u64)> {
                        let n = conn.execute(PRUNE_COUNTS_SQL, [minute_of(cutoff)])?;
                        let n2 = conn.execute(PRUNE_USES_SQL, [cutoff, PRUNE_CHUNK])?;
                        Ok((n as u64, n2 as u64))
                    };
                    run(conn).map_err(|e| e.to_string())?
                }
                Store::Postgres { rt, pool } => rt
                    .block_on(async {
                        let n = sqlx::query(PRUNE_COUNTS_SQL)
                            .bind(minute_of(cutoff))
                            .execute(&*pool)
                            .await?
                            .rows_affected();
                        let n2 = sqlx::query(PRUNE_USES_SQL)
                            .bind(cutoff)
                            .bind(PRUNE_CHUNK)
                            .execute(&*pool)
                            .await?
                            .rows_affected();
                        Ok::<_, sqlx::Error>((n, n2))
                    })
                    .map_err(|e| e.to_string())?,
            };
            total += n + n2;
            if n2 < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    fn close(self) {
        match self {
            Store::Sqlite(conn) => {
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the audit store's connection");
                }
            }
            Store::Postgres { rt, pool } => rt.block_on(pool.close()),
        }
    }
}

/// The writer thread's state: see the module's documentation.
struct Writer {
    store: Store,
    retention: Option<Duration>,
    out: sink::Output,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
}

impl Writer {
    fn run(mut self) {
        // Refusals (and uses that failed closed) not yet committed.
        let mut pending: BTreeMap<CountKey, u64> = BTreeMap::new();
        // After a failed commit of `pending`, releasing batches do not carry
        // it again until this instant (a poisoned count must not fail every
        // call).
        let mut pending_retry = Instant::now();
        // Unused leases to give back, and when to retry after a failure.
        let mut returns: BTreeMap<CountKey, u64> = BTreeMap::new();
        let mut returns_retry = Instant::now();
        // Latest releases per credential not yet in `last_used_at`.
        let mut last_used: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut refills: Vec<CountKey> = Vec::new();
        let mut next_prune = Instant::now();
        let mut next_tick = Instant::now() + TICK;
        let mut closing = None;
        // What the call path's sink events are swapped with: emptied after
        // each round, its capacity kept, so the call path's pushes do not
        // grow (and copy) the vector while holding the queue's lock.
        let mut spare_events: Vec<Stamped> = Vec::new();
        loop {
            let mut releases = Releases::default();
            let mut flushes = Vec::new();
            let mut prunes = Vec::new();
            let mut sink_events: Vec<Stamped> = Vec::new();
            let mut disconnected = false;
            let mut take = |msg: Msg, releases: &mut Releases| match msg {
                // A caller that gave up waiting has already failed closed (and
                // its surface records that refusal): not a release.
                Msg::Use(_, _, ack) if ack.is_closed() => {}
                Msg::Use(e, at, ack) => releases.push(e, at, ack),
                Msg::Flush(done) => flushes.push(done),
                Msg::Prune(done) => prunes.push(done),
                Msg::Refill(key) => refills.push(key),
                Msg::Close(done) => closing = Some(done),
            };
            match self.rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(m) => take(m, &mut releases),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
            }
            // Group commit: everything already queued goes into this
            // transaction; calls that arrive while it commits form the next.
            while releases.len < BATCH {
                let Ok(msg) = self.rx.try_recv() else { break };
                take(msg, &mut releases);
            }
            let now = Instant::now();
            let ticked = now >= next_tick;
            if ticked {
                next_tick = now + TICK;
            }
            let stopping = disconnected || closing.is_some();
            let urgent = stopping || !flushes.is_empty();
            let now_us = to_micros(OffsetDateTime::now_utc());
            let this_minute = minute_of(now_us);

            // What the call path left: refusals, sink events, leases' last
            // uses; and the leases to give back (expired, or all of them
            // when flushing, so the counts a query reads are exact).
            let mut refusal_events = std::mem::take(&mut spare_events);
            let mut grants: BTreeMap<CountKey, u64> = BTreeMap::new();
            {
                let mut q = self.shared.queue();
                for (key, n) in std::mem::take(&mut q.refusals) {
                    add_bounded(&mut pending, key, n);
                }
                std::mem::swap(&mut q.events, &mut refusal_events);
                q.leases.retain(|key, lease| {
                    if let Some(at) = lease.last_used.take() {
                        let t = last_used.entry((key.org.clone(), key.credential.clone())).or_insert(at);
                        *t = (*t).max(at);
                    }
                    let keep = key.minute >= this_minute && !urgent;
                    if !keep && lease.left > 0 {
                        *returns.entry(key.clone()).or_default() += lease.left;
                    }
                    keep
                });
                if !urgent {
                    // Top-ups asked for, and a first lease for each key a
                    // waiting use of this minute will commit.
                    let ahead = now_us - this_minute >= MINUTE_US - LEASE_AHEAD_US;
                    for key in refills.drain(..).filter(|k| k.minute == this_minute) {
                        let size = q.leases.get(&key).map_or(LEASE_FIRST, |l| (l.size * 2).min(LEASE_MAX));
                        if ahead {
                            // A busy key's next minute starts on a lease too,
                            // instead of its first calls waiting for commits.
                            let next = CountKey { minute: key.minute + MINUTE_US, ..key.clone() };
                            if !q.leases.contains_key(&next) {
                                grants.entry(next).or_insert(size);
                            }
                        }
                        grants.insert(key, size);
                    }
                    for (key, v) in &releases.groups {
                        let leasable = key.minute == this_minute
                            && v.iter().all(|((e, _), _)| e.outcome == "ok" && e.layer == Some(Layer::Vault));
                        if leasable && !grants.contains_key(key) && q.leases.get(key).is_none_or(|l| l.left == 0) {
                            let size = q.leases.get(key).map_or(LEASE_FIRST, |l| l.size.max(LEASE_FIRST));
                            grants.insert(key.clone(), size);
                        }
                    }
                }
                refills.clear();
            }

            let carry = !pending.is_empty() && (urgent || (now >= pending_retry && (ticked || releases.len > 0)));
            let mut outcomes: Vec<(Stamped, Ack, Result<(), String>)> = Vec::new();
            if releases.len > 0 || carry || !grants.is_empty() || (ticked && !last_used.is_empty()) {
                let mut counts: BTreeMap<CountKey, u64> =
                    releases.groups.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect();
                for (k, at) in latest_uses(releases.groups.values().flatten().map(|(s, _)| s)) {
                    let t = last_used.entry(k).or_insert(at);
                    *t = (*t).max(at);
                }
                for (k, n) in &grants {
                    *counts.entry(k.clone()).or_default() += n;
                }
                let with_grants = counts.clone();
                if carry {
                    for (k, n) in &pending {
                        *counts.entry(k.clone()).or_default() += n;
                    }
                }
                let mut result = self.store.write_counts(&counts, &last_used);
                if carry {
                    match &result {
                        Ok(()) => pending.clear(),
                        Err(e) => {
                            tracing::warn!(error = %e, keys = pending.len(), "could not store counts of refused calls; retrying them");
                            pending_retry = now + Duration::from_secs(1);
                            if releases.len > 0 || !grants.is_empty() {
                                // The releases and leases alone, without the refusals.
                                result = self.store.write_counts(&with_grants, &last_used);
                            }
                        }
                    }
                }
                if result.is_ok() {
                    last_used.clear();
                }
                // The leases committed with the batch are the call path's
                // to spend; a failed batch grants nothing.
                {
                    let mut q = self.shared.queue();
                    for (key, n) in &grants {
                        let lease = q.leases.entry(key.clone()).or_default();
                        lease.refilling = false;
                        if result.is_ok() {
                            lease.left += n;
                            lease.size = *n;
                        }
                    }
                }
                let groups = std::mem::take(&mut releases.groups);
                match result {
                    Ok(()) => {
                        for v in groups.into_values() {
                            outcomes.extend(v.into_iter().map(|(s, ack)| (s, ack, Ok(()))));
                        }
                    }
                    Err(e) if groups.len() > 1 => {
                        // One bad key must not fail the others: write each alone.
                        tracing::warn!(error = %e, keys = groups.len(), "a batch of use counts failed; writing them one by one");
                        for (key, v) in groups {
                            let last_used = latest_uses(v.iter().map(|(s, _)| s));
                            let one = BTreeMap::from([(key, v.len() as u64)]);
                            let r = self.store.write_counts(&one, &last_used);
                            outcomes.extend(v.into_iter().map(|(s, ack)| (s, ack, r.clone())));
                        }
                    }
                    Err(e) => {
                        for v in groups.into_values() {
                            outcomes.extend(v.into_iter().map(|(s, ack)| (s, ack, Err(e.clone()))));
                        }
                    }
                }
            }
            if !returns.is_empty() && (urgent || ticked || now >= returns_retry) {
                match self.store.return_unused(&returns) {
                    Ok(()) => returns.clear(),
                    Err(e) => {
                        // The counts stay above the uses (never below) until it works.
                        tracing::warn!(error = %e, keys = returns.len(), "could not give back unused audit leases; retrying them");
                        returns_retry = now + Duration::from_secs(1);
                    }
                }
            }
            for ((e, at), ack, result) in outcomes {
                match &result {
                    Ok(()) => sink_events.push((e, at)),
                    // The call fails closed, and its surface records that
                    // refusal (`audit_unavailable`) like any other: counted
                    // and in the sink.
                    Err(why) => {
                        tracing::error!(error = %why, "could not store a use; the call waiting on it fails closed")
                    }
                }
                let _ = ack.send(result);
            }
            if self.shared.sink_on {
                sink_events.append(&mut refusal_events);
                // In the order the uses happened, whichever path they took.
                sink_events.sort_by_key(|(_, at)| *at);
                if !sink_events.is_empty() {
                    let lost = self.out.write(sink_events.iter().map(|(e, at)| (e, *at)));
                    self.shared.sink_dropped(lost);
                }
            }
            refusal_events.clear();
            spare_events = refusal_events;

            let prune_due = self.retention.is_some() && now >= next_prune;
            if prune_due || !prunes.is_empty() {
                let result = match self.retention {
                    Some(keep) => self.store.prune(OffsetDateTime::now_utc() - keep),
                    None => Ok(0),
                };
                match &result {
                    Ok(n) if *n > 0 => tracing::info!(rows = n, "pruned audit counts older than the retention"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not prune the audit counts; retrying later"),
                }
                next_prune = now + PRUNE_EVERY;
                for done in prunes {
                    let _ = done.send(result.clone());
                }
            }
            if urgent {
                self.out.flush();
            }
            for done in flushes {
                let _ = done.send(());
            }
            if stopping {
                break;
            }
        }
        self.store.close();
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }
}

/// The latest successful vault-layer use per credential.
fn latest_uses<'a>(uses: impl Iterator<Item = &'a Stamped>) -> BTreeMap<(String, String), i64> {
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (e, at) in uses.filter(|(e, _)| e.outcome == "ok" && e.layer == Some(Layer::Vault)) {
        let t = last.entry((e.org.clone(), e.credential.clone())).or_insert(i64::MIN);
        *t = (*t).max(to_micros(*at));
    }
    last
}
