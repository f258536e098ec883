//! The web tools: `POST /v1/tools/search` and `POST /v1/tools/fetch`.
//!
//! Billed per request, so their answers carry no `usage`. The `_fake`
//! behaviour applies as for a non-stream chat answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::request::{Call, Dialect};
use crate::wire;
use crate::Shared;

/// A required non-empty string field.
fn required<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match body.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(format!(
            "Invalid Parameters: {field} must be a non-empty string"
        )),
        None => Err(format!("Invalid Parameters: {field} is required")),
    }
}

/// Receives a tool call, checks it and answers with what `answer` builds
/// from the required `field` and the reply the behaviour scripts.
async fn tool(
    shared: Arc<Shared>,
    req: Request,
    field: &str,
    check: impl Fn(&str) -> Result<(), String>,
    answer: impl Fn(&str, Option<&str>) -> Value,
) -> Response {
    let call: Call = match crate::request::receive(&shared, req, Dialect::OpenAi).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let body = match call.json_object() {
        Ok(body) => body,
        Err(message) => return call.reject(&message),
    };
    let value = match required(&body, field).and_then(|v| check(v).map(|()| v)) {
        Ok(v) => v.to_owned(),
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
    let body = answer(&value, behavior.reply.as_deref()).to_string();
    wire::streamed(false, call.probe, behavior, wire::json_frames(&body))
}

pub(crate) async fn search(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    tool(
        shared,
        req,
        "query",
        |_| Ok(()),
        |query, reply| {
            let q: String = query.chars().take(200).collect();
            let slug: String = q
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let results: Vec<Value> = (1..=3)
                .map(|i| {
                    let snippet = match (i, reply) {
                        (1, Some(reply)) => reply.to_owned(),
                        _ => format!("Snippet {i} of the fake search for {q}."),
                    };
                    json!({"title": format!("Result {i} for {q}"),
                           "url": format!("https://example.com/{slug}/{i}"),
                           "snippet": snippet})
                })
                .collect();
            json!({"results": results})
        },
    )
    .await
}

pub(crate) async fn fetch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    tool(
        shared,
        req,
        "url",
        |url| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else {
                Err("Invalid Parameters: url must be an http(s) URL".to_owned())
            }
        },
        |url, reply| {
            let content = reply.map_or_else(
                || format!("This is the fake DeepSeek's copy of {url}."),
                str::to_owned,
            );
            json!({"url": url, "title": "Fake page", "content": content})
        },
    )
    .await
}
