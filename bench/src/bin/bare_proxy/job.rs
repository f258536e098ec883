//! `BARE_JOB=DIR`: the bare proxy doing the gateway's job, with the
//! production defaults issue 15 measures, each piece the plainest way this
//! stack allows. It is the floor of "the same job" (BENCHMARKS.md): what a
//! gateway without the product's structure (axum, its layers, its error
//! dialects, its formats, its stores) would cost on this machine.
//!
//! Per request, as the gateway does it:
//! - the bearer token, an HS256 JWT signed with `BARE_JWT_SECRET` (the
//!   bench's gateways' secret, so their tokens are valid here): verified
//!   (signature, issuer, audience) once per token and cached; its expiry,
//!   and that its user is active and the token not older than the user's
//!   last password change, checked every time;
//! - one request in flight per token (429 otherwise), free again when the
//!   response's body has ended;
//! - the body read whole, checked (a JSON object, a served model, `stream`,
//!   `max_tokens`), and `user_id` set to the user's pseudonym (an HMAC of
//!   the username, computed once per user);
//! - the quotas the bench configures: requests per minute (a sliding
//!   window of timestamps), tokens per day and budget per month (the
//!   worst case reserved before, from the body's size and `max_tokens`,
//!   and settled to the real usage after), concurrent requests, under one
//!   lock;
//! - the registry of requests in flight (`/admin/active`'s), and a timeout
//!   on DeepSeek's answer;
//! - header allow-lists both ways, the upstream key, a request id;
//! - the answer's `usage` read from its last two chunks as they pass;
//! - at the body's end: the ledger row, written to a crash journal before the
//!   end (one `write`) and to SQLite in batches once a second on a thread
//!   of its own (one transaction a batch, a cached statement, the gateway's
//!   table, columns and indexes; JSON-escaped texts in the journal); the
//!   access log line with the gateway's fields and an RFC 3339 time (one
//!   `write`); metrics with the gateway's label sets (requests by route,
//!   status and code; three latency histograms; five token counters and
//!   the cost by user and model), as counters in maps under the same lock.
//!
//! Left out, because the bench's requests never take those paths: logins,
//! API keys, aliases, other formats, failover, error rows in the ledger.
//! Done more heavily than the gateway (so the floor errs high): glibc's
//! allocator unless built with `--features mimalloc`, hyper-util's pooled
//! client (a task per connection), one SQLite statement per row.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

// The gateway's own allow-lists and tokens' issuer.
use deepseek_proxy::auth::jwt::ISSUER;
use deepseek_proxy::proxy::headers::{TO_CLIENT, TO_UPSTREAM};

/// The bench's quotas (`bench/src/procs.rs`, `bench/lib.sh`), none reached.
const REQUESTS_PER_MINUTE: usize = 1_000_000;
const TOKENS_PER_DAY: u64 = 1_000_000_000_000;
const MAX_CONCURRENT: u64 = 64;
const BUDGET_MICROS_PER_MONTH: u64 = 1_000_000 * 1_000_000;
/// DeepSeek's list price per million tokens, in micro-units (input, output).
const PRICE_MICROS: (u64, u64) = (270_000, 1_100_000);
/// Reserved for a request without `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 8192;
const MAX_BODY: usize = 4 << 20;
/// How long DeepSeek's answer may take to start.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Latency histogram buckets, in seconds (the gateway's histograms have
/// 12 and 17).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0, 60.0,
];

pub type Answer = Response<Either<Tapped, Full<Bytes>>>;
/// A request turned away: its status and message.
type Refused = (StatusCode, &'static str);
type Histogram = [u64; BUCKETS.len() + 1];

pub struct Job {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    bearer: HeaderValue,
    jwt: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    pseudonyms: ring::hmac::Key,
    state: Mutex<State>,
    rows: Arc<Mutex<Vec<Row>>>,
    journal: File,
    log: File,
    ids: (u64, AtomicU64),
}

#[derive(Default)]
struct State {
    /// Verified tokens by their text.
    tokens: HashMap<Box<str>, Token>,
    users: HashMap<Arc<str>, User>,
    /// Requests in flight, by request number.
    active: HashMap<u64, Active>,
    /// Metrics by (route, status, code).
    routes: HashMap<(&'static str, u16, &'static str), RouteMetrics>,
    /// Metrics by (user, model).
    spend: HashMap<(Arc<str>, Box<str>), SpendMetrics>,
}

struct Token {
    user: Arc<str>,
    jti: Arc<str>,
    iat: u64,
    exp: u64,
    busy: bool,
}

struct User {
    pseudonym: Arc<str>,
    disabled: bool,
    tokens_valid_after: u64,
    /// Admissions of the last minute, in ms.
    recent: VecDeque<u64>,
    day: u64,
    tokens_today: u64,
    in_flight: u64,
    month: u64,
    spent_micros: u64,
}

#[allow(dead_code)] // what `/admin/active` would show
struct Active {
    request_id: Arc<str>,
    user: Arc<str>,
    model: Box<str>,
    stream: bool,
    started_ms: u64,
}

#[derive(Default)]
struct RouteMetrics {
    requests: u64,
    duration: Histogram,
    upstream_ttfb: Histogram,
    overhead: Histogram,
}

#[derive(Default)]
struct SpendMetrics {
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_miss: u64,
    reasoning: u64,
    cache_hit_ratio: f64,
    cost_micros: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// A ledger row: the gateway's `UsageRecord` for a chat completion.
struct Row {
    request_id: Arc<str>,
    ts_ms: i64,
    user: Arc<str>,
    token_id: Arc<str>,
    model: Box<str>,
    stream: bool,
    status: u16,
    usage: Option<Usage>,
    latency_ms: f64,
    ttfb_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    client_ip: String,
    cost_micros: u64,
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_cache_hit_tokens: u64,
    #[serde(default)]
    prompt_cache_miss_tokens: u64,
    #[serde(default)]
    completion_tokens_details: Details,
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
struct Details {
    #[serde(default)]
    reasoning_tokens: u64,
}

#[derive(serde::Deserialize)]
struct Check<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    #[serde(borrow)]
    user_id: Option<&'a serde_json::value::RawValue>,
}

impl Job {
    /// From `BARE_JOB` (the directory for the ledger, journal and log),
    /// `BARE_JWT_SECRET` and `BARE_UPSTREAM_KEY`; `None` without `BARE_JOB`.
    pub fn from_env(upstream: &Uri) -> std::io::Result<Option<Arc<Job>>> {
        let Ok(dir) = std::env::var("BARE_JOB") else {
            return Ok(None);
        };
        let var = |name: &str| {
            std::env::var(name).map_err(|e| std::io::Error::other(format!("{name}: {e}")))
        };
        let (secret, key) = (var("BARE_JWT_SECRET")?, var("BARE_UPSTREAM_KEY")?);
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir)?;
        let append = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.leeway = 0;
        let rows = Arc::new(Mutex::new(Vec::new()));
        ledger_writer(dir.join("usage.db"), rows.clone())?;
        let random = (u64::from(std::process::id()) << 32) ^ now_ms();
        Ok(Some(Arc::new(Job {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            upstream: upstream.clone(),
            bearer: HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(std::io::Error::other)?,
            jwt: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            validation,
            pseudonyms: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            state: Mutex::new(State::default()),
            rows,
            journal: append("journal.jsonl")?,
            log: append("access.log")?,
            ids: (random, AtomicU64::new(0)),
        })))
    }

    pub async fn serve(self: Arc<Self>, req: Request<Incoming>, peer: String) -> Answer {
        match self.forward(req, peer).await {
            Ok(answer) => answer,
            Err((status, message)) => {
                let body =
                    format!(r#"{{"error":{{"message":"{message}","type":"gateway_error"}}}}"#);
                let mut answer = Response::new(Either::Right(Full::new(Bytes::from(body))));
                *answer.status_mut() = status;
                let json = HeaderValue::from_static("application/json");
                answer.headers_mut().insert(header::CONTENT_TYPE, json);
                answer
            }
        }
    }

    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client_ip: String,
    ) -> Result<Answer, Refused> {
        let start = Instant::now();
        let token: Box<str> = bearer(req.headers()).unwrap_or_default().into();
        let (user, jti) = self.take_slot(&token)?;
        let number = self.ids.1.fetch_add(1, Ordering::Relaxed);
        let mut slot = Slot {
            job: self.clone(),
            token,
            user: user.clone(),
            number,
            admitted: None,
            settled: None,
            metrics: None,
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Err((StatusCode::BAD_REQUEST, "the body could not be read")),
        };
        let check: Check<'_> = serde_json::from_slice(&body)
            .map_err(|_| (StatusCode::BAD_REQUEST, "the body is not a chat request"))?;
        if !matches!(&*check.model, "deepseek-flash" | "deepseek-v4-pro") {
            return Err((StatusCode::BAD_REQUEST, "no such model"));
        }
        if check.user_id.is_some() || !body.ends_with(b"}") || body.len() < 3 {
            return Err((StatusCode::BAD_REQUEST, "the body is not a chat request"));
        }
        let model: Box<str> = check.model.into();
        let stream = check.stream;
        let request_id: Arc<str> = format!("{:016x}{number:016x}", self.ids.0).into();
        // The worst case: every byte of the body a prompt token, and all
        // of `max_tokens` out.
        let tokens = body.len() as u64 + check.max_tokens.map_or(DEFAULT_MAX_TOKENS, u64::from);
        let reserved = (tokens, tokens * PRICE_MICROS.1 / 1_000_000);
        let active = Active {
            request_id: request_id.clone(),
            user: user.clone(),
            model: model.clone(),
            stream,
            started_ms: now_ms(),
        };
        let pseudonym = self.admit(&user, number, active, reserved)?;
        slot.admitted = Some(reserved);
        // `user_id` added as the object's last member.
        let mut rewritten = Vec::with_capacity(body.len() + pseudonym.len() + 16);
        rewritten.extend_from_slice(&body[..body.len() - 1]);
        rewritten.extend_from_slice(b",\"user_id\":\"");
        rewritten.extend_from_slice(pseudonym.as_bytes());
        rewritten.extend_from_slice(b"\"}");

        let mut up = Request::new(Full::new(Bytes::from(rewritten)));
        *up.method_mut() = hyper::Method::POST;
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        *up.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        let headers = up.headers_mut();
        copy(&parts.headers, headers, &TO_UPSTREAM);
        let json = HeaderValue::from_static("application/json");
        headers.insert(header::CONTENT_TYPE, json);
        headers.insert(header::AUTHORIZATION, self.bearer.clone());
        let identity = HeaderValue::from_static("identity");
        headers.insert(header::ACCEPT_ENCODING, identity);
        let id = HeaderValue::try_from(&*request_id).unwrap_or(HeaderValue::from_static("-"));
        headers.insert("x-request-id", id.clone());

        let sent = Instant::now();
        let answer = match tokio::time::timeout(HEAD_TIMEOUT, self.client.request(up)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err((StatusCode::BAD_GATEWAY, "DeepSeek could not be reached")),
            Err(_) => return Err((StatusCode::GATEWAY_TIMEOUT, "DeepSeek did not answer")),
        };
        let upstream_ttfb = sent.elapsed();
        let (upstream_parts, upstream_body) = answer.into_parts();
        let mut response = Response::new(());
        *response.status_mut() = upstream_parts.status;
        let headers = response.headers_mut();
        copy(&upstream_parts.headers, headers, &TO_CLIENT);
        if !stream {
            copy(&upstream_parts.headers, headers, &[header::CONTENT_LENGTH]);
        }
        headers.insert("x-request-id", id);
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let vary = "origin, access-control-request-method, access-control-request-headers";
        headers.insert(header::VARY, HeaderValue::from_static(vary));
        let row = Row {
            request_id,
            ts_ms: now_ms() as i64,
            user,
            token_id: jti,
            model,
            stream,
            status: upstream_parts.status.as_u16(),
            usage: None,
            latency_ms: 0.0,
            ttfb_ms: ms(start.elapsed()),
            bytes_in: body.len() as u64,
            bytes_out: 0,
            client_ip,
            cost_micros: 0,
        };
        let tapped = Tapped {
            inner: upstream_body,
            chunks: (Bytes::new(), Bytes::new()),
            end: Some(End {
                slot,
                row,
                start,
                upstream_ttfb,
            }),
        };
        Ok(response.map(|()| Either::Left(tapped)))
    }

    /// The token checked and its slot taken: (user, jti).
    fn take_slot(&self, token: &str) -> Result<(Arc<str>, Arc<str>), Refused> {
        const UNAUTHORIZED: Refused = (StatusCode::UNAUTHORIZED, "invalid token");
        if token.is_empty() {
            return Err(UNAUTHORIZED);
        }
        let now = now_ms() / 1000;
        let mut state = self.lock_state();
        if !state.tokens.contains_key(token) {
            drop(state);
            let claims = jsonwebtoken::decode::<Claims>(token, &self.jwt, &self.validation)
                .map_err(|_| UNAUTHORIZED)?
                .claims;
            state = self.lock_state();
            let token_state = Token {
                user: claims.sub.into(),
                jti: claims.jti.into(),
                iat: claims.iat,
                exp: claims.exp,
                busy: false,
            };
            state.tokens.insert(token.into(), token_state);
        }
        let State { tokens, users, .. } = &mut *state;
        let token = tokens.get_mut(token).ok_or(UNAUTHORIZED)?;
        if token.exp <= now {
            return Err((StatusCode::UNAUTHORIZED, "token expired"));
        }
        // The directory: the user active, the token newer than its last
        // password change.
        let user = users
            .entry(token.user.clone())
            .or_insert_with(|| User::new(&self.pseudonyms, &token.user));
        if user.disabled || token.iat < user.tokens_valid_after {
            return Err(UNAUTHORIZED);
        }
        if token.busy {
            return Err((StatusCode::TOO_MANY_REQUESTS, "token busy"));
        }
        token.busy = true;
        Ok((token.user.clone(), token.jti.clone()))
    }

    /// The user's quotas checked and the worst case reserved, the request
    /// registered as active; the user's pseudonym.
    fn admit(
        &self,
        user: &Arc<str>,
        number: u64,
        active: Active,
        (tokens, cost): (u64, u64),
    ) -> Result<Arc<str>, Refused> {
        let now = now_ms();
        let (day, month) = (now / 86_400_000, now / (30 * 86_400_000));
        let mut state = self.lock_state();
        let counters = state
            .users
            .get_mut(user)
            .ok_or((StatusCode::UNAUTHORIZED, "no user"))?;
        while counters.recent.front().is_some_and(|&t| t + 60_000 <= now) {
            counters.recent.pop_front();
        }
        if counters.day != day {
            (counters.day, counters.tokens_today) = (day, 0);
        }
        if counters.month != month {
            (counters.month, counters.spent_micros) = (month, 0);
        }
        if counters.recent.len() >= REQUESTS_PER_MINUTE
            || counters.tokens_today + tokens > TOKENS_PER_DAY
            || counters.in_flight >= MAX_CONCURRENT
            || counters.spent_micros + cost > BUDGET_MICROS_PER_MONTH
        {
            return Err((StatusCode::TOO_MANY_REQUESTS, "quota reached"));
        }
        counters.recent.push_back(now);
        counters.in_flight += 1;
        counters.tokens_today += tokens;
        counters.spent_micros += cost;
        let pseudonym = counters.pseudonym.clone();
        state.active.insert(number, active);
        Ok(pseudonym)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row to the journal, the ledger's queue and the access log.
    fn record(&self, row: Row) {
        use std::fmt::Write as _;
        let u = row.usage.unwrap_or_default();
        let billable = row.usage.is_some() && row.status < 300;
        let outcome = if row.usage.is_some() {
            "ok"
        } else {
            "no_usage"
        };
        // The journal line: the row's fields as a JSON array, as the
        // gateway writes it (`src/ledger/journal.rs`).
        let mut line = Vec::with_capacity(1024);
        let text = |line: &mut Vec<u8>, s: &str| {
            let _ = serde_json::to_writer(&mut *line, s);
            line.push(b',');
        };
        line.push(b'[');
        text(&mut line, &row.request_id);
        let _ = write!(line, "{},", row.ts_ms);
        text(&mut line, &row.user);
        text(&mut line, &row.token_id);
        line.extend_from_slice(b"null,");
        text(&mut line, "deepseek");
        line.extend_from_slice(b"1,");
        text(&mut line, "/v1/chat/completions");
        text(&mut line, "chat");
        text(&mut line, &row.model);
        let _ = write!(
            line,
            "null,{},{},{},null,{},{},{},{},{},null,{},{},{},{},",
            row.stream,
            row.status,
            row.status,
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_cache_hit_tokens,
            u.prompt_cache_miss_tokens,
            u.completion_tokens_details.reasoning_tokens,
            row.latency_ms,
            row.ttfb_ms,
            row.bytes_in,
            row.bytes_out,
        );
        text(&mut line, &row.client_ip);
        text(&mut line, outcome);
        let _ = writeln!(
            line,
            "{billable},{},{},false,\"CNY\"]",
            u.prompt_tokens + u.completion_tokens,
            row.cost_micros,
        );
        let _ = (&self.journal).write_all(&line);
        let mut log = String::with_capacity(512);
        rfc3339(&mut log, row.ts_ms as u64);
        let _ = writeln!(
            log,
            "  INFO access: request request_id={} method=POST path=/v1/chat/completions \
             client={} user={} key_id=- format=chat model={} upstream=deepseek attempts=1 \
             status={} upstream_status={} error=- outcome={outcome} latency_ms={:?} \
             ttfb_ms={:?} bytes_in={} bytes_out={} prompt_tokens={} completion_tokens={} \
             cached_tokens={} cache_miss_tokens={} reasoning_tokens={} cost_micros={}",
            row.request_id,
            row.client_ip,
            row.user,
            row.model,
            row.status,
            row.status,
            row.latency_ms,
            row.ttfb_ms,
            row.bytes_in,
            row.bytes_out,
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_cache_hit_tokens,
            u.prompt_cache_miss_tokens,
            u.completion_tokens_details.reasoning_tokens,
            row.cost_micros,
        );
        let _ = (&self.log).write_all(log.as_bytes());
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(row);
    }
}

impl User {
    fn new(key: &ring::hmac::Key, name: &str) -> User {
        User {
            pseudonym: pseudonym(key, name).into(),
            disabled: false,
            tokens_valid_after: 0,
            recent: VecDeque::new(),
            day: 0,
            tokens_today: 0,
            in_flight: 0,
            month: 0,
            spent_micros: 0,
        }
    }
}

/// What a finished request adds to the metrics.
struct Observed {
    status: u16,
    model: Box<str>,
    seconds: f64,
    upstream_ttfb: f64,
    usage: Option<Usage>,
    cost_micros: u64,
}

/// A token's slot and its user's admission: when dropped, under one lock,
/// the slot is free again, the user's concurrency given back, the
/// reservation settled to the real tokens and cost, the request gone from
/// the registry and its metrics counted.
struct Slot {
    job: Arc<Job>,
    token: Box<str>,
    user: Arc<str>,
    number: u64,
    /// The reservation: (tokens, cost in micro-units).
    admitted: Option<(u64, u64)>,
    /// The real (tokens, cost).
    settled: Option<(u64, u64)>,
    metrics: Option<Observed>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.job.lock_state();
        let state = &mut *state;
        if let Some(t) = state.tokens.get_mut(&*self.token) {
            t.busy = false;
        }
        if let (Some((tokens, cost)), Some(counters)) =
            (self.admitted, state.users.get_mut(&self.user))
        {
            counters.in_flight = counters.in_flight.saturating_sub(1);
            // Without a usage, the reservation stays charged.
            if let Some((real_tokens, real_cost)) = self.settled {
                counters.tokens_today = counters.tokens_today - tokens + real_tokens;
                counters.spent_micros = counters.spent_micros - cost + real_cost;
            }
            state.active.remove(&self.number);
        }
        let Some(o) = self.metrics.take() else {
            return;
        };
        let code = if o.status < 300 {
            "ok"
        } else {
            "upstream_error"
        };
        let route = state
            .routes
            .entry(("/v1/chat/completions", o.status, code))
            .or_default();
        route.requests += 1;
        observe(&mut route.duration, o.seconds);
        observe(&mut route.upstream_ttfb, o.upstream_ttfb);
        observe(&mut route.overhead, (o.seconds - o.upstream_ttfb).max(0.0));
        let Some(u) = o.usage else {
            return;
        };
        let spend = state.spend.entry((self.user.clone(), o.model)).or_default();
        spend.prompt += u.prompt_tokens;
        spend.completion += u.completion_tokens;
        spend.cached += u.prompt_cache_hit_tokens;
        spend.cache_miss += u.prompt_cache_miss_tokens;
        spend.reasoning += u.completion_tokens_details.reasoning_tokens;
        let seen = spend.cached + spend.cache_miss;
        if seen > 0 {
            spend.cache_hit_ratio = spend.cached as f64 / seen as f64;
        }
        spend.cost_micros += o.cost_micros;
    }
}

fn observe(histogram: &mut Histogram, seconds: f64) {
    histogram[BUCKETS.partition_point(|&b| b < seconds)] += 1;
}

struct End {
    slot: Slot,
    row: Row,
    start: Instant,
    upstream_ttfb: Duration,
}

/// DeepSeek's answer on its way to the client; its last two chunks kept
/// for the usage, the row recorded and the slot freed at its end.
pub struct Tapped {
    inner: Incoming,
    chunks: (Bytes, Bytes),
    end: Option<End>,
}

impl Tapped {
    fn finish(&mut self) {
        let Some(End {
            mut slot,
            mut row,
            start,
            upstream_ttfb,
        }) = self.end.take()
        else {
            return;
        };
        let (prev, last) = &self.chunks;
        row.usage = usage_in(last).or_else(|| usage_in(&[&prev[..], &last[..]].concat()));
        let elapsed = start.elapsed();
        row.latency_ms = ms(elapsed);
        slot.settled = row.usage.map(|u| {
            let cost = (u.prompt_tokens * PRICE_MICROS.0 + u.completion_tokens * PRICE_MICROS.1)
                / 1_000_000;
            row.cost_micros = cost;
            (u.prompt_tokens + u.completion_tokens, cost)
        });
        slot.metrics = Some(Observed {
            status: row.status,
            model: row.model.clone(),
            seconds: elapsed.as_secs_f64(),
            upstream_ttfb: upstream_ttfb.as_secs_f64(),
            usage: row.usage,
            cost_micros: row.cost_micros,
        });
        slot.job.record(row);
        drop(slot);
    }
}

impl Body for Tapped {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(end) = &mut this.end {
                        end.row.bytes_out += data.len() as u64;
                    }
                    this.chunks = (std::mem::take(&mut this.chunks.1), data.clone());
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The usage object after the last `"usage"` key in `bytes`.
fn usage_in(bytes: &[u8]) -> Option<Usage> {
    let at = memchr::memmem::rfind(bytes, b"\"usage\"")?;
    let rest = &bytes[at + 7..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Usage>();
    values.next()?.ok()
}

/// Rows written once a second, one transaction a batch, on a thread of
/// their own: the request path only pushes to a vector. The process exits
/// if a batch cannot be written, so that no run measures a ledger that
/// stopped writing.
fn ledger_writer(path: std::path::PathBuf, rows: Arc<Mutex<Vec<Row>>>) -> std::io::Result<()> {
    let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE usage_log (
            request_id TEXT NOT NULL, ts_ms BIGINT NOT NULL, username TEXT NOT NULL,
            token_id TEXT NOT NULL, key_id TEXT, upstream TEXT, attempts BIGINT,
            route TEXT NOT NULL, format TEXT NOT NULL, model TEXT, requested_model TEXT,
            stream BIGINT NOT NULL, status BIGINT NOT NULL, upstream_status BIGINT,
            error_code TEXT, prompt_tokens BIGINT, completion_tokens BIGINT,
            cached_tokens BIGINT, cache_miss_tokens BIGINT, reasoning_tokens BIGINT,
            completion_tokens_estimated BIGINT, latency_ms DOUBLE PRECISION NOT NULL,
            ttfb_ms DOUBLE PRECISION, bytes_in BIGINT NOT NULL, bytes_out BIGINT NOT NULL,
            client_ip TEXT NOT NULL, outcome TEXT NOT NULL, billable BIGINT NOT NULL,
            charged_tokens BIGINT, cost_micros BIGINT, cost_estimated BIGINT NOT NULL,
            currency TEXT);
         CREATE INDEX usage_log_user_ts ON usage_log (username, ts_ms);
         CREATE INDEX usage_log_ts ON usage_log (ts_ms);",
    )
    .map_err(std::io::Error::other)?;
    let write = move |conn: &mut rusqlite::Connection, batch: &[Row]| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO usage_log VALUES (?1, ?2, ?3, ?4, NULL, 'deepseek', 1, \
                 '/v1/chat/completions', 'chat', ?5, NULL, ?6, ?7, ?7, NULL, ?8, ?9, ?10, \
                 ?11, ?12, NULL, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, 0, 'CNY')",
            )?;
            for r in batch {
                let u = r.usage.unwrap_or_default();
                let ok = r.usage.is_some();
                insert.execute(rusqlite::params![
                    &*r.request_id,
                    r.ts_ms,
                    &*r.user,
                    &*r.token_id,
                    &*r.model,
                    r.stream,
                    r.status,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.prompt_cache_hit_tokens,
                    u.prompt_cache_miss_tokens,
                    u.completion_tokens_details.reasoning_tokens,
                    r.latency_ms,
                    r.ttfb_ms,
                    r.bytes_in,
                    r.bytes_out,
                    r.client_ip,
                    if ok { "ok" } else { "no_usage" },
                    ok && r.status < 300,
                    u.prompt_tokens + u.completion_tokens,
                    r.cost_micros,
                ])?;
            }
        }
        tx.commit()
    };
    std::thread::spawn(move || {
        let mut conn = conn;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let batch = std::mem::take(&mut *rows.lock().unwrap_or_else(|e| e.into_inner()));
            if let Err(e) = write(&mut conn, &batch) {
                eprintln!("bare_proxy: the ledger could not be written: {e}");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        if let Some(value) = from.get(name) {
            to.insert(name.clone(), value.clone());
        }
    }
}

fn pseudonym(key: &ring::hmac::Key, user: &str) -> String {
    let tag = ring::hmac::sign(key, user.as_bytes());
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the log's time.
fn rfc3339(out: &mut String, ms: u64) {
    use std::fmt::Write as _;
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = deepseek_proxy::access_log::civil_date(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    );
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
