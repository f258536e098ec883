//! DeepSeek's wire format: response bodies, SSE chunks and error bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{Behavior, Failure, Probe};

/// Which response shape to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `/chat/completions` with thinking disabled.
    Chat,
    /// `/chat/completions` with thinking enabled (the default):
    /// `reasoning_content` first.
    Reasoner,
    /// `/beta/completions` (FIM): `choices[0].text`.
    Fim,
}

/// Everything needed to produce one answer.
#[derive(Clone, Debug)]
pub struct ReplyPlan {
    pub flavor: Flavor,
    pub model: String,
    pub reply: String,
    pub behavior: Behavior,
}

const FINGERPRINT: &str = "fp_fake_deepseek";
/// Written into a stamped chunk when it is built; its 16 digits are
/// overwritten with the send time, so the frame's length never changes.
const STAMP_PLACEHOLDER: &str = "t=0000000000000000 ";
const STAMP_DIGITS: usize = 16;
/// The reasoning every thinking answer carries.
pub(crate) const REASONING: &str = "The user greeted me. I should answer briefly and politely.";
/// The prompt size reported when a [`Behavior`] does not set one.
const PROMPT_TOKENS: u64 = 11;

/// Token counts of one answer, shared by every format's `usage`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tokens {
    /// Prompt tokens in all.
    pub prompt: u64,
    /// Prompt tokens served from the cache (at most `prompt`).
    pub hit: u64,
    /// Tokens of the reply text.
    pub completion: u64,
    /// Tokens of the reasoning (0 when thinking is off).
    pub reasoning: u64,
}

impl Tokens {
    pub(crate) fn new(behavior: &Behavior, reply: &str, thinking: bool) -> Self {
        let prompt = behavior.prompt_tokens.unwrap_or(PROMPT_TOKENS);
        Self {
            prompt,
            hit: behavior.cache_hit_tokens.min(prompt),
            completion: reply.split_whitespace().count() as u64,
            reasoning: if thinking {
                REASONING.split_whitespace().count() as u64
            } else {
                0
            },
        }
    }

    pub(crate) fn miss(&self) -> u64 {
        self.prompt - self.hit
    }

    /// Everything generated: reply and reasoning.
    pub(crate) fn output(&self) -> u64 {
        self.completion + self.reasoning
    }
}

/// A fresh id with `prefix`: unique within the process.
pub(crate) fn fresh_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:04x}", now_secs())
}

pub fn canned_reply(said: &str) -> String {
    let said: String = said.chars().take(200).collect();
    format!("Hello! This is the fake DeepSeek behind deepseek_proxy. You said: {said}")
}

/// DeepSeek's error body for a status.
pub fn error_response(status: u16, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null,
                                "code": "invalid_request_error"}});
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// The answer DeepSeek gives for a failing status, as its docs list them.
pub fn status_failure(status: u16) -> Response {
    let (message, kind) = match status {
        400 => (
            "Invalid Format: Invalid request body format.",
            "invalid_request_error",
        ),
        401 => (
            "Authentication Fails, Your api key: ****fake is invalid",
            "authentication_error",
        ),
        402 => ("Insufficient Balance", "unknown_error"),
        404 => ("Not Found", "invalid_request_error"),
        422 => (
            "Invalid Parameters: messages must not be empty",
            "invalid_request_error",
        ),
        429 => ("Rate Limit Reached", "rate_limit_error"),
        500 => ("Server Error", "server_error"),
        503 => ("Server Overloaded", "server_error"),
        _ => ("Unexpected failure", "unknown_error"),
    };
    let mut response = error_response(status, message, kind);
    if status == 429 || status == 503 {
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("7"));
    }
    response
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now, in microseconds since the Unix epoch (wall clock, so that another
/// process on the machine can compare it with its own).
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `text` cut at spaces into at most `parts` pieces that concatenate to it.
pub(crate) fn words(text: &str, parts: usize) -> Vec<String> {
    let all: Vec<&str> = text.split_inclusive(' ').collect();
    let parts = parts.max(1).min(all.len().max(1));
    let per = all.len().div_ceil(parts).max(1);
    all.chunks(per).map(|c| c.concat()).collect()
}

fn usage(plan: &ReplyPlan) -> serde_json::Value {
    let thinking = plan.flavor == Flavor::Reasoner;
    let t = Tokens::new(&plan.behavior, &plan.reply, thinking);
    let mut usage = json!({
        "prompt_tokens": t.prompt,
        "completion_tokens": t.output(),
        "total_tokens": t.prompt + t.output(),
        "prompt_tokens_details": {"cached_tokens": t.hit},
        "prompt_cache_hit_tokens": t.hit,
        "prompt_cache_miss_tokens": t.miss()
    });
    if thinking {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": t.reasoning});
    }
    usage
}

/// The data payloads of a streamed answer, without the `data: ` framing,
/// each with whether it carries a send-time stamp.
fn stream_events(plan: &ReplyPlan, id: &str) -> Vec<(String, bool)> {
    let created = now_secs();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        if plan.flavor == Flavor::Fim {
            json!({"id": id, "object": "text_completion", "created": created, "model": plan.model,
                   "system_fingerprint": FINGERPRINT,
                   "choices": [{"text": delta, "index": 0, "logprobs": null, "finish_reason": finish}]})
        } else {
            json!({"id": id, "object": "chat.completion.chunk", "created": created,
                   "model": plan.model, "system_fingerprint": FINGERPRINT,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        }
    };
    let stamp = stamp_prefix(&plan.behavior);
    let mut events = Vec::new();
    match plan.flavor {
        Flavor::Fim => {}
        Flavor::Chat => events.push(chunk(json!({"role": "assistant", "content": ""}), None)),
        Flavor::Reasoner => {
            events.push(chunk(
                json!({"role": "assistant", "content": null, "reasoning_content": ""}),
                None,
            ));
            for w in words(REASONING, 3) {
                events.push(chunk(
                    json!({"content": null, "reasoning_content": w}),
                    None,
                ));
            }
        }
    }
    let plain = events.len();
    for w in words(&plan.reply, plan.behavior.chunks) {
        let w = format!("{stamp}{w}");
        let delta = match plan.flavor {
            Flavor::Fim => json!(w),
            Flavor::Chat => json!({"content": w}),
            Flavor::Reasoner => json!({"content": w, "reasoning_content": null}),
        };
        events.push(chunk(delta, None));
    }
    let content = plain..events.len();
    let last = if plan.flavor == Flavor::Fim {
        json!("")
    } else {
        json!({"content": ""})
    };
    let mut last = chunk(last, Some("stop"));
    last["usage"] = usage(plan);
    events.push(last);
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.to_string(), plan.behavior.stamp && content.contains(&i)))
        .collect()
}

fn full_body(plan: &ReplyPlan, id: &str) -> String {
    let created = now_secs();
    let choice = match plan.flavor {
        Flavor::Fim => {
            json!({"text": plan.reply, "index": 0, "logprobs": null, "finish_reason": "stop"})
        }
        Flavor::Chat => json!({"index": 0, "message": {"role": "assistant", "content": plan.reply},
                               "logprobs": null, "finish_reason": "stop"}),
        Flavor::Reasoner => {
            json!({"index": 0, "message": {"role": "assistant", "content": plan.reply,
                                   "reasoning_content": REASONING}, "logprobs": null, "finish_reason": "stop"})
        }
    };
    let object = if plan.flavor == Flavor::Fim {
        "text_completion"
    } else {
        "chat.completion"
    };
    json!({"id": id, "object": object, "created": created, "model": plan.model,
           "choices": [choice], "usage": usage(plan), "system_fingerprint": FINGERPRINT})
    .to_string()
}

type Frame = Result<Bytes, std::io::Error>;

/// One frame of a body, and where the digits of its send-time stamp start,
/// if it has one.
pub(crate) struct Outgoing {
    bytes: Bytes,
    stamp_at: Option<usize>,
    /// Whether [`Failure::ResetAfter`] and [`Failure::StallAfter`] count it.
    counted: bool,
}

impl Outgoing {
    /// A frame the failure counters count.
    pub(crate) fn counted(bytes: Bytes) -> Self {
        Self {
            bytes,
            stamp_at: None,
            counted: true,
        }
    }

    /// An SSE frame whose text holds [`STAMP_PLACEHOLDER`] (put there by
    /// [`stamp_prefix`]) when `stamped`: the first match is taken to be it.
    pub(crate) fn sse(text: String, stamped: bool, counted: bool) -> Self {
        let stamp_at = stamped
            .then(|| text.find(STAMP_PLACEHOLDER))
            .flatten()
            .map(|i| i + "t=".len());
        Self {
            bytes: Bytes::from(text),
            stamp_at,
            counted,
        }
    }

    /// The bytes to send now: with the current time in the stamp, if any.
    fn into_bytes(self) -> Bytes {
        let Some(at) = self.stamp_at else {
            return self.bytes;
        };
        // 16 digits last until the year 2286.
        let digits = format!("{:016}", now_micros().min(9_999_999_999_999_999));
        let mut bytes = self.bytes.to_vec();
        bytes[at..at + STAMP_DIGITS].copy_from_slice(digits.as_bytes());
        Bytes::from(bytes)
    }
}

/// What a streamed content chunk's text starts with: the stamp placeholder
/// when the behaviour asks for stamps, else nothing.
pub(crate) fn stamp_prefix(behavior: &Behavior) -> &'static str {
    if behavior.stamp {
        STAMP_PLACEHOLDER
    } else {
        ""
    }
}

/// A JSON document as two counted frames, so that a `reset_after: 1` lands
/// mid-document.
pub(crate) fn json_frames(body: &str) -> Vec<Outgoing> {
    let mid = body.len() / 2;
    vec![
        Outgoing::counted(Bytes::copy_from_slice(&body.as_bytes()[..mid])),
        Outgoing::counted(Bytes::copy_from_slice(&body.as_bytes()[mid..])),
    ]
}

/// Sends `frames` as a 200 answer, acting out `behavior` (keep-alives,
/// pauses, mid-body failures), from a task that feeds the response body. The
/// task ends (and its probe reports a cancellation) as soon as the body is
/// dropped, even while it sleeps.
///
/// `ResetAfter(n)`/`StallAfter(n)` strike before the first frame that would
/// follow the `n`th counted frame.
pub(crate) fn streamed(
    sse: bool,
    probe: Probe,
    behavior: Behavior,
    frames: Vec<Outgoing>,
) -> Response {
    let content_type = if sse {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let (tx, rx) = mpsc::channel::<Frame>(4);
    tokio::spawn(async move {
        let mut probe = probe;
        let b = &behavior;
        let gap = |ms: u64| Duration::from_millis(ms);
        // Waits `pause`; false if the body was dropped meanwhile.
        let wait = |pause: Duration| {
            let tx = tx.clone();
            async move {
                if !pause.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = tx.closed() => return false,
                    }
                }
                true
            }
        };
        if b.fail == Some(Failure::HangBody) {
            tx.closed().await;
            return drop(probe);
        }
        for _ in 0..b.keepalives {
            let ka = if sse { ": keep-alive\n\n" } else { "\n" };
            let ka_frame = Ok(Bytes::from_static(ka.as_bytes()));
            if !wait(gap(b.keepalive_ms)).await || tx.send(ka_frame).await.is_err() {
                return drop(probe);
            }
            probe.sent(ka.as_bytes());
        }
        let mut counted = 0;
        for frame in frames {
            match b.fail {
                Some(Failure::ResetAfter(n)) if counted == n => {
                    // Let the frames already sent leave the socket first.
                    tokio::time::sleep(gap(b.chunk_delay_ms.max(20))).await;
                    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
                    let _ = tx.send(Err(reset)).await;
                    return probe.finish();
                }
                Some(Failure::StallAfter(n)) if counted == n => {
                    tx.closed().await;
                    return drop(probe);
                }
                _ => {}
            }
            if frame.counted {
                counted += 1;
                if !wait(gap(b.chunk_delay_ms)).await {
                    return drop(probe);
                }
            }
            // Stamped (when asked) right before it goes to the body.
            let frame = frame.into_bytes();
            probe.sent(&frame);
            if tx.send(Ok(frame)).await.is_err() {
                return drop(probe);
            }
        }
        probe.finish();
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("x-ds-trace-id", "fake-trace-0001")
        // A header no proxy should pass on.
        .header("set-cookie", "fake_session=1; HttpOnly")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

pub(crate) fn stream_response(plan: ReplyPlan, probe: Probe) -> Response {
    let id = format!("fake-{:x}", now_secs());
    let mut frames: Vec<Outgoing> = stream_events(&plan, &id)
        .into_iter()
        .map(|(event, stamped)| Outgoing::sse(format!("data: {event}\n\n"), stamped, true))
        .collect();
    frames.push(Outgoing::counted(Bytes::from_static(b"data: [DONE]\n\n")));
    streamed(true, probe, plan.behavior, frames)
}

pub(crate) fn json_response(plan: ReplyPlan, probe: Probe) -> Response {
    let id = format!("fake-{:x}", now_secs());
    let frames = json_frames(&full_body(&plan, &id));
    streamed(false, probe, plan.behavior, frames)
}
