//! The in-process credential cache: what a call needs to resolve a
//! credential without a database round trip.
//!
//! Entries hold the *sealed* blob, never plaintext: a hit still opens the
//! blob for the call (two AES-GCM decryptions of a few hundred bytes), so
//! plaintext lives only as long as the call that needs it. Absent names are
//! cached too, so a caller hammering an unknown name does not reach the
//! database on every call.
//!
//! Invalidation: every write invalidates its entry before it returns, and
//! the change watchers (`vault::watch`) invalidate entries changed by other
//! processes and replicas. A fill races an invalidation when it read the row
//! before a change committed and inserts after the change invalidated; the
//! generation counter closes that race: a fill is inserted only if no
//! invalidation happened since its read began. While a replica's change feed
//! is down, the cache is suspended (every lookup reads the database) and it
//! is cleared when the feed is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::storage::StoredCredential;

/// Bounds memory: past this many entries the cache starts over.
const MAX_ENTRIES: usize = 1_000_000;

/// A cached lookup: the stored row, or `None` for a name that does not exist.
pub(crate) type Entry = Option<Arc<StoredCredential>>;

#[derive(Default)]
pub(crate) struct Cache {
    /// org → name → entry; two levels so a lookup by `&str` allocates nothing.
    map: RwLock<HashMap<String, HashMap<String, Entry>>>,
    len: AtomicU64,
    generation: AtomicU64,
    suspended: AtomicBool,
}

impl Cache {
    /// The entry for `org`/`name`, if cached (and the cache is not suspended).
    pub(crate) fn get(&self, org: &str, name: &str) -> Option<Entry> {
        if self.suspended.load(Ordering::Acquire) {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(org)?.get(name).cloned()
    }

    /// The generation to pass to [`Cache::fill`], read *before* the row is.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Insert what was read, unless anything was invalidated since
    /// `generation` was read or the cache is suspended.
    pub(crate) fn fill(&self, generation: u64, org: &str, name: &str, entry: Entry) {
        if self.suspended.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the write lock, which every invalidation also takes.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if self.len.load(Ordering::Relaxed) as usize >= MAX_ENTRIES {
            map.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        if map.entry(org.to_string()).or_default().insert(name.to_string(), entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget `org`/`name`.
    pub(crate) fn invalidate(&self, org: &str, name: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(names) = map.get_mut(org)
            && names.remove(name).is_some()
        {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forget everything.
    pub(crate) fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
        self.len.store(0, Ordering::Relaxed);
    }

    /// Stop serving and filling entries (the change feed is down).
    pub(crate) fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
        self.clear();
    }

    /// Serve again, from empty (the change feed is back).
    pub(crate) fn resume(&self) {
        self.clear();
        self.suspended.store(false, Ordering::Release);
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }
}

/// A small cache of values that are valid until the next invalidation of
/// anything (routes, agents: few, rarely changed). Entries carry the
/// generation they were read at; any invalidation makes them all stale.
pub(crate) struct GenCache<K, V> {
    map: RwLock<(u64, HashMap<K, V>)>,
}

impl<K, V> Default for GenCache<K, V> {
    fn default() -> Self {
        GenCache { map: RwLock::new((0, HashMap::new())) }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> GenCache<K, V> {
    /// The value for `key` if it was read at `generation`.
    pub(crate) fn get<Q>(&self, key: &Q, generation: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        if map.0 != generation {
            return None;
        }
        map.1.get(key).cloned()
    }

    /// Store a value read at `generation` (a newer generation starts over).
    pub(crate) fn put(&self, key: K, value: V, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.0 != generation {
            if generation < map.0 {
                return;
            }
            map.0 = generation;
            map.1.clear();
        }
        if map.1.len() >= 100_000 {
            map.1.clear();
        }
        map.1.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = Cache::default();
        let g = cache.generation();
        cache.invalidate("default", "a");
        cache.fill(g, "default", "a", None);
        assert!(cache.get("default", "a").is_none(), "a stale fill must not land");
        let g = cache.generation();
        cache.fill(g, "default", "a", None);
        assert_eq!(cache.get("default", "a"), Some(None));
        assert_eq!(cache.len(), 1);
        cache.invalidate("default", "a");
        assert!(cache.get("default", "a").is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn suspended_cache_serves_and_keeps_nothing() {
        let cache = Cache::default();
        let g = cache.generation();
        cache.fill(g, "o", "n", None);
        cache.suspend();
        assert!(cache.get("o", "n").is_none());
        let g = cache.generation();
        cache.fill(g, "o", "n", None);
        cache.resume();
        assert!(cache.get("o", "n").is_none(), "resume starts from empty");
    }
}
