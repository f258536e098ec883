//! Test harness: the real app on 127.0.0.1:0 in front of a fake DeepSeek,
//! both over real TCP. Each test gets its own pair, its own random key and
//! JWT secret, so tests run in parallel without sharing anything.
#![allow(dead_code)]

pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use deepseek_proxy::config::Config;
use deepseek_proxy::state::AppState;
use deepseek_proxy::App;
use fake_deepseek::FakeDeepSeek;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const ADMIN: (&str, &str) = ("admin", "admin123");
pub const USER1: (&str, &str) = ("user1", "pass123");

/// Knobs a test may turn; everything else is the shipped default.
pub struct Settings {
    pub token_ttl_seconds: u64,
    pub login_cache_seconds: u64,
    pub timeout_seconds: u64,
    pub max_request_seconds: u64,
    pub max_body_bytes: u64,
    pub shutdown_grace_seconds: u64,
    /// Overrides the fake's URL (e.g. a closed port).
    pub base_url: Option<String>,
    /// Extra lines for `[server]`, e.g. `max_connections = 2`.
    pub server_extra: String,
    /// Extra lines for `[auth]`, e.g. `login_max_failures_per_minute = 3`.
    pub auth_extra: String,
    /// Replaces the two default users (admin/admin123, user1/pass123).
    pub users: Option<String>,
    /// A fixed JWT secret (default: random per app), to share tokens between apps.
    pub jwt_secret: Option<String>,
    /// Lines for `[state]`, e.g. `backend = "redis"`.
    pub state: String,
    /// Lines for `[storage]` (default: an in-memory SQLite ledger).
    pub storage: String,
    /// Lines for `[quotas]` (default: none, so no limits).
    pub quotas: String,
    /// Extra lines for `[deepseek]`, e.g. `ca_file = "..."`.
    pub deepseek_extra: String,
    /// Puts a TLS front (tests/fixtures/tls) before the fake and points
    /// `base_url` at it: `https://127.0.0.1:<port>/v1`.
    pub upstream_tls: bool,
}

/// An admin (`role = "admin"`) and `user1`, with `user1_extra` (e.g. quota
/// keys) added to user1's table.
pub fn admin_and_user(user1_extra: &str) -> String {
    format!(
        r#"
[[auth.users]]
username = "admin"
password = "admin123"
role = "admin"

[[auth.users]]
username = "user1"
password = "pass123"
{user1_extra}
"#
    )
}

/// Store settings for tests that drive a `Store` directly.
pub fn store_settings() -> deepseek_proxy::store::StoreSettings {
    deepseek_proxy::store::StoreSettings {
        login_cache_secs: 60,
        throttle: deepseek_proxy::auth::throttle::Limits::default(),
    }
}

/// What a completion request does around reading its body: claims one of
/// `slots` here ([`Store::claim`]; none if `slots` is empty), then enters
/// ([`Store::enter`]).
///
/// [`Store::claim`]: deepseek_proxy::store::Store::claim
/// [`Store::enter`]: deepseek_proxy::store::Store::enter
pub async fn claim_and_enter(
    store: &dyn deepseek_proxy::store::Store,
    token_id: u128,
    slots: &[u128],
    ask: Option<deepseek_proxy::store::Ask<'_>>,
) -> deepseek_proxy::store::Entry {
    use deepseek_proxy::store::{Claimed, Entry};
    let claim = match slots {
        [] => None,
        _ => match store.claim(token_id, slots.to_vec()) {
            Claimed::Yes(claim) => Some(claim),
            Claimed::Busy => return Entry::Busy,
            Claimed::Revoked => return Entry::Revoked,
        },
    };
    store
        .enter(token_id, claim, ask)
        .await
        .expect("the store answers")
}

/// A two-worker runtime for proptests that block on async code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The default users, as TOML.
pub const DEFAULT_USERS: &str = r#"
[[auth.users]]
username = "admin"
password = "admin123"

[[auth.users]]
username = "user1"
password = "pass123"
"#;

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_ttl_seconds: 3600,
            login_cache_seconds: 60,
            timeout_seconds: 5,
            max_request_seconds: 60,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_seconds: 5,
            base_url: None,
            server_extra: String::new(),
            auth_extra: String::new(),
            users: None,
            jwt_secret: None,
            state: String::new(),
            storage: "sqlite_path = \":memory:\"".into(),
            quotas: String::new(),
            deepseek_extra: String::new(),
            upstream_tls: false,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_addr` is configured.
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub fake: FakeDeepSeek,
    pub api_key: String,
    pub jwt_secret: String,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The config text for `settings`, pointed at `base_url`.
pub fn config_toml(s: &Settings, base_url: &str, api_key: &str, jwt_secret: &str) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
max_body_bytes = {max_body}
shutdown_grace_seconds = {grace}
{server_extra}

[auth]
jwt_secret = "{jwt_secret}"
token_ttl_seconds = {ttl}
login_cache_seconds = {cache}
{auth_extra}
{users}

[deepseek]
api_key = "{api_key}"
base_url = "{base_url}"
timeout_seconds = {timeout}
max_request_seconds = {max_request}
{deepseek_extra}

[state]
{state}

[storage]
{storage}

[quotas]
{quotas}
"#,
        max_body = s.max_body_bytes,
        grace = s.shutdown_grace_seconds,
        ttl = s.token_ttl_seconds,
        cache = s.login_cache_seconds,
        timeout = s.timeout_seconds,
        max_request = s.max_request_seconds,
        server_extra = s.server_extra,
        auth_extra = s.auth_extra,
        users = s.users.as_deref().unwrap_or(DEFAULT_USERS),
        state = s.state,
        storage = s.storage,
        quotas = s.quotas,
        deepseek_extra = s.deepseek_extra,
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::default();
    tweak(&mut settings);
    let fake = FakeDeepSeek::start().await.expect("fake upstream starts");
    let api_key = format!("sk-test-{}", random_hex());
    fake.require_key(&api_key);
    let jwt_secret = settings
        .jwt_secret
        .clone()
        .unwrap_or_else(|| format!("{}{}", random_hex(), random_hex()));
    let mut base_url = settings.base_url.clone().unwrap_or_else(|| fake.base_url());
    if settings.upstream_tls {
        let front = tls::front(fake.addr()).await;
        base_url = format!("https://{front}/v1");
    }
    let text = config_toml(&settings, &base_url, &api_key, &jwt_secret);
    let no_env = |_: &str| None;
    let config = Config::from_toml(&text, &no_env).expect("test config is valid");
    let app = App::build(config).await.expect("app builds");
    let addr = app.local_addr().expect("bound");
    let metrics_addr = app.metrics_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        fake,
        api_key,
        jwt_secret,
        state,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        server,
    }
}

pub fn chat_body(stream: bool) -> Value {
    json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "你好"}],
        "stream": stream
    })
}

/// A chat body that also scripts the fake.
pub fn chat_body_with(stream: bool, behavior: Value) -> Value {
    let mut body = chat_body(stream);
    body["_fake"] = behavior;
    body
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// Logs in and returns the token, panicking on failure.
    pub async fn token(&self, (user, password): (&str, &str)) -> String {
        let response = self.login(user, password).await;
        assert_eq!(response.status(), 200, "login of {user}");
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// `GET path` with `token`; asserts a 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("a GET");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }

    pub async fn chat(&self, token: &str, body: &Value) -> reqwest::Response {
        self.chat_at("/v1/chat/completions", token, body).await
    }

    pub async fn chat_at(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("chat request")
    }

    /// Waits until no token holds a slot, for at most `within`.
    pub async fn slots_free_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.state.store.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Asks the server to shut down and waits for it to exit.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.server).await.expect("server task")
    }
}

/// The `data:` payloads of an SSE body, in order (comments and blank lines dropped).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_owned())
        .collect()
}

/// The text an SSE chat stream spells out.
pub fn sse_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Asserts the OpenAI error shape and returns the `code`.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].is_string(), "message in {body}");
    assert!(error["type"].is_string(), "type in {body}");
    assert!(error["code"].is_string(), "code in {body}");
    error["code"].as_str().unwrap_or_default().to_owned()
}

/// Like [`spawn_app_with`], but the config is written to a file in a fresh
/// temp dir and read with `Config::load`, so the app knows its source and
/// `POST /admin/reload` (and SIGHUP) re-read it. Returns the app and the
/// file's path; rewrite the file with [`config_toml`] and the app's
/// `fake.base_url()`, `api_key` and `jwt_secret` to change it.
pub async fn spawn_app_from_file(
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, std::path::PathBuf) {
    let mut settings = Settings::default();
    tweak(&mut settings);
    let fake = FakeDeepSeek::start().await.expect("fake upstream starts");
    let api_key = format!("sk-test-{}", random_hex());
    fake.require_key(&api_key);
    let jwt_secret = settings
        .jwt_secret
        .clone()
        .unwrap_or_else(|| format!("{}{}", random_hex(), random_hex()));
    let base_url = settings.base_url.clone().unwrap_or_else(|| fake.base_url());
    let dir = std::env::temp_dir().join(format!("deepseek_proxy-config-{}", random_hex()));
    std::fs::create_dir_all(&dir).expect("create the config's dir");
    let path = dir.join("config.toml");
    let text = config_toml(&settings, &base_url, &api_key, &jwt_secret);
    std::fs::write(&path, text).expect("write the config");
    // The same environment a reload reads (`ConfigSource::load`).
    let config =
        Config::load(&path, &deepseek_proxy::config::process_env).expect("test config is valid");
    let app = App::build(config).await.expect("app builds");
    let addr = app.local_addr().expect("bound");
    let metrics_addr = app.metrics_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let app = TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        fake,
        api_key,
        jwt_secret,
        state,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        server,
    };
    (app, path)
}

// --- upstreams helpers ---

/// One `[[upstreams]]` table for [`spawn_upstreams`]: in front of its own
/// fake (which requires its own key) unless `base_url` overrides it.
pub struct UpstreamTable {
    pub name: String,
    /// Extra lines for the table, e.g. `priority = 1`.
    pub extra: String,
    /// Overrides the fake's URL (e.g. [`closed_port_url`]).
    pub base_url: Option<String>,
}

impl UpstreamTable {
    pub fn new(name: &str, extra: &str) -> Self {
        Self {
            name: name.to_owned(),
            extra: extra.to_owned(),
            base_url: None,
        }
    }

    /// Points the table at `url` instead of its fake.
    pub fn at(mut self, url: &str) -> Self {
        self.base_url = Some(url.to_owned());
        self
    }
}

/// An app with several `[[upstreams]]`, each in front of its own fake.
pub struct UpstreamsApp {
    pub app: TestApp,
    /// One per table, in the tables' order (also for a table whose
    /// `base_url` was overridden: that fake then sees nothing).
    pub fakes: Vec<FakeDeepSeek>,
    /// Each table's key, in order.
    pub keys: Vec<String>,
}

/// A URL where nothing listens: a port bound, then released.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/v1")
}

/// Like [`spawn_app_with`], but with `tables` as `[[upstreams]]` (each with
/// its own fake and key) and `routing` as the `[routing]` lines. `[deepseek]`
/// keeps the timeouts (`Settings::timeout_seconds`) and has no key.
pub async fn spawn_upstreams(
    tables: Vec<UpstreamTable>,
    routing: &str,
    tweak: impl FnOnce(&mut Settings),
) -> UpstreamsApp {
    let mut settings = Settings::default();
    tweak(&mut settings);
    let mut fakes = Vec::new();
    let mut keys = Vec::new();
    let mut text_tables = String::new();
    for table in &tables {
        let fake = FakeDeepSeek::start().await.expect("fake upstream starts");
        let key = format!("sk-{}-{}", table.name, random_hex());
        fake.require_key(&key);
        // DeepSeek's root: `[[upstreams]]` URLs are used as written.
        let base_url = table
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", fake.addr()));
        text_tables.push_str(&format!(
            "\n[[upstreams]]\nname = \"{}\"\nbase_url = \"{base_url}\"\napi_key = \"{key}\"\n{}\n",
            table.name, table.extra
        ));
        fakes.push(fake);
        keys.push(key);
    }
    let jwt_secret = settings
        .jwt_secret
        .clone()
        .unwrap_or_else(|| format!("{}{}", random_hex(), random_hex()));
    let mut text = config_toml(&settings, &fakes[0].base_url(), "", &jwt_secret);
    text.push_str(&text_tables);
    text.push_str(&format!("\n[routing]\n{routing}\n"));
    let no_env = |_: &str| None;
    let config = Config::from_toml(&text, &no_env)
        .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"));
    let app = App::build(config).await.expect("app builds");
    let addr = app.local_addr().expect("bound");
    let metrics_addr = app.metrics_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let app = TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        fake: fakes[0].clone(),
        api_key: keys[0].clone(),
        jwt_secret,
        state,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        server,
    };
    UpstreamsApp { app, fakes, keys }
}

/// The ledger row of the request with `request_id` (the response's
/// `x-request-id`), waiting up to 5 s for it to be written.
pub async fn ledger_row(app: &TestApp, request_id: &str) -> deepseek_proxy::ledger::UsageRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        app.state.ledger.flush().await;
        let rows = app.state.ledger.recent(None, 5000).await.expect("recent");
        if let Some(row) = rows.into_iter().find(|r| r.request_id == request_id) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ledger row for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fires one request per token at once (across `apps`, round robin) and
/// returns (status, error code, Retry-After) for each.
pub async fn race(apps: &[&TestApp], tokens: &[String], body: &Value) -> Vec<(u16, String, u64)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let requests = tokens.iter().enumerate().map(|(i, token)| {
        let (app, barrier) = (apps[i % apps.len()], barrier.clone());
        async move {
            barrier.wait().await;
            let response = app.chat(token, body).await;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let code = if status == 200 {
                let _ = response.bytes().await;
                String::new()
            } else {
                error_code(response).await
            };
            (status, code, retry_after)
        }
    });
    futures_util::future::join_all(requests).await
}

pub fn count(results: &[(u16, String, u64)], status: u16, code: &str) -> usize {
    results
        .iter()
        .filter(|(s, c, _)| *s == status && c == code)
        .count()
}
