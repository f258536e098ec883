//! `POST /auth/login`, tokens and the login cache, against the real app.

mod common;

use std::time::Duration;

use common::{error_code, spawn_app, spawn_app_with, ADMIN, USER1};
use serde_json::Value;

fn claims_of(token: &str) -> (Value, Value) {
    use std::str::from_utf8;
    let mut parts = token.split('.');
    let decode = |s: &str| -> Value {
        let bytes = base64_url_decode(s);
        serde_json::from_str(from_utf8(&bytes).expect("utf8")).expect("json")
    };
    let header = decode(parts.next().expect("header"));
    let payload = decode(parts.next().expect("payload"));
    (header, payload)
}

/// Just enough base64url for JWT segments (no padding).
fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_good_login_returns_a_bearer_token_with_its_remaining_lifetime() {
    let app = spawn_app().await;
    let response = app.login("admin", "admin123").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    assert!((3599..=3600).contains(&expires_in), "{expires_in}");

    let (header, claims) = claims_of(body["token"].as_str().expect("token"));
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], "admin");
    for claim in ["iat", "exp", "jti"] {
        assert!(!claims[claim].is_null(), "{claim} missing from {claims}");
    }
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        3600
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_identical_401() {
    let app = spawn_app().await;
    let wrong = app.login("admin", "nope").await;
    let unknown = app.login("mallory", "admin123").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let (a, b) = (
        wrong.text().await.expect("body"),
        unknown.text().await.expect("body"),
    );
    assert_eq!(a, b);
    assert!(a.contains("\"code\":\"invalid_credentials\""), "{a}");
}

#[tokio::test]
async fn malformed_login_bodies_get_400_never_404_or_500() {
    let app = spawn_app().await;
    let bodies = [
        "",
        "not json",
        "{}",
        "[]",
        r#"{"username":"admin"}"#,
        r#"{"username":1,"password":2}"#,
        r#"{"username":"admin","password":"admin123""#,
        r#"["admin","admin123"]"#,
    ];
    for body in bodies {
        let response = app
            .http
            .post(app.url("/auth/login"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "body {body:?}");
        assert_eq!(error_code(response).await, "invalid_body", "body {body:?}");
    }
}

#[tokio::test]
async fn a_login_body_never_echoes_the_password_in_its_error() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/auth/login"))
        .body(r#"{"username":"admin","password":987654321}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    assert!(!response.text().await.expect("body").contains("987654321"));
}

#[tokio::test]
async fn a_login_without_a_content_type_still_works() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/auth/login"))
        .body(r#"{"username":"admin","password":"admin123"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn repeat_logins_inside_the_window_return_the_same_token() {
    let app = spawn_app().await;
    let first = app.token(ADMIN).await;
    let second = app.token(ADMIN).await;
    assert_eq!(first, second);
    let other = app.token(USER1).await;
    assert_ne!(first, other, "users never share tokens");
}

#[tokio::test]
async fn concurrent_logins_of_one_user_get_one_token() {
    let app = spawn_app().await;
    let logins = (0..10).map(|_| app.token(ADMIN));
    let tokens = futures_util::future::join_all(logins).await;
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
}

#[tokio::test]
async fn a_wrong_password_inside_the_window_is_still_refused() {
    let app = spawn_app().await;
    let _ = app.token(ADMIN).await;
    let response = app.login("admin", "admin124").await;
    assert_eq!(response.status(), 401);
    let body = response.text().await.expect("body");
    assert!(
        !body.contains("token\":"),
        "no token for a wrong password: {body}"
    );
}

#[tokio::test]
async fn a_token_that_expires_inside_the_window_is_never_handed_out_again() {
    let app = spawn_app_with(|s| {
        s.token_ttl_seconds = 1;
        s.login_cache_seconds = 60;
    })
    .await;
    let first = app.token(ADMIN).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.chat(&first, &common::chat_body(false)).await;
    assert_eq!(response.status(), 401, "the old token is expired");
    assert_eq!(error_code(response).await, "token_expired");
    let second = app.token(ADMIN).await;
    assert_ne!(first, second);
    let response = app.chat(&second, &common::chat_body(false)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_zero_cache_window_issues_a_new_token_each_time() {
    let app = spawn_app_with(|s| s.login_cache_seconds = 0).await;
    assert_ne!(app.token(ADMIN).await, app.token(ADMIN).await);
}

#[tokio::test]
async fn login_only_answers_post() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url("/auth/login"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 405);
    assert_eq!(error_code(response).await, "method_not_allowed");
}
