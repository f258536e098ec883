//! The chat routes' handlers: chat completions, FIM, models, balance. The
//! wire format is in [`crate::wire`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::request::{self, check_key, Dialect};
use crate::{lock, record, wire, Behavior, Flavor, ReplyPlan, Shared};

pub(crate) async fn models(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record(
        &shared,
        parts.method,
        parts.uri.path().to_owned(),
        parts.headers.clone(),
        Bytes::new(),
    );
    if let Some(denied) = check_key(&shared, &parts.headers, Dialect::OpenAi) {
        return denied;
    }
    let body = serde_json::json!({
        "object": "list",
        "data": [
            {"id": "deepseek-flash", "object": "model", "owned_by": "deepseek"},
            {"id": "deepseek-v4-pro", "object": "model", "owned_by": "deepseek"}
        ]
    });
    axum::Json(body).into_response()
}

pub(crate) async fn balance(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record(
        &shared,
        parts.method,
        parts.uri.path().to_owned(),
        parts.headers.clone(),
        Bytes::new(),
    );
    if let Some(denied) = check_key(&shared, &parts.headers, Dialect::OpenAi) {
        return denied;
    }
    axum::Json(serde_json::json!({
        "is_available": true,
        "balance_infos": [{"currency": "CNY", "total_balance": "110.00",
                           "granted_balance": "10.00", "topped_up_balance": "100.00"}]
    }))
    .into_response()
}

pub(crate) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

#[derive(Deserialize, Default)]
struct Incoming {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default)]
    user_id: Option<Value>,
    #[serde(default, rename = "_fake")]
    fake: Option<Behavior>,
}

pub(crate) async fn completion(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let call = match request::receive(&shared, req, Dialect::OpenAi).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let incoming: Incoming = match serde_json::from_slice(&call.body) {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("Failed to deserialize the JSON body into the target type: {e}");
            let response = wire::error_response(422, &msg, "invalid_request_error");
            return call.answer(response);
        }
    };
    let fim = call.path.ends_with("/completions") && !call.path.ends_with("chat/completions");
    let checked = request::served_model(incoming.model.as_deref()).and_then(|model| {
        request::check_user_id(incoming.user_id.as_ref())?;
        // FIM has no thinking.
        let thinking = !fim && request::thinking_on(incoming.thinking.as_ref())?;
        Ok((model, thinking))
    });
    let (model, thinking) = match checked {
        Ok(c) => c,
        Err(message) => return call.reject(&message),
    };
    let behavior = incoming
        .fake
        .clone()
        .unwrap_or_else(|| lock(&shared.default).clone());
    let call = match call.before_head(&behavior).await {
        Ok(call) => call,
        Err(response) => return response,
    };

    let flavor = if fim {
        Flavor::Fim
    } else if thinking {
        Flavor::Reasoner
    } else {
        Flavor::Chat
    };
    let reply = behavior.reply.clone().unwrap_or_else(|| {
        let said = incoming
            .messages
            .last()
            .and_then(|m| m.get("content"))
            .and_then(|c| c.as_str())
            .or(incoming.prompt.as_deref())
            .unwrap_or("");
        wire::canned_reply(said)
    });
    let plan = ReplyPlan {
        flavor,
        model: model.to_owned(),
        reply,
        behavior,
    };
    if incoming.stream {
        wire::stream_response(plan, call.probe)
    } else {
        wire::json_response(plan, call.probe)
    }
}
