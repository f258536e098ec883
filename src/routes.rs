//! Every route of the gateway, in one place.
//!
//! Authentication is on by default: routes are added to `protected`, which
//! gets the token check as a route layer. Only the short list in `public`
//! is reachable without a token (login, health, and the console's static
//! files, whose every API call carries the user's own token).
//!
//! Layers, outermost first (a request passes them top to bottom), around
//! the whole router rather than each route (a layer added with
//! `Router::layer` is cloned and boxed again for every request):
//! 1. `AccessLogLayer`: client IP, request id, one log line when the body
//!    ends; a panic becomes a generic 500 and the process stays up; on the
//!    way out, `no-store` under `/auth` and the gateway's own errors under
//!    `/anthropic` (and Codex's long refusals on `/responses`) in their
//!    format's dialect ([`Finish`]).
//! 2. CORS, only for browsers' requests (an `Origin`) and `OPTIONS`:
//!    answers preflights before auth, since browsers send them without a
//!    token.
//! 3. the router: public routes, or the token check and then a protected
//!    route.

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access_log::{AccessLog, AccessLogLayer, X_REQUEST_ID};
use crate::auth::{login, logout, require_token, require_token_and_claim};
use crate::error::{ApiError, ErrorCode, ErrorMessage};
use crate::formats::{anthropic, responses};
use crate::state::AppState;
use crate::users::api as users;
use crate::{admin, proxy};

pub fn router(state: AppState) -> Gateway {
    // Completions: the token check and a claim on one of its slots here,
    // before the body is read; the slot is taken with the quotas after it.
    let with_slot = Router::new()
        .route("/chat/completions", post(proxy::chat))
        .route("/v1/chat/completions", post(proxy::chat))
        .route("/responses", post(proxy::responses))
        .route("/v1/responses", post(proxy::responses))
        .route("/anthropic/v1/messages", post(proxy::messages))
        .route("/v1/tools/search", post(proxy::tool_search))
        .route("/v1/tools/fetch", post(proxy::tool_fetch))
        .route("/beta/chat/completions", post(proxy::beta_chat))
        .route("/beta/completions", post(proxy::beta_completions))
        .route_layer(from_fn_with_state(state.clone(), require_token_and_claim));
    let auth_required = from_fn_with_state(state.clone(), require_token);
    let protected = Router::new()
        .route("/models", get(proxy::models))
        .route("/v1/models", get(proxy::models))
        .route(
            "/anthropic/v1/messages/count_tokens",
            post(proxy::count_tokens),
        )
        .route("/auth/logout", post(logout))
        .route("/user/balance", get(proxy::balance))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/requests", get(admin::requests))
        .route("/admin/active", get(admin::active))
        .route("/admin/upstreams", get(admin::upstreams))
        .route("/v1/usage/me", get(admin::me))
        .route("/v1/usage/me/requests", get(admin::my_requests))
        .route("/v1/pricing", get(admin::pricing))
        .route(
            "/v1/keys",
            post(users::create_key).get(users::list_own_keys),
        )
        .route("/v1/keys/{id}", delete(users::delete_own_key))
        .route("/admin/keys", get(users::admin_list_keys))
        .route("/admin/keys/{id}", delete(users::admin_delete_key))
        .route("/admin/users", get(users::list_users).post(users::add_user))
        .route(
            "/admin/users/{name}",
            patch(users::update_user).delete(users::delete_user),
        )
        .route("/admin/reload", post(users::reload))
        .route("/auth/password", post(users::change_password))
        .route_layer(auth_required);

    let public = Router::new()
        .route("/auth/login", post(login))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::console::routes());

    let app = with_slot
        .merge(protected)
        .merge(public)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    with_layers(app, state)
}

/// The gateway as one service: the layers around the router.
pub type Gateway = AccessLog<CorsForBrowsers<Router>>;

/// The layers every route sits behind. Public so tests can put a route that
/// misbehaves (panics) behind exactly the same stack.
pub fn with_layers(app: Router<AppState>, state: AppState) -> Gateway {
    let cors = cors(&state);
    // tower-http checks the settings when the layer is applied, so a bad
    // combination fails here, at start, not on a browser's first request.
    let _ = tower::Layer::layer(&cors, ());
    let cors = CorsForBrowsers {
        cors: Arc::new(cors),
        inner: app.with_state(state.clone()),
    };
    tower::Layer::layer(&AccessLogLayer(state), cors)
}

/// CORS applied only to requests that carry an `Origin` header (browsers
/// send one on every cross-origin request and every preflight) and to
/// `OPTIONS`; the others pass straight to the router with the `Vary`
/// header the CORS layer would have added. tower-http's layer builds a
/// header map for every response: ~4 µs of CPU per request (BENCHMARKS.md,
/// issue 15). Its configuration is shared, so the service clones cheaply
/// (once per request).
#[derive(Clone)]
pub struct CorsForBrowsers<S> {
    cors: Arc<CorsLayer>,
    inner: S,
}

/// What `CorsLayer` says in `Vary` for an origin predicate and preflights.
const CORS_VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

type WithVary<F> = futures_util::future::MapOk<F, fn(Response) -> Response>;

impl<S> tower::Service<axum::extract::Request> for CorsForBrowsers<S>
where
    S: tower::Service<axum::extract::Request, Response = Response> + Clone,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        tower_http::cors::ResponseFuture<S::Future>,
        WithVary<S::Future>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures_util::TryFutureExt;
        use tower::Layer;
        // tower-http answers every OPTIONS itself, as a preflight.
        let browser = req.headers().contains_key(header::ORIGIN) || req.method() == Method::OPTIONS;
        if browser && !crate::ablation::off(crate::ablation::Part::Layers) {
            // The router is always ready, so its clone needs no `poll_ready`.
            return futures_util::future::Either::Left(
                self.cors.layer(self.inner.clone()).call(req),
            );
        }
        fn vary(mut response: Response) -> Response {
            response.headers_mut().append(header::VARY, CORS_VARY);
            response
        }
        fn plain(response: Response) -> Response {
            response
        }
        let finish: fn(Response) -> Response =
            if crate::ablation::off(crate::ablation::Part::Layers) {
                plain
            } else {
                vary
            };
        futures_util::future::Either::Right(self.inner.call(req).map_ok(finish))
    }
}

/// CORS for the origins in `server.cors_allowed_origins` (none by default),
/// read at each request so a reload can change them.
fn cors(state: &AppState) -> CorsLayer {
    let live = state.downgrade();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            live.upgrade().is_some_and(|state| {
                let origins = state.cors.read().unwrap_or_else(|e| e.into_inner()).clone();
                origins.iter().any(|allowed| allowed == origin)
            })
        }))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            X_REQUEST_ID.clone(),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("anthropic-version"),
            HeaderName::from_static("anthropic-beta"),
        ])
        .expose_headers([X_REQUEST_ID.clone(), header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

/// What every answer gets on its way out, by its route, from the access
/// log's layer: `no-store` under `/auth/`, and the gateway's own errors in
/// the dialect of the route's format. On Anthropic routes, Anthropic's
/// shape, so its SDKs raise their usual exceptions; on the Responses route,
/// Codex's words for a long refusal. DeepSeek's own answers pass untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Login answers and errors must never sit in a cache.
    NoStore,
    Anthropic,
    Responses,
    AsIs,
}

impl Finish {
    pub fn of(path: &str) -> Finish {
        match path {
            path if path.starts_with("/auth/") => Finish::NoStore,
            path if path.starts_with("/anthropic/") => Finish::Anthropic,
            "/responses" | "/v1/responses" => Finish::Responses,
            _ => Finish::AsIs,
        }
    }

    pub fn apply(self, mut response: Response) -> Response {
        if self == Finish::NoStore {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        let Some(ErrorMessage(message)) = response.extensions_mut().remove::<ErrorMessage>() else {
            return response;
        };
        let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
        match self {
            Finish::Anthropic => anthropic::rewrite_error(&mut response, &message),
            Finish::Responses => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                responses::rewrite_error(&mut response, code, &message, now);
            }
            Finish::NoStore | Finish::AsIs => {}
        }
        response
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
}

/// Ready when the shared-state backend answers (always, for memory).
async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.store.ready().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The answer to a request whose route panicked.
pub(crate) fn panic_response() -> Response {
    tracing::error!("a request handler panicked; answered 500");
    ApiError::Internal.into_response()
}
