//! Attacks on login and tokens: hashed passwords, brute force, revocation,
//! disabled users, per-user model lists. Each test plays the attacker.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{chat_body, error_code, spawn_app_with, ADMIN, USER1};
use deepseek_proxy::auth::password;
use serde_json::{json, Value};

fn hashed_users(admin_hash: &str) -> String {
    format!(
        r#"
[[auth.users]]
username = "admin"
password_hash = "{admin_hash}"

[[auth.users]]
username = "user1"
password = "pass123"
"#
    )
}

#[tokio::test]
async fn an_argon2_user_logs_in_with_the_right_password_only() {
    let phc = password::hash("correct horse").expect("hash");
    let app = spawn_app_with(|s| s.users = Some(hashed_users(&phc))).await;
    assert_eq!(app.login("admin", "correct horse").await.status(), 200);
    assert_eq!(app.login("admin", "correct horsE").await.status(), 401);
    assert_eq!(app.login("admin", "").await.status(), 401);
    // The plaintext user beside it still works (it is hashed at start).
    assert_eq!(app.login("user1", "pass123").await.status(), 200);
}

#[tokio::test]
async fn an_unknown_user_costs_a_password_check_like_a_wrong_password() {
    let phc = password::hash("correct horse").expect("hash");
    let app = spawn_app_with(|s| s.users = Some(hashed_users(&phc))).await;
    let before = app.state.passwords.checks();
    let wrong = app.login("admin", "guess").await;
    let unknown = app.login("nobody", "guess").await;
    assert_eq!(
        app.state.passwords.checks(),
        before + 2,
        "both paths hash once"
    );
    assert_eq!(wrong.status(), unknown.status());
    assert_eq!(
        wrong.text().await.expect("body"),
        unknown.text().await.expect("body")
    );
}

#[tokio::test]
async fn the_hash_password_command_prints_a_strong_phc_that_logs_in() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deepseek_proxy"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"pa ss\xc3\xa9 w0rd\n")
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    let app = spawn_app_with(|s| s.users = Some(hashed_users(&phc))).await;
    assert_eq!(app.login("admin", "pa ssé w0rd").await.status(), 200);
}

#[tokio::test]
async fn after_five_failures_a_username_is_throttled_without_checking_the_password() {
    let app = spawn_app_with(|_| {}).await;
    for _ in 0..5 {
        assert_eq!(app.login("admin", "wrong").await.status(), 401);
    }
    let checks = app.state.passwords.checks();
    let throttled = app.login("admin", "admin123").await;
    assert_eq!(
        throttled.status(),
        429,
        "even the right password is refused now"
    );
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(throttled.headers()["cache-control"], "no-store");
    assert_eq!(error_code(throttled).await, "login_throttled");
    assert_eq!(
        app.state.passwords.checks(),
        checks,
        "no password work while throttled"
    );
    // Another account is not affected (same client IP, below its own limit).
    assert_eq!(app.login("user1", "pass123").await.status(), 200);
}

#[tokio::test]
async fn a_success_resets_the_usernames_failure_count() {
    let app = spawn_app_with(|_| {}).await;
    for _ in 0..4 {
        assert_eq!(app.login("admin", "wrong").await.status(), 401);
    }
    assert_eq!(app.login("admin", "admin123").await.status(), 200);
    for _ in 0..4 {
        assert_eq!(
            app.login("admin", "wrong").await.status(),
            401,
            "count was reset"
        );
    }
}

#[tokio::test]
async fn a_flood_of_random_usernames_cannot_grow_memory_without_bound() {
    let app = spawn_app_with(|s| {
        s.auth_extra = "login_max_failures_per_ip_per_minute = 100000".into();
    })
    .await;
    let names: Vec<String> = (0..300).map(|i| format!("random-{i}")).collect();
    let logins = names.iter().map(|name| app.login(name, "x"));
    let statuses: Vec<u16> = futures_util::future::join_all(logins)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 401),
        "unknown names are counted, not throttled"
    );
    // The memory bound itself (10,000 keys per map, oldest evicted) is
    // unit-tested in auth::throttle; in Redis every counter has a TTL.
    assert_eq!(app.login("admin", "admin123").await.status(), 200);
}

#[tokio::test]
async fn logout_revokes_the_token_and_the_next_login_gets_a_new_one() {
    let app = spawn_app_with(|_| {}).await;
    let token = app.token(ADMIN).await;
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
    let out = app
        .http
        .post(app.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 200);
    assert_eq!(out.headers()["cache-control"], "no-store");
    let after = app.chat(&token, &chat_body(false)).await;
    assert_eq!(after.status(), 401);
    assert_eq!(error_code(after).await, "invalid_token");
    let again = app
        .http
        .post(app.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    assert_eq!(again.status(), 401, "a revoked token cannot log out twice");
    assert_eq!(again.headers()["cache-control"], "no-store");
    let fresh = app.token(ADMIN).await;
    assert_ne!(
        fresh, token,
        "the login cache does not hand out a revoked token"
    );
    assert_eq!(app.chat(&fresh, &chat_body(false)).await.status(), 200);
}

#[tokio::test]
async fn a_logout_needs_a_token() {
    let app = spawn_app_with(|_| {}).await;
    let response = app
        .http
        .post(app.url("/auth/logout"))
        .send()
        .await
        .expect("req");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn a_disabled_or_removed_user_cannot_log_in_and_their_tokens_stop_working() {
    let secret = format!("{}{}", common::random_hex(), common::random_hex());
    let before = spawn_app_with(|s| s.jwt_secret = Some(secret.clone())).await;
    let admin_token = before.token(ADMIN).await;
    let user_token = before.token(USER1).await;

    // The same gateway restarted with admin disabled and user1 removed.
    let users = r#"
[[auth.users]]
username = "admin"
password = "admin123"
disabled = true
"#;
    let after = spawn_app_with(|s| {
        s.jwt_secret = Some(secret.clone());
        s.users = Some(users.into());
    })
    .await;
    let refused = after.login("admin", "admin123").await;
    assert_eq!(refused.status(), 401);
    let unknown = after.login("nobody", "admin123").await;
    assert_eq!(
        refused.text().await.expect("b"),
        unknown.text().await.expect("b")
    );
    for token in [&admin_token, &user_token] {
        let response = after.chat(token, &chat_body(false)).await;
        assert_eq!(response.status(), 401);
        assert_eq!(error_code(response).await, "invalid_token");
    }
    assert!(after.fake.requests().is_empty());
}

#[tokio::test]
async fn a_user_limited_to_some_models_gets_403_for_others_and_nothing_is_sent() {
    let users = r#"
[[auth.users]]
username = "admin"
password = "admin123"
models = ["deepseek-chat"]
"#;
    // The list names an alias: it allows the model the alias is served by
    // (deepseek-flash), so deepseek-reasoner (also Flash) is allowed too,
    // and V4 Pro is not.
    let app = spawn_app_with(|s| s.users = Some(users.into())).await;
    let token = app.token(ADMIN).await;
    let mut pro = chat_body(false);
    pro["model"] = json!("deepseek-v4-pro");
    let response = app.chat(&token, &pro).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    let mut no_model = chat_body(false);
    no_model.as_object_mut().expect("object").remove("model");
    assert_eq!(app.chat(&token, &no_model).await.status(), 403);
    assert!(app.fake.requests().is_empty(), "nothing was forwarded");
    assert!(app.slots_free_within(Duration::from_secs(1)).await);
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
    let mut reasoner = chat_body(false);
    reasoner["model"] = json!("deepseek-reasoner");
    assert_eq!(app.chat(&token, &reasoner).await.status(), 200);
}

#[tokio::test]
async fn every_auth_response_is_no_store_even_errors() {
    let app = spawn_app_with(|_| {}).await;
    for (body, status) in [
        (json!({"username": "admin", "password": "admin123"}), 200),
        (json!({"username": "admin", "password": "nope"}), 401),
        (json!({"user": "admin"}), 400),
    ] {
        let response = app
            .http
            .post(app.url("/auth/login"))
            .json(&body)
            .send()
            .await
            .expect("req");
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["cache-control"], "no-store", "{body}");
    }
    let wrong_method = app
        .http
        .get(app.url("/auth/login"))
        .send()
        .await
        .expect("req");
    assert_eq!(wrong_method.headers()["cache-control"], "no-store");
}
