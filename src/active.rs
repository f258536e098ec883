//! The completion requests in flight in this process, for `GET /admin/active`.
//!
//! A request is registered once it is admitted (slot and quotas) and is about
//! to go upstream; the [`ActiveGuard`] lives in its response body, counts the
//! bytes relayed, and removes the entry when the body ends or is dropped.
//! The registry is per process: behind a load balancer, each replica lists
//! its own requests (the response says so).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Clone, Default)]
pub struct Active {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One request in flight.
pub struct Entry {
    pub request_id: String,
    pub user: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    started: Instant,
    started_unix_ms: u64,
    bytes_out: AtomicU64,
}

/// What `/admin/active` shows of a request.
#[derive(Serialize, Debug)]
pub struct Snapshot {
    pub request_id: String,
    pub user: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub age_ms: u64,
    /// Response bytes relayed to the client so far.
    pub bytes_out: u64,
}

impl Active {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(
        &self,
        request_id: String,
        user: String,
        route: &'static str,
        model: Option<String>,
        stream: bool,
    ) -> ActiveGuard {
        let entry = Arc::new(Entry {
            request_id,
            user,
            route,
            model,
            stream,
            started: Instant::now(),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            bytes_out: AtomicU64::new(0),
        });
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, entry.clone());
        ActiveGuard {
            active: self.clone(),
            id,
            entry,
        }
    }

    /// The requests in flight now, oldest first.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let mut out: Vec<Snapshot> = entries
            .iter()
            .map(|e| Snapshot {
                request_id: e.request_id.clone(),
                user: e.user.clone(),
                route: e.route,
                model: e.model.clone(),
                stream: e.stream,
                started_at_ms: e.started_unix_ms,
                age_ms: e.started.elapsed().as_millis() as u64,
                bytes_out: e.bytes_out.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.age_ms));
        out
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a request listed while it runs; dropping it removes the entry.
pub struct ActiveGuard {
    active: Active,
    id: u64,
    entry: Arc<Entry>,
}

impl ActiveGuard {
    /// Counts bytes relayed to the client (one relaxed atomic add).
    pub fn relayed(&self, n: usize) {
        self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for ActiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let active = Active::default();
        let a = active.register("r1".into(), "alice".into(), "chat", None, true);
        let b = active.register("r2".into(), "bob".into(), "chat", Some("m".into()), false);
        a.relayed(10);
        a.relayed(5);
        let snap = active.snapshot();
        assert_eq!(snap.len(), 2);
        let alice = snap.iter().find(|s| s.user == "alice").expect("listed");
        assert_eq!(alice.bytes_out, 15);
        drop(a);
        assert_eq!(active.len(), 1);
        drop(b);
        assert!(active.is_empty());
    }
}
