//! Black-box tests of `deepseek_proxy check`: the real binary, a temp config
//! pointing `[deepseek]` at a fake DeepSeek started here (behind the test
//! CA's TLS front for the TLS cases), and its exit code, table and JSON.
//! Whatever happens, the key never appears in its output.

#[path = "common/tls.rs"]
mod tls;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::routing::get;
use axum::Router;
use fake_deepseek::{Behavior, Failure, FakeDeepSeek};
use serde_json::{json, Value};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_deepseek_proxy");
/// Longest a run may take; generous, as the machine may be busy.
const PATIENCE: Duration = Duration::from_secs(60);
/// Variables through which the host's environment could change a run.
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
/// The rows of a target that serves every format, in print order.
const ROWS: [&str; 11] = [
    "dns",
    "tcp",
    "tls",
    "key",
    "balance",
    "chat",
    "fim",
    "responses",
    "anthropic",
    "search",
    "fetch",
];
const FORMAT_ROWS: [&str; 6] = ["chat", "fim", "responses", "anthropic", "search", "fetch"];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let name = format!("deepseek_proxy-check-{}", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create the temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A key no test output may contain.
fn secret_key() -> String {
    format!("sk-check-{}", uuid::Uuid::new_v4().simple())
}

/// A config whose `[deepseek]` is `base_url` with `key` (and `extra` lines).
fn config(base_url: &str, key: &str, extra: &str) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[auth]
jwt_secret = "{secret}"

[[auth.users]]
username = "admin"
password = "admin123"

[deepseek]
api_key = "{key}"
base_url = "{base_url}"
timeout_seconds = 10
{extra}

[storage]
sqlite_path = ":memory:"
"#,
        secret = "0123456789abcdef".repeat(4),
    )
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The table row of `check` (its second column).
    fn row(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} row in:\n{}", self.stdout))
    }

    fn assert_row(&self, check: &str, mark: &str, needle: &str) {
        let row = self.row(check);
        assert!(
            row.contains(mark) && row.contains(needle),
            "the {check} row should have {mark} and {needle:?}:\n{}",
            self.stdout
        );
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    fn assert_no(&self, key: &str) {
        assert!(
            !self.stdout.contains(key) && !self.stderr.contains(key),
            "the key was printed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the binary with `args` in `dir` (a clean environment) to its exit.
async fn run_in(dir: &TempDir, args: &[&str]) -> Run {
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
    let output = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("check finishes in time")
        .expect("run the binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `check` (plus `args`) with `config_text`, as a table and as JSON.
async fn check(config_text: &str, args: &[&str]) -> (Run, Run) {
    let dir = TempDir::new();
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config_text).expect("write the config");
    let path = path.to_str().expect("a UTF-8 temp path");
    let mut table_args = vec!["--config", path, "check"];
    table_args.extend(args);
    let table = run_in(&dir, &table_args).await;
    table_args.push("--json");
    let json = run_in(&dir, &table_args).await;
    (table, json)
}

fn url_of(fake: &FakeDeepSeek) -> String {
    format!("http://{}", fake.addr())
}

#[tokio::test]
async fn all_good_exits_0_with_every_row_passed() {
    let fake = FakeDeepSeek::start().await.expect("fake");
    let key = secret_key();
    fake.require_key(&key);
    let (table, json) = check(&config(&fake.base_url(), &key, ""), &[]).await;

    table.assert_code(0);
    for check in ROWS {
        let mark = if check == "tls" { "➖" } else { "✅" };
        table.assert_row(check, mark, "");
    }
    table.assert_row("key", "✅", "2 models");
    table.assert_row("balance", "✅", "110.00 CNY");
    table.assert_row("anthropic", "✅", "/anthropic/v1/messages");
    assert!(!table.stdout.contains('❌'), "{}", table.stdout);
    assert!(table.stdout.contains("all good"), "{}", table.stdout);
    table.assert_no(&key);

    json.assert_code(0);
    json.assert_no(&key);
    let doc = json.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["failed"], 0);
    let checks = doc["targets"][0]["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ROWS);
    for c in checks {
        assert_eq!(c["ok"], true, "{c}");
        assert!(c["detail"].is_string() && (c["ms"].is_u64() || c["skipped"] == true));
    }
    assert_eq!(doc["targets"][0]["name"], "deepseek");

    // The tiny requests: 1 token, thinking off, and the Anthropic headers.
    let posts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let chat = posts
        .iter()
        .find(|r| r.path == "/chat/completions")
        .and_then(|r| r.json())
        .expect("a chat request");
    assert_eq!(chat["max_tokens"], 1);
    assert_eq!(chat["model"], "deepseek-flash");
    assert_eq!(chat["thinking"], json!({"type": "disabled"}));
    assert_eq!(chat["stream"], false);
    let messages = posts
        .iter()
        .find(|r| r.path == "/anthropic/v1/messages")
        .expect("an anthropic request");
    assert_eq!(messages.headers["anthropic-version"], "2023-06-01");
    assert_eq!(messages.headers["x-api-key"], key.as_str());
}

#[tokio::test]
async fn a_refused_key_fails_and_is_never_printed() {
    let fake = FakeDeepSeek::start().await.expect("fake");
    fake.require_key("sk-the-right-one");
    let key = secret_key();
    let (table, json) = check(&config(&url_of(&fake), &key, ""), &[]).await;

    for run in [&table, &json] {
        run.assert_code(1);
        run.assert_no(&key);
        // Not even a piece of it, as DeepSeek's 401 quotes part of a key.
        run.assert_no(&key[9..25]);
    }
    table.assert_row("key", "❌", "the key was refused");
    table.assert_row("balance", "❌", "401");
    table.assert_row("anthropic", "❌", "401");
    assert!(table.stdout.contains("❌ 8 failed"), "{}", table.stdout);
    // The fake did echo the presented key in its 401 bodies.
    assert!(fake.requests().iter().any(|r| r.path == "/models"));
    let doc = json.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["targets"][0]["checks"][3]["name"], "key");
    assert_eq!(doc["targets"][0]["checks"][3]["ok"], false);
}

#[tokio::test]
async fn a_500_on_completions_fails_every_format_row() {
    let fake = FakeDeepSeek::start().await.expect("fake");
    fake.set_default(Behavior {
        fail: Some(Failure::Status(500)),
        ..Behavior::default()
    });
    let key = secret_key();
    let (table, json) = check(&config(&url_of(&fake), &key, ""), &[]).await;

    table.assert_code(1);
    json.assert_code(1);
    table.assert_row("key", "✅", "");
    table.assert_row("balance", "✅", "");
    for format in FORMAT_ROWS {
        table.assert_row(format, "❌", "HTTP 500");
    }
    assert_eq!(json.json()["failed"], 6);
    table.assert_no(&key);
}

#[tokio::test]
async fn tls_with_the_test_ca_passes_and_shows_the_expiry_date() {
    let fake = FakeDeepSeek::start().await.expect("fake");
    let front = tls::front(fake.addr()).await;
    let ca = format!("ca_file = \"{}\"", tls::ca_file());
    let base = format!("https://127.0.0.1:{}/v1", front.port());
    let (table, json) = check(&config(&base, &secret_key(), &ca), &[]).await;

    println!("{}", table.stdout); // seen with --nocapture
    table.assert_code(0);
    // tests/fixtures/tls/server.pem: notAfter=Nov  4 04:34:20 2126 GMT.
    table.assert_row("tls", "✅", "valid until 2126-11-04");
    table.assert_row("tls", "✅", "TLS 1.3");
    for format in FORMAT_ROWS {
        table.assert_row(format, "✅", "200");
    }
    json.assert_code(0);
}

#[tokio::test]
async fn tls_without_the_ca_fails_as_an_unknown_issuer() {
    let fake = FakeDeepSeek::start().await.expect("fake");
    let front = tls::front(fake.addr()).await;
    let base = format!("https://127.0.0.1:{}", front.port());
    let (table, json) = check(&config(&base, &secret_key(), ""), &[]).await;

    table.assert_code(1);
    json.assert_code(1);
    table.assert_row("tcp", "✅", "");
    table.assert_row("tls", "❌", "unknown issuer");
    // The HTTP checks are not tried over a connection that cannot work.
    table.assert_row("key", "➖", "not tried: TLS failed");
    assert_eq!(fake.requests().len(), 0);
}

#[tokio::test]
async fn a_closed_port_fails_the_tcp_row() {
    let key = secret_key();
    let (table, _) = check(&config("http://127.0.0.1:9", &key, ""), &[]).await;
    table.assert_code(1);
    table.assert_row("dns", "✅", "1 address");
    table.assert_row("tcp", "❌", "127.0.0.1:9");
    table.assert_row("tls", "➖", "not tried: TCP failed");
    table.assert_row("chat", "➖", "not tried: TCP failed");
}

/// A stand-in upstream with the given `/user/balance` (none: a 404) that
/// answers every POST with 200: for what the fake cannot script (it always
/// has a balance).
async fn stand_in(balance: Option<Value>) -> String {
    let mut app = Router::new().route("/models", get(|| async { axum::Json(json!({"data": []})) }));
    if let Some(balance) = balance {
        let answer = move || {
            let balance = balance.clone();
            async move { axum::Json(balance) }
        };
        app = app.route("/user/balance", get(answer));
    }
    // Every POST route answers 200; any other GET is a 404.
    let app = app.fallback(|method: Method| async move {
        match method {
            Method::POST => (StatusCode::OK, axum::Json(json!({}))),
            _ => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "Not Found"})),
            ),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn no_balance_fails() {
    let base = stand_in(Some(json!({
        "is_available": false,
        "balance_infos": [{"currency": "USD", "total_balance": "0.00"}]
    })))
    .await;
    let (table, json) = check(&config(&base, &secret_key(), ""), &[]).await;
    table.assert_code(1);
    table.assert_row("balance", "❌", "no balance");
    table.assert_row("balance", "❌", "0.00 USD");
    table.assert_row("key", "✅", "0 models");
    assert_eq!(json.json()["failed"], 1);
}

#[tokio::test]
async fn an_upstream_without_a_balance_route_is_not_a_failure() {
    let base = stand_in(None).await;
    let (table, _) = check(&config(&base, &secret_key(), ""), &[]).await;
    table.assert_code(0);
    table.assert_row("balance", "➖", "not offered by this upstream");
}

#[tokio::test]
async fn demo_check_passes_in_either_order() {
    let dir = TempDir::new(); // no config.toml: the built-in demo config
    for args in [&["--demo", "check"][..], &["check", "--demo"][..]] {
        let run = run_in(&dir, args).await;
        run.assert_code(0);
        assert!(run.stdout.contains("DEMO MODE"), "{}", run.stdout);
        run.assert_row("chat", "✅", "200");
        run.assert_no("sk-demo-not-a-real-key");
    }
}

#[tokio::test]
async fn a_config_error_exits_2() {
    let dir = TempDir::new();
    let run = run_in(&dir, &["check"]).await; // no config.toml, no --demo
    run.assert_code(2);
    let (table, _) = check(&config("ftp://example.com", &secret_key(), ""), &[]).await;
    table.assert_code(2);
    assert!(
        table.stderr.contains("deepseek.base_url"),
        "{}",
        table.stderr
    );
}
