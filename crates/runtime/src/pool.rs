//! Plugin calls run here: a fixed set of threads of their own, and caps on
//! how many of them one plugin and one organisation may hold at once.
//!
//! **The inline lane.** Handing a call to a pool thread and its answer back
//! costs two cross-thread wake-ups, more than a short call itself (a SigV4
//! signature is some tens of microseconds). So a call of a plugin whose
//! calls stay short runs first on the async worker that asked for it
//! ([`CallPool::run_call`]), under the same shares as a pooled call, with a
//! budget of [`PoolConfig::inline_budget`] instead of the whole one, and at
//! most [`PoolConfig::inline`] such calls at once across the process (by
//! default one per async worker). A call that overruns that budget is stopped by its
//! epoch deadline and runs again on a pool thread with its whole budget; if
//! it needs more than the inline budget there too, that counts against its
//! plugin, and at [`STRIKES`] its calls go to the pool threads for
//! [`DEMOTION`]. A looping or slow plugin can so hold a
//! worker for one inline budget per demotion period, never longer.
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
use std::time::{Duration, Instant};

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
    /// Calls that may run at once on the async workers themselves (the
    /// inline lane); 0 sends every call to the pool threads.
    pub inline: usize,
    /// The time budget of a call on the inline lane: one that needs more is
    /// stopped and run again on a pool thread with the whole budget.
    pub inline_budget: Duration,
}

/// How long a plugin whose calls overran the inline budget has its calls
/// sent to the pool threads before it may run inline again.
pub const DEMOTION: Duration = Duration::from_secs(10);

/// Calls of a plugin that needed more than the inline budget on a pool
/// thread too before its calls go to the pool threads: its first call
/// (a cold instance) may be slow once without costing it the lane.
pub const STRIKES: u32 = 2;

/// Where a call runs, and so the time budget it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// On the async worker that asked, with this (short) budget.
    Inline(Duration),
    /// On a pool thread, with the plugin's whole budget.
    Pool,
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
            // As many as the async runtime has workers (one per core): a
            // call that overruns holds its worker for one inline budget.
            inline: cores,
            inline_budget: Duration::from_millis(1),
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
    /// Permits of the inline lane.
    inline: Arc<Semaphore>,
    /// Plugins' slow calls since their last demotion, and until when their
    /// calls go to the pool threads.
    demoted: Mutex<HashMap<Arc<str>, Lapses>>,
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
            jobs: Some(tx),
            plugins: Mutex::default(),
            org_plugins: Mutex::default(),
            orgs: Mutex::default(),
            inline: Arc::new(Semaphore::new(config.inline)),
            demoted: Mutex::default(),
            config,
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
        let permits = self.shares(plugin, org).await?;
        self.on_thread(permits, f).await
    }

    /// Run a plugin call under `plugin`'s and `org`'s caps: on the inline
    /// lane when the plugin's calls have stayed short and a lane permit is
    /// free, else (or when it overran the inline budget: `overran` says so
    /// of its result) on a pool thread. `f` gets the lane, whose budget it
    /// must hold the call to.
    pub async fn run_call<R: Send + 'static>(
        &self,
        plugin: &Arc<str>,
        org: &str,
        f: impl Fn(Lane) -> R + Send + 'static,
        overran: impl FnOnce(&R) -> bool,
    ) -> Result<R, PoolError> {
        let permits = self.shares(plugin, org).await?;
        let Some(lane) = self.inline_permit(plugin) else {
            return self.on_thread(permits, move || f(Lane::Pool)).await;
        };
        let budget = self.config.inline_budget;
        let out = f(Lane::Inline(budget));
        drop(lane);
        if !overran(&out) {
            return Ok(out);
        }
        // Run again with the whole budget. Only a call that needs more than
        // the inline budget there too sends its plugin to the pool: one that
        // overran because its thread was preempted (a busy machine) or its
        // first instance was cold does not.
        let (out, took) = self
            .on_thread(permits, move || {
                let started = Instant::now();
                let out = f(Lane::Pool);
                (out, started.elapsed())
            })
            .await?;
        if took > budget {
            self.strike(plugin);
        }
        Ok(out)
    }

    /// Whether `plugin`'s calls are on the inline lane now.
    pub fn inline_allowed(&self, plugin: &Arc<str>) -> bool {
        if self.config.inline == 0 {
            return false;
        }
        let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lapses) = demoted.get_mut(plugin) else { return true };
        match lapses.until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                lapses.until = None;
                true
            }
            None => true,
        }
    }

    fn inline_permit(&self, plugin: &Arc<str>) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if !self.inline_allowed(plugin) {
            return None;
        }
        self.inline.try_acquire().ok()
    }

    /// Count a slow call of `plugin`; at [`STRIKES`], its calls go to the
    /// pool threads for [`DEMOTION`].
    fn strike(&self, plugin: &Arc<str>) {
        let mut demoted = self.demoted.lock().unwrap_or_else(|e| e.into_inner());
        let lapses = demoted.entry(plugin.clone()).or_default();
        lapses.strikes += 1;
        if lapses.strikes >= STRIKES {
            lapses.strikes = 0;
            lapses.until = Some(Instant::now() + DEMOTION);
            tracing::info!(
                plugin = %plugin,
                "plugin calls need more than the inline budget; they run on the pool threads for {DEMOTION:?}"
            );
        }
    }

    /// The three shares of a call, narrowest first: this organisation's
    /// calls of this plugin, so calls waiting behind a slow plugin hold
    /// nothing another organisation, or another plugin, needs.
    async fn shares(&self, plugin: &Arc<str>, org: &str) -> Result<Permits, PoolError> {
        let waited = self.config.queue_timeout;
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
        Ok((own_permit, plugin_permit, org_permit))
    }

    async fn on_thread<R: Send + 'static>(
        &self,
        permits: Permits,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = f();
            drop(permits);
            let _ = tx.send(out);
        });
        let Some(sender) = &self.jobs else { return Err(PoolError::Stopped) };
        sender.send(job).map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }
}

/// A plugin's record on the inline lane.
#[derive(Debug, Default)]
struct Lapses {
    /// Slow calls since the last demotion.
    strikes: u32,
    /// Its calls go to the pool threads until then.
    until: Option<Instant>,
}

/// A call's three shares, held until it ends.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit, OwnedSemaphorePermit);

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
            inline: 0,
            inline_budget: Duration::from_millis(1),
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
            inline: 0,
            inline_budget: Duration::from_millis(1),
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

    fn inline_pool(inline: usize) -> CallPool {
        CallPool::start(PoolConfig {
            threads: 2,
            per_plugin: 2,
            per_plugin_total: 2,
            per_org: 2,
            queue_timeout: Duration::from_secs(30),
            inline,
            inline_budget: Duration::from_millis(1),
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_short_call_runs_on_the_calling_thread_and_an_overrun_goes_to_the_pool() {
        let pool = inline_pool(1);
        let p: Arc<str> = Arc::from("p");
        let caller = std::thread::current().id();
        // A call that stays within the inline budget runs where it was asked.
        let (lane, thread) =
            pool.run_call(&p, "o", |lane| (lane, std::thread::current().id()), |_| false).await.unwrap();
        assert_eq!(lane, Lane::Inline(Duration::from_millis(1)));
        assert_eq!(thread, caller);
        // One that overruns it runs again on a pool thread, with the whole budget...
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let (lane, thread) = pool
            .run_call(
                &p,
                "o",
                move |lane| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    (lane, std::thread::current().id())
                },
                |(lane, _)| matches!(lane, Lane::Inline(_)),
            )
            .await
            .unwrap();
        assert_eq!((lane, tries.load(Ordering::SeqCst)), (Lane::Pool, 2));
        assert_ne!(thread, caller);
        // It was fast there, so the plugin keeps the inline lane (an inline
        // call is also stopped when its thread is preempted)...
        assert!(pool.inline_allowed(&p));
        // ... unless its calls need more than the inline budget on the pool
        // too: the first such call may be a cold instance, the second is not.
        let slow = |lane: Lane| {
            if lane == Lane::Pool {
                std::thread::sleep(Duration::from_millis(3));
            }
            (lane, ())
        };
        for strike in 1..=STRIKES {
            assert!(pool.inline_allowed(&p), "demoted after {} slow calls", strike - 1);
            let (lane, _) = pool.run_call(&p, "o", slow, |(lane, _)| matches!(lane, Lane::Inline(_))).await.unwrap();
            assert_eq!(lane, Lane::Pool);
        }
        // Then the plugin's later calls skip the inline lane, while other plugins keep it.
        assert!(!pool.inline_allowed(&p));
        let (lane, _) = pool.run_call(&p, "o", |lane| (lane, ()), |_| false).await.unwrap();
        assert_eq!(lane, Lane::Pool);
        let q: Arc<str> = Arc::from("q");
        let (lane, _) = pool.run_call(&q, "o", |lane| (lane, ()), |_| false).await.unwrap();
        assert!(matches!(lane, Lane::Inline(_)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_no_inline_permits_every_call_goes_to_the_pool() {
        let pool = inline_pool(0);
        let p: Arc<str> = Arc::from("p");
        let caller = std::thread::current().id();
        let (lane, thread) =
            pool.run_call(&p, "o", |lane| (lane, std::thread::current().id()), |_| false).await.unwrap();
        assert_eq!(lane, Lane::Pool);
        assert_ne!(thread, caller);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_calls_never_exceed_their_permits() {
        let pool = Arc::new(inline_pool(1));
        let p: Arc<str> = Arc::from("p");
        let (inline_now, inline_peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut calls = Vec::new();
        for _ in 0..8 {
            let (pool, p, now, peak) = (pool.clone(), p.clone(), inline_now.clone(), inline_peak.clone());
            calls.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let (now, peak) = (now.clone(), peak.clone());
                    pool.run_call(
                        &p,
                        "o",
                        move |lane| {
                            if matches!(lane, Lane::Inline(_)) {
                                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(n, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_micros(200));
                                now.fetch_sub(1, Ordering::SeqCst);
                            }
                        },
                        |_| false,
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(inline_peak.load(Ordering::SeqCst), 1, "more inline calls ran at once than the lane has permits");
    }
}
