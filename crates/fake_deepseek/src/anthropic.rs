//! Anthropic Messages: `POST /anthropic/v1/messages` and
//! `POST /anthropic/v1/messages/count_tokens`.
//!
//! The key may come as `x-api-key` or `Authorization: Bearer`. Errors are
//! Anthropic-shaped. `claude-opus*` is served by `deepseek-v4-pro`, any other
//! `claude*` by `deepseek-flash`; the answer's `model` echoes the name asked
//! for. `usage.input_tokens` counts the prompt tokens not read from the
//! cache, `cache_read_input_tokens` those that were (they add up to the
//! prompt size); `output_tokens` includes the thinking.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::request::Dialect;
use crate::wire::{self, Outgoing, Tokens, REASONING};
use crate::{Behavior, Shared};

/// The `signature` a thinking block carries.
const SIGNATURE: &str = "ZmFrZS1kZWVwc2Vlay10aGlua2luZy1zaWduYXR1cmU=";

/// Anthropic's error body.
pub(crate) fn error_response(status: u16, message: &str) -> Response {
    let kind = match status {
        401 => "authentication_error",
        402 | 403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// The answer for [`crate::Failure::Status`] on this route.
pub(crate) fn status_failure(status: u16) -> Response {
    let message = match status {
        400 => "Invalid request body format.",
        401 => "Authentication Fails, Your api key: ****fake is invalid",
        402 => "Insufficient Balance",
        403 => "Permission denied",
        404 => "Not Found",
        422 => "Invalid Parameters: messages must not be empty",
        429 => "Rate Limit Reached",
        500 => "Server Error",
        503 | 529 => "Server Overloaded",
        _ => "Unexpected failure",
    };
    let mut response = error_response(status, message);
    if matches!(status, 429 | 503 | 529) {
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("7"));
    }
    response
}

/// The DeepSeek model serving an Anthropic-route model name.
fn served_model(name: &str) -> Result<&'static str, String> {
    if name.starts_with("claude-opus") {
        Ok("deepseek-v4-pro")
    } else if name.starts_with("claude") {
        Ok("deepseek-flash")
    } else {
        crate::request::served_model(Some(name))
    }
}

/// The body's `model`, required here.
fn model_of(body: &Map<String, Value>) -> Result<String, String> {
    match crate::request::model_field(body)? {
        None => Err("model: Field required".to_owned()),
        Some(name) => served_model(name).map(|_| name.to_owned()),
    }
}

fn messages_of(body: &Map<String, Value>) -> Result<&Vec<Value>, String> {
    match body.get("messages") {
        Some(Value::Array(messages)) => Ok(messages),
        Some(_) => Err("messages: Input should be a valid list".to_owned()),
        None => Err("messages: Field required".to_owned()),
    }
}

/// Anthropic's `thinking`: `{"type": "enabled", "budget_tokens": N}` or
/// `{"type": "disabled"}`; on when absent.
fn thinking_on(thinking: Option<&Value>) -> Result<bool, String> {
    let Some(thinking) = thinking.filter(|t| !t.is_null()) else {
        return Ok(true);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled" | "adaptive") => Ok(true),
        Some("disabled") => Ok(false),
        _ => Err("thinking: expected type enabled or disabled".to_owned()),
    }
}

pub(crate) async fn messages(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let call = match crate::request::receive(&shared, req, Dialect::Anthropic).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let body = match call.json_object() {
        Ok(body) => body,
        Err(message) => return call.reject(&message),
    };
    let checked = messages_of(&body).and_then(|messages| {
        match body.get("max_tokens") {
            Some(n) if n.as_u64().is_some_and(|n| n > 0) => {}
            Some(_) => return Err("max_tokens: must be a positive integer".to_owned()),
            None => return Err("max_tokens: Field required".to_owned()),
        }
        let model = model_of(&body)?;
        let user_id = body.get("metadata").and_then(|m| m.get("user_id"));
        crate::request::check_user_id(user_id)?;
        let thinking = thinking_on(body.get("thinking"))?;
        let said = messages
            .last()
            .and_then(|m| m.get("content"))
            .map(crate::request::text_of)
            .unwrap_or_default();
        Ok((model, thinking, said))
    });
    let (model, thinking, said) = match checked {
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
    let reply = behavior
        .reply
        .clone()
        .unwrap_or_else(|| wire::canned_reply(&said));
    let answer = Answer {
        id: wire::fresh_id("msg_"),
        tokens: Tokens::new(&behavior, &reply, thinking),
        model,
        reply,
        thinking,
        behavior,
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let (sse, frames) = if stream {
        (true, answer.events())
    } else {
        (false, wire::json_frames(&answer.message().to_string()))
    };
    wire::streamed(sse, call.probe, answer.behavior, frames)
}

pub(crate) async fn count_tokens(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let call = match crate::request::receive(&shared, req, Dialect::Anthropic).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let body = match call.json_object() {
        Ok(body) => body,
        Err(message) => return call.reject(&message),
    };
    if let Err(message) = messages_of(&body).and_then(|_| model_of(&body)) {
        return call.reject(&message);
    }
    let behavior = match call.behavior(&shared, &body) {
        Ok(b) => b,
        Err(message) => return call.reject(&message),
    };
    let call = match call.before_head(&behavior).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    // What `messages` would report as the whole prompt.
    let prompt = Tokens::new(&behavior, "", false).prompt;
    let frames = wire::json_frames(&json!({"input_tokens": prompt}).to_string());
    wire::streamed(false, call.probe, behavior, frames)
}

struct Answer {
    id: String,
    /// The name asked for, echoed.
    model: String,
    reply: String,
    thinking: bool,
    tokens: Tokens,
    behavior: Behavior,
}

impl Answer {
    fn usage(&self, output_tokens: u64) -> Value {
        json!({"input_tokens": self.tokens.miss(), "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": self.tokens.hit, "output_tokens": output_tokens})
    }

    fn message_with(&self, content: Vec<Value>, stop: Value, usage: Value) -> Value {
        json!({"id": self.id, "type": "message", "role": "assistant", "model": self.model,
               "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage})
    }

    /// The non-stream answer.
    fn message(&self) -> Value {
        let mut content = Vec::new();
        if self.thinking {
            content.push(json!({"type": "thinking", "thinking": REASONING,
                                "signature": SIGNATURE}));
        }
        content.push(json!({"type": "text", "text": self.reply}));
        self.message_with(content, json!("end_turn"), self.usage(self.tokens.output()))
    }

    /// The frames of a streamed answer.
    fn events(&self) -> Vec<Outgoing> {
        let mut frames = Vec::new();
        let mut push = |event: Value, stamped: bool, counted: bool| {
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            let text = format!("event: {kind}\ndata: {event}\n\n");
            frames.push(Outgoing::sse(text, stamped, counted));
        };
        let start = self.message_with(Vec::new(), Value::Null, self.usage(1));
        push(
            json!({"type": "message_start", "message": start}),
            false,
            false,
        );
        let mut index = 0;
        let mut pinged = false;
        let mut block_start = |push: &mut dyn FnMut(Value, bool, bool), index, block: Value| {
            push(
                json!({"type": "content_block_start", "index": index, "content_block": block}),
                false,
                false,
            );
            if !pinged {
                pinged = true;
                push(json!({"type": "ping"}), false, false);
            }
        };
        let delta = |index: usize, delta: Value| json!({"type": "content_block_delta", "index": index, "delta": delta});
        let stop = |index: usize| json!({"type": "content_block_stop", "index": index});
        if self.thinking {
            let block = json!({"type": "thinking", "thinking": "", "signature": ""});
            block_start(&mut push, index, block);
            for piece in wire::words(REASONING, 3) {
                let d = json!({"type": "thinking_delta", "thinking": piece});
                push(delta(index, d), false, true);
            }
            let d = json!({"type": "signature_delta", "signature": SIGNATURE});
            push(delta(index, d), false, false);
            push(stop(index), false, false);
            index += 1;
        }
        block_start(&mut push, index, json!({"type": "text", "text": ""}));
        let stamp = wire::stamp_prefix(&self.behavior);
        for piece in wire::words(&self.reply, self.behavior.chunks) {
            let d = json!({"type": "text_delta", "text": format!("{stamp}{piece}")});
            push(delta(index, d), self.behavior.stamp, true);
        }
        push(stop(index), false, false);
        push(
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": self.tokens.output()}}),
            false,
            false,
        );
        push(json!({"type": "message_stop"}), false, false);
        frames
    }
}
