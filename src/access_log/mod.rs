//! One log line per request, and the `X-Request-Id` every response carries.
//!
//! The [`AccessLogLayer`] is the outermost layer. It gives the request
//! a [`RequestLog`] that inner layers fill in (user, upstream status, time to
//! first byte, outcome), and wraps the response body so the line is written
//! when the body ends or is dropped: for a stream, that is when the client got
//! the last byte or went away, which is when bytes and outcome are known.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use http_body::Frame;

use crate::ablation::{self, Part};
use crate::client_ip::{client_ip, ClientIp};
use crate::error::ErrorCode;
use crate::ledger::UsageRecord;
use crate::metrics::Observed;
use crate::proxy::hold::Billed;
use crate::state::AppState;
use crate::usage::Usage;
pub use text::civil_date;
use text::TextLine;

mod text;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_CLIENT_REQUEST_ID_BYTES: usize = 128;
const MAX_LOGGED_PATH_CHARS: usize = 200;
const MAX_MODEL_CHARS: usize = 64;

/// The request's id, as sent back to the client and on to the upstream.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

#[derive(Default, Debug)]
struct Record {
    user: Option<String>,
    upstream_status: Option<u16>,
    ttfb: Option<Duration>,
    bytes_in: u64,
    outcome: Option<&'static str>,
    usage: Option<Usage>,
    /// Completion tokens estimated from the characters streamed, when the
    /// request ended before DeepSeek reported its usage.
    estimated_tokens: Option<u64>,
    trace_id: Option<HeaderValue>,
    /// Set for upstream-bound requests: they get a ledger row.
    route: Option<crate::proxy::Route>,
    token_id: u128,
    /// The personal API key's id, when the request came with one.
    key_id: Option<Arc<str>>,
    /// The model DeepSeek serves (what policy, quotas and metrics use).
    model: Option<String>,
    /// The name the client sent, when it differs.
    requested_model: Option<String>,
    /// The upstream that served it (the last one tried), and the tries.
    upstream: Option<String>,
    attempts: u32,
    stream: bool,
    /// For the gateway-overhead histogram: how long the client took to send
    /// its body, when the request went upstream, and when DeepSeek's
    /// response head arrived.
    body_wait: Duration,
    upstream_sent: Option<Instant>,
    upstream_head: Option<Instant>,
    /// What the request was charged (tokens, money), once it ended.
    billed: Option<Billed>,
}

/// What inner layers learn about a request, for its log line.
#[derive(Clone, Default, Debug)]
pub struct RequestLog(Arc<Mutex<Record>>);

impl RequestLog {
    fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_user(&self, user: &str, key_id: Option<&Arc<str>>) {
        self.with(|r| {
            r.user = Some(user.to_owned());
            r.key_id = key_id.cloned();
        });
    }

    pub fn set_bytes_in(&self, n: usize) {
        self.with(|r| r.bytes_in = n as u64);
    }

    /// The client's body took `wait` to arrive (not the gateway's time).
    pub fn set_body_wait(&self, wait: Duration) {
        self.with(|r| r.body_wait = wait);
    }

    /// The request is being sent upstream now.
    pub fn mark_sent(&self) {
        self.with(|r| r.upstream_sent = Some(Instant::now()));
    }

    /// DeepSeek's response head arrived now.
    pub fn mark_head(&self) {
        self.with(|r| r.upstream_head = Some(Instant::now()));
    }

    /// The gateway's own time, once the response head is ready to go out:
    /// arrival to sending upstream (less the body wait), plus DeepSeek's
    /// head to now.
    fn overhead(&self, arrived: Instant) -> Option<Duration> {
        self.with(|r| {
            let (sent, head) = (r.upstream_sent?, r.upstream_head?);
            let before = sent.duration_since(arrived).saturating_sub(r.body_wait);
            Some(before + head.elapsed())
        })
    }

    pub fn set_upstream(&self, status: u16, ttfb: Duration) {
        self.with(|r| {
            r.upstream_status = Some(status);
            r.ttfb = Some(ttfb);
        });
    }

    /// Marks the request as upstream-bound, for the usage ledger.
    pub fn set_request(&self, request: &Requested<'_>, token_id: u128) {
        // Client-chosen: kept short for the ledger and the metrics.
        let short = |m: &str| clip(m, MAX_MODEL_CHARS);
        self.with(|r| {
            r.route = Some(request.route);
            r.token_id = token_id;
            r.model = request.served.map(short);
            r.requested_model = request
                .requested
                .filter(|name| Some(*name) != request.served)
                .map(short);
            r.stream = request.stream;
        });
    }

    /// The request is being tried at `upstream` (its `attempt`th try).
    pub fn set_served_by(&self, upstream: &str, attempt: u32) {
        self.with(|r| {
            if r.upstream.as_deref() != Some(upstream) {
                r.upstream = Some(upstream.to_owned());
            }
            r.attempts = attempt;
        });
    }

    /// DeepSeek's `x-ds-trace-id` for this request, for support cases.
    pub fn set_trace_id(&self, id: Option<&HeaderValue>) {
        // A copy, not a clone: a header value from DeepSeek is a slice of the
        // connection's read buffer, and would keep all of it (8 KiB) alive
        // for as long as the request lasts.
        if let Some(id) = id.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            self.with(|r| r.trace_id = Some(id));
        }
    }

    /// The usage DeepSeek reported, or (`None`) an estimate from what was
    /// streamed before the request ended early.
    pub fn set_usage(&self, usage: Option<Usage>, estimated_tokens: u64) {
        self.with(|r| match usage {
            Some(usage) => r.usage = Some(usage),
            None if estimated_tokens > 0 => r.estimated_tokens = Some(estimated_tokens),
            None => {}
        });
    }

    /// How the request ended, when it did not simply complete:
    /// `upstream_failed` or `timed_out`.
    pub fn set_billed(&self, billed: Billed) {
        self.with(|r| r.billed = Some(billed));
    }

    pub fn set_outcome(&self, outcome: &'static str) {
        self.with(|r| r.outcome = Some(outcome));
    }
}

/// What an upstream-bound request asked for, for its log line and ledger row.
pub struct Requested<'a> {
    pub route: crate::proxy::Route,
    pub requested: Option<&'a str>,
    pub served: Option<&'a str>,
    pub stream: bool,
}

impl Requested<'_> {
    /// A request with no body (the model list, the balance).
    pub fn bare(route: crate::proxy::Route) -> Self {
        Self {
            route,
            requested: None,
            served: None,
            stream: false,
        }
    }
}

/// A client id is kept if it is short and printable; otherwise we make one.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_CLIENT_REQUEST_ID_BYTES
                && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// 32 hex digits, unique without a system call per request: a counter, made
/// to look random by a bijective mix keyed with 128 bits drawn from the OS
/// once per process, so ids never repeat within a process and replicas draw
/// different keys. Request ids only correlate log lines; they are not
/// secrets, and nothing takes one as proof of anything.
fn new_request_id() -> HeaderValue {
    if ablation::off(Part::RequestId) {
        return HeaderValue::from_static("00000000000000000000000000000000");
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (high, mix) = *KEY.get_or_init(|| {
        let k = uuid::Uuid::new_v4().as_u64_pair();
        (k.0, k.1)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // splitmix64's finaliser: a bijection on u64, so distinct counters give
    // distinct ids.
    let mut x = n ^ mix;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let id = (u128::from(high ^ x.rotate_left(17)) << 64) | u128::from(x);
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    let text = uuid::Uuid::from_u128(id).simple().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

/// The outermost layer: gives each request its id, client address and
/// [`RequestLog`], puts the gateway's own errors in the route's dialect and
/// `no-store` on `/auth/` answers ([`crate::routes::Finish`]), and wraps the
/// response body so the request is logged when it ends. A hand-written
/// service, not `axum::middleware::from_fn`: that one clones the route and
/// boxes a future per request (BENCHMARKS.md, issue 15).
#[derive(Clone)]
pub struct AccessLogLayer(pub AppState);

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            state: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    state: AppState,
    inner: S,
}

impl<S> tower::Service<Request> for AccessLog<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let line = start(&self.state, &mut req);
        let route = crate::routes::Finish::of(req.uri().path());
        // A route that panics gets a generic 500 and the process stays up
        // (here, not in a layer of its own: one layer less per request).
        let inner = catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).ok();
        Logged {
            inner: inner.into(),
            // If the client goes away before there is a response (a hung
            // upstream, a slow login), this future is dropped: the guard
            // still logs the line.
            pending: Pending(Some(line)),
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// The route's answer, logged once its body ends.
    pub struct Logged<F> {
        // `None` if the route panicked when called.
        #[pin]
        inner: futures_util::future::OptionFuture<F>,
        pending: Pending,
        route: crate::routes::Finish,
    }
}

impl<F> std::future::Future for Logged<F>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A panic while polling ends the future: it is not polled again.
        let response = match catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Some(Ok(response)))) => response,
            Ok(Poll::Ready(None)) | Err(_) => crate::routes::panic_response(),
        };
        let mut response = this.route.apply(response);
        let Some(line) = this.pending.0.take() else {
            return Poll::Ready(Ok(response));
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), line.request_id.clone());
        let line = Line {
            status: response.status().as_u16(),
            error: response.extensions().get::<ErrorCode>().map(|c| c.0),
            overhead: line.log.overhead(line.start),
            ..line
        };
        Poll::Ready(Ok(response.map(|inner| {
            Body::new(LoggedBody {
                inner,
                line: Some(line),
                bytes_out: 0,
                ended: false,
            })
        })))
    }
}

/// The request's [`Line`], before there is an answer; the request gets its
/// [`RequestLog`], [`RequestId`] and [`ClientIp`].
fn start(state: &AppState, req: &mut Request) -> Line {
    let start = Instant::now();
    // The bearer token must never print, even through a Debug of the headers.
    for name in [axum::http::header::AUTHORIZATION.as_str(), "x-api-key"] {
        if let Some(auth) = req.headers_mut().get_mut(name) {
            auth.set_sensitive(true);
        }
    }
    let id = request_id(req);
    let log = RequestLog::default();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let client = client_ip(peer, req.headers(), &state.trusted_proxies);
    req.extensions_mut().insert(ClientIp(client));
    let line = Line {
        state: state.clone(),
        request_id: id.clone(),
        method: req.method().clone(),
        path: clip(req.uri().path(), MAX_LOGGED_PATH_CHARS),
        client: ip_text(client),
        log: log.clone(),
        start,
        status: 0,
        error: None,
        overhead: None,
    };
    req.extensions_mut().insert(log);
    req.extensions_mut().insert(RequestId(id));
    line
}

struct Line {
    /// For the ledger and the metrics (one reference count to clone).
    state: AppState,
    request_id: HeaderValue,
    method: Method,
    path: String,
    client: String,
    log: RequestLog,
    start: Instant,
    status: u16,
    error: Option<&'static str>,
    overhead: Option<Duration>,
}

/// Counts the bytes of a response body and logs the request when it ends.
struct LoggedBody {
    inner: Body,
    /// Taken when the body is dropped.
    line: Option<Line>,
    bytes_out: u64,
    ended: bool,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            Some(Err(_)) | None => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body hyper never polled to the end was abandoned by the client,
        // unless it was empty to begin with.
        let ended = self.ended || http_body::Body::is_end_stream(&self.inner);
        // Drop the inner body first: the relay records what it knows
        // (usage, or an estimate) as it goes.
        drop(std::mem::replace(&mut self.inner, Body::empty()));
        if let Some(line) = self.line.take() {
            line.finish(self.bytes_out, ended);
        }
    }
}

/// Logs a request whose handler was dropped before it answered.
struct Pending(Option<Line>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.finish(0, false);
        }
    }
}

impl Line {
    /// The request is over (`ended`: its response was sent whole). Its ledger
    /// row is recorded now, before hyper sends the end of the body, so a
    /// client that saw the end can find the row (and the journal has it).
    /// The log line and the metrics come after: they are handed to a task
    /// that runs on this thread once hyper has written the last bytes
    /// (tokio's next-task slot; if that slot is taken, tokio may also wake
    /// an idle worker, as `strace` shows at concurrency 1), which takes
    /// their cost off the response's latency. A runtime shutting down drops
    /// that task unrun; dropping it writes them all the same.
    fn finish(self, bytes_out: u64, ended: bool) {
        let outcome = {
            let r = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
            let outcome = match (r.outcome, ended) {
                (Some(outcome), _) => outcome,
                (None, true) => "completed",
                (None, false) => "client_aborted",
            };
            self.record(&r, outcome, bytes_out);
            outcome
        };
        let after = Written {
            line: Some(self),
            outcome,
            bytes_out,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { drop(after) })),
            Err(_) => drop(after),
        }
    }

    /// The log line and the metrics.
    fn write(&self, outcome: &str, bytes_out: u64) {
        let l = self;
        let r = l.log.0.lock().unwrap_or_else(|e| e.into_inner());
        if !ablation::off(Part::AccessLog) {
            log_line(l, &r, outcome, bytes_out);
        }
        // A fixed set of labels: paths are client-chosen.
        let route_label = match (r.route, l.path.as_str()) {
            (Some(route), _) => route.name(),
            (None, "/chat/completions" | "/v1/chat/completions") => "chat",
            (None, "/responses" | "/v1/responses") => "responses",
            (None, "/anthropic/v1/messages") => "messages",
            (None, "/anthropic/v1/messages/count_tokens") => "count_tokens",
            (None, "/v1/tools/search") => "tool_search",
            (None, "/v1/tools/fetch") => "tool_fetch",
            (None, "/beta/chat/completions") => "beta_chat",
            (None, "/beta/completions") => "beta_completions",
            (None, "/models" | "/v1/models") => "models",
            (None, "/user/balance") => "balance",
            (
                None,
                "/admin/usage"
                | "/admin/requests"
                | "/admin/active"
                | "/v1/usage/me"
                | "/v1/usage/me/requests"
                | "/v1/pricing",
            ) => "usage_api",
            (None, "/auth/login") => "login",
            (None, "/auth/logout") => "logout",
            (None, "/healthz" | "/readyz") => "health",
            _ => "other",
        };
        let model = r.model.as_deref().unwrap_or("-");
        if !ablation::off(Part::Metrics) {
            self.state.metrics.observe(&Observed {
                route: route_label,
                status: l.status,
                code: l.error.unwrap_or(""),
                seconds: l.start.elapsed().as_secs_f64(),
                upstream_ttfb_seconds: r.ttfb.map(|d| d.as_secs_f64()),
                overhead_seconds: l.overhead.map(|d| d.as_secs_f64()),
                user: r.user.as_deref().unwrap_or("-"),
                model,
                usage: r.usage.as_ref(),
                cost: r.billed.and_then(|b| b.cost),
            });
        }
    }

    /// The request's ledger row, if it went upstream.
    fn record(&self, r: &Record, outcome: &str, bytes_out: u64) {
        let l = self;
        if let Some(route) = r.route.filter(|_| !ablation::off(Part::Ledger)) {
            let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let usage = r.usage.as_ref();
            // DeepSeek bills an answer it sent (a tool call only then).
            let billable = (200..300).contains(&l.status) && bytes_out > 0;
            self.state.ledger.record(UsageRecord {
                request_id: l.request_id.to_str().unwrap_or("-").to_owned(),
                ts_ms: unix_ms(),
                username: r.user.clone().unwrap_or_default(),
                token_id: uuid::Uuid::from_u128(r.token_id).simple().to_string(),
                key_id: r.key_id.as_deref().map(str::to_owned),
                upstream: r.upstream.clone(),
                attempts: (r.attempts > 0).then_some(i64::from(r.attempts)),
                route: route.name().to_owned(),
                format: route.format().name().to_owned(),
                model: r.model.clone(),
                requested_model: r.requested_model.clone(),
                stream: r.stream,
                status: i64::from(l.status),
                upstream_status: r.upstream_status.map(i64::from),
                error_code: l.error.map(str::to_owned),
                prompt_tokens: usage.map(|u| to_i64(u.prompt_tokens)),
                completion_tokens: usage.map(|u| to_i64(u.completion_tokens)),
                cached_tokens: usage.map(|u| to_i64(u.cached_tokens)),
                cache_miss_tokens: usage.map(|u| to_i64(u.cache_miss_tokens)),
                reasoning_tokens: usage.map(|u| to_i64(u.reasoning_tokens)),
                completion_tokens_estimated: r.estimated_tokens.map(to_i64),
                latency_ms: ms(l.start.elapsed()),
                ttfb_ms: r.ttfb.map(ms),
                bytes_in: to_i64(r.bytes_in),
                bytes_out: to_i64(bytes_out),
                client_ip: l.client.clone(),
                outcome: outcome.to_owned(),
                billable,
                charged_tokens: r.billed.map(|b| to_i64(b.tokens)),
                cost_micros: r.billed.and_then(|b| b.cost).map(|c| to_i64(c.micros)),
                cost_estimated: r.billed.and_then(|b| b.cost).is_some_and(|c| c.estimated),
                currency: r
                    .billed
                    .and_then(|b| b.cost)
                    .map(|c| c.currency.code().to_owned()),
            });
        }
    }
}

/// A finished request's log line and metrics, written when dropped.
struct Written {
    line: Option<Line>,
    outcome: &'static str,
    bytes_out: u64,
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.outcome, self.bytes_out);
        }
    }
}

/// The request's one line, with the fields in a fixed order. As text (the
/// default), the line is written here, in one pass ([`text`]): whole, to
/// the log's own writer ([`crate::telemetry::access_writer`]), or, when
/// the log is in colour, as `tracing`'s message. As JSON, the fields are
/// the event's own.
fn log_line(l: &Line, r: &Record, outcome: &str, bytes_out: u64) {
    let direct = crate::telemetry::access_writer();
    if direct.is_none()
        && !tracing::enabled!(target: crate::telemetry::ACCESS_TARGET, tracing::Level::INFO)
    {
        return;
    }
    let count = |f: fn(&Usage) -> u64| r.usage.as_ref().map(f);
    let request_id = l.request_id.to_str().unwrap_or("-");
    let user = r.user.as_deref().unwrap_or("-");
    let key_id = r.key_id.as_deref().unwrap_or("-");
    let format = r.route.map_or("-", |route| route.format().name());
    let model = r.model.as_deref().unwrap_or("-");
    let upstream = r.upstream.as_deref().unwrap_or("-");
    let error = l.error.unwrap_or("-");
    let latency = l.start.elapsed();
    let ttfb = r.ttfb.unwrap_or_default();
    let cost_micros = r.billed.and_then(|b| b.cost).map(|c| c.micros);
    let trace_id = r.trace_id.as_ref().and_then(|v| v.to_str().ok());
    if crate::telemetry::is_json() {
        tracing::info!(
            target: crate::telemetry::ACCESS_TARGET,
            request_id = %request_id,
            method = %l.method,
            path = %l.path,
            client = %l.client,
            user = %user,
            key_id = %key_id,
            format = %format,
            model = %model,
            upstream = %upstream,
            attempts = r.attempts,
            status = l.status,
            upstream_status = r.upstream_status.unwrap_or(0),
            error = %error,
            outcome = %outcome,
            latency_ms = ms(latency),
            ttfb_ms = ms(ttfb),
            bytes_in = r.bytes_in,
            bytes_out,
            prompt_tokens = count(|u| u.prompt_tokens),
            completion_tokens = count(|u| u.completion_tokens),
            cached_tokens = count(|u| u.cached_tokens),
            cache_miss_tokens = count(|u| u.cache_miss_tokens),
            reasoning_tokens = count(|u| u.reasoning_tokens),
            completion_tokens_estimated = r.estimated_tokens,
            cost_micros,
            ds_trace_id = trace_id.map(tracing::field::display),
            "request"
        );
        return;
    }
    // The texts of the line that others choose (the model, the path, the
    // user's name, DeepSeek's trace id): no control, format or space
    // character, so none can forge a line, a field, or a terminal's state
    // (this line skips the formatter's escaping).
    let (model, path, user) = (printable(model), printable(&l.path), printable(user));
    let trace_id = trace_id.map(printable);
    let mut line = match direct {
        Some(_) => TextLine::stamped(std::time::SystemTime::now()),
        None => TextLine::bare(),
    };
    line.push("request");
    line.text("request_id", request_id);
    line.text("method", l.method.as_str());
    line.text("path", &path);
    line.text("client", &l.client);
    line.text("user", &user);
    line.text("key_id", key_id);
    line.text("format", format);
    line.text("model", &model);
    line.text("upstream", upstream);
    line.number("attempts", r.attempts.into());
    line.number("status", l.status.into());
    line.number("upstream_status", r.upstream_status.unwrap_or(0).into());
    line.text("error", error);
    line.text("outcome", outcome);
    line.millis("latency_ms", latency);
    line.millis("ttfb_ms", ttfb);
    line.number("bytes_in", r.bytes_in);
    line.number("bytes_out", bytes_out);
    let optional = [
        ("prompt_tokens", count(|u| u.prompt_tokens)),
        ("completion_tokens", count(|u| u.completion_tokens)),
        ("cached_tokens", count(|u| u.cached_tokens)),
        ("cache_miss_tokens", count(|u| u.cache_miss_tokens)),
        ("reasoning_tokens", count(|u| u.reasoning_tokens)),
        ("completion_tokens_estimated", r.estimated_tokens),
        ("cost_micros", cost_micros),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            line.number(name, value);
        }
    }
    if let Some(id) = trace_id {
        line.text("ds_trace_id", &id);
    }
    match direct {
        Some(write) => write(line.finish().as_bytes()),
        None => tracing::info!(target: crate::telemetry::ACCESS_TARGET, "{}", line.as_str()),
    }
}

/// `text` with every control, whitespace and invisible formatting
/// character (bidi overrides, zero-width ones) replaced by `?`.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    // Most lines: printable ASCII, checked a byte at a time.
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return text.into();
    }
    match text.chars().any(unsafe_char) {
        true => text
            .chars()
            .map(|c| if unsafe_char(c) { '?' } else { c })
            .collect(),
        false => text.into(),
    }
}

/// `text`'s first `max_chars` characters.
pub fn clip(text: &str, max_chars: usize) -> String {
    match text.len() <= max_chars {
        // No more bytes than that: no more characters either.
        true => text.to_owned(),
        false => text.chars().take(max_chars).collect(),
    }
}

/// The client's address as text (`to_string` takes three times as long
/// for an IPv4 address).
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        std::net::IpAddr::V6(_) => ip.to_string(),
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_texts_keep_whole_characters() {
        assert_eq!(clip("deepseek-flash", 64), "deepseek-flash");
        assert_eq!(clip("abcdef", 3), "abc");
        // Four characters, twelve bytes: longer than 5 bytes, kept whole.
        assert_eq!(clip("深度求索", 5), "深度求索");
        assert_eq!(clip("深度求索", 2), "深度");
    }

    #[test]
    fn addresses_print_as_rust_prints_them() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("an address");
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn printable_texts_pass_and_others_are_masked() {
        assert_eq!(printable("deepseek-flash"), "deepseek-flash");
        assert_eq!(printable("深度求索"), "深度求索");
        assert_eq!(printable("a b\nc\u{202e}d"), "a?b?c?d");
    }

    #[test]
    fn generated_request_ids_are_32_hex_digits_and_never_repeat() {
        let ids: std::collections::HashSet<_> = (0..100_000)
            .map(|_| {
                let id = new_request_id();
                let text = id.to_str().expect("ascii").to_owned();
                assert_eq!(text.len(), 32, "{text}");
                assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
                text
            })
            .collect();
        assert_eq!(ids.len(), 100_000);
    }
}
