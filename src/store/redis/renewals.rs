//! Keeps the Redis entries of running requests alive: a token's slot lease
//! and a user's running entry (`max_concurrent`) each expire after
//! `lease_ttl_seconds` unless renewed, so a replica that dies frees them.
//!
//! One task per store renews them all: an entry is registered while its
//! request runs ([`Renewals::register`]) and every ttl/3 each registered
//! entry is renewed with its script, all at once (the multiplexed
//! connection pipelines them). So an entry is renewed at most ttl/3 after
//! it was taken, then every ttl/3, as with a task of its own; but a request
//! no longer spawns two tasks, arms two timers and aborts them, which woke
//! the runtime's idle worker at every step (BENCHMARKS.md, issue 15).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{bounded, now_ms, Scripts};

/// What an entry is, so the loop knows which script renews it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `slot:<jti>`, a string holding its owner.
    Lease,
    /// The owner's member in `quota:running:<user>`, scored by its expiry.
    Running,
}

#[derive(Clone)]
struct Entry {
    kind: Kind,
    key: Arc<str>,
    owner: Arc<str>,
}

pub(super) struct Renewals {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// Set once the loop runs (on the runtime of the first registration).
    started: OnceLock<()>,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    timeout: Duration,
    ttl: Duration,
}

/// An entry being renewed; dropping it stops the renewals.
pub(super) struct Renewing {
    renewals: Arc<Renewals>,
    id: u64,
}

impl Drop for Renewing {
    fn drop(&mut self) {
        self.renewals.lock().remove(&self.id);
    }
}

impl Renewals {
    pub(super) fn new(
        conn: ConnectionManager,
        scripts: Arc<Scripts>,
        timeout: Duration,
        ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            next_id: AtomicU64::new(0),
            started: OnceLock::new(),
            conn,
            scripts,
            timeout,
            ttl,
        })
    }

    /// Renews `owner`'s entry at `key` until the returned guard is dropped,
    /// or until a renewal finds the entry gone (it expired, or is another
    /// owner's now). Without a runtime nothing renews it: it expires by its
    /// TTL.
    pub(super) fn register(self: &Arc<Self>, kind: Kind, key: &str, owner: &str) -> Renewing {
        self.started.get_or_init(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(renew_forever(Arc::downgrade(self), self.ttl / 3));
            }
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            kind,
            key: key.into(),
            owner: owner.into(),
        };
        self.lock().insert(id, entry);
        Renewing {
            renewals: self.clone(),
            id,
        }
    }

    /// How many entries are being renewed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    // Held for one map operation or one copy, never across an await.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews every entry registered now, all at once; forgets those found
    /// gone.
    async fn renew_all(&self) {
        let entries: Vec<(u64, Entry)> = self
            .lock()
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect();
        if entries.is_empty() {
            return;
        }
        let ttl_ms = self.ttl.as_millis() as u64;
        let renewals = entries.iter().map(|(_, entry)| {
            let conn = self.conn.clone();
            let (script, args) = match entry.kind {
                Kind::Lease => (
                    &self.scripts.renew,
                    vec![entry.owner.to_string(), ttl_ms.to_string()],
                ),
                Kind::Running => (
                    &self.scripts.renew_running,
                    vec![
                        entry.owner.to_string(),
                        (now_ms() + ttl_ms).to_string(),
                        ttl_ms.to_string(),
                    ],
                ),
            };
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                bounded::<i64>(self.timeout, conn, script, &[&entry.key], &args).await
            }
        });
        let answers = futures_util::future::join_all(renewals).await;
        let (mut gone, mut failed) = (0, None);
        for ((id, _), answer) in entries.iter().zip(answers) {
            match answer {
                Ok(1) => {}
                Ok(_) => {
                    gone += 1;
                    self.lock().remove(id);
                }
                Err(e) => failed = Some(e),
            }
        }
        if gone > 0 {
            tracing::warn!(
                entries = gone,
                "leases expired before they could be renewed; their requests run on"
            );
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "lease renewal failed; the requests run on");
        }
    }
}

/// Every `every`, renews what is registered, until the store is gone.
async fn renew_forever(renewals: Weak<Renewals>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(renewals) = renewals.upgrade() else {
            return;
        };
        renewals.renew_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewals() -> Arc<Renewals> {
        let client = redis::Client::open("redis://127.0.0.1:1").expect("a url");
        let conn = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .expect("lazy");
        Renewals::new(
            conn,
            Arc::new(Scripts::new()),
            Duration::from_millis(50),
            Duration::from_secs(3),
        )
    }

    #[tokio::test]
    async fn an_entry_is_renewed_until_its_guard_is_dropped() {
        let renewals = renewals();
        let a = renewals.register(Kind::Lease, "slot:a", "me");
        let b = renewals.register(Kind::Running, "running:u", "me");
        assert_eq!(renewals.len(), 2);
        drop(a);
        assert_eq!(renewals.len(), 1);
        drop(b);
        assert_eq!(renewals.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_once_per_store_and_ends_with_it() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let renewals = renewals();
        let before = tasks(); // the connection's own
        let guards: Vec<Renewing> = (0..100)
            .map(|i| renewals.register(Kind::Lease, &format!("slot:{i}"), "me"))
            .collect();
        assert_eq!(tasks(), before + 1, "one loop, however many entries");
        drop(guards);
        drop(renewals);
        // The loop holds only a weak reference: at its next tick it finds
        // the store gone and ends.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(tasks() <= before, "the loop ended");
    }
}
