//! Model-based test of the per-token slot: random sequences of operations
//! run against the real store (Redis, and memory) and against a model that
//! is obviously right; every answer must agree.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::redis::TestRedis;
use common::{runtime, store_settings};
use deepseek_proxy::config::RedisConfig;
use deepseek_proxy::store::memory::MemoryStore;
use deepseek_proxy::store::redis::RedisStore;
use deepseek_proxy::store::{Claimed, Entry, Lease, Store};
use proptest::prelude::*;
use secrecy::SecretString;

const TOKENS: u128 = 3;

#[derive(Clone, Debug)]
enum Op {
    Acquire(u128),
    /// Give the slot back and wait for it (the normal end of a response).
    Release(u128),
    /// Drop the lease (a client that vanished): freed in the background.
    Drop(u128),
    Revoke(u128),
    /// Logged out through another replica: this process learns it only
    /// from the `enter` script.
    RevokeElsewhere(u128),
    /// Another replica holds the key now (ours expired and it took it).
    Steal(u128),
    /// The other replica's lease expires.
    Expire(u128),
}

fn op(redis: bool) -> impl Strategy<Value = Op> {
    let t = 0..TOKENS;
    let common = prop_oneof![
        4 => t.clone().prop_map(Op::Acquire),
        2 => t.clone().prop_map(Op::Release),
        2 => t.clone().prop_map(Op::Drop),
        1 => t.clone().prop_map(Op::Revoke),
    ];
    if redis {
        prop_oneof![
            9 => common,
            1 => t.clone().prop_map(Op::RevokeElsewhere),
            1 => t.clone().prop_map(Op::Steal),
            1 => t.prop_map(Op::Expire),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

#[derive(Default)]
struct Model {
    ours: HashSet<u128>,
    stolen: HashSet<u128>,
    /// Logged out through this process.
    revoked: HashSet<u128>,
    revoked_elsewhere: HashSet<u128>,
}

impl Model {
    /// A logout through this process is known before the body; this
    /// process's own slots next; then, in one script, a logout through
    /// another replica and another replica's slot.
    fn acquire(&mut self, t: u128) -> &'static str {
        if self.revoked.contains(&t) {
            "revoked"
        } else if self.ours.contains(&t) {
            "busy"
        } else if self.revoked_elsewhere.contains(&t) {
            "revoked"
        } else if self.stolen.contains(&t) {
            "busy"
        } else {
            self.ours.insert(t);
            "granted"
        }
    }
}

struct Harness {
    store: Arc<dyn Store>,
    redis: Option<(TestRedis, String)>,
    /// Another replica on the same Redis.
    other: Option<Arc<dyn Store>>,
}

impl Harness {
    fn slot_key(&self, t: u128) -> Option<String> {
        self.redis
            .as_ref()
            .map(|(r, _)| format!("{}slot:{t:032x}", r.prefix))
    }

    async fn key_value(&self, t: u128) -> Option<String> {
        let (redis, _) = self.redis.as_ref()?;
        let mut conn = redis.connection().await.expect("conn");
        redis::cmd("GET")
            .arg(self.slot_key(t))
            .query_async::<Option<String>>(&mut conn)
            .await
            .expect("get")
    }

    async fn set_key(&self, t: u128, value: Option<&str>) {
        let Some((redis, _)) = self.redis.as_ref() else {
            return;
        };
        let mut conn = redis.connection().await.expect("conn");
        let cmd = match value {
            Some(v) => {
                let mut c = redis::cmd("SET");
                c.arg(self.slot_key(t)).arg(v).arg("PX").arg(60_000);
                c
            }
            None => {
                let mut c = redis::cmd("DEL");
                c.arg(self.slot_key(t));
                c
            }
        };
        let _: () = cmd.query_async(&mut conn).await.expect("set");
    }
}

async fn run(harness: Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut leases: HashMap<u128, Lease> = HashMap::new();
    for op in ops {
        match op {
            Op::Acquire(t) => {
                let entry = common::claim_and_enter(&*harness.store, t, &[t], None).await;
                let got = match entry {
                    Entry::Granted {
                        lease: Some(lease),
                        permit: None,
                    } => {
                        leases.insert(t, lease);
                        "granted"
                    }
                    Entry::Granted { .. } => "granted without a lease, or with a permit",
                    Entry::Busy => "busy",
                    Entry::Revoked => "revoked",
                    Entry::Refused(_) => "refused with no quota asked",
                };
                prop_assert_eq!(got, model.acquire(t), "acquire {}", t);
            }
            Op::Release(t) => {
                if let Some(lease) = leases.remove(&t) {
                    lease.release().await;
                    model.ours.remove(&t);
                }
            }
            Op::Drop(t) => {
                if let Some(lease) = leases.remove(&t) {
                    drop(lease);
                    model.ours.remove(&t);
                    // The background release must land (and only on our key).
                    if !model.stolen.contains(&t) {
                        for _ in 0..100 {
                            if harness.key_value(t).await.is_none() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            Op::Revoke(t) => {
                let exp = deepseek_proxy::auth::jwt::unix_now() + 60;
                harness.store.revoke("user", t, exp).await.expect("revoke");
                model.revoked.insert(t);
            }
            Op::RevokeElsewhere(t) => {
                let exp = deepseek_proxy::auth::jwt::unix_now() + 60;
                let other = harness.other.as_ref().expect("another replica");
                other.revoke("user", t, exp).await.expect("revoke");
                model.revoked_elsewhere.insert(t);
            }
            Op::Steal(t) => {
                harness.set_key(t, Some("another-replica")).await;
                model.stolen.insert(t);
                // Our lease, if any, is now someone else's key: releasing it
                // must leave theirs alone, and it no longer counts as ours.
                if let Some(lease) = leases.remove(&t) {
                    lease.release().await;
                }
                model.ours.remove(&t);
            }
            Op::Expire(t) => {
                if model.stolen.remove(&t) {
                    harness.set_key(t, None).await;
                }
            }
        }
        for t in 0..TOKENS {
            // This process's own claims (the early 429) agree, once a
            // background release has landed. (Memory also refuses a
            // revoked token's claim.)
            if !model.revoked.contains(&t) {
                let ours = model.ours.contains(&t);
                let busy_here = || matches!(harness.store.claim(t, vec![t]), Claimed::Busy);
                for _ in 0..100 {
                    if busy_here() == ours {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                prop_assert_eq!(busy_here(), ours, "busy here {}", t);
            }
            if model.stolen.contains(&t) {
                let value = harness.key_value(t).await;
                prop_assert_eq!(value.as_deref(), Some("another-replica"));
            }
        }
    }
    for (_, lease) in leases {
        lease.release().await;
    }
    if let Some((redis, _)) = &harness.redis {
        for t in model.stolen.iter() {
            harness.set_key(*t, None).await;
        }
        prop_assert!(
            redis.keys("slot:*").await.is_empty(),
            "no lease left behind"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_redis_lease_store_behaves_like_the_model(ops in prop::collection::vec(op(true), 1..40)) {
        let rt = runtime();
        rt.block_on(async {
            let Some(redis) = TestRedis::start().await else { return Ok(()) };
            let (store, other) = (redis_store(&redis), Some(redis_store(&redis)));
            let prefix = redis.prefix.clone();
            run(Harness { store, redis: Some((redis, prefix)), other }, ops).await
        })?;
    }

    #[test]
    fn the_memory_store_behaves_like_the_model(ops in prop::collection::vec(op(false), 1..60)) {
        let rt = runtime();
        rt.block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new(store_settings()));
            run(Harness { store, redis: None, other: None }, ops).await
        })?;
    }
}

fn redis_store(redis: &TestRedis) -> Arc<dyn Store> {
    let config = RedisConfig {
        url: SecretString::from(redis.url.clone()),
        key_prefix: redis.prefix.clone(),
        lease_ttl: Duration::from_secs(15),
        timeout: Duration::from_millis(500),
    };
    Arc::new(RedisStore::new(&config, store_settings()).expect("store"))
}

/// A key with three slots, and a quota that refuses: the slot and the
/// quotas are one step, so a refused request holds nothing; a claim holds
/// its slot here until it is dropped or entered.
async fn slots_and_quotas_enter_together(store: Arc<dyn Store>) {
    use deepseek_proxy::limits::quota::{Kind, Limits};
    use deepseek_proxy::store::Ask;
    let ask = |now_ms| Ask {
        user: "carol",
        limits: Limits {
            requests_per_minute: 2,
            ..Limits::default()
        },
        reserve: 0,
        key: None,
        reserve_micros: 0,
        currency: "CNY",
        now_ms,
    };
    let now = deepseek_proxy::usage::calendar::now_ms();
    let slots = [100, 101, 102];
    let busy_here = || matches!(store.claim(100, slots.to_vec()), Claimed::Busy);
    let mut held = Vec::new();
    for i in 0..3u64 {
        let quota = (i < 2).then(|| ask(now));
        match common::claim_and_enter(&*store, 100, &slots, quota).await {
            Entry::Granted {
                lease: Some(lease),
                permit,
            } => {
                assert_eq!(permit.is_some(), i < 2);
                held.push((lease, permit));
            }
            _ => panic!("entry {i} of 3 is granted"),
        }
        assert_eq!(busy_here(), i == 2, "after entry {i}");
    }
    assert!(matches!(
        common::claim_and_enter(&*store, 100, &slots, None).await,
        Entry::Busy
    ));
    let (lease, permit) = held.pop().expect("three");
    lease.release().await;
    drop(permit);
    assert!(!busy_here());
    // A claim holds the free slot here until it is dropped.
    let Claimed::Yes(claim) = store.claim(100, slots.to_vec()) else {
        panic!("one slot is free");
    };
    assert!(busy_here());
    drop(claim);
    assert!(!busy_here());
    // The third request in the minute: refused, and the free slot stays free.
    match common::claim_and_enter(&*store, 100, &slots, Some(ask(now))).await {
        Entry::Refused(refusal) => assert_eq!(refusal.kind, Kind::RequestsPerMinute),
        _ => panic!("refused by the requests-per-minute quota"),
    }
    assert!(!busy_here());
    assert_eq!(store.in_flight(), 2);
    match common::claim_and_enter(&*store, 100, &slots, None).await {
        Entry::Granted {
            lease: Some(lease),
            permit: None,
        } => held.push((lease, None)),
        _ => panic!("the slot a refusal left free is granted"),
    }
    for (lease, _) in held {
        lease.release().await;
    }
    // Logged out while its body was arriving (after its claim): `enter`
    // refuses it (with Redis, the script), with nothing counted against the
    // minute and no slot taken; its next claim is refused at once.
    let later = now + 61_000;
    let Claimed::Yes(claim) = store.claim(100, slots.to_vec()) else {
        panic!("every slot is free");
    };
    store
        .revoke("carol", 100, deepseek_proxy::auth::jwt::unix_now() + 60)
        .await
        .expect("revoke");
    assert!(matches!(
        store
            .enter(100, Some(claim), Some(ask(later)))
            .await
            .expect("the store answers"),
        Entry::Revoked
    ));
    let standing = store.standing("carol", later).await.expect("standing");
    assert_eq!(standing.requests_last_minute, 0);
    assert_eq!(store.in_flight(), 0);
    assert!(!busy_here());
    assert!(matches!(store.claim(100, slots.to_vec()), Claimed::Revoked));
}

#[test]
fn a_refused_entry_holds_nothing_in_memory() {
    runtime().block_on(slots_and_quotas_enter_together(Arc::new(MemoryStore::new(
        store_settings(),
    ))));
}

#[test]
fn a_refused_entry_holds_nothing_in_redis() {
    runtime().block_on(async {
        let Some(redis) = TestRedis::start().await else {
            return;
        };
        slots_and_quotas_enter_together(redis_store(&redis)).await;
        assert!(
            redis.keys("slot:*").await.is_empty(),
            "no lease left behind"
        );
    });
}

/// A request that goes away while its `enter` script is in flight (the
/// client hung up): the script still runs and takes the slot, so the store
/// deletes it again (and the running entry) rather than leave the token
/// locked for the lease TTL. Until then this process still counts the slot
/// as taken, so a retry is not let in to find its own last try there.
/// Redis is paused for writes (its own server, so no other test waits)
/// while the request goes away: the script is sent and not yet run.
#[test]
fn an_entry_dropped_in_flight_leaves_no_slot_behind() {
    use deepseek_proxy::limits::quota::Limits;
    use deepseek_proxy::store::Ask;
    runtime().block_on(async {
        let prefix = format!("test-{}:", common::random_hex());
        let Some(redis) = TestRedis::own(prefix).await else {
            return;
        };
        let store = redis_store(&redis);
        // Warm the connection and load the script.
        let Entry::Granted {
            lease: Some(lease), ..
        } = common::claim_and_enter(&*store, 1, &[1], None).await
        else {
            panic!("granted");
        };
        lease.release().await;
        let now = deepseek_proxy::usage::calendar::now_ms();
        let ask = Ask {
            user: "dave",
            limits: Limits {
                max_concurrent: 5,
                ..Limits::default()
            },
            reserve: 0,
            key: None,
            reserve_micros: 0,
            currency: "CNY",
            now_ms: now,
        };
        let mut pause = redis.connection().await.expect("redis connection");
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(400)
            .arg("WRITE")
            .query_async(&mut pause)
            .await
            .expect("client pause");
        let paused = std::time::Instant::now();
        let Claimed::Yes(claim) = store.claim(7, vec![7]) else {
            panic!("free");
        };
        let entering = store.enter(7, Some(claim), Some(ask));
        let gone = tokio::time::timeout(Duration::from_millis(100), entering).await;
        assert!(gone.is_err(), "the script waits for the pause");
        assert!(
            matches!(store.claim(7, vec![7]), Claimed::Busy),
            "the slot counts as taken here until it is deleted"
        );
        assert!(
            paused.elapsed() < Duration::from_millis(400),
            "still paused"
        );
        let mut left = Vec::new();
        let mut running = u64::MAX;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if paused.elapsed() < Duration::from_millis(450) {
                continue;
            }
            left = redis.keys("slot:*").await;
            running = store
                .standing("dave", now)
                .await
                .expect("standing")
                .in_flight;
            if left.is_empty() && running == 0 && !matches!(store.claim(7, vec![7]), Claimed::Busy)
            {
                break;
            }
        }
        assert!(left.is_empty(), "slots left behind: {left:?}");
        assert_eq!(running, 0, "running entries left behind");
        assert!(matches!(store.claim(7, vec![7]), Claimed::Yes(_)));
        assert_eq!(store.in_flight(), 0);
    });
}
