//! Plugin calls run here, never on the async server's worker threads: a
//! fixed set of threads of their own, and caps on how many of them one
//! plugin and one organisation may hold at once.
//!
//! Three shares, taken in this order: one organisation's calls of one
//! plugin ([`PoolConfig::per_plugin`]), one plugin's calls across
//! organisations ([`PoolConfig::per_plugin_total`]), and one organisation's
//! calls of all plugins ([`PoolConfig::per_org`]). A plugin that loops until
//! its time budget, or is just slow, therefore spends only its own share: its
//! excess calls wait (asynchronously, holding no thread) for one of its own
//! permits, while every other plugin and organisation finds free threads. A call that cannot get a permit within
//! [`PoolConfig::queue_timeout`] fails with `plugin_busy`.
//!
//! Written by hand rather than with a general thread pool crate: what is
//! needed is admission by (plugin, organisation) *before* a thread is taken,
//! which tokio's semaphores give, plus a job queue. The queue is `flume`'s
//! multi-consumer channel: every thread waits on it directly, so handing a
//! job over wakes one thread, where a receiver shared under a mutex woke a
//! second one for the lock on every job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Sizes of the call pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Threads that run plugin calls.
    pub threads: usize,
    /// Calls of one plugin that one organisation may run at once.
    pub per_plugin: usize,
    /// Calls of one plugin that may run at once across all organisations
    /// (so one plugin never takes the whole pool).
    pub per_plugin_total: usize,
    /// Calls of one organisation that may run at once (all its plugins).
    pub per_org: usize,
    /// How long a call may wait for its permits before `plugin_busy`.
    pub queue_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let threads = (cores * 2).max(4);
        PoolConfig {
            threads,
            // One organisation's calls of one plugin may use as many
            // threads as the plugin may across organisations: one core each.
            per_plugin: cores.max(1),
            per_plugin_total: (threads / 2).max(1),
            per_org: (threads * 3 / 4).max(1),
            queue_timeout: Duration::from_secs(2),
        }
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Permits by key (a plugin, an organisation, or both).
type Shares<K> = Mutex<HashMap<K, Arc<Semaphore>>>;

/// Why a call did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The plugin's or the organisation's share stayed taken for the whole
    /// wait (a slow or looping plugin is using it).
    #[error("{0}")]
    Busy(String),
    /// The pool has stopped (the broker is shutting down).
    #[error("the plugin call pool has stopped")]
    Stopped,
}

/// The pool: threads, a job queue, and the permits.
pub struct CallPool {
    config: PoolConfig,
    /// Taken (closed) only on drop, so sending needs no lock.
    jobs: Option<flume::Sender<Job>>,
    plugins: Shares<Arc<str>>,
    org_plugins: Shares<(String, Arc<str>)>,
    orgs: Shares<String>,
}

impl std::fmt::Debug for CallPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool").field("config", &self.config).finish_non_exhaustive()
    }
}

impl CallPool {
    /// Start the threads.
    pub fn start(config: PoolConfig) -> CallPool {
        let (tx, rx) = flume::unbounded::<Job>();
        for i in 0..config.threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new().name(format!("latchkey-plugin-{i}")).spawn(move || {
                // Ends when the queue closes (the pool is dropped).
                while let Ok(job) = rx.recv() {
                    // A job that panics (a host bug) fails its own call (its
                    // result sender drops) and the thread goes on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        }
        CallPool {
            config,
            jobs: Some(tx),
            plugins: Mutex::default(),
            org_plugins: Mutex::default(),
            orgs: Mutex::default(),
        }
    }

    /// The sizes in force.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// How many calls of `plugin` hold a share right now, all organisations
    /// together (for metrics and tests).
    pub fn running(&self, plugin: &Arc<str>) -> usize {
        let map = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        map.get(plugin).map_or(0, |s| self.config.per_plugin_total.max(1) - s.available_permits())
    }

    fn semaphore<K: std::hash::Hash + Eq>(
        map: &Mutex<HashMap<K, Arc<Semaphore>>>,
        key: K,
        size: usize,
    ) -> Arc<Semaphore> {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_insert_with(|| Arc::new(Semaphore::new(size.max(1)))).clone()
    }

    async fn permit(
        &self,
        semaphore: Arc<Semaphore>,
        what: impl Fn() -> String,
    ) -> Result<OwnedSemaphorePermit, PoolError> {
        // A free share is taken at once, with no timer to set up.
        // (Queued waiters are handed released permits first, so this never
        // overtakes them.)
        match semaphore.clone().try_acquire_owned() {
            Ok(p) => return Ok(p),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(PoolError::Stopped),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout(self.config.queue_timeout, semaphore.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(PoolError::Stopped),
            Err(_) => Err(PoolError::Busy(what())),
        }
    }

    /// Run `f` on a pool thread under `plugin`'s and `org`'s caps, and wait
    /// for its result without holding an async worker. The permits go with
    /// the job, so a caller that gives up (a client that disconnects) does
    /// not free a share that is still in use.
    pub async fn run<R: Send + 'static>(
        &self,
        plugin: &Arc<str>,
        org: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let waited = self.config.queue_timeout;
        // The narrowest share first — this organisation's calls of this
        // plugin — so calls waiting behind a slow plugin hold nothing another
        // organisation, or another plugin, needs.
        let own_permit = self
            .permit(
                Self::semaphore(&self.org_plugins, (org.to_string(), plugin.clone()), self.config.per_plugin),
                || {
                    format!(
                        "organisation `{org}` already has {} calls of plugin `{plugin}` running and none finished \
                         within {waited:?} (a slow or looping plugin uses only its own share)",
                        self.config.per_plugin
                    )
                },
            )
            .await?;
        let plugin_permit = self
            .permit(Self::semaphore(&self.plugins, plugin.clone(), self.config.per_plugin_total), || {
                format!(
                    "plugin `{plugin}` already has {} calls running across organisations and none finished \
                     within {waited:?}",
                    self.config.per_plugin_total
                )
            })
            .await?;
        let org_permit = self
            .permit(Self::semaphore(&self.orgs, org.to_string(), self.config.per_org), || {
                format!(
                    "organisation `{org}` already has {} plugin calls running and none finished within {waited:?}",
                    self.config.per_org
                )
            })
            .await?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = f();
            drop((own_permit, plugin_permit, org_permit));
            let _ = tx.send(out);
        });
        let Some(sender) = &self.jobs else { return Err(PoolError::Stopped) };
        sender.send(job).map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }
}

impl Drop for CallPool {
    fn drop(&mut self) {
        // Closing the queue ends every thread once it finishes its job.
        self.jobs.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn a_plugin_never_holds_more_than_its_share() {
        let pool = Arc::new(CallPool::start(PoolConfig {
            threads: 4,
            per_plugin: 2,
            per_plugin_total: 2,
            per_org: 4,
            queue_timeout: Duration::from_secs(30),
        }));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let slow: Arc<str> = Arc::from("slow");
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut calls = Vec::new();
        for _ in 0..6 {
            let (pool, running, peak, slow, rx) =
                (pool.clone(), running.clone(), peak.clone(), slow.clone(), release_rx.clone());
            calls.push(tokio::spawn(async move {
                pool.run(&slow, "acme", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let _ = rx.lock().unwrap().recv();
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        // While the slow plugin holds its two permits, another plugin runs at once.
        while running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let fast: Arc<str> = Arc::from("fast");
        assert_eq!(pool.run(&fast, "acme", || 7).await, Ok(7));
        for _ in 0..6 {
            release_tx.send(()).unwrap();
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2, "the slow plugin ran more calls at once than its share");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_share_answers_busy_after_the_wait() {
        let pool = CallPool::start(PoolConfig {
            threads: 2,
            per_plugin: 1,
            per_plugin_total: 2,
            per_org: 2,
            queue_timeout: Duration::from_millis(50),
        });
        let p: Arc<str> = Arc::from("p");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pool = Arc::new(pool);
        let held = {
            let (pool, p) = (pool.clone(), p.clone());
            tokio::spawn(async move {
                pool.run(&p, "o", move || {
                    let _ = rx.recv();
                })
                .await
            })
        };
        // Wait until the first call holds the permit.
        loop {
            let sem = CallPool::semaphore(&pool.org_plugins, ("o".to_string(), p.clone()), 1);
            if sem.available_permits() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let err = pool.run(&p, "o", || ()).await.unwrap_err();
        assert!(matches!(err, PoolError::Busy(ref m) if m.contains("`p`")), "{err:?}");
        // Another organisation's calls of the same plugin are not held up.
        assert_eq!(pool.run(&p, "other", || 5).await, Ok(5));
        tx.send(()).unwrap();
        held.await.unwrap().unwrap();
    }
}
