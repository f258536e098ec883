//! The Responses API (what Codex speaks).
//!
//! A stream is semantic events (`event: <type>` and a `data:` object with
//! the same `type` and a `sequence_number`); it ends with
//! `response.completed`, `response.incomplete` or `response.failed`, whose
//! `response.usage` holds the counts. There is no `[DONE]`. A failed stream
//! ends with an `error` event.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use crate::usage::Usage;

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    response: Option<WithUsage>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Self {
        let hit = u.input_tokens_details.map_or(0, |d| d.cached_tokens);
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: hit,
            cache_miss_tokens: u.input_tokens.saturating_sub(hit),
            reasoning_tokens: u.output_tokens_details.map_or(0, |d| d.reasoning_tokens),
        }
    }
}

/// Usage from the final event (`response.completed` and its siblings);
/// `response.created` carries `"usage":null`, which reads as nothing.
pub fn read_event(data: &[u8]) -> Option<Usage> {
    if !super::contains(data, b"\"usage\"") {
        return None;
    }
    serde_json::from_slice::<Event>(data)
        .ok()?
        .response?
        .usage
        .map(Usage::from)
}

pub fn read_json(body: &[u8]) -> Option<Usage> {
    super::json::usage::<RawUsage>(body).map(Usage::from)
}

/// The `sequence_number` of one event, to number the gateway's own error
/// event after the last one relayed.
pub fn sequence_number(data: &[u8]) -> Option<u64> {
    let at = super::find(data, b"\"sequence_number\":")? + 18;
    let digits = data[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .fold(None, |n: Option<u64>, d| {
            Some(
                n.unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(u64::from(d - b'0')),
            )
        });
    digits
}

pub fn stream_error_event(code: &str, message: &str, sequence: u64) -> Vec<u8> {
    let data = serde_json::json!({
        "type": "error",
        "code": code,
        "message": message,
        "param": null,
        "sequence_number": sequence,
    });
    let mut event = b"event: error\ndata: ".to_vec();
    event.extend_from_slice(data.to_string().as_bytes());
    event.extend_from_slice(b"\n\n");
    event
}

/// Rewords one of the gateway's own errors for Codex.
///
/// Codex waits out any `Retry-After` before it retries, so a daily quota
/// (wait: hours) would hang it. A long refusal is therefore also told in
/// Codex's own words, `"type":"usage_limit_reached"` with `resets_at`,
/// which makes it stop at once and say when to try again. Other clients
/// (the openai SDK) still get a 429 `RateLimitError` with our `code`.
pub fn rewrite_error(response: &mut Response, code: &str, message: &str, now_secs: u64) {
    let long_refusal = response.status() == StatusCode::TOO_MANY_REQUESTS
        && response.headers().get("x-should-retry") == Some(&HeaderValue::from_static("false"));
    if !long_refusal {
        return;
    }
    let wait = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "usage_limit_reached",
        "code": code,
        "resets_at": now_secs.saturating_add(wait),
    }})
    .to_string();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.body_mut() = axum::body::Body::from(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_completed_event_only() {
        let created =
            br#"{"type":"response.created","sequence_number":0,"response":{"usage":null}}"#;
        assert_eq!(read_event(created), None);
        let done = br#"{"type":"response.completed","sequence_number":9,"response":{"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":4},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":17}}}"#;
        let usage = read_event(done).expect("usage");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.cache_miss_tokens
            ),
            (12, 4, 8)
        );
        assert_eq!((usage.completion_tokens, usage.reasoning_tokens), (5, 2));
        assert_eq!(sequence_number(done), Some(9));
        assert_eq!(sequence_number(b"{}"), None);
    }
}
