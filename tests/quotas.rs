//! Per-user quotas, end to end: racing requests never pass a limit, refused
//! requests never reach DeepSeek, reservations settle to the real usage, and
//! the counters hold across two replicas on one real Redis.

mod common;

use std::time::Duration;

use common::redis::TestRedis;
use common::{
    chat_body_with, count, error_code, race, random_hex, spawn_app_with, Settings, TestApp, ADMIN,
    USER1,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

const RACERS: usize = 50;

fn quota_settings(s: &mut Settings, limits: &str) {
    s.users = Some(common::admin_and_user(limits));
    // Every login gets its own token, so racers do not share a slot.
    s.login_cache_seconds = 0;
}

async fn tokens(app: &TestApp, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(app.token(USER1).await);
    }
    out
}

async fn me(app: &TestApp, token: &str) -> Value {
    app.get_json("/v1/usage/me", token).await
}

fn completions(app: &TestApp) -> usize {
    app.fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

#[tokio::test]
async fn fifty_racing_requests_pass_requests_per_minute_exactly_ten_times() {
    let app = spawn_app_with(|s| quota_settings(s, "requests_per_minute = 10")).await;
    let tokens = tokens(&app, RACERS).await;
    let body = chat_body_with(false, json!({}));
    let results = race(&[&app], &tokens, &body).await;
    assert_eq!(count(&results, 200, ""), 10, "{results:?}");
    assert_eq!(count(&results, 429, "quota_exceeded"), RACERS - 10);
    assert_eq!(completions(&app), 10, "refused requests never go upstream");
    for (status, _, retry_after) in &results {
        if *status == 429 {
            assert!((1..=60).contains(retry_after), "Retry-After {retry_after}");
        }
    }
    let me = me(&app, &tokens[0]).await;
    assert_eq!(me["quotas"]["requests_per_minute"]["limit"], 10);
    assert_eq!(me["quotas"]["requests_per_minute"]["used"], 10);
    assert_eq!(me["quotas"]["requests_per_minute"]["remaining"], 0);
    // Another user is not affected.
    let admin = app.token(ADMIN).await;
    assert_eq!(app.chat(&admin, &body).await.status(), 200);
}

/// The body every token racer sends, and what it reserves.
fn reserving_body(max_tokens: u64) -> (Value, u64) {
    let mut body = chat_body_with(
        false,
        json!({"head_delay_ms": 300, "reply": "one two three"}),
    );
    body["max_tokens"] = json!(max_tokens);
    let reserve = serde_json::to_vec(&body).expect("json").len() as u64 + max_tokens;
    (body, reserve)
}

#[tokio::test]
async fn fifty_racing_requests_cannot_overspend_tokens_per_day() {
    let (body, reserve) = reserving_body(1000);
    // Room for exactly 7 reservations at once.
    let limit = reserve * 7 + reserve / 2;
    let limits = format!("tokens_per_day = {limit}");
    let app = spawn_app_with(|s| quota_settings(s, &limits)).await;
    let tokens = tokens(&app, RACERS).await;
    let results = race(&[&app], &tokens, &body).await;
    assert_eq!(count(&results, 200, ""), 7, "{results:?}");
    assert_eq!(count(&results, 429, "quota_exceeded"), RACERS - 7);
    assert_eq!(completions(&app), 7);
    let to_midnight = 86_400 - (unix_secs() % 86_400);
    for (status, _, retry_after) in &results {
        if *status == 429 {
            assert!(
                retry_after.abs_diff(to_midnight) <= 2,
                "Retry-After {retry_after}, midnight in {to_midnight}"
            );
        }
    }
    // Settled with the real usage: 11 prompt + 3 completion tokens each.
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    let me = me(&app, &tokens[0]).await;
    assert_eq!(me["quotas"]["tokens_per_day"]["used"], 7 * 14, "{me}");
    assert_eq!(me["quotas"]["tokens_per_day"]["limit"], limit);
    // The settled room admits new requests again.
    assert_eq!(app.chat(&tokens[0], &body).await.status(), 200);
}

#[tokio::test]
async fn a_request_whose_reservation_cannot_fit_is_refused_with_a_clear_message() {
    let app = spawn_app_with(|s| quota_settings(s, "tokens_per_day = 5000")).await;
    let token = app.token(USER1).await;
    // No max_tokens: the default reservation (32768) exceeds the day.
    let response = app.chat(&token, &chat_body_with(false, json!({}))).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_tokens"), "{message}");
    assert_eq!(completions(&app), 0);
    // With a small max_tokens it fits.
    let mut small = chat_body_with(false, json!({}));
    small["max_tokens"] = json!(100);
    assert_eq!(app.chat(&token, &small).await.status(), 200);
}

#[tokio::test]
async fn fifty_racing_requests_get_max_concurrent_and_the_rest_user_busy() {
    let app = spawn_app_with(|s| quota_settings(s, "max_concurrent = 3")).await;
    let tokens = tokens(&app, RACERS).await;
    let body = chat_body_with(false, json!({"head_delay_ms": 400}));
    let results = race(&[&app], &tokens, &body).await;
    assert_eq!(count(&results, 200, ""), 3, "{results:?}");
    assert_eq!(count(&results, 429, "user_busy"), RACERS - 3);
    assert!(results
        .iter()
        .filter(|r| r.0 == 429)
        .all(|(_, _, retry_after)| *retry_after == 1));
    assert_eq!(completions(&app), 3);
    // Freed when they end.
    assert_eq!(app.chat(&tokens[0], &body).await.status(), 200);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_stream_frees_its_place_and_is_charged_an_estimate() {
    let app = spawn_app_with(|s| {
        quota_settings(s, "max_concurrent = 1\ntokens_per_day = 1000000");
    })
    .await;
    let (first, second) = (app.token(USER1).await, app.token(USER1).await);
    let mut body = chat_body_with(
        true,
        json!({"chunks": 50, "chunk_delay_ms": 50, "reply": "alpha beta gamma delta"}),
    );
    body["max_tokens"] = json!(500);
    let response = app.chat(&first, &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let _ = stream.next().await;
    let _ = stream.next().await;
    // While it runs, the user's other token is busy.
    let busy = app.chat(&second, &chat_body_with(false, json!({}))).await;
    assert_eq!(busy.status(), 429);
    assert_eq!(error_code(busy).await, "user_busy");
    drop(stream);
    assert!(app.fake.wait_cancelled(1, Duration::from_secs(3)).await);
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    let me = me(&app, &second).await;
    let used = me["quotas"]["tokens_per_day"]["used"]
        .as_u64()
        .expect("used");
    let prompt_estimate =
        deepseek_proxy::usage::estimate_tokens(&serde_json::to_vec(&body).expect("json"));
    assert!(
        used > prompt_estimate && used < prompt_estimate + 500,
        "charged {used}: the prompt estimate ({prompt_estimate}) plus what was streamed"
    );
    assert_eq!(me["quotas"]["max_concurrent"]["used"], 0);
    let mut small = chat_body_with(false, json!({}));
    small["max_tokens"] = json!(10);
    assert_eq!(app.chat(&second, &small).await.status(), 200);
}

#[tokio::test]
async fn a_failed_upstream_charges_nothing_and_frees_the_place() {
    let app = spawn_app_with(|s| {
        quota_settings(s, "max_concurrent = 1\ntokens_per_day = 100000");
    })
    .await;
    let token = app.token(USER1).await;
    let mut failing = chat_body_with(false, json!({"fail": {"status": 500}}));
    failing["max_tokens"] = json!(1000);
    assert_eq!(app.chat(&token, &failing).await.status(), 502);
    let me = me(&app, &token).await;
    assert_eq!(me["quotas"]["tokens_per_day"]["used"], 0, "{me}");
    assert_eq!(me["quotas"]["max_concurrent"]["used"], 0);
    assert_eq!(
        app.chat(&token, &chat_body_with(false, json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn users_inherit_the_defaults_and_may_override_them() {
    let app = spawn_app_with(|s| {
        s.quotas = "requests_per_minute = 1".into();
        // user1 overrides the default with 0: no limit.
        quota_settings(s, "requests_per_minute = 0");
    })
    .await;
    let body = chat_body_with(false, json!({}));
    let admin = app.token(ADMIN).await;
    assert_eq!(app.chat(&admin, &body).await.status(), 200);
    let refused = app.chat(&admin, &body).await;
    assert_eq!(refused.status(), 429, "the admin has the default limit");
    assert_eq!(error_code(refused).await, "quota_exceeded");
    let user = app.token(USER1).await;
    for _ in 0..3 {
        assert_eq!(app.chat(&user, &body).await.status(), 200);
    }
    let me = me(&app, &user).await;
    assert!(me["quotas"]["requests_per_minute"].is_null(), "{me}");
}

#[tokio::test]
async fn bad_quota_config_is_refused_by_name() {
    for (quotas, users, key) in [
        ("default_max_tokens = 0", None, "quotas.default_max_tokens"),
        ("requests_per_minute = -1", None, "requests_per_minute"),
        ("tokens_per_dya = 5", None, "tokens_per_dya"),
        (
            "",
            Some(common::admin_and_user("max_concurrent = \"two\"")),
            "max_concurrent",
        ),
    ] {
        let mut s = Settings {
            quotas: quotas.into(),
            ..Settings::default()
        };
        s.users = users.or(s.users);
        let text = common::config_toml(&s, "http://127.0.0.1:1", "sk-x", &random_hex().repeat(2));
        let err = deepseek_proxy::Config::from_toml(&text, &|_| None)
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains(key), "{err} should name {key}");
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn redis_replica(redis: &TestRedis, secret: &str, limits: &str) -> TestApp {
    let (state, secret, limits) = (redis.state_toml(3), secret.to_owned(), limits.to_owned());
    spawn_app_with(move |s| {
        s.state = state;
        s.jwt_secret = Some(secret);
        quota_settings(s, &limits);
    })
    .await
}

#[tokio::test]
async fn quotas_hold_across_two_replicas_on_redis() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let secret = format!("{}{}", random_hex(), random_hex());
    let (body, reserve) = reserving_body(1000);
    let limits = format!(
        "requests_per_minute = 12\nmax_concurrent = 5\ntokens_per_day = {}",
        reserve * 4 + 10
    );
    let a = redis_replica(&redis, &secret, &limits).await;
    let b = redis_replica(&redis, &secret, &limits).await;
    let tokens = tokens(&a, RACERS).await;

    // Tokens bind first: 4 reservations fit, across both replicas.
    let results = race(&[&a, &b], &tokens, &body).await;
    assert_eq!(count(&results, 200, ""), 4, "{results:?}");
    assert_eq!(count(&results, 429, "quota_exceeded"), RACERS - 4);
    assert_eq!(completions(&a) + completions(&b), 4);
    assert!(a.slots_free_within(Duration::from_secs(3)).await);
    assert!(b.slots_free_within(Duration::from_secs(3)).await);
    let standing = me(&b, &tokens[0]).await;
    assert_eq!(standing["quotas"]["tokens_per_day"]["used"], 4 * 14);
    assert_eq!(standing["quotas"]["requests_per_minute"]["used"], 4);
    assert_eq!(standing["quotas"]["max_concurrent"]["used"], 0);

    // Then concurrency (5), with small requests racing on both replicas.
    let mut small = chat_body_with(false, json!({"head_delay_ms": 400}));
    small["max_tokens"] = json!(1);
    let results = race(&[&a, &b], &tokens[..20], &small).await;
    assert_eq!(count(&results, 200, ""), 5, "{results:?}");
    assert_eq!(count(&results, 429, "user_busy"), 15);

    // Then requests per minute: 4 + 5 used, 3 left of 12.
    let quick = {
        let mut q = chat_body_with(false, json!({}));
        q["max_tokens"] = json!(1);
        q
    };
    let results = race(&[&a, &b], &tokens[20..30], &quick).await;
    assert_eq!(count(&results, 200, ""), 3, "{results:?}");
    assert_eq!(count(&results, 429, "quota_exceeded"), 7);
    // Every running entry was removed when its request ended.
    assert_eq!(redis.keys("quota:running:*").await, Vec::<String>::new());
    let standing = me(&a, &tokens[0]).await;
    assert_eq!(
        standing["quotas"]["max_concurrent"]["used"], 0,
        "{standing}"
    );
}
