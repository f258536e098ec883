//! Personal API keys and users managed at runtime (issue 12), black-box:
//! every test drives the real app (or the real binary) over HTTP, and looks
//! at the database only to check what it holds or to age a key.

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::redis::TestRedis;
use common::{
    admin_and_user, chat_body, chat_body_with, config_toml, error_code, random_hex,
    spawn_app_from_file, spawn_app_with, sse_data, Settings, TestApp, ADMIN, USER1,
};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::AnyPool;

/// How long a change made on one replica may take to reach another
/// (the issue's bound; the poll runs every 2 s).
const OTHER_REPLICA: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

/// A request with `auth` as `Authorization: Bearer` (if not empty).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.http.request(method, app.url(path));
    if !auth.is_empty() {
        request = request.bearer_auth(auth);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// Status and JSON body (`Null` if the body is not JSON).
async fn call_json(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let response = call(app, method, path, auth, body).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `error.code` of a JSON error body.
fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Whether `key` has the documented shape: `sk-dsp-` and 43 base62.
fn is_key_shaped(key: &str) -> bool {
    key.strip_prefix("sk-dsp-")
        .is_some_and(|body| body.len() == 43 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A key made with `POST /v1/keys`.
struct Key {
    id: String,
    key: String,
    body: Value,
}

/// Makes a key as `auth`, asserting the 201 and the answer's shape.
async fn new_key(app: &TestApp, auth: &str, request: Value) -> Key {
    let (status, body) = call_json(app, Method::POST, "/v1/keys", auth, Some(request)).await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().expect("key").to_owned();
    let id = body["id"].as_str().expect("id").to_owned();
    assert!(is_key_shaped(&key), "{key}");
    assert_eq!(body["prefix"].as_str(), Some(&key[..15]), "{body}");
    assert!(body.get("key_hash").is_none(), "{body}");
    Key { id, key, body }
}

/// A login token, for any user.
async fn token_of(app: &TestApp, user: &str, password: &str) -> String {
    app.token((user, password)).await
}

/// Adds a database user through the admin API.
async fn add_user(app: &TestApp, admin: &str, request: Value) -> Value {
    let (status, body) = call_json(app, Method::POST, "/admin/users", admin, Some(request)).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// A small chat request as `auth`; its status.
async fn chat_status(app: &TestApp, auth: &str) -> u16 {
    let response = app.chat(auth, &chat_body(false)).await;
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

/// A small chat request as `auth`: status and error code ("" on success).
async fn chat_outcome(app: &TestApp, auth: &str) -> (u16, String) {
    let response = app.chat(auth, &chat_body(false)).await;
    let status = response.status().as_u16();
    if status == 200 {
        let _ = response.bytes().await;
        return (status, String::new());
    }
    (status, error_code(response).await)
}

/// Polls `check` until it holds or `limit` passes; how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A slow stream: 20 chunks, 50 ms apart (about a second).
fn slow_stream() -> Value {
    chat_body_with(true, json!({"chunks": 20, "chunk_delay_ms": 50}))
}

/// Reads a body to its end.
async fn rest_of(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), response.chunk())
        .await
        .expect("the body stalled")
        .expect("the body failed")
    {
        body.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// A fresh directory for a file-backed SQLite database; its `[storage]`
/// line and the database's path.
fn sqlite_file() -> (PathBuf, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("deepseek_proxy-users-{}", random_hex()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("usage.db");
    let storage = format!("sqlite_path = \"{}\"", path.to_string_lossy());
    (dir, storage, path)
}

/// A throw-away PostgreSQL database (as in tests/ledger.rs): the admin URL,
/// the database's URL and its name. `None` (skipped loudly, or failing
/// under CI) without a server.
async fn postgres() -> Option<(String, String, String)> {
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    sqlx::any::install_default_drivers();
    let pool = match AnyPool::connect(&admin).await {
        Ok(pool) => pool,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL tests cannot run ({e}); CI is set, so this fails");
            }
            eprintln!("\n!!! SKIPPED: PostgreSQL users test: no server at {admin}: {e} !!!\n");
            return None;
        }
    };
    let name = format!("users_test_{}", random_hex());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create a throw-away database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(b, _)| b)
        .to_owned();
    Some((admin, format!("{base}/{name}"), name))
}

async fn drop_postgres(admin: &str, name: &str) {
    if let Ok(pool) = AnyPool::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
}

/// Three config users: an admin and two plain users, `user2_extra` and
/// `user1_extra` added to theirs.
fn three_users(user1_extra: &str, user2_extra: &str) -> String {
    format!(
        "{}\n[[auth.users]]\nusername = \"user2\"\npassword = \"pass456\"\n{user2_extra}\n",
        admin_and_user(user1_extra)
    )
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------- 1. create and use

/// Creates a key for user1, checks its listing, and uses it as Bearer and
/// as `x-api-key` on the chat, Anthropic and Responses routes; returns it.
async fn a_key_works_everywhere(app: &TestApp) -> Key {
    let user1 = app.token(USER1).await;
    let made = new_key(app, &user1, json!({"name": "laptop"})).await;
    assert_eq!(made.body["user"], "user1", "{}", made.body);
    assert_eq!(made.body["name"], "laptop");
    assert_eq!(made.body["max_in_flight"], 1, "the seed's rule by default");

    // Listed with its prefix, never the key nor its hash.
    let (status, listed) = call_json(app, Method::GET, "/v1/keys", &user1, None).await;
    assert_eq!(status, 200);
    let keys = listed["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!(keys[0]["id"], made.id.as_str());
    assert_eq!(keys[0]["prefix"], &made.key[..15]);
    assert!(keys[0].get("key").is_none() && keys[0].get("key_hash").is_none());
    let text = listed.to_string();
    assert!(!text.contains(&made.key), "{text}");
    assert!(!text.contains(&made.key[15..]), "{text}");
    assert!(!text.contains(&sha256_hex(&made.key)), "{text}");
    // Own keys only.
    let admin = app.token(ADMIN).await;
    let (_, theirs) = call_json(app, Method::GET, "/v1/keys", &admin, None).await;
    assert_eq!(theirs["keys"], json!([]), "{theirs}");

    // Bearer, chat.
    assert_eq!(chat_status(app, &made.key).await, 200);
    // x-api-key, chat, streamed.
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("x-api-key", &made.key)
        .json(&chat_body(true))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(rest_of(response).await.ends_with("data: [DONE]\n\n"));
    // x-api-key with anthropic-version, as Anthropic's SDK sends it.
    let response = app
        .http
        .post(app.url("/anthropic/v1/messages"))
        .header("x-api-key", &made.key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.expect("json");
    assert_eq!(message["type"], "message", "{message}");
    // Bearer, Responses (what Codex sends).
    let (status, answer) = call_json(
        app,
        Method::POST,
        "/v1/responses",
        &made.key,
        Some(json!({"model": "deepseek-flash", "input": "hi"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "response", "{answer}");
    // A route without a slot, and the self-service API itself.
    let (status, _) = call_json(app, Method::GET, "/v1/models", &made.key, None).await;
    assert_eq!(status, 200);
    let (status, own) = call_json(app, Method::GET, "/v1/keys", &made.key, None).await;
    assert_eq!(
        (status, own["keys"][0]["id"].clone()),
        (200, json!(made.id))
    );
    // A login token leaves key_id empty.
    assert_eq!(chat_status(app, &user1).await, 200);

    // Its last use is recorded (off the request path).
    let used = within(Duration::from_secs(3), || async {
        let (_, own) = call_json(app, Method::GET, "/v1/keys", &user1, None).await;
        own["keys"][0]["last_used_ms"].is_i64()
    })
    .await;
    assert!(used.is_some(), "last_used_ms never set");

    // The ledger: the key's id and its owner, never the key.
    app.state.ledger.flush().await;
    let rows = app
        .state
        .ledger
        .recent(Some("user1"), 20)
        .await
        .expect("recent");
    assert_eq!(rows.len(), 6, "{rows:?}");
    let with_key = rows
        .iter()
        .filter(|r| r.key_id.as_deref() == Some(made.id.as_str()))
        .count();
    assert_eq!(with_key, 5, "every request made with the key: {rows:?}");
    assert!(rows.iter().all(|r| r.username == "user1"));
    assert!(
        rows.iter().any(|r| r.key_id.is_none()),
        "the login token's request has no key_id: {rows:?}"
    );
    assert!(rows
        .iter()
        .all(|r| !r.token_id.contains(&made.key[7..]) && r.token_id != made.key));
    made
}

#[tokio::test]
async fn a_key_is_shown_once_listed_by_prefix_and_works_as_bearer_and_x_api_key_on_every_format() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    a_key_works_everywhere(&app).await;
}

// ------------------------------------------------------------- 2. revoking

/// Revoking: by the owner, not by another user, and by an admin.
async fn keys_are_revoked_at_once(app: &TestApp) {
    let user1 = app.token(USER1).await;
    let user2 = token_of(app, "user2", "pass456").await;
    let admin = app.token(ADMIN).await;
    let first = new_key(app, &user1, json!({"name": "one"})).await;
    assert_eq!(chat_status(app, &first.key).await, 200);

    // Someone else's key is "not found" to them, even to an admin on /v1.
    for other in [&user2, &admin] {
        let path = format!("/v1/keys/{}", first.id);
        let (status, body) = call_json(app, Method::DELETE, &path, other, None).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    }
    assert_eq!(chat_status(app, &first.key).await, 200, "still valid");

    // The owner revokes it: refused on the very next request.
    let path = format!("/v1/keys/{}", first.id);
    let (status, body) = call_json(app, Method::DELETE, &path, &user1, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], true);
    assert_eq!(
        chat_outcome(app, &first.key).await,
        (401, "invalid_token".into())
    );
    let (status, _) = call_json(app, Method::GET, "/v1/models", &first.key, None).await;
    assert_eq!(status, 401, "routes without a slot too");
    let (status, _) = call_json(app, Method::DELETE, &path, &user1, None).await;
    assert_eq!(status, 404, "a revoked key is gone");
    let (_, listed) = call_json(app, Method::GET, "/v1/keys", &user1, None).await;
    assert_eq!(listed["keys"], json!([]));

    // Admins see and revoke anyone's keys.
    let second = new_key(app, &user1, json!({"name": "two"})).await;
    let theirs = new_key(app, &user2, json!({"name": "user2's"})).await;
    let (status, listed) =
        call_json(app, Method::GET, "/admin/keys?user=user1", &admin, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, [second.id.as_str()], "{listed}");
    assert_eq!(listed["keys"][0]["user"], "user1");
    assert!(!listed.to_string().contains(&second.key));
    let (_, all) = call_json(app, Method::GET, "/admin/keys", &admin, None).await;
    assert_eq!(all["keys"].as_array().map(Vec::len), Some(2), "{all}");
    for path in ["/admin/keys?user=user1", "/admin/keys"] {
        let (status, body) = call_json(app, Method::GET, path, &user1, None).await;
        assert_eq!((status, code(&body)), (403, "admin_required"), "{body}");
    }
    let path = format!("/admin/keys/{}", second.id);
    let (status, body) = call_json(app, Method::DELETE, &path, &user2, None).await;
    assert_eq!((status, code(&body)), (403, "admin_required"));
    let (status, body) = call_json(app, Method::DELETE, &path, &second.key, None).await;
    assert_eq!(
        (status, code(&body)),
        (403, "admin_required"),
        "a key of a non-admin is no admin"
    );
    assert_eq!(chat_status(app, &second.key).await, 200);
    let (status, body) = call_json(app, Method::DELETE, &path, &admin, None).await;
    assert_eq!((status, body["revoked"].clone()), (200, json!(true)));
    assert_eq!(chat_status(app, &second.key).await, 401);
    let (status, _) = call_json(app, Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, 404);
    assert_eq!(chat_status(app, &theirs.key).await, 200, "others untouched");
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_the_next_request_and_only_its_owner_or_an_admin_can_revoke_it()
{
    let app = spawn_app_with(|s| s.users = Some(three_users("", ""))).await;
    keys_are_revoked_at_once(&app).await;
}

// ------------------------------------------------- 12. the same on PostgreSQL

#[tokio::test]
async fn keys_are_made_used_listed_and_revoked_the_same_on_postgres() {
    let Some((admin_url, url, name)) = postgres().await else {
        return;
    };
    let storage = format!("url = \"{url}\"");
    let app = spawn_app_with(|s| {
        s.users = Some(three_users("", ""));
        s.storage = storage;
    })
    .await;
    let made = a_key_works_everywhere(&app).await;
    // Only the hash is in the table.
    let pool = AnyPool::connect(&url).await.expect("connect");
    let rows = sqlx::query("SELECT * FROM api_keys")
        .fetch_all(&pool)
        .await
        .expect("select");
    assert_eq!(rows.len(), 1);
    let dump = dump_postgres(&pool).await;
    assert!(!dump.contains(&made.key[7..]), "the key is in the database");
    assert!(dump.contains(&sha256_hex(&made.key)), "its hash is");
    // Revoke user1's key and go on with the revocation checks.
    let user1 = app.token(USER1).await;
    let path = format!("/v1/keys/{}", made.id);
    assert_eq!(
        call(&app, Method::DELETE, &path, &user1, None)
            .await
            .status(),
        200
    );
    keys_are_revoked_at_once(&app).await;
    pool.close().await;
    drop(app);
    drop_postgres(&admin_url, &name).await;
}

/// Every text column of every table of the public schema, as one string.
async fn dump_postgres(pool: &AnyPool) -> String {
    use sqlx::Row;
    let columns = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying')",
    )
    .fetch_all(pool)
    .await
    .expect("columns");
    let mut dump = String::new();
    for column in columns {
        let (table, name): (String, String) = (column.get("t"), column.get("c"));
        let rows = sqlx::query(&format!("SELECT \"{name}\"::text AS v FROM \"{table}\""))
            .fetch_all(pool)
            .await
            .expect("select a column");
        for row in rows {
            if let Some(value) = row.get::<Option<String>, _>("v") {
                dump.push_str(&value);
                dump.push('\n');
            }
        }
    }
    dump
}

// ------------------------------------------ 3. the key in no row, no log line

/// The real binary, its config in a temp dir, its output collected.
struct Binary {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

fn collect(
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            let _ = tx.send(line);
        }
    })
}

impl Binary {
    /// Starts `deepseek_proxy --config <config>` with `RUST_LOG=<log>`.
    async fn start(config: &std::path::Path, log: &str) -> Binary {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deepseek_proxy"));
        cmd.arg("--config")
            .arg(config)
            .env("RUST_LOG", log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for var in [
            "OPENAI_API_KEY",
            "DEEPSEEK_API_KEY",
            "DEEPSEEK_PROXY_JWT_SECRET",
            "DEEPSEEK_PROXY_CONFIG",
            "DEEPSEEK_PROXY_STORAGE_URL",
            "DEEPSEEK_PROXY_REDIS_URL",
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("spawn the binary");
        let pid = child.id().expect("pid");
        let output = std::sync::Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pumps = vec![
            collect(
                child.stdout.take().expect("piped"),
                std::sync::Arc::clone(&output),
                tx.clone(),
            ),
            collect(
                child.stderr.take().expect("piped"),
                std::sync::Arc::clone(&output),
                tx,
            ),
        ];
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    return addr.trim().to_owned();
                }
            }
            panic!("the binary exited before listening");
        })
        .await
        .expect("the binary starts");
        Binary {
            child,
            pid,
            base: format!("http://{addr}"),
            output,
            pumps,
        }
    }

    /// SIGTERM, a clean exit, and every line it wrote.
    async fn stop(mut self) -> String {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the binary exits")
            .expect("wait");
        for pump in std::mem::take(&mut self.pumps) {
            let _ = pump.await;
        }
        let output = self
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n");
        assert!(exit.success(), "exit {exit}:\n{output}");
        output
    }
}

#[tokio::test]
async fn the_key_is_in_no_database_row_and_no_log_line_even_at_trace_level() {
    let fake = fake_deepseek::FakeDeepSeek::start().await.expect("fake");
    let upstream_key = format!("sk-test-{}", random_hex());
    fake.require_key(&upstream_key);
    let (dir, storage, db) = sqlite_file();
    let settings = Settings {
        users: Some(admin_and_user("")),
        storage,
        ..Settings::default()
    };
    let secret = format!("{}{}", random_hex(), random_hex());
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(&settings, &fake.base_url(), &upstream_key, &secret),
    )
    .expect("config");
    let bin = Binary::start(&config, "trace").await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = |path: &str| format!("{}{path}", bin.base);
    let login: Value = http
        .post(url("/auth/login"))
        .json(&json!({"username": "user1", "password": "pass123"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let made: Value = http
        .post(url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "claude-code", "expires_in_days": 30}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let key = made["key"].as_str().expect("key").to_owned();
    let id = made["id"].as_str().expect("id").to_owned();
    assert!(is_key_shaped(&key));
    // Used every way: streamed and not, Bearer and x-api-key, the Anthropic
    // route, a refused model, a near-miss of the key, the listing.
    for (stream, header) in [(false, "bearer"), (true, "x-api-key")] {
        let request = http
            .post(url("/v1/chat/completions"))
            .json(&chat_body(stream));
        let request = if header == "bearer" {
            request.bearer_auth(&key)
        } else {
            request.header("x-api-key", &key)
        };
        let response = request.send().await.expect("chat");
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
    }
    let response = http
        .post(url("/anthropic/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("messages");
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await;
    let mut near_miss = key.clone();
    let last = if near_miss.ends_with('a') { "b" } else { "a" };
    near_miss.replace_range(near_miss.len() - 1.., last);
    let response = http
        .post(url("/v1/chat/completions"))
        .bearer_auth(&near_miss)
        .json(&chat_body(false))
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 401);
    let listed = http
        .get(url("/v1/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(
        listed.contains(&id) && !listed.contains(&key[7..]),
        "{listed}"
    );
    let output = bin.stop().await;

    // The logs: the key's id, never the key (nor its random part, nor the
    // near miss, which differs from it in one character).
    assert!(output.contains(&id), "the access log names the key id");
    for secret in [&key[7..], &near_miss[7..]] {
        let line = output.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "a log line holds a key: {line:?}");
    }
    // The database, byte for byte (the file and its journal), and as rows.
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().contains("usage.db") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).expect("read");
        let found = bytes.windows(43).any(|w| w == &key.as_bytes()[7..]);
        assert!(!found, "{} holds the key", path.display());
    }
    assert!(files >= 1);
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&format!("sqlite://{}", db.to_string_lossy()))
        .await
        .expect("open the database");
    let dump = dump_sqlite(&pool).await;
    assert!(dump.contains(&id), "the key's row and its usage are there");
    assert!(dump.contains(&sha256_hex(&key)), "as its hash");
    assert!(!dump.contains(&key[7..]), "never the key");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every column of every table of a SQLite database, cast to text.
async fn dump_sqlite(pool: &AnyPool) -> String {
    use sqlx::Row;
    let tables = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(pool)
        .await
        .expect("tables");
    let mut dump = String::new();
    for table in tables {
        let table: String = table.get("name");
        let columns = sqlx::query(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .fetch_all(pool)
            .await
            .expect("columns");
        for column in columns {
            let column: String = column.get("name");
            let rows = sqlx::query(&format!(
                "SELECT CAST(\"{column}\" AS TEXT) AS v FROM \"{table}\""
            ))
            .fetch_all(pool)
            .await
            .expect("select a column");
            for row in rows {
                if let Some(value) = row.get::<Option<String>, _>("v") {
                    dump.push_str(&value);
                    dump.push('\n');
                }
            }
        }
    }
    dump
}

// ---------------------------------------------------------- 4. max_in_flight

#[tokio::test]
async fn a_key_holds_one_request_at_a_time_by_default() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let user1 = app.token(USER1).await;
    let made = new_key(&app, &user1, json!({"name": "one"})).await;
    let first = app.chat(&made.key, &slow_stream()).await;
    assert_eq!(first.status(), 200);
    let second = app.chat(&made.key, &slow_stream()).await;
    assert_eq!(second.status(), 429);
    assert_eq!(error_code(second).await, "token_busy");
    // The owner's login token is a different caller with its own slot.
    assert_eq!(chat_status(&app, &user1).await, 200);
    assert!(rest_of(first).await.ends_with("data: [DONE]\n\n"));
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    assert_eq!(chat_status(&app, &made.key).await, 200, "free again");
}

/// Fires `n` slow streams with `key` at once: the statuses, sorted, and the
/// codes of the refusals.
async fn burst(app: &TestApp, key: &str, n: usize) -> (Vec<u16>, Vec<String>) {
    let requests = (0..n).map(|_| async {
        let response = app.chat(key, &slow_stream()).await;
        let status = response.status().as_u16();
        if status == 200 {
            let body = rest_of(response).await;
            assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
            (status, String::new())
        } else {
            (status, error_code(response).await)
        }
    });
    let mut answers = futures_util::future::join_all(requests).await;
    answers.sort();
    answers.into_iter().unzip()
}

#[tokio::test]
async fn a_key_with_max_in_flight_3_serves_exactly_3_of_a_burst_of_5() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user("max_concurrent = 3"))).await;
    let user1 = app.token(USER1).await;
    let made = new_key(&app, &user1, json!({"name": "agent", "max_in_flight": 3})).await;
    assert_eq!(made.body["max_in_flight"], 3);
    let (statuses, codes) = burst(&app, &made.key, 5).await;
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(codes[3..], ["token_busy", "token_busy"]);
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    // And at 1, under the same burst: one.
    let one = new_key(&app, &user1, json!({"name": "one"})).await;
    let (statuses, _) = burst(&app, &one.key, 3).await;
    assert_eq!(statuses, [200, 429, 429]);
}

#[tokio::test]
async fn a_user_may_raise_max_in_flight_up_to_their_max_concurrent_and_an_admin_beyond() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user("max_concurrent = 3"))).await;
    let user1 = app.token(USER1).await;
    for bad in [4, 0, -1, 1001] {
        let (status, body) = call_json(
            &app,
            Method::POST,
            "/v1/keys",
            &user1,
            Some(json!({"name": "greedy", "max_in_flight": bad})),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_max_in_flight"),
            "{bad}: {body}"
        );
    }
    let (_, listed) = call_json(&app, Method::GET, "/v1/keys", &user1, None).await;
    assert_eq!(listed["keys"], json!([]), "nothing was made");
    new_key(&app, &user1, json!({"name": "ok", "max_in_flight": 3})).await;
    let admin = app.token(ADMIN).await;
    let big = new_key(&app, &admin, json!({"name": "batch", "max_in_flight": 50})).await;
    assert_eq!(big.body["max_in_flight"], 50);
    let (statuses, _) = burst(&app, &big.key, 6).await;
    assert_eq!(statuses, [200; 6], "an admin's key of 50 takes 6 at once");
}

// ------------------------------------------------------------------ 5. models

#[tokio::test]
async fn a_keys_models_must_be_within_its_owners_and_narrow_what_the_key_may_use() {
    let app = spawn_app_with(|s| {
        s.users = Some(three_users(
            "models = [\"deepseek-flash\", \"deepseek-v4-pro\"]",
            "models = [\"deepseek-flash\"]",
        ))
    })
    .await;
    let user2 = token_of(&app, "user2", "pass456").await;
    for models in [
        json!(["deepseek-v4-pro"]),
        json!(["deepseek-flash", "deepseek-v4-pro"]),
    ] {
        let (status, body) = call_json(
            &app,
            Method::POST,
            "/v1/keys",
            &user2,
            Some(json!({"name": "wider", "models": models})),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "model_not_allowed"), "{body}");
    }
    new_key(
        &app,
        &user2,
        json!({"name": "same", "models": ["deepseek-flash"]}),
    )
    .await;

    let user1 = app.token(USER1).await;
    let flash = new_key(
        &app,
        &user1,
        json!({"name": "flash", "models": ["deepseek-flash"]}),
    )
    .await;
    assert_eq!(flash.body["models"], json!(["deepseek-flash"]));
    let pro = |stream: bool| {
        let mut body = chat_body(stream);
        body["model"] = json!("deepseek-v4-pro");
        body
    };
    let refused = app.chat(&flash.key, &pro(false)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(error_code(refused).await, "model_not_allowed");
    let mut allowed = chat_body(false);
    allowed["model"] = json!("deepseek-flash");
    assert_eq!(app.chat(&flash.key, &allowed).await.status(), 200);
    // claude-opus is served by deepseek-v4-pro: refused on the Anthropic
    // route too (in Anthropic's dialect, which turns 403 into 400).
    let opus = app
        .http
        .post(app.url("/anthropic/v1/messages"))
        .header("x-api-key", &flash.key)
        .json(&json!({"model": "claude-opus-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("messages");
    assert_eq!(opus.status(), 400);
    let opus = opus.text().await.expect("body");
    assert!(opus.contains("may not use this model"), "{opus}");
    // The owner may use it, with a login token or an unrestricted key.
    assert_eq!(app.chat(&user1, &pro(false)).await.status(), 200);
    let any = new_key(&app, &user1, json!({"name": "any"})).await;
    assert_eq!(app.chat(&any.key, &pro(false)).await.status(), 200);
    let upstream_pro = app
        .fake
        .requests()
        .iter()
        .filter(|r| r.json().is_some_and(|b| b["model"] == "deepseek-v4-pro"))
        .count();
    assert_eq!(upstream_pro, 2, "the refused ones never reached DeepSeek");
}

// ------------------------------------------------------------------ 6. expiry

#[tokio::test]
async fn an_expired_key_is_refused_with_key_expired_once_the_poll_sees_it() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let user1 = app.token(USER1).await;
    let before = manage_now_ms();
    let made = new_key(&app, &user1, json!({"name": "week", "expires_in_days": 7})).await;
    let week = 7 * 86_400_000;
    let expires = made.body["expires_ms"].as_i64().expect("expires_ms");
    assert!(
        (before + week..=manage_now_ms() + week).contains(&expires),
        "{}",
        made.body
    );
    let (_, listed) = call_json(&app, Method::GET, "/v1/keys", &user1, None).await;
    assert_eq!(listed["keys"][0]["expires_ms"], expires);
    let forever = new_key(&app, &user1, json!({"name": "forever"})).await;
    assert_eq!(forever.body["expires_ms"], Value::Null);
    for days in [0, 3651] {
        let (status, body) = call_json(
            &app,
            Method::POST,
            "/v1/keys",
            &user1,
            Some(json!({"name": "bad", "expires_in_days": days})),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "invalid_expiry"), "{body}");
    }
    assert_eq!(chat_status(&app, &made.key).await, 200);

    // Age it in the database, as time would, and tell the replicas.
    let pool = app.state.directory.pool();
    sqlx::query("UPDATE api_keys SET expires_ms = $1 WHERE id = $2")
        .bind(manage_now_ms() - 1_000)
        .bind(made.id.as_str())
        .execute(pool)
        .await
        .expect("age the key");
    sqlx::query("UPDATE directory_version SET version = version + 1")
        .execute(pool)
        .await
        .expect("bump");
    let took = within(Duration::from_secs(3), || async {
        chat_outcome(&app, &made.key).await == (401, "key_expired".to_owned())
    })
    .await;
    assert!(took.is_some(), "still accepted 3 s after it expired");
    let response = app.chat(&made.key, &chat_body(false)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response
            .headers()
            .get("x-should-retry")
            .map(|v| v.as_bytes()),
        Some(&b"false"[..])
    );
    assert_eq!(chat_status(&app, &forever.key).await, 200, "only that key");
}

fn manage_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// -------------------------------------------------------- 7. users at runtime

#[tokio::test]
async fn an_admin_adds_lists_changes_and_deletes_users_at_runtime() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    assert_eq!(app.login("carol", "carol-pass-1").await.status(), 401);
    let carol = add_user(
        &app,
        &admin,
        json!({"username": "carol", "password": "carol-pass-1",
               "models": ["deepseek-flash"], "tokens_per_day": 100000}),
    )
    .await;
    assert_eq!(carol["username"], "carol");
    assert_eq!(carol["role"], "user", "the default role");
    assert_eq!(carol["source"], "database");
    assert_eq!(carol["models"], json!(["deepseek-flash"]));
    assert_eq!(carol["tokens_per_day"], 100000);
    assert_eq!(carol["disabled"], false);
    let text = carol.to_string();
    assert!(
        !text.contains("carol-pass-1") && !text.contains("argon2"),
        "{text}"
    );
    assert!(carol.get("password").is_none() && carol.get("password_hash").is_none());

    // She logs in at once, and her settings apply.
    let token = token_of(&app, "carol", "carol-pass-1").await;
    assert_eq!(chat_status(&app, &token).await, 200);
    let mut pro = chat_body(false);
    pro["model"] = json!("deepseek-v4-pro");
    assert_eq!(app.chat(&token, &pro).await.status(), 403);
    let (status, body) = call_json(&app, Method::GET, "/admin/users", &token, None).await;
    assert_eq!((status, code(&body)), (403, "admin_required"));

    // The list: config users marked so, database ones too, no password.
    let (status, listed) = call_json(&app, Method::GET, "/admin/users", &admin, None).await;
    assert_eq!(status, 200);
    let users = listed["users"].as_array().expect("users");
    let source = |name: &str| {
        users
            .iter()
            .find(|u| u["username"] == name)
            .map(|u| u["source"].clone())
    };
    assert_eq!(source("admin"), Some(json!("config")));
    assert_eq!(source("user1"), Some(json!("config")));
    assert_eq!(source("carol"), Some(json!("database")));
    assert_eq!(users.len(), 3);
    let text = listed.to_string();
    assert!(!text.contains("argon2") && !text.contains("admin123") && !text.contains("pass123"));
    assert!(users
        .iter()
        .all(|u| u.get("password").is_none() && u.get("password_hash").is_none()));
    let admin_row = users
        .iter()
        .find(|u| u["username"] == "admin")
        .expect("admin");
    assert_eq!(admin_row["role"], "admin");

    // Config users are read-only here.
    for (method, body) in [
        (Method::PATCH, Some(json!({"disabled": true}))),
        (Method::DELETE, None),
    ] {
        for name in ["user1", "admin"] {
            let path = format!("/admin/users/{name}");
            let (status, answer) =
                call_json(&app, method.clone(), &path, &admin, body.clone()).await;
            assert_eq!((status, code(&answer)), (409, "config_user"), "{answer}");
        }
    }
    assert_eq!(chat_status(&app, &app.token(USER1).await).await, 200);

    // Taken names, weak passwords, bad names and roles.
    for name in ["user1", "admin", "carol"] {
        let (status, body) = call_json(
            &app,
            Method::POST,
            "/admin/users",
            &admin,
            Some(json!({"username": name, "password": "long-enough-1"})),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (409, "user_exists"),
            "{name}: {body}"
        );
    }
    for (request, expected) in [
        (
            json!({"username": "dave", "password": "short"}),
            "weak_password",
        ),
        (
            json!({"username": "dave", "password": "1234567"}),
            "weak_password",
        ),
        (
            json!({"username": "da ve", "password": "long-enough-1"}),
            "invalid_username",
        ),
        (
            json!({"username": "", "password": "long-enough-1"}),
            "invalid_username",
        ),
        (
            json!({"username": "dave", "password": "long-enough-1", "role": "root"}),
            "invalid_role",
        ),
        (
            json!({"username": "dave", "password": "long-enough-1", "tokens_per_day": -1}),
            "invalid_quota",
        ),
        (
            json!({"username": "dave", "password": "long-enough-1", "is_admin": true}),
            "invalid_body",
        ),
    ] {
        let (status, body) = call_json(
            &app,
            Method::POST,
            "/admin/users",
            &admin,
            Some(request.clone()),
        )
        .await;
        assert_eq!((status, code(&body)), (400, expected), "{request}: {body}");
    }
    assert_eq!(
        app.login("dave", "long-enough-1").await.status(),
        401,
        "none was made"
    );

    // Changing a database user: role and quotas.
    let (status, changed) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/carol",
        &admin,
        Some(json!({"role": "admin", "requests_per_minute": 1, "models": null})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["role"], "admin");
    assert_eq!(changed["requests_per_minute"], 1);
    assert_eq!(changed["models"], Value::Null);
    assert_eq!(changed["tokens_per_day"], 100000, "untouched");
    let (status, _) = call_json(&app, Method::GET, "/admin/users", &token, None).await;
    assert_eq!(status, 200, "carol is an admin now, with the same token");
    let outcomes = [
        chat_outcome(&app, &token).await,
        chat_outcome(&app, &token).await,
    ];
    assert_eq!(
        outcomes[1],
        (429, "quota_exceeded".to_owned()),
        "requests_per_minute = 1 applies: {outcomes:?}"
    );
    let (status, body) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/nobody",
        &admin,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/carol",
        &admin,
        Some(json!({"role": "superuser"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_role"));

    // Deleting.
    let (status, body) = call_json(&app, Method::DELETE, "/admin/users/carol", &admin, None).await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (200, json!(true)),
        "{body}"
    );
    assert_eq!(app.login("carol", "carol-pass-1").await.status(), 401);
    assert_eq!(chat_status(&app, &token).await, 401);
    let (status, _) = call_json(&app, Method::DELETE, "/admin/users/carol", &admin, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn no_one_but_an_admin_may_touch_users_and_no_user_can_make_themselves_admin() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    add_user(
        &app,
        &admin,
        json!({"username": "dave", "password": "dave-pass-1"}),
    )
    .await;
    let dave = token_of(&app, "dave", "dave-pass-1").await;
    let user1 = app.token(USER1).await;
    let user1_key = new_key(&app, &user1, json!({"name": "k"})).await.key;
    let dave_key = new_key(&app, &dave, json!({"name": "k"})).await.key;
    for auth in [&user1, &dave, &user1_key, &dave_key] {
        let attempts = [
            (Method::GET, "/admin/users", None),
            (
                Method::POST,
                "/admin/users",
                Some(json!({"username": "mallory", "password": "mallory-1", "role": "admin"})),
            ),
            (
                Method::PATCH,
                "/admin/users/dave",
                Some(json!({"role": "admin"})),
            ),
            (
                Method::PATCH,
                "/admin/users/user1",
                Some(json!({"role": "admin"})),
            ),
            (Method::DELETE, "/admin/users/dave", None),
            (Method::POST, "/admin/reload", None),
        ];
        for (method, path, body) in attempts {
            let (status, answer) = call_json(&app, method.clone(), path, auth, body).await;
            assert_eq!(
                (status, code(&answer)),
                (403, "admin_required"),
                "{method} {path}: {answer}"
            );
        }
    }
    assert_eq!(app.login("mallory", "mallory-1").await.status(), 401);
    let (_, listed) = call_json(&app, Method::GET, "/admin/users", &admin, None).await;
    let dave_row = listed["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "dave").cloned())
        .expect("dave");
    assert_eq!(dave_row["role"], "user", "still a user: {dave_row}");
    // An unauthenticated caller gets 401, not 403.
    let (status, _) = call_json(&app, Method::GET, "/admin/users", "", None).await;
    assert_eq!(status, 401);
}

// -------------------------------------------------------- 8. the last admin

/// The last-admin rule, black-box. Config users are read-only through the
/// API, so a config admin can never be the one the rule protects, and with
/// one in the config every database admin has another admin beside them.
/// So two apps share one SQLite file, one after the other: the first (with
/// the config's admin) creates the database admin `boss`; the second has
/// only a plain config user, which makes `boss` the one enabled admin there.
#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_disabled_nor_deleted() {
    let (dir, storage, _) = sqlite_file();
    let first = spawn_app_with(|s| {
        s.users = Some(admin_and_user(""));
        s.storage = storage.clone();
    })
    .await;
    let admin = first.token(ADMIN).await;
    add_user(
        &first,
        &admin,
        json!({"username": "boss", "password": "boss-pass-1", "role": "admin"}),
    )
    .await;
    // Beside the config's admin, boss is no last admin: demoting, and
    // deleting, are fine.
    let (status, body) = call_json(
        &first,
        Method::PATCH,
        "/admin/users/boss",
        &admin,
        Some(json!({"role": "user"})),
    )
    .await;
    assert_eq!(
        (status, body["role"].clone()),
        (200, json!("user")),
        "{body}"
    );
    let (status, _) = call_json(&first, Method::DELETE, "/admin/users/boss", &admin, None).await;
    assert_eq!(status, 200);
    add_user(
        &first,
        &admin,
        json!({"username": "boss", "password": "boss-pass-1", "role": "admin"}),
    )
    .await;
    first.shutdown().await.expect("clean exit");

    let only_user1 = "[[auth.users]]\nusername = \"user1\"\npassword = \"pass123\"\n".to_owned();
    let app = spawn_app_with(|s| {
        s.users = Some(only_user1);
        s.storage = storage;
    })
    .await;
    let boss = token_of(&app, "boss", "boss-pass-1").await;
    let refused = |method: Method, body: Option<Value>, who: &'static str| {
        let app = &app;
        let boss = boss.clone();
        async move {
            let path = format!("/admin/users/{who}");
            let (status, answer) = call_json(app, method.clone(), &path, &boss, body.clone()).await;
            assert_eq!(
                (status, code(&answer)),
                (409, "last_admin"),
                "{method} {path} {body:?}: {answer}"
            );
        }
    };
    refused(Method::PATCH, Some(json!({"role": "user"})), "boss").await;
    refused(Method::PATCH, Some(json!({"disabled": true})), "boss").await;
    refused(Method::DELETE, None, "boss").await;
    let (status, _) = call_json(&app, Method::GET, "/admin/users", &boss, None).await;
    assert_eq!(status, 200, "boss is still an admin");

    // A second admin lifts the rule; a disabled one does not count.
    add_user(
        &app,
        &boss,
        json!({"username": "boss2", "password": "boss2-pass", "role": "admin"}),
    )
    .await;
    let (status, _) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/boss2",
        &boss,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, 200);
    refused(Method::DELETE, None, "boss").await;
    let (status, _) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/boss2",
        &boss,
        Some(json!({"disabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call_json(&app, Method::DELETE, "/admin/users/boss", &boss, None).await;
    assert_eq!(status, 200, "{body}");
    // Now boss2 is the last one.
    let boss2 = token_of(&app, "boss2", "boss2-pass").await;
    let (status, answer) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/boss2",
        &boss2,
        Some(json!({"role": "user"})),
    )
    .await;
    assert_eq!((status, code(&answer)), (409, "last_admin"), "{answer}");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------- 9. a leaver, mid-stream

#[tokio::test]
async fn a_user_disabled_mid_stream_finishes_it_and_is_refused_next_and_deleting_removes_their_keys(
) {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    add_user(
        &app,
        &admin,
        json!({"username": "leaver", "password": "leaver-pass"}),
    )
    .await;
    let token = token_of(&app, "leaver", "leaver-pass").await;
    let made = new_key(&app, &token, json!({"name": "laptop"})).await;
    new_key(&app, &token, json!({"name": "desktop"})).await;

    let mut stream = app.chat(&made.key, &slow_stream()).await;
    assert_eq!(stream.status(), 200);
    let mut head = Vec::new();
    while head.len() < 2 {
        head.push(stream.chunk().await.expect("chunk").expect("more"));
    }
    let (status, body) = call_json(
        &app,
        Method::PATCH,
        "/admin/users/leaver",
        &admin,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        (status, body["disabled"].clone()),
        (200, json!(true)),
        "{body}"
    );
    // Refused at once: the key, the login token, a new login.
    assert_eq!(chat_outcome(&app, &made.key).await.0, 401);
    assert_eq!(chat_status(&app, &token).await, 401);
    let (status, _) = call_json(&app, Method::GET, "/v1/keys", &token, None).await;
    assert_eq!(status, 401);
    assert_eq!(app.login("leaver", "leaver-pass").await.status(), 401);
    // The stream that was open goes on to its end.
    let rest = rest_of(stream).await;
    let mut text: String = head.iter().map(|c| String::from_utf8_lossy(c)).collect();
    text.push_str(&rest);
    assert!(!rest.is_empty(), "the stream was still open when disabled");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(sse_data(&text).len() > head.len(), "{text}");
    assert!(text.contains(r#""finish_reason":"stop""#), "{text}");

    // Deleting the user deletes their keys.
    let (_, keys) = call_json(&app, Method::GET, "/admin/keys?user=leaver", &admin, None).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "{keys}");
    let (status, _) = call_json(&app, Method::DELETE, "/admin/users/leaver", &admin, None).await;
    assert_eq!(status, 200);
    let (_, keys) = call_json(&app, Method::GET, "/admin/keys?user=leaver", &admin, None).await;
    assert_eq!(keys["keys"], json!([]));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE username = 'leaver'")
        .fetch_one(app.state.directory.pool())
        .await
        .expect("count");
    assert_eq!(rows, 0);
    // A new user of the same name does not inherit them.
    add_user(
        &app,
        &admin,
        json!({"username": "leaver", "password": "leaver-pass"}),
    )
    .await;
    assert_eq!(chat_status(&app, &made.key).await, 401);
}

// --------------------------------------------------------- 10. passwords

#[tokio::test]
async fn changing_a_password_ends_the_older_tokens_and_hands_out_a_working_one() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    add_user(
        &app,
        &admin,
        json!({"username": "pat", "password": "old-password"}),
    )
    .await;
    let old = token_of(&app, "pat", "old-password").await;
    // The revocation is to the second (`tokens_valid_after` and `iat` are
    // Unix seconds): let the old token's second pass; see the ignored
    // test below for the same second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let change = |old_password: &str, new_password: &str| {
        let body = json!({"old_password": old_password, "new_password": new_password});
        call_json(&app, Method::POST, "/auth/password", &old, Some(body))
    };
    let (status, body) = change("wrong-password", "new-password").await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_credentials"),
        "{body}"
    );
    let (status, body) = change("old-password", "short").await;
    assert_eq!((status, code(&body)), (400, "weak_password"), "{body}");
    assert_eq!(chat_status(&app, &old).await, 200, "nothing changed yet");
    let (status, body) = change("old-password", "new-password").await;
    assert_eq!(status, 200, "{body}");
    let new = body["token"].as_str().expect("token").to_owned();
    assert_ne!(new, old);
    assert_eq!(
        chat_outcome(&app, &old).await,
        (401, "invalid_token".into())
    );
    assert_eq!(chat_status(&app, &new).await, 200);
    assert_eq!(app.login("pat", "old-password").await.status(), 401);
    // Within the login-cache window: not the cached (ended) token.
    let again = token_of(&app, "pat", "new-password").await;
    assert_ne!(again, old);
    assert_eq!(chat_status(&app, &again).await, 200);
    assert_eq!(chat_status(&app, &old).await, 401);

    // Config users change theirs in the file.
    let user1 = app.token(USER1).await;
    let (status, body) = call_json(
        &app,
        Method::POST,
        "/auth/password",
        &user1,
        Some(json!({"old_password": "pass123", "new_password": "another-one"})),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "config_user"), "{body}");
    assert_eq!(app.login("user1", "pass123").await.status(), 200);
}

/// The same as above without the pause: a token issued in the same second
/// as the change must end too.
#[tokio::test]
async fn a_token_issued_in_the_same_second_as_a_password_change_ends_too() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    let mut current = "password-0".to_owned();
    add_user(
        &app,
        &admin,
        json!({"username": "pat", "password": current}),
    )
    .await;
    // Up to 5 tries to fit a login and the change into one second.
    for attempt in 1..=5 {
        // Start just after a second begins.
        let ms = manage_now_ms() % 1000;
        tokio::time::sleep(Duration::from_millis((1010 - ms) as u64)).await;
        let second = manage_now_ms() / 1000;
        let old = token_of(&app, "pat", &current).await;
        let next = format!("password-{attempt}");
        let body = json!({"old_password": current, "new_password": next});
        let (status, answer) =
            call_json(&app, Method::POST, "/auth/password", &old, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        current = next;
        if manage_now_ms() / 1000 == second {
            let still = chat_status(&app, &old).await;
            let again = token_of(&app, "pat", &current).await;
            assert_eq!(
                (still, again == old),
                (401, false),
                "(status of the token from before the change, whether a new login \
                 hands it out again from the login cache)"
            );
            return;
        }
    }
    panic!("could not fit a login and a change into one second");
}

// ------------------------------------------------------ 11. two replicas

/// Two replicas on one database (`storage`) and one Redis, with one JWT
/// secret: users, keys, revocations and a key's slots are shared.
async fn two_replicas_act_as_one(storage: String) {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let secret = format!("{}{}", random_hex(), random_hex());
    let replica = || {
        let (storage, state, secret) = (storage.clone(), redis.state_toml(3), secret.clone());
        spawn_app_with(move |s| {
            s.users = Some(admin_and_user(""));
            s.storage = storage;
            s.state = state;
            s.jwt_secret = Some(secret);
            // The polls below fail logins on purpose.
            s.auth_extra = "login_max_failures_per_minute = 1000\n\
                            login_max_failures_per_ip_per_minute = 1000\n"
                .into();
        })
    };
    let a = replica().await;
    let b = replica().await;
    let admin = a.token(ADMIN).await;

    // A user added through A logs in on B.
    add_user(
        &a,
        &admin,
        json!({"username": "newbie", "password": "newbie-pass"}),
    )
    .await;
    assert_eq!(
        a.login("newbie", "newbie-pass").await.status(),
        200,
        "at once on A"
    );
    let took = within(OTHER_REPLICA, || async {
        b.login("newbie", "newbie-pass").await.status() == 200
    })
    .await;
    assert!(
        took.is_some(),
        "newbie cannot log in on B after {OTHER_REPLICA:?}"
    );
    eprintln!("a user added on A logged in on B after {took:?}");

    // A key made on A works on B, and its one slot is shared.
    let token = token_of(&a, "newbie", "newbie-pass").await;
    let made = new_key(&a, &token, json!({"name": "shared"})).await;
    let took = within(OTHER_REPLICA, || async {
        chat_status(&b, &made.key).await == 200
    })
    .await;
    assert!(took.is_some(), "the key never worked on B");
    let open = a.chat(&made.key, &slow_stream()).await;
    assert_eq!(open.status(), 200);
    assert_eq!(
        chat_outcome(&b, &made.key).await,
        (429, "token_busy".into()),
        "max_in_flight 1 holds across replicas"
    );
    assert!(rest_of(open).await.ends_with("data: [DONE]\n\n"));
    let freed = within(Duration::from_secs(3), || async {
        chat_status(&b, &made.key).await == 200
    })
    .await;
    assert!(freed.is_some(), "the slot was not freed");

    // Revoked on A: at once there, within the bound on B.
    let path = format!("/v1/keys/{}", made.id);
    assert_eq!(
        call(&a, Method::DELETE, &path, &token, None).await.status(),
        200
    );
    assert_eq!(chat_status(&a, &made.key).await, 401);
    let took = within(OTHER_REPLICA, || async {
        chat_status(&b, &made.key).await == 401
    })
    .await;
    assert!(took.is_some(), "a key revoked on A still works on B");
    eprintln!("a key revoked on A was refused on B after {took:?}");

    // Disabled on B: their token ends on A too.
    assert_eq!(chat_status(&a, &token).await, 200);
    let (status, _) = call_json(
        &b,
        Method::PATCH,
        "/admin/users/newbie",
        &admin,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, 200);
    let took = within(OTHER_REPLICA, || async {
        chat_status(&a, &token).await == 401
    })
    .await;
    assert!(took.is_some(), "a user disabled on B still works on A");
}

#[tokio::test]
async fn two_replicas_on_one_sqlite_file_and_redis_share_users_keys_and_slots() {
    let (dir, storage, _) = sqlite_file();
    two_replicas_act_as_one(storage).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_replicas_on_postgres_and_redis_share_users_keys_and_slots() {
    let Some((admin, url, name)) = postgres().await else {
        return;
    };
    two_replicas_act_as_one(format!("url = \"{url}\"")).await;
    drop_postgres(&admin, &name).await;
}

// ---------------------------------------------------------------- 13. reload

#[tokio::test]
async fn post_admin_reload_rereads_the_file_keeps_the_old_settings_on_a_bad_one_and_reports_restarts(
) {
    let (app, path) = spawn_app_from_file(|s| s.users = Some(admin_and_user(""))).await;
    let write = |users: &str, edit: &dyn Fn(String) -> String| {
        let settings = Settings {
            users: Some(users.to_owned()),
            ..Settings::default()
        };
        let text = config_toml(
            &settings,
            &app.fake.base_url(),
            &app.api_key,
            &app.jwt_secret,
        );
        std::fs::write(&path, edit(text)).expect("rewrite the config");
    };
    let same = |text: String| text;
    let reload = |token: String| {
        let app = &app;
        async move { call_json(app, Method::POST, "/admin/reload", &token, None).await }
    };
    let admin = app.token(ADMIN).await;
    let user1 = app.token(USER1).await;
    assert_eq!(app.login("newcomer", "newcomer-pass").await.status(), 401);

    // Add newcomer and drop user1, while user1 has a stream open.
    let open = app.chat(&user1, &slow_stream()).await;
    assert_eq!(open.status(), 200);
    let newcomer = "\n[[auth.users]]\nusername = \"newcomer\"\npassword = \"newcomer-pass\"\n";
    let admin_only =
        "[[auth.users]]\nusername = \"admin\"\npassword = \"admin123\"\nrole = \"admin\"\n";
    write(&format!("{admin_only}{newcomer}"), &same);
    let (status, report) = reload(admin.clone()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["reloaded"], true);
    assert_eq!(report["users"], 2);
    assert_eq!(report["needs_restart"], json!([]), "{report}");
    let newcomer_token = token_of(&app, "newcomer", "newcomer-pass").await;
    assert_eq!(chat_status(&app, &newcomer_token).await, 200);
    assert!(
        rest_of(open).await.ends_with("data: [DONE]\n\n"),
        "a stream in flight finishes under the settings it started with"
    );
    assert_eq!(chat_status(&app, &user1).await, 401, "user1 is gone");
    assert_eq!(app.login("user1", "pass123").await.status(), 401);

    // An invalid file: refused, and the old settings stay.
    std::fs::write(&path, "[server\nport = ").expect("write");
    let (status, body) = reload(admin.clone()).await;
    assert_eq!((status, code(&body)), (400, "invalid_config"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("config.toml"), "names the file: {message}");
    assert_eq!(chat_status(&app, &newcomer_token).await, 200);
    assert_eq!(
        token_of(&app, "newcomer", "newcomer-pass").await,
        newcomer_token
    );
    assert_eq!(chat_status(&app, &admin).await, 200);
    // Valid TOML, invalid config: the same.
    write(admin_only, &|text| {
        text.replace("token_ttl_seconds = 3600", "token_ttl_seconds = -5")
    });
    let (status, body) = reload(admin.clone()).await;
    assert_eq!((status, code(&body)), (400, "invalid_config"), "{body}");
    assert_eq!(
        chat_status(&app, &newcomer_token).await,
        200,
        "newcomer stays"
    );

    // A name in the file and in the database: refused, and named.
    add_user(
        &app,
        &admin,
        json!({"username": "dbuser", "password": "dbuser-pass"}),
    )
    .await;
    let twice = "\n[[auth.users]]\nusername = \"dbuser\"\npassword = \"other-pass\"\n";
    write(&format!("{admin_only}{newcomer}{twice}"), &same);
    let (status, body) = reload(admin.clone()).await;
    assert_eq!((status, code(&body)), (400, "invalid_config"), "{body}");
    assert!(body.to_string().contains("dbuser"), "{body}");
    assert_eq!(app.login("dbuser", "dbuser-pass").await.status(), 200);
    assert_eq!(app.login("dbuser", "other-pass").await.status(), 401);
    assert_eq!(chat_status(&app, &newcomer_token).await, 200);

    // A setting that needs a restart is reported, not applied.
    write(&format!("{admin_only}{newcomer}"), &|text| {
        text.replace("port = 0", "port = 1")
    });
    let (status, report) = reload(admin.clone()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["needs_restart"], json!(["server.port"]), "{report}");
    assert_eq!(
        chat_status(&app, &admin).await,
        200,
        "still on the same port"
    );
}

#[tokio::test]
async fn a_gateway_started_without_a_config_file_refuses_a_reload() {
    let app = spawn_app_with(|s| s.users = Some(admin_and_user(""))).await;
    let admin = app.token(ADMIN).await;
    let (status, body) = call_json(&app, Method::POST, "/admin/reload", &admin, None).await;
    assert_eq!((status, code(&body)), (400, "invalid_config"), "{body}");
    assert_eq!(chat_status(&app, &admin).await, 200);
}

#[tokio::test]
async fn api_keys_false_turns_keys_off_on_reload() {
    let (app, path) = spawn_app_from_file(|s| s.users = Some(admin_and_user(""))).await;
    let user1 = app.token(USER1).await;
    let made = new_key(&app, &user1, json!({"name": "laptop"})).await;
    assert_eq!(chat_status(&app, &made.key).await, 200);
    let settings = Settings {
        users: Some(admin_and_user("")),
        auth_extra: "api_keys = false".into(),
        ..Settings::default()
    };
    let text = config_toml(
        &settings,
        &app.fake.base_url(),
        &app.api_key,
        &app.jwt_secret,
    );
    std::fs::write(&path, text).expect("rewrite the config");
    let admin = app.token(ADMIN).await;
    let (status, report) = call_json(&app, Method::POST, "/admin/reload", &admin, None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(chat_status(&app, &made.key).await, 401);
    let (status, body) = call_json(
        &app,
        Method::POST,
        "/v1/keys",
        &user1,
        Some(json!({"name": "another"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "api_keys_disabled"), "{body}");
    assert_eq!(
        chat_status(&app, &user1).await,
        200,
        "login tokens still work"
    );
}
