//! Shared state in this process's memory: the default, for one replica.

use std::net::IpAddr;

use futures_util::future::{ready, BoxFuture, FutureExt};

use super::{
    Admission, Ask, Claim, Claimed, Entry, InFlight, Issued, Lease, Release, Seeds, Standing,
    Store, StoreResult, StoreSettings,
};
use crate::auth::jwt::unix_now;
use crate::auth::login_cache::LoginCache;
use crate::auth::revocation::Revocations;
use crate::auth::throttle::LoginThrottle;
use crate::limits::quota::Counters;
use crate::limits::{SlotGuard, Slots};

impl Release for SlotGuard {
    /// Frees the slot now; nothing is left to wait for.
    fn release(self: Box<Self>) -> Option<BoxFuture<'static, ()>> {
        drop(self);
        None
    }
}

pub struct MemoryStore {
    slots: Slots,
    login_cache: LoginCache,
    revocations: Revocations,
    throttle: LoginThrottle,
    quotas: Counters,
    in_flight: InFlight,
}

impl MemoryStore {
    pub fn new(settings: StoreSettings) -> Self {
        Self {
            slots: Slots::default(),
            login_cache: LoginCache::new(settings.login_cache_secs),
            revocations: Revocations::default(),
            throttle: LoginThrottle::new(settings.throttle),
            quotas: Counters::default(),
            in_flight: InFlight::default(),
        }
    }

    fn enter_now(&self, token_id: u128, claim: Option<Claim>, ask: Option<Ask<'_>>) -> Entry {
        // The claim is the slot itself (dropped on a refusal: free at once).
        if self.revocations.is_revoked(token_id) {
            return Entry::Revoked;
        }
        let lease = claim.map(|claim| Lease::new(claim.guard, &self.in_flight));
        let permit = match ask.map(|ask| self.quotas.admit(ask)) {
            None => None,
            Some(Admission::Granted(permit)) => Some(permit),
            Some(Admission::Refused(refusal)) => return Entry::Refused(refusal),
        };
        Entry::Granted { lease, permit }
    }
}

impl Store for MemoryStore {
    /// One process: its own breakers are all there is to know.
    fn bench_upstream<'a>(&'a self, _: &'a str, _: u64) -> BoxFuture<'a, StoreResult<()>> {
        ready(Ok(())).boxed()
    }

    fn benched_upstreams<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<u64>>> {
        ready(Ok(vec![0; names.len()])).boxed()
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn claim(&self, token_id: u128, slots: Vec<u128>) -> Claimed {
        super::claim_in(&self.revocations, &self.slots, token_id, slots)
    }

    fn enter<'a>(
        &'a self,
        token_id: u128,
        claim: Option<Claim>,
        ask: Option<Ask<'a>>,
    ) -> BoxFuture<'a, StoreResult<Entry>> {
        ready(Ok(self.enter_now(token_id, claim, ask))).boxed()
    }

    fn is_revoked(&self, token_id: u128) -> BoxFuture<'_, StoreResult<bool>> {
        ready(Ok(self.revocations.is_revoked(token_id))).boxed()
    }

    fn revoke<'a>(
        &'a self,
        user: &'a str,
        token_id: u128,
        exp: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.revocations.revoke(token_id, exp, unix_now());
        self.login_cache.forget(user, token_id);
        ready(Ok(())).boxed()
    }

    fn login_token<'a>(
        &'a self,
        user: &'a str,
        candidate: Issued,
    ) -> BoxFuture<'a, StoreResult<Issued>> {
        let issued = self
            .login_cache
            .get_or_issue(user, unix_now(), || candidate);
        ready(Ok(issued)).boxed()
    }

    fn begin_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        ready(Ok(self.throttle.attempt(user, ip, unix_now()))).boxed()
    }

    fn finish_login<'a>(
        &'a self,
        user: &'a str,
        ip: IpAddr,
        success: bool,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.throttle.finished(user, ip, success, unix_now());
        ready(Ok(())).boxed()
    }

    fn admit<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, StoreResult<Admission>> {
        ready(Ok(self.quotas.admit(ask))).boxed()
    }

    fn standing<'a>(&'a self, user: &'a str, now_ms: u64) -> BoxFuture<'a, StoreResult<Standing>> {
        ready(Ok(self.quotas.standing(user, now_ms))).boxed()
    }

    fn seed<'a>(&'a self, seeds: &'a Seeds) -> BoxFuture<'a, StoreResult<()>> {
        self.quotas.seed(seeds);
        ready(Ok(())).boxed()
    }

    fn ready(&self) -> BoxFuture<'_, StoreResult<()>> {
        ready(Ok(())).boxed()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}
