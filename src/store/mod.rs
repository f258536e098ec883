//! Shared state: the per-token slot, the login cache, revocations,
//! login-failure counters and per-user quota counters.
//!
//! One trait, [`Store`], with two implementations and one selector:
//!
//! * [`memory::MemoryStore`] (the default) keeps everything in this process.
//!   Right for one gateway process.
//! * [`redis::RedisStore`] keeps it in Redis, so N replicas behind a load
//!   balancer behave as one gateway.
//!
//! Both **fail closed**: when the backend cannot answer, the caller gets a
//! [`StoreError`] (503 `state_unavailable`), never a silent fallback to
//! per-process state. Memory never fails.

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use crate::auth::login_cache::Issued;
use crate::auth::revocation::Revocations;
use crate::config::{StateBackend, StateConfig};
pub use crate::limits::quota::{Admission, Ask, Permit, Refusal, Seeds, Standing};
use crate::limits::{SlotGuard, Slots};

/// The backend did not answer (in time). Requests that need it get 503.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A request's hold on one of its token's slots in this process, taken
/// with no I/O before its body is read ([`Store::claim`]), so one token has
/// at most as many requests past its headers here as it has slots.
/// [`Store::enter`] turns it into the slot itself; dropping it frees it.
pub struct Claim {
    /// All the token's slots (with Redis, `enter` takes the first free one
    /// across replicas).
    slots: Vec<u128>,
    guard: SlotGuard,
}

/// The answer to "may this request read its body?" ([`Store::claim`]).
pub enum Claimed {
    Yes(Claim),
    /// Every slot of the token (or key) has a request here already.
    Busy,
    /// The token was logged out (as far as this process can tell: with
    /// Redis, [`Store::enter`] tells).
    Revoked,
}

/// The answer to "may this request start?" ([`Store::enter`]).
pub enum Entry {
    /// Its slot and its quota permit, each if it asked for one.
    Granted {
        lease: Option<Lease>,
        permit: Option<Permit>,
    },
    /// Every slot of the token (or key) has a request in flight.
    Busy,
    /// The token was logged out.
    Revoked,
    /// A quota or budget refuses it.
    Refused(Refusal),
}

/// Gives a slot back: either at once (memory: `None`), or by the returned
/// future (a Redis round trip).
pub trait Release: Send + Sync {
    fn release(self: Box<Self>) -> Option<BoxFuture<'static, ()>>;
}

/// Holds a token's slot. [`Lease::release`] gives it back and resolves once
/// the slot is free, so a response can end only after its slot is free and
/// a client's next request never races the release. Dropping a lease (a
/// client that vanished, a panic) releases it in the background.
pub struct Lease {
    release: Option<Box<dyn Release>>,
    counter: InFlight,
}

impl Lease {
    pub fn new(release: impl Release + 'static, counter: &InFlight) -> Self {
        counter.0.fetch_add(1, Ordering::SeqCst);
        Self {
            release: Some(Box::new(release)),
            counter: counter.clone(),
        }
    }

    /// Gives the slot back; the future resolves when it is free.
    pub fn release(mut self) -> BoxFuture<'static, ()> {
        self.release_now()
    }

    /// Starts the release. A release that needs I/O runs as its own task,
    /// so it completes (and the count goes down) even if the returned future
    /// is dropped, say because the client left during the last chunk.
    fn release_now(&mut self) -> BoxFuture<'static, ()> {
        match self.pending_release() {
            Some(pending) => in_background(pending),
            None => Box::pin(std::future::ready(())),
        }
    }

    /// Gives the slot back, or returns the I/O that does (for the caller
    /// to run as a task, maybe with other I/O: [`crate::proxy::hold`]).
    pub fn into_release(mut self) -> Option<BoxFuture<'static, ()>> {
        self.pending_release()
    }

    fn pending_release(&mut self) -> Option<BoxFuture<'static, ()>> {
        let release = self.release.take()?;
        let counter = self.counter.clone();
        let Some(pending) = release.release() else {
            counter.0.fetch_sub(1, Ordering::SeqCst);
            return None;
        };
        Some(Box::pin(async move {
            pending.await;
            counter.0.fetch_sub(1, Ordering::SeqCst);
        }))
    }
}

/// Runs `pending` as its own task, so it completes even if the returned
/// future (which resolves when it is done) is dropped. With no runtime left
/// (process exit) nothing runs: leases then expire by their TTL.
pub fn in_background(pending: BoxFuture<'static, ()>) -> BoxFuture<'static, ()> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let task = runtime.spawn(pending);
            Box::pin(async move {
                let _ = task.await;
            })
        }
        Err(_) => Box::pin(std::future::ready(())),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not waited for: a release with I/O carries on as its own task.
        drop(self.release_now());
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// [`Store::claim`] for both stores: `token_id`'s first slot that `held`
/// does not have, unless `revoked` has the token.
fn claim_in(revoked: &Revocations, held: &Slots, token_id: u128, slots: Vec<u128>) -> Claimed {
    if revoked.is_revoked(token_id) {
        return Claimed::Revoked;
    }
    match slots.iter().find_map(|&slot| held.try_acquire(slot)) {
        Some(guard) => Claimed::Yes(Claim { slots, guard }),
        None => Claimed::Busy,
    }
}

/// How many leases this process holds now.
#[derive(Clone, Default, Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared state behind one seam. Every method is one round trip at most.
pub trait Store: Send + Sync {
    /// Before the body, with no I/O: takes the first of `slots` that no
    /// request of this process holds, unless `token_id` is known here to be
    /// revoked. Memory: that is the slot itself. Redis: this process's note
    /// of it; another replica's requests and revocations show at
    /// [`Store::enter`].
    fn claim(&self, token_id: u128, slots: Vec<u128>) -> Claimed;

    /// Starts a request, in one atomic step (one round trip with Redis):
    /// checks that `token_id` is not revoked, turns `claim` into a slot
    /// (none if `None`), and admits `ask` under its user's quotas (if
    /// given). Nothing is taken unless all of it is granted.
    fn enter<'a>(
        &'a self,
        token_id: u128,
        claim: Option<Claim>,
        ask: Option<Ask<'a>>,
    ) -> BoxFuture<'a, StoreResult<Entry>>;

    /// Whether the token was logged out (for routes that take no slot).
    fn is_revoked(&self, token_id: u128) -> BoxFuture<'_, StoreResult<bool>>;

    /// Revokes a token until `exp`, and drops it from `user`'s login cache.
    fn revoke<'a>(
        &'a self,
        user: &'a str,
        token_id: u128,
        exp: u64,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// The user's cached token if it may be reused, else `candidate`, which
    /// is cached. Atomic: concurrent logins (on any replica) get one token.
    fn login_token<'a>(
        &'a self,
        user: &'a str,
        candidate: Issued,
    ) -> BoxFuture<'a, StoreResult<Issued>>;

    /// Before a password check: `Some(seconds)` if logins for `user` or from
    /// `ip` are throttled; otherwise the attempt is counted against the
    /// hourly cap and the IP in the same atomic step (see `auth::throttle`).
    fn begin_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>>;

    /// After the password check: a failure counts against the user's minute;
    /// a success refunds the attempt and resets the minute.
    fn finish_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
        success: bool,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// Admits a request under its user's quotas, counting it, or says which
    /// limit refuses it. Atomic across replicas (see `limits::quota`).
    fn admit<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, StoreResult<Admission>>;

    /// Counters rebuilt from the ledger at start: each is set only where no
    /// replica holds it yet, so a restart hands out no fresh allowance.
    fn seed<'a>(&'a self, seeds: &'a Seeds) -> BoxFuture<'a, StoreResult<()>>;

    /// What `user` has used of their limits now.
    fn standing<'a>(&'a self, user: &'a str, now_ms: u64) -> BoxFuture<'a, StoreResult<Standing>>;

    /// Whether the backend answers now (for `/readyz`).
    fn ready(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Tells every replica that upstream `name` is out of use for `for_ms`
    /// (its breaker opened, or its key was refused), or back in use (0).
    fn bench_upstream<'a>(&'a self, name: &'a str, for_ms: u64) -> BoxFuture<'a, StoreResult<()>>;

    /// For each name, how long it stays out of use (ms), as any replica said.
    fn benched_upstreams<'a>(&'a self, names: &'a [String])
        -> BoxFuture<'a, StoreResult<Vec<u64>>>;

    /// Whether several processes share this state (health is then synced).
    fn is_shared(&self) -> bool;

    /// Leases held by this process.
    fn in_flight(&self) -> usize;
}

/// The one place that picks the backend.
pub fn select(config: &StateConfig, auth: StoreSettings) -> Result<Arc<dyn Store>, String> {
    Ok(match &config.backend {
        StateBackend::Memory => Arc::new(memory::MemoryStore::new(auth)),
        StateBackend::Redis(redis) => Arc::new(redis::RedisStore::new(redis, auth)?),
    })
}

/// What both backends need from `[auth]`.
#[derive(Clone, Copy, Debug)]
pub struct StoreSettings {
    pub login_cache_secs: u64,
    pub throttle: crate::auth::throttle::Limits,
}
