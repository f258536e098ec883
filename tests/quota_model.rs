//! Model-based test of the per-user quota counters: random sequences of
//! admissions, settlements, dropped permits and clock jumps run against the
//! real store (Redis, and memory) and against a plain model; every answer,
//! refusal reason, `Retry-After` and standing must agree.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::redis::TestRedis;
use common::{runtime, store_settings};
use deepseek_proxy::config::RedisConfig;
use deepseek_proxy::limits::quota::{Charged, Kind, Limits, Permit, Standing, DAY_MS, MINUTE_MS};
use deepseek_proxy::store::memory::MemoryStore;
use deepseek_proxy::store::redis::RedisStore;
use deepseek_proxy::store::{Admission, Ask, Entry, Store};
use proptest::prelude::*;
use secrecy::SecretString;

const LIMITS: Limits = Limits {
    requests_per_minute: 3,
    tokens_per_day: 1000,
    max_concurrent: 2,
    budget_per_month: 2_500,
};
/// Each token reserved or charged costs this many micro-units.
const MICROS_PER_TOKEN: u64 = 3;
/// Ten minutes before 2024-11-01 00:00 UTC, so sequences cross a day and a
/// month.
const START_MS: u64 = 20_028 * DAY_MS - 10 * MINUTE_MS;

#[derive(Clone, Debug)]
enum Op {
    Admit {
        reserve: u64,
        /// Through `Store::enter` (with no slot), as completions are
        /// admitted, instead of `Store::admit`.
        entering: bool,
    },
    /// Settle the i-th open permit with this many tokens.
    Settle {
        index: usize,
        tokens: u64,
    },
    /// Drop the i-th open permit unsettled (charged nothing).
    Drop {
        index: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..700u64, any::<bool>())
            .prop_map(|(reserve, entering)| Op::Admit { reserve, entering }),
        3 => (0..4usize, 0..800u64).prop_map(|(index, tokens)| Op::Settle { index, tokens }),
        1 => (0..4usize).prop_map(|index| Op::Drop { index }),
        2 => prop_oneof![1..5_000u64, 10_000..70_000u64, 200_000..400_000u64]
            .prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the counters should say; deliberately naive.
#[derive(Default)]
struct Model {
    admitted_at: VecDeque<u64>,
    in_flight: u64,
    /// (day, tokens used or reserved that day)
    tokens: (u64, u64),
    /// (month, micro-units spent or reserved that month)
    spend: (u64, u64),
}

fn month(now: u64) -> u64 {
    deepseek_proxy::usage::calendar::month_index(now)
}

/// An open permit in the model: the day it reserved on, and how much.
struct Open {
    permit: Permit,
    day: u64,
    month: u64,
    reserve: u64,
}

impl Model {
    fn roll(&mut self, now: u64) {
        self.admitted_at.retain(|&t| t + MINUTE_MS > now);
        if self.tokens.0 != now / DAY_MS {
            self.tokens = (now / DAY_MS, 0);
        }
        if self.spend.0 != month(now) {
            self.spend = (month(now), 0);
        }
    }

    /// `Ok(())` admitted, or the refusal as (kind, used, retry_after_secs).
    fn admit(&mut self, reserve: u64, now: u64) -> Result<(), (Kind, u64, u64)> {
        self.roll(now);
        if self.in_flight >= LIMITS.max_concurrent {
            return Err((Kind::Concurrent, self.in_flight, 1));
        }
        if self.admitted_at.len() as u64 >= LIMITS.requests_per_minute {
            let wait = self.admitted_at[0] + MINUTE_MS - now;
            return Err((
                Kind::RequestsPerMinute,
                self.admitted_at.len() as u64,
                wait.div_ceil(1000).max(1),
            ));
        }
        if self.tokens.1 + reserve > LIMITS.tokens_per_day {
            let wait = DAY_MS - now % DAY_MS;
            return Err((
                Kind::TokensPerDay,
                self.tokens.1,
                wait.div_ceil(1000).max(1),
            ));
        }
        let micros = reserve * MICROS_PER_TOKEN;
        if self.spend.1 + micros > LIMITS.budget_per_month {
            let next = deepseek_proxy::usage::calendar::next_month_start_ms(now);
            return Err((
                Kind::Budget,
                self.spend.1,
                (next - now).div_ceil(1000).max(1),
            ));
        }
        self.admitted_at.push_back(now);
        self.in_flight += 1;
        self.tokens.1 += reserve;
        self.spend.1 += micros;
        Ok(())
    }

    fn settle(&mut self, open: &Open, tokens: u64) {
        self.in_flight -= 1;
        if self.tokens.0 == open.day {
            self.tokens.1 = self.tokens.1 - open.reserve + tokens;
        }
        if self.spend.0 == open.month {
            self.spend.1 =
                self.spend.1 - open.reserve * MICROS_PER_TOKEN + tokens * MICROS_PER_TOKEN;
        }
    }

    fn standing(&mut self, now: u64) -> Standing {
        self.roll(now);
        Standing {
            requests_last_minute: self.admitted_at.len() as u64,
            tokens_today: self.tokens.1,
            in_flight: self.in_flight,
            spent_month: self.spend.1,
        }
    }
}

/// Alice's request for `reserve` tokens at `now_ms`.
fn alices(reserve: u64, now_ms: u64) -> Ask<'static> {
    Ask {
        user: "alice",
        limits: LIMITS,
        reserve,
        key: None,
        reserve_micros: reserve * MICROS_PER_TOKEN,
        currency: "CNY",
        now_ms,
    }
}

async fn run(store: Arc<dyn Store>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut open: Vec<Open> = Vec::new();
    let mut now = START_MS;
    for op in ops {
        match op {
            Op::Admit { reserve, entering } => {
                let ask = alices(reserve, now);
                let got = match entering {
                    false => store.admit(ask).await.expect("store answers"),
                    true => match common::claim_and_enter(&*store, 1, &[], Some(ask)).await {
                        Entry::Granted {
                            lease: None,
                            permit: Some(permit),
                        } => Admission::Granted(permit),
                        Entry::Refused(refusal) => Admission::Refused(refusal),
                        _ => {
                            prop_assert!(false, "not an admission's answer");
                            unreachable!()
                        }
                    },
                };
                let expected = model.admit(reserve, now);
                match (got, expected) {
                    (Admission::Granted(permit), Ok(())) => open.push(Open {
                        permit,
                        day: now / DAY_MS,
                        month: month(now),
                        reserve,
                    }),
                    (Admission::Refused(r), Err((kind, used, retry))) => {
                        prop_assert_eq!((r.kind, r.used, r.retry_after_secs), (kind, used, retry));
                        prop_assert_eq!(
                            r.limit,
                            match kind {
                                Kind::Concurrent => LIMITS.max_concurrent,
                                Kind::RequestsPerMinute => LIMITS.requests_per_minute,
                                Kind::TokensPerDay => LIMITS.tokens_per_day,
                                Kind::Budget => LIMITS.budget_per_month,
                                Kind::KeyBudget => 0,
                            }
                        );
                    }
                    (Admission::Granted(_), Err(e)) => {
                        prop_assert!(false, "granted, model refuses: {:?}", e)
                    }
                    (Admission::Refused(r), Ok(())) => {
                        prop_assert!(false, "refused, model admits: {:?}", r)
                    }
                }
            }
            Op::Settle { index, tokens } => {
                if !open.is_empty() {
                    let o = open.remove(index % open.len());
                    model.settle(&o, tokens);
                    o.permit
                        .settle(Charged {
                            tokens,
                            micros: tokens * MICROS_PER_TOKEN,
                        })
                        .await;
                }
            }
            Op::Drop { index } => {
                if !open.is_empty() {
                    let o = open.remove(index % open.len());
                    model.settle(&o, 0);
                    drop(o.permit);
                    // Settled in the background: wait for it to land.
                    let expected = model.standing(now);
                    for _ in 0..200 {
                        if store.standing("alice", now).await.expect("standing") == expected {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            Op::Advance { ms } => now += ms,
        }
        let standing = store.standing("alice", now).await.expect("standing");
        prop_assert_eq!(standing, model.standing(now), "at {}", now);
    }
    for o in open {
        o.permit.settle(Charged::default()).await;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_redis_quota_counters_behave_like_the_model(ops in prop::collection::vec(op(), 1..50)) {
        let rt = runtime();
        rt.block_on(async {
            let Some(redis) = TestRedis::start().await else { return Ok(()) };
            let config = RedisConfig {
                url: SecretString::from(redis.url.clone()),
                key_prefix: redis.prefix.clone(),
                // Running entries expire by the lease TTL in real time and
                // by score in the test's clock, which jumps ahead: a TTL
                // longer than any sequence keeps them until settled, as the
                // renewal does in production.
                lease_ttl: Duration::from_secs(30 * 86_400),
                timeout: Duration::from_millis(500),
            };
            let store: Arc<dyn Store> =
                Arc::new(RedisStore::new(&config, store_settings()).expect("store"));
            run(store, ops).await
        })?;
    }

    #[test]
    fn the_memory_quota_counters_behave_like_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let rt = runtime();
        rt.block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new(store_settings()));
            run(store, ops).await
        })?;
    }
}

/// A request whose day (or month) ended while it ran settles against a
/// counter that has expired: that counter is not made anew (it would have no
/// TTL and live forever), whether the request was charged more than it
/// reserved or less. A counter that does exist keeps its TTL.
#[test]
fn a_settlement_never_remakes_an_expired_counter() {
    runtime().block_on(async {
        let Some(redis) = TestRedis::start().await else {
            return;
        };
        let config = RedisConfig {
            url: SecretString::from(redis.url.clone()),
            key_prefix: redis.prefix.clone(),
            lease_ttl: Duration::from_secs(30),
            timeout: Duration::from_millis(500),
        };
        let store = RedisStore::new(&config, store_settings()).expect("store");
        let ask = |reserve| alices(reserve, START_MS);
        let granted = |admission| match admission {
            Admission::Granted(permit) => permit,
            Admission::Refused(r) => panic!("refused: {r:?}"),
        };
        let mut conn = redis.connection().await.expect("redis connection");
        let counters = ["quota:tokens:*", "quota:spend:*"];

        // Both counters are made by the admission, each with a TTL.
        let first = granted(store.admit(ask(100)).await.expect("store answers"));
        // The one key matching `pattern`, and its TTL in ms.
        let ttl_conn = conn.clone();
        let ttl_of = |pattern: &'static str| {
            let (redis, mut conn) = (&redis, ttl_conn.clone());
            async move {
                let keys = redis.keys(pattern).await;
                assert_eq!(keys.len(), 1, "{pattern}");
                redis::cmd("PTTL")
                    .arg(&keys[0])
                    .query_async::<i64>(&mut conn)
                    .await
                    .expect("pttl")
            }
        };
        for pattern in counters {
            let ttl = ttl_of(pattern).await;
            assert!(ttl > 0, "{pattern} has no TTL: {ttl}");
        }
        // They expire (a new day and month) before the request settles:
        // charged more tokens than it reserved, and fewer micro-units.
        for pattern in counters {
            for key in redis.keys(pattern).await {
                let _: i64 = redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("del");
            }
        }
        first
            .settle(Charged {
                tokens: 150,
                micros: 10,
            })
            .await;
        for pattern in counters {
            assert_eq!(redis.keys(pattern).await, Vec::<String>::new(), "{pattern}");
        }

        // A counter that is there is settled, and keeps its TTL.
        let second = granted(store.admit(ask(100)).await.expect("store answers"));
        second
            .settle(Charged {
                tokens: 40,
                micros: 40 * MICROS_PER_TOKEN,
            })
            .await;
        let standing = store.standing("alice", START_MS).await.expect("standing");
        assert_eq!((standing.tokens_today, standing.spent_month), (40, 120));
        for pattern in counters {
            let ttl = ttl_of(pattern).await;
            assert!(ttl > 0, "{pattern} lost its TTL: {ttl}");
        }
    });
}
