//! The usage ledger lands every upstream-bound request, with the right
//! numbers, in a real SQLite file and a real PostgreSQL database.

mod common;

use std::time::Duration;

use common::{chat_body, chat_body_with, random_hex, spawn_app_with, TestApp, ADMIN, USER1};
use deepseek_proxy::config::{Storage, StorageConfig};
use deepseek_proxy::ledger::{Filter, GroupBy, Ledger, UsageRecord};
use futures_util::StreamExt;
use serde_json::json;
use sqlx::{AnyPool, Row};

/// Drives one request of each kind; returns their request ids.
async fn drive(app: &TestApp) -> [String; 5] {
    let ids =
        ["stream", "plain", "aborted", "failed", "models"].map(|k| format!("{k}-{}", random_hex()));
    let token = app.token(ADMIN).await;
    let other = app.token(USER1).await;
    let send = |id: &str, token: &str, body: serde_json::Value| {
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(token.to_owned())
            .header("x-request-id", id.to_owned())
            .json(&body)
            .send()
    };
    let r = send(&ids[0], &token, chat_body(true))
        .await
        .expect("stream");
    let _ = r.bytes().await;
    // V4 Pro, thinking on by default.
    let mut reasoner = chat_body(false);
    reasoner["model"] = json!("deepseek-v4-pro");
    let r = send(&ids[1], &token, reasoner).await.expect("plain");
    let _ = r.bytes().await;
    let slow = chat_body_with(true, json!({"chunks": 30, "chunk_delay_ms": 50}));
    let r = send(&ids[2], &other, slow).await.expect("aborted");
    let mut body = r.bytes_stream();
    let _ = body.next().await;
    let _ = body.next().await;
    drop(body);
    let r = send(
        &ids[3],
        &token,
        chat_body_with(false, json!({"fail": {"status": 500}})),
    )
    .await
    .expect("failed");
    assert_eq!(r.status(), 502);
    let r = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .header("x-request-id", ids[4].clone())
        .send()
        .await
        .expect("models");
    let _ = r.bytes().await;
    ids
}

async fn rows(url: &str) -> Vec<sqlx::any::AnyRow> {
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(url).await.expect("connect to the ledger");
    sqlx::query(
        "SELECT request_id, username, token_id, route, model, stream, status, upstream_status, \
         error_code, prompt_tokens, completion_tokens, reasoning_tokens, \
         completion_tokens_estimated, bytes_out, client_ip, outcome, requested_model, format, \
         cached_tokens, cache_miss_tokens, billable FROM usage_log",
    )
    .fetch_all(&pool)
    .await
    .expect("query")
}

async fn check(app: &TestApp, url: &str) {
    let ids = drive(app).await;
    // Let the aborted request's line be written, then flush the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.ledger.flush().await;
    let rows = rows(url).await;
    let get = |id: &str| {
        rows.iter()
            .find(|r| r.get::<String, _>("request_id") == id)
            .unwrap_or_else(|| panic!("no row for {id}"))
    };
    let i = |r: &sqlx::any::AnyRow, c: &str| r.get::<Option<i64>, _>(c);
    let s = |r: &sqlx::any::AnyRow, c: &str| r.get::<Option<String>, _>(c);

    let stream = get(&ids[0]);
    assert_eq!(s(stream, "username").as_deref(), Some("admin"));
    assert_eq!(s(stream, "route").as_deref(), Some("chat"));
    assert_eq!(
        s(stream, "model").as_deref(),
        Some("deepseek-flash"),
        "the served model"
    );
    assert_eq!(
        s(stream, "requested_model").as_deref(),
        Some("deepseek-chat")
    );
    assert_eq!(s(stream, "format").as_deref(), Some("chat"));
    assert_eq!(
        (i(stream, "cached_tokens"), i(stream, "cache_miss_tokens")),
        (Some(0), Some(11))
    );
    assert_eq!(i(stream, "billable"), Some(1));
    assert_eq!(i(stream, "stream"), Some(1));
    assert_eq!(
        (i(stream, "status"), i(stream, "upstream_status")),
        (Some(200), Some(200))
    );
    assert_eq!(i(stream, "prompt_tokens"), Some(11));
    assert!(i(stream, "completion_tokens").is_some_and(|n| n > 0));
    assert_eq!(i(stream, "completion_tokens_estimated"), None);
    assert_eq!(s(stream, "outcome").as_deref(), Some("completed"));
    assert_eq!(
        s(stream, "token_id").map(|t| t.len()),
        Some(32),
        "the jti, not the token"
    );
    assert!(i(stream, "bytes_out").is_some_and(|n| n > 0));
    assert_eq!(s(stream, "client_ip").as_deref(), Some("127.0.0.1"));

    let plain = get(&ids[1]);
    assert_eq!(i(plain, "stream"), Some(0));
    assert_eq!(
        i(plain, "reasoning_tokens"),
        Some(10),
        "reasoning tokens of the reasoner"
    );

    let aborted = get(&ids[2]);
    assert_eq!(s(aborted, "username").as_deref(), Some("user1"));
    assert_eq!(s(aborted, "outcome").as_deref(), Some("client_aborted"));
    assert_eq!(
        i(aborted, "completion_tokens"),
        None,
        "never a zero posing as a measurement"
    );
    assert!(i(aborted, "completion_tokens_estimated").is_some_and(|n| n > 0));

    let failed = get(&ids[3]);
    assert_eq!(i(failed, "status"), Some(502));
    assert_eq!(i(failed, "upstream_status"), Some(500));
    assert_eq!(s(failed, "error_code").as_deref(), Some("upstream_error"));
    assert_eq!(s(failed, "outcome").as_deref(), Some("upstream_failed"));
    assert_eq!(i(failed, "prompt_tokens"), None);

    let models = get(&ids[4]);
    assert_eq!(s(models, "route").as_deref(), Some("models"));
    assert_eq!(rows.len(), 5, "logins and other routes are not ledger rows");

    // The reads behind the admin API and the usage command, on this backend.
    let filter = Filter {
        from_ms: 0,
        to_ms: None,
        user: Some("admin".into()),
        key: None,
    };
    let by_model = app
        .state
        .ledger
        .totals(&filter, GroupBy::Model)
        .await
        .expect("totals");
    let total: i64 = by_model.iter().map(|t| t.requests).sum();
    assert_eq!(total, 4, "{by_model:?}");
    let by_day = app
        .state
        .ledger
        .totals(&Filter::default(), GroupBy::Day)
        .await
        .expect("days");
    assert_eq!(by_day.iter().map(|t| t.requests).sum::<i64>(), 5);
    let recent = app
        .state
        .ledger
        .recent(Some("user1"), 10)
        .await
        .expect("recent");
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].outcome, "client_aborted");
}

#[tokio::test]
async fn every_kind_of_request_lands_in_sqlite_with_the_right_numbers() {
    let dir = std::env::temp_dir().join(format!("ledger-{}", random_hex()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("usage.db");
    let path_text = path.to_string_lossy().to_string();
    let storage = format!("sqlite_path = \"{path_text}\"");
    let app = spawn_app_with(|s| s.storage = storage.clone()).await;
    check(&app, &format!("sqlite://{path_text}")).await;

    // The usage command reads the same ledger through the same config.
    let settings = common::Settings {
        storage,
        ..common::Settings::default()
    };
    let config = dir.join("config.toml");
    let text = common::config_toml(&settings, "http://127.0.0.1:9/v1", "", &"s".repeat(40));
    std::fs::write(&config, text).expect("config");
    let usage = |by: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deepseek_proxy"))
            .arg("--config")
            .arg(&config)
            .args(["usage", "--since", "1d", "--by", by])
            .env_remove("OPENAI_API_KEY")
            .output()
            .expect("run usage");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let by_user = usage("user");
    let admin = by_user
        .lines()
        .find(|l| l.starts_with("admin"))
        .expect("admin row");
    assert_eq!(admin.split_whitespace().nth(1), Some("4"), "{by_user}");
    let user1 = by_user
        .lines()
        .find(|l| l.starts_with("user1"))
        .expect("user1 row");
    assert_eq!(user1.split_whitespace().nth(1), Some("1"), "{by_user}");
    assert!(
        user1.split_whitespace().nth(6).is_some_and(|n| n != "0"),
        "estimate shown: {by_user}"
    );
    // Its cost is an estimate, and marked so.
    assert!(
        user1
            .split_whitespace()
            .nth(7)
            .is_some_and(|c| c.ends_with('*')),
        "estimated cost marked: {by_user}"
    );
    assert!(usage("model").contains("deepseek-v4-pro"));
    let today = usage("day");
    assert!(
        today.lines().nth(1).is_some_and(|l| l.starts_with("20")),
        "{today}"
    );
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A throw-away database on the PostgreSQL at `DATABASE_URL`, else on
/// 127.0.0.1:5432; `None` (skipped loudly, or failing under CI) without one.
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
            eprintln!("\n!!! SKIPPED: PostgreSQL ledger test: no server at {admin}: {e} !!!\n");
            return None;
        }
    };
    let name = format!("ledger_test_{}", random_hex());
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

#[tokio::test]
async fn every_kind_of_request_lands_in_postgres_with_the_right_numbers() {
    let Some((admin, url, name)) = postgres().await else {
        return;
    };
    let storage = format!("url = \"{url}\"");
    let app = spawn_app_with(|s| s.storage = storage).await;
    check(&app, &url).await;
    drop(app);
    let pool = AnyPool::connect(&admin).await.expect("admin connection");
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await;
}

/// 1,234 rows: several batches, several multi-row statements per batch, and
/// a short last statement; then one row with every field set, read back
/// whole (every column in its place, in either writer).
async fn many_rows_land_whole(storage: Storage) {
    let ledger = Ledger::open(&StorageConfig {
        backend: storage,
        queue_capacity: 5000,
        journal_path: None,
    })
    .await
    .expect("ledger opens");
    let n = 1234;
    for i in 0..n {
        ledger.record(UsageRecord {
            request_id: format!("bulk-{i}"),
            ts_ms: 1_700_000_000_000 + i,
            username: format!("user{}", i % 3),
            token_id: format!("{i:032x}"),
            route: "chat".into(),
            model: (i % 2 == 0).then(|| "deepseek-chat".to_owned()),
            stream: i % 2 == 1,
            status: 200,
            prompt_tokens: Some(i),
            completion_tokens: Some(1),
            latency_ms: 1.5,
            client_ip: "127.0.0.1".into(),
            outcome: "completed".into(),
            ..UsageRecord::default()
        });
    }
    let full = UsageRecord {
        request_id: "full".into(),
        ts_ms: 1_800_000_000_000,
        username: "user\"full'".into(),
        token_id: "f".repeat(32),
        key_id: Some("key-1".into()),
        upstream: Some("secondary".into()),
        attempts: Some(2),
        route: "/anthropic/v1/messages".into(),
        format: "anthropic".into(),
        model: Some("deepseek-v4-pro".into()),
        requested_model: Some("claude-opus-4".into()),
        stream: true,
        status: 200,
        upstream_status: Some(201),
        error_code: Some("none".into()),
        prompt_tokens: Some(7),
        completion_tokens: Some(8),
        cached_tokens: Some(3),
        cache_miss_tokens: Some(4),
        reasoning_tokens: Some(5),
        completion_tokens_estimated: Some(9),
        latency_ms: 12.25,
        ttfb_ms: Some(0.5),
        bytes_in: 101,
        bytes_out: 202,
        client_ip: "10.1.2.3".into(),
        outcome: "completed".into(),
        billable: true,
        charged_tokens: Some(15),
        cost_micros: Some(1234),
        cost_estimated: true,
        currency: Some("USD".into()),
    };
    ledger.record(full.clone());
    ledger.flush().await;
    assert_eq!(ledger.dropped(), 0);
    let rows = ledger.recent(None, 2000).await.expect("recent");
    assert_eq!(rows.len(), n as usize + 1);
    assert_eq!(rows[0], full);
    let newest = &rows[1];
    assert_eq!(newest.request_id, format!("bulk-{}", n - 1));
    assert_eq!(newest.prompt_tokens, Some(n - 1));
    assert_eq!(newest.model.is_some(), (n - 1) % 2 == 0);
    assert!(newest.stream == ((n - 1) % 2 == 1));
    let filter = Filter {
        from_ms: 0,
        to_ms: None,
        user: None,
        key: None,
    };
    let totals = ledger.totals(&filter, GroupBy::User).await.expect("totals");
    let prompt: i64 = totals.iter().map(|t| t.prompt_tokens).sum();
    assert_eq!(prompt, (0..n).sum::<i64>() + 7);
}

#[tokio::test]
async fn large_batches_land_whole_in_sqlite() {
    many_rows_land_whole(Storage::Sqlite(":memory:".into())).await;
}

/// A file: the writer's own connection (`ledger::direct`), not sqlx's.
#[tokio::test]
async fn large_batches_land_whole_in_a_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("ledger-{}", random_hex()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("usage.db").to_string_lossy().to_string();
    many_rows_land_whole(Storage::Sqlite(path)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn large_batches_land_whole_in_postgres() {
    let Some((admin, url, name)) = postgres().await else {
        return;
    };
    many_rows_land_whole(Storage::Postgres(url.into())).await;
    let pool = AnyPool::connect(&admin).await.expect("admin connection");
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await;
}

/// An in-memory ledger (`--demo`'s, the tests') keeps its tables and rows
/// when the pool closes its one connection and opens another.
#[tokio::test]
async fn an_in_memory_ledger_survives_its_connection_being_replaced() {
    let ledger = Ledger::open(&StorageConfig {
        backend: Storage::Sqlite(":memory:".into()),
        queue_capacity: 100,
        journal_path: None,
    })
    .await
    .expect("ledger opens");
    ledger.record(UsageRecord {
        request_id: "before".into(),
        username: "user1".into(),
        outcome: "completed".into(),
        ..UsageRecord::default()
    });
    ledger.flush().await;
    let connection = ledger
        .pool()
        .acquire()
        .await
        .expect("the pool's connection");
    connection.close().await.expect("closed");
    let rows = ledger
        .recent(None, 10)
        .await
        .expect("the table is still there");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].request_id, "before");
}
