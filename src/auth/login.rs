//! `POST /auth/login` and `POST /auth/logout`.
//!
//! Login: throttle check (before any password work) -> password check (every
//! time, cache or not) -> the cached token or a new one.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::jwt::unix_now;
use super::login_cache::Issued;
use super::AuthToken;
use crate::access_log::RequestLog;
use crate::body::read_limited;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

/// A login body is two short strings; nothing legitimate comes near this.
const LOGIN_BODY_LIMIT_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: SecretString,
}

#[derive(Serialize)]
struct LoginResponse<'a> {
    token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

pub async fn login(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_limited(body, LOGIN_BODY_LIMIT_BYTES, state.body_read_timeout).await?;
    let request = parse(&body)?;
    let username = request.username.as_str();
    // Checks the limits and counts this attempt, in one step.
    if let Some(retry_after_secs) = state.store.begin_login(username, ip).await? {
        tracing::warn!(user = %loggable(&state, username), client = %ip, "login throttled");
        return Err(ApiError::LoginThrottled { retry_after_secs });
    }
    let snapshot = state.directory.snapshot();
    let account = snapshot.accounts.get(username);
    let password_ok = state
        .passwords
        .verify(
            account.map(|a| &a.password),
            &snapshot.dummy,
            request.password,
        )
        .await;
    let account = account.filter(|a| password_ok && !a.disabled);
    state
        .store
        .finish_login(username, ip, account.is_some())
        .await?;
    let Some(account) = account else {
        tracing::info!(user = %loggable(&state, username), client = %ip, "login refused");
        return Err(ApiError::InvalidCredentials);
    };
    log.set_user(username, None);

    // A fresh token is signed every time (microseconds); the store decides
    // whether the cached one is handed out instead.
    // Never dated before a password change (which ends older tokens).
    let now = unix_now().max(account.tokens_valid_after);
    let (token, claims) = state
        .jwt
        .issue(&account.username, now, state.token_ttl.as_secs());
    let candidate = Issued {
        token: token.into(),
        token_id: claims.token_id().unwrap_or_default(),
        issued_at: claims.iat,
        exp: claims.exp,
    };
    let mut issued = state.store.login_token(username, candidate.clone()).await?;
    if issued.issued_at < account.tokens_valid_after {
        // The cached token predates a password change, which ended it:
        // drop it and hand out the new one.
        state
            .store
            .revoke(username, issued.token_id, issued.exp)
            .await?;
        issued = state.store.login_token(username, candidate).await?;
    }
    let body = LoginResponse {
        token: &issued.token,
        token_type: "Bearer",
        expires_in: issued.exp.saturating_sub(now),
    };
    Ok(Json(body).into_response())
}

/// `POST /auth/logout`: the presented token stops working now, and the next
/// login gets a new one.
pub async fn logout(State(state): State<AppState>, token: AuthToken) -> Result<Response, ApiError> {
    let AuthToken {
        claims, token_id, ..
    } = token;
    let Some(claims) = claims else {
        return Err(ApiError::bad_request(
            "not_a_login_token",
            "this is an API key; revoke it with DELETE /v1/keys/{id}",
        ));
    };
    state
        .store
        .revoke(&claims.sub, token_id, claims.exp)
        .await?;
    Ok(Json(serde_json::json!({"revoked": true})).into_response())
}

/// Usernames are logged only when they exist: someone who types their
/// password into the username field must not find it in the log.
fn loggable<'a>(state: &AppState, username: &'a str) -> &'a str {
    if state.directory.snapshot().accounts.contains_key(username) {
        username
    } else {
        "(unknown)"
    }
}

/// Parses the body without echoing its values: a serde message can quote the
/// offending value, which may be a password.
fn parse(body: &[u8]) -> Result<LoginRequest, ApiError> {
    // Derived structs also accept an array of the fields in order; only an
    // object is a login body.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON object {\"username\": string, \"password\": string}",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!(
                "expected a JSON object {{\"username\": string, \"password\": string}} \
                 (problem at line {} column {})",
                e.line(),
                e.column()
            ),
        )
    })
}
