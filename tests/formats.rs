//! The formats the gateway speaks besides chat (Responses, Anthropic
//! Messages, the web tools), end to end over real TCP against the fake:
//! routes, the slot, the ledger row, quotas, the error dialect of each
//! route, the served-model policy, aliases and `user_id` isolation.
//!
//! The matrix (`Kind` × stream × scenario) runs through `check`, which
//! asserts the status, the body, the slot and the ledger row of each case.

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestApp, ADMIN, USER1};
use deepseek_proxy::ledger::UsageRecord;
use futures_util::StreamExt;
use serde_json::{json, Value};

const SOON: Duration = Duration::from_secs(3);

/// What the success cases script: a prompt of 20 tokens, 4 of them cache
/// hits, and a three-word reply (plus the fake's 10 reasoning words).
fn scripted() -> Value {
    json!({"cache_hit_tokens": 4, "prompt_tokens": 20, "reply": "one two three"})
}

/// The routes under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Responses,
    Anthropic,
    Search,
    Fetch,
}

/// The usage a scripted success must leave in the ledger:
/// (prompt, completion, cached, cache miss, reasoning).
type Tokens = (i64, i64, i64, i64, i64);

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Responses => "/v1/responses",
            Kind::Anthropic => "/anthropic/v1/messages",
            Kind::Search => "/v1/tools/search",
            Kind::Fetch => "/v1/tools/fetch",
        }
    }

    /// Where the fake receives it (the `/v1` of `base_url` is dropped).
    fn upstream_path(self) -> &'static str {
        match self {
            Kind::Chat => "/chat/completions",
            Kind::Responses => "/responses",
            Kind::Anthropic => "/anthropic/v1/messages",
            Kind::Search => "/v1/tools/search",
            Kind::Fetch => "/v1/tools/fetch",
        }
    }

    /// The route name in the ledger.
    fn route(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Responses => "responses",
            Kind::Anthropic => "messages",
            Kind::Search => "tool_search",
            Kind::Fetch => "tool_fetch",
        }
    }

    fn format(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Responses => "responses",
            Kind::Anthropic => "anthropic",
            Kind::Search | Kind::Fetch => "tools",
        }
    }

    fn is_tool(self) -> bool {
        matches!(self, Kind::Search | Kind::Fetch)
    }

    fn anthropic(self) -> bool {
        self == Kind::Anthropic
    }

    /// A valid body; `stream` is ignored by the tools.
    fn body(self, stream: bool, fake: Value) -> Value {
        let mut body = match self {
            Kind::Chat => json!({
                "model": "deepseek-flash",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream
            }),
            Kind::Responses => json!({"model": "deepseek-flash", "input": "hi", "stream": stream}),
            Kind::Anthropic => json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 256,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream
            }),
            Kind::Search => json!({"query": "rust async"}),
            Kind::Fetch => json!({"url": "https://example.com/page"}),
        };
        body["_fake"] = fake;
        body
    }

    /// The model the ledger records for [`Kind::body`].
    fn served(self) -> Option<&'static str> {
        match self {
            Kind::Chat | Kind::Responses | Kind::Anthropic => Some("deepseek-flash"),
            Kind::Search | Kind::Fetch => None,
        }
    }

    fn requested(self) -> Option<&'static str> {
        match self {
            Kind::Anthropic => Some("claude-sonnet-4-5"),
            _ => None,
        }
    }

    /// The usage of a [`scripted`] success.
    fn scripted_usage(self) -> Option<Tokens> {
        match self {
            Kind::Chat | Kind::Responses => Some((20, 13, 4, 16, 10)),
            // Anthropic's usage has no reasoning count.
            Kind::Anthropic => Some((20, 13, 4, 16, 0)),
            Kind::Search | Kind::Fetch => None,
        }
    }

    /// What the last event of a complete stream says.
    fn stream_end(self) -> &'static str {
        match self {
            Kind::Chat => "data: [DONE]\n\n",
            Kind::Responses => "event: response.completed\n",
            Kind::Anthropic => "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            Kind::Search | Kind::Fetch => unreachable!("tools do not stream"),
        }
    }

    /// A marker of generated text in a stream (so an abort after it has
    /// something to estimate).
    fn delta_marker(self) -> &'static str {
        match self {
            Kind::Chat => "reasoning_content\":\"The",
            Kind::Responses => "\"delta\":\"",
            Kind::Anthropic => "thinking_delta",
            Kind::Search | Kind::Fetch => unreachable!("tools do not stream"),
        }
    }
}

const SSE_KINDS: [Kind; 3] = [Kind::Chat, Kind::Responses, Kind::Anthropic];
const ALL_KINDS: [Kind; 5] = [
    Kind::Chat,
    Kind::Responses,
    Kind::Anthropic,
    Kind::Search,
    Kind::Fetch,
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn post(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn post_raw(app: &TestApp, path: &str, token: &str, body: &str) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The ledger row of a request, once it was written.
async fn row(app: &TestApp, id: &str) -> UsageRecord {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        app.state.ledger.flush().await;
        let rows = app.state.ledger.recent(None, 500).await.expect("recent");
        if let Some(row) = rows.into_iter().find(|r| r.request_id == id) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ledger row for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ledger_rows(app: &TestApp) -> Vec<UsageRecord> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.state.ledger.flush().await;
    app.state.ledger.recent(None, 500).await.expect("recent")
}

/// Requests the fake received on `path`.
fn forwarded(app: &TestApp, path: &str) -> usize {
    app.fake
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .count()
}

/// Asserts Anthropic's error shape and returns (`error.type`, `error.message`).
async fn anthropic_error(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["type"], "error", "{body}");
    let error = body["error"].as_object().expect("error object");
    assert_eq!(error.len(), 2, "only type and message: {body}");
    let kind = error["type"].as_str().expect("type").to_owned();
    let message = error["message"].as_str().expect("message").to_owned();
    (kind, message)
}

/// Asserts the OpenAI error shape and returns (`type`, `code`).
async fn openai_error(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(body.get("type").is_none(), "not Anthropic's shape: {body}");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    let kind = error["type"].as_str().expect("type").to_owned();
    let code = error["code"].as_str().expect("code").to_owned();
    (kind, code)
}

/// Asserts the route's error dialect: Anthropic's `error.type` on the
/// Anthropic route, OpenAI's `code` elsewhere.
async fn assert_dialect(kind: Kind, response: reqwest::Response, anthropic: &str, openai: &str) {
    if kind.anthropic() {
        let (error_type, _) = anthropic_error(response).await;
        assert_eq!(error_type, anthropic, "{kind:?}");
    } else {
        let (_, code) = openai_error(response).await;
        assert_eq!(code, openai, "{kind:?}");
    }
}

fn usage_of(row: &UsageRecord) -> Option<Tokens> {
    Some((
        row.prompt_tokens?,
        row.completion_tokens?,
        row.cached_tokens?,
        row.cache_miss_tokens?,
        row.reasoning_tokens?,
    ))
}

fn assert_no_usage(row: &UsageRecord) {
    assert_eq!(
        (
            row.prompt_tokens,
            row.completion_tokens,
            row.cached_tokens,
            row.cache_miss_tokens,
            row.reasoning_tokens
        ),
        (None, None, None, None, None),
        "{row:?}"
    );
}

/// Reads a stream until `marker` has arrived, then hangs up.
async fn read_until_then_drop(response: reqwest::Response, marker: &str) -> Vec<u8> {
    let mut body = response.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(marker) {
        let chunk = tokio::time::timeout(SOON, body.next())
            .await
            .expect("a chunk in time")
            .expect("more chunks")
            .expect("bytes");
        got.extend_from_slice(&chunk);
    }
    drop(body);
    got
}

fn is_pseudonym(id: &str) -> bool {
    id.strip_prefix("dsp-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

// ---------------------------------------------------------------------------
// The matrix: route × stream × scenario
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// A scripted success: exact usage in the ledger, byte-exact relay.
    Success,
    /// DeepSeek answers 400: passed through, in the route's shape.
    UpstreamBadRequest,
    /// DeepSeek answers 503: the gateway's 503 `upstream_overloaded`.
    UpstreamOverloaded,
    /// DeepSeek's connection resets after two content frames.
    MidStreamFailure,
    /// The client hangs up once some content has arrived.
    ClientAbort,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: Kind,
    stream: bool,
    scenario: Scenario,
}

impl Case {
    fn fake(self) -> Value {
        match self.scenario {
            Scenario::Success => scripted(),
            Scenario::UpstreamBadRequest => json!({"fail": {"status": 400}}),
            Scenario::UpstreamOverloaded => json!({"fail": {"status": 503}}),
            Scenario::MidStreamFailure if self.stream => json!({"fail": {"reset_after": 2}}),
            // A JSON body is two frames: reset after the first half.
            Scenario::MidStreamFailure => json!({"fail": {"reset_after": 1}}),
            Scenario::ClientAbort if self.stream => {
                json!({"chunks": 40, "chunk_delay_ms": 50})
            }
            // A JSON body: the head comes at once, its first half in 5 s.
            Scenario::ClientAbort => json!({"chunk_delay_ms": 5000}),
        }
    }
}

/// Runs one case with `token` (of `user`) and checks everything it must
/// leave behind: status, body, dialect, the slot, the ledger row.
async fn check(app: &TestApp, token: &str, user: &str, case: Case) {
    let Case {
        kind,
        stream,
        scenario,
    } = case;
    let stream = stream && !kind.is_tool();
    let before = forwarded(app, kind.upstream_path());
    let cancelled_before = app.fake.cancelled();
    let body = kind.body(stream, case.fake());
    let response = post(app, kind.path(), token, &body).await;
    let id = request_id(&response);
    let status = response.status().as_u16();
    match scenario {
        Scenario::Success => {
            assert_eq!(status, 200, "{case:?}");
            let content_type = header(&response, "content-type").unwrap_or_default();
            assert_eq!(
                content_type.starts_with("text/event-stream"),
                stream,
                "{case:?}: {content_type}"
            );
            let got = response.bytes().await.expect("body");
            let sent = app.fake.responses().last().cloned().expect("a response");
            assert_eq!(got, sent, "{case:?}: relayed byte for byte");
            let text = String::from_utf8_lossy(&got);
            if stream {
                let end = kind.stream_end();
                if kind == Kind::Responses {
                    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
                    assert!(last.starts_with(end), "{case:?}: ends with {last}");
                } else {
                    assert!(text.ends_with(end), "{case:?}: {text}");
                }
            } else {
                let json: Value = serde_json::from_str(text.trim()).expect("JSON answer");
                assert!(json.is_object(), "{case:?}");
            }
        }
        Scenario::UpstreamBadRequest => {
            assert_eq!(status, 400, "{case:?}");
            let body: Value = response.json().await.expect("json");
            let expected = if kind.anthropic() {
                json!({"type": "error", "error": {"type": "invalid_request_error",
                       "message": "Invalid request body format."}})
            } else {
                json!({"error": {"message": "Invalid Format: Invalid request body format.",
                       "type": "invalid_request_error", "param": null,
                       "code": "invalid_request_error"}})
            };
            assert_eq!(body, expected, "{case:?}: DeepSeek's own body, untouched");
        }
        Scenario::UpstreamOverloaded => {
            assert_eq!(status, 503, "{case:?}");
            assert_eq!(
                header(&response, "retry-after"),
                Some("7"),
                "{case:?}: DeepSeek's Retry-After"
            );
            assert_dialect(kind, response, "overloaded_error", "upstream_overloaded").await;
        }
        Scenario::MidStreamFailure if stream => {
            assert_eq!(status, 200, "{case:?}");
            let got = response.bytes().await.expect("the stream ends cleanly");
            let sent = app.fake.responses().last().cloned().expect("partial");
            assert!(
                got.starts_with(&sent) && got.len() > sent.len(),
                "{case:?}: what DeepSeek sent, then the gateway's event"
            );
            let tail = std::str::from_utf8(&got[sent.len()..]).expect("utf8");
            let relayed = String::from_utf8_lossy(&sent);
            check_stream_error(kind, &relayed, tail);
        }
        Scenario::MidStreamFailure => {
            assert_eq!(status, 200, "{case:?}");
            assert!(
                response.bytes().await.is_err(),
                "{case:?}: a cut JSON body is a broken connection, never a complete-looking one"
            );
        }
        Scenario::ClientAbort => {
            assert_eq!(status, 200, "{case:?}");
            if stream {
                read_until_then_drop(response, kind.delta_marker()).await;
            } else {
                drop(response);
            }
            assert!(
                app.fake.wait_cancelled(cancelled_before + 1, SOON).await,
                "{case:?}: DeepSeek saw the hang-up"
            );
        }
    }
    assert_eq!(
        forwarded(app, kind.upstream_path()),
        before + 1,
        "{case:?}: forwarded once, to {}",
        kind.upstream_path()
    );
    assert!(app.slots_free_within(SOON).await, "{case:?}: slot freed");

    let row = row(app, &id).await;
    assert_eq!(row.username, user, "{case:?}");
    assert_eq!(row.route, kind.route(), "{case:?}");
    assert_eq!(row.format, kind.format(), "{case:?}");
    assert_eq!(row.model.as_deref(), kind.served(), "{case:?}");
    assert_eq!(row.requested_model.as_deref(), kind.requested(), "{case:?}");
    assert_eq!(row.stream, stream, "{case:?}");
    match scenario {
        Scenario::Success => {
            assert_eq!((row.status, row.upstream_status), (200, Some(200)));
            assert_eq!(row.outcome, "completed", "{case:?}");
            assert_eq!(row.error_code, None, "{case:?}");
            assert_eq!(usage_of(&row), kind.scripted_usage(), "{case:?}: {row:?}");
            if kind.is_tool() {
                assert_no_usage(&row);
            }
            assert_eq!(row.completion_tokens_estimated, None, "{case:?}");
            assert!(row.billable, "{case:?}: a 200 with content is billable");
        }
        Scenario::UpstreamBadRequest => {
            assert_eq!((row.status, row.upstream_status), (400, Some(400)));
            assert_no_usage(&row);
            assert!(!row.billable, "{case:?}");
        }
        Scenario::UpstreamOverloaded => {
            assert_eq!((row.status, row.upstream_status), (503, Some(503)));
            assert_eq!(row.error_code.as_deref(), Some("upstream_overloaded"));
            assert_eq!(row.outcome, "upstream_failed", "{case:?}");
            assert_no_usage(&row);
            assert!(!row.billable, "{case:?}");
        }
        Scenario::MidStreamFailure => {
            assert_eq!((row.status, row.upstream_status), (200, Some(200)));
            assert_eq!(row.outcome, "upstream_failed", "{case:?}");
            assert_no_usage(&row);
        }
        Scenario::ClientAbort => {
            assert_eq!(row.outcome, "client_aborted", "{case:?}");
            assert_no_usage(&row);
            if stream {
                assert!(
                    row.completion_tokens_estimated.is_some_and(|n| n > 0),
                    "{case:?}: an estimate of what was streamed: {row:?}"
                );
            } else {
                assert_eq!(row.completion_tokens_estimated, None, "{case:?}");
            }
        }
    }
}

/// The gateway's last event after a stream failed, in the format's shape,
/// and never a fabricated ending.
fn check_stream_error(kind: Kind, relayed: &str, tail: &str) {
    let message = "the connection to DeepSeek failed mid-response";
    match kind {
        Kind::Responses => {
            let data = tail
                .strip_prefix("event: error\ndata: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("an error event: {tail:?}"));
            let event: Value = serde_json::from_str(data).expect("json");
            let last = common::sse_data(relayed)
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["sequence_number"].as_u64())
                .max()
                .expect("numbered events were relayed");
            assert_eq!(event["type"], "error", "{event}");
            assert_eq!(event["code"], "upstream_stream_failed", "{event}");
            assert_eq!(event["message"], message, "{event}");
            assert_eq!(event["sequence_number"], last + 1, "{event}");
            // Two content frames after the opening events (reasoning on).
            assert_eq!(last, 5, "{relayed}");
            assert!(!relayed.contains("response.completed"));
        }
        Kind::Anthropic => {
            let expected = json!({"type": "error",
                                  "error": {"type": "api_error", "message": message}});
            assert_eq!(tail, format!("event: error\ndata: {expected}\n\n"));
            assert!(!relayed.contains("message_stop"));
            assert!(!relayed.contains("message_delta"));
        }
        Kind::Chat => {
            let data = tail
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("an error chunk: {tail:?}"));
            let event: Value = serde_json::from_str(data).expect("json");
            assert_eq!(event["error"]["code"], "upstream_stream_failed", "{event}");
            assert_eq!(event["error"]["message"], message, "{event}");
            assert!(!relayed.contains("[DONE]"));
        }
        Kind::Search | Kind::Fetch => unreachable!(),
    }
}

/// Every kind in `kinds`, streamed and not, in one app with one token.
async fn run_matrix(kinds: &[Kind], scenario: Scenario) {
    let app = spawn_app().await;
    let token = app.token(USER1).await;
    for &kind in kinds {
        let streams: &[bool] = if kind.is_tool() {
            &[false]
        } else {
            &[true, false]
        };
        for &stream in streams {
            let case = Case {
                kind,
                stream,
                scenario,
            };
            check(&app, &token, "user1", case).await;
        }
    }
    // The token is free for a plain request afterwards.
    let after = post(
        &app,
        Kind::Responses.path(),
        &token,
        &Kind::Responses.body(false, json!({})),
    )
    .await;
    assert_eq!(after.status(), 200);
}

mod matrix {
    use super::*;

    #[tokio::test]
    async fn responses_streamed_or_not_relay_byte_for_byte_and_book_exact_usage() {
        run_matrix(&[Kind::Responses], Scenario::Success).await;
    }

    #[tokio::test]
    async fn anthropic_streamed_or_not_relay_byte_for_byte_and_book_exact_usage() {
        run_matrix(&[Kind::Anthropic], Scenario::Success).await;
    }

    #[tokio::test]
    async fn chat_books_cache_hits_and_misses_streamed_or_not() {
        run_matrix(&[Kind::Chat], Scenario::Success).await;
    }

    #[tokio::test]
    async fn tool_calls_book_a_billable_row_without_tokens() {
        run_matrix(&[Kind::Search, Kind::Fetch], Scenario::Success).await;
    }

    #[tokio::test]
    async fn deepseeks_400_passes_through_untouched_on_every_route() {
        run_matrix(&ALL_KINDS, Scenario::UpstreamBadRequest).await;
    }

    #[tokio::test]
    async fn deepseeks_503_is_upstream_overloaded_in_each_routes_dialect() {
        run_matrix(&ALL_KINDS, Scenario::UpstreamOverloaded).await;
    }

    #[tokio::test]
    async fn a_stream_cut_mid_way_ends_with_the_formats_own_error_event() {
        run_matrix(&SSE_KINDS, Scenario::MidStreamFailure).await;
    }

    #[tokio::test]
    async fn a_tool_answer_cut_mid_way_is_a_broken_connection() {
        run_matrix(&[Kind::Search, Kind::Fetch], Scenario::MidStreamFailure).await;
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_cancels_upstream_frees_the_slot_and_books_an_estimate() {
        run_matrix(&ALL_KINDS, Scenario::ClientAbort).await;
    }
}

mod upstream_errors {
    use super::*;

    #[tokio::test]
    async fn deepseeks_401_becomes_a_502_that_never_quotes_the_key_on_any_route() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for kind in ALL_KINDS {
            for stream in [true, false] {
                let body = kind.body(stream, json!({"fail": {"status": 401}}));
                let response = post(&app, kind.path(), &token, &body).await;
                assert_eq!(response.status(), 502, "{kind:?}");
                let text = response.text().await.expect("body");
                for secret in ["api key", "Authentication Fails", "****fake", &app.api_key] {
                    assert!(!text.contains(secret), "{kind:?} leaks {secret}: {text}");
                }
                let body: Value = serde_json::from_str(&text).expect("json");
                if kind.anthropic() {
                    assert_eq!(body["type"], "error", "{body}");
                    assert_eq!(body["error"]["type"], "api_error", "{body}");
                } else {
                    assert_eq!(body["error"]["code"], "upstream_auth_failed", "{body}");
                }
                assert!(app.slots_free_within(SOON).await);
            }
        }
    }

    #[tokio::test]
    async fn deepseeks_429_is_a_rate_limit_error_with_its_retry_after_on_every_route() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for kind in ALL_KINDS {
            let body = kind.body(false, json!({"fail": {"status": 429}}));
            let response = post(&app, kind.path(), &token, &body).await;
            assert_eq!(response.status(), 429, "{kind:?}");
            assert_eq!(header(&response, "retry-after"), Some("7"), "{kind:?}");
            assert_dialect(kind, response, "rate_limit_error", "upstream_rate_limited").await;
            assert!(app.slots_free_within(SOON).await);
        }
    }

    #[tokio::test]
    async fn a_stalled_stream_ends_with_a_timeout_error_event_in_its_format() {
        let app = spawn_app_with(|s| s.timeout_seconds = 1).await;
        let token = app.token(USER1).await;
        for kind in SSE_KINDS {
            let body = kind.body(true, json!({"fail": {"stall_after": 1}}));
            let response = post(&app, kind.path(), &token, &body).await;
            assert_eq!(response.status(), 200, "{kind:?}");
            let id = request_id(&response);
            let text = response.text().await.expect("the stream ends");
            let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
            match kind {
                Kind::Responses => {
                    let data = last.strip_prefix("event: error\ndata: ").expect(last);
                    let event: Value = serde_json::from_str(data).expect("json");
                    assert_eq!(event["code"], "upstream_idle_timeout", "{event}");
                    assert_eq!(event["type"], "error", "{event}");
                }
                Kind::Anthropic => {
                    let data = last.strip_prefix("event: error\ndata: ").expect(last);
                    let event: Value = serde_json::from_str(data).expect("json");
                    assert_eq!(event["type"], "error", "{event}");
                    assert_eq!(event["error"]["type"], "api_error", "{event}");
                }
                _ => {
                    let data = last.strip_prefix("data: ").expect(last);
                    let event: Value = serde_json::from_str(data).expect("json");
                    assert_eq!(event["error"]["code"], "upstream_idle_timeout", "{event}");
                }
            }
            assert!(app.slots_free_within(SOON).await, "{kind:?}");
            assert_eq!(row(&app, &id).await.outcome, "timed_out", "{kind:?}");
        }
    }
}

mod anthropic {
    use super::*;

    fn messages(model: &str, stream: bool) -> Value {
        json!({
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream
        })
    }

    #[tokio::test]
    async fn claude_opus_is_served_by_v4_pro_and_other_claude_names_by_flash() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (name, served) in [
            ("claude-opus-4-5", "deepseek-v4-pro"),
            ("claude-sonnet-4-5", "deepseek-flash"),
            ("claude-3-5-haiku-latest", "deepseek-flash"),
        ] {
            for stream in [false, true] {
                let response = post(
                    &app,
                    Kind::Anthropic.path(),
                    &token,
                    &messages(name, stream),
                )
                .await;
                assert_eq!(response.status(), 200, "{name}");
                let id = request_id(&response);
                let _ = response.bytes().await;
                // The name is forwarded as sent: DeepSeek maps it itself.
                let forwarded = app.fake.last_body().expect("forwarded");
                assert_eq!(forwarded["model"], name);
                let row = row(&app, &id).await;
                assert_eq!(row.model.as_deref(), Some(served), "{name}");
                assert_eq!(row.requested_model.as_deref(), Some(name));
                assert_eq!(row.format, "anthropic");
                assert_eq!(row.route, "messages");
            }
        }
    }

    #[tokio::test]
    async fn a_user_allowed_only_flash_is_refused_claude_opus_with_a_400_not_a_403() {
        let app = spawn_app_with(|s| {
            s.users = Some(common::admin_and_user("models = [\"deepseek-flash\"]"));
        })
        .await;
        let token = app.token(USER1).await;
        for stream in [false, true] {
            let response = post(
                &app,
                Kind::Anthropic.path(),
                &token,
                &messages("claude-opus-4-5", stream),
            )
            .await;
            assert_eq!(
                response.status(),
                400,
                "a 403 would send Claude Code to its login"
            );
            let (kind, message) = anthropic_error(response).await;
            assert_eq!(kind, "invalid_request_error");
            assert!(message.contains("may not use this model"), "{message}");
        }
        // The token counter applies the same policy.
        let response = post(
            &app,
            "/anthropic/v1/messages/count_tokens",
            &token,
            &messages("claude-opus-4-5", false),
        )
        .await;
        assert_eq!(response.status(), 400);
        assert_eq!(anthropic_error(response).await.0, "invalid_request_error");
        assert!(app.fake.requests().is_empty(), "nothing was forwarded");
        assert!(app.slots_free_within(SOON).await);
        for allowed in ["claude-sonnet-4-5", "deepseek-flash", "deepseek-chat"] {
            let response = post(
                &app,
                Kind::Anthropic.path(),
                &token,
                &messages(allowed, false),
            )
            .await;
            assert_eq!(response.status(), 200, "{allowed} is served by flash");
            let _ = response.bytes().await;
        }
    }

    #[tokio::test]
    async fn a_missing_or_bad_token_is_an_authentication_error_in_anthropics_shape() {
        let app = spawn_app().await;
        let body = messages("claude-sonnet-4-5", false);
        let no_token = app
            .http
            .post(app.url(Kind::Anthropic.path()))
            .json(&body)
            .send()
            .await
            .expect("request");
        let bad_key = app
            .http
            .post(app.url(Kind::Anthropic.path()))
            .header("x-api-key", "not-a-token")
            .json(&body)
            .send()
            .await
            .expect("request");
        let bad_bearer = post(&app, "/anthropic/v1/messages/count_tokens", "nope", &body).await;
        for response in [no_token, bad_key, bad_bearer] {
            assert_eq!(response.status(), 401);
            assert_eq!(anthropic_error(response).await.0, "authentication_error");
        }
        assert!(app.fake.requests().is_empty());
    }

    #[tokio::test]
    async fn x_api_key_and_the_beta_query_of_claude_code_are_accepted() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for path in ["/anthropic/v1/messages", "/anthropic/v1/messages?beta=true"] {
            let response = app
                .http
                .post(app.url(path))
                .header("x-api-key", &token)
                .header("anthropic-version", "2023-06-01")
                .json(&messages("claude-sonnet-4-5", true))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 200, "{path}");
            let text = response.text().await.expect("body");
            assert!(text.ends_with(Kind::Anthropic.stream_end()), "{path}");
        }
        let requests = app.fake.requests();
        assert_eq!(requests.len(), 2);
        for r in &requests {
            assert_eq!(r.path, "/anthropic/v1/messages");
            // DeepSeek gets the gateway's key, never the client's token.
            let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
            assert_eq!(auth, Some(format!("Bearer {}", app.api_key).as_str()));
            let x_api_key = r.headers.get("x-api-key").and_then(|v| v.to_str().ok());
            assert_ne!(
                x_api_key,
                Some(token.as_str()),
                "the client's token is not forwarded"
            );
        }
    }

    #[tokio::test]
    async fn a_busy_token_is_a_rate_limit_error_that_tells_the_sdk_to_retry() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let slow = Kind::Anthropic.body(true, json!({"chunks": 20, "chunk_delay_ms": 100}));
        let running = post(&app, Kind::Anthropic.path(), &token, &slow).await;
        assert_eq!(running.status(), 200);
        let busy = post(
            &app,
            Kind::Anthropic.path(),
            &token,
            &messages("claude-sonnet-4-5", false),
        )
        .await;
        assert_eq!(busy.status(), 429);
        assert_eq!(header(&busy, "retry-after"), Some("1"));
        assert_eq!(header(&busy, "x-should-retry"), Some("true"));
        assert_eq!(anthropic_error(busy).await.0, "rate_limit_error");
        assert_eq!(forwarded(&app, "/anthropic/v1/messages"), 1);
        drop(running);
        assert!(app.fake.wait_cancelled(1, SOON).await);
        assert!(app.slots_free_within(SOON).await);
    }

    #[tokio::test]
    async fn bodies_without_messages_or_with_a_duplicate_key_are_refused_and_never_forwarded() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (raw, says) in [
            (
                r#"{"model":"claude-sonnet-4-5","max_tokens":5}"#,
                "messages",
            ),
            (
                r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":"hi"}"#,
                "messages",
            ),
            (r#"[{"messages":[]}]"#, "messages"),
            (r#"{"messages":["#, "line 1"),
            (
                r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[],"messages":[]}"#,
                "more than once",
            ),
        ] {
            let response = post_raw(&app, Kind::Anthropic.path(), &token, raw).await;
            assert_eq!(response.status(), 400, "{raw}");
            let (kind, message) = anthropic_error(response).await;
            assert_eq!(kind, "invalid_request_error", "{raw}");
            assert!(message.contains(says), "{raw}: {message}");
        }
        assert!(app.fake.requests().is_empty());
        assert!(app.slots_free_within(SOON).await);
    }

    #[tokio::test]
    async fn an_unknown_anthropic_path_is_a_not_found_error_in_anthropics_shape() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let response = post(&app, "/anthropic/v1/complete", &token, &json!({})).await;
        assert_eq!(response.status(), 404);
        assert_eq!(anthropic_error(response).await.0, "not_found_error");
    }

    #[tokio::test]
    async fn count_tokens_takes_no_slot_and_writes_no_ledger_row() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let slow = Kind::Anthropic.body(true, json!({"chunks": 20, "chunk_delay_ms": 100}));
        let running = post(&app, Kind::Anthropic.path(), &token, &slow).await;
        assert_eq!(running.status(), 200);
        let running_id = request_id(&running);
        let mut body = messages("claude-sonnet-4-5", false);
        body["_fake"] = json!({"prompt_tokens": 42});
        let response = post(&app, "/anthropic/v1/messages/count_tokens", &token, &body).await;
        assert_eq!(response.status(), 200, "while the slot is taken");
        let id = request_id(&response);
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer, json!({"input_tokens": 42}));
        assert_eq!(forwarded(&app, "/anthropic/v1/messages/count_tokens"), 1);
        let _ = running.bytes().await;
        let _ = row(&app, &running_id).await;
        let rows = ledger_rows(&app).await;
        assert!(rows.iter().all(|r| r.request_id != id), "{rows:?}");
        assert_eq!(rows.len(), 1, "only the message: {rows:?}");
    }

    #[tokio::test]
    async fn a_non_stream_answer_keeps_deepseeks_headers_but_not_its_cookie() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let response = post(
            &app,
            Kind::Anthropic.path(),
            &token,
            &messages("claude-sonnet-4-5", false),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert!(response.headers().get("set-cookie").is_none());
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["type"], "message");
        assert_eq!(body["model"], "claude-sonnet-4-5");
    }
}

mod responses {
    use super::*;

    #[tokio::test]
    async fn a_body_without_a_string_or_array_input_is_refused_and_never_forwarded() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (raw, code) in [
            (r#"{"model":"deepseek-flash"}"#, "invalid_body"),
            (r#"{"input":5}"#, "invalid_body"),
            (
                r#"{"input":{"role":"user","content":"hi"}}"#,
                "invalid_body",
            ),
            (r#"{"input":null}"#, "invalid_body"),
            (r#"["input"]"#, "invalid_body"),
            (r#"{"input":"#, "invalid_json"),
            (r#"{"input":"a","input":"b"}"#, "duplicate_field"),
            (r#"{"input":"a","model":5}"#, "invalid_body"),
            (r#"{"input":"a","stream":"yes"}"#, "invalid_body"),
        ] {
            let response = post_raw(&app, Kind::Responses.path(), &token, raw).await;
            assert_eq!(response.status(), 400, "{raw}");
            let (kind, got) = openai_error(response).await;
            assert_eq!(
                (kind.as_str(), got.as_str()),
                ("invalid_request_error", code),
                "{raw}"
            );
        }
        assert!(app.fake.requests().is_empty());
        // Both input shapes are accepted.
        for input in [json!("hi"), json!([{"role": "user", "content": "hi"}])] {
            let body = json!({"model": "deepseek-flash", "input": input});
            let response = post(&app, "/responses", &token, &body).await;
            assert_eq!(response.status(), 200, "{input}");
            let _ = response.bytes().await;
        }
        assert_eq!(forwarded(&app, "/responses"), 2);
    }

    #[tokio::test]
    async fn a_model_the_user_may_not_use_is_403_model_not_allowed_and_never_forwarded() {
        let app = spawn_app_with(|s| {
            s.users = Some(common::admin_and_user("models = [\"deepseek-flash\"]"));
        })
        .await;
        let token = app.token(USER1).await;
        for stream in [false, true] {
            let mut body = Kind::Responses.body(stream, json!({}));
            body["model"] = json!("deepseek-v4-pro");
            let response = post(&app, Kind::Responses.path(), &token, &body).await;
            assert_eq!(response.status(), 403);
            assert_eq!(
                openai_error(response).await,
                ("invalid_request_error".into(), "model_not_allowed".into())
            );
        }
        assert!(app.fake.requests().is_empty());
        // The legacy flash name is served by flash, so it is allowed.
        let mut legacy = Kind::Responses.body(false, json!({}));
        legacy["model"] = json!("deepseek-v4-flash");
        let response = post(&app, Kind::Responses.path(), &token, &legacy).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let _ = response.bytes().await;
        assert_eq!(
            app.fake.last_body().expect("body")["model"],
            "deepseek-v4-flash"
        );
        let row = row(&app, &id).await;
        assert_eq!(row.model.as_deref(), Some("deepseek-flash"));
        assert_eq!(row.requested_model.as_deref(), Some("deepseek-v4-flash"));
    }

    #[tokio::test]
    async fn x_api_key_is_accepted_on_every_route_that_takes_the_slot() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for kind in ALL_KINDS {
            let response = app
                .http
                .post(app.url(kind.path()))
                .header("x-api-key", &token)
                .json(&kind.body(false, json!({})))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 200, "{kind:?}");
            let _ = response.bytes().await;
        }
        assert_eq!(app.fake.requests().len(), ALL_KINDS.len());
    }

    #[tokio::test]
    async fn every_new_route_takes_the_tokens_slot_and_refuses_with_token_busy() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let slow = Kind::Responses.body(true, json!({"chunks": 20, "chunk_delay_ms": 100}));
        let running = post(&app, "/responses", &token, &slow).await;
        assert_eq!(running.status(), 200);
        for kind in ALL_KINDS {
            let busy = post(&app, kind.path(), &token, &kind.body(false, json!({}))).await;
            assert_eq!(busy.status(), 429, "{kind:?}");
            assert_eq!(header(&busy, "retry-after"), Some("1"), "{kind:?}");
            assert_eq!(header(&busy, "x-should-retry"), Some("true"), "{kind:?}");
            assert_dialect(kind, busy, "rate_limit_error", "token_busy").await;
        }
        assert_eq!(
            app.fake.requests().len(),
            1,
            "the refused never reach DeepSeek"
        );
        // The stream itself is whole.
        let text = running.text().await.expect("body");
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
        assert!(last.starts_with("event: response.completed\n"), "{last}");
        assert!(!text.contains("[DONE]"), "no [DONE] in a Responses stream");
        assert!(app.slots_free_within(SOON).await);
    }

    #[tokio::test]
    async fn a_streamed_answer_has_consecutive_sequence_numbers_and_no_done() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let response = post(
            &app,
            "/v1/responses",
            &token,
            &Kind::Responses.body(true, json!({})),
        )
        .await;
        let text = response.text().await.expect("body");
        let numbers: Vec<u64> = common::sse_data(&text)
            .iter()
            .map(|d| serde_json::from_str::<Value>(d).expect("json"))
            .map(|v| v["sequence_number"].as_u64().expect("numbered"))
            .collect();
        assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
        assert!(!text.contains("[DONE]"));
    }
}

mod tools {
    use super::*;

    #[tokio::test]
    async fn search_needs_a_query_and_fetch_a_url_string_else_400_and_nothing_forwarded() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (path, raw, code) in [
            ("/v1/tools/search", r#"{"q":"rust"}"#, "invalid_body"),
            ("/v1/tools/search", r#"{"query":5}"#, "invalid_body"),
            (
                "/v1/tools/search",
                r#"{"query":"a","query":"b"}"#,
                "duplicate_field",
            ),
            ("/v1/tools/search", r#""rust""#, "invalid_body"),
            ("/v1/tools/fetch", r#"{"url":null}"#, "invalid_body"),
            (
                "/v1/tools/fetch",
                r#"{"url":["https://a"]}"#,
                "invalid_body",
            ),
            ("/v1/tools/fetch", r#"{"url":"#, "invalid_json"),
        ] {
            let response = post_raw(&app, path, &token, raw).await;
            assert_eq!(response.status(), 400, "{path} {raw}");
            assert_eq!(openai_error(response).await.1, code, "{path} {raw}");
        }
        assert!(app.fake.requests().is_empty());
        assert!(app.slots_free_within(SOON).await);
    }

    #[tokio::test]
    async fn search_without_a_query_and_fetch_without_a_url_are_refused_before_deepseek() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (path, raw) in [
            ("/v1/tools/search", r#"{"url":"https://example.com"}"#),
            ("/v1/tools/fetch", r#"{"query":"rust"}"#),
        ] {
            let response = post_raw(&app, path, &token, raw).await;
            assert_eq!(response.status(), 400, "{path} {raw}");
            assert_eq!(
                openai_error(response).await.1,
                "invalid_body",
                "{path} {raw}"
            );
        }
        assert!(app.fake.requests().is_empty(), "nothing forwarded");
    }

    #[tokio::test]
    async fn a_tool_call_is_billable_only_when_deepseek_answered_200_with_content() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (fake, status, billable) in [
            (json!({}), 200, true),
            (json!({"fail": {"status": 400}}), 400, false),
            (json!({"fail": {"status": 500}}), 502, false),
            (json!({"fail": {"status": 503}}), 503, false),
        ] {
            for kind in [Kind::Search, Kind::Fetch] {
                let response =
                    post(&app, kind.path(), &token, &kind.body(false, fake.clone())).await;
                assert_eq!(response.status(), status, "{kind:?} {fake}");
                let id = request_id(&response);
                let _ = response.bytes().await;
                let row = row(&app, &id).await;
                assert_eq!(row.billable, billable, "{kind:?} {fake}: {row:?}");
                assert_eq!(row.format, "tools");
                assert_eq!(row.route, kind.route());
                assert_eq!(row.model, None);
                assert_no_usage(&row);
            }
        }
    }

    #[tokio::test]
    async fn a_tool_body_reaches_deepseek_byte_for_byte_without_a_user_id() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let raw = r#"{ "query" : "caf\u00e9 \ud83d\ude00", "n": 1.50, "user_id": "mine" }"#;
        let response = post_raw(&app, "/v1/tools/search", &token, raw).await;
        assert_eq!(response.status(), 200);
        let sent = app.fake.responses().last().cloned().expect("answer");
        assert_eq!(response.bytes().await.expect("body"), sent);
        let recorded = app.fake.requests().pop().expect("forwarded");
        assert_eq!(String::from_utf8_lossy(&recorded.body), raw);
    }
}

mod quotas {
    use super::*;

    async fn me(app: &TestApp, token: &str) -> Value {
        let response = app
            .http
            .get(app.url("/v1/usage/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("usage/me");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    async fn with_limits(limits: &str) -> (TestApp, String) {
        let limits = limits.to_owned();
        let app = spawn_app_with(move |s| s.users = Some(common::admin_and_user(&limits))).await;
        let token = app.token(USER1).await;
        (app, token)
    }

    #[tokio::test]
    async fn responses_reserve_max_output_tokens_and_settle_to_the_reported_usage() {
        let (app, token) = with_limits("tokens_per_day = 5000").await;
        let refused = |cap: Option<(&str, u64)>| {
            let mut body = Kind::Responses.body(false, scripted());
            if let Some((field, n)) = cap {
                body[field] = json!(n);
            }
            body
        };
        // The default reservation (32768) and chat's field do not fit; a
        // cap near the limit does not either (the body counts too).
        for body in [
            refused(None),
            refused(Some(("max_tokens", 10))),
            refused(Some(("max_output_tokens", 4990))),
        ] {
            let response = post(&app, Kind::Responses.path(), &token, &body).await;
            assert_eq!(response.status(), 429, "{body}");
            assert_eq!(header(&response, "x-should-retry"), Some("false"));
            let wait: u64 = header(&response, "retry-after")
                .and_then(|v| v.parse().ok())
                .expect("retry-after");
            // In Codex's words, so it stops at once instead of sleeping for
            // Retry-After (hours), and says when to try again.
            let error: Value = response.json().await.expect("json");
            let error = &error["error"];
            assert_eq!(error["type"], "usage_limit_reached", "{error}");
            assert_eq!(error["code"], "quota_exceeded");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            let resets_at = error["resets_at"].as_u64().expect("resets_at");
            assert!(
                resets_at.abs_diff(now + wait) <= 2,
                "{resets_at} vs {now}+{wait}"
            );
            assert!(error["message"]
                .as_str()
                .is_some_and(|m| m.contains("max_output_tokens")));
        }
        assert!(app.fake.requests().is_empty(), "refused before DeepSeek");
        for stream in [false, true] {
            let mut body = Kind::Responses.body(stream, scripted());
            body["max_output_tokens"] = json!(100);
            let response = post(&app, Kind::Responses.path(), &token, &body).await;
            assert_eq!(response.status(), 200);
            let _ = response.bytes().await;
        }
        assert!(app.slots_free_within(SOON).await);
        // Settled to DeepSeek's count: 20 prompt + 13 completion, twice.
        let me = me(&app, &token).await;
        assert_eq!(me["quotas"]["tokens_per_day"]["used"], 66, "{me}");
    }

    #[tokio::test]
    async fn anthropic_reserves_max_tokens_and_a_refusal_is_a_rate_limit_error_not_to_retry() {
        let (app, token) = with_limits("tokens_per_day = 5000").await;
        let mut body = Kind::Anthropic.body(false, scripted());
        body["max_tokens"] = json!(4990);
        let response = post(&app, Kind::Anthropic.path(), &token, &body).await;
        assert_eq!(response.status(), 429);
        assert_eq!(header(&response, "x-should-retry"), Some("false"));
        assert!(header(&response, "retry-after").is_some());
        let (kind, message) = anthropic_error(response).await;
        assert_eq!(kind, "rate_limit_error");
        assert!(message.contains("quota"), "{message}");
        assert!(app.fake.requests().is_empty());
        for stream in [false, true] {
            let mut body = Kind::Anthropic.body(stream, scripted());
            body["max_tokens"] = json!(100);
            let response = post(&app, Kind::Anthropic.path(), &token, &body).await;
            assert_eq!(response.status(), 200);
            let _ = response.bytes().await;
        }
        assert!(app.slots_free_within(SOON).await);
        let me = me(&app, &token).await;
        assert_eq!(me["quotas"]["tokens_per_day"]["used"], 66, "{me}");
    }

    #[tokio::test]
    async fn requests_per_minute_counts_every_format_but_not_count_tokens() {
        let (app, token) = with_limits("requests_per_minute = 3").await;
        let count = post(
            &app,
            "/anthropic/v1/messages/count_tokens",
            &token,
            &Kind::Anthropic.body(false, json!({})),
        )
        .await;
        assert_eq!(count.status(), 200);
        for kind in [Kind::Responses, Kind::Anthropic, Kind::Search] {
            let response = post(&app, kind.path(), &token, &kind.body(false, json!({}))).await;
            assert_eq!(response.status(), 200, "{kind:?}");
            let _ = response.bytes().await;
        }
        let fetch = post(
            &app,
            Kind::Fetch.path(),
            &token,
            &Kind::Fetch.body(false, json!({})),
        )
        .await;
        assert_eq!(fetch.status(), 429);
        // A minute's wait at most: worth retrying by itself.
        assert_eq!(header(&fetch, "x-should-retry"), Some("true"));
        assert_eq!(openai_error(fetch).await.1, "quota_exceeded");
        let messages = post(
            &app,
            Kind::Anthropic.path(),
            &token,
            &Kind::Anthropic.body(true, json!({})),
        )
        .await;
        assert_eq!(messages.status(), 429);
        let retry_after: u64 = header(&messages, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(anthropic_error(messages).await.0, "rate_limit_error");
        let me = me(&app, &token).await;
        assert_eq!(me["quotas"]["requests_per_minute"]["used"], 3, "{me}");
        // The token counter is not a request DeepSeek bills: still allowed.
        let count = post(
            &app,
            "/anthropic/v1/messages/count_tokens",
            &token,
            &Kind::Anthropic.body(false, json!({})),
        )
        .await;
        assert_eq!(count.status(), 200);
    }

    #[tokio::test]
    async fn a_tool_call_charges_no_tokens_against_tokens_per_day() {
        let (app, token) = with_limits("tokens_per_day = 5000").await;
        for kind in [Kind::Search, Kind::Fetch] {
            let response = post(&app, kind.path(), &token, &kind.body(false, json!({}))).await;
            assert_eq!(response.status(), 200, "a tool call reserves nothing");
            let _ = response.bytes().await;
        }
        assert!(app.slots_free_within(SOON).await);
        let me = me(&app, &token).await;
        assert_eq!(
            me["quotas"]["tokens_per_day"]["used"], 0,
            "a tool call has no tokens: {me}"
        );
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_mid_stream_is_charged_an_estimate_in_every_format() {
        let (app, token) = with_limits("tokens_per_day = 1000000").await;
        let mut charged = 0;
        for kind in [Kind::Responses, Kind::Anthropic] {
            let mut body = kind.body(true, json!({"chunks": 40, "chunk_delay_ms": 50}));
            body[if kind.anthropic() {
                "max_tokens"
            } else {
                "max_output_tokens"
            }] = json!(500);
            let response = post(&app, kind.path(), &token, &body).await;
            assert_eq!(response.status(), 200);
            read_until_then_drop(response, kind.delta_marker()).await;
            assert!(app.slots_free_within(SOON).await);
            let prompt =
                deepseek_proxy::usage::estimate_tokens(&serde_json::to_vec(&body).expect("json"));
            let used = me(&app, &token).await["quotas"]["tokens_per_day"]["used"]
                .as_u64()
                .expect("used");
            let this = used - charged;
            assert!(
                this > prompt && this < prompt + 500,
                "{kind:?}: charged {this}, the prompt estimate {prompt} plus what streamed"
            );
            charged = used;
        }
    }
}

mod user_id {
    use super::*;

    /// The `user_id` DeepSeek got for the newest request on `kind`.
    fn sent_user_id(app: &TestApp, kind: Kind) -> Option<String> {
        let body = app.fake.last_body().expect("forwarded");
        let id = match kind {
            Kind::Anthropic => &body["metadata"]["user_id"],
            _ => &body["user_id"],
        };
        id.as_str().map(str::to_owned)
    }

    /// Sends a body on `kind` that carries the client's own `user_id`.
    async fn send_claiming(app: &TestApp, token: &str, kind: Kind, claim: &str) -> Value {
        let mut body = kind.body(false, json!({}));
        if kind.anthropic() {
            body["metadata"] = json!({"user_id": claim, "keep": 1});
        } else {
            body["user_id"] = json!(claim);
        }
        let response = post(app, kind.path(), token, &body).await;
        assert_eq!(response.status(), 200, "{kind:?}");
        let _ = response.bytes().await;
        app.fake.last_body().expect("forwarded")
    }

    #[tokio::test]
    async fn every_format_gets_one_stable_pseudonym_per_user_that_overwrites_the_clients() {
        let app = spawn_app().await;
        let user = app.token(USER1).await;
        let admin = app.token(ADMIN).await;
        let mut ids = Vec::new();
        for kind in [
            Kind::Chat,
            Kind::Responses,
            Kind::Anthropic,
            Kind::Responses,
        ] {
            let forwarded = send_claiming(&app, &user, kind, "admin").await;
            if kind.anthropic() {
                assert_eq!(forwarded["metadata"]["keep"], 1, "other metadata kept");
                assert!(forwarded.get("user_id").is_none(), "{forwarded}");
            }
            ids.push(sent_user_id(&app, kind).expect("a user_id"));
        }
        let id = ids[0].clone();
        assert!(
            ids.iter().all(|i| *i == id),
            "stable across formats: {ids:?}"
        );
        assert!(is_pseudonym(&id), "{id}");
        assert!(!id.contains("user1"));
        send_claiming(&app, &admin, Kind::Responses, &id).await;
        let admins = sent_user_id(&app, Kind::Responses).expect("a user_id");
        assert!(is_pseudonym(&admins), "{admins}");
        assert_ne!(admins, id, "nobody can borrow user1's isolation domain");
        // A body without one gets one too.
        let response = post(
            &app,
            Kind::Anthropic.path(),
            &user,
            &Kind::Anthropic.body(true, json!({})),
        )
        .await;
        let _ = response.bytes().await;
        assert_eq!(sent_user_id(&app, Kind::Anthropic), Some(id));
    }

    #[tokio::test]
    async fn the_pseudonym_survives_a_restart_with_the_same_jwt_secret_only() {
        let secret = format!("{}{}", common::random_hex(), common::random_hex());
        let mut ids = Vec::new();
        for secret in [secret.clone(), secret, common::random_hex().repeat(2)] {
            let app = spawn_app_with(move |s| s.jwt_secret = Some(secret)).await;
            let token = app.token(USER1).await;
            send_claiming(&app, &token, Kind::Responses, "x").await;
            ids.push(sent_user_id(&app, Kind::Responses).expect("a user_id"));
        }
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2], "keyed with the secret");
    }

    #[tokio::test]
    async fn with_user_id_off_the_body_reaches_deepseek_byte_for_byte() {
        let app = spawn_app_with(|s| s.deepseek_extra = "user_id = \"off\"".into()).await;
        let token = app.token(USER1).await;
        for (kind, raw) in [
            (
                Kind::Responses,
                r#"{"model":"deepseek-flash","input":"hi","user_id":"client-42"}"#,
            ),
            (Kind::Responses, r#"{"input":"hi"}"#),
            (
                Kind::Anthropic,
                r#"{"model":"claude-sonnet-4-5","max_tokens":9,"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"client-42"}}"#,
            ),
            (
                Kind::Anthropic,
                r#"{"model":"claude-sonnet-4-5","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            (
                Kind::Chat,
                r#"{"model":"deepseek-flash","messages":[{"role":"user","content":"hi"}]}"#,
            ),
        ] {
            let response = post_raw(&app, kind.path(), &token, raw).await;
            assert_eq!(response.status(), 200, "{raw}");
            let _ = response.bytes().await;
            let recorded = app.fake.requests().pop().expect("forwarded");
            assert_eq!(String::from_utf8_lossy(&recorded.body), raw);
        }
    }

    #[tokio::test]
    async fn with_user_id_username_deepseek_gets_the_username() {
        let app = spawn_app_with(|s| s.deepseek_extra = "user_id = \"username\"".into()).await;
        let token = app.token(USER1).await;
        for kind in [Kind::Chat, Kind::Responses, Kind::Anthropic] {
            send_claiming(&app, &token, kind, "admin").await;
            assert_eq!(
                sent_user_id(&app, kind).as_deref(),
                Some("user1"),
                "{kind:?}"
            );
        }
    }
}

mod aliases {
    use super::*;

    #[tokio::test]
    async fn deepseek_chat_is_served_by_flash_with_thinking_off_on_every_format() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for kind in [Kind::Chat, Kind::Responses, Kind::Anthropic] {
            for stream in [false, true] {
                let mut body = kind.body(stream, scripted());
                body["model"] = json!("deepseek-chat");
                let response = post(&app, kind.path(), &token, &body).await;
                assert_eq!(response.status(), 200, "{kind:?}");
                let id = request_id(&response);
                let text = response.text().await.expect("body");
                let thought = match kind {
                    Kind::Chat => "reasoning_content",
                    Kind::Responses => "\"type\":\"reasoning\"",
                    _ => "\"type\":\"thinking\"",
                };
                assert!(!text.contains(thought), "{kind:?}: no thinking: {text}");
                let forwarded = app.fake.last_body().expect("forwarded");
                assert_eq!(forwarded["model"], "deepseek-flash", "{kind:?}");
                assert_eq!(
                    app.fake.last_thinking(),
                    Some(json!({"type": "disabled"})),
                    "{kind:?}"
                );
                let row = row(&app, &id).await;
                assert_eq!(row.model.as_deref(), Some("deepseek-flash"));
                assert_eq!(row.requested_model.as_deref(), Some("deepseek-chat"));
                // 20 prompt tokens and 3 of reply, no reasoning.
                assert_eq!(
                    (
                        row.prompt_tokens,
                        row.completion_tokens,
                        row.reasoning_tokens
                    ),
                    (Some(20), Some(3), Some(0)),
                    "{kind:?} stream={stream}: {row:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn deepseek_reasoner_is_served_by_flash_with_thinking_on() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for kind in [Kind::Chat, Kind::Responses, Kind::Anthropic] {
            let mut body = kind.body(false, scripted());
            body["model"] = json!("deepseek-reasoner");
            let response = post(&app, kind.path(), &token, &body).await;
            assert_eq!(response.status(), 200, "{kind:?}");
            let id = request_id(&response);
            let _ = response.bytes().await;
            assert_eq!(
                app.fake.last_body().expect("body")["model"],
                "deepseek-flash"
            );
            assert_eq!(app.fake.last_thinking(), Some(json!({"type": "enabled"})));
            let row = row(&app, &id).await;
            assert_eq!(row.requested_model.as_deref(), Some("deepseek-reasoner"));
            assert_eq!(row.completion_tokens, Some(13), "{kind:?}: with reasoning");
        }
    }

    #[tokio::test]
    async fn a_thinking_the_client_set_is_kept_over_the_aliases() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for (alias, thinking) in [
            ("deepseek-chat", json!({"type": "enabled"})),
            ("deepseek-reasoner", json!({"type": "disabled"})),
        ] {
            let mut body = Kind::Responses.body(false, json!({}));
            body["model"] = json!(alias);
            body["thinking"] = thinking.clone();
            let response = post(&app, Kind::Responses.path(), &token, &body).await;
            assert_eq!(response.status(), 200);
            let _ = response.bytes().await;
            assert_eq!(app.fake.last_thinking(), Some(thinking), "{alias}");
        }
    }

    #[tokio::test]
    async fn an_alias_rewrite_leaves_every_other_byte_of_the_body_alone() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        let raw = "{\"model\":\"deepseek-chat\", \"input\":\"caf\\u00e9 \u{4f60}\",\n \
                   \"n\":123456789012345678901234567890,\"t\":1.50,\"x\":1e2,\"user_id\":\"mine\"}";
        let response = post_raw(&app, Kind::Responses.path(), &token, raw).await;
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
        let recorded = app.fake.requests().pop().expect("forwarded");
        let id = sent_pseudonym(&recorded.body);
        let expected = format!(
            "{{\"model\":\"deepseek-flash\", \"input\":\"caf\\u00e9 \u{4f60}\",\n \
             \"n\":123456789012345678901234567890,\"t\":1.50,\"x\":1e2,\"user_id\":\"{id}\",\
             \"thinking\":{{\"type\":\"disabled\"}}}}"
        );
        assert_eq!(String::from_utf8_lossy(&recorded.body), expected);
    }

    fn sent_pseudonym(body: &[u8]) -> String {
        let json: Value = serde_json::from_slice(body).expect("json");
        let id = json["user_id"].as_str().expect("user_id").to_owned();
        assert!(is_pseudonym(&id), "{id}");
        id
    }

    #[tokio::test]
    async fn an_operators_own_alias_is_served_listed_and_recorded() {
        let app = spawn_app_with(|s| {
            // `[quotas]` is the last table of the test config.
            s.quotas =
                "[models.aliases]\nfast = { model = \"deepseek-v4-pro\", thinking = \"disabled\" }"
                    .into();
        })
        .await;
        let token = app.token(USER1).await;
        let mut body = Kind::Responses.body(false, json!({}));
        body["model"] = json!("fast");
        let response = post(&app, Kind::Responses.path(), &token, &body).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let _ = response.bytes().await;
        assert_eq!(
            app.fake.last_body().expect("body")["model"],
            "deepseek-v4-pro"
        );
        assert_eq!(app.fake.last_thinking(), Some(json!({"type": "disabled"})));
        let row = row(&app, &id).await;
        assert_eq!(row.model.as_deref(), Some("deepseek-v4-pro"));
        assert_eq!(row.requested_model.as_deref(), Some("fast"));
        let list: Value = app
            .http
            .get(app.url("/v1/models"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("models")
            .json()
            .await
            .expect("json");
        let fast = list["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|m| m["id"] == "fast")
            .cloned();
        assert_eq!(
            fast.map(|m| m["alias_for"].clone()),
            Some(json!("deepseek-v4-pro"))
        );
    }
}

mod models {
    use super::*;

    #[tokio::test]
    async fn the_model_list_is_deepseeks_plus_the_aliases_with_either_kind_of_token_header() {
        let app = spawn_app().await;
        let token = app.token(USER1).await;
        for path in ["/models", "/v1/models"] {
            for x_api_key in [false, true] {
                let request = app.http.get(app.url(path));
                let request = if x_api_key {
                    request.header("x-api-key", &token)
                } else {
                    request.bearer_auth(&token)
                };
                let response = request.send().await.expect("models");
                assert_eq!(response.status(), 200);
                let list: Value = response.json().await.expect("json");
                let data = list["data"].as_array().expect("data");
                let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
                assert_eq!(
                    ids,
                    [
                        "deepseek-flash",
                        "deepseek-v4-pro",
                        "deepseek-chat",
                        "deepseek-reasoner"
                    ]
                );
                for alias in &data[2..] {
                    assert_eq!(alias["alias_for"], "deepseek-flash", "{alias}");
                    assert_eq!(alias["object"], "model");
                }
            }
        }
        assert!(app.fake.requests().iter().all(|r| r.path == "/models"));
    }
}

mod usage_api {
    use super::*;

    #[tokio::test]
    async fn usage_me_and_admin_usage_count_every_format() {
        let app = spawn_app_with(|s| s.users = Some(common::admin_and_user(""))).await;
        let token = app.token(USER1).await;
        for (kind, stream) in [
            (Kind::Chat, false),
            (Kind::Responses, true),
            (Kind::Anthropic, false),
            (Kind::Search, false),
        ] {
            let response = post(&app, kind.path(), &token, &kind.body(stream, scripted())).await;
            assert_eq!(response.status(), 200, "{kind:?}");
            let id = request_id(&response);
            let _ = response.bytes().await;
            let _ = row(&app, &id).await;
        }
        let me: Value = app
            .http
            .get(app.url("/v1/usage/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("me")
            .json()
            .await
            .expect("json");
        assert_eq!(me["today"]["requests"], 4, "{me}");
        assert_eq!(me["today"]["prompt_tokens"], 60, "{me}");
        assert_eq!(me["today"]["completion_tokens"], 39, "{me}");
        let admin = app.token(ADMIN).await;
        let usage: Value = app
            .http
            .get(app.url("/admin/usage?group_by=format"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("admin usage")
            .json()
            .await
            .expect("json");
        let mut rows: Vec<(String, i64, i64, i64)> = usage["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let n = |k: &str| r[k].as_i64().unwrap_or(-1);
                (
                    r["key"].as_str().unwrap_or_default().to_owned(),
                    n("requests"),
                    n("cached_tokens"),
                    n("billable_requests"),
                )
            })
            .collect();
        rows.sort();
        let expected: Vec<(String, i64, i64, i64)> = [
            ("anthropic", 1, 4, 1),
            ("chat", 1, 4, 1),
            ("responses", 1, 4, 1),
            ("tools", 1, 0, 1),
        ]
        .iter()
        .map(|(k, a, b, c)| ((*k).to_owned(), *a, *b, *c))
        .collect();
        assert_eq!(rows, expected, "{usage}");
    }
}
