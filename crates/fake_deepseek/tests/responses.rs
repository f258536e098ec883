//! The Responses API: object shape, stream events, usage, failures.

mod common;

use common::{fake, post, sse};
use fake_deepseek::FakeDeepSeek;
use serde_json::{json, Value};

const REPLY: &str = "one two three four";

async fn respond(fake: &FakeDeepSeek, body: &Value) -> common::Answer {
    post(&format!("{}/responses", fake.base_url()), &[], body).await
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter(|part| part["type"] == "output_text")
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_thinking_answer_has_a_reasoning_item_then_the_message() {
    let (fake, _) = fake().await;
    let body = json!({"model": "deepseek-v4-pro", "input": "hi", "user_id": "u1",
                      "_fake": {"reply": REPLY, "cache_hit_tokens": 3}});
    let answer = respond(&fake, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let r = answer.json();
    assert!(r["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "deepseek-v4-pro");
    assert!(r["created_at"].is_u64());
    let output = r["output"].as_array().expect("output");
    assert_eq!(output.len(), 2);
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(output[0]["summary"][0]["type"], "summary_text");
    assert!(output[0]["summary"][0]["text"].is_string());
    let message = &output[1];
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["status"], "completed");
    assert!(message["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(message["content"][0]["annotations"], json!([]));
    assert_eq!(output_text(&r), REPLY);

    let usage = &r["usage"];
    assert_eq!(usage["input_tokens"], 11);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 3);
    let reasoning = usage["output_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .expect("reasoning tokens");
    assert!(reasoning > 0);
    assert_eq!(usage["output_tokens"], 4 + reasoning);
    assert_eq!(usage["total_tokens"], 11 + 4 + reasoning);
    assert_eq!(fake.last_user_id().as_deref(), Some("u1"));
}

#[tokio::test]
async fn without_thinking_there_is_only_the_message() {
    let (fake, _) = fake().await;
    let body = json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "yo"}]}],
                      "thinking": {"type": "disabled"}, "reasoning": {"effort": "low"},
                      "instructions": "be brief", "max_output_tokens": 64});
    let r = respond(&fake, &body).await.json();
    assert_eq!(r["model"], "deepseek-flash");
    assert_eq!(r["output"].as_array().map(Vec::len), Some(1));
    assert!(output_text(&r).ends_with("You said: yo"));
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(r["instructions"], "be brief");
    assert_eq!(r["max_output_tokens"], 64);
}

#[tokio::test]
async fn bad_requests_get_400() {
    let (_fake, root) = fake().await;
    for body in [
        json!({"model": "deepseek-flash"}),
        json!({"input": 5}),
        json!(["not", "an", "object"]),
        json!({"input": "hi", "model": "deepseek-chat"}),
        json!({"input": "hi", "model": "deepseek-reasoner"}),
        json!({"input": "hi", "model": "o3"}),
        json!({"input": "hi", "user_id": "has space"}),
        json!({"input": "hi", "thinking": "yes"}),
    ] {
        let answer = post(&format!("{root}/v1/responses"), &[], &body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(answer.json()["error"]["message"].is_string(), "{body}");
    }
}

/// The expected event names of a stream with `deltas` text deltas.
fn expected_names(thinking: bool, deltas: usize) -> Vec<String> {
    let mut names = vec!["response.created", "response.in_progress"];
    if thinking {
        names.extend([
            "response.output_item.added",
            "response.reasoning_summary_part.added",
        ]);
        names.extend(["response.reasoning_summary_text.delta"; 3]);
        names.extend([
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
        ]);
    }
    names.extend(["response.output_item.added", "response.content_part.added"]);
    names.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    names.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    names.into_iter().map(str::to_owned).collect()
}

#[tokio::test]
async fn a_stream_sends_numbered_events_in_order_and_no_done() {
    let (fake, _) = fake().await;
    for thinking in [true, false] {
        let kind = if thinking { "enabled" } else { "disabled" };
        let body = json!({"input": "hi", "stream": true, "thinking": {"type": kind},
                          "_fake": {"reply": REPLY, "chunks": 4, "cache_hit_tokens": 5}});
        let answer = respond(&fake, &body).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert!(!answer.text.contains("[DONE]"));
        let events = sse(&answer.text);
        let names: Vec<String> = events.iter().filter_map(|e| e.name.clone()).collect();
        assert_eq!(names, expected_names(thinking, 4), "{}", answer.text);
        let data: Vec<Value> = events.iter().map(common::Event::json).collect();
        for (i, (event, name)) in data.iter().zip(&names).enumerate() {
            assert_eq!(event["type"], name.as_str());
            assert_eq!(event["sequence_number"], i, "{event}");
        }

        let created = &data[0]["response"];
        assert_eq!(created["status"], "in_progress");
        assert!(created["usage"].is_null());
        assert_eq!(created["output"], json!([]));

        let text_deltas: Vec<&Value> = data
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .collect();
        let message_index = usize::from(thinking);
        let item_id = text_deltas[0]["item_id"].clone();
        for delta in &text_deltas {
            assert_eq!(delta["output_index"], message_index);
            assert_eq!(delta["content_index"], 0);
            assert_eq!(delta["item_id"], item_id);
        }
        let streamed: String = text_deltas
            .iter()
            .filter_map(|d| d["delta"].as_str())
            .collect();
        assert_eq!(streamed, REPLY);

        let completed = &data.last().expect("events")["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(output_text(completed), REPLY);
        assert_eq!(completed["output"][message_index]["id"], item_id);
        assert_eq!(
            completed["usage"]["input_tokens_details"]["cached_tokens"],
            5
        );
        assert_eq!(completed["id"], created["id"]);
        if thinking {
            let summary: String = data
                .iter()
                .filter(|e| e["type"] == "response.reasoning_summary_text.delta")
                .filter_map(|d| d["delta"].as_str())
                .collect();
            assert_eq!(
                completed["output"][0]["summary"][0]["text"],
                summary.as_str()
            );
        }
    }
    assert_eq!(fake.completed(), 2);
}

#[tokio::test]
async fn keep_alives_and_stamps_apply_to_the_stream() {
    let (fake, _) = fake().await;
    let body = json!({"input": "hi", "stream": true, "thinking": {"type": "disabled"},
                      "_fake": {"keepalives": 2, "stamp": true, "reply": "a b", "chunks": 2}});
    let answer = respond(&fake, &body).await;
    assert!(answer
        .text
        .starts_with(": keep-alive\n\n: keep-alive\n\nevent: response.created\n"));
    let deltas: Vec<String> = sse(&answer.text)
        .iter()
        .map(common::Event::json)
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas.len(), 2);
    for (delta, word) in deltas.iter().zip(["a ", "b"]) {
        let (stamp, rest) = delta
            .strip_prefix("t=")
            .and_then(|d| d.split_once(' '))
            .expect("stamped");
        assert_eq!(stamp.len(), 16);
        assert!(stamp.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(rest, word);
    }
    assert_eq!(
        fake.responses().last().map(|b| b.to_vec()),
        Some(answer.text.into_bytes())
    );
}

#[tokio::test]
async fn a_reset_counts_the_text_deltas() {
    let (fake, _) = fake().await;
    let body = json!({"input": "hi", "stream": true, "thinking": {"type": "disabled"},
                      "_fake": {"chunks": 4, "fail": {"reset_after": 2}}});
    let answer = respond(&fake, &body).await;
    assert!(answer.broken);
    let names: Vec<String> = sse(&answer.text)
        .into_iter()
        .filter_map(|e| e.name)
        .collect();
    assert_eq!(names, expected_names(false, 2)[..6], "{}", answer.text);
}

#[tokio::test]
async fn scripted_failures_use_deepseeks_error_bodies() {
    let (fake, _) = fake().await;
    let body = json!({"input": "hi", "_fake": {"fail": {"status": 429}}});
    let answer = respond(&fake, &body).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert_eq!(answer.json()["error"]["type"], "rate_limit_error");

    fake.require_key("sk-right");
    let answer = post(
        &format!("{}/responses", fake.base_url()),
        &[("authorization", "Bearer sk-wrong")],
        &json!({"input": "hi"}),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("sk-wrong")));
}
