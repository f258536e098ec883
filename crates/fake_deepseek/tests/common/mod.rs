//! Helpers shared by the format tests: POST over real TCP, read SSE.

#![allow(dead_code)] // each test file uses its own subset

use fake_deepseek::{Behavior, FakeDeepSeek};
use futures_util::StreamExt;
use serde_json::Value;

/// A fake with the default behaviour, and its `http://ADDR` root.
pub async fn fake() -> (FakeDeepSeek, String) {
    let fake = FakeDeepSeek::start().await.expect("fake starts");
    let root = format!("http://{}", fake.addr());
    (fake, root)
}

/// A fake whose default behaviour is `behavior`.
pub async fn fake_with(behavior: Behavior) -> (FakeDeepSeek, String) {
    let (fake, root) = fake().await;
    fake.set_default(behavior);
    (fake, root)
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body as far as it came.
    pub text: String,
    /// Whether the body broke off with an error.
    pub broken: bool,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// POSTs `body` to `url` with extra `headers`; reads the whole body.
pub async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
    post_raw(url, headers, body.to_string()).await
}

pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: String) -> Answer {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("fake answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut stream = response.bytes_stream();
    let (mut raw, mut broken) = (Vec::new(), false);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => raw.extend_from_slice(&bytes),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    Answer {
        status,
        headers,
        text: String::from_utf8(raw).expect("utf-8"),
        broken,
    }
}

/// One server-sent event: its `event:` name (if any) and its data.
#[derive(Debug)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// The events of an SSE body (comments skipped).
pub fn sse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut name, mut data) = (None, None);
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                }
            }
            data.map(|data| Event { name, data })
        })
        .collect()
}
