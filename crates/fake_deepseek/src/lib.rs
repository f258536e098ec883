//! A faithful fake of DeepSeek's API.
//!
//! It speaks DeepSeek's wire formats and lets a caller script its behaviour:
//!
//! * chat completions and FIM (`/chat/completions`, `/beta/completions`):
//!   chunk shapes, `usage` on the final chunk, `data: [DONE]`, `: keep-alive`
//!   comments, blank lines before a queued non-stream answer,
//!   `reasoning_content` when thinking is on (the default), DeepSeek's error
//!   bodies (`src/wire.rs`);
//! * the Responses API (`/responses`, `src/responses.rs`);
//! * Anthropic Messages (`/anthropic/v1/messages`, `src/anthropic.rs`);
//! * the web tools (`/v1/tools/search`, `/v1/tools/fetch`, `src/tools.rs`).
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
mod responses;
mod tools;
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
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/user/balance", get(balance))
        .route("/v1/chat/completions", any(completion))
        .route("/chat/completions", any(completion))
        .route("/beta/chat/completions", any(completion))
        .route("/beta/completions", any(completion))
        .route("/v1/completions", any(completion))
        .route("/responses", any(responses::handle))
        .route("/v1/responses", any(responses::handle))
        .route("/anthropic/v1/messages", any(anthropic::messages))
        .route(
            "/anthropic/v1/messages/count_tokens",
            any(anthropic::count_tokens),
        )
        .route("/v1/tools/search", any(tools::search))
        .route("/v1/tools/fetch", any(tools::fetch))
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

fn check_key(shared: &Shared, headers: &HeaderMap, dialect: Dialect) -> Option<Response> {
    let expected = lock(&shared.api_key).clone()?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = header("x-api-key").filter(|_| dialect == Dialect::Anthropic);
    if bearer == Some(expected.as_str()) || x_api_key == Some(expected.as_str()) {
        return None;
    }
    let got = x_api_key.or(bearer).unwrap_or("");
    // DeepSeek echoes (part of) the presented key in its 401 text. The fake
    // echoes all of it, so a gateway that forwards this body is caught.
    let message = format!("Authentication Fails, Your api key: {got} is invalid");
    Some(dialect.error(401, &message))
}

/// The error-body shape of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// DeepSeek's own: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl Dialect {
    /// An error answer with `message`, its type chosen from the status.
    pub(crate) fn error(self, status: u16, message: &str) -> Response {
        match self {
            Dialect::OpenAi => {
                let kind = match status {
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    500.. => "server_error",
                    _ => "invalid_request_error",
                };
                wire::error_response(status, message, kind)
            }
            Dialect::Anthropic => anthropic::error_response(status, message),
        }
    }

    /// The answer for [`Failure::Status`].
    fn failure(self, status: u16) -> Response {
        match self {
            Dialect::OpenAi => wire::status_failure(status),
            Dialect::Anthropic => anthropic::status_failure(status),
        }
    }
}

/// One POST as received: recorded, its key checked, its probe running.
pub(crate) struct Call {
    pub(crate) probe: Probe,
    pub(crate) path: String,
    pub(crate) body: Bytes,
    pub(crate) dialect: Dialect,
}

impl Call {
    /// Ends the call with an immediate answer.
    pub(crate) fn answer(self, response: Response) -> Response {
        self.probe.finish();
        response
    }

    /// Ends the call with a 400 in the route's shape.
    pub(crate) fn reject(self, message: &str) -> Response {
        let response = self.dialect.error(400, message);
        self.answer(response)
    }

    /// The body as a JSON object, or why not.
    pub(crate) fn json_object(&self) -> Result<serde_json::Map<String, Value>, String> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("Invalid Format: the body must be a JSON object".to_owned()),
            Err(e) => Err(format!("Invalid Format: {e}")),
        }
    }

    /// The behaviour for this call: the body's `_fake`, else the default.
    pub(crate) fn behavior(
        &self,
        shared: &Shared,
        body: &serde_json::Map<String, Value>,
    ) -> Result<Behavior, String> {
        match body.get("_fake") {
            None => Ok(lock(&shared.default).clone()),
            Some(fake) => Behavior::deserialize(fake).map_err(|e| format!("Invalid _fake: {e}")),
        }
    }

    /// Acts out the failures that come before a response head (pause,
    /// hang, status, redirect). `Ok` means: go on and answer.
    pub(crate) async fn before_head(self, behavior: &Behavior) -> Result<Self, Response> {
        if behavior.head_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(behavior.head_delay_ms)).await;
        }
        match behavior.fail {
            Some(Failure::Hang) => std::future::pending().await,
            Some(Failure::Status(code)) => {
                let response = self.dialect.failure(code);
                Err(self.answer(response))
            }
            Some(Failure::Redirect) => Err(self.answer(
                Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", "http://127.0.0.1:9/elsewhere")
                    .body(Body::empty())
                    .unwrap_or_default(),
            )),
            _ => Ok(self),
        }
    }
}

/// Reads, records and authenticates a request; only POST goes on.
pub(crate) async fn receive(
    shared: &Arc<Shared>,
    req: Request,
    dialect: Dialect,
) -> Result<Call, Response> {
    let probe = Probe::new(shared.clone());
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return Err(dialect.error(400, "unreadable body")),
    };
    let path = parts.uri.path().to_owned();
    record(
        shared,
        parts.method.clone(),
        path.clone(),
        parts.headers.clone(),
        body.clone(),
    );
    if parts.method != Method::POST {
        probe.finish();
        return Err((StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response());
    }
    if let Some(denied) = check_key(shared, &parts.headers, dialect) {
        probe.finish();
        return Err(denied);
    }
    Ok(Call {
        probe,
        path,
        body,
        dialect,
    })
}

/// The model that serves `requested` on DeepSeek's own routes; a missing
/// name is served by flash.
pub(crate) fn served_model(requested: Option<&str>) -> Result<&'static str, String> {
    match requested {
        None | Some("deepseek-flash" | "deepseek-v4-flash") => Ok("deepseek-flash"),
        Some("deepseek-v4-pro") => Ok("deepseek-v4-pro"),
        Some(_) => Err("Model Not Exist".to_owned()),
    }
}

/// A body's `model`, which must be a string when present.
pub(crate) fn model_field(body: &serde_json::Map<String, Value>) -> Result<Option<&str>, String> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) => Ok(Some(m)),
        Some(_) => Err("Invalid Format: model must be a string".to_owned()),
    }
}

/// Whether thinking is on: `"thinking": {"type": "enabled" | "disabled"}`,
/// on when absent.
pub(crate) fn thinking_on(thinking: Option<&Value>) -> Result<bool, String> {
    let Some(thinking) = thinking.filter(|t| !t.is_null()) else {
        return Ok(true);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        _ => Err(r#"Invalid thinking: expected {"type": "enabled" | "disabled"}"#.to_owned()),
    }
}

/// Checks an end-user id: at most 512 bytes of `[A-Za-z0-9_-]`.
pub(crate) fn check_user_id(user_id: Option<&Value>) -> Result<(), String> {
    let Some(user_id) = user_id.filter(|u| !u.is_null()) else {
        return Ok(());
    };
    let ok = user_id.as_str().is_some_and(|u| {
        u.len() <= 512
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err("Invalid user_id: at most 512 characters of [A-Za-z0-9_-]".to_owned())
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
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
    if let Some(denied) = check_key(&shared, &parts.headers, Dialect::OpenAi) {
        return denied;
    }
    let body = serde_json::json!({
        "object": "list",
        "data": [
            {"id": "deepseek-flash", "object": "model", "owned_by": "deepseek"},
            {"id": "deepseek-v4-pro", "object": "model", "owned_by": "deepseek"}
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
    if let Some(denied) = check_key(&shared, &parts.headers, Dialect::OpenAi) {
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
    messages: Vec<Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default)]
    user_id: Option<Value>,
    #[serde(default, rename = "_fake")]
    fake: Option<Behavior>,
}

async fn completion(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let call = match receive(&shared, req, Dialect::OpenAi).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let incoming: Incoming = match serde_json::from_slice(&call.body) {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("Failed to deserialize the JSON body into the target type: {e}");
            let response = wire::error_response(422, &msg, "invalid_request_error");
            return call.answer(response);
        }
    };
    let fim = call.path.ends_with("/completions") && !call.path.ends_with("chat/completions");
    let checked = served_model(incoming.model.as_deref()).and_then(|model| {
        check_user_id(incoming.user_id.as_ref())?;
        // FIM has no thinking.
        let thinking = !fim && thinking_on(incoming.thinking.as_ref())?;
        Ok((model, thinking))
    });
    let (model, thinking) = match checked {
        Ok(c) => c,
        Err(message) => return call.reject(&message),
    };
    let behavior = incoming
        .fake
        .clone()
        .unwrap_or_else(|| lock(&shared.default).clone());
    let call = match call.before_head(&behavior).await {
        Ok(call) => call,
        Err(response) => return response,
    };

    let flavor = if fim {
        Flavor::Fim
    } else if thinking {
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
        model: model.to_owned(),
        reply,
        behavior,
    };
    if incoming.stream {
        wire::stream_response(plan, call.probe)
    } else {
        wire::json_response(plan, call.probe)
    }
}
