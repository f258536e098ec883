//! The HTTP API for keys and users. Every change rebuilds this replica's
//! snapshot before answering, so it holds on the next request here; other
//! replicas see it within `directory::POLL_EVERY`.
//!
//! * `POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{id}`: your own keys.
//! * `GET /admin/keys?user=`, `DELETE /admin/keys/{id}` (admin).
//! * `GET|POST /admin/users`, `PATCH|DELETE /admin/users/{name}` (admin).
//! * `POST /auth/password`: change your own password.
//! * `POST /admin/reload` (admin): re-read the config file.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::db;
use super::manage::{self, Actor, NewKeyRequest, UserRequest};
use crate::admin::AdminToken;
use crate::auth::jwt::unix_now;
use crate::auth::AuthToken;
use crate::body::read_limited;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

/// Bodies of this API are small JSON objects.
const BODY_LIMIT_BYTES: usize = 64 * 1024;

async fn json_body<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, ApiError> {
    let bytes = read_limited(body, BODY_LIMIT_BYTES, state.body_read_timeout).await?;
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON object",
        ));
    }
    // serde's message names the field, never a value (passwords stay out).
    serde_json::from_slice(&bytes).map_err(|e| {
        let problem = e.to_string();
        let problem = problem.split(" at line").next().unwrap_or("invalid JSON");
        let problem = if problem.contains("unknown field") || problem.contains("missing field") {
            problem
                .split(", expected")
                .next()
                .unwrap_or(problem)
                .to_owned()
        } else {
            format!(
                "invalid JSON or a field of the wrong type (line {} column {})",
                e.line(),
                e.column()
            )
        };
        ApiError::bad_request("invalid_body", problem)
    })
}

async fn rebuilt(state: &AppState) -> Result<(), ApiError> {
    state.directory.rebuild(None).await.map_err(|e| {
        tracing::error!(error = %e, "cannot reload users and keys");
        ApiError::Internal
    })
}

/// `POST /v1/keys`.
pub async fn create_key(
    State(state): State<AppState>,
    token: AuthToken,
    body: Body,
) -> Result<Response, ApiError> {
    let request: NewKeyRequest = json_body(&state, body).await?;
    let snapshot = state.directory.snapshot();
    let actor = Actor {
        username: &token.account.username,
        admin: token.account.admin,
    };
    let created = manage::create_key(&snapshot, &actor, actor.username, request).await?;
    manage::store_key(state.directory.pool(), &created).await?;
    rebuilt(&state).await?;
    tracing::info!(user = %actor.username, key_id = %created.row.id, "key created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/keys`: the caller's keys, with their prefix only.
pub async fn list_own_keys(
    State(state): State<AppState>,
    token: AuthToken,
) -> Result<Json<Value>, ApiError> {
    let keys = db::keys(state.directory.pool(), Some(&token.account.username))
        .await
        .map_err(db_failed)?;
    Ok(Json(json!({ "keys": keys })))
}

/// `DELETE /v1/keys/{id}`: only the caller's own.
pub async fn delete_own_key(
    State(state): State<AppState>,
    token: AuthToken,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete_key(&state, &id, Some(&token.account.username)).await
}

#[derive(Deserialize)]
pub struct KeysQuery {
    user: Option<String>,
}

/// `GET /admin/keys?user=`.
pub async fn admin_list_keys(
    State(state): State<AppState>,
    _: AdminToken,
    q: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("bad query string: {e}")))?;
    let keys = db::keys(state.directory.pool(), q.user.as_deref())
        .await
        .map_err(db_failed)?;
    Ok(Json(json!({ "keys": keys })))
}

/// `DELETE /admin/keys/{id}`.
pub async fn admin_delete_key(
    State(state): State<AppState>,
    admin: AdminToken,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let done = delete_key(&state, &id, None).await?;
    tracing::info!(admin = %admin.0.account.username, key_id = %id, "key revoked by an admin");
    Ok(done)
}

async fn delete_key(
    state: &AppState,
    id: &str,
    owner: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    if !db::delete_key(state.directory.pool(), id, owner)
        .await
        .map_err(db_failed)?
    {
        return Err(ApiError::NoSuchItem("no such key".into()));
    }
    rebuilt(state).await?;
    Ok(Json(json!({ "id": id, "revoked": true })))
}

/// `GET /admin/users`: everyone, from both places.
pub async fn list_users(
    State(state): State<AppState>,
    _: AdminToken,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.directory.snapshot();
    let rows = db::users(state.directory.pool()).await.map_err(db_failed)?;
    let mut users: Vec<Value> = snapshot
        .base
        .users
        .iter()
        .map(|u| {
            json!({
                "username": u.username,
                "source": "config",
                "role": if u.admin { "admin" } else { "user" },
                "models": u.models,
                "requests_per_minute": u.limits.requests_per_minute,
                "tokens_per_day": u.limits.tokens_per_day,
                "max_concurrent": u.limits.max_concurrent,
                "budget_per_month": (u.limits.budget_per_month > 0)
                    .then(|| crate::usage::pricing::units(u.limits.budget_per_month as i64)),
                "disabled": u.disabled,
            })
        })
        .collect();
    for row in rows {
        let mut value = serde_json::to_value(&row).unwrap_or_default();
        value["source"] = json!("database");
        users.push(value);
    }
    Ok(Json(json!({ "users": users })))
}

fn user_json(row: &db::UserRow) -> Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["source"] = json!("database");
    value
}

/// `POST /admin/users`.
pub async fn add_user(
    State(state): State<AppState>,
    admin: AdminToken,
    body: Body,
) -> Result<Response, ApiError> {
    let request: UserRequest = json_body(&state, body).await?;
    let snapshot = state.directory.snapshot();
    let row = manage::add_user(state.directory.pool(), &snapshot, request).await?;
    rebuilt(&state).await?;
    tracing::info!(admin = %admin.0.account.username, user = %row.username, "user added");
    Ok((StatusCode::CREATED, Json(user_json(&row))).into_response())
}

/// `PATCH /admin/users/{name}`.
pub async fn update_user(
    State(state): State<AppState>,
    admin: AdminToken,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let request: UserRequest = json_body(&state, body).await?;
    let snapshot = state.directory.snapshot();
    let row = manage::update_user(state.directory.pool(), &snapshot, &name, request).await?;
    rebuilt(&state).await?;
    tracing::info!(admin = %admin.0.account.username, user = %name, "user changed");
    Ok(Json(user_json(&row)))
}

/// `DELETE /admin/users/{name}`: the user and their keys.
pub async fn delete_user(
    State(state): State<AppState>,
    admin: AdminToken,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.directory.snapshot();
    manage::delete_user(state.directory.pool(), &snapshot, &name).await?;
    rebuilt(&state).await?;
    tracing::info!(admin = %admin.0.account.username, user = %name, "user deleted");
    Ok(Json(json!({ "username": name, "deleted": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    old_password: String,
    new_password: String,
}

/// `POST /auth/password`: your own password (database users; config users
/// change theirs in the file). Every older login token of yours stops
/// working; the answer carries a new one.
pub async fn change_password(
    State(state): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    token: AuthToken,
    body: Body,
) -> Result<Response, ApiError> {
    let change: PasswordChange = json_body(&state, body).await?;
    let snapshot = state.directory.snapshot();
    let account = token.account.clone();
    // Guessing the old password here is throttled like logging in.
    if let Some(retry_after_secs) = state.store.begin_login(&account.username, ip).await? {
        return Err(ApiError::LoginThrottled { retry_after_secs });
    }
    let old_ok = state
        .passwords
        .verify(
            Some(&account.password),
            &snapshot.dummy,
            secrecy::SecretString::from(change.old_password),
        )
        .await;
    state
        .store
        .finish_login(&account.username, ip, old_ok)
        .await?;
    if !old_ok {
        return Err(ApiError::InvalidCredentials);
    }
    let valid_after = manage::set_password(
        state.directory.pool(),
        &snapshot,
        &account.username,
        change.new_password,
    )
    .await?;
    rebuilt(&state).await?;
    let now = unix_now().max(valid_after);
    let (new_token, claims) = state
        .jwt
        .issue(&account.username, now, state.token_ttl.as_secs());
    tracing::info!(user = %account.username, "password changed; older tokens revoked");
    Ok(Json(json!({
        "changed": true,
        "token": new_token,
        "token_type": "Bearer",
        "expires_in": claims.exp.saturating_sub(now),
    }))
    .into_response())
}

/// `POST /admin/reload`: re-reads the config file now.
pub async fn reload(
    State(state): State<AppState>,
    admin: AdminToken,
) -> Result<Json<Value>, ApiError> {
    let outcome = crate::reload::reload(&state).await;
    tracing::info!(admin = %admin.0.account.username, ?outcome, "config reload requested");
    match outcome {
        Ok(report) => Ok(Json(serde_json::to_value(report).unwrap_or_default())),
        Err(message) => Err(ApiError::bad_request("invalid_config", message)),
    }
}

fn db_failed(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "the user database failed");
    ApiError::Internal
}
