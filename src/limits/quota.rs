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
//! * **Budget per month** (micro-units of the `[pricing]` currency, UTC
//!   month) is reserved up front like tokens: the worst case at the price
//!   of the moment (every body byte a cache-missed input token, plus the
//!   whole output cap), settled on the real cost. The owner's budget is
//!   checked first, then the personal API key's own (keys are independent
//!   of each other).
//!
//! A user with no limits, on a key with no budget, skips all of this: no
//! state-backend call at all.

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
    /// Micro-units of the `[pricing]` currency per UTC month.
    pub budget_per_month: u64,
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
    /// The personal API key the request came with, and its own budget
    /// (micro-units per month; 0: none).
    pub key: Option<(&'a str, u64)>,
    /// Micro-units to hold against the budgets until the request settles.
    pub reserve_micros: u64,
    /// For the refusal's message.
    pub currency: &'static str,
    pub now_ms: u64,
}

impl Ask<'_> {
    /// Whether anything is limited (else the store is not asked at all).
    pub fn is_limited(&self) -> bool {
        !self.limits.is_unlimited() || self.key_budget() > 0
    }

    pub fn key_budget(&self) -> u64 {
        self.key.map_or(0, |(_, budget)| budget)
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RequestsPerMinute,
    TokensPerDay,
    Concurrent,
    /// The user's budget per month.
    Budget,
    /// The personal API key's own budget per month.
    KeyBudget,
}

/// Why a request was refused, for the 429 body and `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub limit: u64,
    /// Requests in the window, tokens used and reserved today, or requests
    /// in flight.
    pub used: u64,
    /// The tokens (or micro-units, for a budget) this request wanted to
    /// reserve.
    pub reserve: u64,
    pub retry_after_secs: u64,
    /// The budget's currency.
    pub currency: &'static str,
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
            Kind::Budget | Kind::KeyBudget => {
                let money = |m: u64| {
                    format!(
                        "{} {}",
                        self.currency,
                        crate::usage::pricing::format_units(m as i64)
                    )
                };
                format!(
                    "budget exceeded: {} may spend {} per month (UTC); {} is spent or reserved, \
                     and this request reserves up to {} (its body as uncached input plus its \
                     output cap, at the current price); lower max_tokens or wait for the next \
                     month",
                    if self.kind == Kind::Budget {
                        "your account"
                    } else {
                        "this API key"
                    },
                    money(self.limit),
                    money(self.used),
                    money(self.reserve)
                )
            }
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
    /// Micro-units spent this month plus reservations still open.
    pub spent_month: u64,
}

pub enum Admission {
    Granted(Permit),
    Refused(Refusal),
}

/// What a request is finally charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub tokens: u64,
    /// Micro-units of the currency.
    pub micros: u64,
}

/// Gives back what an admitted request held: its place among the user's
/// concurrent requests, and its reservations, replaced by what it was
/// charged. Memory settles at once (`None`); Redis returns the round trip.
pub trait Settle: Send + Sync {
    fn settle(self: Box<Self>, charged: Charged) -> Option<BoxFuture<'static, ()>>;
}

/// An admitted request's hold on its user's quotas. [`Permit::settle`] it
/// with the tokens the request used. A permit dropped unsettled (the client
/// left before DeepSeek answered, a panic) is settled with `fallback`.
pub struct Permit {
    settle: Option<Box<dyn Settle>>,
    fallback: Charged,
}

impl Permit {
    pub fn new(settle: impl Settle + 'static) -> Self {
        Self {
            settle: Some(Box::new(settle)),
            fallback: Charged::default(),
        }
    }

    /// What to charge if the permit is dropped without being settled.
    pub fn with_fallback(mut self, charged: Charged) -> Self {
        self.fallback = charged;
        self
    }

    /// Replaces the reservations with what was charged; resolves when that
    /// is done.
    pub fn settle(mut self, charged: Charged) -> BoxFuture<'static, ()> {
        self.settle_now(charged)
    }

    fn settle_now(&mut self, charged: Charged) -> BoxFuture<'static, ()> {
        match self.settle.take().and_then(|s| s.settle(charged)) {
            Some(pending) => crate::store::in_background(pending),
            None => Box::pin(std::future::ready(())),
        }
    }

    /// Settles now, or returns the I/O that does (for the caller to run as
    /// a task, maybe with other I/O: [`crate::proxy::hold`]).
    pub fn into_settle(mut self, charged: Charged) -> Option<BoxFuture<'static, ()>> {
        self.settle.take().and_then(|s| s.settle(charged))
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

/// The milliseconds until the next UTC month starts.
pub fn until_next_month_ms(now_ms: u64) -> u64 {
    crate::usage::calendar::next_month_start_ms(now_ms) - now_ms
}

/// Counts rebuilt from the ledger at start, so a restart hands out no fresh
/// allowance: tokens charged today and micro-units spent this month.
#[derive(Clone, Debug, Default)]
pub struct Seeds {
    pub now_ms: u64,
    pub tokens_today: Vec<(String, u64)>,
    pub spent_month: Vec<(String, u64)>,
    pub key_spent_month: Vec<(String, u64)>,
}

/// The memory backend's counters: one entry per user (and key) that made a
/// request (so the maps are bounded by the users and keys there are).
#[derive(Clone, Default)]
pub struct Counters {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, UserCounters>,
    keys: HashMap<String, MonthSpend>,
}

#[derive(Default)]
struct UserCounters {
    /// Admission times (ms) within the last minute, oldest first.
    recent: VecDeque<u64>,
    in_flight: u64,
    /// The UTC day (days since the epoch) `tokens` counts.
    day: u64,
    tokens: u64,
    spend: MonthSpend,
}

/// Micro-units spent (and reserved) in one UTC month.
#[derive(Default)]
struct MonthSpend {
    month: u64,
    spent: u64,
}

impl MonthSpend {
    fn roll(&mut self, now_ms: u64) -> &mut Self {
        let month = crate::usage::calendar::month_index(now_ms);
        if self.month != month {
            self.month = month;
            self.spent = 0;
        }
        self
    }
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
        self.spend.roll(now_ms);
    }
}

impl Counters {
    // Held for a few arithmetic steps, never across an await.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, ask: Ask<'_>) -> Admission {
        let Ask {
            user,
            limits,
            reserve,
            key,
            reserve_micros,
            currency,
            now_ms,
        } = ask;
        let mut inner = self.lock();
        let Inner { users, keys } = &mut *inner;
        let u = users.entry(user.to_owned()).or_default();
        u.roll(now_ms);
        let refuse = |kind, limit, used, reserve, retry_after_secs| {
            Admission::Refused(Refusal {
                kind,
                limit,
                used,
                reserve,
                retry_after_secs,
                currency,
            })
        };
        if limits.max_concurrent > 0 && u.in_flight >= limits.max_concurrent {
            return refuse(Kind::Concurrent, limits.max_concurrent, u.in_flight, 0, 1);
        }
        if limits.requests_per_minute > 0 && u.recent.len() as u64 >= limits.requests_per_minute {
            let oldest = u.recent.front().copied().unwrap_or(now_ms);
            return refuse(
                Kind::RequestsPerMinute,
                limits.requests_per_minute,
                u.recent.len() as u64,
                0,
                secs_ceil(oldest + MINUTE_MS - now_ms),
            );
        }
        if limits.tokens_per_day > 0 && u.tokens.saturating_add(reserve) > limits.tokens_per_day {
            return refuse(
                Kind::TokensPerDay,
                limits.tokens_per_day,
                u.tokens,
                reserve,
                secs_ceil(until_next_day_ms(now_ms)),
            );
        }
        let to_month_end = secs_ceil(until_next_month_ms(now_ms));
        let budget = limits.budget_per_month;
        if budget > 0 && u.spend.spent.saturating_add(reserve_micros) > budget {
            return refuse(
                Kind::Budget,
                budget,
                u.spend.spent,
                reserve_micros,
                to_month_end,
            );
        }
        let key_budget = key.map(|(_, b)| b).filter(|&b| b > 0);
        let key_spend = match (key, key_budget) {
            (Some((id, _)), Some(key_budget)) => {
                let k = keys.entry(id.to_owned()).or_default().roll(now_ms);
                if k.spent.saturating_add(reserve_micros) > key_budget {
                    return refuse(
                        Kind::KeyBudget,
                        key_budget,
                        k.spent,
                        reserve_micros,
                        to_month_end,
                    );
                }
                k.spent += reserve_micros;
                Some(id.to_owned())
            }
            _ => None,
        };
        let reserved = if limits.tokens_per_day > 0 {
            u.tokens += reserve;
            reserve
        } else {
            0
        };
        if budget > 0 {
            u.spend.spent += reserve_micros;
        }
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
            month: crate::usage::calendar::month_index(now_ms),
            reserved: (limits.tokens_per_day > 0).then_some(reserved),
            reserved_micros: (budget > 0).then_some(reserve_micros),
            key: key_spend.map(|id| (id, reserve_micros)),
            concurrent,
        }))
    }

    pub fn standing(&self, user: &str, now_ms: u64) -> Standing {
        let mut inner = self.lock();
        let Some(u) = inner.users.get_mut(user) else {
            return Standing::default();
        };
        u.roll(now_ms);
        Standing {
            requests_last_minute: u.recent.len() as u64,
            tokens_today: u.tokens,
            in_flight: u.in_flight,
            spent_month: u.spend.spent,
        }
    }

    /// Sets the day's and month's counters from the ledger (at start).
    pub fn seed(&self, seeds: &Seeds) {
        let now_ms = seeds.now_ms;
        let mut inner = self.lock();
        for (user, tokens) in &seeds.tokens_today {
            let u = inner.users.entry(user.clone()).or_default();
            u.roll(now_ms);
            u.tokens = *tokens;
        }
        for (user, micros) in &seeds.spent_month {
            let u = inner.users.entry(user.clone()).or_default();
            u.roll(now_ms);
            u.spend.spent = *micros;
        }
        for (key, micros) in &seeds.key_spent_month {
            inner
                .keys
                .entry(key.clone())
                .or_default()
                .roll(now_ms)
                .spent = *micros;
        }
    }
}

struct MemoryPermit {
    counters: Counters,
    user: String,
    day: u64,
    month: u64,
    /// `Some` when the user has a token limit (and so a reservation).
    reserved: Option<u64>,
    /// `Some` when the user has a budget.
    reserved_micros: Option<u64>,
    /// The key whose own budget holds a reservation, and how much.
    key: Option<(String, u64)>,
    concurrent: bool,
}

impl Settle for MemoryPermit {
    fn settle(self: Box<Self>, charged: Charged) -> Option<BoxFuture<'static, ()>> {
        let mut inner = self.counters.lock();
        if let Some(u) = inner.users.get_mut(&self.user) {
            if self.concurrent {
                u.in_flight = u.in_flight.saturating_sub(1);
            }
            // A request that ends after midnight is charged to the day it
            // reserved on, which the counter no longer holds.
            if let Some(reserved) = self.reserved.filter(|_| u.day == self.day) {
                u.tokens = u
                    .tokens
                    .saturating_sub(reserved)
                    .saturating_add(charged.tokens);
            }
            if let Some(reserved) = self.reserved_micros.filter(|_| u.spend.month == self.month) {
                u.spend.spent = u
                    .spend
                    .spent
                    .saturating_sub(reserved)
                    .saturating_add(charged.micros);
            }
        }
        if let Some((id, reserved)) = &self.key {
            if let Some(k) = inner.keys.get_mut(id).filter(|k| k.month == self.month) {
                k.spent = k
                    .spent
                    .saturating_sub(*reserved)
                    .saturating_add(charged.micros);
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
            key: None,
            reserve_micros: 0,
            currency: "CNY",
            now_ms,
        }
    }

    fn tokens(tokens: u64) -> Charged {
        Charged { tokens, micros: 0 }
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
        drop(first.settle(tokens(100)));
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
        drop(first.with_fallback(tokens(7)));
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
        drop(late.settle(tokens(5)));
        assert_eq!(c.standing("alice", DAY_MS * 3).tokens_today, 0);
    }

    #[test]
    fn budgets_reserve_the_worst_case_and_settle_on_the_real_cost() {
        let c = Counters::default();
        let limits = Limits {
            budget_per_month: 1_000,
            ..Limits::default()
        };
        let budget_ask = |key: Option<(&'static str, u64)>, micros: u64| Ask {
            key,
            reserve_micros: micros,
            ..ask(limits, 0, NOON)
        };
        let first = granted(c.admit(budget_ask(None, 600)));
        let r = refused(c.admit(budget_ask(None, 500)));
        assert_eq!((r.kind, r.used, r.reserve), (Kind::Budget, 600, 500));
        // Retry at the start of the next UTC month.
        let next = crate::usage::calendar::next_month_start_ms(NOON);
        assert_eq!(r.retry_after_secs, (next - NOON) / 1000);
        assert!(r.message().contains("CNY 0.001"), "{}", r.message());
        drop(first.settle(Charged {
            tokens: 0,
            micros: 100,
        }));
        assert_eq!(c.standing("alice", NOON).spent_month, 100);
        // A key's own budget is checked after its owner's, and keys are
        // independent of each other.
        let on_key = granted(c.admit(budget_ask(Some(("k1", 300)), 250)));
        let r = refused(c.admit(budget_ask(Some(("k1", 300)), 100)));
        assert_eq!((r.kind, r.used, r.limit), (Kind::KeyBudget, 250, 300));
        drop(granted(c.admit(budget_ask(Some(("k2", 300)), 100))));
        drop(on_key.settle(Charged {
            tokens: 0,
            micros: 50,
        }));
        drop(granted(c.admit(budget_ask(Some(("k1", 300)), 200))));
        // The owner's budget refuses first, whatever the key's says.
        let r = refused(c.admit(budget_ask(Some(("k3", 0)), 2_000)));
        assert_eq!(r.kind, Kind::Budget);
        // A new month starts from zero.
        assert_eq!(c.standing("alice", next).spent_month, 0);
    }

    #[test]
    fn seeds_from_the_ledger_count_like_admissions() {
        let c = Counters::default();
        c.seed(&Seeds {
            now_ms: NOON,
            tokens_today: vec![("alice".into(), 900)],
            spent_month: vec![("alice".into(), 70)],
            key_spent_month: vec![("k1".into(), 30)],
        });
        let limits = Limits {
            tokens_per_day: 1_000,
            budget_per_month: 100,
            ..Limits::default()
        };
        let r = refused(c.admit(ask(limits, 200, NOON)));
        assert_eq!((r.kind, r.used), (Kind::TokensPerDay, 900));
        let r = refused(c.admit(Ask {
            reserve_micros: 40,
            ..ask(limits, 10, NOON)
        }));
        assert_eq!((r.kind, r.used), (Kind::Budget, 70));
        let unlimited_owner = Limits::default();
        let r = refused(c.admit(Ask {
            key: Some(("k1", 50)),
            reserve_micros: 25,
            ..ask(unlimited_owner, 0, NOON)
        }));
        assert_eq!((r.kind, r.used), (Kind::KeyBudget, 30));
    }
}
