//! The connection to DeepSeek: one pooled client, the routes' URLs, the key
//! added on the way out, and the classification of what comes back.
//!
//! Requests go out on the gateway's own HTTP/1.1 pool ([`super::pool`]),
//! which the request's task drives itself. When an outbound proxy is set
//! (`HTTPS_PROXY` and friends) they go through reqwest instead, which knows
//! how to tunnel through one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::Full;
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::headers;
use super::pool::{Driven, Pool};
use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::formats::Format;

/// The upstream endpoints the gateway exposes: each one's path under
/// DeepSeek's root (`deepseek.base_url`) and its wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    /// Chat prefix completion.
    BetaChat,
    /// FIM completion.
    BetaCompletions,
    /// The Responses API.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// Anthropic's token counter: no slot, no ledger row.
    CountTokens,
    ToolSearch,
    ToolFetch,
    Models,
    Balance,
}

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Chat,
        Route::BetaChat,
        Route::BetaCompletions,
        Route::Responses,
        Route::Messages,
        Route::CountTokens,
        Route::ToolSearch,
        Route::ToolFetch,
        Route::Models,
        Route::Balance,
    ];

    /// The name recorded in the usage ledger and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::BetaChat => "beta_chat",
            Route::BetaCompletions => "beta_completions",
            Route::Responses => "responses",
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::ToolSearch => "tool_search",
            Route::ToolFetch => "tool_fetch",
            Route::Models => "models",
            Route::Balance => "balance",
        }
    }

    /// The path under DeepSeek's root.
    pub fn path(self) -> &'static str {
        match self {
            Route::Chat => "/chat/completions",
            Route::BetaChat => "/beta/chat/completions",
            Route::BetaCompletions => "/beta/completions",
            Route::Responses => "/responses",
            Route::Messages => "/anthropic/v1/messages",
            Route::CountTokens => "/anthropic/v1/messages/count_tokens",
            Route::ToolSearch => "/v1/tools/search",
            Route::ToolFetch => "/v1/tools/fetch",
            Route::Models => "/models",
            Route::Balance => "/user/balance",
        }
    }

    pub fn format(self) -> Format {
        match self {
            Route::Chat | Route::BetaChat | Route::Models | Route::Balance => Format::Chat,
            Route::BetaCompletions => Format::Fim,
            Route::Responses => Format::Responses,
            Route::Messages | Route::CountTokens => Format::Anthropic,
            Route::ToolSearch => Format::Search,
            Route::ToolFetch => Format::Fetch,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How requests reach DeepSeek.
enum Transport {
    Direct(Arc<Pool>),
    Proxied(reqwest::Client),
}

/// The body of DeepSeek's answer, from either transport.
pub enum UpstreamBody {
    Direct(Driven),
    Proxied(reqwest::Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Proxied(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(body) => body.is_end_stream(),
            UpstreamBody::Proxied(body) => body.is_end_stream(),
        }
    }
}

pub struct Upstream {
    transport: Transport,
    /// `Bearer <key>`, marked sensitive so it never prints through Debug.
    authorization: HeaderValue,
    /// The root every route's path hangs off.
    base: Url,
    /// Each route's URL, in [`Route::ALL`] order.
    urls: Vec<Url>,
    /// The request targets (origin form: path and query) of the same URLs,
    /// for the direct transport.
    targets: Vec<Uri>,
    /// The `Host` header for the direct transport.
    host: HeaderValue,
    /// Longest wait for the response head, and longest silence mid-body.
    pub timeout: Duration,
    /// Hard cap on one request, keep-alives included.
    pub max_request: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let connect_timeout = config.timeout.min(Duration::from_secs(10));
        let base = &config.base_url;
        let authority = match (base.host_str(), base.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err("deepseek.base_url has no host".into()),
        };
        let origin: Uri = format!("{}://{authority}", base.scheme())
            .parse()
            .map_err(|e| format!("deepseek.base_url: {e}"))?;
        let host = HeaderValue::from_str(&authority).map_err(|_| {
            "deepseek.base_url has a host that is not a valid header value".to_owned()
        })?;
        let transport = if proxy_configured() {
            let mut client = reqwest::Client::builder();
            for root in &config.extra_roots {
                let root = reqwest::Certificate::from_der(root)
                    .map_err(|e| format!("deepseek.ca_file: {e}"))?;
                client = client.add_root_certificate(root);
            }
            let client = client
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(IDLE_TIMEOUT)
                .tcp_keepalive(Duration::from_secs(30))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            Transport::Proxied(client)
        } else {
            let pool = Arc::new(Pool::new(
                origin,
                tls_config(&config.extra_roots)?,
                connect_timeout,
                IDLE_TIMEOUT,
                MAX_IDLE,
            ));
            pool.reap_in_background();
            Transport::Direct(pool)
        };
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose_secret()))
                .map_err(|_| "deepseek.api_key is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        // `base_url` is DeepSeek's root (a trailing /v1 was dropped when
        // the config was read): every route's path hangs off it.
        let mut urls = Vec::with_capacity(Route::ALL.len());
        let mut targets = Vec::with_capacity(Route::ALL.len());
        for route in Route::ALL {
            let mut url = base.clone();
            url.set_path(&format!(
                "{}{}",
                base.path().trim_end_matches('/'),
                route.path()
            ));
            let target = match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_owned(),
            };
            targets.push(
                target
                    .parse::<Uri>()
                    .map_err(|e| format!("deepseek.base_url: {e}"))?,
            );
            urls.push(url);
        }
        Ok(Self {
            transport,
            authorization,
            base: base.clone(),
            urls,
            targets,
            host,
            timeout: config.timeout,
            max_request: config.max_request,
        })
    }

    /// DeepSeek's root, as configured (it carries no credentials).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    pub fn url(&self, route: Route) -> &Url {
        &self.urls[route.index()]
    }

    fn target(&self, route: Route) -> &Uri {
        &self.targets[route.index()]
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
    ) -> Result<Response<UpstreamBody>, ApiError> {
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
        if body.is_some() {
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let head_deadline = deadline.min(Instant::now() + self.timeout);
        let sent = async {
            match &self.transport {
                Transport::Direct(pool) => {
                    let mut request = Request::new(Full::new(body.unwrap_or_default()));
                    *request.method_mut() = method;
                    *request.uri_mut() = self.target(route).clone();
                    out.insert(header::HOST, self.host.clone());
                    *request.headers_mut() = out;
                    pool.send(request)
                        .await
                        .map(|r| r.map(UpstreamBody::Direct))
                        .map_err(|e| {
                            let sent = !matches!(e, super::pool::SendError::Connect(_));
                            (e.to_string(), sent)
                        })
                }
                Transport::Proxied(client) => {
                    let mut request = client.request(method, self.url(route).clone());
                    if let Some(body) = body {
                        request = request.body(body);
                    }
                    request
                        .headers(out)
                        .send()
                        .await
                        .map(|r| Response::from(r).map(UpstreamBody::Proxied))
                        .map_err(|e| (e.to_string(), !e.is_connect()))
                }
            }
        };
        match tokio::time::timeout_at(head_deadline, sent).await {
            Err(_) => {
                tracing::warn!(?route, "upstream sent no response head in time");
                Err(ApiError::UpstreamTimeout)
            }
            Ok(Err((error, sent))) => {
                tracing::warn!(?route, %error, sent, "upstream request failed");
                Err(ApiError::UpstreamUnreachable { sent })
            }
            Ok(Ok(response)) => classify(route, response),
        }
    }
}

/// TLS for the direct transport (and `check`): the built-in Mozilla roots
/// (the same as reqwest's) plus the upstream's `ca_file`, TLS 1.2 and 1.3,
/// certificates always verified.
pub(crate) fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| format!("ca_file: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How long an idle connection to DeepSeek is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept at most; more are closed as their requests end.
const MAX_IDLE: usize = 1024;

/// Whether an outbound proxy is set in the environment (either case).
fn proxy_configured() -> bool {
    ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]
        .iter()
        .flat_map(|v| [v.to_string(), v.to_lowercase()])
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Lets through what the client should see (success, and the errors that are
/// the request's own fault) and turns the rest into the gateway's errors.
fn classify<B>(route: Route, response: Response<B>) -> Result<Response<B>, ApiError> {
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
