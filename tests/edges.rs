//! The HTTP edges: slow and malformed clients, size limits, the connection
//! cap, panics, CORS and the client address, against the real server loop.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::{chat_body, chat_body_with, error_code, spawn_app, spawn_app_with, TestApp};
use common::{ADMIN, USER1};
use deepseek_proxy::state::AppState;
use deepseek_proxy::store::Entry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const SOON: Duration = Duration::from_secs(5);

/// A raw HTTP/1.1 response.
struct Raw {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Connects and sends `bytes` in one write.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Reads one response (by its `Content-Length`, else to the end), within `SOON`.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut body_len = None;
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().expect("content-length"));
                body_len = len.map(|n| end + 4 + n);
                if body_len.is_some_and(|total| buf.len() >= total) {
                    break;
                }
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = buf[end + 4..body_len.unwrap_or(buf.len())].to_vec();
        Raw { status, head, body }
    };
    timeout(SOON, read).await.expect("a response in time")
}

/// True if the server closes the connection (EOF or reset) within `within`;
/// any bytes it sends first are skipped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    timeout(within, async {
        while matches!(stream.read(&mut buf).await, Ok(1..)) {}
    })
    .await
    .is_ok()
}

/// On a new connection: a pooled one may be closed by the header timeout
/// just as it is reused (hyper's `IncompleteMessage`).
async fn healthz_ok(app: &TestApp) -> bool {
    let response = no_pool_client().get(app.url("/healthz")).send().await;
    response.is_ok_and(|r| r.status() == 200)
}

/// A failed login (random username) from `xff`.
async fn failed_login_from(app: &TestApp, xff: &str) -> reqwest::Response {
    app.http
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", xff)
        .json(&json!({"username": common::random_hex(), "password": "wrong"}))
        .send()
        .await
        .expect("login request")
}

/// A client that closes every connection once its response is read.
fn no_pool_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

async fn token_via(http: &reqwest::Client, app: &TestApp, (user, pw): (&str, &str)) -> String {
    let response = http
        .post(app.url("/auth/login"))
        .json(&json!({"username": user, "password": pw}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn a_client_that_stops_sending_its_headers_is_disconnected_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.server_extra = "header_read_timeout_seconds = 1".into()).await;
    let started = Instant::now();
    let mut partial = send_raw(
        app.addr,
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Ty",
    )
    .await;
    let mut silent = TcpStream::connect(app.addr).await.expect("connect");
    // Meanwhile, everyone else is served.
    assert!(healthz_ok(&app).await);
    assert!(closed_within(&mut partial, Duration::from_secs(3)).await);
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed by the timeout, not at once"
    );
    assert!(healthz_ok(&app).await);
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_gets_408_body_timeout() {
    let app = spawn_app_with(|s| s.server_extra = "body_read_timeout_seconds = 1".into()).await;
    let head = "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n";
    let mut stream = send_raw(app.addr, format!("{head}{{\"username").as_bytes()).await;
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 408, "{}", response.head);
    assert_eq!(response.json()["error"]["code"], "body_timeout");
}

#[tokio::test]
async fn headers_larger_than_max_header_bytes_get_431_and_the_server_stays_up() {
    let app = spawn_app_with(|s| s.server_extra = "max_header_bytes = 8192".into()).await;
    let big = "a".repeat(20 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let mut stream = send_raw(app.addr, request.as_bytes()).await;
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 431, "{}", response.head);
    assert!(healthz_ok(&app).await);
}

/// hyper (1.x) does not answer 400 here: RFC 9112 §6.1 lets a server process
/// such a request by its Transfer-Encoding alone, provided it closes the
/// connection afterwards. That is what it does, so nothing can be smuggled.
#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_nothing_after_it_is_served() {
    let app = spawn_app().await;
    let login = json!({"username": ADMIN.0, "password": ADMIN.1}).to_string();
    let chunked = format!("{:x}\r\n{login}\r\n0\r\n\r\n", login.len());
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let request = format!(
            "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             {framing}\r\n\r\n{chunked}{smuggled}"
        );
        let mut stream = send_raw(app.addr, request.as_bytes()).await;
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 200, "{framing}: {}", response.head);
        assert!(response.json()["token"].is_string(), "{framing}");
        assert!(response.head.contains("connection: close"), "{framing}");
        let mut rest = Vec::new();
        let read = timeout(SOON, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{framing}: the server closes the connection");
        assert!(
            rest.is_empty(),
            "{framing}: the smuggled request got an answer"
        );
    }
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_gets_413_and_never_reaches_deepseek() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1000).await;
    let token = app.token(ADMIN).await;
    let one_big = format!("5dc\r\n{}\r\n0\r\n\r\n", "x".repeat(1500));
    let small_chunk = format!("32\r\n{}\r\n", "y".repeat(50));
    let many_small = format!("{}0\r\n\r\n", small_chunk.repeat(30));
    for body in [one_big, many_small] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let mut stream = send_raw(app.addr, request.as_bytes()).await;
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 413, "{}", response.head);
        assert_eq!(response.json()["error"]["code"], "body_too_large");
    }
    assert!(app.fake.requests().is_empty());
    assert!(app.slots_free_within(SOON).await);
}

#[tokio::test]
async fn at_max_connections_a_new_connection_waits_until_one_closes() {
    let app = spawn_app_with(|s| s.server_extra = "max_connections = 2".into()).await;
    // Pooled idle connections would hold the two places; this client keeps none.
    let http = no_pool_client();
    let (a, b) = (
        token_via(&http, &app, ADMIN).await,
        token_via(&http, &app, USER1).await,
    );
    let slow = chat_body_with(true, json!({"chunks": 20, "chunk_delay_ms": 100}));
    let stream = |token: String| {
        let request = http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(token);
        request.json(&slow).send()
    };
    let (first, second) = tokio::join!(stream(a), stream(b));
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut third = send_raw(app.addr, healthz).await;
    let mut byte = [0u8; 1];
    let early = timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "no answer while both connections are open");

    let (first, second) = tokio::join!(first.text(), second.text());
    assert!(first.expect("first body").ends_with("data: [DONE]\n\n"));
    assert!(second.expect("second body").ends_with("data: [DONE]\n\n"));
    drop(http);
    let response = read_response(&mut third).await;
    assert_eq!(response.status, 200);
    assert!(app.slots_free_within(SOON).await);
    assert!(!app.server.is_finished());
}

async fn boom(State(state): State<AppState>) -> &'static str {
    let _slot = match common::claim_and_enter(&*state.store, 7, &[7], None).await {
        Entry::Granted { lease, .. } => lease,
        _ => panic!("slot 7 should be free"),
    };
    panic!("secret panic detail 5f3a");
}

/// Every log line of this test binary, at trace level.
static CAPTURED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_gets_a_generic_500_and_frees_its_slot() {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(|| Capture)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    let app = spawn_app().await;
    let token = app.token(ADMIN).await;
    let state = app.state.clone();
    let router = deepseek_proxy::routes::with_layers(
        Router::new()
            .route("/boom", post(boom))
            .route("/anthropic/boom", post(boom)),
        state.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
        SocketAddr,
    >(router);
    tokio::spawn(async move { axum::serve(listener, service).await });
    let boom = |path: &str| {
        app.http
            .post(format!("http://{addr}{path}"))
            .bearer_auth(&token)
            .send()
    };
    for _ in 0..2 {
        let response = boom("/boom")
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(response.status(), 500);
        let text = response.text().await.expect("body");
        assert!(!text.contains("5f3a"), "{text}");
        let body: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["message"].is_string());
        assert_eq!(state.store.in_flight(), 0);
        let again = common::claim_and_enter(&*state.store, 7, &[7], None).await;
        assert!(
            matches!(again, Entry::Granted { lease: Some(_), .. }),
            "slot 7 is free again"
        );
    }
    // Under /anthropic the 500 is in Anthropic's error shape, like every
    // other error of the gateway's there.
    let response = boom("/anthropic/boom").await.expect("an answer");
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "api_error", "{body}");
    assert!(!body.to_string().contains("5f3a"), "{body}");
    assert_eq!(state.store.in_flight(), 0);
    // The panic is logged, at trace level nothing secret is.
    let logs =
        String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|e| e.into_inner())).to_string();
    assert!(logs.contains("panicked"), "the panic is logged");
    for secret in [
        app.api_key.as_str(),
        app.jwt_secret.as_str(),
        token.as_str(),
        "admin123",
    ] {
        assert!(!logs.contains(secret), "a secret in the trace logs");
    }
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, app.url("/v1/chat/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight")
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let app = spawn_app().await;
    let response = preflight(&app, "https://app.example").await;
    let headers = response.headers();
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let app = spawn_app_with(|s| {
        s.server_extra = "cors_allowed_origins = [\"https://app.example\"]".into();
    })
    .await;
    let response = preflight(&app, "https://app.example").await;
    assert!(matches!(response.status().as_u16(), 200 | 204));
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    let token = app.token(ADMIN).await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .bearer_auth(&token)
        .json(&chat_body(false))
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );

    let response = preflight(&app, "https://evil.example").await;
    let headers = response.headers();
    assert!(headers.get("access-control-allow-origin").is_none());

    // Without an Origin (not a browser), no CORS answer, but the same
    // `Vary` as a browser's request gets, so a shared cache keeps them apart;
    // and an OPTIONS is still answered as a preflight.
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&chat_body(false))
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(
        headers["vary"],
        "origin, access-control-request-method, access-control-request-headers"
    );
    let response = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/chat/completions"))
        .send()
        .await
        .expect("options");
    assert!(matches!(response.status().as_u16(), 200 | 204));
}

const IP_LIMIT_3: &str =
    "login_max_failures_per_ip_per_minute = 3\nlogin_max_failures_per_minute = 100";

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_ip_throttle() {
    let app = spawn_app_with(|s| s.auth_extra = IP_LIMIT_3.into()).await;
    for i in 1..=3 {
        let response = failed_login_from(&app, &format!("198.51.100.{i}")).await;
        assert_eq!(response.status(), 401);
    }
    let response = failed_login_from(&app, "198.51.100.4").await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "login_throttled");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_is_its_own_client() {
    let app = spawn_app_with(|s| {
        s.auth_extra = IP_LIMIT_3.into();
        s.server_extra = "trusted_proxies = [\"127.0.0.1\"]".into();
    })
    .await;
    for i in 1..=5 {
        let response = failed_login_from(&app, &format!("203.0.113.{i}")).await;
        assert_eq!(response.status(), 401, "client {i}");
        assert_eq!(error_code(response).await, "invalid_credentials");
    }
    // The forwarded address is what is counted: client 1 reaches its limit.
    for _ in 0..2 {
        let response = failed_login_from(&app, "203.0.113.1").await;
        assert_eq!(response.status(), 401);
    }
    let response = failed_login_from(&app, "203.0.113.1").await;
    assert_eq!(response.status(), 429);
}
