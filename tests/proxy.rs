//! Forwarding: what reaches DeepSeek, and that its bytes reach the client unchanged.

mod common;

use common::{chat_body, chat_body_with, error_code, spawn_app, spawn_app_with, ADMIN};
use serde_json::{json, Value};

#[tokio::test]
async fn a_stream_is_relayed_byte_for_byte_and_ends_with_done() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(true, json!({"chunks": 6, "keepalives": 2}));
    let response = app.chat(&token, &body).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/event-stream"));
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());
    let got = response.bytes().await.expect("body");
    let sent = app.fake.responses();
    assert_eq!(sent.len(), 1);
    assert_eq!(got, sent[0], "the client gets exactly the upstream's bytes");
    let text = String::from_utf8(got.to_vec()).expect("utf8");
    assert!(
        text.starts_with(": keep-alive\n\n: keep-alive\n\n"),
        "keep-alives pass through"
    );
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the body ends right after [DONE]"
    );
    assert!(common::sse_text(&text).contains("You said: 你好"));
    let last = common::sse_data(&text);
    let usage: Value = serde_json::from_str(&last[last.len() - 2]).expect("json");
    assert!(
        usage["usage"]["total_tokens"].is_u64(),
        "usage on the final chunk"
    );
}

#[tokio::test]
async fn a_non_stream_answer_with_leading_blank_lines_passes_through_untouched() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(false, json!({"keepalives": 3}));
    let response = app.chat(&token, &body).await;
    assert_eq!(response.status(), 200);
    let got = response.bytes().await.expect("body");
    assert_eq!(got, app.fake.responses()[0]);
    assert!(got.starts_with(b"\n\n\n{"), "{:?}", &got[..8]);
    let parsed: Value = serde_json::from_slice(got.trim_ascii_start()).expect("json");
    assert_eq!(parsed["object"], "chat.completion");
}

#[tokio::test]
async fn the_request_body_reaches_deepseek_unchanged_but_for_the_user_id_at_its_end() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    // Odd spacing, unknown fields and unicode must all survive as they are.
    let raw = "{ \"model\" : \"deepseek-flash\",\n \"messages\":[{\"role\":\"user\",\"content\":\"héllo \\u4f60\"}],\
               \"temperature\":0.25, \"x_unknown\": {\"nested\": [1,2,3]} }";
    let response = app
        .http
        .post(app.url("/chat/completions"))
        .bearer_auth(&token)
        .body(raw)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = &app.fake.requests()[0];
    let user_id = app.fake.last_user_id().expect("a user_id was set");
    let expected = format!(
        "{},\"user_id\":\"{user_id}\"}}",
        raw.strip_suffix('}').expect("object")
    );
    assert_eq!(
        std::str::from_utf8(&seen.body).expect("utf8"),
        expected.as_str()
    );
    assert_eq!(seen.path, "/chat/completions", "DeepSeek's root path");
}

#[tokio::test]
async fn with_user_id_off_and_no_alias_the_body_reaches_deepseek_byte_for_byte() {
    let app = spawn_app_with(|s| s.deepseek_extra = "user_id = \"off\"".into()).await;
    let token = app.token(ADMIN).await;
    let raw = "{ \"model\" : \"deepseek-flash\",\n \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],\
               \"seed\":123456789012345678901234567890, \"temperature\":1.0e0, \"user_id\":\"mine\" }";
    let response = app
        .http
        .post(app.url("/chat/completions"))
        .bearer_auth(&token)
        .body(raw)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(app.fake.requests()[0].body, raw.as_bytes());
}

#[tokio::test]
async fn deepseek_sees_our_key_and_none_of_the_clients_credentials() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "client-chosen-id-42")
        .header("user-agent", "OpenAI/Python 1.50.0")
        .header("accept-encoding", "gzip, br")
        .json(&chat_body(false))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id-42");
    let seen = &app.fake.requests()[0].headers;
    assert_eq!(
        seen["authorization"],
        format!("Bearer {}", app.api_key).as_str()
    );
    assert!(seen.get("cookie").is_none());
    assert!(seen.get("x-forwarded-for").is_none());
    assert!(seen.get("x-forwarded-host").is_none());
    assert_eq!(
        seen["host"],
        app.fake.addr().to_string().as_str(),
        "Host is the upstream's"
    );
    assert_eq!(seen["x-request-id"], "client-chosen-id-42");
    assert_eq!(seen["user-agent"], "OpenAI/Python 1.50.0");
    assert_eq!(seen["accept-encoding"], "identity");
    let text = response.text().await.expect("body");
    assert!(!text.contains(&token));
}

#[tokio::test]
async fn a_body_cannot_redirect_the_request_or_swap_the_key() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let mut body = chat_body(false);
    body["api_key"] = json!("sk-attacker");
    body["base_url"] = json!("http://127.0.0.1:9/v1");
    body["api_base"] = json!("http://127.0.0.1:9/v1");
    body["headers"] = json!({"Authorization": "Bearer sk-attacker"});
    let response = app.chat(&token, &body).await;
    assert_eq!(response.status(), 200);
    let seen = &app.fake.requests()[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", app.api_key).as_str()
    );
}

#[tokio::test]
async fn every_response_has_a_request_id_and_set_cookie_never_passes() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let response = app.chat(&token, &chat_body(true)).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(id.len(), 32, "a generated id: {id}");
    assert!(response.headers().get("set-cookie").is_none());
    let _ = response.bytes().await;
    assert_eq!(app.fake.requests()[0].headers["x-request-id"], id.as_str());
    let not_found = app
        .http
        .get(app.url("/nope"))
        .send()
        .await
        .expect("request");
    assert!(not_found.headers().get("x-request-id").is_some());
    // A client id that is too long or not printable is replaced.
    let weird = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .expect("request");
    assert_eq!(weird.headers()["x-request-id"].len(), 32);
}

#[tokio::test]
async fn beta_routes_go_to_the_beta_path_of_the_same_origin() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let fim = json!({"model": "deepseek-chat", "prompt": "def fib(", "suffix": "    return"});
    let response = app.chat_at("/beta/completions", &token, &fim).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(body["choices"][0]["text"].is_string());
    let prefix = chat_body(false);
    let response = app.chat_at("/beta/chat/completions", &token, &prefix).await;
    assert_eq!(response.status(), 200);
    let paths: Vec<String> = app.fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/beta/completions", "/beta/chat/completions"]);
}

#[tokio::test]
async fn a_base_url_without_v1_still_finds_beta() {
    let app = spawn_app_with(|_| {}).await;
    // Rebuild against the same fake with base_url lacking /v1.
    let base = format!("http://{}", app.fake.addr());
    let other = spawn_app_with(|s| s.base_url = Some(base)).await;
    let token = other.token(ADMIN).await;
    let fim = json!({"model": "deepseek-chat", "prompt": "x"});
    let response = other.chat_at("/beta/completions", &token, &fim).await;
    // That fake requires the first app's key, so look at the path it saw.
    let _ = response.bytes().await;
    assert_eq!(app.fake.requests()[0].path, "/beta/completions");
}

#[tokio::test]
async fn models_are_listed_through_the_gateway() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    for path in ["/models", "/v1/models"] {
        let response = app
            .http
            .get(app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("req");
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["object"], "list");
    }
    let paths: Vec<String> = app.fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/models", "/models"], "DeepSeek's root, not /v1");
}

#[tokio::test]
async fn reasoning_streams_keep_their_reasoning_content() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let mut body = chat_body(true);
    body["model"] = json!("deepseek-reasoner");
    let response = app.chat(&token, &body).await;
    let text = response.text().await.expect("body");
    assert!(text.contains("\"reasoning_content\":\"The "), "{text}");
    assert_eq!(text.as_bytes(), &app.fake.responses()[0][..]);
}

#[tokio::test]
async fn bad_chat_bodies_get_400_and_nothing_is_forwarded() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let cases = [
        ("", "invalid_json"),
        ("{\"messages\": [", "invalid_json"),
        ("not json at all", "invalid_json"),
        ("[]", "invalid_body"),
        ("{}", "invalid_body"),
        ("{\"model\":\"deepseek-chat\"}", "invalid_body"),
        ("{\"messages\":\"hello\"}", "invalid_body"),
        ("{\"messages\":null}", "invalid_body"),
    ];
    for (body, code) in cases {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{body:?}");
        assert_eq!(error_code(response).await, code, "{body:?}");
    }
    assert!(app.fake.requests().is_empty());
    assert!(
        app.slots_free_within(std::time::Duration::from_secs(1))
            .await
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_whether_sized_or_chunked() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1000).await;
    let token = app.token(ADMIN).await;
    let mut big = chat_body(false);
    big["messages"][0]["content"] = json!("x".repeat(2000));
    let sized = app.chat(&token, &big).await;
    assert_eq!(sized.status(), 413);
    assert_eq!(error_code(sized).await, "body_too_large");

    let bytes = serde_json::to_vec(&big).expect("json");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let chunked = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(chunked.status(), 413);
    assert!(
        app.fake.requests().is_empty(),
        "nothing over the limit is forwarded"
    );
    // A body just under the limit still goes through.
    let mut small = chat_body(false);
    small["messages"][0]["content"] = json!("x".repeat(500));
    assert_eq!(app.chat(&token, &small).await.status(), 200);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let response = app
        .http
        .get(app.url("/v2/whatever"))
        .send()
        .await
        .expect("req");
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
    let response = app
        .http
        .get(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(response.status(), 405);
    assert_eq!(error_code(response).await, "method_not_allowed");
    let response = app
        .http
        .delete(app.url("/v1/models"))
        .send()
        .await
        .expect("req");
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/healthz")).send().await.expect("req");
    assert_eq!(response.status(), 200);
}
