//! Forwarding to DeepSeek.
//!
//! Every format takes the same path: 429 at once if this process already
//! holds the token's slot -> read the body and check it as the route's
//! [`Format`] says -> [`prepare`]: resolve the served model, rewrite the
//! fields the gateway owns -> policy on the served model -> the slot and
//! the quotas in one step ([`crate::store::Store::enter`]) -> send upstream
//! with the real key -> relay the response body, which now owns the slot. See
//! [`relay`] for how the stream ends, and [`upstream`] for the routes' paths
//! and how answers are classified.

mod failover;
pub mod headers;
pub mod hold;
mod models;
pub mod pool;
pub mod prepare;
pub mod relay;
pub mod upstream;

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::time::Instant;

use crate::ablation::{self, Part};
use crate::access_log::{RequestId, RequestLog, Requested};
use crate::admin::AdminToken;
use crate::auth::{AuthToken, SlotClaim};
use crate::body::read_limited;
use crate::error::ApiError;
use crate::limits::quota::Ask;
use crate::state::AppState;
use crate::store::Entry;
use hold::{Bill, Hold};
use prepare::prepare;
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

/// A handler for each route that takes the token's slot: the route names
/// the upstream path and the format; the pipeline is the same for all.
macro_rules! slot_route {
    ($(#[$doc:meta] $name:ident => $route:expr;)*) => {$(
        #[$doc]
        pub fn $name(
            token: AuthToken,
            claim: SlotClaim,
            cx: Context,
            body: Body,
        ) -> impl Future<Output = Result<Response, ApiError>> {
            completion($route, token, claim, cx, body)
        }
    )*};
}

slot_route! {
    /// `POST /chat/completions` and `POST /v1/chat/completions`.
    chat => Route::Chat;
    /// `POST /beta/chat/completions` (chat prefix completion).
    beta_chat => Route::BetaChat;
    /// `POST /beta/completions` (FIM completion).
    beta_completions => Route::BetaCompletions;
    /// `POST /responses` and `POST /v1/responses`.
    responses => Route::Responses;
    /// `POST /anthropic/v1/messages`.
    messages => Route::Messages;
    /// `POST /v1/tools/search`.
    tool_search => Route::ToolSearch;
    /// `POST /v1/tools/fetch`.
    tool_fetch => Route::ToolFetch;
}

/// `GET /models` and `GET /v1/models`: authenticated, but no slot taken.
/// DeepSeek's list, plus the gateway's aliases.
pub async fn models(token: AuthToken, cx: Context) -> Result<Response, ApiError> {
    cx.log
        .set_request(&Requested::bare(Route::Models), token.token_id);
    let response = forward(Route::Models, &cx, None, None, &mut Hold::default()).await?;
    let base = cx.state.directory.snapshot().base.clone();
    Ok(models::with_aliases(response, &base.models).await)
}

/// `GET /user/balance` (admins): DeepSeek's account balance, passed through.
pub async fn balance(admin: AdminToken, cx: Context) -> Result<Response, ApiError> {
    let token = admin.0;
    cx.log
        .set_request(&Requested::bare(Route::Balance), token.token_id);
    forward(Route::Balance, &cx, None, None, &mut Hold::default()).await
}

/// `POST /anthropic/v1/messages/count_tokens`: no slot, no quota, no
/// ledger row (DeepSeek does not bill it), but the same model policy.
pub async fn count_tokens(token: AuthToken, cx: Context, body: Body) -> Result<Response, ApiError> {
    let route = Route::CountTokens;
    let state = &cx.state;
    let body = read_limited(body, state.max_body_bytes, state.body_read_timeout).await?;
    let checked = route.format().check(&body)?;
    let base = state.directory.snapshot().base.clone();
    let prepared = prepare(&base.models, route.format(), &checked, &body, None)?;
    if !token.may_use(prepared.served.as_deref()) {
        return Err(ApiError::ModelNotAllowed);
    }
    let served = prepared.served.as_deref();
    forward(
        route,
        &cx,
        Some(prepared.body.clone()),
        served,
        &mut Hold::default(),
    )
    .await
}

/// The pipeline of every slot route. Its future lives in a box from the
/// request's arrival to DeepSeek's answer, so it is written to stay small:
/// an `async` block (an `async fn` would keep its arguments twice, as
/// arguments and as the locals they move into), and the rare, large state
/// of a new upstream connection is boxed apart (`pool::Pool::send`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice"
)]
fn completion(
    route: Route,
    token: AuthToken,
    claim: SlotClaim,
    cx: Context,
    body: Body,
) -> impl Future<Output = Result<Response, ApiError>> {
    async move {
        // Held from before the body was read (a busy token was refused then);
        // dropped on any way out until `enter` turns it into the slot.
        let claim = claim.take();
        if claim.is_none() && !ablation::off(Part::Slot) {
            return Err(ApiError::Internal);
        }
        let mut hold = Hold::default();
        let result = async {
            let state = &cx.state;
            let format = route.format();
            let reading = Instant::now();
            let body = read_limited(body, state.max_body_bytes, state.body_read_timeout).await?;
            cx.log.set_body_wait(reading.elapsed());
            cx.log.set_bytes_in(body.len());
            let checked = format.check(&body)?;
            let account = &token.account;
            // Aliases and defaults as of now; a reload mid-request changes nothing.
            let base = state.directory.snapshot().base.clone();
            let prepared = prepare(
                &base.models,
                format,
                &checked,
                &body,
                account.upstream_user_id.as_deref(),
            )?;
            // Policy runs on the model DeepSeek will serve.
            let served = prepared.served.as_deref();
            if !token.may_use(served) {
                return Err(ApiError::ModelNotAllowed);
            }
            // Priced as of now, the moment it is sent.
            let now_ms = unix_ms();
            let pricing = &base.pricing;
            let prices = pricing.prices(served, !format.has_tokens(), now_ms);
            // A tool call has no tokens: nothing to estimate.
            let prompt_estimate = match format.has_tokens() {
                true => crate::usage::estimate_tokens(&body),
                false => 0,
            };
            let max_tokens = checked.max_tokens.unwrap_or(base.default_max_tokens);
            let limits = account.limits;
            let ask = Ask {
                user: &account.username,
                limits,
                reserve: match limits.tokens_per_day {
                    0 => 0,
                    _ if !format.has_tokens() => 0,
                    _ => (body.len() as u64).saturating_add(max_tokens),
                },
                key: token.key.as_ref().map(|k| (&*k.id, k.budget_per_month)),
                reserve_micros: prices
                    .map_or(0, |p| p.list.worst_case(body.len() as u64, max_tokens)),
                currency: pricing.currency.code(),
                now_ms,
            };
            let budgeted = limits.budget_per_month > 0 || ask.key_budget() > 0;
            if budgeted && prices.is_none() {
                return Err(ApiError::bad_request(
                    "model_not_priced",
                    format!(
                    "your account has a budget, and the gateway has no price for model \"{}\": \
                     ask its operator to add it under [pricing.models]",
                    served.unwrap_or("-").chars().take(64).collect::<String>()
                ),
                ));
            }
            // The slot and the quotas in one step (one round trip with Redis).
            let ask = (ask.is_limited() && !ablation::off(Part::Quota)).then_some(ask);
            match state.store.enter(token.token_id, claim, ask).await? {
                Entry::Granted { lease, permit } => {
                    hold.slot = lease;
                    hold.charge = permit;
                }
                Entry::Busy => return Err(ApiError::TokenBusy),
                Entry::Revoked => return Err(ApiError::InvalidToken),
                Entry::Refused(refusal) => return Err(ApiError::Quota(refusal)),
            }
            hold.bill = Some(Bill {
                prices,
                prompt_estimate,
                billable: true,
                log: cx.log.clone(),
                relayed: 0,
            });
            // From here the request goes upstream: it gets a ledger row.
            cx.log.set_request(
                &Requested {
                    route,
                    requested: prepared.requested.as_deref(),
                    served,
                    stream: checked.stream,
                },
                token.token_id,
            );
            hold.active = (!ablation::off(Part::Active)).then(|| {
                state.active.register(
                    cx.request_id.0.to_str().unwrap_or("-").to_owned(),
                    account.username.clone(),
                    route.name(),
                    served.map(|m| crate::access_log::clip(m, 64)),
                    checked.stream,
                )
            });
            forward(route, &cx, Some(prepared.body.clone()), served, &mut hold).await
        }
        .await;
        // An error answer goes out only once the slot is free, so a client that
        // retries at once is not refused by its own previous request. DeepSeek
        // charges nothing for a request it failed or never answered.
        hold.not_billable();
        hold.release(None, 0).await;
        result
    }
}

fn unix_ms() -> u64 {
    crate::usage::calendar::now_ms()
}

/// Sends the request (failing over as `failover` says) and relays the
/// answer. What the request holds moves into the response body only once
/// there is a body to relay.
async fn forward(
    route: Route,
    cx: &Context,
    body: Option<Bytes>,
    served: Option<&str>,
    hold: &mut Hold,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    cx.log.mark_sent();
    let sent = match failover::send(route, cx, body, served, started).await {
        Ok(sent) => sent,
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
    let failover::Sent {
        response,
        place,
        deadline,
        idle_timeout,
    } = sent;
    hold.place = Some(place);
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
        route.format(),
        response.into_body(),
        idle_timeout,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a four-argument handler returns.
    fn future_size<F, A, B, C, D, R>(_: &F) -> usize
    where
        F: Fn(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// The size of `completion`'s future.
    fn completion_size<F, A, B, C, D, E, R>(_: &F) -> usize
    where
        F: Fn(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// A slot route's future is boxed for as long as a stream starts (the
    /// body read, the slot, DeepSeek's answer): 1,000 streams starting at
    /// once hold 1,000 of them. The routes' handlers add nothing to
    /// `completion`'s future (an `async fn` wrapper adds its arguments,
    /// 336 bytes in release), and that future stays under a bound: 4,992
    /// bytes before issue 15's tenth round (BENCHMARKS.md), 3,088 after.
    /// Sizes are of the debug build, which `cargo test` measures.
    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "the bound is the debug build's")]
    fn a_slot_routes_future_is_small() {
        let size = future_size(&chat);
        assert_eq!(size, completion_size(&completion), "the handler adds to it");
        assert!(size <= 3_500, "{size} bytes");
    }
}
