//! The admin and self-service API, read from the usage ledger.
//!
//! * `GET /admin/usage?from=&to=&user=&group_by=user|model|day|format|key` (admin):
//!   totals; `from`/`to` are Unix seconds (default: the last 7 days).
//! * `GET /admin/requests?user=&limit=` (admin): the newest ledger rows.
//! * `GET /admin/active` (admin): the completion requests in flight in this
//!   process: user, model, age, bytes relayed so far.
//! * `GET /v1/usage/me` (anyone): the caller's totals for today and this
//!   month (UTC), and their quota headroom.
//!
//! Rows reach the ledger in batches at least once a second, so a request
//! shows up here within about a second of ending.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::AuthToken;
use crate::error::ApiError;
use crate::ledger::{Filter, GroupBy};
use crate::state::AppState;

const DAY_MS: i64 = 86_400_000;
const DEFAULT_SPAN_MS: i64 = 7 * DAY_MS;
const MAX_ROWS: i64 = 1000;

/// A token of a `role = "admin"` user; anyone else gets 403.
pub struct AdminToken(pub AuthToken);

impl<S: Send + Sync> FromRequestParts<S> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = AuthToken::from_request_parts(parts, state).await?;
        if !token.account.admin {
            return Err(ApiError::AdminOnly);
        }
        Ok(AdminToken(token))
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("bad query string: {e}")))
}

fn ledger_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "reading the usage ledger failed");
    ApiError::Internal
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Deserialize)]
pub struct UsageQuery {
    from: Option<i64>,
    to: Option<i64>,
    user: Option<String>,
    group_by: Option<String>,
}

pub async fn usage(
    State(state): State<AppState>,
    _: AdminToken,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let by = match q.group_by.as_deref().unwrap_or("user") {
        "user" => GroupBy::User,
        "model" => GroupBy::Model,
        "day" => GroupBy::Day,
        "format" => GroupBy::Format,
        "key" => GroupBy::Key,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "group_by is user, model, day, format or key",
            ))
        }
    };
    let to_ms = q.to.map(|s| s.saturating_mul(1000));
    let from_ms = q
        .from
        .map_or(to_ms.unwrap_or_else(now_ms) - DEFAULT_SPAN_MS, |s| {
            s.saturating_mul(1000)
        });
    let filter = Filter {
        from_ms,
        to_ms,
        user: q.user.filter(|u| !u.is_empty()),
    };
    let rows = state
        .ledger
        .totals(&filter, by)
        .await
        .map_err(ledger_error)?;
    Ok(Json(json!({
        "from": from_ms / 1000,
        "to": to_ms.map(|ms| ms / 1000),
        "group_by": q.group_by.unwrap_or_else(|| "user".into()),
        "rows": rows,
    })))
}

#[derive(Deserialize)]
pub struct RequestsQuery {
    user: Option<String>,
    limit: Option<i64>,
}

pub async fn requests(
    State(state): State<AppState>,
    _: AdminToken,
    q: Result<Query<RequestsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_ROWS);
    let user = q.user.as_deref().filter(|u| !u.is_empty());
    let rows = state
        .ledger
        .recent(user, limit)
        .await
        .map_err(ledger_error)?;
    Ok(Json(json!({ "rows": rows })))
}

/// `GET /admin/active`: what is running in this process now, oldest first.
/// `GET /admin/upstreams` (admin): each upstream's health, last error and
/// requests in flight here.
pub async fn upstreams(State(state): State<AppState>, _: AdminToken) -> Json<Value> {
    let upstreams: Vec<Value> = state
        .upstreams
        .members()
        .iter()
        .map(|m| m.describe())
        .collect();
    Json(json!({ "upstreams": upstreams }))
}

pub async fn active(State(state): State<AppState>, _: AdminToken) -> Json<Value> {
    let requests = state.active.snapshot();
    Json(json!({
        "scope": "this gateway process",
        "count": requests.len(),
        "requests": requests,
    }))
}

/// `GET /v1/usage/me`: the caller's own totals from the ledger, and, for
/// each of their limits, the limit, what is used and what is left.
pub async fn me(State(state): State<AppState>, token: AuthToken) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let month = month_start_ms(now);
    let user = token.account.username.clone();
    let mut out = json!({"user": user, "quotas": quotas(&state, &token).await?});
    for (label, from_ms) in [("today", today), ("month", month)] {
        let filter = Filter {
            from_ms,
            to_ms: None,
            user: Some(user.clone()),
        };
        let rows = state
            .ledger
            .totals(&filter, GroupBy::User)
            .await
            .map_err(ledger_error)?;
        out[label] = rows.first().map_or_else(
            || json!({"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "estimated_tokens": 0}),
            |t| json!({"requests": t.requests, "prompt_tokens": t.prompt_tokens,
                       "completion_tokens": t.completion_tokens, "estimated_tokens": t.estimated_tokens}),
        );
    }
    Ok(Json(out))
}

/// `{"requests_per_minute": {"limit", "used", "remaining"}, ...}` for each
/// limit the user has (`null` for none). Token counts include reservations
/// of requests still running.
async fn quotas(state: &AppState, token: &AuthToken) -> Result<Value, ApiError> {
    let limits = token.account.limits;
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let standing = if limits.is_unlimited() {
        Default::default()
    } else {
        state.store.standing(&token.account.username, now).await?
    };
    let entry = |limit: u64, used: u64| {
        (limit > 0)
            .then(|| json!({"limit": limit, "used": used, "remaining": limit.saturating_sub(used)}))
    };
    Ok(json!({
        "requests_per_minute": entry(limits.requests_per_minute, standing.requests_last_minute),
        "tokens_per_day": entry(limits.tokens_per_day, standing.tokens_today),
        "max_concurrent": entry(limits.max_concurrent, standing.in_flight),
        "tokens_per_day_resets_at": (limits.tokens_per_day > 0)
            .then(|| (now + crate::limits::quota::until_next_day_ms(now)) / 1000),
    }))
}

/// The first millisecond of the UTC month containing `now_ms`.
fn month_start_ms(now_ms: i64) -> i64 {
    let days = now_ms.div_euclid(DAY_MS);
    let date = crate::cli::civil_date(days);
    let day_of_month: i64 = date[8..10].parse().unwrap_or(1);
    (days - (day_of_month - 1)) * DAY_MS
}
