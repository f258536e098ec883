//! The admin and self-service API, read from the usage ledger.
//!
//! * `GET /admin/usage?from=&to=&user=&group_by=user|model|day|format|key` (admin):
//!   totals; `from`/`to` are Unix seconds (default: the last 7 days).
//! * `GET /admin/requests?user=&limit=` (admin): the newest ledger rows.
//! * `GET /admin/active` (admin): the completion requests in flight in this
//!   process: user, model, age, bytes relayed so far.
//! * `GET /v1/usage/me` (anyone): the caller's totals for today and this
//!   month (UTC) with their cost, their quota and budget headroom, the last
//!   30 days by day, model and key, and their keys' budgets and cache-hit
//!   ratios (with a flag on a key whose ratio fell sharply).
//! * `GET /v1/usage/me/requests?limit=` (anyone): the caller's newest rows.
//! * `GET /v1/pricing` (anyone): the price list and whether it is peak now.
//!
//! Costs are in the `[pricing]` currency: `cost` in units, `cost_micros`
//! exact.
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
        key: None,
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
        "currency": currency(&state),
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

fn currency(state: &AppState) -> &'static str {
    state.directory.snapshot().base.pricing.currency.code()
}

/// The days `GET /v1/usage/me` charts.
const CHART_DAYS: i64 = 30;
/// A key's cache-hit ratio today is compared with its last 7 days.
const ALERT_BASELINE_DAYS: i64 = 7;
/// Below this many input tokens today, a key's ratio says too little.
const ALERT_MIN_INPUT_TOKENS: i64 = 1_000;

/// `GET /v1/usage/me`: the caller's own totals from the ledger, and, for
/// each of their limits, the limit, what is used and what is left.
pub async fn me(State(state): State<AppState>, token: AuthToken) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let month = month_start_ms(now);
    let user = token.account.username.clone();
    let totals = |from_ms: i64, to_ms: Option<i64>, by: GroupBy| {
        let filter = Filter {
            from_ms,
            to_ms,
            user: Some(user.clone()),
            key: None,
        };
        let ledger = state.ledger.clone();
        async move { ledger.totals(&filter, by).await.map_err(ledger_error) }
    };
    let empty = || {
        json!({"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "estimated_tokens": 0,
               "cached_tokens": 0, "cache_miss_tokens": 0, "cost": 0.0, "cost_micros": 0,
               "cache_hit_ratio": null})
    };
    let mut out = json!({
        "user": user,
        "admin": token.account.admin,
        "currency": currency(&state),
        "quotas": quotas(&state, &token).await?,
    });
    for (label, from_ms) in [("today", today), ("month", month)] {
        let rows = totals(from_ms, None, GroupBy::User).await?;
        out[label] = rows.first().map_or_else(empty, |t| json!(t));
    }
    let chart_from = today - (CHART_DAYS - 1) * DAY_MS;
    out["days"] = json!(totals(chart_from, None, GroupBy::Day).await?);
    out["by_model"] = json!(totals(chart_from, None, GroupBy::Model).await?);
    out["by_key"] = json!(totals(chart_from, None, GroupBy::Key).await?);
    let spent = totals(month, None, GroupBy::Key).await?;
    let key_today = totals(today, None, GroupBy::Key).await?;
    let baseline = totals(
        today - ALERT_BASELINE_DAYS * DAY_MS,
        Some(today),
        GroupBy::Key,
    )
    .await?;
    let find =
        |rows: &[crate::ledger::Totals], id: &str| rows.iter().find(|t| t.key == id).cloned();
    let keys = crate::users::db::keys(state.ledger.pool(), Some(&token.account.username))
        .await
        .map_err(ledger_error)?;
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let today = find(&key_today, &k.id);
            let week = find(&baseline, &k.id);
            let ratio_today = today.as_ref().and_then(|t| t.cache_hit_ratio);
            let ratio_week = week.as_ref().and_then(|t| t.cache_hit_ratio);
            let input_today = today
                .as_ref()
                .map_or(0, |t| t.cached_tokens + t.cache_miss_tokens);
            json!({
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "budget_per_month": k.budget_per_month.map(crate::usage::pricing::units),
                "spent_this_month": find(&spent, &k.id).map_or(0.0, |t| t.cost),
                "cache_hit_ratio_today": ratio_today,
                "cache_hit_ratio_7d": ratio_week,
                "cache_alert": cache_alert(ratio_today, ratio_week, input_today),
            })
        })
        .collect();
    out["keys"] = json!(keys);
    Ok(Json(out))
}

/// A key's cache-hit ratio fell sharply: today's is at most half of its
/// last 7 days' (which was at least 30%), over enough input to mean it.
/// The usual cause is a client that changes the start of its prompt
/// (a timestamp, a reordered tool list), which multiplies spend.
fn cache_alert(today: Option<f64>, week: Option<f64>, input_today: i64) -> bool {
    match (today, week) {
        (Some(today), Some(week)) => {
            input_today >= ALERT_MIN_INPUT_TOKENS && week >= 0.3 && today <= week / 2.0
        }
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct OwnRequestsQuery {
    limit: Option<i64>,
}

/// `GET /v1/usage/me/requests`: the caller's newest ledger rows, each with
/// its cost (`cost`, in units) and whether it is estimated.
pub async fn my_requests(
    State(state): State<AppState>,
    token: AuthToken,
    q: Result<Query<OwnRequestsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_ROWS);
    let rows = state
        .ledger
        .recent(Some(&token.account.username), limit)
        .await
        .map_err(ledger_error)?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let cost = r.cost_micros.map(crate::usage::pricing::units);
            let mut v = json!(r);
            v["cost"] = json!(cost);
            v
        })
        .collect();
    Ok(Json(json!({ "rows": rows })))
}

/// `GET /v1/pricing`: what a request costs now, per million tokens (a tool
/// call: per call), in the configured currency.
pub async fn pricing(State(state): State<AppState>, _: AuthToken) -> Json<Value> {
    let base = state.directory.snapshot().base.clone();
    let p = &base.pricing;
    let units = |m: u64| crate::usage::pricing::units(m as i64);
    let rates = |r: &crate::usage::pricing::Rates| {
        json!({"input_cache_hit": units(r.input_cache_hit),
               "input_cache_miss": units(r.input_cache_miss), "output": units(r.output)})
    };
    let models: serde_json::Map<String, Value> = p
        .models
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                json!({"off_peak": rates(&m.off_peak), "peak": rates(&m.peak)}),
            )
        })
        .collect();
    Json(json!({
        "currency": p.currency.code(),
        "peak_now": p.is_peak(u64::try_from(now_ms()).unwrap_or(0)),
        "per": "million tokens",
        "models": models,
        "tool_call": units(p.tool_call_micros),
    }))
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
        "budget_per_month": (limits.budget_per_month > 0).then(|| {
            let units = |m: u64| crate::usage::pricing::units(m as i64);
            let (limit, used) = (limits.budget_per_month, standing.spent_month);
            json!({"limit": units(limit), "used": units(used),
                   "remaining": units(limit.saturating_sub(used))})
        }),
        "budget_resets_at": (limits.budget_per_month > 0)
            .then(|| crate::usage::calendar::next_month_start_ms(now) / 1000),
    }))
}

/// The first millisecond of the UTC month containing `now_ms`.
fn month_start_ms(now_ms: i64) -> i64 {
    let days = now_ms.div_euclid(DAY_MS);
    let date = crate::cli::civil_date(days);
    let day_of_month: i64 = date[8..10].parse().unwrap_or(1);
    (days - (day_of_month - 1)) * DAY_MS
}
