//! What every route does with a request before it answers: read, record,
//! authenticate, parse, validate, act out the failures that come before a
//! response head. Errors come in the route's [`Dialect`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{anthropic, lock, record, wire, Behavior, Failure, Probe, Shared};

/// `None` when the key is right (or none is required), else the 401.
pub(crate) fn check_key(
    shared: &Shared,
    headers: &HeaderMap,
    dialect: Dialect,
) -> Option<Response> {
    let expected = lock(&shared.api_key).clone()?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = header("x-api-key").filter(|_| dialect == Dialect::Anthropic);
    if bearer == Some(expected.as_str()) || x_api_key == Some(expected.as_str()) {
        return None;
    }
    let got = x_api_key.or(bearer).unwrap_or("");
    // DeepSeek echoes (part of) the presented key in its 401 text. The fake
    // echoes all of it, so a gateway that forwards this body is caught.
    let message = format!("Authentication Fails, Your api key: {got} is invalid");
    Some(dialect.error(401, &message))
}

/// The error-body shape of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// DeepSeek's own: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl Dialect {
    /// An error answer with `message`, its type chosen from the status.
    pub(crate) fn error(self, status: u16, message: &str) -> Response {
        match self {
            Dialect::OpenAi => {
                let kind = match status {
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    500.. => "server_error",
                    _ => "invalid_request_error",
                };
                wire::error_response(status, message, kind)
            }
            Dialect::Anthropic => anthropic::error_response(status, message),
        }
    }

    /// The answer for [`Failure::Status`].
    fn failure(self, status: u16) -> Response {
        match self {
            Dialect::OpenAi => wire::status_failure(status),
            Dialect::Anthropic => anthropic::status_failure(status),
        }
    }
}

/// One POST as received: recorded, its key checked, its probe running.
pub(crate) struct Call {
    pub(crate) probe: Probe,
    pub(crate) path: String,
    pub(crate) body: Bytes,
    pub(crate) dialect: Dialect,
}

impl Call {
    /// Ends the call with an immediate answer.
    pub(crate) fn answer(self, response: Response) -> Response {
        self.probe.finish();
        response
    }

    /// Ends the call with a 400 in the route's shape.
    pub(crate) fn reject(self, message: &str) -> Response {
        let response = self.dialect.error(400, message);
        self.answer(response)
    }

    /// The body as a JSON object, or why not.
    pub(crate) fn json_object(&self) -> Result<Map<String, Value>, String> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("Invalid Format: the body must be a JSON object".to_owned()),
            Err(e) => Err(format!("Invalid Format: {e}")),
        }
    }

    /// The behaviour for this call: the body's `_fake`, else the default.
    pub(crate) fn behavior(
        &self,
        shared: &Shared,
        body: &Map<String, Value>,
    ) -> Result<Behavior, String> {
        match body.get("_fake") {
            None => Ok(lock(&shared.default).clone()),
            Some(fake) => Behavior::deserialize(fake).map_err(|e| format!("Invalid _fake: {e}")),
        }
    }

    /// Acts out the failures that come before a response head (pause,
    /// hang, status, redirect). `Ok` means: go on and answer.
    pub(crate) async fn before_head(self, behavior: &Behavior) -> Result<Self, Response> {
        if behavior.head_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(behavior.head_delay_ms)).await;
        }
        match behavior.fail {
            Some(Failure::Hang) => std::future::pending().await,
            Some(Failure::Status(code)) => {
                let response = self.dialect.failure(code);
                Err(self.answer(response))
            }
            Some(Failure::Redirect) => Err(self.answer(
                Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", "http://127.0.0.1:9/elsewhere")
                    .body(Body::empty())
                    .unwrap_or_default(),
            )),
            _ => Ok(self),
        }
    }
}

/// Reads, records and authenticates a request; only POST goes on.
pub(crate) async fn receive(
    shared: &Arc<Shared>,
    req: Request,
    dialect: Dialect,
) -> Result<Call, Response> {
    let probe = Probe::new(shared.clone());
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return Err(dialect.error(400, "unreadable body")),
    };
    let path = parts.uri.path().to_owned();
    record(
        shared,
        parts.method.clone(),
        path.clone(),
        parts.headers.clone(),
        body.clone(),
    );
    if parts.method != Method::POST {
        probe.finish();
        return Err((StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response());
    }
    if let Some(denied) = check_key(shared, &parts.headers, dialect) {
        probe.finish();
        return Err(denied);
    }
    Ok(Call {
        probe,
        path,
        body,
        dialect,
    })
}

/// The model that serves `requested` on DeepSeek's own routes; a missing
/// name is served by flash.
pub(crate) fn served_model(requested: Option<&str>) -> Result<&'static str, String> {
    match requested {
        None | Some("deepseek-flash" | "deepseek-v4-flash") => Ok("deepseek-flash"),
        Some("deepseek-v4-pro") => Ok("deepseek-v4-pro"),
        Some(_) => Err("Model Not Exist".to_owned()),
    }
}

/// A body's `model`, which must be a string when present.
pub(crate) fn model_field(body: &Map<String, Value>) -> Result<Option<&str>, String> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) => Ok(Some(m)),
        Some(_) => Err("Invalid Format: model must be a string".to_owned()),
    }
}

/// Whether thinking is on: `"thinking": {"type": "enabled" | "disabled"}`,
/// on when absent.
pub(crate) fn thinking_on(thinking: Option<&Value>) -> Result<bool, String> {
    let Some(thinking) = thinking.filter(|t| !t.is_null()) else {
        return Ok(true);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        _ => Err(r#"Invalid thinking: expected {"type": "enabled" | "disabled"}"#.to_owned()),
    }
}

/// Checks an end-user id: at most 512 bytes of `[A-Za-z0-9_-]`.
pub(crate) fn check_user_id(user_id: Option<&Value>) -> Result<(), String> {
    let Some(user_id) = user_id.filter(|u| !u.is_null()) else {
        return Ok(());
    };
    let ok = user_id.as_str().is_some_and(|u| {
        u.len() <= 512
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err("Invalid user_id: at most 512 characters of [A-Za-z0-9_-]".to_owned())
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}
