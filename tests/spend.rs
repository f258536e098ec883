//! Spend in money, end to end: each ledger row's cost at peak and off-peak
//! (by the Beijing clock, holidays included, priced when sent), cache hits
//! at their own price, budgets per user and per key that racing requests
//! cannot overspend, and cost wherever usage is shown.

// Helpers here are test code too; clippy only exempts #[test] functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    chat_body_with, count, error_code, ledger_row, race, spawn_app_with, Settings, TestApp, ADMIN,
    USER1,
};
use serde_json::{json, Value};

const BEIJING_OFFSET_MS: u64 = 8 * 3_600_000;
const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Today's date in Beijing, `YYYY-MM-DD`.
fn beijing_today() -> String {
    let days = ((now_ms() + BEIJING_OFFSET_MS) / DAY_MS) as i64;
    deepseek_proxy::usage::calendar::Date::from_days(days).to_string()
}

/// Users with `limits` for user1, and `[pricing]` lines.
fn settings(s: &mut Settings, limits: &str, pricing: &str) {
    s.users = Some(common::admin_and_user(limits));
    s.login_cache_seconds = 0;
    s.quotas = format!("\n[pricing]\n{pricing}\n");
}

/// Every hour of every day is peak.
const ALWAYS_PEAK: &str =
    "peak_hours = [\"00:00-24:00\"]\npeak_weekdays = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"]";

async fn chat(app: &TestApp, token: &str, body: &Value) -> deepseek_proxy::ledger::UsageRecord {
    let response = app.chat(token, body).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    response.bytes().await.expect("body");
    ledger_row(app, &id).await
}

/// deepseek-flash's prices in micro-CNY per token: (hit, miss, output).
const FLASH_PEAK: (i64, i64, i64) = (0, 2, 8); // hit is 0.04 per million
const FLASH_OFF_PEAK: (i64, i64, i64) = (0, 1, 4);

/// What a row should cost, in micro-CNY, from its own token counts and
/// the price per million tokens of hits.
fn expected(
    row: &deepseek_proxy::ledger::UsageRecord,
    per_token: (i64, i64, i64),
    hit_per_million: i64,
) -> i64 {
    let prompt = row.prompt_tokens.unwrap();
    let hit = row.cached_tokens.unwrap();
    let out = row.completion_tokens.unwrap();
    let total = hit * hit_per_million
        + (prompt - hit) * per_token.1 * 1_000_000
        + out * per_token.2 * 1_000_000;
    (total + 500_000) / 1_000_000
}

#[tokio::test]
async fn a_request_costs_the_peak_or_off_peak_price_with_cache_hits_at_a_fiftieth() {
    let peak = spawn_app_with(|s| settings(s, "", ALWAYS_PEAK)).await;
    let body = chat_body_with(
        false,
        json!({"prompt_tokens": 100_000, "cache_hit_tokens": 90_000}),
    );
    let token = peak.token(USER1).await;
    let row = chat(&peak, &token, &body).await;
    assert_eq!(row.cached_tokens, Some(90_000));
    assert_eq!(
        row.cost_micros,
        Some(expected(&row, FLASH_PEAK, 40_000)),
        "{row:?}"
    );
    // 90,000 hits at 0.04 + 10,000 misses at 2 + output at 8, per million.
    assert!(row.cost_micros.unwrap() >= 3_600 + 20_000);
    assert_eq!(row.currency.as_deref(), Some("CNY"));
    assert!(!row.cost_estimated);
    assert_eq!(
        row.charged_tokens,
        Some(100_000 + row.completion_tokens.unwrap())
    );

    // Today is a holiday: off-peak all day, at half price.
    let holiday = format!("{ALWAYS_PEAK}\nholidays = [\"{}\"]", beijing_today());
    let off = spawn_app_with(|s| settings(s, "", &holiday)).await;
    let token = off.token(USER1).await;
    let cheap = chat(&off, &token, &body).await;
    assert_eq!(
        cheap.cost_micros,
        Some(expected(&cheap, FLASH_OFF_PEAK, 20_000))
    );
    assert_eq!(cheap.cost_micros.unwrap() * 2, row.cost_micros.unwrap());

    // No cache hits: the same prompt costs far more.
    let missed = chat(
        &off,
        &token,
        &chat_body_with(false, json!({"prompt_tokens": 100_000})),
    )
    .await;
    assert!(missed.cost_micros.unwrap() > 5 * cheap.cost_micros.unwrap());

    // USD prices with `currency = "USD"`.
    let usd =
        spawn_app_with(|s| settings(s, "", &format!("currency = \"USD\"\n{ALWAYS_PEAK}"))).await;
    let token = usd.token(USER1).await;
    let dollars = chat(&usd, &token, &body).await;
    assert_eq!(dollars.currency.as_deref(), Some("USD"));
    // 90,000 × 0.006 + 10,000 × 0.3 + out × 1.2 per million.
    let out = dollars.completion_tokens.unwrap();
    assert_eq!(
        dollars.cost_micros,
        Some((90_000 * 6_000 + 10_000 * 300_000 + out * 1_200_000 + 500_000) / 1_000_000)
    );
}

#[tokio::test]
async fn a_request_is_priced_at_the_moment_it_was_sent_across_a_peak_boundary() {
    // Peak ends two seconds from now (Beijing time).
    let local = now_ms() + BEIJING_OFFSET_MS;
    let second = (local % DAY_MS) / 1000;
    if second + 4 >= 86_400 || second < 2 {
        return; // too close to midnight in Beijing to draw the window
    }
    let end = second + 2;
    let window = format!(
        "peak_hours = [\"00:00:00-{:02}:{:02}:{:02}\"]\npeak_weekdays = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"]",
        end / 3600,
        end / 60 % 60,
        end % 60
    );
    let app = spawn_app_with(|s| settings(s, "", &window)).await;
    let token = app.token(USER1).await;
    // Sent before the boundary, streamed until after it.
    let slow = chat_body_with(
        true,
        json!({"chunks": 10, "chunk_delay_ms": 400, "prompt_tokens": 50_000}),
    );
    let across = chat(&app, &token, &slow).await;
    assert!(across.latency_ms > 3_000.0);
    assert_eq!(
        across.cost_micros,
        Some(expected(&across, FLASH_PEAK, 40_000)),
        "{across:?}"
    );
    // Sent after it: off-peak.
    let after = chat(
        &app,
        &token,
        &chat_body_with(false, json!({"prompt_tokens": 50_000})),
    )
    .await;
    assert_eq!(
        after.cost_micros,
        Some(expected(&after, FLASH_OFF_PEAK, 20_000))
    );
}

/// A body that reserves a known worst case: every body byte a cache miss
/// (2 micro-CNY at peak) plus max_tokens of output (8 each).
fn reserving_body(max_tokens: u64) -> (Value, u64) {
    let mut body = chat_body_with(
        false,
        json!({"head_delay_ms": 300, "reply": "one two three"}),
    );
    body["max_tokens"] = json!(max_tokens);
    let bytes = serde_json::to_vec(&body).unwrap().len() as u64;
    (body, bytes * 2 + max_tokens * 8)
}

fn units(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[tokio::test]
async fn fifty_racing_requests_cannot_overspend_a_monthly_budget() {
    let (body, reserve) = reserving_body(1000);
    // Room for exactly 7 worst cases at once.
    let budget = reserve * 7 + reserve / 2;
    let limits = format!("budget_per_month = {}", units(budget));
    let app = spawn_app_with(|s| settings(s, &limits, ALWAYS_PEAK)).await;
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(app.token(USER1).await);
    }
    let results = race(&[&app], &tokens, &body).await;
    assert_eq!(count(&results, 200, ""), 7, "{results:?}");
    assert_eq!(count(&results, 429, "budget_exceeded"), 43);
    let next_month = deepseek_proxy::usage::calendar::next_month_start_ms(now_ms()) / 1000;
    let to_month = next_month - now_ms() / 1000;
    for (status, _, retry_after) in &results {
        if *status == 429 {
            assert!(
                retry_after.abs_diff(to_month) <= 2,
                "Retry-After {retry_after}, month in {to_month}"
            );
        }
    }
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    // Settled on the real cost: far less than the worst case.
    app.state.ledger.flush().await;
    let me = me(&app, &tokens[0]).await;
    let month_cost = me["month"]["cost_micros"].as_u64().unwrap();
    assert!(month_cost > 0 && month_cost < reserve, "{me}");
    let used = me["quotas"]["budget_per_month"]["used"].as_f64().unwrap();
    assert!((used - month_cost as f64 / 1e6).abs() < 1e-9, "{me}");
    assert_eq!(
        me["quotas"]["budget_per_month"]["limit"].as_f64().unwrap(),
        budget as f64 / 1e6
    );
    assert_eq!(me["quotas"]["budget_resets_at"], next_month);
    // The settled room admits requests again; the message says why not.
    assert_eq!(app.chat(&tokens[0], &body).await.status(), 200);
    let mut huge = body.clone();
    huge["max_tokens"] = json!(10_000_000);
    let refused = app.chat(&tokens[1], &huge).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    let message: Value = refused.json().await.unwrap();
    let text = message["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("budget exceeded") && text.contains("CNY"),
        "{text}"
    );
}

async fn me(app: &TestApp, token: &str) -> Value {
    app.get_json("/v1/usage/me", token).await
}

async fn new_key(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/keys"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_budget_caps_that_key_alone_under_its_owners_budget() {
    let (body, reserve) = reserving_body(100);
    let limits = format!("budget_per_month = {}", units(reserve * 10));
    let app = spawn_app_with(|s| settings(s, &limits, ALWAYS_PEAK)).await;
    let token = app.token(USER1).await;
    // Above the owner's budget: refused by name.
    let too_big = new_key(
        &app,
        &token,
        json!({"name": "n8n", "budget_per_month": 1000}),
    )
    .await;
    assert_eq!(too_big.status(), 400);
    assert_eq!(error_code(too_big).await, "invalid_budget");
    let bad = new_key(&app, &token, json!({"name": "n8n", "budget_per_month": -1})).await;
    assert_eq!(error_code(bad).await, "invalid_budget");
    // Room for one worst case on the capped key.
    let capped: Value = new_key(
        &app,
        &token,
        json!({"name": "n8n", "budget_per_month": (reserve * 3 / 2) as f64 / 1e6, "max_in_flight": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    let free: Value = new_key(&app, &token, json!({"name": "laptop"}))
        .await
        .json()
        .await
        .unwrap();
    let (capped_key, free_key) = (
        capped["key"].as_str().unwrap(),
        free["key"].as_str().unwrap(),
    );
    assert!(
        (capped["budget_per_month"].as_f64().unwrap() - (reserve * 3 / 2) as f64 / 1e6).abs()
            < 1e-6
    );
    let results = race(
        &[&app],
        &[capped_key.to_owned(), capped_key.to_owned()],
        &body,
    )
    .await;
    assert_eq!(count(&results, 200, ""), 1, "{results:?}");
    assert_eq!(count(&results, 429, "budget_exceeded"), 1);
    // The other key is independent of it.
    assert_eq!(app.chat(free_key, &body).await.status(), 200);
    // The ledger and /v1/usage/me split spend per key.
    app.state.ledger.flush().await;
    let me = me(&app, &token).await;
    let keys = me["keys"].as_array().unwrap();
    let spent = |id: &Value| {
        keys.iter().find(|k| k["id"] == *id).unwrap()["spent_this_month"]
            .as_f64()
            .unwrap()
    };
    assert!(
        spent(&capped["id"]) > 0.0 && spent(&free["id"]) > 0.0,
        "{me}"
    );
    let by_key = me["by_key"].as_array().unwrap();
    assert!(
        by_key
            .iter()
            .any(|t| t["key"] == capped["id"] && t["cost_micros"].as_i64().unwrap() > 0),
        "{me}"
    );
}

#[tokio::test]
async fn cost_and_cache_hit_ratio_are_shown_wherever_usage_is() {
    let app = spawn_app_with(|s| {
        settings(s, "", ALWAYS_PEAK);
        s.server_extra = "metrics_addr = \"127.0.0.1:0\"".into();
    })
    .await;
    let token = app.token(USER1).await;
    let row = chat(
        &app,
        &token,
        &chat_body_with(
            false,
            json!({"prompt_tokens": 4000, "cache_hit_tokens": 3000}),
        ),
    )
    .await;
    let cost = row.cost_micros.unwrap();
    let me = me(&app, &token).await;
    assert_eq!(me["currency"], "CNY");
    assert_eq!(me["today"]["cost_micros"], cost);
    assert_eq!(me["today"]["cache_hit_ratio"], 0.75);
    assert_eq!(
        me["days"][0]["key"],
        deepseek_proxy::usage::calendar::Date::from_days((now_ms() / DAY_MS) as i64).to_string()
    );
    assert_eq!(me["by_model"][0]["key"], "deepseek-flash");
    let admin = app.token(ADMIN).await;
    for by in ["user", "model", "day", "key"] {
        let usage = app
            .get_json(&format!("/admin/usage?group_by={by}"), &admin)
            .await;
        assert_eq!(usage["currency"], "CNY");
        assert_eq!(usage["rows"][0]["cost_micros"], cost, "{by}: {usage}");
        assert_eq!(usage["rows"][0]["cache_hit_ratio"], 0.75);
    }
    let mine = app.get_json("/v1/usage/me/requests?limit=5", &token).await;
    assert_eq!(mine["rows"][0]["request_id"], row.request_id.as_str());
    assert_eq!(mine["rows"][0]["cost"].as_f64().unwrap(), cost as f64 / 1e6);
    let pricing = app.get_json("/v1/pricing", &token).await;
    assert_eq!(pricing["peak_now"], true);
    assert_eq!(
        pricing["models"]["deepseek-flash"]["peak"]["input_cache_miss"],
        2.0
    );
    assert_eq!(pricing["tool_call"], 0.005);
    let metrics = app
        .http
        .get(format!("http://{}/metrics", app.metrics_addr.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("deepseek_proxy_cost_total{"))
        .expect("cost_total");
    assert!(
        line.contains("user=\"user1\"") && line.contains("model=\"deepseek-flash\""),
        "{line}"
    );
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((value - cost as f64 / 1e6).abs() < 1e-9, "{line}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("deepseek_proxy_cache_hit_ratio{") && l.ends_with(" 0.75")),
        "{metrics}"
    );
    // A pricing route for the signed-out is refused like any other.
    assert_eq!(
        app.http
            .get(app.url("/v1/pricing"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn an_abandoned_stream_is_charged_an_estimate_flagged_as_such() {
    let app = spawn_app_with(|s| settings(s, "budget_per_month = 10", ALWAYS_PEAK)).await;
    let token = app.token(USER1).await;
    let body = chat_body_with(true, json!({"chunks": 20, "chunk_delay_ms": 100}));
    let mut response = app.chat(&token, &body).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.chunk().await;
    drop(response);
    let row = ledger_row(&app, &id).await;
    assert!(row.cost_estimated, "{row:?}");
    assert!(row.cost_micros.unwrap() > 0);
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    let me = me(&app, &token).await;
    let used = me["quotas"]["budget_per_month"]["used"].as_f64().unwrap();
    assert!(
        (used - row.cost_micros.unwrap() as f64 / 1e6).abs() < 1e-9,
        "{me}"
    );
}

#[tokio::test]
async fn a_model_without_a_price_is_refused_to_a_budgeted_user_only() {
    let pricing = format!("{ALWAYS_PEAK}\n[pricing.models.deepseek-flash]\noff_peak = {{ input_cache_hit = 0, input_cache_miss = 0, output = 0 }}\npeak = {{ input_cache_hit = 0, input_cache_miss = 0, output = 0 }}");
    let app = spawn_app_with(|s| settings(s, "budget_per_month = 1", &pricing)).await;
    let token = app.token(USER1).await;
    let mut body = chat_body_with(false, json!({}));
    body["model"] = json!("some-vllm-model");
    let refused = app.chat(&token, &body).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(error_code(refused).await, "model_not_priced");
    // Free by the table: cost 0, admitted.
    let row = chat(&app, &token, &chat_body_with(false, json!({}))).await;
    assert_eq!(row.cost_micros, Some(0));
    let admin = app.token(ADMIN).await;
    let unpriced = app.chat(&admin, &body).await;
    if unpriced.status() != 200 {
        assert_ne!(
            error_code(unpriced).await,
            "model_not_priced",
            "no budget, no refusal"
        );
    }
}
