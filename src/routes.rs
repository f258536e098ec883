//! Every route of the gateway, in one place.
//!
//! Authentication is on by default: routes are added to `protected`, which
//! gets the token check as a route layer. Only the short list in `public`
//! is reachable without a token.
//!
//! Layers, outermost first (a request passes them top to bottom):
//! 1. `access_log`: request id, and one log line when the response body ends.
//! 2. `CatchPanicLayer`: a panic becomes a generic 500 and the process stays up.
//! 3. the router: public routes, or the token check and then a protected route.

use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;

use crate::access_log::access_log;
use crate::auth::{login, require_token};
use crate::error::ApiError;
use crate::proxy;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/chat/completions", post(proxy::chat))
        .route("/v1/chat/completions", post(proxy::chat))
        .route("/beta/chat/completions", post(proxy::beta_chat))
        .route("/beta/completions", post(proxy::beta_completions))
        .route("/models", get(proxy::models))
        .route("/v1/models", get(proxy::models))
        .route_layer(from_fn_with_state(state.clone(), require_token));

    let public = Router::new()
        .route("/auth/login", post(login))
        .route("/healthz", get(healthz));

    protected
        .merge(public)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn(access_log))
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    ApiError::Internal.into_response()
}
