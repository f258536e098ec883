//! One request in flight per token: the race, the release on every way out,
//! and the upstream cancellation when a client goes away.

mod common;

use std::time::Duration;

use common::{
    chat_body, chat_body_with, error_code, spawn_app, spawn_app_with, TestApp, ADMIN, USER1,
};
use futures_util::StreamExt;
use serde_json::json;

const SOON: Duration = Duration::from_secs(3);

#[tokio::test]
async fn of_twenty_simultaneous_requests_with_one_token_exactly_one_proceeds() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let body = chat_body_with(true, json!({"chunks": 5, "chunk_delay_ms": 100}));
    let requests = (0..20).map(|_| app.chat(&token, &body));
    let responses = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => {
                ok += 1;
                let text = response.text().await.expect("body");
                assert!(text.ends_with("data: [DONE]\n\n"));
            }
            429 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: serde_json::Value = response.json().await.expect("json");
                assert_eq!(body["error"]["type"], "rate_limit_error");
                assert_eq!(body["error"]["code"], "token_busy");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        app.fake.started(),
        1,
        "the refused requests never reached DeepSeek"
    );
}

#[tokio::test]
async fn the_slot_is_free_again_once_the_body_has_been_sent() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    for stream in [true, false, true, false] {
        let response = app.chat(&token, &chat_body(stream)).await;
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.expect("body");
        assert!(app.slots_free_within(SOON).await);
    }
}

#[tokio::test]
async fn different_tokens_never_wait_on_each_other() {
    let app = spawn_app().await;
    let (a, b) = (app.token(ADMIN).await, app.token(USER1).await);
    let slow = chat_body_with(true, json!({"chunks": 4, "chunk_delay_ms": 200}));
    let first = app.chat(&a, &slow).await;
    assert_eq!(first.status(), 200);
    // While `a` streams, `b` gets its own answer to the end.
    let second = app.chat(&b, &chat_body(false)).await;
    assert_eq!(second.status(), 200);
    let _ = second.bytes().await.expect("body");
    assert_eq!(app.state.store.in_flight(), 1, "a is still streaming");
    let _ = first.bytes().await.expect("body");
}

#[tokio::test]
async fn listing_models_does_not_take_the_slot() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let slow = chat_body_with(true, json!({"chunks": 3, "chunk_delay_ms": 200}));
    let stream = app.chat(&token, &slow).await;
    assert_eq!(stream.status(), 200);
    let models = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(models.status(), 200);
    let busy = app.chat(&token, &chat_body(false)).await;
    assert_eq!(busy.status(), 429);
    let _ = stream.bytes().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_stream_frees_the_slot_and_cancels_upstream() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let slow = chat_body_with(true, json!({"chunks": 50, "chunk_delay_ms": 100}));
    let response = app.chat(&token, &slow).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(!first.is_empty());
    drop(body);
    assert!(
        app.fake.wait_cancelled(1, SOON).await,
        "DeepSeek saw the connection close"
    );
    assert!(app.slots_free_within(SOON).await);
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
}

#[tokio::test]
async fn a_client_that_gives_up_before_the_first_byte_frees_the_slot_and_cancels_upstream() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let hang = chat_body_with(false, json!({"fail": "hang"}));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let result = impatient
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&hang)
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    assert!(
        app.fake.wait_cancelled(1, SOON).await,
        "DeepSeek saw the connection close"
    );
    assert!(app.slots_free_within(SOON).await);
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
}

#[tokio::test]
async fn failures_and_timeouts_free_the_slot() {
    let app = spawn_app_with(|s| s.timeout_seconds = 1).await;
    let token = app.token(ADMIN).await;
    let scripts = [
        json!({"fail": {"status": 500}}),
        json!({"fail": {"status": 429}}),
        json!({"fail": {"status": 400}}),
        json!({"fail": "hang"}),
        json!({"fail": {"reset_after": 1}}),
        json!({"fail": {"stall_after": 1}}),
        json!({"fail": "redirect"}),
    ];
    for script in scripts {
        for stream in [true, false] {
            // A non-stream body cut mid-way aborts the connection, which the
            // client may see as an error before it even gets the head.
            let sent = app
                .http
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&chat_body_with(stream, script.clone()))
                .send()
                .await;
            if let Ok(response) = sent {
                let _ = response.bytes().await;
            }
            assert!(
                app.slots_free_within(SOON).await,
                "after {script} (stream {stream})"
            );
        }
    }
    assert_eq!(app.chat(&token, &chat_body(false)).await.status(), 200);
}

#[tokio::test]
async fn a_refused_request_does_not_free_the_running_ones_slot() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let slow = chat_body_with(true, json!({"chunks": 4, "chunk_delay_ms": 150}));
    let running = app.chat(&token, &slow).await;
    assert_eq!(running.status(), 200);
    for _ in 0..3 {
        let refused = app.chat(&token, &chat_body(false)).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(error_code(refused).await, "token_busy");
    }
    assert_eq!(app.state.store.in_flight(), 1);
    let _ = running.bytes().await;
    assert!(app.slots_free_within(SOON).await);
}

#[tokio::test]
async fn many_clients_that_vanish_leave_no_slot_and_no_upstream_behind() {
    let app = spawn_app().await;
    let tokens = [app.token(ADMIN).await, app.token(USER1).await];
    let slow = chat_body_with(true, json!({"chunks": 40, "chunk_delay_ms": 50}));
    for round in 0..10 {
        let token = &tokens[round % 2];
        let response = app.chat(token, &slow).await;
        assert_eq!(response.status(), 200, "round {round}");
        let mut body = response.bytes_stream();
        let _ = body.next().await;
        drop(body);
        assert!(app.slots_free_within(SOON).await, "round {round}");
    }
    assert!(
        app.fake.wait_cancelled(10, SOON).await,
        "cancelled {}",
        app.fake.cancelled()
    );
}

/// A chat request with `token` whose headers and first body bytes are sent,
/// and the rest of its 100 kB body never.
async fn start_upload(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"model\":"
    );
    raw.write_all(head.as_bytes()).await.expect("write");
    raw
}

/// The slot is taken with the quotas once the body is read, but a token
/// whose request runs in this process is refused before: a second request
/// that never finishes its body still gets its 429 at once.
#[tokio::test]
async fn a_busy_token_is_refused_before_its_body_arrives() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let slow = chat_body_with(true, json!({"chunks": 4, "chunk_delay_ms": 250}));
    let running = app.chat(&token, &slow).await;
    assert_eq!(running.status(), 200);
    let mut raw = start_upload(&app, &token).await;
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut answer))
        .await
        .expect("an answer before the body is sent")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("token_busy"), "{answer}");
    let _ = running.bytes().await;
    assert!(app.slots_free_within(SOON).await);
}

/// A request still sending its body already holds its token's slot here:
/// a second one is refused at once, so one token cannot have many bodies
/// read in parallel; when the first client goes away, the slot is free.
#[tokio::test]
async fn a_token_whose_body_is_still_arriving_is_busy() {
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let raw = start_upload(&app, &token).await;
    let mut refused = false;
    for _ in 0..50 {
        let second = app.chat(&token, &chat_body(false)).await;
        if second.status() == 429 {
            assert_eq!(error_code(second).await, "token_busy");
            refused = true;
            break;
        }
        // The first request's headers may not have been read yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the second request is refused while the first uploads"
    );
    drop(raw);
    let mut answered = false;
    for _ in 0..50 {
        let again = app.chat(&token, &chat_body(false)).await;
        if again.status() == 200 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "the slot is free once the first client left");
}
