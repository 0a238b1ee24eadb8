//! The change feed: how a vault learns of changes made by other processes
//! (SQLite) or other replicas (PostgreSQL), so the next call sees them.
//!
//! - **PostgreSQL**: a trigger on `vault_changes` sends `NOTIFY` when the
//!   writing transaction commits; every replica `LISTEN`s on a dedicated
//!   connection and invalidates the named entry the moment the notification
//!   arrives. No polling. When the listening connection is lost, the cache
//!   is suspended (calls read the database) until a new connection is
//!   listening, then cleared: whatever was missed in between is reconciled
//!   by reading it afresh.
//! - **SQLite**: one process's writes reach another process's cache through
//!   the file. A dedicated read-only connection checks `PRAGMA data_version`
//!   (a counter in shared memory that changes when another connection
//!   commits; it costs no disk read) every `interval`, and on a change reads
//!   the new rows of `vault_changes`. Writes made by this process have
//!   already invalidated its cache before they returned.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};
use tokio::sync::watch;

use crate::storage::cache::Cache;

/// The PostgreSQL notification channel of the vault in `schema`.
pub(crate) fn channel(schema: &str) -> String {
    format!("latchkey_vault_{schema}")
}

#[derive(serde::Deserialize)]
struct Payload {
    org: String,
    name: String,
}

/// Listen for changes on PostgreSQL until `stop` turns true. `ready` is
/// signalled once the first `LISTEN` is in place.
pub(crate) async fn listen_postgres(
    pool: PgPool,
    channel: String,
    cache: Arc<Cache>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "vault change feed: cannot connect; calls read the database until it is back");
                cache.suspend();
                if sleep_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "vault change feed: LISTEN failed; retrying");
            cache.suspend();
            if sleep_or_stop(&mut stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        // Listening: anything changed before this point is read afresh.
        cache.resume();
        backoff = Duration::from_millis(50);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tracing::debug!(%channel, "vault change feed listening");
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => match serde_json::from_str::<Payload>(n.payload()) {
                        Ok(p) => cache.invalidate(&p.org, &p.name),
                        Err(_) => cache.clear(),
                    },
                    Ok(None) => {
                        tracing::warn!("vault change feed: connection lost; reconnecting");
                        cache.suspend();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "vault change feed failed; reconnecting");
                        cache.suspend();
                        break;
                    }
                },
            }
        }
    }
}

/// Watch an SQLite vault for commits by other processes until `stop`.
pub(crate) async fn watch_sqlite(
    pool: SqlitePool,
    options: SqliteConnectOptions,
    cache: Arc<Cache>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // `fetch_all` throughout: an SQLite statement left unfinished by
    // `fetch_one` would pin this connection to an old snapshot.
    let mut last_seq: i64 = match sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM vault_changes").fetch_all(&pool).await
    {
        Ok(rows) => rows.first().and_then(|row| row.try_get(0).ok()).unwrap_or(0),
        Err(_) => 0,
    };
    drop(pool);
    let mut conn = match options.read_only(true).connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "vault change watcher cannot open the database; other processes' changes are not seen");
            return;
        }
    };
    let mut version: Option<i64> = None;
    loop {
        if sleep_or_stop(&mut stop, interval).await {
            let _ = conn.close().await;
            return;
        }
        let now = match sqlx::query("PRAGMA data_version").fetch_all(&mut conn).await {
            Ok(rows) => rows.first().and_then(|row| row.try_get::<i64, _>(0).ok()),
            Err(_) => None,
        };
        if now.is_none() || now == version {
            continue;
        }
        version = now;
        match sqlx::query("SELECT seq, org, name FROM vault_changes WHERE seq > $1 ORDER BY seq")
            .bind(last_seq)
            .fetch_all(&mut conn)
            .await
        {
            Ok(rows) => {
                for row in rows {
                    let (Ok(seq), Ok(org), Ok(name)) =
                        (row.try_get::<i64, _>(0), row.try_get::<String, _>(1), row.try_get::<String, _>(2))
                    else {
                        cache.clear();
                        continue;
                    };
                    cache.invalidate(&org, &name);
                    last_seq = last_seq.max(seq);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "vault change watcher could not read changes; clearing the cache");
                cache.clear();
            }
        }
    }
}

/// Sleep for `d`; true if `stop` turned true (or its sender is gone) first.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        r = stop.changed() => r.is_err() || *stop.borrow(),
        _ = tokio::time::sleep(d) => false,
    }
}
