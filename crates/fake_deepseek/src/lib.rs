//! A faithful fake of DeepSeek's OpenAI-compatible API.
//!
//! It speaks DeepSeek's wire format (chunk shapes, `usage` on the final chunk,
//! `data: [DONE]`, `: keep-alive` comments, blank lines before a queued
//! non-stream answer, `reasoning_content`, DeepSeek's error bodies) and lets a
//! caller script its behaviour:
//!
//! * programmatically, with [`FakeDeepSeek::set_default`], or
//! * per request, with a `"_fake": {...}` object in the request body (see
//!   [`Behavior`]). The gateway forwards bodies untouched, so a test can steer
//!   the fake through the real gateway.
//!
//! Everything it receives is recorded ([`FakeDeepSeek::requests`]), and it
//! counts responses that were abandoned before they finished
//! ([`FakeDeepSeek::cancelled`]): that is how tests prove that the gateway
//! closes the upstream connection when its own client goes away.

mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
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
    /// Send this many content chunks, then reset the connection.
    ResetAfter(usize),
    /// Send this many content chunks, then go silent forever.
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

impl FakeDeepSeek {
    /// Binds 127.0.0.1:0 and serves in a background task.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    /// Binds `addr` and serves in a background task.
    pub async fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
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

    /// Requires `Authorization: Bearer <key>`; anything else gets DeepSeek's 401.
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
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/user/balance", get(balance))
        .route("/v1/chat/completions", any(completion))
        .route("/chat/completions", any(completion))
        .route("/beta/chat/completions", any(completion))
        .route("/beta/completions", any(completion))
        .route("/v1/completions", any(completion))
        .fallback(not_found)
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

fn check_key(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let expected = lock(&shared.api_key).clone()?;
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if got == expected {
        return None;
    }
    // DeepSeek echoes (part of) the presented key in its 401 text. The fake
    // echoes all of it, so a gateway that forwards this body is caught.
    let message = format!("Authentication Fails, Your api key: {got} is invalid");
    Some(wire::error_response(401, &message, "authentication_error"))
}

async fn models(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record(
        &shared,
        parts.method,
        parts.uri.path().to_owned(),
        parts.headers.clone(),
        Bytes::new(),
    );
    if let Some(denied) = check_key(&shared, &parts.headers) {
        return denied;
    }
    let body = serde_json::json!({
        "object": "list",
        "data": [
            {"id": "deepseek-chat", "object": "model", "owned_by": "deepseek"},
            {"id": "deepseek-reasoner", "object": "model", "owned_by": "deepseek"}
        ]
    });
    axum::Json(body).into_response()
}

async fn balance(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record(
        &shared,
        parts.method,
        parts.uri.path().to_owned(),
        parts.headers.clone(),
        Bytes::new(),
    );
    if let Some(denied) = check_key(&shared, &parts.headers) {
        return denied;
    }
    axum::Json(serde_json::json!({
        "is_available": true,
        "balance_infos": [{"currency": "CNY", "total_balance": "110.00",
                           "granted_balance": "10.00", "topped_up_balance": "100.00"}]
    }))
    .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

#[derive(Deserialize, Default)]
struct Incoming {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default, rename = "_fake")]
    fake: Option<Behavior>,
}

async fn completion(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let probe = Probe::new(shared.clone());
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return wire::error_response(400, "unreadable body", "invalid_request_error"),
    };
    let path = parts.uri.path().to_owned();
    record(
        &shared,
        parts.method.clone(),
        path.clone(),
        parts.headers.clone(),
        body.clone(),
    );
    if parts.method != Method::POST {
        probe.finish();
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
    }
    if let Some(denied) = check_key(&shared, &parts.headers) {
        probe.finish();
        return denied;
    }
    let incoming: Incoming = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            probe.finish();
            let msg = format!("Failed to deserialize the JSON body into the target type: {e}");
            return wire::error_response(422, &msg, "invalid_request_error");
        }
    };
    let behavior = incoming
        .fake
        .clone()
        .unwrap_or_else(|| lock(&shared.default).clone());

    if behavior.head_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behavior.head_delay_ms)).await;
    }
    match behavior.fail {
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Status(code)) => {
            probe.finish();
            return wire::status_failure(code);
        }
        Some(Failure::Redirect) => {
            probe.finish();
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", "http://127.0.0.1:9/elsewhere")
                .body(Body::empty())
                .unwrap_or_default();
        }
        _ => {}
    }

    let flavor = if path.ends_with("/completions") && !path.ends_with("chat/completions") {
        Flavor::Fim
    } else if incoming.model.as_deref() == Some("deepseek-reasoner") {
        Flavor::Reasoner
    } else {
        Flavor::Chat
    };
    let reply = behavior.reply.clone().unwrap_or_else(|| {
        let said = incoming
            .messages
            .last()
            .and_then(|m| m.get("content"))
            .and_then(|c| c.as_str())
            .or(incoming.prompt.as_deref())
            .unwrap_or("");
        wire::canned_reply(said)
    });
    let plan = ReplyPlan {
        flavor,
        model: incoming.model.unwrap_or_else(|| "deepseek-chat".into()),
        reply,
        behavior,
    };
    if incoming.stream {
        wire::stream_response(plan, probe)
    } else {
        wire::json_response(plan, probe)
    }
}
