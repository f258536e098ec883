//! The Responses API: `POST /responses` and `POST /v1/responses`.
//!
//! A non-stream answer is one `response` object. A stream is SSE with
//! `event: <type>` lines, each data object carrying the same `type` and a
//! `sequence_number` counting from 0; it ends with `response.completed`
//! (no `data: [DONE]`). With thinking on (the default) a `reasoning` output
//! item with a summary comes before the `message` item.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{json, Value};

use crate::request::Dialect;
use crate::wire::{self, Outgoing, Tokens, REASONING};
use crate::{Behavior, Shared};

/// Everything one answer needs.
struct Answer {
    id: String,
    reasoning_id: String,
    message_id: String,
    created_at: u64,
    model: &'static str,
    reply: String,
    thinking: bool,
    behavior: Behavior,
    /// Request fields the response object echoes.
    instructions: Value,
    max_output_tokens: Value,
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let call = match crate::request::receive(&shared, req, Dialect::OpenAi).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let body = match call.json_object() {
        Ok(body) => body,
        Err(message) => return call.reject(&message),
    };
    let said = match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .last()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                item => item
                    .get("content")
                    .map(crate::request::text_of)
                    .unwrap_or_default(),
            })
            .unwrap_or_default(),
        _ => return call.reject("Invalid Format: input must be a string or an array"),
    };
    let checked = crate::request::model_field(&body)
        .and_then(crate::request::served_model)
        .and_then(|model| {
            crate::request::check_user_id(body.get("user_id"))?;
            Ok((model, crate::request::thinking_on(body.get("thinking"))?))
        });
    let (model, thinking) = match checked {
        Ok(c) => c,
        Err(message) => return call.reject(&message),
    };
    let behavior = match call.behavior(&shared, &body) {
        Ok(b) => b,
        Err(message) => return call.reject(&message),
    };
    let call = match call.before_head(&behavior).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let answer = Answer {
        id: wire::fresh_id("resp_"),
        reasoning_id: wire::fresh_id("rs_"),
        message_id: wire::fresh_id("msg_"),
        created_at: wire::now_secs(),
        model,
        reply: behavior
            .reply
            .clone()
            .unwrap_or_else(|| wire::canned_reply(&said)),
        thinking,
        behavior,
        instructions: body.get("instructions").cloned().unwrap_or(Value::Null),
        max_output_tokens: body
            .get("max_output_tokens")
            .cloned()
            .unwrap_or(Value::Null),
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let (sse, frames) = if stream {
        (true, answer.events())
    } else {
        let object = answer.object("completed", answer.output(), answer.usage());
        (false, wire::json_frames(&object.to_string()))
    };
    wire::streamed(sse, call.probe, answer.behavior, frames)
}

impl Answer {
    /// The `response` object.
    fn object(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "model": self.model, "output": output, "usage": usage,
            "error": null, "incomplete_details": null,
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
            "metadata": {}, "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "user": null
        })
    }

    fn usage(&self) -> Value {
        let t = Tokens::new(&self.behavior, &self.reply, self.thinking);
        json!({
            "input_tokens": t.prompt,
            "input_tokens_details": {"cached_tokens": t.hit, "cache_write_tokens": 0},
            "output_tokens": t.output(),
            "output_tokens_details": {"reasoning_tokens": t.reasoning},
            "total_tokens": t.prompt + t.output()
        })
    }

    fn reasoning_item(&self, status: &str, summary: &[&str]) -> Value {
        let summary: Vec<Value> = summary
            .iter()
            .map(|text| json!({"type": "summary_text", "text": text}))
            .collect();
        json!({"type": "reasoning", "id": self.reasoning_id, "status": status,
               "summary": summary})
    }

    fn text_part(text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }

    fn message_item(&self, status: &str, text: Option<&str>) -> Value {
        let content: Vec<Value> = text.map(Self::text_part).into_iter().collect();
        json!({"type": "message", "id": self.message_id, "status": status,
               "role": "assistant", "content": content})
    }

    /// The output items of the finished answer.
    fn output(&self) -> Vec<Value> {
        let mut output = Vec::new();
        if self.thinking {
            output.push(self.reasoning_item("completed", &[REASONING]));
        }
        output.push(self.message_item("completed", Some(&self.reply)));
        output
    }

    /// The frames of a streamed answer.
    fn events(&self) -> Vec<Outgoing> {
        let mut events = Events::default();
        let in_progress = self.object("in_progress", Vec::new(), Value::Null);
        events.push(json!({"type": "response.created", "response": in_progress}));
        events.push(json!({"type": "response.in_progress", "response": in_progress}));
        let mut index = 0;
        if self.thinking {
            let item = json!({"item_id": self.reasoning_id, "output_index": index,
                              "summary_index": 0});
            let with = |mut fields: Value, extra: Value| {
                if let (Some(f), Value::Object(extra)) = (fields.as_object_mut(), extra) {
                    f.extend(extra);
                }
                fields
            };
            events.push(
                json!({"type": "response.output_item.added", "output_index": index,
                               "item": self.reasoning_item("in_progress", &[])}),
            );
            events.push(with(
                item.clone(),
                json!({"type": "response.reasoning_summary_part.added",
                       "part": {"type": "summary_text", "text": ""}}),
            ));
            for piece in wire::words(REASONING, 3) {
                let delta = with(
                    item.clone(),
                    json!({"type": "response.reasoning_summary_text.delta", "delta": piece}),
                );
                events.push_content(delta, false);
            }
            events.push(with(
                item.clone(),
                json!({"type": "response.reasoning_summary_text.done", "text": REASONING}),
            ));
            events.push(with(
                item,
                json!({"type": "response.reasoning_summary_part.done",
                       "part": {"type": "summary_text", "text": REASONING}}),
            ));
            events.push(
                json!({"type": "response.output_item.done", "output_index": index,
                               "item": self.reasoning_item("completed", &[REASONING])}),
            );
            index += 1;
        }
        let at = |kind: &str| {
            json!({"type": kind, "item_id": self.message_id, "output_index": index,
                   "content_index": 0})
        };
        events.push(
            json!({"type": "response.output_item.added", "output_index": index,
                           "item": self.message_item("in_progress", None)}),
        );
        let mut added = at("response.content_part.added");
        added["part"] = Self::text_part("");
        events.push(added);
        let stamp = wire::stamp_prefix(&self.behavior);
        for piece in wire::words(&self.reply, self.behavior.chunks) {
            let mut delta = at("response.output_text.delta");
            delta["delta"] = json!(format!("{stamp}{piece}"));
            delta["logprobs"] = json!([]);
            events.push_content(delta, self.behavior.stamp);
        }
        let mut done = at("response.output_text.done");
        done["text"] = json!(self.reply);
        done["logprobs"] = json!([]);
        events.push(done);
        let mut part_done = at("response.content_part.done");
        part_done["part"] = Self::text_part(&self.reply);
        events.push(part_done);
        events.push(
            json!({"type": "response.output_item.done", "output_index": index,
                           "item": self.message_item("completed", Some(&self.reply))}),
        );
        let completed = self.object("completed", self.output(), self.usage());
        events.push(json!({"type": "response.completed", "response": completed}));
        events.frames
    }
}

/// Builds SSE frames, numbering the events.
#[derive(Default)]
struct Events {
    next: u64,
    frames: Vec<Outgoing>,
}

impl Events {
    fn frame(&mut self, mut event: Value, stamped: bool, counted: bool) {
        event["sequence_number"] = json!(self.next);
        self.next += 1;
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        let text = format!("event: {kind}\ndata: {event}\n\n");
        self.frames.push(Outgoing::sse(text, stamped, counted));
    }

    /// An event around the content.
    fn push(&mut self, event: Value) {
        self.frame(event, false, false);
    }

    /// A delta: failures count it.
    fn push_content(&mut self, event: Value, stamped: bool) {
        self.frame(event, stamped, true);
    }
}
