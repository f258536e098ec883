//! The status table: what the client gets for each way DeepSeek (or the
//! token) can fail, and that DeepSeek's key-bearing errors never get through.

mod common;

use std::time::Duration;

use common::{chat_body, chat_body_with, error_code, spawn_app, spawn_app_with, sse_data, ADMIN};
use serde_json::{json, Value};

async fn chat_failing_with(status: u16, stream: bool) -> (reqwest::Response, common::TestApp) {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(stream, json!({"fail": {"status": status}}));
    (app.chat(&token, &body).await, app)
}

#[tokio::test]
async fn missing_invalid_and_expired_tokens_get_401_and_nothing_goes_upstream() {
    let app = spawn_app().await;
    let body = chat_body(false);
    let no_token = app
        .http
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(no_token.status(), 401);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(no_token).await, "missing_token");

    for bad in ["garbage", "a.b.c", "Bearer", &"x".repeat(10_000)] {
        let response = app.chat(bad, &body).await;
        assert_eq!(response.status(), 401, "{bad:.20}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .expect("h")
            .starts_with("Bearer"));
        assert_eq!(error_code(response).await, "invalid_token");
    }
    // A token signed with another secret.
    let other = spawn_app().await;
    let foreign = other.token(ADMIN).await;
    assert_eq!(
        error_code(app.chat(&foreign, &body).await).await,
        "invalid_token"
    );
    // Wrong scheme.
    let token = app.token(ADMIN).await;
    let basic = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", format!("Basic {token}"))
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(basic.status(), 401);
    assert!(app.fake.requests().is_empty(), "nothing was sent upstream");
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let app = spawn_app_with(|s| s.base_url = Some(format!("http://127.0.0.1:{port}/v1"))).await;
    let token = app.token(ADMIN).await;
    let response = app.chat(&token, &chat_body(true)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_unreachable");
    assert!(app.slots_free_within(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn upstream_5xx_and_redirects_give_502() {
    for status in [500, 502, 504] {
        let (response, _app) = chat_failing_with(status, false).await;
        assert_eq!(response.status(), 502, "upstream {status}");
        assert_eq!(error_code(response).await, "upstream_error");
    }
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let response = app
        .chat(&token, &chat_body_with(false, json!({"fail": "redirect"})))
        .await;
    assert_eq!(response.status(), 502, "redirects are not followed");
    assert!(response.headers().get("location").is_none());
    assert_eq!(app.fake.requests().len(), 1);
}

#[tokio::test]
async fn upstream_503_gives_503_with_its_retry_after() {
    let (response, _app) = chat_failing_with(503, true).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(error_code(response).await, "upstream_overloaded");
}

#[tokio::test]
async fn upstream_429_gives_429_upstream_rate_limited() {
    let (response, _app) = chat_failing_with(429, false).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn the_requests_own_faults_pass_through_with_deepseeks_body() {
    for status in [400, 404, 413, 422] {
        let (response, app) = chat_failing_with(status, false).await;
        assert_eq!(response.status(), status);
        let got = response.bytes().await.expect("body");
        let seen: Value = serde_json::from_slice(&got).expect("json");
        assert!(seen["error"]["message"].is_string(), "{seen}");
        let _ = app;
    }
}

#[tokio::test]
async fn deepseek_auth_and_balance_errors_become_a_generic_502_without_the_key() {
    for status in [401, 402, 403] {
        let (response, app) = chat_failing_with(status, true).await;
        assert_eq!(response.status(), 502, "upstream {status}");
        let text = response.text().await.expect("body");
        assert!(!text.contains("Authentication Fails"), "{text}");
        assert!(!text.contains("Insufficient Balance"), "{text}");
        assert!(!text.contains(&app.api_key), "{text}");
        let code = serde_json::from_str::<Value>(&text).expect("json")["error"]["code"].clone();
        let expected = if status == 402 {
            "upstream_insufficient_balance"
        } else {
            "upstream_auth_failed"
        };
        assert_eq!(code, expected);
    }
}

#[tokio::test]
async fn a_wrong_key_echoed_by_deepseek_never_reaches_the_client() {
    let app = spawn_app().await;
    // The fake now expects another key, and echoes the one it got in its 401.
    app.fake.require_key("sk-the-right-one");
    let token = app.token(ADMIN).await;
    for stream in [true, false] {
        let response = app.chat(&token, &chat_body(stream)).await;
        assert_eq!(response.status(), 502);
        let text = response.text().await.expect("body");
        assert!(!text.contains(&app.api_key), "{text}");
        assert!(!text.contains("sk-test"), "{text}");
    }
    let models = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("r");
    assert_eq!(models.status(), 502);
    assert!(!models.text().await.expect("body").contains(&app.api_key));
}

#[tokio::test]
async fn no_response_head_within_the_timeout_gives_504() {
    let app = spawn_app_with(|s| s.timeout_seconds = 1).await;
    let token = app.token(ADMIN).await;
    let response = app
        .chat(&token, &chat_body_with(true, json!({"fail": "hang"})))
        .await;
    assert_eq!(response.status(), 504);
    assert_eq!(error_code(response).await, "upstream_timeout");
    assert!(
        app.fake.wait_cancelled(1, Duration::from_secs(2)).await,
        "the hung call is dropped"
    );
}

#[tokio::test]
async fn a_stream_reset_midway_ends_with_an_error_event_and_no_done() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(
        true,
        json!({"chunks": 6, "chunk_delay_ms": 30, "fail": {"reset_after": 3}}),
    );
    let response = app.chat(&token, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("a complete body");
    let events = sse_data(&text);
    assert_eq!(
        events.len(),
        4,
        "three relayed chunks then the error: {text}"
    );
    assert!(!text.contains("[DONE]"));
    let last: Value = serde_json::from_str(&events[3]).expect("json");
    assert_eq!(last["error"]["code"], "upstream_stream_failed");
    assert!(last["error"]["message"].is_string() && last["error"]["type"].is_string());
    assert!(text.ends_with("\n\n"));
}

#[tokio::test]
async fn a_stream_that_goes_silent_is_cut_after_the_timeout_and_upstream_is_closed() {
    let app = spawn_app_with(|s| s.timeout_seconds = 1).await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(true, json!({"chunks": 6, "fail": {"stall_after": 2}}));
    let response = app.chat(&token, &body).await;
    let text = response.text().await.expect("body");
    let events = sse_data(&text);
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("json");
    assert_eq!(last["error"]["code"], "upstream_idle_timeout");
    assert!(!text.contains("[DONE]"));
    assert!(app.fake.wait_cancelled(1, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn keep_alives_keep_a_slow_stream_open_until_the_hard_cap() {
    let app = spawn_app_with(|s| {
        s.timeout_seconds = 1;
        s.max_request_seconds = 2;
    })
    .await;
    let token = app.token(ADMIN).await;
    // A keep-alive every 400 ms beats the 1 s idle timeout, but not the 2 s cap.
    let body = chat_body_with(true, json!({"keepalives": 20, "keepalive_ms": 400}));
    let started = std::time::Instant::now();
    let response = app.chat(&token, &body).await;
    let text = response.text().await.expect("body");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with(": keep-alive\n\n"));
    let last: Value = serde_json::from_str(sse_data(&text).last().expect("event")).expect("json");
    assert_eq!(last["error"]["code"], "upstream_max_duration");
}

#[tokio::test]
async fn a_non_stream_body_cut_midway_is_not_presented_as_complete() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(false, json!({"fail": {"reset_after": 1}}));
    let sent = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await;
    match sent {
        Err(_) => {}
        Ok(response) => assert!(response.bytes().await.is_err(), "the body must fail"),
    }
    assert!(app.slots_free_within(Duration::from_secs(1)).await);
}
