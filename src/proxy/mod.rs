//! Forwarding to DeepSeek.
//!
//! A completion request goes: take the token's slot (or 429 at once) -> read
//! and check the body -> send upstream with the real key -> relay the
//! response body, which now owns the slot. See [`relay`] for how the stream
//! ends, and [`upstream`] for what is sent and how answers are classified.

pub mod headers;
pub mod hold;
pub mod pool;
pub mod relay;
pub mod upstream;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::Response;
use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::time::Instant;

use crate::access_log::{RequestId, RequestLog};
use crate::admin::AdminToken;
use crate::auth::{AuthToken, SlotLease};
use crate::body::read_limited;
use crate::error::ApiError;
use crate::limits::quota::{Admission, Ask};
use crate::state::AppState;
use hold::{Charge, Hold};
use relay::RelayBody;
pub use upstream::{Route, Upstream};

/// What every proxied request carries besides its body.
pub struct Context {
    state: AppState,
    log: RequestLog,
    request_id: RequestId,
    headers: HeaderMap,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Context
where
    AppState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            state: axum::extract::FromRef::from_ref(state),
            log: parts
                .extensions
                .get::<RequestLog>()
                .cloned()
                .unwrap_or_default(),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .ok_or(ApiError::Internal)?,
            headers: std::mem::take(&mut parts.headers),
        })
    }
}

/// `POST /chat/completions` and `POST /v1/chat/completions`.
pub async fn chat(
    token: AuthToken,
    lease: SlotLease,
    cx: Context,
    body: Body,
) -> Result<Response, ApiError> {
    completion(Route::Chat, token, lease, cx, body).await
}

/// `POST /beta/chat/completions` (chat prefix completion).
pub async fn beta_chat(
    token: AuthToken,
    lease: SlotLease,
    cx: Context,
    body: Body,
) -> Result<Response, ApiError> {
    completion(Route::BetaChat, token, lease, cx, body).await
}

/// `POST /beta/completions` (FIM completion).
pub async fn beta_completions(
    token: AuthToken,
    lease: SlotLease,
    cx: Context,
    body: Body,
) -> Result<Response, ApiError> {
    completion(Route::BetaCompletions, token, lease, cx, body).await
}

/// `GET /models` and `GET /v1/models`: authenticated, but no slot taken.
pub async fn models(token: AuthToken, cx: Context) -> Result<Response, ApiError> {
    cx.log
        .set_request(Route::Models.name(), token.token_id, None, false);
    forward(Route::Models, &cx, None, &mut Hold::default()).await
}

/// `GET /user/balance` (admins): DeepSeek's account balance, passed through.
pub async fn balance(admin: AdminToken, cx: Context) -> Result<Response, ApiError> {
    let token = admin.0;
    cx.log
        .set_request(Route::Balance.name(), token.token_id, None, false);
    forward(Route::Balance, &cx, None, &mut Hold::default()).await
}

async fn completion(
    route: Route,
    token: AuthToken,
    lease: SlotLease,
    cx: Context,
    body: Body,
) -> Result<Response, ApiError> {
    // The slot was taken before the body is read (by the auth layer), so a
    // concurrent request is refused at once; from here it is ours to hold.
    let mut hold = Hold {
        slot: Some(lease.take().ok_or(ApiError::Internal)?),
        ..Hold::default()
    };
    let result = async {
        let state = &cx.state;
        let reading = Instant::now();
        let body = read_limited(body, state.max_body_bytes, state.body_read_timeout).await?;
        cx.log.set_body_wait(reading.elapsed());
        cx.log.set_bytes_in(body.len());
        let checked = check_body(route, &body)?;
        let account = &token.account;
        if !account.may_use(checked.model.as_deref()) {
            return Err(ApiError::ModelNotAllowed);
        }
        let limits = account.limits;
        if !limits.is_unlimited() {
            let max_tokens = checked.max_tokens.unwrap_or(state.default_max_tokens);
            let reserve = match limits.tokens_per_day {
                0 => 0,
                _ => (body.len() as u64).saturating_add(max_tokens),
            };
            let ask = Ask {
                user: &account.username,
                limits,
                reserve,
                now_ms: unix_ms(),
            };
            match state.store.admit(ask).await? {
                Admission::Granted(permit) => {
                    hold.charge = Some(Charge::new(permit, crate::usage::estimate_tokens(&body)));
                }
                Admission::Refused(refusal) => return Err(ApiError::Quota(refusal)),
            }
        }
        // From here the request goes upstream: it gets a ledger row.
        let model = checked.model.as_deref();
        cx.log
            .set_request(route.name(), token.token_id, model, checked.stream);
        hold.active = Some(state.active.register(
            cx.request_id.0.to_str().unwrap_or("-").to_owned(),
            account.username.clone(),
            route.name(),
            model.map(|m| m.chars().take(64).collect()),
            checked.stream,
        ));
        forward(route, &cx, Some(body), &mut hold).await
    }
    .await;
    // An error answer goes out only once the slot is free, so a client that
    // retries at once is not refused by its own previous request. DeepSeek
    // charges nothing for a request it failed or never answered.
    hold.not_billable();
    hold.release(None, 0).await;
    result
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends the request and relays the answer. What the request holds moves
/// into the response body only once there is a body to relay.
async fn forward(
    route: Route,
    cx: &Context,
    body: Option<Bytes>,
    hold: &mut Hold,
) -> Result<Response, ApiError> {
    let upstream = &cx.state.upstream;
    let started = Instant::now();
    let deadline = started + upstream.max_request;
    cx.log.mark_sent();
    let response = match upstream
        .send(route, &cx.headers, &cx.request_id.0, body, deadline)
        .await
    {
        Ok(response) => response,
        Err(e) => {
            // The log line and ledger row say how the upstream failed.
            if let Some(status) = e.upstream_status() {
                cx.log.set_upstream(status, started.elapsed());
            }
            let outcome = match e {
                ApiError::UpstreamTimeout => "timed_out",
                _ => "upstream_failed",
            };
            cx.log.set_outcome(outcome);
            return Err(e);
        }
    };
    cx.log.mark_head();
    let status = response.status();
    cx.log.set_upstream(status.as_u16(), started.elapsed());
    if !status.is_success() {
        hold.not_billable();
    }
    cx.log.set_trace_id(response.headers().get("x-ds-trace-id"));
    let is_event_stream = headers::is_event_stream(response.headers());
    let out_headers = headers::to_client(response.headers(), is_event_stream);
    let body = RelayBody::new(
        response.into_body(),
        upstream.timeout,
        deadline,
        is_event_stream,
        std::mem::take(hold),
        cx.log.clone(),
    );
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    Ok(out)
}

/// What the gateway reads from a request body: its model, whether it
/// streams, and its `max_tokens` (for the token quota), nothing else.
#[derive(Debug)]
pub struct CheckedBody<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
}

/// A number if the field is a non-negative integer; anything else is left
/// for DeepSeek to judge (and the default reservation applies).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Count(u64),
    Other(IgnoredAny),
}

impl Lenient {
    fn count(field: Option<Lenient>) -> Option<u64> {
        match field {
            Some(Lenient::Count(n)) => Some(n),
            _ => None,
        }
    }
}

/// The body of a chat route must be a JSON object with a `messages` array;
/// a FIM body must be a JSON object with a `prompt`. The body is parsed once,
/// here, and only the model is kept; everything else in it is the upstream's
/// business and passes through unchanged.
pub fn check_body(route: Route, body: &[u8]) -> Result<CheckedBody<'_>, ApiError> {
    #[derive(Deserialize)]
    struct Chat<'a> {
        #[allow(dead_code)]
        messages: Vec<IgnoredAny>,
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        max_tokens: Option<Lenient>,
        #[serde(default)]
        max_completion_tokens: Option<Lenient>,
    }
    #[derive(Deserialize)]
    struct Fim<'a> {
        #[allow(dead_code)]
        prompt: IgnoredAny,
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        max_tokens: Option<Lenient>,
    }
    // serde's derived structs also accept a JSON array of the fields in
    // order; a body must be an object, so say so before parsing.
    let is_object = body.trim_ascii_start().first() == Some(&b'{');
    let (parsed, expected) = match route {
        Route::BetaCompletions => (
            serde_json::from_slice::<Fim>(body).map(|b| CheckedBody {
                model: b.model,
                stream: b.stream.unwrap_or(false),
                max_tokens: Lenient::count(b.max_tokens),
            }),
            "a JSON object with a \"prompt\"",
        ),
        _ => (
            serde_json::from_slice::<Chat>(body).map(|b| CheckedBody {
                model: b.model,
                stream: b.stream.unwrap_or(false),
                max_tokens: Lenient::count(b.max_tokens)
                    .or(Lenient::count(b.max_completion_tokens)),
            }),
            "a JSON object with a \"messages\" array",
        ),
    };
    if !is_object {
        let code = if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
            "invalid_body"
        } else {
            "invalid_json"
        };
        return Err(ApiError::bad_request(
            code,
            format!("the request body must be {expected}"),
        ));
    }
    parsed.map_err(|e| {
        let code = if e.is_data() {
            "invalid_body"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(
            code,
            format!(
                "the request body must be {expected} (problem at line {} column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_bodies_need_an_object_with_a_messages_array() {
        let ok = br#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"x":1}"#;
        assert!(check_body(Route::Chat, ok).is_ok());
        for bad in [
            &b"{}"[..],
            b"[]",
            b"null",
            b"{\"messages\":\"hi\"}",
            b"{\"messages\":[]",
            b"{\"messages\":[]} trailing",
            b"[[]]",
            b"[[], \"deepseek-chat\"]",
            b"",
        ] {
            let err = check_body(Route::Chat, bad).expect_err("must be refused");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn fim_bodies_need_a_prompt() {
        assert!(check_body(
            Route::BetaCompletions,
            br#"{"prompt":"def f(","suffix":")"}"#
        )
        .is_ok());
        assert!(check_body(Route::BetaCompletions, br#"{"messages":[]}"#).is_err());
    }

    #[test]
    fn the_model_is_read_even_when_escaped() {
        let body = br#"{"messages":[],"model":"deepseek-\u0063hat"}"#;
        let checked = check_body(Route::Chat, body).expect("valid");
        assert_eq!(checked.model.as_deref(), Some("deepseek-chat"));
        let checked = check_body(Route::Chat, br#"{"messages":[]}"#).expect("valid");
        assert_eq!(checked.model, None);
    }

    #[test]
    fn max_tokens_is_read_when_it_is_a_count() {
        let max = |body: &[u8]| check_body(Route::Chat, body).expect("valid").max_tokens;
        assert_eq!(max(br#"{"messages":[],"max_tokens":100}"#), Some(100));
        assert_eq!(
            max(br#"{"messages":[],"max_completion_tokens":7}"#),
            Some(7)
        );
        assert_eq!(max(br#"{"messages":[],"max_tokens":"lots"}"#), None);
        assert_eq!(max(br#"{"messages":[],"max_tokens":-1}"#), None);
        assert_eq!(max(br#"{"messages":[]}"#), None);
    }

    #[test]
    fn syntax_errors_and_shape_errors_have_different_codes() {
        assert_eq!(
            check_body(Route::Chat, b"{not json").unwrap_err().code(),
            "invalid_json"
        );
        assert_eq!(
            check_body(Route::Chat, b"{}").unwrap_err().code(),
            "invalid_body"
        );
    }
}
