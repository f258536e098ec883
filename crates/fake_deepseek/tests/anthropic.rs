//! Anthropic Messages: shapes, stream events, model mapping, auth, errors.

mod common;

use common::{fake, post, sse};
use serde_json::{json, Value};

const REPLY: &str = "one two three";

fn body(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "max_tokens": 256,
                          "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

fn messages_url(root: &str) -> String {
    format!("{root}/anthropic/v1/messages")
}

/// An Anthropic error body of `kind`.
fn assert_error(answer: &common::Answer, status: u16, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    let error = answer.json();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], kind, "{error}");
    assert!(error["error"]["message"].is_string());
}

#[tokio::test]
async fn a_message_has_thinking_then_text_and_cache_aware_usage() {
    let (fake, root) = fake().await;
    let extra = json!({"thinking": {"type": "enabled", "budget_tokens": 1024},
                       "_fake": {"reply": REPLY, "cache_hit_tokens": 4}});
    let answer = post(&messages_url(&root), &[], &body("claude-sonnet-4-5", extra)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let m = answer.json();
    assert!(m["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "claude-sonnet-4-5");
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["stop_sequence"].is_null());
    let content = m["content"].as_array().expect("content");
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["type"], "thinking");
    assert!(content[0]["thinking"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(content[0]["signature"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(content[1], json!({"type": "text", "text": REPLY}));
    let usage = &m["usage"];
    assert_eq!(usage["input_tokens"], 7);
    assert_eq!(usage["cache_read_input_tokens"], 4);
    assert_eq!(usage["cache_creation_input_tokens"], 0);
    assert!(
        usage["output_tokens"].as_u64() > Some(3),
        "thinking counts: {usage}"
    );
    assert_eq!(
        fake.last_thinking(),
        Some(json!({"type": "enabled", "budget_tokens": 1024}))
    );
}

#[tokio::test]
async fn thinking_can_be_switched_off() {
    let (_fake, root) = fake().await;
    let extra = json!({"thinking": {"type": "disabled"}, "_fake": {"reply": REPLY}});
    let m = post(&messages_url(&root), &[], &body("deepseek-flash", extra))
        .await
        .json();
    assert_eq!(m["content"], json!([{"type": "text", "text": REPLY}]));
    assert_eq!(m["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn models_map_to_deepseeks_and_others_are_rejected() {
    let (fake, root) = fake().await;
    for model in [
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-3-5-haiku-latest",
        "deepseek-flash",
        "deepseek-v4-flash",
        "deepseek-v4-pro",
    ] {
        let answer = post(&messages_url(&root), &[], &body(model, json!({}))).await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.text);
        assert_eq!(answer.json()["model"], model);
    }
    for model in ["deepseek-chat", "deepseek-reasoner", "gpt-4o"] {
        let answer = post(&messages_url(&root), &[], &body(model, json!({}))).await;
        assert_error(&answer, 400, "invalid_request_error");
    }
    assert_eq!(fake.started(), fake.completed());
}

#[tokio::test]
async fn malformed_bodies_get_anthropic_400s() {
    let (_fake, root) = fake().await;
    let mut no_max = body("claude-sonnet-4-5", json!({}));
    no_max.as_object_mut().map(|b| b.remove("max_tokens"));
    let mut no_messages = body("claude-sonnet-4-5", json!({}));
    no_messages.as_object_mut().map(|b| b.remove("messages"));
    let mut no_model = body("claude-sonnet-4-5", json!({}));
    no_model.as_object_mut().map(|b| b.remove("model"));
    for bad in [
        no_max,
        no_messages,
        no_model,
        json!([1, 2]),
        body("claude-sonnet-4-5", json!({"max_tokens": "many"})),
        body(
            "claude-sonnet-4-5",
            json!({"metadata": {"user_id": "not ok!"}}),
        ),
        body(
            "claude-sonnet-4-5",
            json!({"thinking": {"type": "sometimes"}}),
        ),
    ] {
        let answer = post(&messages_url(&root), &[], &bad).await;
        assert_error(&answer, 400, "invalid_request_error");
    }
}

#[tokio::test]
async fn metadata_user_id_is_recorded() {
    let (fake, root) = fake().await;
    let extra = json!({"metadata": {"user_id": "alice-01"}});
    let answer = post(&messages_url(&root), &[], &body("claude-sonnet-4-5", extra)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(fake.last_user_id().as_deref(), Some("alice-01"));
}

#[tokio::test]
async fn a_stream_follows_anthropics_event_order() {
    let (_fake, root) = fake().await;
    let extra = json!({"stream": true, "_fake": {"reply": REPLY, "chunks": 3,
                                                 "cache_hit_tokens": 2}});
    let url = format!("{}?beta=true", messages_url(&root));
    let answer = post(&url, &[], &body("claude-opus-4-1", extra)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = sse(&answer.text);
    let data: Vec<Value> = events.iter().map(common::Event::json).collect();
    for (event, data) in events.iter().zip(&data) {
        assert_eq!(event.name.as_deref(), data["type"].as_str());
    }
    let kinds: Vec<String> = data
        .iter()
        .map(|d| match d["delta"]["type"].as_str() {
            Some(delta) if d["type"] == "content_block_delta" => format!("delta:{delta}"),
            _ => d["type"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["delta:thinking_delta"; 3]);
    expected.extend([
        "delta:signature_delta",
        "content_block_stop",
        "content_block_start",
    ]);
    expected.extend(["delta:text_delta"; 3]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(kinds, expected);

    let start = &data[0]["message"];
    assert_eq!(start["model"], "claude-opus-4-1");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["input_tokens"], 9);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(data[1]["index"], 0);
    assert_eq!(data[1]["content_block"]["type"], "thinking");
    assert_eq!(data[8]["index"], 1);
    assert_eq!(
        data[8]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = data
        .iter()
        .filter(|d| d["delta"]["type"] == "text_delta")
        .inspect(|d| assert_eq!(d["index"], 1))
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, REPLY);
    let end = &data[data.len() - 2];
    assert_eq!(
        end["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );

    // The final output count is the non-stream answer's.
    let whole = post(
        &messages_url(&root),
        &[],
        &body("claude-opus-4-1", json!({"_fake": {"reply": REPLY}})),
    )
    .await;
    assert_eq!(
        end["usage"]["output_tokens"],
        whole.json()["usage"]["output_tokens"]
    );
}

#[tokio::test]
async fn a_reset_counts_the_deltas() {
    let (_fake, root) = fake().await;
    let extra = json!({"stream": true, "thinking": {"type": "disabled"},
                       "_fake": {"chunks": 3, "fail": {"reset_after": 1}}});
    let answer = post(&messages_url(&root), &[], &body("claude-sonnet-4-5", extra)).await;
    assert!(answer.broken);
    let kinds: Vec<String> = sse(&answer.text)
        .into_iter()
        .filter_map(|e| e.name)
        .collect();
    let expected = [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ];
    assert_eq!(kinds, expected);
}

#[tokio::test]
async fn either_auth_header_carries_the_key() {
    let (fake, root) = fake().await;
    fake.require_key("sk-good");
    let url = messages_url(&root);
    let ok = body("claude-sonnet-4-5", json!({}));
    for header in [
        ("x-api-key", "sk-good"),
        ("authorization", "Bearer sk-good"),
    ] {
        let answer = post(&url, &[header, ("anthropic-version", "2023-06-01")], &ok).await;
        assert_eq!(answer.status, 200, "{header:?}: {}", answer.text);
    }
    for header in [
        ("x-api-key", "sk-bad-1"),
        ("authorization", "Bearer sk-bad-1"),
    ] {
        let answer = post(&url, &[header], &ok).await;
        assert_error(&answer, 401, "authentication_error");
        let message = answer.json()["error"]["message"].clone();
        assert!(
            message.as_str().is_some_and(|m| m.contains("sk-bad-1")),
            "{message}"
        );
    }
    let answer = post(&url, &[], &ok).await;
    assert_error(&answer, 401, "authentication_error");
    // x-api-key is for this route only.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let chat_url = format!("{}/chat/completions", fake.base_url());
    let answer = post(&chat_url, &[("x-api-key", "sk-good")], &chat).await;
    assert_eq!(answer.status, 401);
    assert!(answer.json()["error"]["code"].is_string());
}

#[tokio::test]
async fn scripted_statuses_are_anthropic_shaped() {
    let (_fake, root) = fake().await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let extra = json!({"_fake": {"fail": {"status": status}}});
        let answer = post(&messages_url(&root), &[], &body("claude-sonnet-4-5", extra)).await;
        assert_error(&answer, status, kind);
    }
}

#[tokio::test]
async fn count_tokens_reports_the_prompt() {
    let (_fake, root) = fake().await;
    let url = format!("{}/count_tokens", messages_url(&root));
    let mut counted = body("claude-sonnet-4-5", json!({}));
    counted.as_object_mut().map(|b| b.remove("max_tokens"));
    let answer = post(&url, &[], &counted).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json(), json!({"input_tokens": 11}));
    counted["_fake"] = json!({"prompt_tokens": 42});
    assert_eq!(
        post(&url, &[], &counted).await.json(),
        json!({"input_tokens": 42})
    );
    let answer = post(&url, &[], &json!({"model": "claude-sonnet-4-5"})).await;
    assert_error(&answer, 400, "invalid_request_error");
}

#[tokio::test]
async fn keep_alives_and_stamps_apply_to_the_stream() {
    let (fake, root) = fake().await;
    let extra = json!({"stream": true, "thinking": {"type": "disabled"},
                       "_fake": {"keepalives": 1, "stamp": true, "reply": "a b", "chunks": 2}});
    let answer = post(&messages_url(&root), &[], &body("claude-sonnet-4-5", extra)).await;
    assert!(answer
        .text
        .starts_with(": keep-alive\n\nevent: message_start\n"));
    let texts: Vec<String> = sse(&answer.text)
        .iter()
        .map(common::Event::json)
        .filter(|d| d["delta"]["type"] == "text_delta")
        .filter_map(|d| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts.len(), 2);
    for (text, word) in texts.iter().zip(["a ", "b"]) {
        let (stamp, rest) = text
            .strip_prefix("t=")
            .and_then(|t| t.split_once(' '))
            .expect("stamped");
        assert!(stamp.len() == 16 && stamp.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(rest, word);
    }
    let sent = fake.responses().last().map(|b| b.to_vec());
    assert_eq!(sent, Some(answer.text.into_bytes()));
}
