//! Black-box tests of the `deepseek_proxy` binary: its flags, its config
//! errors, `--demo`, graceful shutdown on SIGTERM, and that no secret ever
//! reaches a log line or a response. Every test spawns the real binary with a
//! clean environment, reads its port from the "listening on" line, and kills
//! it on drop so a failing assertion never leaves a process behind.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{
    chat_body, chat_body_with, config_toml, random_hex, sse_data, sse_text, Settings, ADMIN, USER1,
};
use fake_deepseek::FakeDeepSeek;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_deepseek_proxy");
/// How long to wait for the binary to start or stop; generous, as the
/// machine may be busy.
const PATIENCE: Duration = Duration::from_secs(20);
/// Variables through which the host's environment could change a child.
const INHERITED: [&str; 11] = [
    "OPENAI_API_KEY",
    "DEEPSEEK_API_KEY",
    "DEEPSEEK_PROXY_JWT_SECRET",
    "DEEPSEEK_PROXY_CONFIG",
    "RUST_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];
/// A base URL for configs whose upstream is never called.
const NOWHERE: &str = "http://127.0.0.1:9/v1";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("deepseek_proxy-binary-{}", random_hex()));
        std::fs::create_dir_all(&path).expect("create the temp dir");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the config's dir");
        }
        std::fs::write(&path, text).expect("write the config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A 64-hex-digit JWT secret (the binary wants at least 32 bytes).
fn jwt_secret() -> String {
    format!("{}{}", random_hex(), random_hex())
}

/// The binary, run in `dir`, with nothing inherited that could change it.
fn proxy(dir: &TempDir, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in INHERITED {
        cmd.env_remove(var);
    }
    cmd
}

/// The binary serving `config` (a path inside `dir`).
fn proxy_with_config(dir: &TempDir, config: &std::path::Path) -> Command {
    let config = config.to_str().expect("a UTF-8 temp path");
    proxy(dir, &["--config", config])
}

struct Exited {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary to its exit; if it is still running after [`PATIENCE`]
/// the test fails and the child is killed (`kill_on_drop`).
async fn run_to_exit(mut cmd: Command) -> Exited {
    let child = cmd.spawn().expect("spawn the binary");
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the binary exits by itself")
        .expect("collect the binary's output");
    Exited {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A config error: exit code 2, no port bound, every needle named on stderr.
fn assert_config_error(exited: &Exited, needles: &[&str]) {
    assert_eq!(
        exited.status.code(),
        Some(2),
        "exit status; stderr:\n{}",
        exited.stderr
    );
    assert!(
        !exited.stdout.contains("listening on"),
        "it bound a port despite the config error:\n{}",
        exited.stdout
    );
    for needle in needles {
        assert!(
            exited.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            exited.stderr
        );
    }
}

/// Copies a child's output, line by line, into `sink` and onto `tx`.
fn pump(
    out: impl AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    tx: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut out = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match out.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    lock(&sink).push(line.clone());
                    let _ = tx.send(line);
                }
            }
        }
    })
}

/// Reads a body to its end (or its failure): the bytes as text, and whether
/// it ended cleanly.
async fn read_body(mut response: reqwest::Response) -> (String, bool) {
    let mut body = Vec::new();
    let clean = loop {
        match tokio::time::timeout(PATIENCE, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => break true,
            Ok(Err(_)) => break false,
            Err(_) => panic!("the body stalled for {PATIENCE:?}"),
        }
    };
    (String::from_utf8_lossy(&body).into_owned(), clean)
}

/// The `error.code` of an OpenAI-shaped error body, or "" if there is none.
fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A reply of `n` words, so the fake spreads it over `n` chunks.
fn words(n: usize) -> String {
    (1..=n).map(|i| format!("w{i} ")).collect()
}

/// Whether new connections to `addr` are refused within `within`.
async fn refused_within(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port nothing listens on (bound, read, released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A running binary; killed on drop.
struct Running {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    http: reqwest::Client,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::UnboundedReceiver<String>,
    pumps: Vec<JoinHandle<()>>,
}

impl Running {
    /// Spawns `cmd` and waits for its "listening on" line.
    async fn start(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("spawn the binary");
        let pid = child.id().expect("a running child has a pid");
        let (tx, lines) = mpsc::unbounded_channel();
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let pumps = vec![
            pump(
                child.stdout.take().expect("piped"),
                Arc::clone(&stdout),
                tx.clone(),
            ),
            pump(child.stderr.take().expect("piped"), Arc::clone(&stderr), tx),
        ];
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let mut running = Running {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http,
            stdout,
            stderr,
            lines,
            pumps,
        };
        let line = running.wait_for_line("listening on").await;
        let addr = line.rsplit("http://").next().map(str::trim);
        running.addr = addr
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        running
    }

    /// Waits for an output line containing `needle`.
    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the binary ended before {needle:?}:\n{}", self.output()),
                Err(_) => panic!("no {needle:?} within {PATIENCE:?}:\n{}", self.output()),
            }
        }
    }

    /// Everything printed so far: stdout lines, then stderr lines.
    fn lines_so_far(&self) -> Vec<String> {
        let mut lines = lock(&self.stdout).clone();
        lines.extend(lock(&self.stderr).iter().cloned());
        lines
    }

    fn output(&self) -> String {
        self.lines_so_far().join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as a service manager would.
    async fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits for the process to exit, for at most `within`.
    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for the binary"),
            Err(_) => panic!("still running {within:?} later:\n{}", self.output()),
        }
    }

    /// SIGTERM, then a clean exit; returns every line the binary wrote.
    async fn stop(mut self) -> Vec<String> {
        self.terminate().await;
        let status = self.exit_within(PATIENCE).await;
        assert!(status.success(), "exit {status}:\n{}", self.output());
        for pump in std::mem::take(&mut self.pumps) {
            pump.await.expect("the output pump");
        }
        self.lines_so_far()
    }

    async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    async fn token(&self, (user, password): (&str, &str)) -> String {
        let response = self.login(user, password).await;
        assert_eq!(response.status(), 200, "login of {user}");
        let body: Value = response.json().await.expect("a JSON login answer");
        body["token"].as_str().expect("a token").to_owned()
    }

    async fn chat(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("chat request")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Every response of a test as text (status, headers, body), to search for
/// secrets afterwards.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    /// Records the whole response; returns its status and body.
    async fn record(&mut self, what: &str, response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let mut text = format!("{what}: {status}\n");
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            text.push_str(&format!("{name}: {value}\n"));
        }
        let (body, _) = read_body(response).await;
        text.push_str(&body);
        self.0.push(text);
        (status, body)
    }
}

/// A token that verifies against `secret` but expired an hour ago.
fn expired_token(secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({"iss": "deepseek_proxy", "aud": "deepseek_proxy", "sub": "admin", "iat": now - 7200, "exp": now - 3600, "jti": random_hex()});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

// ---------------------------------------------------------------- flags

#[tokio::test]
async fn help_exits_zero_and_lists_every_flag() {
    let dir = TempDir::new();
    let exited = run_to_exit(proxy(&dir, &["--help"])).await;
    assert!(exited.status.success(), "{}", exited.status);
    for flag in ["--config", "--demo", "--help", "--version"] {
        assert!(
            exited.stdout.contains(flag),
            "{flag} in:\n{}",
            exited.stdout
        );
    }
}

#[tokio::test]
async fn version_exits_zero_and_prints_the_crate_version() {
    let dir = TempDir::new();
    let exited = run_to_exit(proxy(&dir, &["--version"])).await;
    assert!(exited.status.success(), "{}", exited.status);
    let expected = format!("deepseek_proxy {}", env!("CARGO_PKG_VERSION"));
    assert!(exited.stdout.contains(&expected), "{}", exited.stdout);
}

// ---------------------------------------------------------------- config

#[tokio::test]
async fn a_missing_config_file_is_named_and_exits_non_zero() {
    let dir = TempDir::new();
    let path = dir.0.join("nowhere.toml");
    let exited = run_to_exit(proxy_with_config(&dir, &path)).await;
    let shown = path.display().to_string();
    assert_config_error(&exited, &[shown.as_str(), "not found"]);
}

#[tokio::test]
async fn without_a_config_flag_the_missing_default_config_toml_is_named() {
    let dir = TempDir::new();
    let exited = run_to_exit(proxy(&dir, &[])).await;
    assert_config_error(&exited, &["config.toml", "--demo"]);
}

#[tokio::test]
async fn bad_toml_is_reported_with_its_line_and_column() {
    let dir = TempDir::new();
    let path = dir.write("config.toml", "[server]\nport = \"x\n");
    let exited = run_to_exit(proxy_with_config(&dir, &path)).await;
    assert_config_error(&exited, &["line 2", "column"]);
}

#[tokio::test]
async fn a_missing_api_key_names_the_key_and_the_env_var() {
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), NOWHERE, "", &jwt_secret());
    let path = dir.write("config.toml", &text);
    let exited = run_to_exit(proxy_with_config(&dir, &path)).await;
    assert_config_error(&exited, &["deepseek.api_key", "OPENAI_API_KEY"]);
}

#[tokio::test]
async fn a_bad_value_names_its_key() {
    let dir = TempDir::new();
    let settings = Settings {
        timeout_seconds: 0,
        ..Settings::default()
    };
    let text = config_toml(&settings, NOWHERE, "sk-file", &jwt_secret());
    let path = dir.write("config.toml", &text);
    let exited = run_to_exit(proxy_with_config(&dir, &path)).await;
    assert_config_error(&exited, &["deepseek.timeout_seconds"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_api_key_in_the_environment_fills_an_empty_api_key() {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-env-{}", random_hex());
    fake.require_key(&key);
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), &fake.base_url(), "", &jwt_secret());
    let path = dir.write("config.toml", &text);
    let mut cmd = proxy_with_config(&dir, &path);
    cmd.env("OPENAI_API_KEY", &key);
    let proxy = Running::start(cmd).await;

    // The fake only answers 200 to that exact key.
    let token = proxy.token(ADMIN).await;
    let response = proxy.chat(&token, &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn deepseek_proxy_config_is_used_when_no_config_flag_is_given() {
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), NOWHERE, "sk-file", &jwt_secret());
    let path = dir.write("elsewhere/proxy.toml", &text);
    // Run in an empty dir, so a ./config.toml cannot be what got loaded.
    let cwd = TempDir::new();
    let mut cmd = proxy(&cwd, &[]);
    cmd.env("DEEPSEEK_PROXY_CONFIG", &path);
    let proxy = Running::start(cmd).await;
    // The file's host and port 0, not the defaults 0.0.0.0:8080.
    assert_eq!(proxy.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(proxy.addr.port(), 8080);
    let health = proxy
        .http
        .get(proxy.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    proxy.stop().await;
}

// ---------------------------------------------------------------- demo

#[tokio::test(flavor = "multi_thread")]
async fn demo_mode_serves_login_and_chat_without_any_key() {
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), NOWHERE, "", "");
    let path = dir.write("config.toml", &text);
    let path = path.to_str().expect("a UTF-8 temp path");
    let proxy = Running::start(proxy(&dir, &["--demo", "--config", path])).await;
    let stdout = lock(&proxy.stdout).clone();
    assert!(
        stdout.first().is_some_and(|l| l.contains("DEMO MODE")),
        "the banner comes first: {stdout:?}"
    );

    let token = proxy.token(ADMIN).await;
    let streamed = proxy.chat(&token, &chat_body(true)).await;
    assert_eq!(streamed.status(), 200);
    let content_type = streamed.headers().get("content-type").cloned();
    let (body, clean) = read_body(streamed).await;
    assert!(clean, "the stream ended cleanly");
    assert!(
        content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "an SSE content type"
    );
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));

    let plain = proxy.chat(&token, &chat_body(false)).await;
    assert_eq!(plain.status(), 200);
    let answer: Value = plain.json().await.expect("a JSON answer");
    let content = answer["choices"][0]["message"]["content"].as_str();
    assert!(content.is_some_and(|c| !c.is_empty()), "{answer}");
    proxy.stop().await;
}

// ---------------------------------------------------------------- shutdown

/// A binary in front of a fresh fake, with `grace` seconds to drain.
async fn proxy_in_front_of_fake(grace: u64) -> (FakeDeepSeek, TempDir, Running) {
    let settings = Settings {
        shutdown_grace_seconds: grace,
        ..Settings::default()
    };
    let (fake, dir, path) = config_in_front_of_fake(&settings).await;
    let proxy = Running::start(proxy_with_config(&dir, &path)).await;
    (fake, dir, proxy)
}

/// A fake DeepSeek that wants a key of its own, and a config with
/// `settings` in front of it (`config.toml` in the directory).
async fn config_in_front_of_fake(settings: &Settings) -> (FakeDeepSeek, TempDir, PathBuf) {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-test-{}", random_hex());
    fake.require_key(&key);
    let dir = TempDir::new();
    let text = config_toml(settings, &fake.base_url(), &key, &jwt_secret());
    let path = dir.write("config.toml", &text);
    (fake, dir, path)
}

/// `THP_enabled` of a process's /proc status, where the kernel reports it
/// (5.0 and later).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

/// Huge pages cost 16–25 KiB per open stream (BENCHMARKS.md, issue 15): the
/// binary turns them off for itself, whatever the kernel's setting, and
/// still answers. Only meaningful where this test process has them on (the
/// setting is inherited), so elsewhere it says so and checks the answer only.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_runs_with_transparent_huge_pages_off() {
    let (_fake, _dir, proxy) = proxy_in_front_of_fake(5).await;
    match thp_enabled("self").as_deref() {
        Some("1") => assert_eq!(
            thp_enabled(&proxy.pid.to_string()).as_deref(),
            Some("0"),
            "the gateway still has transparent huge pages on"
        ),
        other => eprintln!("THP_enabled of the test itself is {other:?}: not checked"),
    }
    let token = proxy.token(ADMIN).await;
    assert_eq!(proxy.chat(&token, &chat_body(false)).await.status(), 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_open_stream_finish_refuses_new_connections_and_exits_zero() {
    let (_fake, _dir, mut proxy) = proxy_in_front_of_fake(5).await;
    let token = proxy.token(ADMIN).await;
    let reply = words(10);
    let script = json!({"chunks": 10, "chunk_delay_ms": 150, "reply": reply});
    let mut stream = proxy.chat(&token, &chat_body_with(true, script)).await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.expect("first bytes").expect("a chunk");
    assert!(!first.is_empty());

    proxy.terminate().await;
    proxy.wait_for_line("shutdown signal received").await;
    assert!(
        refused_within(proxy.addr, Duration::from_secs(1)).await,
        "new connections are still accepted after SIGTERM"
    );

    let (rest, clean) = read_body(stream).await;
    assert!(clean, "the open stream was cut: {rest}");
    let body = format!("{}{rest}", String::from_utf8_lossy(&first));
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert_eq!(sse_text(&body), reply, "every chunk arrived");

    let status = proxy.exit_within(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_a_stream_that_outlives_the_grace_period_and_still_exits_zero() {
    let (_fake, _dir, mut proxy) = proxy_in_front_of_fake(1).await;
    let token = proxy.token(ADMIN).await;
    let script = json!({"chunks": 20, "chunk_delay_ms": 500, "reply": words(20)});
    let mut stream = proxy.chat(&token, &chat_body_with(true, script)).await;
    assert_eq!(stream.status(), 200);
    stream.chunk().await.expect("first bytes").expect("a chunk");

    proxy.terminate().await;
    let signalled = Instant::now();
    let status = proxy.exit_within(Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "no grace at all"
    );

    let (rest, _) = read_body(stream).await;
    assert!(
        !rest.contains("[DONE]"),
        "the 10 s stream should have been cut short: {rest}"
    );
}

// ---------------------------------------------------------------- secrets

/// What one leak test run knows: the secrets to look for, and everything
/// the gateway said.
struct LeakRun {
    secrets: Vec<(&'static str, String)>,
    transcript: Transcript,
}

impl LeakRun {
    fn secret(&mut self, name: &'static str, value: &str) {
        self.secrets.push((name, value.to_owned()));
    }

    /// Logs in and remembers the token as a secret. The login answer itself
    /// is the one place a token belongs, so it is not recorded.
    async fn token(&mut self, proxy: &Running, user: (&str, &str)) -> String {
        let token = proxy.token(user).await;
        self.secret("an issued token", &token);
        token
    }

    /// A chat request, recorded; asserts its status and returns the body.
    async fn chat(
        &mut self,
        proxy: &Running,
        what: &str,
        token: &str,
        body: &Value,
        status: u16,
    ) -> String {
        let response = proxy.chat(token, body).await;
        let (got, body) = self.transcript.record(what, response).await;
        assert_eq!(got, status, "{what}: {body}");
        body
    }

    fn assert_absent(&self, place: &str, texts: &[String]) {
        for text in texts {
            for (name, secret) in &self.secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{name} ({secret}) leaked into {place}:\n{text}"
                );
            }
        }
    }
}

/// Every way to be refused before the upstream is called.
async fn drive_auth_errors(run: &mut LeakRun, proxy: &Running, jwt_secret: &str) {
    let wrong = format!("wrong-{}", random_hex());
    run.secret("a wrong password", &wrong);
    // Someone types their password into the username field.
    let typed_as_name = format!("Passw0rd-{}", random_hex());
    run.secret("a password typed as a username", &typed_as_name);
    for (what, user, password) in [
        ("wrong password", "admin", wrong.as_str()),
        ("unknown user", "mallory", "admin123"),
        ("password as username", typed_as_name.as_str(), "x"),
    ] {
        let (status, body) = run
            .transcript
            .record(what, proxy.login(user, password).await)
            .await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(code_of(&body), "invalid_credentials");
    }
    let malformed = proxy
        .http
        .post(proxy.url("/auth/login"))
        .header("content-type", "application/json")
        .body(r#"{"username": "admin", "password": admin123}"#)
        .send()
        .await
        .expect("login request");
    let (status, _) = run.transcript.record("malformed login", malformed).await;
    assert_eq!(status, 400);

    let anonymous = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .expect("chat request");
    let (status, body) = run.transcript.record("no token", anonymous).await;
    assert_eq!((status, code_of(&body).as_str()), (401, "missing_token"));

    let expired = expired_token(jwt_secret);
    run.secret("the forged expired token", &expired);
    for (what, token, code) in [
        ("garbage token", "garbage.not.jwt", "invalid_token"),
        ("expired token", expired.as_str(), "token_expired"),
    ] {
        let body = run.chat(proxy, what, token, &chat_body(false), 401).await;
        assert_eq!(code_of(&body), code, "{what}");
    }
}

/// Every upstream failure the fake can act out, and the happy paths.
async fn drive_upstream_paths(run: &mut LeakRun, proxy: &Running, token: &str) {
    for (upstream, status) in [
        (400, 400),
        (401, 502),
        (402, 502),
        (403, 502),
        (429, 429),
        (500, 502),
        (503, 503),
    ] {
        let body = chat_body_with(false, json!({"fail": {"status": upstream}}));
        run.chat(proxy, &format!("upstream {upstream}"), token, &body, status)
            .await;
    }
    let hang = chat_body_with(false, json!({"fail": "hang"}));
    let body = run.chat(proxy, "hang", token, &hang, 504).await;
    assert_eq!(code_of(&body), "upstream_timeout");
    let hang_body = chat_body_with(false, json!({"fail": "hang_body"}));
    run.chat(proxy, "hang body", token, &hang_body, 200).await;
    let redirect = chat_body_with(false, json!({"fail": "redirect"}));
    run.chat(proxy, "redirect", token, &redirect, 502).await;
    for (what, fail, code) in [
        ("reset", json!({"reset_after": 2}), "upstream_stream_failed"),
        ("stall", json!({"stall_after": 2}), "upstream_idle_timeout"),
    ] {
        let body = chat_body_with(true, json!({"fail": fail}));
        let body = run.chat(proxy, what, token, &body, 200).await;
        assert!(body.contains(code), "{what}: {body}");
        assert!(!body.contains("[DONE]"), "{what}: {body}");
    }
    let not_json = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("chat request");
    let (status, _) = run.transcript.record("invalid JSON", not_json).await;
    assert_eq!(status, 400);

    let streamed = run
        .chat(proxy, "stream", token, &chat_body(true), 200)
        .await;
    assert_eq!(
        sse_data(&streamed).last().map(String::as_str),
        Some("[DONE]")
    );
    let plain = run
        .chat(proxy, "non-stream", token, &chat_body(false), 200)
        .await;
    assert!(plain.contains("\"choices\""), "{plain}");
    let models = proxy
        .http
        .get(proxy.url("/v1/models"))
        .bearer_auth(token)
        .send()
        .await
        .expect("models request");
    let (status, _) = run.transcript.record("models", models).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line_or_a_response_even_at_trace_level() {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-leak-{}", random_hex());
    let wrong_key = format!("sk-wrong-{}", random_hex());
    let secret = jwt_secret();
    fake.require_key(&key);
    let mut run = LeakRun {
        secrets: Vec::new(),
        transcript: Transcript::default(),
    };
    run.secret("the API key", &key);
    run.secret("a refused API key", &wrong_key);
    run.secret("the JWT secret", &secret);
    run.secret("admin's password", ADMIN.1);
    run.secret("user1's password", USER1.1);

    let settings = Settings {
        timeout_seconds: 1,
        ..Settings::default()
    };
    let dir = TempDir::new();
    let start = |name: &str, base_url: &str, api_key: &str| {
        let path = dir.write(name, &config_toml(&settings, base_url, api_key, &secret));
        let mut cmd = proxy_with_config(&dir, &path);
        cmd.env("RUST_LOG", "trace");
        Running::start(cmd)
    };
    let main = start("main.toml", &fake.base_url(), &key).await;
    // DeepSeek quotes a refused key in its 401 body; so does the fake.
    let refused = start("refused.toml", &fake.base_url(), &wrong_key).await;
    let closed = format!("http://127.0.0.1:{}/v1", closed_port());
    let unreachable = start("unreachable.toml", &closed, &key).await;

    drive_auth_errors(&mut run, &main, &secret).await;
    let admin = run.token(&main, ADMIN).await;
    let user1 = run.token(&main, USER1).await;
    drive_upstream_paths(&mut run, &main, &admin).await;
    run.chat(&main, "user1", &user1, &chat_body(true), 200)
        .await;

    let token = run.token(&refused, ADMIN).await;
    let body = run
        .chat(&refused, "refused key", &token, &chat_body(false), 502)
        .await;
    assert_eq!(code_of(&body), "upstream_auth_failed");
    let token = run.token(&unreachable, ADMIN).await;
    let body = run
        .chat(
            &unreachable,
            "refused connection",
            &token,
            &chat_body(true),
            502,
        )
        .await;
    assert_eq!(code_of(&body), "upstream_unreachable");

    let mut logs = main.stop().await;
    logs.extend(refused.stop().await);
    logs.extend(unreachable.stop().await);
    run.assert_absent("a response", &run.transcript.0);
    run.assert_absent("the logs", &logs);
    println!(
        "checked {} log lines and {} responses for {} secrets",
        logs.len(),
        run.transcript.0.len(),
        run.secrets.len()
    );
    assert!(
        logs.len() > 20,
        "too few log lines to mean anything: {logs:?}"
    );
}

#[tokio::test]
async fn plaintext_passwords_get_one_startup_warning_per_user_naming_the_fix() {
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), NOWHERE, "sk-unused", "");
    let path = dir.write("config.toml", &text);
    let proxy = Running::start(proxy_with_config(&dir, &path)).await;
    let lines = proxy.stop().await;
    for user in ["admin", "user1"] {
        let warnings: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("WARN") && l.contains(&format!("\"{user}\"")))
            .collect();
        assert_eq!(warnings.len(), 1, "{user}: {lines:#?}");
        assert!(warnings[0].contains("hash-password"), "{}", warnings[0]);
        assert!(!warnings[0].contains("admin123") && !warnings[0].contains("pass123"));
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("will not survive a restart")),
        "an empty jwt_secret is warned about: {lines:#?}"
    );
}

/// The same token's next request must not find the slot still held by a
/// request the client just left (on a busy machine the gateway notices
/// later): probes until a request gets through (its slot is free once its
/// body has ended).
async fn wait_until_free(proxy: &Running, token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = proxy
            .http
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(token)
            .header("x-request-id", "log-check-probe")
            .json(&chat_body(false))
            .send()
            .await
            .expect("probe");
        let status = probe.status();
        let _ = probe.bytes().await;
        if status != 429 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the left request's slot is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_one_log_line_with_its_fields_even_when_abandoned_early() {
    let (_fake, _dir, proxy) = proxy_in_front_of_fake(5).await;
    let token = proxy.token(ADMIN).await;
    let streamed = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-request-id", "log-check-streamed")
        .json(&chat_body(true))
        .send()
        .await
        .expect("stream");
    let (body, _) = read_body(streamed).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gave_up = impatient
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-request-id", "log-check-abandoned")
        .json(&chat_body_with(false, json!({"fail": "hang"})))
        .send()
        .await;
    assert!(gave_up.is_err());
    wait_until_free(&proxy, &token).await;
    // A stream the client leaves midway: usage is estimated, and says so.
    let slow = chat_body_with(
        true,
        json!({"chunks": 20, "chunk_delay_ms": 100, "reply": words(20)}),
    );
    let mut left = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-request-id", "log-check-left")
        .json(&slow)
        .send()
        .await
        .expect("stream");
    for _ in 0..4 {
        let _ = left.chunk().await;
    }
    drop(left);
    wait_until_free(&proxy, &token).await;
    // The model is the client's text in the line: a newline in it must
    // not start a forged line of its own.
    let forged = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-request-id", "log-check-forged")
        .json(
            &json!({"model": "evil\n2026-01-01T00:00:00Z  INFO request forged=yes\u{1b}[2J\u{202e}x",
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("forged");
    let _ = forged.bytes().await;
    // A HEAD's body is emptied by the router: the request still completed.
    let head = proxy
        .http
        .head(proxy.url("/healthz"))
        .header("x-request-id", "log-check-head")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = proxy.stop().await;
    let line_of = |id: &str| -> String {
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(id)).collect();
        assert_eq!(found.len(), 1, "one line for {id}: {lines:#?}");
        found[0].clone()
    };
    let done = line_of("log-check-streamed");
    for field in [
        "user=admin",
        "status=200",
        "upstream_status=200",
        "path=/v1/chat/completions",
        "client=127.0.0.1",
        "completed",
        "ttfb_ms=",
        "latency_ms=",
        "bytes_in=",
        &format!("bytes_out={}", body.len()),
        "prompt_tokens=11",
        "completion_tokens=",
        "cached_tokens=0",
        "ds_trace_id=fake-trace-0001",
    ] {
        assert!(done.contains(field), "{field} missing in {done}");
    }
    assert!(
        !done.contains("estimated"),
        "a measured usage is not an estimate: {done}"
    );
    let left = line_of("log-check-left");
    assert!(left.contains("client_aborted"), "{left}");
    assert!(left.contains("completion_tokens_estimated="), "{left}");
    assert!(
        !left.contains(" completion_tokens="),
        "never a measured count: {left}"
    );
    let abandoned = line_of("log-check-abandoned");
    assert!(abandoned.contains("client_aborted"), "{abandoned}");
    assert!(abandoned.contains("user=admin"), "{abandoned}");
    let head = line_of("log-check-head");
    assert!(
        head.contains("method=HEAD") && head.contains("outcome=completed"),
        "{head}"
    );
    // The access log writes its own lines; they have the head `tracing`
    // gives the gateway's other lines.
    let head_of = |line: &str| -> String {
        line.chars()
            .take(34)
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect()
    };
    let listening = lines
        .iter()
        .find(|l| l.contains(" INFO listening "))
        .expect("the listening line");
    assert_eq!(head_of(listening), "0000-00-00T00:00:00.000000Z  INFO ");
    assert_eq!(head_of(&done), head_of(listening), "{done}");
    let forged = line_of("log-check-forged");
    assert!(
        forged.contains("model=evil?2026-01-01T00:00:00Z??INFO?request?forged=yes?[2J?x "),
        "{forged}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("2026-01-01") || l.contains('\u{1b}')),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ablation_switches_do_nothing_in_a_normal_build() {
    // `DSP_ABLATE` is read only by a build with the `ablation` feature (the
    // benchmark's); in the binary people run it must switch nothing off.
    let (_fake, dir, path) = config_in_front_of_fake(&Settings::default()).await;
    let mut cmd = proxy_with_config(&dir, &path);
    cmd.env(
        "DSP_ABLATE",
        "slot,jwt,quota,access_log,ledger,headers,layers",
    );
    let proxy = Running::start(cmd).await;
    let token = proxy.token(ADMIN).await;
    // The signature is still checked: a token with another one is refused.
    let (head, _) = token.rsplit_once('.').expect("a JWT");
    let forged = format!("{head}.{}", "A".repeat(43));
    let refused = proxy.chat(&forged, &chat_body(false)).await;
    assert_eq!(refused.status(), 401);
    // The slot still holds: a second request while one streams is 429.
    let slow = json!({"chunks": 10, "chunk_delay_ms": 100, "reply": words(10)});
    let mut first = proxy.chat(&token, &chat_body_with(true, slow)).await;
    assert_eq!(first.status(), 200);
    let _ = first.chunk().await;
    let second = proxy.chat(&token, &chat_body(false)).await;
    assert_eq!(second.status(), 429);
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // And the access log still writes its lines.
    let lines = proxy.stop().await;
    assert!(
        lines.iter().filter(|l| l.contains("INFO request ")).count() >= 3,
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_decides_which_access_lines_are_written() {
    let (_fake, dir, path) = config_in_front_of_fake(&Settings::default()).await;
    // A span directive makes `tracing` decide per event; the access log's
    // own writer must not take that for a yes.
    for (filter, written) in [
        ("warn", false),
        ("warn,[request]=debug", false),
        ("info,deepseek_proxy::access=off", false),
        ("warn,deepseek_proxy::access=info", true),
        ("debug", true),
    ] {
        let mut cmd = proxy_with_config(&dir, &path);
        cmd.env("RUST_LOG", filter);
        let proxy = Running::start(cmd).await;
        let token = proxy.token(ADMIN).await;
        let response = proxy.chat(&token, &chat_body(false)).await;
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
        let lines = proxy.stop().await;
        let access = lines
            .iter()
            .filter(|l| l.contains(" request request_id="))
            .count();
        assert_eq!(access > 0, written, "RUST_LOG={filter}: {lines:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let settings = Settings {
        server_extra: "log_format = \"json\"".into(),
        ..Settings::default()
    };
    let (_fake, dir, path) = config_in_front_of_fake(&settings).await;
    let proxy = Running::start(proxy_with_config(&dir, &path)).await;
    let token = proxy.token(ADMIN).await;
    let response = proxy.chat(&token, &chat_body(false)).await;
    let _ = response.bytes().await;
    let lines = proxy.stop().await;
    let logs: Vec<Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(logs.len() >= 3, "{lines:#?}");
    let chat = logs
        .iter()
        .find(|l| l["path"] == "/v1/chat/completions")
        .expect("the chat request's line");
    assert_eq!(chat["user"], "admin");
    assert_eq!(chat["status"], 200);
    assert_eq!(chat["prompt_tokens"], 11);
    assert!(chat["request_id"].is_string() && chat["latency_ms"].is_number());
    assert!(!lines.iter().any(|l| l.contains(&token)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_at_the_end_of_the_grace_period_still_gets_its_ledger_row() {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-test-{}", random_hex());
    fake.require_key(&key);
    let dir = TempDir::new();
    let ledger = dir.0.join("usage.db");
    let settings = Settings {
        shutdown_grace_seconds: 1,
        storage: format!("sqlite_path = \"{}\"", ledger.display()),
        ..Settings::default()
    };
    let text = config_toml(&settings, &fake.base_url(), &key, &jwt_secret());
    let path = dir.write("config.toml", &text);
    let mut proxy = Running::start(proxy_with_config(&dir, &path)).await;
    let token = proxy.token(ADMIN).await;
    let script = json!({"chunks": 20, "chunk_delay_ms": 500, "reply": words(20)});
    let mut stream = proxy
        .http
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-request-id", "cut-at-shutdown")
        .json(&chat_body_with(true, script))
        .send()
        .await
        .expect("stream");
    stream.chunk().await.expect("first bytes").expect("a chunk");
    proxy.terminate().await;
    let status = proxy.exit_within(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.output());

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", ledger.display()))
        .await
        .expect("open the ledger");
    let outcome: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM usage_log WHERE request_id = $1")
            .bind("cut-at-shutdown")
            .fetch_optional(&pool)
            .await
            .expect("query");
    assert_eq!(
        outcome.as_deref(),
        Some("client_aborted"),
        "the row was written"
    );
}

/// A plain HTTP forward proxy: takes absolute-form requests
/// (`POST http://host:port/path HTTP/1.1`), remembers the target, rewrites
/// the request line to origin form and pipes the connection to the target.
async fn forward_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&head).trim_end().to_owned();
                let mut parts = line.split(' ');
                let (Some(method), Some(target), Some(version)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let Some(rest) = target.strip_prefix("http://") else {
                    return;
                };
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                lock(&log).push(line.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(host).await else {
                    return;
                };
                let first = format!("{method} {path} {version}\r\n");
                if upstream.write_all(first.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_http_proxy_set_requests_reach_deepseek_through_the_proxy() {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-test-{}", random_hex());
    fake.require_key(&key);
    let (proxy_addr, seen) = forward_proxy().await;
    let dir = TempDir::new();
    let text = config_toml(&Settings::default(), &fake.base_url(), &key, &jwt_secret());
    let path = dir.write("config.toml", &text);
    let mut cmd = proxy_with_config(&dir, &path);
    cmd.env("HTTP_PROXY", format!("http://{proxy_addr}"));
    let gateway = Running::start(cmd).await;
    let token = gateway.token(ADMIN).await;

    let plain = gateway.chat(&token, &chat_body(false)).await;
    assert_eq!(plain.status(), 200);
    let plain = plain.bytes().await.expect("body");
    let streamed = gateway.chat(&token, &chat_body(true)).await;
    assert_eq!(streamed.status(), 200);
    let streamed = streamed.bytes().await.expect("body");

    let sent = fake.responses();
    assert_eq!(sent.len(), 2);
    assert_eq!(plain, sent[0], "relayed byte for byte");
    assert_eq!(streamed, sent[1], "relayed byte for byte");
    let seen = lock(&seen).clone();
    let expected = format!("POST http://{}/chat/completions HTTP/1.1", fake.addr());
    assert!(!seen.is_empty(), "nothing went through the proxy");
    assert!(seen.iter().all(|l| *l == expected), "{seen:#?}");
    assert_eq!(
        fake.requests()[0].headers["authorization"],
        format!("Bearer {key}").as_str()
    );
}

/// Sends SIGKILL: no shutdown, no flush.
async fn kill_hard(proxy: &mut Running) {
    let status = Command::new("kill")
        .args(["-KILL", &proxy.pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success());
    let _ = proxy.exit_within(PATIENCE).await;
}

async fn get_json(proxy: &Running, path: &str, token: &str) -> Value {
    proxy
        .http
        .get(proxy.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("a GET")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_survives_kill_9_and_counters_restart_where_they_were() {
    let fake = FakeDeepSeek::start().await.expect("fake upstream");
    let key = format!("sk-test-{}", random_hex());
    fake.require_key(&key);
    let dir = TempDir::new();
    let db = dir.0.join("usage.db");
    let settings = Settings {
        users: Some(common::admin_and_user(
            "tokens_per_day = 1000000\nbudget_per_month = 100",
        )),
        storage: format!("sqlite_path = \"{}\"", db.display()),
        ..Settings::default()
    };
    let text = config_toml(&settings, &fake.base_url(), &key, &jwt_secret());
    let path = dir.write("config.toml", &text);
    let mut proxy = Running::start(proxy_with_config(&dir, &path)).await;
    let token = proxy.token(USER1).await;
    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let response = proxy.chat(&token, &chat_body(i % 2 == 0)).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("the whole answer");
    }
    // Killed at once: the ledger's batch (once a second) has not run.
    kill_hard(&mut proxy).await;

    let proxy = Running::start(proxy_with_config(&dir, &path)).await;
    let admin = proxy.token(ADMIN).await;
    let usage = get_json(&proxy, "/admin/usage?group_by=user&from=0", &admin).await;
    let rows = usage["rows"].as_array().expect("rows");
    let user1 = rows.iter().find(|r| r["key"] == "user1");
    let user1 = user1.unwrap_or_else(|| panic!("no row for user1: {usage}"));
    assert_eq!(user1["requests"], REQUESTS as u64, "{usage}");
    let cost = user1["cost_micros"].as_i64().expect("a cost");
    assert!(cost > 0, "{usage}");
    // The counters were rebuilt from those rows: the same tokens and spend.
    let token = proxy.token(USER1).await;
    let me = get_json(&proxy, "/v1/usage/me", &token).await;
    let tokens =
        user1["prompt_tokens"].as_u64().unwrap() + user1["completion_tokens"].as_u64().unwrap();
    assert_eq!(me["quotas"]["tokens_per_day"]["used"], tokens, "{me}");
    let used = me["quotas"]["budget_per_month"]["used"]
        .as_f64()
        .expect("budget");
    assert!((used - cost as f64 / 1e6).abs() < 1e-9, "{me}");
    proxy.stop().await;
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("usage.db.journal."))
        .collect();
    assert!(left.is_empty(), "replayed segments are deleted: {left:?}");
}
