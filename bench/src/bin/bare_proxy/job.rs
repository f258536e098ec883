//! `BARE_JOB=DIR`: the bare proxy doing the gateway's job, with the
//! production defaults issue 15 measures, each piece the plainest way this
//! stack allows. It is the floor of "the same job" (BENCHMARKS.md): what a
//! gateway without the product's structure (axum, its layers, its error
//! dialects, its formats, its stores) would cost on this machine.
//!
//! Per request, as the gateway does it:
//! - the bearer token, an HS256 JWT signed with `BARE_JWT_SECRET` (the
//!   bench's gateways' secret, so their tokens are valid here): verified
//!   once per token and cached, its expiry checked every time;
//! - one request in flight per token (429 otherwise), free again when the
//!   response's body has ended;
//! - the body read whole, checked (a JSON object, a served model, `stream`,
//!   `max_tokens`), and `user_id` set to the user's pseudonym (an HMAC of
//!   the username, computed once per user);
//! - the quotas the bench configures: requests per minute, tokens per day,
//!   concurrent requests and budget per month, checked before and settled
//!   after, under one lock;
//! - header allow-lists both ways, the upstream key, a request id;
//! - the answer's `usage` read from its last two chunks as they pass;
//! - at the body's end: the ledger row, written to a crash journal before the
//!   end (one `write`) and to SQLite in batches once a second on a thread
//!   of its own (one transaction a batch, a cached statement, the gateway's
//!   table and indexes); the access log line (one `write`); metrics (a
//!   counter and a latency histogram of atomics).
//!
//! Left out, because the bench's requests never take those paths: logins,
//! API keys, aliases, other formats, failover, error rows in the ledger.

use std::collections::HashMap;
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

/// The bench's quotas (`bench/src/procs.rs`, `bench/lib.sh`), none reached.
const REQUESTS_PER_MINUTE: u64 = 1_000_000;
const TOKENS_PER_DAY: u64 = 1_000_000_000_000;
const MAX_CONCURRENT: u64 = 64;
const BUDGET_MICROS_PER_MONTH: u64 = 1_000_000 * 1_000_000;
/// DeepSeek's list price per million tokens, in micro-units (input, output).
const PRICE_MICROS: (u64, u64) = (270_000, 1_100_000);
const MAX_BODY: usize = 4 << 20;
/// The gateway's allow-lists (`src/proxy/headers.rs`).
const TO_UPSTREAM: [HeaderName; 5] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
];
const TO_CLIENT: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static("x-ds-trace-id"),
];
const LATENCY_BUCKETS_MS: [f64; 10] = [1., 2., 5., 10., 25., 50., 100., 250., 1000., 10000.];

pub type Answer = Response<Either<Tapped, Full<Bytes>>>;
/// A request turned away: its status and message.
type Refused = (StatusCode, &'static str);

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
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    /// Verified tokens by their text.
    tokens: HashMap<Box<str>, Token>,
    users: HashMap<Arc<str>, User>,
}

struct Token {
    user: Arc<str>,
    jti: Arc<str>,
    exp: u64,
    busy: bool,
}

struct User {
    pseudonym: Arc<str>,
    minute: u64,
    this_minute: u64,
    day: u64,
    tokens_today: u64,
    in_flight: u64,
    month: u64,
    spent_micros: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    jti: String,
}

#[derive(Default)]
struct Metrics {
    requests_2xx: AtomicU64,
    requests_other: AtomicU64,
    tokens: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
}

/// A ledger row: the gateway's `UsageRecord` for a chat completion.
struct Row {
    request_id: String,
    ts_ms: i64,
    user: Arc<str>,
    token_id: Arc<str>,
    model: String,
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
}

#[derive(serde::Deserialize)]
struct Check<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    #[serde(default)]
    stream: bool,
    #[allow(dead_code)] // checked for its type only
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
        validation.validate_aud = false;
        let rows = Arc::new(Mutex::new(Vec::new()));
        ledger_writer(dir.join("usage.db"), rows.clone())?;
        let random = u64::from(std::process::id()) << 32 ^ now_ms();
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
            metrics: Metrics::default(),
        })))
    }

    pub async fn serve(self: Arc<Self>, req: Request<Incoming>, peer: String) -> Answer {
        match self.forward(req, peer).await {
            Ok(answer) => answer,
            Err((status, message)) => {
                let counted = &self.metrics.requests_other;
                counted.fetch_add(1, Ordering::Relaxed);
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
        let (user, jti) = self.take_slot(req.headers())?;
        let mut slot = Slot {
            job: self.clone(),
            token: bearer(req.headers()).unwrap_or_default().into(),
            user: user.clone(),
            admitted: false,
            settled: None,
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
        if check.user_id.is_some() {
            return Err((StatusCode::BAD_REQUEST, "user_id is the gateway's"));
        }
        let (model, stream) = (check.model.into_owned(), check.stream);
        let pseudonym = self.admit(&user)?;
        slot.admitted = true;
        // `user_id` added as the object's last member.
        let end = body.iter().rposition(|&b| b == b'}').unwrap_or(0);
        let mut rewritten = Vec::with_capacity(body.len() + pseudonym.len() + 16);
        rewritten.extend_from_slice(&body[..end]);
        rewritten.extend_from_slice(b",\"user_id\":\"");
        rewritten.extend_from_slice(pseudonym.as_bytes());
        rewritten.extend_from_slice(b"\"}");

        let n = self.ids.1.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("{:016x}{n:016x}", self.ids.0);
        let mut up = Request::new(Full::new(Bytes::from(rewritten)));
        *up.method_mut() = hyper::Method::POST;
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        *up.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        let headers = up.headers_mut();
        copy(&parts.headers, headers, &TO_UPSTREAM);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::AUTHORIZATION, self.bearer.clone());
        let id = HeaderValue::try_from(&request_id).unwrap_or(HeaderValue::from_static("-"));
        headers.insert("x-request-id", id.clone());

        let answer = self.client.request(up).await;
        let answer =
            answer.map_err(|_| (StatusCode::BAD_GATEWAY, "DeepSeek could not be reached"))?;
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
            end: Some(End { slot, row, start }),
        };
        Ok(response.map(|()| Either::Left(tapped)))
    }

    /// The token checked and its slot taken: (user, jti).
    fn take_slot(&self, headers: &HeaderMap) -> Result<(Arc<str>, Arc<str>), Refused> {
        const UNAUTHORIZED: Refused = (StatusCode::UNAUTHORIZED, "invalid token");
        let token = bearer(headers).ok_or(UNAUTHORIZED)?;
        let now = now_ms() / 1000;
        let mut state = self.lock_state();
        if !state.tokens.contains_key(token) {
            drop(state);
            let claims = jsonwebtoken::decode::<Claims>(token, &self.jwt, &self.validation)
                .map_err(|_| UNAUTHORIZED)?
                .claims;
            state = self.lock_state();
            let user: Arc<str> = claims.sub.into();
            let token_state = Token {
                user,
                jti: claims.jti.into(),
                exp: claims.exp,
                busy: false,
            };
            state.tokens.insert(token.into(), token_state);
        }
        let Some(token) = state.tokens.get_mut(token) else {
            return Err(UNAUTHORIZED);
        };
        if token.exp <= now {
            return Err((StatusCode::UNAUTHORIZED, "token expired"));
        }
        if token.busy {
            return Err((StatusCode::TOO_MANY_REQUESTS, "token busy"));
        }
        token.busy = true;
        Ok((token.user.clone(), token.jti.clone()))
    }

    /// The user's quotas checked and counted; the user's pseudonym.
    fn admit(&self, user: &Arc<str>) -> Result<Arc<str>, Refused> {
        let now = now_ms();
        let (minute, day, month) = (now / 60_000, now / 86_400_000, now / (30 * 86_400_000));
        let mut state = self.lock_state();
        let counters = state.users.entry(user.clone()).or_insert_with(|| User {
            pseudonym: pseudonym(&self.pseudonyms, user).into(),
            minute,
            this_minute: 0,
            day,
            tokens_today: 0,
            in_flight: 0,
            month,
            spent_micros: 0,
        });
        if counters.minute != minute {
            (counters.minute, counters.this_minute) = (minute, 0);
        }
        if counters.day != day {
            (counters.day, counters.tokens_today) = (day, 0);
        }
        if counters.month != month {
            (counters.month, counters.spent_micros) = (month, 0);
        }
        if counters.this_minute >= REQUESTS_PER_MINUTE
            || counters.tokens_today >= TOKENS_PER_DAY
            || counters.in_flight >= MAX_CONCURRENT
            || counters.spent_micros >= BUDGET_MICROS_PER_MONTH
        {
            return Err((StatusCode::TOO_MANY_REQUESTS, "quota reached"));
        }
        counters.this_minute += 1;
        counters.in_flight += 1;
        Ok(counters.pseudonym.clone())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row to the journal, the ledger's queue, the access log and
    /// metrics.
    fn record(&self, row: Row) {
        use std::fmt::Write as _;
        let u = row.usage.unwrap_or_default();
        // Every text is the gateway's own or checked (the model against the
        // served list), so none needs escaping.
        let mut line = String::with_capacity(512);
        let _ = writeln!(
            line,
            r#"["{}",{},"{}","{}","chat","{}",{},{},{},{},{},{},{},{},{},{},{},"{}",{}]"#,
            row.request_id,
            row.ts_ms,
            row.user,
            row.token_id,
            row.model,
            row.stream,
            row.status,
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_cache_hit_tokens,
            u.prompt_cache_miss_tokens,
            row.latency_ms,
            row.ttfb_ms,
            row.bytes_in,
            row.bytes_out,
            row.cost_micros,
            row.client_ip,
            row.usage.is_some(),
        );
        let _ = (&self.journal).write_all(line.as_bytes());
        line.clear();
        let _ = writeln!(
            line,
            "{} INFO access: request request_id={} method=POST path=/v1/chat/completions \
             client={} user={} format=chat model={} status={} latency_ms={:?} ttfb_ms={:?} \
             bytes_in={} bytes_out={} prompt_tokens={} completion_tokens={} cached_tokens={} \
             cost_micros={}",
            row.ts_ms,
            row.request_id,
            row.client_ip,
            row.user,
            row.model,
            row.status,
            row.latency_ms,
            row.ttfb_ms,
            row.bytes_in,
            row.bytes_out,
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_cache_hit_tokens,
            row.cost_micros,
        );
        let _ = (&self.log).write_all(line.as_bytes());
        let m = &self.metrics;
        match row.status {
            200..=299 => m.requests_2xx.fetch_add(1, Ordering::Relaxed),
            _ => m.requests_other.fetch_add(1, Ordering::Relaxed),
        };
        m.tokens
            .fetch_add(u.prompt_tokens + u.completion_tokens, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_MS.partition_point(|&b| b < row.latency_ms);
        m.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(row);
    }
}

/// A token's slot and its user's admission: when dropped, under one lock,
/// the slot is free again, the user's concurrency given back and the
/// request's tokens and cost counted.
struct Slot {
    job: Arc<Job>,
    token: Box<str>,
    user: Arc<str>,
    admitted: bool,
    /// (tokens, cost in micro-units)
    settled: Option<(u64, u64)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.job.lock_state();
        if let Some(t) = state.tokens.get_mut(&*self.token) {
            t.busy = false;
        }
        let counters = state.users.get_mut(&self.user).filter(|_| self.admitted);
        if let Some(counters) = counters {
            counters.in_flight = counters.in_flight.saturating_sub(1);
            if let Some((tokens, cost)) = self.settled {
                counters.tokens_today += tokens;
                counters.spent_micros += cost;
            }
        }
    }
}

struct End {
    slot: Slot,
    row: Row,
    start: Instant,
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
        }) = self.end.take()
        else {
            return;
        };
        let (prev, last) = &self.chunks;
        row.usage = usage_in(last).or_else(|| usage_in(&[&prev[..], &last[..]].concat()));
        row.latency_ms = ms(start.elapsed());
        slot.settled = row.usage.map(|u| {
            let cost = (u.prompt_tokens * PRICE_MICROS.0 + u.completion_tokens * PRICE_MICROS.1)
                / 1_000_000;
            row.cost_micros = cost;
            (u.prompt_tokens + u.completion_tokens, cost)
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
/// their own: the request path only pushes to a vector.
fn ledger_writer(path: std::path::PathBuf, rows: Arc<Mutex<Vec<Row>>>) -> std::io::Result<()> {
    let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS usage_log (
            request_id TEXT NOT NULL, ts_ms BIGINT NOT NULL, username TEXT NOT NULL,
            token_id TEXT NOT NULL, route TEXT NOT NULL, format TEXT NOT NULL, model TEXT,
            stream BIGINT NOT NULL, status BIGINT NOT NULL, prompt_tokens BIGINT,
            completion_tokens BIGINT, cached_tokens BIGINT, cache_miss_tokens BIGINT,
            latency_ms DOUBLE PRECISION NOT NULL, ttfb_ms DOUBLE PRECISION,
            bytes_in BIGINT NOT NULL, bytes_out BIGINT NOT NULL, client_ip TEXT NOT NULL,
            billable BIGINT NOT NULL, cost_micros BIGINT);
         CREATE INDEX IF NOT EXISTS usage_log_user_ts ON usage_log (username, ts_ms);
         CREATE INDEX IF NOT EXISTS usage_log_ts ON usage_log (ts_ms);",
    )
    .map_err(std::io::Error::other)?;
    std::thread::spawn(move || -> rusqlite::Result<()> {
        let mut conn = conn;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let batch = std::mem::take(&mut *rows.lock().unwrap_or_else(|e| e.into_inner()));
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO usage_log VALUES (?1, ?2, ?3, ?4, '/v1/chat/completions', \
                     'chat', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )?;
                for r in &batch {
                    let u = r.usage.unwrap_or_default();
                    insert.execute(rusqlite::params![
                        r.request_id,
                        r.ts_ms,
                        &*r.user,
                        &*r.token_id,
                        r.model,
                        r.stream,
                        r.status,
                        u.prompt_tokens,
                        u.completion_tokens,
                        u.prompt_cache_hit_tokens,
                        u.prompt_cache_miss_tokens,
                        r.latency_ms,
                        r.ttfb_ms,
                        r.bytes_in,
                        r.bytes_out,
                        r.client_ip,
                        r.usage.is_some(),
                        r.cost_micros,
                    ])?;
                }
            }
            tx.commit()?;
        }
    });
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ")
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

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
