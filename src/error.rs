//! The one error type of the HTTP surface, and its one mapping to a response.
//!
//! Every error body is OpenAI-shaped: `{"error": {"message", "type", "code"}}`,
//! so the official SDKs raise their usual exception classes. Causes (upstream
//! bodies, I/O errors) are logged where they happen and never copied into a
//! response: DeepSeek's 401 text, for one, contains part of our key.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything that can go wrong for a client, grouped by whose fault it is.
#[derive(Debug)]
pub enum ApiError {
    // The client's fault.
    /// The body is not what the route needs. `code` names the problem.
    BadRequest {
        code: &'static str,
        message: String,
    },
    PayloadTooLarge {
        limit_bytes: usize,
    },
    /// The client took too long to send its body.
    BodyTimeout,
    /// The user may not use the requested model.
    ModelNotAllowed,
    /// The route is for `role = "admin"` users.
    AdminOnly,
    NotFound,
    /// A user or key that does not exist (or is not yours).
    NoSuchItem(String),
    /// The change conflicts with what exists: a taken name, a user defined
    /// in the config file, the last admin.
    Conflict {
        code: &'static str,
        message: String,
    },
    /// A personal API key past its `expires_at`.
    KeyExpired,
    MethodNotAllowed,
    InvalidCredentials,
    MissingToken,
    InvalidToken,
    ExpiredToken,
    TokenBusy,
    LoginThrottled {
        retry_after_secs: u64,
    },
    /// A per-user quota refused the request (`user_busy` for the
    /// concurrency cap, `quota_exceeded` otherwise).
    Quota(crate::limits::quota::Refusal),

    // The upstream's fault (or our account's, as the upstream sees it).
    /// No answer head: `sent` if the request may have reached DeepSeek
    /// (a connect or TLS failure never did).
    UpstreamUnreachable {
        sent: bool,
    },
    UpstreamTimeout,
    /// A redirect or a 5xx other than 503.
    UpstreamFailed {
        status: u16,
    },
    /// 401/402/403: our key or balance. The body is never forwarded.
    UpstreamRejectedKey {
        status: u16,
    },
    UpstreamRateLimited {
        retry_after: Option<HeaderValue>,
    },
    UpstreamOverloaded {
        retry_after: Option<HeaderValue>,
    },

    // Ours.
    /// The shared-state backend (Redis) did not answer: fail closed.
    StateUnavailable,
    Internal,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

/// The OpenAI-shaped error body, as bytes. Also used for the final SSE event
/// of a stream that fails after it started.
pub fn error_json(message: &str, kind: &str, code: &str) -> Vec<u8> {
    let envelope = Envelope {
        error: Body {
            message,
            kind,
            code,
        },
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients can switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::PayloadTooLarge { .. } => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::AdminOnly => "admin_required",
            Self::LoginThrottled { .. } => "login_throttled",
            Self::Quota(r) if r.kind == crate::limits::quota::Kind::Concurrent => "user_busy",
            Self::Quota(r)
                if matches!(
                    r.kind,
                    crate::limits::quota::Kind::Budget | crate::limits::quota::Kind::KeyBudget
                ) =>
            {
                "budget_exceeded"
            }
            Self::Quota(_) => "quota_exceeded",
            Self::NotFound | Self::NoSuchItem(_) => "not_found",
            Self::Conflict { code, .. } => code,
            Self::KeyExpired => "key_expired",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidCredentials => "invalid_credentials",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "token_expired",
            Self::TokenBusy => "token_busy",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamFailed { .. } => "upstream_error",
            Self::UpstreamRejectedKey { status: 402 } => "upstream_insufficient_balance",
            Self::UpstreamRejectedKey { .. } => "upstream_auth_failed",
            Self::UpstreamRateLimited { .. } => "upstream_rate_limited",
            Self::UpstreamOverloaded { .. } => "upstream_overloaded",
            Self::StateUnavailable => "state_unavailable",
            Self::Internal => "internal_error",
        }
    }

    /// The upstream's own status, for errors that come from one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            Self::UpstreamFailed { status } | Self::UpstreamRejectedKey { status } => Some(*status),
            Self::UpstreamRateLimited { .. } => Some(429),
            Self::UpstreamOverloaded { .. } => Some(503),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ModelNotAllowed | Self::AdminOnly => StatusCode::FORBIDDEN,
            Self::NotFound | Self::NoSuchItem(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::ExpiredToken
            | Self::KeyExpired => StatusCode::UNAUTHORIZED,
            Self::TokenBusy
            | Self::UpstreamRateLimited { .. }
            | Self::LoginThrottled { .. }
            | Self::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamRejectedKey { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamOverloaded { .. } | Self::StateUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            500 => "server_error",
            _ => "api_error",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadRequest { message, .. } => message.clone(),
            Self::PayloadTooLarge { limit_bytes } => {
                format!("request body is larger than the gateway's limit of {limit_bytes} bytes")
            }
            Self::BodyTimeout => "the request body did not arrive in time".into(),
            Self::ModelNotAllowed => "your account may not use this model".into(),
            Self::AdminOnly => "this route needs an admin account (role = \"admin\")".into(),
            Self::LoginThrottled { .. } => {
                "too many failed logins; wait before trying again".into()
            }
            Self::Quota(refusal) => refusal.message(),
            Self::NotFound => "no such route; see the gateway's README for its API".into(),
            Self::NoSuchItem(message) => message.clone(),
            Self::Conflict { message, .. } => message.clone(),
            Self::KeyExpired => "this API key has expired: make a new one (POST /v1/keys)".into(),
            Self::MethodNotAllowed => "method not allowed on this route".into(),
            Self::InvalidCredentials => "invalid username or password".into(),
            Self::MissingToken => "missing token: log in at POST /auth/login and send \
                 'Authorization: Bearer <token>' (or 'x-api-key: <token>')"
                .into(),
            Self::InvalidToken => "invalid token: log in again at POST /auth/login".into(),
            Self::ExpiredToken => "token expired: log in again at POST /auth/login".into(),
            Self::TokenBusy => {
                "this token already has a request in flight; wait for it to finish".into()
            }
            Self::UpstreamUnreachable { .. } => "could not reach DeepSeek; try again later".into(),
            Self::UpstreamTimeout => "DeepSeek did not answer in time; try again later".into(),
            Self::UpstreamFailed { status } => {
                format!("DeepSeek failed (upstream status {status}); try again later")
            }
            Self::UpstreamRejectedKey { .. } => {
                "the gateway's DeepSeek account was refused; tell the gateway's operator".into()
            }
            Self::UpstreamRateLimited { .. } => {
                "DeepSeek is rate limiting the gateway's account; retry later".into()
            }
            Self::UpstreamOverloaded { .. } => "DeepSeek is overloaded; retry later".into(),
            Self::StateUnavailable => {
                "the gateway's shared state is unavailable; retry shortly".into()
            }
            Self::Internal => "internal error in the gateway".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let message = self.message();
        // Whether the official SDKs (and the coding agents built on them)
        // should retry by themselves: yes when a retry in a second can
        // succeed; no when it cannot (a bad token) or the wait is long (a
        // daily quota), or Claude Code would loop for minutes. See the
        // README's table of refusals.
        let retry = match &self {
            Self::TokenBusy | Self::StateUnavailable => Some("true"),
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::ExpiredToken
            | Self::KeyExpired => Some("false"),
            Self::Quota(refusal) if refusal.retry_after_secs > MAX_RETRY_WAIT_SECS => Some("false"),
            Self::Quota(_) => Some("true"),
            _ => None,
        };
        let body = error_json(&message, self.kind(), code);
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Self::InvalidCredentials
            | Self::MissingToken
            | Self::InvalidToken
            | Self::KeyExpired => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::ExpiredToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer error=\"invalid_token\", error_description=\"token expired\"",
                    ),
                );
            }
            Self::TokenBusy | Self::StateUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::LoginThrottled {
                retry_after_secs: secs,
            }
            | Self::Quota(crate::limits::quota::Refusal {
                retry_after_secs: secs,
                ..
            }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Self::UpstreamRateLimited { retry_after }
            | Self::UpstreamOverloaded { retry_after } => {
                let value = retry_after.unwrap_or(HeaderValue::from_static("1"));
                headers.insert(header::RETRY_AFTER, value);
            }
            _ => {}
        }
        if let Some(retry) = retry {
            headers.insert("x-should-retry", HeaderValue::from_static(retry));
        }
        // The error is logged once, by the access log, with this code; a
        // format with its own dialect rewords the body from the message.
        response.extensions_mut().insert(ErrorCode(code));
        response
            .extensions_mut()
            .insert(ErrorMessage(message.into_boxed_str()));
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

/// The longest `Retry-After` a client is invited to wait out by itself.
pub const MAX_RETRY_WAIT_SECS: u64 = 60;

/// Attached to error responses so the access log can name the error.
#[derive(Clone, Debug)]
pub struct ErrorCode(pub &'static str);

/// The message of one of the gateway's own errors, for a format that words
/// errors in its own dialect (see `formats::anthropic`).
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub Box<str>);

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "shared state unavailable; refusing the request");
        ApiError::StateUnavailable
    }
}
