//! Anthropic Messages at `/anthropic/v1/messages` (what Claude Code speaks).
//!
//! Usage is split: `message_start` carries the input counts, and the last
//! `message_delta` the final output count. Errors, the gateway's own
//! included, are `{"type":"error","error":{"type","message"}}`; a stream
//! that fails after it started ends with `event: error` and that body.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use crate::usage::Usage;

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<WithUsage>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl RawUsage {
    /// Anthropic's `input_tokens` leaves out cache reads (and writes): the
    /// prompt is their sum.
    fn input_into(&self, usage: &mut Usage) {
        if let Some(input) = self.input_tokens {
            let read = self.cache_read_input_tokens.unwrap_or(0);
            let written = self.cache_creation_input_tokens.unwrap_or(0);
            usage.prompt_tokens = input + read + written;
            usage.cached_tokens = read;
            usage.cache_miss_tokens = input + written;
        }
    }
}

/// `message_start` fills in the input side of `partial`; the final count
/// comes with `message_delta`, which completes the usage.
pub fn read_event(data: &[u8], partial: &mut Usage) -> Option<Usage> {
    if !super::contains(data, b"\"usage\"") {
        return None;
    }
    let event: Event = serde_json::from_slice(data).ok()?;
    match event.kind.as_str() {
        "message_start" => {
            if let Some(usage) = event.message.and_then(|m| m.usage) {
                usage.input_into(partial);
            }
            None
        }
        "message_delta" => {
            let usage = event.usage?;
            // Newer answers repeat the input counts here.
            usage.input_into(partial);
            partial.completion_tokens = usage.output_tokens?;
            Some(*partial)
        }
        _ => None,
    }
}

pub fn read_json(body: &[u8]) -> Option<Usage> {
    let raw = super::json::usage::<RawUsage>(body)?;
    let mut usage = Usage::default();
    raw.input_into(&mut usage);
    usage.completion_tokens = raw.output_tokens?;
    Some(usage)
}

/// The error `type` Anthropic's SDKs map to their exception classes.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

pub fn error_body(status: StatusCode, message: &str) -> Vec<u8> {
    serde_json::json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
    })
    .to_string()
    .into_bytes()
}

pub fn stream_error_event(code: &str, message: &str) -> Vec<u8> {
    let status = match code {
        "upstream_idle_timeout" | "upstream_max_duration" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut event = b"event: error\ndata: ".to_vec();
    event.extend_from_slice(&error_body(status, message));
    event.extend_from_slice(b"\n\n");
    event
}

/// Rewrites one of the gateway's own error answers into this dialect.
///
/// Claude Code treats a 403 as a credentials problem and can send its user
/// to the login screen, so a policy refusal (a model the user may not use,
/// an admin-only route) is answered 400 `invalid_request_error` here: the
/// agent shows the message and stops. See the README's table.
pub fn rewrite_error(response: &mut Response, message: &str) {
    if response.status() == StatusCode::FORBIDDEN {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    let body = error_body(response.status(), message);
    response.headers_mut().insert(
        axum::http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len()),
    );
    *response.body_mut() = axum::body::Body::from(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_comes_from_message_start_and_output_from_the_last_delta() {
        let mut partial = Usage::default();
        let start = br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":7,"cache_read_input_tokens":5,"output_tokens":1}}}"#;
        assert_eq!(read_event(start, &mut partial), None);
        let delta = br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#;
        let usage = read_event(delta, &mut partial).expect("final");
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 9,
                cached_tokens: 5,
                cache_miss_tokens: 7,
                reasoning_tokens: 0
            }
        );
        let json = br#"{"type":"message","usage":{"input_tokens":3,"cache_read_input_tokens":0,"output_tokens":4}}"#;
        let usage = read_json(json).expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
    }

    #[test]
    fn statuses_map_to_the_sdk_error_types() {
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(
            error_type(StatusCode::PAYLOAD_TOO_LARGE),
            "request_too_large"
        );
        assert_eq!(
            error_type(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error"
        );
        assert_eq!(error_type(StatusCode::BAD_GATEWAY), "api_error");
    }
}
