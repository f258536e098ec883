//! Several upstreams on several replicas (issue #14): with the Redis state
//! backend, an upstream one replica found broken is benched on every
//! replica (`upstreams::probe::sync`), and an upstream's `max_in_flight` is
//! counted in Redis, so the cap holds across replicas. With the memory
//! backend, one replica alone still routes and benches by itself.
//!
//! Black-box: two fake DeepSeeks ("a", priority 0, and "b", priority 1),
//! each requiring its own key, behind two full apps built from the same
//! config text on one private `redis-server`. The tests watch what each fake
//! received, what the client got, `GET /admin/upstreams` and the ledger.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::random_hex;
use common::redis::TestRedis;
use deepseek_proxy::config::Config;
use deepseek_proxy::ledger::UsageRecord;
use deepseek_proxy::state::AppState;
use deepseek_proxy::App;
use fake_deepseek::{Behavior, Failure, FakeDeepSeek};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

const ADMIN: (&str, &str) = ("admin", "admin123");
const USER1: (&str, &str) = ("user1", "pass123");
const USER2: (&str, &str) = ("user2", "pass456");

/// Long enough that a leaked shared `max_in_flight` permit would not expire
/// by itself while a test runs.
const LEASE_TTL_SECS: u64 = 30;

/// One gateway process (an `App` with its own state and listener).
struct Replica {
    base: String,
    state: AppState,
    http: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Two fakes (`a`, `b`) and the replicas in front of them.
struct Cluster {
    a: FakeDeepSeek,
    /// The key the config gives `a`.
    key_a: String,
    b: FakeDeepSeek,
    replicas: Vec<Replica>,
    /// Kept alive (and stopped on drop) with the cluster.
    _redis: Option<TestRedis>,
}

struct Setup {
    /// Extra lines for table `a` (priority 0).
    a_extra: &'static str,
    /// Extra lines for table `b` (priority 1).
    b_extra: &'static str,
    /// `a`'s fake requires a different key than the config gives it: 401.
    a_refuses_key: bool,
    /// `[routing]` lines.
    routing: &'static str,
    replicas: usize,
    /// Redis for `[state]`; `None`: the memory backend.
    redis: Option<TestRedis>,
}

const USERS: &str = r#"
[[auth.users]]
username = "admin"
password = "admin123"
role = "admin"

[[auth.users]]
username = "user1"
password = "pass123"

[[auth.users]]
username = "user2"
password = "pass456"
"#;

async fn cluster(setup: Setup) -> Cluster {
    let a = FakeDeepSeek::start().await.expect("fake a starts");
    let b = FakeDeepSeek::start().await.expect("fake b starts");
    let key_a = format!("sk-a-{}", random_hex());
    let key_b = format!("sk-b-{}", random_hex());
    if setup.a_refuses_key {
        a.require_key(&format!("sk-a-other-{}", random_hex()));
    } else {
        a.require_key(&key_a);
    }
    b.require_key(&key_b);
    let jwt_secret = format!("{}{}", random_hex(), random_hex());
    let state = setup
        .redis
        .as_ref()
        .map(|r| r.state_toml(LEASE_TTL_SECS))
        .unwrap_or_default();
    let text = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[auth]
jwt_secret = "{jwt_secret}"
token_ttl_seconds = 3600
login_cache_seconds = 60
{USERS}

[deepseek]
timeout_seconds = 5
max_request_seconds = 60

[state]
{state}

[storage]
sqlite_path = ":memory:"

[[upstreams]]
name = "a"
base_url = "http://{a_addr}"
api_key = "{key_a}"
priority = 0
{a_extra}

[[upstreams]]
name = "b"
base_url = "http://{b_addr}"
api_key = "{key_b}"
priority = 1
{b_extra}

[routing]
{routing}
"#,
        a_addr = a.addr(),
        b_addr = b.addr(),
        a_extra = setup.a_extra,
        b_extra = setup.b_extra,
        routing = setup.routing,
    );
    let mut replicas = Vec::new();
    for _ in 0..setup.replicas {
        let no_env = |_: &str| None;
        let config = Config::from_toml(&text, &no_env)
            .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"));
        let app = App::build(config).await.expect("app builds");
        let addr: SocketAddr = app.local_addr().expect("bound");
        let state = app.state();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        replicas.push(Replica {
            base: format!("http://{addr}"),
            state,
            http: reqwest::Client::new(),
            _shutdown: tx,
            _server: server,
        });
    }
    Cluster {
        a,
        key_a,
        b,
        replicas,
        _redis: setup.redis,
    }
}

/// A client's view of one finished answer.
struct Answer {
    status: u16,
    request_id: String,
    body: String,
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn token(&self, (user, password): (&str, &str)) -> String {
        let response = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login request");
        assert_eq!(response.status(), 200, "login of {user}");
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    async fn start_chat(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("chat request")
    }

    /// One whole request; the token's one slot is free again afterwards.
    async fn chat(&self, token: &str, body: &Value) -> Answer {
        let answer = finish(self.start_chat(token, body).await).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.state.store.in_flight() > 0 {
            assert!(Instant::now() < deadline, "a token slot was never freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answer
    }

    /// `GET /admin/upstreams`: the entry of upstream `name`.
    async fn upstream(&self, admin_token: &str, name: &str) -> Value {
        let response = self
            .http
            .get(self.url("/admin/upstreams"))
            .bearer_auth(admin_token)
            .send()
            .await
            .expect("admin request");
        assert_eq!(response.status(), 200, "GET /admin/upstreams");
        let body: Value = response.json().await.expect("json");
        body["upstreams"]
            .as_array()
            .expect("an upstreams list")
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("no upstream {name} in {body}"))
            .clone()
    }

    /// The ledger row of `answer`, waiting up to 5 s for it to be written.
    async fn row(&self, answer: &Answer) -> UsageRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.state.ledger.flush().await;
            let rows = self.state.ledger.recent(None, 1000).await.expect("recent");
            if let Some(row) = rows.into_iter().find(|r| r.request_id == answer.request_id) {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "no ledger row for {}",
                answer.request_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (upstream, attempts) of `answer`'s ledger row.
    async fn served_by(&self, answer: &Answer) -> (String, i64) {
        let row = self.row(answer).await;
        (
            row.upstream.unwrap_or_default(),
            row.attempts.unwrap_or_default(),
        )
    }
}

async fn finish(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("a complete body");
    Answer {
        status,
        request_id,
        body,
    }
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "你好"}],
        "stream": stream
    })
}

/// Chat POSTs a fake received (a probe would be a GET).
fn posts(fake: &FakeDeepSeek) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

fn benched(upstream: &Value) -> bool {
    upstream["health"]["benched_for_ms"].as_u64().is_some()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_key_refused_on_one_replica_benches_that_upstream_on_the_other() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let c = cluster(Setup {
        a_extra: "",
        b_extra: "",
        a_refuses_key: true,
        routing: "auth_failure_cooldown_seconds = 120",
        replicas: 2,
        redis: Some(redis),
    })
    .await;
    let (r1, r2) = (&c.replicas[0], &c.replicas[1]);
    let admin2 = r2.token(ADMIN).await;
    assert!(
        !benched(&r2.upstream(&admin2, "a").await),
        "nothing benched a at replica 2 yet"
    );

    // Replica 1: a refuses its key (401), b serves, a is benched there.
    let token1 = r1.token(USER1).await;
    let first = r1.chat(&token1, &chat_body(false)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(r1.served_by(&first).await, ("b".into(), 2));
    assert_eq!(posts(&c.a), 1, "a saw replica 1's request");
    assert_eq!(posts(&c.b), 1);
    let admin1 = r1.token(ADMIN).await;
    assert!(benched(&r1.upstream(&admin1, "a").await));

    // Replica 2, which never sent anything to a, learns of the bench from
    // Redis within a sync or two (every 1 s), without a request of its own.
    let deadline = Instant::now() + Duration::from_secs(3);
    let a_at_2 = loop {
        let a_at_2 = r2.upstream(&admin2, "a").await;
        if benched(&a_at_2) {
            break a_at_2;
        }
        assert!(
            Instant::now() < deadline,
            "replica 2 never benched a within 3 s: {a_at_2}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        a_at_2["health"]["last_error"], "benched by another replica",
        "{a_at_2}"
    );
    let left = a_at_2["health"]["benched_for_ms"].as_u64().unwrap();
    assert!(
        left > 100_000 && left <= 120_000,
        "benched for the auth cooldown, not less: {left} ms"
    );
    assert!(
        !benched(&r2.upstream(&admin2, "b").await),
        "only a is benched"
    );
    assert_eq!(posts(&c.a), 1, "replica 2 found out without asking a");

    // From now on replica 2 goes straight to b: one attempt, a never asked.
    let token2 = r2.token(USER2).await;
    for i in 0..5 {
        let answer = r2.chat(&token2, &chat_body(false)).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert_eq!(r2.served_by(&answer).await, ("b".into(), 1), "request {i}");
    }
    assert_eq!(posts(&c.a), 1, "no request through replica 2 reached a");
    assert_eq!(posts(&c.b), 6);
}

#[tokio::test]
async fn a_breaker_opened_on_one_replica_benches_that_upstream_on_the_other() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let c = cluster(Setup {
        a_extra: "",
        b_extra: "",
        a_refuses_key: false,
        routing: "breaker_failures = 1\nbreaker_cooldown_seconds = 60",
        replicas: 2,
        redis: Some(redis),
    })
    .await;
    c.a.set_default(Behavior {
        fail: Some(Failure::Status(503)),
        ..Default::default()
    });
    let (r1, r2) = (&c.replicas[0], &c.replicas[1]);
    let admin2 = r2.token(ADMIN).await;

    // Replica 1: a answers 503, which opens its breaker (1 failure); b serves.
    let token1 = r1.token(USER1).await;
    let first = r1.chat(&token1, &chat_body(false)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(r1.served_by(&first).await, ("b".into(), 2));
    assert_eq!(posts(&c.a), 1);

    // Replica 2 benches a for the breaker's cooldown, without asking a.
    let deadline = Instant::now() + Duration::from_secs(3);
    let a_at_2 = loop {
        let a_at_2 = r2.upstream(&admin2, "a").await;
        if benched(&a_at_2) {
            break a_at_2;
        }
        assert!(
            Instant::now() < deadline,
            "replica 2 never benched a within 3 s: {a_at_2}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let left = a_at_2["health"]["benched_for_ms"].as_u64().unwrap();
    assert!(
        left > 40_000 && left <= 60_000,
        "benched for the breaker's cooldown: {left} ms"
    );
    let token2 = r2.token(USER2).await;
    for i in 0..3 {
        let answer = r2.chat(&token2, &chat_body(false)).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert_eq!(r2.served_by(&answer).await, ("b".into(), 1), "request {i}");
    }
    assert_eq!(posts(&c.a), 1, "no request through replica 2 reached a");
}

#[tokio::test]
async fn max_in_flight_of_an_upstream_holds_across_replicas() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let c = cluster(Setup {
        a_extra: "max_in_flight = 1",
        b_extra: "",
        a_refuses_key: false,
        routing: "",
        replicas: 2,
        redis: Some(redis),
    })
    .await;
    let (r1, r2) = (&c.replicas[0], &c.replicas[1]);
    // Different users: with the shared login cache one user would get one
    // token, whose single slot would refuse the second request itself.
    let token1 = r1.token(USER1).await;
    let token2 = r2.token(USER2).await;
    assert_ne!(token1, token2);

    // A slow stream through replica 1 takes a's one place (~1 s).
    let mut slow = chat_body(true);
    slow["_fake"] = json!({"chunks": 20, "chunk_delay_ms": 50});
    let streaming = r1.start_chat(&token1, &slow).await;
    assert_eq!(streaming.status(), 200);
    assert_eq!(posts(&c.a), 1, "the stream is at a");

    // Meanwhile replica 2, where a has no local request in flight, must see
    // a as full (in Redis) and send to b, without spending a try on a.
    let during = r2.chat(&token2, &chat_body(false)).await;
    assert_eq!(during.status, 200, "{}", during.body);
    assert_eq!(r2.served_by(&during).await, ("b".into(), 1));
    assert_eq!(posts(&c.a), 1, "a never saw the second request");
    assert_eq!(posts(&c.b), 1);
    assert_eq!(
        c.a.completed(),
        0,
        "the stream was still running when the second request was served"
    );

    let streamed = finish(streaming).await;
    assert!(
        streamed.body.ends_with("data: [DONE]\n\n"),
        "{}",
        streamed.body
    );
    assert_eq!(r1.served_by(&streamed).await, ("a".into(), 1));

    // Both done: the place is given back (asynchronously, in Redis), and
    // replica 2 uses a again. A leaked permit would hold for the 30 s lease.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = r2.chat(&token2, &chat_body(false)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let (upstream, attempts) = r2.served_by(&answer).await;
        assert_eq!(attempts, 1);
        if upstream == "a" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's place was never given back across replicas ({tries} tries)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(posts(&c.a), 2);
}

#[tokio::test]
async fn with_one_replica_alone_the_memory_backend_shares_nothing_and_needs_no_redis() {
    let c = cluster(Setup {
        a_extra: "",
        b_extra: "",
        a_refuses_key: true,
        routing: "auth_failure_cooldown_seconds = 120",
        replicas: 1,
        redis: None,
    })
    .await;
    let r = &c.replicas[0];
    assert!(!r.state.store.is_shared(), "the memory backend is local");
    let token = r.token(USER1).await;
    let admin = r.token(ADMIN).await;

    let first = r.chat(&token, &chat_body(false)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(r.served_by(&first).await, ("b".into(), 2));
    let a = r.upstream(&admin, "a").await;
    assert!(benched(&a), "a is benched here after its 401: {a}");
    assert_ne!(
        a["health"]["last_error"], "benched by another replica",
        "benched by this replica's own failure: {a}"
    );

    // Streamed too, and several: straight to b, a never asked again.
    for stream in [false, true, false] {
        let answer = r.chat(&token, &chat_body(stream)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(r.served_by(&answer).await, ("b".into(), 1));
    }
    assert_eq!(posts(&c.a), 1);
    assert_eq!(posts(&c.b), 4);
}

/// After `a`'s key was refused (benched) and then fixed: waits (up to 8 s)
/// until a request through `replica` is served by `a` (the probe lifted the
/// bench), then checks that every request over the next 3.5 s is too.
async fn a_serves_again_and_stays(replica: &Replica, token: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let answer = replica.chat(token, &chat_body(false)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        if replica.served_by(&answer).await.0 == "a" {
            break;
        }
        if Instant::now() >= deadline {
            return Err("a was never used again within 8 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lifted = Instant::now();
    while lifted.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = replica.chat(token, &chat_body(false)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let (upstream, _) = replica.served_by(&answer).await;
        if upstream != "a" {
            return Err(format!(
                "a was benched again {:?} after its bench was lifted (served by {upstream})",
                lifted.elapsed()
            ));
        }
    }
    Ok(())
}

/// The control for the next test: one replica, memory backend, a probe
/// every 3 s. A refused key benches `a`; once the key works again the
/// probe lifts the bench, and `a` stays in use.
#[tokio::test]
async fn alone_a_probe_that_finds_the_key_working_again_lifts_the_bench() {
    let c = cluster(Setup {
        a_extra: "",
        b_extra: "",
        a_refuses_key: true,
        routing: "auth_failure_cooldown_seconds = 120\nprobe_interval_seconds = 3",
        replicas: 1,
        redis: None,
    })
    .await;
    let r = &c.replicas[0];
    let token = r.token(USER1).await;
    let first = r.chat(&token, &chat_body(false)).await;
    assert_eq!(r.served_by(&first).await, ("b".into(), 2));
    c.a.require_key(&c.key_a);
    if let Err(e) = a_serves_again_and_stays(r, &token).await {
        panic!("{e}");
    }
}

/// The same with two replicas on Redis. Replica 1 published the bench
/// (`upstream:benched:a`, PX = the 120 s cooldown); a probe that finds the
/// key working again deletes it, so no replica's 1 s sync benches `a`
/// again: it stays in use on both.
#[tokio::test]
async fn on_redis_a_probe_that_finds_the_key_working_again_lifts_the_bench_everywhere() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let c = cluster(Setup {
        a_extra: "",
        b_extra: "",
        a_refuses_key: true,
        routing: "auth_failure_cooldown_seconds = 120\nprobe_interval_seconds = 3",
        replicas: 2,
        redis: Some(redis),
    })
    .await;
    let (r1, r2) = (&c.replicas[0], &c.replicas[1]);
    let token1 = r1.token(USER1).await;
    let first = r1.chat(&token1, &chat_body(false)).await;
    assert_eq!(r1.served_by(&first).await, ("b".into(), 2));
    // Replica 2 must have learned of the bench (its 1 s sync) before the
    // key is fixed, or its first use of `a` would not be a lifted bench.
    let admin2 = r2.token(ADMIN).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !benched(&r2.upstream(&admin2, "a").await) {
        assert!(Instant::now() < deadline, "replica 2 never benched a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.a.require_key(&c.key_a);
    let token2 = r2.token(USER2).await;
    let (at1, at2) = tokio::join!(
        a_serves_again_and_stays(r1, &token1),
        a_serves_again_and_stays(r2, &token2)
    );
    assert!(
        at1.is_ok() && at2.is_ok(),
        "replica 1: {at1:?}; replica 2: {at2:?}"
    );
}
