//! The `stamp` directive: each streamed content chunk carries its send time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_deepseek::FakeDeepSeek;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Streams one answer; returns the raw body and, per content event, its
/// text and the time the chunk that completed it arrived.
async fn stream(fake: &FakeDeepSeek, directives: Value) -> (Vec<u8>, Vec<(String, u64)>) {
    let body = json!({"model": "deepseek-flash", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}], "_fake": directives});
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("fake answers");
    assert!(response.status().is_success());
    let mut chunks = response.bytes_stream();
    let (mut raw, mut contents, mut line_start) = (Vec::new(), Vec::new(), 0);
    while let Some(chunk) = chunks.next().await {
        let received = now_micros();
        raw.extend_from_slice(&chunk.expect("chunk"));
        while let Some(end) = raw[line_start..].iter().position(|&b| b == b'\n') {
            let line = &raw[line_start..line_start + end];
            line_start += end + 1;
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<Value>(data) else {
                continue; // [DONE]
            };
            let content = &event["choices"][0]["delta"]["content"];
            if let Some(text) = content.as_str().filter(|t| !t.is_empty()) {
                contents.push((text.to_owned(), received));
            }
        }
    }
    (raw, contents)
}

#[tokio::test]
async fn stamped_chunks_carry_the_time_each_was_sent() {
    let fake = FakeDeepSeek::start().await.expect("fake starts");
    let before = now_micros();
    let directives = json!({"chunks": 3, "chunk_delay_ms": 30, "reply": "a b c", "stamp": true});
    let (raw, contents) = stream(&fake, directives).await;

    assert_eq!(contents.len(), 3);
    let mut previous = before;
    for ((text, received), word) in contents.iter().zip(["a ", "b ", "c"]) {
        let (stamp, rest) = text
            .strip_prefix("t=")
            .and_then(|t| t.split_once(' '))
            .expect("text starts with t=<µs> ");
        assert_eq!(stamp.len(), 16, "{text:?}");
        assert_eq!(rest, word);
        let stamp: u64 = stamp.parse().expect("digits");
        assert!(stamp <= *received, "sent {stamp} after received {received}");
        // Taken when the chunk goes out, after its pause, not when built.
        let paced = Duration::from_millis(25).as_micros() as u64;
        assert!(
            stamp >= previous + paced,
            "{stamp} too soon after {previous}"
        );
        previous = stamp;
    }
    // The recorded response is what went out, stamps included.
    assert_eq!(fake.responses().last().map(|b| b.to_vec()), Some(raw));
}

#[tokio::test]
async fn without_the_directive_chunks_carry_only_the_reply() {
    let fake = FakeDeepSeek::start().await.expect("fake starts");
    let (raw, contents) = stream(&fake, json!({"chunks": 3, "reply": "a b c"})).await;

    let texts: Vec<&str> = contents.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["a ", "b ", "c"]);
    assert!(!String::from_utf8_lossy(&raw).contains("t="));
}
