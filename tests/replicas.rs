//! Several gateway replicas on one real Redis behave as one gateway.
//!
//! Each replica is a full app with its own Redis connection and no memory in
//! common with the others (one is a separate process, killed with SIGKILL).

mod common;

use std::time::{Duration, Instant};

use common::redis::TestRedis;
use common::{
    chat_body, chat_body_with, error_code, random_hex, spawn_app_with, TestApp, ADMIN, USER1,
};
use futures_util::StreamExt;
use serde_json::json;

const LEASE_TTL_SECS: u64 = 3;

async fn replica(redis: &TestRedis, secret: &str) -> TestApp {
    let state = redis.state_toml(LEASE_TTL_SECS);
    let secret = secret.to_owned();
    spawn_app_with(move |s| {
        s.state = state;
        s.jwt_secret = Some(secret);
    })
    .await
}

fn shared_secret() -> String {
    format!("{}{}", random_hex(), random_hex())
}

/// Two replicas on one Redis, sharing a JWT secret. `None`: skipped.
async fn pair() -> Option<(TestRedis, TestApp, TestApp)> {
    let redis = TestRedis::start().await?;
    let secret = shared_secret();
    let a = replica(&redis, &secret).await;
    let b = replica(&redis, &secret).await;
    Some((redis, a, b))
}

async fn no_slot_keys_within(redis: &TestRedis, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let keys = redis.keys("slot:*").await;
        if keys.is_empty() || Instant::now() >= deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_same_token_at_both_replicas_at_once_gets_one_200_and_one_429() {
    let Some((redis, a, b)) = pair().await else {
        return;
    };
    let token = a.token(ADMIN).await;
    let slow = chat_body_with(true, json!({"chunks": 3, "chunk_delay_ms": 100}));
    for round in 0..5 {
        let (ra, rb) = tokio::join!(a.chat(&token, &slow), b.chat(&token, &slow));
        let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
        let (ta, tb) = tokio::join!(ra.text(), rb.text());
        let mut answers = [(sa, ta.expect("body")), (sb, tb.expect("body"))];
        answers.sort_by_key(|(status, _)| *status);
        assert_eq!([answers[0].0, answers[1].0], [200, 429], "round {round}");
        assert!(answers[0].1.ends_with("data: [DONE]\n\n"));
        assert!(answers[1].1.contains("token_busy"), "{}", answers[1].1);
    }
    assert!(no_slot_keys_within(&redis, Duration::from_secs(2))
        .await
        .is_empty());
}

#[tokio::test]
async fn the_login_cache_is_shared_even_by_concurrent_logins() {
    let Some((_redis, a, b)) = pair().await else {
        return;
    };
    let logins = (0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.token(ADMIN)
    });
    let tokens = futures_util::future::join_all(logins).await;
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
    assert_ne!(a.token(USER1).await, tokens[0], "users never share a token");
    assert_eq!(b.token(USER1).await, a.token(USER1).await);
}

#[tokio::test]
async fn logout_at_one_replica_rejects_the_token_at_the_other() {
    let Some((_redis, a, b)) = pair().await else {
        return;
    };
    let token = a.token(ADMIN).await;
    let first = b.chat(&token, &chat_body(false)).await;
    assert_eq!(first.status(), 200);
    // To its end, when the slot is free (else the next may be busy: 429).
    first.bytes().await.expect("the first answer's body");
    let out = a
        .http
        .post(a.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 200);
    let at_b = b.chat(&token, &chat_body(false)).await;
    assert_eq!(at_b.status(), 401);
    assert_eq!(error_code(at_b).await, "invalid_token");
    let models = b
        .http
        .get(b.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(
        models.status(),
        401,
        "routes without a slot check revocation too"
    );
    let fresh = b.token(ADMIN).await;
    assert_ne!(
        fresh, token,
        "the shared login cache forgot the revoked token"
    );
}

#[tokio::test]
async fn login_failures_are_counted_across_replicas() {
    let Some((redis, a, b)) = pair().await else {
        return;
    };
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.login("admin", "wrong").await.status(), 401);
    }
    let throttled = b.login("admin", "admin123").await;
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().get("retry-after").is_some());
    assert_eq!(error_code(throttled).await, "login_throttled");
    let ttls = redis.keys("fail:*").await;
    assert!(!ttls.is_empty());
    let mut conn = redis.connection().await.expect("conn");
    for key in ttls {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!(ttl > 0, "{key} must expire (PTTL {ttl})");
    }
}

/// A replica as its own process, to be killed with SIGKILL.
struct Process {
    child: tokio::process::Child,
    base: String,
}

async fn replica_process(redis: &TestRedis, secret: &str, fake_url: &str, key: &str) -> Process {
    let settings = common::Settings {
        state: redis.state_toml(LEASE_TTL_SECS),
        ..common::Settings::default()
    };
    let text = common::config_toml(&settings, fake_url, key, secret);
    let path = std::env::temp_dir().join(format!("replica-{}.toml", random_hex()));
    std::fs::write(&path, text).expect("write config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deepseek_proxy"))
        .arg("--config")
        .arg(&path)
        .env_remove("OPENAI_API_KEY")
        .env_remove("DEEPSEEK_PROXY_JWT_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn replica");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                return line;
            }
        }
        panic!("the replica ended before listening");
    })
    .await
    .expect("the replica starts");
    let _ = std::fs::remove_file(&path);
    let base = line.rsplit(' ').next().expect("url").trim().to_owned();
    Process { child, base }
}

#[tokio::test]
async fn a_replica_killed_mid_stream_frees_the_token_within_the_lease_ttl() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let secret = shared_secret();
    let a = replica(&redis, &secret).await;
    let mut doomed = replica_process(&redis, &secret, &a.fake.base_url(), &a.api_key).await;
    let token = a.token(ADMIN).await;
    let long = chat_body_with(true, json!({"chunks": 200, "chunk_delay_ms": 100}));
    let response = a
        .http
        .post(format!("{}/v1/chat/completions", doomed.base))
        .bearer_auth(&token)
        .json(&long)
        .send()
        .await
        .expect("stream at the doomed replica");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let _ = body.next().await;
    assert_eq!(
        a.chat(&token, &chat_body(false)).await.status(),
        429,
        "the lease is held"
    );

    doomed.child.start_kill().expect("SIGKILL");
    let _ = doomed.child.wait().await;
    let killed = Instant::now();
    loop {
        let status = a.chat(&token, &chat_body(false)).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_TTL_SECS + 2),
            "the lease outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed.elapsed() <= Duration::from_secs(LEASE_TTL_SECS + 1),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn redis_down_means_503_and_not_ready_and_service_recovers_when_it_returns() {
    let Some(mut redis) = TestRedis::own(format!("test-{}:", random_hex())).await else {
        return;
    };
    let app = replica(&redis, &shared_secret()).await;
    let token = app.token(ADMIN).await;
    let first = app.chat(&token, &chat_body(false)).await;
    assert_eq!(first.status(), 200);
    // Read to its end, which comes only once the slot is free: a client
    // that leaves before it may still find its last request busy (429).
    first.bytes().await.expect("the first answer's body");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    redis.stop();
    let started = Instant::now();
    let down = app.chat(&token, &chat_body(false)).await;
    assert_eq!(down.status(), 503);
    assert_eq!(error_code(down).await, "state_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    let login = app.login("admin", "admin123").await;
    assert_eq!(
        login.status(),
        503,
        "no silent fallback to per-process state"
    );
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert_eq!(error_code(ready).await, "state_unavailable");
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "alive, just not ready");
    assert!(
        app.fake.requests().len() == 1,
        "nothing went upstream while down"
    );

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
    assert!(!app.token(ADMIN).await.is_empty());
}

#[tokio::test]
async fn after_a_thousand_mixed_requests_no_lease_is_left_behind() {
    let Some((redis, a, b)) = pair().await else {
        return;
    };
    let tokens = [a.token(ADMIN).await, a.token(USER1).await];
    let scripts = [
        chat_body(false),
        chat_body(true),
        chat_body_with(
            true,
            json!({"fail": {"reset_after": 1}, "chunk_delay_ms": 1}),
        ),
        chat_body_with(false, json!({"fail": {"status": 500}})),
        chat_body_with(false, json!({"fail": {"status": 429}})),
        chat_body_with(true, json!({"chunks": 20, "chunk_delay_ms": 5})),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for batch in 0..100 {
        let requests = (0..10).map(|i| {
            let n = batch * 10 + i;
            let app = if n % 2 == 0 { &a } else { &b };
            let token = &tokens[n % 3 % 2];
            let body = &scripts[n % scripts.len()];
            let vanish = n % 7 == 0;
            async move {
                let sent = app
                    .http
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(token)
                    .json(body)
                    .send()
                    .await;
                let Ok(response) = sent else { return 0 };
                let status = response.status().as_u16();
                if vanish {
                    let mut stream = response.bytes_stream();
                    let _ = stream.next().await;
                } else {
                    let _ = response.bytes().await;
                }
                status
            }
        });
        for status in futures_util::future::join_all(requests).await {
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    assert_eq!(statuses.values().sum::<u32>(), 1000);
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&429),
        "{statuses:?}"
    );
    let left = no_slot_keys_within(&redis, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "leases left behind: {left:?} after {statuses:?}"
    );
    // The count falls once each release's answer is back: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.state.store.in_flight() + b.state.store.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "a lease is still counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The slot lease and the quota's running entry expire after the lease TTL
/// unless renewed: a stream three times as long keeps both, at every check
/// (the other replica refuses the token, and the running entry's expiry
/// stays ahead of the clock), and gives both back when it ends.
#[tokio::test]
async fn a_stream_longer_than_the_lease_ttl_keeps_its_slot_and_running_entry() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let secret = shared_secret();
    let with_quota = |redis: &TestRedis| {
        let (state, secret) = (redis.state_toml(LEASE_TTL_SECS), secret.clone());
        spawn_app_with(move |s| {
            s.state = state;
            s.jwt_secret = Some(secret);
            s.quotas = "max_concurrent = 4\n".into();
        })
    };
    let (a, b) = (with_quota(&redis).await, with_quota(&redis).await);
    let token = a.token(ADMIN).await;
    let chunks = (LEASE_TTL_SECS * 3 * 1000 / 100) as usize;
    // One word a chunk: the fake spreads the reply's words over them.
    let reply = vec!["word"; chunks].join(" ");
    let long = chat_body_with(
        true,
        json!({"chunks": chunks, "chunk_delay_ms": 100, "reply": reply}),
    );
    let response = a
        .http
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&long)
        .send()
        .await
        .expect("a long stream");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let streaming = tokio::spawn(async move {
        let mut frames = 0;
        while let Some(chunk) = body.next().await {
            chunk.expect("the stream runs to its end");
            frames += 1;
        }
        frames
    });
    let mut conn = redis.connection().await.expect("redis");
    let running_key = format!("{}quota:running:admin", redis.prefix);
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < Duration::from_secs(LEASE_TTL_SECS * 2 + 1) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            b.chat(&token, &chat_body(false)).await.status(),
            429,
            "the lease is held after {:?} (stream finished: {})",
            started.elapsed(),
            streaming.is_finished()
        );
        let expiries: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(&running_key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .expect("zrange");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        assert_eq!(expiries.len(), 1, "one running entry: {expiries:?}");
        assert!(
            expiries[0].1 > now_ms,
            "the running entry is renewed ahead of the clock after {:?}",
            started.elapsed()
        );
        checks += 1;
    }
    assert!(checks >= 8, "{checks} checks");
    assert!(streaming.await.expect("the reader") > chunks / 2);
    assert!(no_slot_keys_within(&redis, Duration::from_secs(2))
        .await
        .is_empty());
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&running_key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert!(left.is_empty(), "the running entry is settled: {left:?}");
}
