//! Chat completions and FIM: models, thinking, cache usage, user ids.

mod common;

use common::{fake, fake_with, post, sse};
use fake_deepseek::{Behavior, FakeDeepSeek};
use serde_json::{json, Value};

fn chat(model: Option<&str>, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

async fn complete(fake: &FakeDeepSeek, body: &Value) -> common::Answer {
    post(&format!("{}/chat/completions", fake.base_url()), &[], body).await
}

#[tokio::test]
async fn retired_and_unknown_models_are_rejected_with_deepseeks_error() {
    let (fake, _) = fake().await;
    for model in [
        "deepseek-chat",
        "deepseek-reasoner",
        "gpt-4o",
        "claude-sonnet-4",
    ] {
        let answer = complete(&fake, &chat(Some(model), json!({}))).await;
        assert_eq!(answer.status, 400, "{model}");
        let error = &answer.json()["error"];
        assert_eq!(error["message"], "Model Not Exist", "{model}");
        assert_eq!(error["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn current_models_are_served_and_a_missing_model_goes_to_flash() {
    let (fake, _) = fake().await;
    for (asked, served) in [
        (None, "deepseek-flash"),
        (Some("deepseek-flash"), "deepseek-flash"),
        (Some("deepseek-v4-flash"), "deepseek-flash"),
        (Some("deepseek-v4-pro"), "deepseek-v4-pro"),
    ] {
        let answer = complete(&fake, &chat(asked, json!({}))).await;
        assert_eq!(answer.status, 200, "{asked:?}: {}", answer.text);
        assert_eq!(answer.json()["model"], served, "{asked:?}");
        let stream = complete(&fake, &chat(asked, json!({"stream": true}))).await;
        let first = sse(&stream.text)[0].json();
        assert_eq!(first["model"], served, "{asked:?}");
    }
}

#[tokio::test]
async fn the_model_list_names_the_current_models() {
    let (fake, root) = fake().await;
    for url in [format!("{root}/models"), fake.base_url() + "/models"] {
        let list: Value = reqwest::get(&url)
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let ids: Vec<&str> = list["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids, ["deepseek-flash", "deepseek-v4-pro"]);
    }
}

#[tokio::test]
async fn thinking_is_on_by_default_and_can_be_switched_off() {
    let (fake, _) = fake().await;
    let on = complete(&fake, &chat(Some("deepseek-flash"), json!({})))
        .await
        .json();
    assert!(on["choices"][0]["message"]["reasoning_content"].is_string());
    assert!(on["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64() > Some(0));

    let enabled = json!({"thinking": {"type": "enabled"}, "reasoning_effort": "high"});
    let on = complete(&fake, &chat(None, enabled)).await.json();
    assert!(on["choices"][0]["message"]["reasoning_content"].is_string());

    let off = json!({"thinking": {"type": "disabled"}});
    let off = complete(&fake, &chat(None, off)).await.json();
    let message = &off["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{off}");
    assert!(off["usage"].get("completion_tokens_details").is_none());
    assert_eq!(fake.last_thinking(), Some(json!({"type": "disabled"})));

    let bad = complete(&fake, &chat(None, json!({"thinking": {"type": "maybe"}}))).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_thinking_stream_sends_its_reasoning_before_the_content() {
    let (fake, _) = fake().await;
    let answer = complete(&fake, &chat(None, json!({"stream": true}))).await;
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
    let deltas: Vec<Value> = sse(&answer.text)
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json()["choices"][0]["delta"].clone())
        .collect();
    let first_content = deltas
        .iter()
        .position(|d| d["content"].as_str().is_some_and(|c| !c.is_empty()))
        .expect("content");
    let reasoning = deltas
        .iter()
        .rposition(|d| {
            d["reasoning_content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .expect("reasoning");
    assert!(reasoning < first_content);

    let off = chat(
        None,
        json!({"stream": true, "thinking": {"type": "disabled"}}),
    );
    let answer = complete(&fake, &off).await;
    assert!(!answer.text.contains("reasoning_content"));
}

#[tokio::test]
async fn fim_has_no_thinking() {
    let (_fake, root) = fake().await;
    let body = json!({"model": "deepseek-flash", "prompt": "def fib(", "suffix": "return"});
    let answer = post(&format!("{root}/beta/completions"), &[], &body)
        .await
        .json();
    assert_eq!(answer["object"], "text_completion");
    assert!(answer["choices"][0]["text"].is_string());
    assert!(!answer.to_string().contains("reasoning"));
}

#[tokio::test]
async fn usage_reports_cache_hits_and_misses() {
    let (fake, _) = fake().await;
    let plain = complete(&fake, &chat(None, json!({}))).await.json();
    let usage = &plain["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["prompt_cache_hit_tokens"], 0);
    assert_eq!(usage["prompt_cache_miss_tokens"], 11);

    let cached = chat(None, json!({"_fake": {"cache_hit_tokens": 4}}));
    let usage = complete(&fake, &cached).await.json()["usage"].clone();
    assert_eq!(usage["prompt_cache_hit_tokens"], 4);
    assert_eq!(usage["prompt_cache_miss_tokens"], 7);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 4);

    // Capped at the prompt; the stream's final chunk says the same.
    let (fake, _) = fake_with(Behavior {
        prompt_tokens: Some(20),
        cache_hit_tokens: 50,
        ..Behavior::default()
    })
    .await;
    let answer = complete(&fake, &chat(None, json!({"stream": true}))).await;
    let events = sse(&answer.text);
    let usage = events[events.len() - 2].json()["usage"].clone();
    assert_eq!(usage["prompt_tokens"], 20);
    assert_eq!(usage["prompt_cache_hit_tokens"], 20);
    assert_eq!(usage["prompt_cache_miss_tokens"], 0);
    let total = usage["total_tokens"].as_u64();
    let parts = usage["prompt_tokens"]
        .as_u64()
        .zip(usage["completion_tokens"].as_u64());
    assert_eq!(total, parts.map(|(p, c)| p + c));
}

#[tokio::test]
async fn user_ids_are_checked_and_recorded() {
    let (fake, _) = fake().await;
    let answer = complete(&fake, &chat(None, json!({"user_id": "team-7_alice"}))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(fake.last_user_id().as_deref(), Some("team-7_alice"));
    assert_eq!(fake.last_body().expect("body")["user_id"], "team-7_alice");

    let longest = "a".repeat(512);
    let answer = complete(&fake, &chat(None, json!({"user_id": longest}))).await;
    assert_eq!(answer.status, 200);

    for bad in [
        json!("bob smith"),
        json!("é"),
        json!("a".repeat(513)),
        json!(7),
    ] {
        let answer = complete(&fake, &chat(None, json!({"user_id": bad}))).await;
        assert_eq!(answer.status, 400, "{bad}");
        assert!(answer.json()["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn a_reset_still_counts_every_chat_frame() {
    let (fake, _) = fake().await;
    let body = chat(
        None,
        json!({"stream": true, "_fake": {"fail": {"reset_after": 2}}}),
    );
    let answer = complete(&fake, &body).await;
    assert!(answer.broken);
    assert_eq!(sse(&answer.text).len(), 2, "{}", answer.text);
}
