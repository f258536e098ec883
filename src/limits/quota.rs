//! Per-user quotas: requests per minute, tokens per UTC day, and requests
//! in flight across all of a user's tokens.
//!
//! A completion request asks the state backend for admission once its body
//! is read (the token reservation needs `max_tokens`) and before anything
//! goes upstream. All three checks and all three counts happen in one atomic
//! step (one mutex here, one Lua script in Redis), so racing requests, on
//! one replica or many, can never pass a limit together.
//!
//! * **Requests per minute** is a sliding window: at most N admissions in
//!   any 60 s. `Retry-After` is when the oldest one leaves the window.
//! * **Tokens per day** (prompt + completion, UTC day) is reserved up front:
//!   the body's size in bytes (every prompt token is at least one byte of
//!   the body, so this bounds the prompt) plus `max_tokens` (or
//!   `quotas.default_max_tokens`). The request is admitted only if
//!   `used + reserved` fits. When it ends, the reservation is replaced by
//!   DeepSeek's reported usage, or by an estimate (see [`Permit`]).
//! * **Concurrent requests** are counted while the response runs and freed
//!   with the token's slot.
//!
//! A user with no limits skips all of this: no state-backend call at all.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;

/// One user's limits; `0` means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_day: u64,
    pub max_concurrent: u64,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// A request asking to be admitted.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub user: &'a str,
    pub limits: Limits,
    /// Tokens to hold against `tokens_per_day` until the request settles
    /// (0 when the user has no token limit).
    pub reserve: u64,
    pub now_ms: u64,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RequestsPerMinute,
    TokensPerDay,
    Concurrent,
}

/// Why a request was refused, for the 429 body and `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub limit: u64,
    /// Requests in the window, tokens used and reserved today, or requests
    /// in flight.
    pub used: u64,
    /// The tokens this request wanted to reserve (token limit only).
    pub reserve: u64,
    pub retry_after_secs: u64,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self.kind {
            Kind::RequestsPerMinute => format!(
                "quota exceeded: at most {} requests per minute for your account; \
                 retry in {} s",
                self.limit, self.retry_after_secs
            ),
            Kind::TokensPerDay => format!(
                "quota exceeded: your account may use {} tokens per UTC day; {} are used or \
                 reserved, and this request reserves {} (its body size plus its output cap: \
                 max_tokens, or max_output_tokens on /responses); lower the cap or retry \
                 after 00:00 UTC",
                self.limit, self.used, self.reserve
            ),
            Kind::Concurrent => format!(
                "your account already has {} requests in flight (its limit); \
                 wait for one to finish",
                self.used
            ),
        }
    }
}

/// What a user has used of their limits now (for `/v1/usage/me`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub requests_last_minute: u64,
    /// Tokens settled today plus reservations still open.
    pub tokens_today: u64,
    pub in_flight: u64,
}

pub enum Admission {
    Granted(Permit),
    Refused(Refusal),
}

/// Gives back what an admitted request held: its place among the user's
/// concurrent requests, and its token reservation, replaced by `tokens`.
/// Memory settles at once (`None`); Redis returns the round trip.
pub trait Settle: Send + Sync {
    fn settle(self: Box<Self>, tokens: u64) -> Option<BoxFuture<'static, ()>>;
}

/// An admitted request's hold on its user's quotas. [`Permit::settle`] it
/// with the tokens the request used. A permit dropped unsettled (the client
/// left before DeepSeek answered, a panic) is settled with `fallback`.
pub struct Permit {
    settle: Option<Box<dyn Settle>>,
    fallback: u64,
}

impl Permit {
    pub fn new(settle: impl Settle + 'static) -> Self {
        Self {
            settle: Some(Box::new(settle)),
            fallback: 0,
        }
    }

    /// What to charge if the permit is dropped without being settled.
    pub fn with_fallback(mut self, tokens: u64) -> Self {
        self.fallback = tokens;
        self
    }

    /// Replaces the reservation with `tokens`; resolves when that is done.
    pub fn settle(mut self, tokens: u64) -> BoxFuture<'static, ()> {
        self.settle_now(tokens)
    }

    fn settle_now(&mut self, tokens: u64) -> BoxFuture<'static, ()> {
        match self.settle.take().and_then(|s| s.settle(tokens)) {
            Some(pending) => crate::store::in_background(pending),
            None => Box::pin(std::future::ready(())),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let fallback = self.fallback;
        drop(self.settle_now(fallback));
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// The milliseconds until the next 00:00 UTC.
pub fn until_next_day_ms(now_ms: u64) -> u64 {
    DAY_MS - now_ms % DAY_MS
}

fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The memory backend's counters: one entry per configured user that has a
/// limit (so the map is bounded by the config).
#[derive(Clone, Default)]
pub struct Counters {
    users: Arc<Mutex<HashMap<String, UserCounters>>>,
}

#[derive(Default)]
struct UserCounters {
    /// Admission times (ms) within the last minute, oldest first.
    recent: VecDeque<u64>,
    in_flight: u64,
    /// The UTC day (days since the epoch) `tokens` counts.
    day: u64,
    tokens: u64,
}

impl UserCounters {
    fn roll(&mut self, now_ms: u64) {
        while self
            .recent
            .front()
            .is_some_and(|&t| t + MINUTE_MS <= now_ms)
        {
            self.recent.pop_front();
        }
        let today = now_ms / DAY_MS;
        if self.day != today {
            self.day = today;
            self.tokens = 0;
        }
    }
}

impl Counters {
    // Held for a few arithmetic steps, never across an await.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, UserCounters>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, ask: Ask<'_>) -> Admission {
        let Ask {
            user,
            limits,
            reserve,
            now_ms,
        } = ask;
        let mut users = self.lock();
        let u = users.entry(user.to_owned()).or_default();
        u.roll(now_ms);
        if limits.max_concurrent > 0 && u.in_flight >= limits.max_concurrent {
            return Admission::Refused(Refusal {
                kind: Kind::Concurrent,
                limit: limits.max_concurrent,
                used: u.in_flight,
                reserve: 0,
                retry_after_secs: 1,
            });
        }
        if limits.requests_per_minute > 0 && u.recent.len() as u64 >= limits.requests_per_minute {
            let oldest = u.recent.front().copied().unwrap_or(now_ms);
            return Admission::Refused(Refusal {
                kind: Kind::RequestsPerMinute,
                limit: limits.requests_per_minute,
                used: u.recent.len() as u64,
                reserve: 0,
                retry_after_secs: secs_ceil(oldest + MINUTE_MS - now_ms),
            });
        }
        if limits.tokens_per_day > 0 && u.tokens.saturating_add(reserve) > limits.tokens_per_day {
            return Admission::Refused(Refusal {
                kind: Kind::TokensPerDay,
                limit: limits.tokens_per_day,
                used: u.tokens,
                reserve,
                retry_after_secs: secs_ceil(until_next_day_ms(now_ms)),
            });
        }
        let reserved = if limits.tokens_per_day > 0 {
            u.tokens += reserve;
            reserve
        } else {
            0
        };
        if limits.requests_per_minute > 0 {
            u.recent.push_back(now_ms);
        }
        let concurrent = limits.max_concurrent > 0;
        if concurrent {
            u.in_flight += 1;
        }
        Admission::Granted(Permit::new(MemoryPermit {
            counters: self.clone(),
            user: user.to_owned(),
            day: now_ms / DAY_MS,
            reserved: (limits.tokens_per_day > 0).then_some(reserved),
            concurrent,
        }))
    }

    pub fn standing(&self, user: &str, now_ms: u64) -> Standing {
        let mut users = self.lock();
        let Some(u) = users.get_mut(user) else {
            return Standing::default();
        };
        u.roll(now_ms);
        Standing {
            requests_last_minute: u.recent.len() as u64,
            tokens_today: u.tokens,
            in_flight: u.in_flight,
        }
    }
}

struct MemoryPermit {
    counters: Counters,
    user: String,
    day: u64,
    /// `Some` when the user has a token limit (and so a reservation).
    reserved: Option<u64>,
    concurrent: bool,
}

impl Settle for MemoryPermit {
    fn settle(self: Box<Self>, tokens: u64) -> Option<BoxFuture<'static, ()>> {
        let mut users = self.counters.lock();
        if let Some(u) = users.get_mut(&self.user) {
            if self.concurrent {
                u.in_flight = u.in_flight.saturating_sub(1);
            }
            // A request that ends after midnight is charged to the day it
            // reserved on, which the counter no longer holds.
            if let Some(reserved) = self.reserved.filter(|_| u.day == self.day) {
                u.tokens = u.tokens.saturating_sub(reserved).saturating_add(tokens);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 20_000 * DAY_MS + DAY_MS / 2;

    fn ask(limits: Limits, reserve: u64, now_ms: u64) -> Ask<'static> {
        Ask {
            user: "alice",
            limits,
            reserve,
            now_ms,
        }
    }

    fn refused(a: Admission) -> Refusal {
        match a {
            Admission::Refused(r) => r,
            Admission::Granted(_) => panic!("expected a refusal"),
        }
    }

    fn granted(a: Admission) -> Permit {
        match a {
            Admission::Granted(p) => p,
            Admission::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn requests_per_minute_is_a_sliding_window() {
        let c = Counters::default();
        let limits = Limits {
            requests_per_minute: 2,
            ..Limits::default()
        };
        drop(granted(c.admit(ask(limits, 0, NOON))));
        drop(granted(c.admit(ask(limits, 0, NOON + 10_000))));
        let r = refused(c.admit(ask(limits, 0, NOON + 20_000)));
        assert_eq!((r.kind, r.retry_after_secs), (Kind::RequestsPerMinute, 40));
        // The first admission leaves the window at NOON + 60 s.
        drop(granted(c.admit(ask(limits, 0, NOON + MINUTE_MS))));
        assert!(matches!(
            c.admit(ask(limits, 0, NOON + MINUTE_MS + 1)),
            Admission::Refused(_)
        ));
    }

    #[test]
    fn token_reservations_are_replaced_by_the_real_usage() {
        let c = Counters::default();
        let limits = Limits {
            tokens_per_day: 1000,
            ..Limits::default()
        };
        let first = granted(c.admit(ask(limits, 600, NOON)));
        // 600 reserved: 500 more does not fit while the first runs.
        let r = refused(c.admit(ask(limits, 500, NOON)));
        assert_eq!((r.kind, r.used, r.reserve), (Kind::TokensPerDay, 600, 500));
        assert_eq!(r.retry_after_secs, DAY_MS / 2 / 1000);
        drop(first.settle(100));
        assert_eq!(c.standing("alice", NOON).tokens_today, 100);
        let second = granted(c.admit(ask(limits, 500, NOON)));
        drop(second);
        assert_eq!(
            c.standing("alice", NOON).tokens_today,
            100,
            "a permit dropped unsettled is charged its fallback (0 here)"
        );
        // A new UTC day starts from zero.
        assert_eq!(c.standing("alice", NOON + DAY_MS).tokens_today, 0);
    }

    #[test]
    fn concurrency_is_held_until_settled() {
        let c = Counters::default();
        let limits = Limits {
            max_concurrent: 1,
            ..Limits::default()
        };
        let first = granted(c.admit(ask(limits, 0, NOON)));
        let r = refused(c.admit(ask(limits, 0, NOON)));
        assert_eq!((r.kind, r.used), (Kind::Concurrent, 1));
        drop(first.with_fallback(7));
        drop(granted(c.admit(ask(limits, 0, NOON))));
        assert_eq!(c.standing("alice", NOON).in_flight, 0);
    }

    #[test]
    fn a_settlement_after_midnight_does_not_touch_the_new_day() {
        let c = Counters::default();
        let limits = Limits {
            tokens_per_day: 1000,
            ..Limits::default()
        };
        let late = granted(c.admit(ask(limits, 900, DAY_MS * 3 - 1)));
        assert_eq!(c.standing("alice", DAY_MS * 3).tokens_today, 0);
        drop(late.settle(5));
        assert_eq!(c.standing("alice", DAY_MS * 3).tokens_today, 0);
    }
}
