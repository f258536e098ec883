//! The gateway's own connections to DeepSeek (src/proxy/pool.rs): reused
//! across requests, replaced when DeepSeek closed them while idle, never
//! reused after a client left mid-answer, and over TLS verified against the
//! configured roots.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn one_connection_carries_request_after_request() {
    let app = spawn_app().await;
    let token = app.token(USER1).await;
    for i in 0..20 {
        let response = app.chat(&token, &chat_body(i % 4 == 0)).await;
        assert_eq!(response.status(), 200, "request {i}");
        let _ = response.bytes().await.expect("body");
    }
    assert_eq!(app.fake.started(), 20);
    assert_eq!(app.fake.connections(), 1, "every request reused the first");
}

#[tokio::test]
async fn a_connection_left_mid_answer_is_closed_not_reused() {
    let app = spawn_app().await;
    let token = app.token(USER1).await;
    let slow = chat_body_with(true, json!({"chunks": 40, "chunk_delay_ms": 50}));
    let response = app.chat(&token, &slow).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let _ = body.next().await;
    drop(body);
    assert!(app.slots_free_within(SOON).await);
    assert!(
        app.fake.wait_cancelled(1, SOON).await,
        "DeepSeek saw the client leave"
    );

    let response = app.chat(&token, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await.expect("body");
    assert_eq!(
        app.fake.connections(),
        2,
        "the abandoned connection was not reused"
    );
}

/// A hand-written upstream on 127.0.0.1: `serve` gets each accepted
/// connection. Returns the `base_url` and the count of connections.
async fn raw_upstream<F, Fut>(serve: F) -> (String, Arc<AtomicU64>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (format!("http://{addr}/v1"), accepted)
}

/// Reads into `seen` until it holds a whole request head; returns where the
/// body starts, or `None` if the peer left first.
async fn read_head(tcp: &mut TcpStream, seen: &mut Vec<u8>) -> Option<usize> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        match tcp.read(&mut buf).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// A 200 with a JSON body and its Content-Length (no `Connection` header).
fn json_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An upstream that answers one request per connection and closes it
/// `close_after` later, without `Connection: close`, as a server whose idle
/// timeout is shorter than the gateway's does.
async fn one_shot_upstream(close_after: Duration) -> (String, Arc<AtomicU64>) {
    raw_upstream(move |mut tcp| async move {
        let mut seen = Vec::new();
        let Some(body_start) = read_head(&mut tcp, &mut seen).await else {
            return;
        };
        // The body, by its Content-Length.
        let head = String::from_utf8_lossy(&seen[..body_start]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut buf = [0u8; 4096];
        while seen.len() < body_start + length {
            match tcp.read(&mut buf).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let body = r#"{"id":"one-shot","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let _ = tcp.write_all(json_answer(body).as_bytes()).await;
        if !close_after.is_zero() {
            tokio::time::sleep(close_after).await;
        }
        let _ = tcp.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_connection_deepseek_closed_while_idle_is_replaced_not_failed() {
    let (base_url, accepted) = one_shot_upstream(Duration::from_millis(20)).await;
    let app = spawn_app_with(|s| s.base_url = Some(base_url)).await;
    let token = app.token(USER1).await;
    for i in 0..5 {
        let response = app.chat(&token, &chat_body(false)).await;
        assert_eq!(response.status(), 200, "request {i}");
        let body = response.text().await.expect("body");
        assert!(body.contains("one-shot"), "{body}");
        // The close arrives while the connection waits in the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_connection_closed_with_its_answer_is_not_reused() {
    // The close follows the answer at once, so it arrives while the answer
    // is read (or just after): such a connection must not be handed to the
    // next request, or must be replaced before anything is sent on it.
    let (base_url, accepted) = one_shot_upstream(Duration::ZERO).await;
    let app = spawn_app_with(|s| s.base_url = Some(base_url)).await;
    let token = app.token(USER1).await;
    for i in 0..30 {
        let response = app.chat(&token, &chat_body(false)).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn deepseek_over_tls_is_verified_against_ca_file_and_relayed_byte_for_byte() {
    let app = spawn_app_with(|s| {
        s.upstream_tls = true;
        s.deepseek_extra = format!("ca_file = {:?}", tls::ca_file());
    })
    .await;
    let token = app.token(USER1).await;

    let plain = app.chat(&token, &chat_body(false)).await;
    assert_eq!(plain.status(), 200);
    let plain = plain.bytes().await.expect("body");
    let streamed = app.chat(&token, &chat_body(true)).await;
    assert_eq!(streamed.status(), 200);
    let streamed = streamed.bytes().await.expect("body");

    let sent = app.fake.responses();
    assert_eq!(sent.len(), 2);
    assert_eq!(plain, sent[0]);
    assert_eq!(streamed, sent[1]);
    let seen = app.fake.requests();
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", app.api_key).as_str()
    );
    assert_eq!(app.fake.connections(), 1, "the TLS connection was reused");
}

#[tokio::test]
async fn an_upstream_certificate_nobody_trusts_is_a_502_and_nothing_is_sent() {
    let app = spawn_app_with(|s| s.upstream_tls = true).await;
    let token = app.token(USER1).await;
    let response = app.chat(&token, &chat_body(false)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_unreachable");
    assert_eq!(
        app.fake.started(),
        0,
        "no request crossed an unverified TLS"
    );
    assert!(app.slots_free_within(SOON).await);
}

/// An upstream that answers as soon as it has the head, then never reads
/// the body and keeps the connection open, as a server rejecting a request
/// early (without `Connection: close`) may.
async fn early_answer_upstream() -> (String, Arc<AtomicU64>) {
    raw_upstream(|mut tcp| async move {
        if read_head(&mut tcp, &mut Vec::new()).await.is_none() {
            return;
        }
        let body = r#"{"id":"early","object":"chat.completion","choices":[]}"#;
        let _ = tcp.write_all(json_answer(body).as_bytes()).await;
        // Hold the connection without reading another byte.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
}

#[tokio::test]
async fn a_connection_whose_request_was_not_fully_sent_is_not_reused() {
    let (base_url, accepted) = early_answer_upstream().await;
    let app = spawn_app_with(|s| {
        s.base_url = Some(base_url);
        s.max_body_bytes = 64 * 1024 * 1024;
    })
    .await;
    let token = app.token(USER1).await;
    // Far more than the loopback socket buffers hold, so most of it is
    // still unsent when the answer has come.
    let mut big = chat_body(false);
    big["messages"][0]["content"] = json!("x".repeat(32 * 1024 * 1024));
    let response = app.chat(&token, &big).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("body").contains("early"));

    let started = std::time::Instant::now();
    let response = app.chat(&token, &chat_body(false)).await;
    assert_eq!(response.status(), 200, "not stuck behind the unsent body");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
