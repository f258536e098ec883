//! `POST /auth/login`: check the password (every time), then hand out the
//! cached token or a new one.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::jwt::unix_now;
use super::login_cache::Issued;
use super::password;
use crate::access_log::RequestLog;
use crate::body::read_limited;
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
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_limited(body, LOGIN_BODY_LIMIT_BYTES).await?;
    let request = parse(&body)?;
    if !password::verify(
        &state.users,
        &request.username,
        request.password.expose_secret(),
    ) {
        tracing::info!(user = %request.username.escape_debug(), "login refused");
        return Err(ApiError::InvalidCredentials);
    }
    log.set_user(&request.username);

    let now = unix_now();
    let ttl = state.token_ttl.as_secs();
    let issued = state.login_cache.get_or_issue(&request.username, now, || {
        let (token, claims) = state.jwt.issue(&request.username, now, ttl);
        Issued {
            token: token.into(),
            issued_at: claims.iat,
            exp: claims.exp,
        }
    });
    let body = LoginResponse {
        token: &issued.token,
        token_type: "Bearer",
        expires_in: issued.exp.saturating_sub(now),
    };
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}

/// Parses the body without echoing its values: a serde message can quote the
/// offending value, which may be a password.
fn parse(body: &[u8]) -> Result<LoginRequest, ApiError> {
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
