//! A faithful fake of DeepSeek's API.
//!
//! It speaks DeepSeek's wire formats and lets a caller script its behaviour:
//!
//! * chat completions and FIM (`/chat/completions`, `/beta/completions`):
//!   chunk shapes, `usage` on the final chunk, `data: [DONE]`, `: keep-alive`
//!   comments, blank lines before a queued non-stream answer,
//!   `reasoning_content` when thinking is on (the default), DeepSeek's error
//!   bodies (`src/chat.rs`, `src/wire.rs`);
//! * the Responses API (`/responses`, `src/responses.rs`);
//! * Anthropic Messages (`/anthropic/v1/messages`, `src/anthropic.rs`);
//! * the web tools (`/v1/tools/search`, `/v1/tools/fetch`, `src/tools.rs`).
//!
//! All of them read, record, authenticate and validate requests the same way
//! (`src/request.rs`) and send their bodies through one frame sender that acts
//! out the scripted behaviour (`wire::streamed`).
//!
//! Models: `deepseek-flash`, `deepseek-v4-pro` and the legacy
//! `deepseek-v4-flash` (served by flash). `deepseek-chat` and
//! `deepseek-reasoner` are retired: naming them is a 400. A body without a
//! `model` is served by flash.
//!
//! Thinking is on unless the body says `"thinking": {"type": "disabled"}`
//! (FIM never thinks). An end-user id (`user_id`, or `metadata.user_id` on
//! the Anthropic route) must be at most 512 bytes of `[A-Za-z0-9_-]`.
//!
//! The behaviour is scripted:
//!
//! * programmatically, with [`FakeDeepSeek::set_default`], or
//! * per request, with a `"_fake": {...}` object in the request body (see
//!   [`Behavior`]). The gateway forwards bodies untouched, so a test can steer
//!   the fake through the real gateway.
//!
//! Everything it receives is recorded ([`FakeDeepSeek::requests`],
//! [`FakeDeepSeek::last_body`]), and it
//! counts responses that were abandoned before they finished
//! ([`FakeDeepSeek::cancelled`]): that is how tests prove that the gateway
//! closes the upstream connection when its own client goes away.

mod anthropic;
mod chat;
mod request;
mod responses;
mod tools;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;

pub use wire::{Flavor, ReplyPlan};

/// How the fake answers one request. Every field has a default, so a body may
/// carry `"_fake": {"chunks": 3}` and nothing else.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Content chunks in a streamed answer (words of the reply are spread over them).
    pub chunks: usize,
    /// Pause before each content chunk of a stream, in milliseconds.
    pub chunk_delay_ms: u64,
    /// Pause before the response head is sent, in milliseconds.
    pub head_delay_ms: u64,
    /// Keep-alives sent before the answer: `: keep-alive` comments in a
    /// stream, blank lines before a non-stream JSON body.
    pub keepalives: usize,
    /// Pause between keep-alives, in milliseconds.
    pub keepalive_ms: u64,
    /// A failure to act out instead of (or in the middle of) a normal answer.
    pub fail: Option<Failure>,
    /// The text of the answer. Defaults to a short canned reply.
    pub reply: Option<String>,
    /// Starts the text of each streamed content chunk with the moment the
    /// chunk is sent, `t=<Unix time in µs, 16 digits> `, so a client can
    /// measure one-way latency per chunk (the benchmark does).
    pub stamp: bool,
    /// Prompt tokens served from the cache, reported in `usage` (capped at
    /// the prompt size).
    pub cache_hit_tokens: u64,
    /// Prompt tokens reported in `usage`; 11 when unset.
    pub prompt_tokens: Option<u64>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            chunks: 4,
            chunk_delay_ms: 0,
            head_delay_ms: 0,
            keepalives: 0,
            keepalive_ms: 0,
            fail: None,
            reply: None,
            stamp: false,
            cache_hit_tokens: 0,
            prompt_tokens: None,
        }
    }
}

/// Failures the fake can act out.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Answer with this HTTP status and DeepSeek's error body for it.
    Status(u16),
    /// Never send a response head.
    Hang,
    /// Send the head (200), then never send a body byte.
    HangBody,
    /// Send this many content chunks, then reset the connection. Chat and
    /// non-stream answers count every frame (a non-stream body is two
    /// frames); Responses and Anthropic streams count only the delta events
    /// (reasoning and text), after the events that open the answer.
    ResetAfter(usize),
    /// Send this many content chunks (counted as for `ResetAfter`), then go
    /// silent forever.
    StallAfter(usize),
    /// Answer 307 to another location.
    Redirect,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Default)]
struct Shared {
    default: Mutex<Behavior>,
    requests: Mutex<Vec<Recorded>>,
    responses: Mutex<Vec<Bytes>>,
    api_key: Mutex<Option<String>>,
    started: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    connections: AtomicU64,
}

/// A running fake DeepSeek on 127.0.0.1 and an ephemeral port.
#[derive(Clone)]
pub struct FakeDeepSeek {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Binds `addr` with a listen backlog of 4,096 (tokio's default is 128),
/// as a real API's front would have: the benchmark starts thousands of
/// streams at once through the gateway, whose connections here must not be
/// the ones dropped.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl FakeDeepSeek {
    /// Binds 127.0.0.1:0 and serves in a background task.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Binds `addr` and serves in a background task.
    pub async fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = listen(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = router(shared.clone());
        let counted = shared.clone();
        tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
                counted.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `base_url` to configure a client with, DeepSeek style (`.../v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requires `Authorization: Bearer <key>` (or, on the Anthropic route,
    /// `x-api-key: <key>`); anything else gets DeepSeek's 401.
    pub fn require_key(&self, key: &str) {
        *lock(&self.shared.api_key) = Some(key.to_owned());
    }

    /// The behaviour for requests whose body carries no `_fake` object.
    pub fn set_default(&self, behavior: Behavior) {
        *lock(&self.shared.default) = behavior;
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The body of the newest POST, parsed as JSON (`None` if there was no
    /// POST yet or its body is not JSON).
    pub fn last_body(&self) -> Option<Value> {
        lock(&self.shared.requests)
            .iter()
            .rev()
            .find(|r| r.method == Method::POST)
            .and_then(Recorded::json)
    }

    /// The end-user id the newest POST carried: top-level `user_id` (chat,
    /// Responses) or `metadata.user_id` (Anthropic).
    pub fn last_user_id(&self) -> Option<String> {
        let body = self.last_body()?;
        let id = body
            .get("user_id")
            .or_else(|| body.get("metadata").and_then(|m| m.get("user_id")))?;
        id.as_str().map(str::to_owned)
    }

    /// The `thinking` object the newest POST carried, as sent.
    pub fn last_thinking(&self) -> Option<Value> {
        self.last_body()?.get("thinking").cloned()
    }

    /// The full bodies of the responses sent to the end, in completion order:
    /// the exact bytes a faithful proxy must deliver.
    pub fn responses(&self) -> Vec<Bytes> {
        lock(&self.shared.responses).clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Responses started (handler entered).
    pub fn started(&self) -> u64 {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// Responses whose body was sent to the end.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Responses abandoned before they finished: the peer closed the
    /// connection (or the fake reset it on purpose).
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` responses were cancelled, for at most `within`.
    pub async fn wait_cancelled(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.cancelled() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/models", get(chat::models))
        .route("/models", get(chat::models))
        .route("/user/balance", get(chat::balance))
        .route("/v1/chat/completions", any(chat::completion))
        .route("/chat/completions", any(chat::completion))
        .route("/beta/chat/completions", any(chat::completion))
        .route("/beta/completions", any(chat::completion))
        .route("/v1/completions", any(chat::completion))
        .route("/responses", any(responses::handle))
        .route("/v1/responses", any(responses::handle))
        .route("/anthropic/v1/messages", any(anthropic::messages))
        .route(
            "/anthropic/v1/messages/count_tokens",
            any(anthropic::count_tokens),
        )
        .route("/v1/tools/search", any(tools::search))
        .route("/v1/tools/fetch", any(tools::fetch))
        .fallback(chat::not_found)
        .with_state(shared)
}

/// Marks a response as cancelled if it is dropped before [`Probe::finish`].
pub(crate) struct Probe {
    shared: Arc<Shared>,
    sent: Vec<u8>,
    done: bool,
}

impl Probe {
    fn new(shared: Arc<Shared>) -> Self {
        shared.started.fetch_add(1, Ordering::SeqCst);
        Self {
            shared,
            sent: Vec::new(),
            done: false,
        }
    }

    /// Notes bytes as sent, for [`FakeDeepSeek::responses`].
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }

    pub(crate) fn finish(mut self) {
        self.done = true;
        let sent = Bytes::from(std::mem::take(&mut self.sent));
        let mut responses = lock(&self.shared.responses);
        keep_newest(&mut responses);
        responses.push(sent);
        drop(responses);
        self.shared.completed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Records are kept for tests; a long-running `--demo` keeps only the newest.
const MAX_RECORDS: usize = 10_000;

fn keep_newest<T>(list: &mut Vec<T>) {
    if list.len() >= MAX_RECORDS {
        list.drain(..MAX_RECORDS / 2);
    }
}

fn record(shared: &Shared, method: Method, path: String, headers: HeaderMap, body: Bytes) {
    let mut requests = lock(&shared.requests);
    keep_newest(&mut requests);
    requests.push(Recorded {
        method,
        path,
        headers,
        body,
    });
}
