//! The connection to DeepSeek: one pooled client, the routes' URLs, the key
//! added on the way out, and the classification of what comes back.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use reqwest::Url;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::headers;
use crate::config::UpstreamConfig;
use crate::error::ApiError;

/// The upstream endpoints the gateway exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/chat/completions` under `base_url`.
    Chat,
    /// `/beta/chat/completions` (chat prefix completion).
    BetaChat,
    /// `/beta/completions` (FIM).
    BetaCompletions,
    /// `/models` under `base_url`.
    Models,
    /// `/user/balance` on the upstream origin (beside `/v1`).
    Balance,
}

impl Route {
    /// The name recorded in the usage ledger.
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::BetaChat => "beta_chat",
            Route::BetaCompletions => "beta_completions",
            Route::Models => "models",
            Route::Balance => "balance",
        }
    }
}

pub struct Upstream {
    client: reqwest::Client,
    /// `Bearer <key>`, marked sensitive so it never prints through Debug.
    authorization: HeaderValue,
    chat: Url,
    beta_chat: Url,
    beta_completions: Url,
    models: Url,
    balance: Url,
    /// Longest wait for the response head, and longest silence mid-body.
    pub timeout: Duration,
    /// Hard cap on one request, keep-alives included.
    pub max_request: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30));
        // Proxy matching re-parses the URL on every request; skip it when no
        // proxy is configured (the common case).
        if !proxy_configured() {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose_secret()))
                .map_err(|_| "deepseek.api_key is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        let base = &config.base_url;
        let join = |url: &Url, suffix: &str| {
            let mut url = url.clone();
            let path = format!("{}{suffix}", url.path().trim_end_matches('/'));
            url.set_path(&path);
            url
        };
        // The beta and balance endpoints live beside /v1:
        // https://api.deepseek.com/beta, https://api.deepseek.com/user/balance.
        let mut root = base.clone();
        let root_path = base.path().strip_suffix("/v1").unwrap_or(base.path());
        root.set_path(root_path.trim_end_matches('/'));
        let beta = join(&root, "/beta");
        Ok(Self {
            client,
            authorization,
            chat: join(base, "/chat/completions"),
            beta_chat: join(&beta, "/chat/completions"),
            beta_completions: join(&beta, "/completions"),
            models: join(base, "/models"),
            balance: join(&root, "/user/balance"),
            timeout: config.timeout,
            max_request: config.max_request,
        })
    }

    pub fn url(&self, route: Route) -> &Url {
        match route {
            Route::Chat => &self.chat,
            Route::BetaChat => &self.beta_chat,
            Route::BetaCompletions => &self.beta_completions,
            Route::Models => &self.models,
            Route::Balance => &self.balance,
        }
    }

    /// Sends the request and waits for the response head, until the head
    /// timeout or `deadline`, whichever comes first.
    pub async fn send(
        &self,
        route: Route,
        client_headers: &HeaderMap,
        request_id: &HeaderValue,
        body: Option<Bytes>,
        deadline: Instant,
    ) -> Result<reqwest::Response, ApiError> {
        let mut out = headers::to_upstream(client_headers);
        out.insert(header::AUTHORIZATION, self.authorization.clone());
        out.insert("x-request-id", request_id.clone());
        // Identity encoding: the bytes the client gets are the bytes DeepSeek sent.
        out.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let mut request = self.client.request(method, self.url(route).clone());
        if let Some(body) = body {
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            request = request.body(body);
        }
        let head_deadline = deadline.min(Instant::now() + self.timeout);
        match tokio::time::timeout_at(head_deadline, request.headers(out).send()).await {
            Err(_) => {
                tracing::warn!(?route, "upstream sent no response head in time");
                Err(ApiError::UpstreamTimeout)
            }
            Ok(Err(e)) => {
                tracing::warn!(?route, error = %e, "upstream request failed");
                Err(ApiError::UpstreamUnreachable)
            }
            Ok(Ok(response)) => classify(route, response),
        }
    }
}

/// Whether an outbound proxy is set in the environment (either case).
fn proxy_configured() -> bool {
    ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]
        .iter()
        .flat_map(|v| [v.to_string(), v.to_lowercase()])
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Lets through what the client should see (success, and the errors that are
/// the request's own fault) and turns the rest into the gateway's errors.
fn classify(route: Route, response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = response.status();
    let retry_after = || response.headers().get(header::RETRY_AFTER).cloned();
    match status.as_u16() {
        200..=299 => Ok(response),
        401 | 402 | 403 | 407 => {
            // DeepSeek's 401 text quotes part of our key: the body is neither
            // forwarded nor logged.
            tracing::error!(
                ?route,
                upstream_status = status.as_u16(),
                "DeepSeek refused the gateway's API key or account (check deepseek.api_key \
                 and the account balance)"
            );
            Err(ApiError::UpstreamRejectedKey {
                status: status.as_u16(),
            })
        }
        429 => Err(ApiError::UpstreamRateLimited {
            retry_after: retry_after(),
        }),
        503 => Err(ApiError::UpstreamOverloaded {
            retry_after: retry_after(),
        }),
        400..=499 => Ok(response),
        _ => {
            tracing::warn!(?route, upstream_status = status.as_u16(), "upstream failed");
            Err(ApiError::UpstreamFailed {
                status: status.as_u16(),
            })
        }
    }
}
