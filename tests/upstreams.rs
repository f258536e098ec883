//! Several upstreams (`[[upstreams]]`, `[routing]`), black-box: each
//! upstream is its own fake DeepSeek with its own key, and the tests watch
//! what every fake received, what the client got, and the ledger row.

mod common;

use std::time::Duration;

use common::{
    chat_body, closed_port_url, error_code, ledger_row, spawn_upstreams, sse_data, TestApp,
    UpstreamTable, UpstreamsApp, ADMIN,
};
use fake_deepseek::{Behavior, Failure, FakeDeepSeek};
use serde_json::{json, Value};

/// A client's view of one answer.
struct Answer {
    status: u16,
    request_id: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn post_raw(app: &TestApp, path: &str, token: &str, body: Vec<u8>) -> Answer {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.expect("a complete body").to_vec();
    Answer {
        status,
        request_id,
        body,
    }
}

async fn chat(app: &TestApp, token: &str, body: &Value) -> Answer {
    let answer = post_raw(
        app,
        "/v1/chat/completions",
        token,
        serde_json::to_vec(body).expect("json"),
    )
    .await;
    // The token's one slot is free again before the next request.
    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    answer
}

/// POSTs the fake received (probes would be GETs).
fn posts(fake: &FakeDeepSeek) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

fn failing(status: u16) -> Behavior {
    Behavior {
        fail: Some(Failure::Status(status)),
        ..Default::default()
    }
}

/// `a` (priority 0) and `b` (priority 1), with extra lines each.
fn a_then_b(a: &str, b: &str) -> Vec<UpstreamTable> {
    vec![
        UpstreamTable::new("a", &format!("priority = 0\n{a}")),
        UpstreamTable::new("b", &format!("priority = 1\n{b}")),
    ]
}

/// The upstream and attempts of the ledger row of `answer`.
async fn served_by(app: &TestApp, answer: &Answer) -> (String, i64) {
    let row = ledger_row(app, &answer.request_id).await;
    (
        row.upstream.unwrap_or_default(),
        row.attempts.unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------
// 1. Every failover trigger: `b` serves, the client sees one clean answer.

enum Trigger {
    ConnectRefused,
    Status(u16),
    WrongKey,
}

async fn b_serves_when_a_fails(trigger: Trigger) {
    let tables = match trigger {
        Trigger::ConnectRefused => vec![
            UpstreamTable::new("a", "priority = 0").at(&closed_port_url()),
            UpstreamTable::new("b", "priority = 1"),
        ],
        _ => a_then_b("", ""),
    };
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(tables, "", |_| {}).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    let benches = match trigger {
        Trigger::ConnectRefused => false,
        Trigger::Status(status) => {
            a.set_default(failing(status));
            matches!(status, 401..=403)
        }
        Trigger::WrongKey => {
            a.require_key("other");
            true
        }
    };
    let a_saw = |n: usize| match trigger {
        Trigger::ConnectRefused => 0,
        _ => n,
    };
    let token = app.token(ADMIN).await;

    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(posts(b), 1, "b saw the request once");
    assert_eq!(posts(a), a_saw(1), "a was tried first");
    let b_sent = b.responses().last().cloned().expect("b answered");
    assert_eq!(answer.body, b_sent.to_vec(), "b's answer, byte for byte");
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));

    // The next request: a benched one is skipped, any other is tried again.
    let again = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(again.status, 200);
    assert_eq!(posts(b), 2);
    if benches {
        assert_eq!(posts(a), 1, "a is benched after refusing its key");
        assert_eq!(served_by(&app, &again).await, ("b".to_owned(), 1));
    } else {
        assert_eq!(posts(a), a_saw(2), "a is tried again");
        assert_eq!(served_by(&app, &again).await, ("b".to_owned(), 2));
    }
}

#[tokio::test]
async fn a_refused_connection_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::ConnectRefused).await;
}

#[tokio::test]
async fn a_429_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::Status(429)).await;
}

#[tokio::test]
async fn a_500_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::Status(500)).await;
}

#[tokio::test]
async fn a_502_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::Status(502)).await;
}

#[tokio::test]
async fn a_503_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::Status(503)).await;
}

#[tokio::test]
async fn a_529_fails_over_to_the_next_upstream() {
    b_serves_when_a_fails(Trigger::Status(529)).await;
}

#[tokio::test]
async fn a_401_for_a_wrong_key_fails_over_and_benches_the_upstream() {
    b_serves_when_a_fails(Trigger::WrongKey).await;
}

#[tokio::test]
async fn a_401_status_fails_over_and_benches_the_upstream() {
    b_serves_when_a_fails(Trigger::Status(401)).await;
}

#[tokio::test]
async fn a_402_fails_over_and_benches_the_upstream() {
    b_serves_when_a_fails(Trigger::Status(402)).await;
}

#[tokio::test]
async fn a_403_fails_over_and_benches_the_upstream() {
    b_serves_when_a_fails(Trigger::Status(403)).await;
}

// ---------------------------------------------------------------------------
// 2. Non-triggers: the request's own error passes through, or (sent, no
//    head) is not retried unless `retry_sent_requests`.

/// DeepSeek's error body for `status`, as the fake writes it.
fn deepseek_error_body(status: u16) -> Vec<u8> {
    let (message, kind) = match status {
        400 => (
            "Invalid Format: Invalid request body format.",
            "invalid_request_error",
        ),
        404 => ("Not Found", "invalid_request_error"),
        422 => (
            "Invalid Parameters: messages must not be empty",
            "invalid_request_error",
        ),
        _ => ("Unexpected failure", "unknown_error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null,
                     "code": "invalid_request_error"}})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_requests_own_400_404_413_and_422_pass_through_and_the_next_upstream_never_sees_it() {
    for status in [400, 404, 413, 422] {
        let UpstreamsApp { app, fakes, .. } = spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
        let (a, b) = (&fakes[0], &fakes[1]);
        a.set_default(failing(status));
        let token = app.token(ADMIN).await;
        let answer = chat(&app, &token, &chat_body(false)).await;
        assert_eq!(answer.status, status);
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            String::from_utf8_lossy(&deepseek_error_body(status)),
            "a's body for {status}"
        );
        assert_eq!(posts(a), 1, "{status}");
        assert_eq!(posts(b), 0, "b never sees a {status}");
        assert_eq!(served_by(&app, &answer).await, ("a".to_owned(), 1));
    }
}

fn hanging() -> Behavior {
    Behavior {
        fail: Some(Failure::Hang),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_sent_request_without_an_answer_head_is_not_retried_by_default() {
    let UpstreamsApp { app, fakes, .. } =
        spawn_upstreams(a_then_b("", ""), "", |s| s.timeout_seconds = 1).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.set_default(hanging());
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.code(), "upstream_timeout");
    assert_eq!(posts(a), 1);
    assert_eq!(posts(b), 0, "DeepSeek may bill it: b never sees it");
    assert_eq!(served_by(&app, &answer).await, ("a".to_owned(), 1));
}

#[tokio::test]
async fn a_sent_request_without_an_answer_head_fails_over_with_retry_sent_requests() {
    let UpstreamsApp { app, fakes, .. } =
        spawn_upstreams(a_then_b("", ""), "retry_sent_requests = true", |s| {
            s.timeout_seconds = 1
        })
        .await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.set_default(hanging());
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(posts(a), 1);
    assert_eq!(posts(b), 1);
    let b_sent = b.responses().last().cloned().expect("b answered");
    assert_eq!(answer.body, b_sent.to_vec());
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
}

// ---------------------------------------------------------------------------
// 3. Mid-stream: no failover once a byte went to the client.

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_the_error_event_and_never_fails_over() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.set_default(Behavior {
        fail: Some(Failure::ResetAfter(2)),
        ..Default::default()
    });
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(true)).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    let events = sse_data(&text);
    assert_eq!(events.len(), 3, "two relayed chunks then the error: {text}");
    assert!(!text.contains("[DONE]"));
    let last: Value = serde_json::from_str(&events[2]).expect("json");
    assert_eq!(last["error"]["code"], "upstream_stream_failed", "{text}");
    assert!(text.ends_with("\n\n"));
    assert_eq!(posts(a), 1);
    assert_eq!(posts(b), 0, "no failover after the first byte");
    assert_eq!(served_by(&app, &answer).await, ("a".to_owned(), 1));
}

// ---------------------------------------------------------------------------
// 4. When every upstream fails: the last error, mapped as today.

#[tokio::test]
async fn when_every_upstream_fails_the_client_gets_the_last_error_mapped_as_today() {
    // (a's status, b's status, the client's status and code)
    for (a_status, b_status, status, code) in [
        (503, 500, 502, "upstream_error"),
        (500, 503, 503, "upstream_overloaded"),
        (502, 429, 429, "upstream_rate_limited"),
    ] {
        let UpstreamsApp { app, fakes, .. } = spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
        let (a, b) = (&fakes[0], &fakes[1]);
        a.set_default(failing(a_status));
        b.set_default(failing(b_status));
        let token = app.token(ADMIN).await;
        let answer = chat(&app, &token, &chat_body(false)).await;
        assert_eq!(answer.status, status, "a {a_status}, b {b_status}");
        assert_eq!(answer.code(), code, "a {a_status}, b {b_status}");
        assert_eq!((posts(a), posts(b)), (1, 1));
        let row = ledger_row(&app, &answer.request_id).await;
        assert_eq!(row.upstream.as_deref(), Some("b"));
        assert_eq!(row.attempts, Some(2));
        assert_eq!(row.upstream_status, Some(i64::from(b_status)));
    }
}

#[tokio::test]
async fn failover_stops_after_failover_attempts_further_upstreams() {
    let tables = vec![
        UpstreamTable::new("a", "priority = 0"),
        UpstreamTable::new("b", "priority = 1"),
        UpstreamTable::new("c", "priority = 2"),
    ];
    let UpstreamsApp { app, fakes, .. } =
        spawn_upstreams(tables, "failover_attempts = 1", |_| {}).await;
    fakes[0].set_default(failing(500));
    fakes[1].set_default(failing(503));
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.code(), "upstream_overloaded");
    assert_eq!(
        (posts(&fakes[0]), posts(&fakes[1]), posts(&fakes[2])),
        (1, 1, 0),
        "one further upstream, not two"
    );
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
}

// ---------------------------------------------------------------------------
// 5. Weights within a priority.

#[tokio::test]
async fn weights_1_and_3_split_4000_requests_by_a_chi_square_test_at_p_1e_6() {
    let tables = vec![
        UpstreamTable::new("light", "priority = 0\nweight = 1"),
        UpstreamTable::new("heavy", "priority = 0\nweight = 3"),
    ];
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(tables, "", |_| {}).await;
    let token = app.token(ADMIN).await;
    const N: usize = 4000;
    let body = chat_body(false);
    for i in 0..N {
        let answer = chat(&app, &token, &body).await;
        assert_eq!(answer.status, 200, "request {i}");
    }
    let (light, heavy) = (posts(&fakes[0]) as f64, posts(&fakes[1]) as f64);
    assert_eq!(light + heavy, N as f64, "one try each");
    let (e_light, e_heavy) = (N as f64 / 4.0, N as f64 * 3.0 / 4.0);
    let chi2 = (light - e_light).powi(2) / e_light + (heavy - e_heavy).powi(2) / e_heavy;
    // 1 degree of freedom, p = 1e-6: a fair picker fails this about once in
    // a million runs (p = 0.01 with 1,000 requests failed a CI run: 286
    // against 250 expected). 4,000 requests keep it sharp: light must fall
    // within 866..1134 of the 1,000 expected, so weights ignored (2000/2000,
    // chi-square 1333) or a 1:2.2 split (1250) fail.
    assert!(
        chi2 < 23.93,
        "light {light}, heavy {heavy}: chi-square {chi2:.2} >= 23.93"
    );
}

// ---------------------------------------------------------------------------
// 6. The circuit breaker, on the real clock.

#[tokio::test]
async fn the_breaker_opens_after_breaker_failures_probes_once_after_the_cooldown_and_closes() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(
        a_then_b("", ""),
        "breaker_failures = 2\nbreaker_cooldown_seconds = 1",
        |s| s.users = Some(users(3)),
    )
    .await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.set_default(failing(500));
    let token = app.token(ADMIN).await;
    let body = chat_body(false);

    for n in 1..=2 {
        let answer = chat(&app, &token, &body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(posts(a), n, "closed: a is tried");
        assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
    }
    // Open: a gets nothing.
    for _ in 0..3 {
        let answer = chat(&app, &token, &body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 1));
    }
    assert_eq!(posts(a), 2, "an open breaker sends a nothing");

    // Half-open after the cooldown: of three requests at once, exactly one
    // probes a (slowly, so the others arrive while it is out), which fails
    // and opens the breaker again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_default(Behavior {
        head_delay_ms: 300,
        ..failing(500)
    });
    let app = std::sync::Arc::new(app);
    let burst: Vec<_> = tokens(&app, 3)
        .await
        .iter()
        .map(|token| post_in_task(&app, token, chat_body(false)))
        .collect();
    let mut attempts = Vec::new();
    for task in burst {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 200);
        let (upstream, n) = served_by(&app, &answer).await;
        assert_eq!(upstream, "b");
        attempts.push(n);
    }
    attempts.sort();
    assert_eq!(attempts, [1, 1, 2], "one probe, the others straight to b");
    assert_eq!(posts(a), 3, "exactly one probe");
    for _ in 0..2 {
        let answer = chat(&app, &token, &body).await;
        assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 1));
    }
    assert_eq!(posts(a), 3, "a failed probe opens it again");

    // Healed: the next probe succeeds and closes the breaker.
    a.set_default(Behavior::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b_before = posts(b);
    for n in 4..=6 {
        let answer = chat(&app, &token, &body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(posts(a), n, "a serves again");
        assert_eq!(served_by(&app, &answer).await, ("a".to_owned(), 1));
    }
    assert_eq!(posts(b), b_before, "b is back to standby");
}

// ---------------------------------------------------------------------------
// 7. max_in_flight per upstream and model.

/// `admin` (role admin) and `u1`..`u{n}`.
fn users(n: usize) -> String {
    let mut text = String::from(
        "\n[[auth.users]]\nusername = \"admin\"\npassword = \"admin123\"\nrole = \"admin\"\n",
    );
    for i in 1..=n {
        text.push_str(&format!(
            "\n[[auth.users]]\nusername = \"u{i}\"\npassword = \"pass{i}\"\n"
        ));
    }
    text
}

async fn tokens(app: &TestApp, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(app.token((&format!("u{i}"), &format!("pass{i}"))).await);
    }
    out
}

async fn admin_upstreams(app: &TestApp, admin: &str) -> Value {
    let response = app
        .http
        .get(app.url("/admin/upstreams"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// `name`'s entry in `/admin/upstreams`.
fn entry<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {listing}"))
}

/// The sum of an entry's in-flight counts over its models.
fn in_flight(entry: &Value) -> u64 {
    entry["in_flight"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

fn slow_stream() -> Value {
    common::chat_body_with(true, json!({"chunks": 4, "chunk_delay_ms": 250}))
}

/// Streams `body` for `token` in a task.
fn post_in_task(
    app: &std::sync::Arc<TestApp>,
    token: &str,
    body: Value,
) -> tokio::task::JoinHandle<Answer> {
    let (app, token) = (app.clone(), token.to_owned());
    tokio::spawn(async move {
        let body = serde_json::to_vec(&body).expect("json");
        post_raw(&app, "/v1/chat/completions", &token, body).await
    })
}

#[tokio::test]
async fn a_burst_beyond_max_in_flight_per_model_overflows_to_the_next_upstream() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(
        a_then_b(
            "max_in_flight = 2\nmodels = [\"deepseek-flash\", \"deepseek-v4-pro\"]",
            "",
        ),
        "",
        |s| s.users = Some(users(5)),
    )
    .await;
    let admin = app.token(ADMIN).await;
    let tokens = tokens(&app, 5).await;
    let app = std::sync::Arc::new(app);
    // Four slow flash streams at once: a takes 2, b the other 2.
    let mut running: Vec<_> = tokens[..4]
        .iter()
        .map(|token| post_in_task(&app, token, slow_stream()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another model has its own places at a.
    let mut pro = slow_stream();
    pro["model"] = json!("deepseek-v4-pro");
    running.push(post_in_task(&app, &tokens[4], pro));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let during = admin_upstreams(&app, &admin).await;
    let a_now = &entry(&during, "a")["in_flight"];
    assert_eq!(a_now["deepseek-flash"], 2, "{during}");
    assert_eq!(a_now["deepseek-v4-pro"], 1, "{during}");
    assert_eq!(in_flight(entry(&during, "b")), 2, "{during}");

    let mut by = std::collections::HashMap::<String, usize>::new();
    for (i, task) in running.into_iter().enumerate() {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 200, "request {i}");
        assert!(String::from_utf8_lossy(&answer.body).contains("[DONE]"));
        let (upstream, attempts) = served_by(&app, &answer).await;
        assert_eq!(attempts, 1, "a full upstream costs no attempt");
        if i == 4 {
            assert_eq!(upstream, "a", "deepseek-v4-pro is not capped by flash");
        } else {
            *by.entry(upstream).or_default() += 1;
        }
    }
    assert_eq!(by.get("a"), Some(&2), "{by:?}");
    assert_eq!(by.get("b"), Some(&2), "{by:?}");
    assert_eq!((posts(&fakes[0]), posts(&fakes[1])), (3, 2));

    assert!(app.slots_free_within(Duration::from_secs(2)).await);
    let after = admin_upstreams(&app, &admin).await;
    assert_eq!(in_flight(entry(&after, "a")), 0, "{after}");
    assert_eq!(in_flight(entry(&after, "b")), 0, "{after}");
}

#[tokio::test]
async fn when_every_upstream_is_at_max_in_flight_the_client_gets_429_upstream_rate_limited() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(
        a_then_b("max_in_flight = 1", "max_in_flight = 1"),
        "",
        |s| s.users = Some(users(3)),
    )
    .await;
    let tokens = tokens(&app, 3).await;
    let app = std::sync::Arc::new(app);
    let running: Vec<_> = tokens[..2]
        .iter()
        .map(|token| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                let body = serde_json::to_vec(&slow_stream()).expect("json");
                post_raw(&app, "/v1/chat/completions", &token, body).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = chat(&app, &tokens[2], &chat_body(false)).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.code(), "upstream_rate_limited");
    for task in running {
        assert_eq!(task.await.expect("task").status, 200);
    }
    assert_eq!(
        (posts(&fakes[0]), posts(&fakes[1])),
        (1, 1),
        "the third reached none"
    );
}

// ---------------------------------------------------------------------------
// 8. Rename: the model as the host knows it, every other byte unchanged.

#[tokio::test]
async fn a_renamed_model_reaches_its_upstream_with_every_other_byte_unchanged() {
    let tables = vec![
        UpstreamTable::new("a", "priority = 0\nmodels = [\"deepseek-flash\"]"),
        UpstreamTable::new(
            "b",
            "priority = 1\nmodels = [\"deepseek-v4-pro\"]\n\
             rename = { \"deepseek-v4-pro\" = \"deepseek-ai/DeepSeek-V4-Pro\" }",
        ),
    ];
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(tables, "", |_| {}).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    let token = app.token(ADMIN).await;
    // Odd spacing, the model's name in the text too, and a field after it.
    let body = |model: &str| {
        format!(
            "{{ \"messages\": [{{\"role\":\"user\",\"content\":\"is deepseek-v4-pro here?\"}}],\n  \
             \"model\" :  \"{model}\", \"stream\":false, \"temperature\": 0.25 }}"
        )
    };

    // Control: a model that is not renamed arrives byte for byte, but for
    // the end-user id the gateway appends as the last member.
    let flash = post_raw(
        &app,
        "/v1/chat/completions",
        &token,
        body("deepseek-flash").into(),
    )
    .await;
    assert_eq!(flash.status, 200);
    let at_a = a.requests().last().expect("a got it").body.clone();
    let at_a = String::from_utf8_lossy(&at_a).into_owned();
    let sent = body("deepseek-flash");
    let open = &sent[..sent.len() - 1];
    let appended = at_a
        .strip_prefix(open)
        .unwrap_or_else(|| panic!("a got {at_a:?}"))
        .to_owned();
    let user_id = appended
        .strip_prefix(",\"user_id\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("only a user_id is appended: {appended:?}"));
    assert!(
        !user_id.is_empty()
            && user_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "{appended:?}"
    );
    assert_eq!(posts(b), 0);

    let pro = post_raw(
        &app,
        "/v1/chat/completions",
        &token,
        body("deepseek-v4-pro").into(),
    )
    .await;
    assert_eq!(posts(a), 1, "a does not serve deepseek-v4-pro");
    assert_eq!(posts(b), 1);
    let received = b.requests().last().expect("b got it").body.clone();
    let renamed = body("deepseek-ai/DeepSeek-V4-Pro");
    assert_eq!(
        String::from_utf8_lossy(&received),
        format!("{}{appended}", &renamed[..renamed.len() - 1]),
        "only the model's value changed"
    );
    // The fake knows no such model: its 400 passes through.
    assert_eq!(pro.status, 400);
    let row = ledger_row(&app, &pro.request_id).await;
    assert_eq!(row.upstream.as_deref(), Some("b"));
    assert_eq!(
        row.model.as_deref(),
        Some("deepseek-v4-pro"),
        "the served name"
    );
}

// ---------------------------------------------------------------------------
// 9. Routing by format and model.

#[tokio::test]
async fn an_upstream_only_for_anthropic_gets_no_chat_and_a_model_nobody_serves_is_not_served() {
    let tables = vec![
        UpstreamTable::new("claude", "priority = 0\nformats = [\"anthropic\"]"),
        UpstreamTable::new(
            "chat",
            "priority = 1\nformats = [\"chat\"]\nmodels = [\"deepseek-flash\"]",
        ),
    ];
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(tables, "", |_| {}).await;
    let (claude, chat_fake) = (&fakes[0], &fakes[1]);
    let token = app.token(ADMIN).await;

    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!((posts(claude), posts(chat_fake)), (0, 1));
    assert_eq!(served_by(&app, &answer).await, ("chat".to_owned(), 1));

    let messages = json!({
        "model": "deepseek-flash",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]
    });
    let answer = post_raw(
        &app,
        "/anthropic/v1/messages",
        &token,
        serde_json::to_vec(&messages).expect("json"),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!((posts(claude), posts(chat_fake)), (1, 1));
    assert_eq!(claude.requests()[0].path, "/anthropic/v1/messages");
    assert_eq!(served_by(&app, &answer).await, ("claude".to_owned(), 1));
    assert!(app.slots_free_within(Duration::from_secs(2)).await);

    // deepseek-v4-pro: chat serves only flash, claude serves no chat.
    let mut pro = chat_body(false);
    pro["model"] = json!("deepseek-v4-pro");
    let answer = chat(&app, &token, &pro).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.code(), "not_served");
    assert_eq!(
        (posts(claude), posts(chat_fake)),
        (1, 1),
        "nothing was sent"
    );
}

// ---------------------------------------------------------------------------
// 10. Visibility: /admin/upstreams and the metrics, never a key.

#[tokio::test]
async fn admin_upstreams_and_metrics_show_each_upstreams_health_and_counts_but_never_a_key() {
    let UpstreamsApp { app, fakes, keys } =
        spawn_upstreams(a_then_b("", ""), "breaker_failures = 1", |s| {
            s.users = Some(common::admin_and_user(""));
            s.server_extra = "metrics_addr = \"127.0.0.1:0\"".into();
        })
        .await;
    fakes[0].set_default(failing(503));
    let admin = app.token(ADMIN).await;
    let user = app.token(common::USER1).await;
    let answer = chat(&app, &admin, &chat_body(false)).await;
    assert_eq!(answer.status, 200);

    let forbidden = app
        .http
        .get(app.url("/admin/upstreams"))
        .bearer_auth(&user)
        .send()
        .await
        .expect("request");
    assert_eq!(forbidden.status(), 403);
    assert_eq!(error_code(forbidden).await, "admin_required");

    let response = app
        .http
        .get(app.url("/admin/upstreams"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    for key in &keys {
        assert!(!text.contains(key.as_str()), "a key in {text}");
    }
    let listing: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(listing["upstreams"].as_array().map(Vec::len), Some(2));
    let (a, b) = (entry(&listing, "a"), entry(&listing, "b"));
    assert_eq!(a["health"]["healthy"], false, "{a}");
    assert_eq!(a["health"]["state"], "open", "{a}");
    assert_eq!(a["health"]["last_error"], "upstream_overloaded", "{a}");
    assert_eq!(b["health"]["healthy"], true, "{b}");
    assert_eq!(b["health"]["state"], "closed", "{b}");
    assert_eq!(a["priority"], 0);
    assert_eq!(b["priority"], 1);
    assert_eq!(in_flight(a) + in_flight(b), 0);

    let metrics_url = format!("http://{}/metrics", app.metrics_addr.expect("metrics"));
    let metrics = app
        .http
        .get(&metrics_url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    for key in &keys {
        assert!(!metrics.contains(key.as_str()), "a key in the metrics");
    }
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in\n{metrics}"))
    };
    let p = "deepseek_proxy_";
    assert_eq!(
        sample(&format!(
            "{p}upstream_requests_total{{status=\"503\",upstream=\"a\"}}"
        )),
        1.0
    );
    assert_eq!(
        sample(&format!(
            "{p}upstream_requests_total{{status=\"200\",upstream=\"b\"}}"
        )),
        1.0
    );
    assert!(!metrics.contains(&format!(
        "{p}upstream_requests_total{{status=\"200\",upstream=\"a\"}}"
    )));
    assert_eq!(
        sample(&format!("{p}upstream_healthy{{upstream=\"a\"}}")),
        0.0
    );
    assert_eq!(
        sample(&format!("{p}upstream_healthy{{upstream=\"b\"}}")),
        1.0
    );
    let b_in_flight: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{p}upstream_in_flight{{")))
        .filter(|l| l.contains("upstream=\"b\""))
        .collect();
    assert!(!b_in_flight.is_empty(), "b's in-flight gauge in\n{metrics}");
    for line in b_in_flight {
        assert!(
            line.ends_with(" 0"),
            "nothing in flight after the answer: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// 11. The seed's config: `[deepseek]` is the one upstream.

#[tokio::test]
async fn the_seeds_single_deepseek_section_is_one_upstream_named_deepseek() {
    let app = common::spawn_app_with(|s| s.users = Some(common::admin_and_user(""))).await;
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        app.fake.responses().last().expect("answered").to_vec()
    );
    assert_eq!(served_by(&app, &answer).await, ("deepseek".to_owned(), 1));
    let listing = admin_upstreams(&app, &token).await;
    assert_eq!(
        listing["upstreams"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );
    assert_eq!(entry(&listing, "deepseek")["health"]["healthy"], true);
    assert!(!listing.to_string().contains(&app.api_key));
}

// ---------------------------------------------------------------------------
// The optional background probe (`GET /models`).

/// Polls `/admin/upstreams` until `name`'s `healthy` is `healthy`, for at
/// most 5 s.
async fn wait_healthy(app: &TestApp, admin: &str, name: &str, healthy: bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let listing = admin_upstreams(app, admin).await;
        if entry(&listing, name)["health"]["healthy"] == healthy {
            return entry(&listing, name).clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became healthy = {healthy}: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_background_probe_benches_an_upstream_whose_key_is_refused_before_any_request() {
    let UpstreamsApp { app, fakes, .. } =
        spawn_upstreams(a_then_b("", ""), "probe_interval_seconds = 1", |s| {
            s.users = Some(common::admin_and_user(""))
        })
        .await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.require_key("other");
    let admin = app.token(ADMIN).await;
    let benched = wait_healthy(&app, &admin, "a", false).await;
    assert_eq!(
        benched["health"]["last_error"], "upstream_auth_failed",
        "{benched}"
    );
    assert!(
        a.requests()
            .iter()
            .all(|r| r.method.as_str() == "GET" && r.path == "/models"),
        "only probes reached a"
    );
    assert!(
        b.requests().iter().any(|r| r.path == "/models"),
        "b is probed too"
    );

    let answer = chat(&app, &admin, &chat_body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(posts(a), 0, "no request had to find out");
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 1));
}

#[tokio::test]
async fn the_background_probe_does_not_close_a_breaker_before_its_cooldown_but_after_it() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(
        a_then_b("", ""),
        "probe_interval_seconds = 1\nbreaker_failures = 1\nbreaker_cooldown_seconds = 2",
        |s| s.users = Some(common::admin_and_user("")),
    )
    .await;
    let a = &fakes[0];
    a.set_default(failing(500));
    let admin = app.token(ADMIN).await;
    let answer = chat(&app, &admin, &chat_body(false)).await;
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
    let open = entry(&admin_upstreams(&app, &admin).await, "a").clone();
    assert_eq!(open["health"]["state"], "open", "{open}");

    // The probe asks `GET /models`, which can answer while completions
    // fail: its 200 must not bring A back before the cooldown. A probe
    // after the cooldown does.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let still = entry(&admin_upstreams(&app, &admin).await, "a").clone();
    assert_eq!(still["health"]["state"], "open", "{still}");
    a.set_default(Behavior::default());
    let closed = wait_healthy(&app, &admin, "a", true).await;
    assert_eq!(closed["health"]["state"], "closed", "{closed}");
    let answer = chat(&app, &admin, &chat_body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(served_by(&app, &answer).await, ("a".to_owned(), 1));
    assert_eq!(posts(a), 2);
}

// ---------------------------------------------------------------------------
// With no healthy upstream left, they are tried anyway: client-facing
// errors stay as they were with one upstream.

#[tokio::test]
async fn the_seeds_one_upstream_with_a_refused_key_answers_every_request_as_before() {
    let app = common::spawn_app().await;
    app.fake.require_key("other");
    let token = app.token(ADMIN).await;
    for n in 1..=3 {
        let answer = chat(&app, &token, &chat_body(false)).await;
        assert_eq!(answer.status, 502, "request {n}");
        assert_eq!(answer.code(), "upstream_auth_failed", "request {n}");
        assert_eq!(posts(&app.fake), n, "benched, but the only one: tried");
        assert_eq!(served_by(&app, &answer).await, ("deepseek".to_owned(), 1));
    }
}

#[tokio::test]
async fn the_seeds_one_upstream_keeps_answering_5xx_as_before_past_breaker_failures() {
    let app = common::spawn_app().await;
    app.fake.set_default(failing(500));
    let token = app.token(ADMIN).await;
    // The default breaker opens after 5 failures in a row.
    for n in 1..=7 {
        let answer = chat(&app, &token, &chat_body(false)).await;
        assert_eq!(answer.status, 502, "request {n}");
        assert_eq!(answer.code(), "upstream_error", "request {n}");
        assert_eq!(posts(&app.fake), n);
    }
}

#[tokio::test]
async fn when_every_upstream_is_benched_they_are_still_tried_and_the_last_error_returned() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.require_key("other");
    b.set_default(failing(402));
    let token = app.token(ADMIN).await;
    for n in 1..=2 {
        let answer = chat(&app, &token, &chat_body(false)).await;
        assert_eq!(answer.status, 502, "request {n}");
        assert_eq!(
            answer.code(),
            "upstream_insufficient_balance",
            "request {n}"
        );
        assert_eq!((posts(a), posts(b)), (n, n), "request {n}");
        assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
    }
}

// ---------------------------------------------------------------------------
// Failover for streams and other formats; errors as one upstream gave them.

#[tokio::test]
async fn a_streamed_request_fails_over_before_its_first_byte_and_relays_bs_stream_unchanged() {
    let UpstreamsApp { app, fakes, .. } = spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
    let (a, b) = (&fakes[0], &fakes[1]);
    a.set_default(failing(503));
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(true)).await;
    assert_eq!(answer.status, 200);
    assert_eq!((posts(a), posts(b)), (1, 1));
    let b_sent = b.responses().last().cloned().expect("b answered");
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        String::from_utf8_lossy(&b_sent),
        "b's stream, byte for byte"
    );
    assert_eq!(served_by(&app, &answer).await, ("b".to_owned(), 2));
}

#[tokio::test]
async fn failover_attempts_0_never_tries_a_second_upstream() {
    let UpstreamsApp { app, fakes, .. } =
        spawn_upstreams(a_then_b("", ""), "failover_attempts = 0", |_| {}).await;
    fakes[0].set_default(failing(503));
    let token = app.token(ADMIN).await;
    let answer = chat(&app, &token, &chat_body(false)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.code(), "upstream_overloaded");
    assert_eq!((posts(&fakes[0]), posts(&fakes[1])), (1, 0));
}

/// Status and JSON body of `path` when its one upstream answers `status`,
/// on the seed's config.
async fn seed_error(path: &str, body: &Value, status: u16) -> (u16, Value) {
    let app = common::spawn_app().await;
    app.fake.set_default(failing(status));
    let token = app.token(ADMIN).await;
    let answer = post_raw(&app, path, &token, serde_json::to_vec(body).expect("json")).await;
    (answer.status, answer.json())
}

#[tokio::test]
async fn the_last_error_of_a_failover_is_exactly_what_one_upstream_gave_in_each_format() {
    let anthropic = json!({
        "model": "deepseek-flash",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]
    });
    let responses = json!({"model": "deepseek-flash", "input": "hi"});
    for (path, body) in [
        ("/v1/chat/completions", chat_body(false)),
        ("/anthropic/v1/messages", anthropic),
        ("/v1/responses", responses),
    ] {
        for last in [500, 503, 429, 401] {
            let expected = seed_error(path, &body, last).await;
            assert!(expected.0 >= 400, "{path}: {expected:?}");
            let UpstreamsApp { app, fakes, .. } =
                spawn_upstreams(a_then_b("", ""), "", |_| {}).await;
            fakes[0].set_default(failing(502));
            fakes[1].set_default(failing(last));
            let token = app.token(ADMIN).await;
            let answer =
                post_raw(&app, path, &token, serde_json::to_vec(&body).expect("json")).await;
            assert_eq!(
                (answer.status, answer.json()),
                expected,
                "{path}, b answered {last}"
            );
            assert_eq!((posts(&fakes[0]), posts(&fakes[1])), (1, 1), "{path}");
        }
    }
}
