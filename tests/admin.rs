//! The admin and self-service API over the usage ledger, and who may call it.

mod common;

use std::time::Duration;

use common::{chat_body, chat_body_with, error_code, spawn_app_with, TestApp, ADMIN, USER1};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn only_admins_reach_the_admin_api_and_the_balance() {
    let app = spawn_app_with(|s| s.users = Some(common::admin_and_user(""))).await;
    let user = app.token(USER1).await;
    for path in [
        "/admin/usage",
        "/admin/requests",
        "/admin/active",
        "/user/balance",
    ] {
        let response = get(&app, &user, path).await;
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(error_code(response).await, "admin_required");
    }
    let response = app
        .http
        .get(app.url("/admin/usage"))
        .send()
        .await
        .expect("req");
    assert_eq!(response.status(), 401, "no token at all");
    assert!(app.fake.requests().is_empty(), "nothing reached DeepSeek");
}

#[tokio::test]
async fn admins_see_totals_rows_and_the_balance_and_users_see_their_own() {
    let app = spawn_app_with(|s| s.users = Some(common::admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    let user = app.token(USER1).await;
    for token in [&admin, &admin, &user] {
        let response = app.chat(token, &chat_body(false)).await;
        let _ = response.bytes().await;
    }
    app.state.ledger.flush().await;

    let by_user = json_of(get(&app, &admin, "/admin/usage?group_by=user").await).await;
    let rows = by_user["rows"].as_array().expect("rows");
    let of = |name: &str| {
        rows.iter()
            .find(|r| r["key"] == name)
            .cloned()
            .unwrap_or(json!(null))
    };
    assert_eq!(of("admin")["requests"], 2);
    assert_eq!(of("user1")["requests"], 1);
    assert_eq!(of("admin")["prompt_tokens"], 22);

    let one = json_of(get(&app, &admin, "/admin/usage?user=user1&group_by=model").await).await;
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["rows"][0]["key"], "deepseek-flash", "the served model");
    assert_eq!(one["rows"][0]["requests"], 1);

    let future = json_of(get(&app, &admin, "/admin/usage?from=4102444800").await).await;
    assert_eq!(
        future["rows"].as_array().map(Vec::len),
        Some(0),
        "nothing after 2100"
    );

    for bad in [
        "/admin/usage?group_by=planet",
        "/admin/usage?from=yesterday",
    ] {
        let response = get(&app, &admin, bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(error_code(response).await, "invalid_query");
    }

    let recent = json_of(get(&app, &admin, "/admin/requests?user=admin&limit=1").await).await;
    let rows = recent["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["username"], "admin");
    assert_eq!(rows[0]["token_id"].as_str().map(str::len), Some(32));
    assert!(
        !recent.to_string().contains(&admin),
        "rows never hold a token"
    );

    let balance = json_of(get(&app, &admin, "/user/balance").await).await;
    assert_eq!(balance["is_available"], true);
    assert_eq!(
        app.fake
            .requests()
            .last()
            .map(|r| r.path.clone())
            .as_deref(),
        Some("/user/balance")
    );

    let me = json_of(get(&app, &user, "/v1/usage/me").await).await;
    assert_eq!(me["user"], "user1");
    assert_eq!(me["today"]["requests"], 1);
    assert_eq!(me["month"]["requests"], 1);
    assert_eq!(me["today"]["prompt_tokens"], 11);
    // No limits configured: every quota is null (unlimited).
    for limit in ["requests_per_minute", "tokens_per_day", "max_concurrent"] {
        assert!(me["quotas"][limit].is_null(), "{limit} in {me}");
    }
}

#[tokio::test]
async fn admin_active_lists_requests_in_flight_with_their_age_and_bytes() {
    let app = spawn_app_with(|s| s.users = Some(common::admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    let user = app.token(USER1).await;
    let idle = json_of(get(&app, &admin, "/admin/active").await).await;
    assert_eq!(idle["count"], 0);

    let slow = chat_body_with(true, json!({"chunks": 20, "chunk_delay_ms": 50}));
    let response = app.chat(&user, &slow).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0;
    for _ in 0..3 {
        received += stream.next().await.expect("chunk").expect("bytes").len();
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let active = json_of(get(&app, &admin, "/admin/active").await).await;
    assert_eq!(active["count"], 1, "{active}");
    let row = &active["requests"][0];
    assert_eq!(row["user"], "user1");
    assert_eq!(row["model"], "deepseek-flash", "the served model");
    assert_eq!(row["route"], "chat");
    assert_eq!(row["stream"], true);
    assert!(row["age_ms"].as_u64().expect("age") >= 50, "{row}");
    let bytes = row["bytes_out"].as_u64().expect("bytes");
    assert!(bytes >= received as u64, "{bytes} relayed, {received} read");
    assert!(!active.to_string().contains(&user), "no token in the list");

    // Gone once the client leaves.
    drop(stream);
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    let after = json_of(get(&app, &admin, "/admin/active").await).await;
    assert_eq!(after["count"], 0, "{after}");
}
