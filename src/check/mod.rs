//! `deepseek_proxy check`: is each upstream reachable and usable, before
//! going live or from cron / a health check?
//!
//! For each [`Target`] (today the one `[deepseek]` upstream; later every
//! `[[upstreams]]` table), in order, each timed:
//!
//! * `dns`: the host resolves;
//! * `tcp`: the first address accepts a connection;
//! * `tls` (https only): a handshake with the gateway's trust (Mozilla roots
//!   plus `ca_file`), its version and the leaf's notAfter; ❌ when it fails
//!   or the certificate expires within [`EXPIRY_WARNING_DAYS`];
//! * `key`: `GET /models` with the key;
//! * `balance`: `GET /user/balance` (a 404 means the upstream has none);
//! * one tiny request (1 output token, thinking off) per format it serves.
//!
//! When the connection itself fails (and no outbound proxy is set, which
//! could still reach the host), the HTTP checks are marked as not tried.
//!
//! The key is only ever put into a request header marked sensitive; no
//! upstream body is ever printed (DeepSeek's 401 quotes part of the key), and
//! as a last guard the key is masked in the output if it got there anyway.
//!
//! Exit codes: 0 nothing failed, 1 a check failed, 2 the config is invalid.

mod cert;
mod report;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

pub use cert::{not_after, CertTime};
pub use report::{Outcome, Report, Row, TargetReport};

use crate::config::{process_env, Config};
use crate::formats::Format;
use crate::proxy::Route;

/// A certificate that expires sooner than this fails the `tls` check.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The model of the tiny per-format requests.
pub const PROBE_MODEL: &str = "deepseek-flash";

/// Every format, in the order the rows are printed.
pub const ALL_FORMATS: [Format; 6] = [
    Format::Chat,
    Format::Fim,
    Format::Responses,
    Format::Anthropic,
    Format::Search,
    Format::Fetch,
];

/// One upstream to check.
pub struct Target {
    pub name: String,
    /// The upstream's root (DeepSeek's paths hang off it).
    pub base_url: Url,
    pub api_key: SecretString,
    /// The formats it serves: one request each.
    pub formats: Vec<Format>,
    /// Roots trusted besides the built-in ones (`ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Longest wait for an answer (and, capped at 10 s, for DNS, a
    /// connection or a handshake).
    pub timeout: Duration,
    /// The model the tiny requests name, as this host knows it: Flash
    /// unless the upstream lists other models, then its rename if any.
    pub model: String,
}

/// The upstreams in `config`: today the `[deepseek]` section, named
/// "deepseek", serving every format.
pub fn targets(config: &Config) -> Vec<Target> {
    config
        .upstreams
        .iter()
        .map(|entry| Target {
            name: entry.name.clone(),
            base_url: entry.config.base_url.clone(),
            api_key: entry.config.api_key.clone(),
            // The formats it claims ("tools" is search and fetch).
            formats: ALL_FORMATS
                .iter()
                .copied()
                .filter(|f| entry.formats.contains(crate::upstreams::format_name(*f)))
                .collect(),
            extra_roots: entry.config.extra_roots.clone(),
            timeout: entry.config.timeout,
            model: probe_model(entry),
        })
        .collect()
}

/// `deepseek_proxy [--demo] check [--json]`: prints the report and returns
/// the exit code.
pub fn command(config_path: &Path, demo: bool, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deepseek_proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let loaded = if demo {
            crate::demo::config(config_path, &process_env)
        } else {
            Config::load(config_path, &process_env)
        };
        let mut config = match loaded {
            Ok(config) => config,
            Err(e) => {
                eprintln!("deepseek_proxy: {e}");
                return ExitCode::from(2);
            }
        };
        let _fake = if demo {
            match crate::demo::start_fake(&mut config).await {
                Ok(fake) => Some(fake),
                Err(e) => {
                    eprintln!("deepseek_proxy: cannot start the demo fake: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let targets = targets(&config);
        let report = run(&targets, demo).await;
        let mut out = if json {
            let mut text = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
            text.push('\n');
            text
        } else if demo {
            "DEMO MODE: checking the built-in fake DeepSeek, not the real API.\n\n".to_owned()
                + &report.table()
        } else {
            report.table()
        };
        for target in &targets {
            out = mask(&out, target.api_key.expose_secret());
        }
        print!("{out}");
        if report.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

/// Checks every target, one after the other.
pub async fn run(targets: &[Target], demo: bool) -> Report {
    let mut report = Report {
        targets: Vec::with_capacity(targets.len()),
        demo,
    };
    for target in targets {
        report.targets.push(check(target).await);
    }
    report
}

/// Every check of one target.
pub async fn check(target: &Target) -> TargetReport {
    let mut rows = Vec::new();
    let connected = connection(target, &mut rows).await;
    if let Err(reason) = connected {
        // The same rows every time, for scripts reading the JSON.
        for name in ["tcp", "tls"] {
            if !rows.iter().any(|r| r.check == name) {
                rows.push(Row::skip(name, format!("not tried: {reason}"), None));
            }
        }
    }
    let http_rows = |reason: &str| {
        let mut names = vec!["key", "balance"];
        names.extend(target.formats.iter().map(|f| format_name(*f)));
        names
            .into_iter()
            .map(|name| Row::skip(name, format!("not tried: {reason}"), None))
            .collect::<Vec<_>>()
    };
    match (connected, http_client(target)) {
        (Err(reason), _) if !proxy_configured() => rows.extend(http_rows(reason)),
        (_, Err(e)) => {
            rows.push(Row::fail("client", e, None));
            rows.extend(http_rows("no HTTP client"));
        }
        (_, Ok(client)) => {
            let probe = Probe { target, client };
            rows.push(probe.key().await);
            rows.push(probe.balance().await);
            for format in &target.formats {
                rows.push(probe.format(*format).await);
            }
        }
    }
    TargetReport {
        name: target.name.clone(),
        base_url: target.base_url.to_string(),
        rows,
    }
}

/// The row name of a format's request.
fn format_name(format: Format) -> &'static str {
    match format {
        Format::Chat => "chat",
        Format::Fim => "fim",
        Format::Responses => "responses",
        Format::Anthropic => "anthropic",
        Format::Search => "search",
        Format::Fetch => "fetch",
    }
}

fn connect_timeout(target: &Target) -> Duration {
    target.timeout.min(Duration::from_secs(10))
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// DNS, TCP and TLS: pushes their rows; `Err` says what broke the
/// connection, so the HTTP checks need not be tried.
async fn connection(target: &Target, rows: &mut Vec<Row>) -> Result<(), &'static str> {
    let wait = connect_timeout(target);
    let url = &target.base_url;
    let host = url.host_str().unwrap_or_default();
    // IPv6 literals come bracketed in a URL.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);

    let started = Instant::now();
    let addrs = match timeout(wait, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<SocketAddr>>(),
        Ok(Err(e)) => {
            let detail = format!("cannot resolve {host}: {e}");
            rows.push(Row::fail("dns", detail, Some(ms(started))));
            return Err("DNS failed");
        }
        Err(_) => {
            let detail = format!("no answer for {host} within {}s", wait.as_secs());
            rows.push(Row::fail("dns", detail, Some(ms(started))));
            return Err("DNS failed");
        }
    };
    let Some(&first) = addrs.first() else {
        let detail = format!("{host} has no address");
        rows.push(Row::fail("dns", detail, Some(ms(started))));
        return Err("DNS failed");
    };
    let count = match addrs.len() {
        1 => "1 address".to_owned(),
        n => format!("{n} addresses"),
    };
    let detail = format!("{host}: {count}, first {}", first.ip());
    rows.push(Row::pass("dns", detail, ms(started)));

    let started = Instant::now();
    let tcp = match timeout(wait, TcpStream::connect(first)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            rows.push(Row::fail("tcp", format!("{first}: {e}"), Some(ms(started))));
            return Err("TCP failed");
        }
        Err(_) => {
            let detail = format!("{first}: no connection within {}s", wait.as_secs());
            rows.push(Row::fail("tcp", detail, Some(ms(started))));
            return Err("TCP failed");
        }
    };
    rows.push(Row::pass(
        "tcp",
        format!("connected to {first}"),
        ms(started),
    ));

    if url.scheme() != "https" {
        rows.push(Row::skip("tls", "plain http: no TLS", None));
        return Ok(());
    }
    let started = Instant::now();
    match handshake(tcp, host, &target.extra_roots, wait).await {
        Ok(done) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            rows.push(tls_row(&done, now, ms(started)));
            Ok(())
        }
        Err(e) => {
            rows.push(Row::fail("tls", e, Some(ms(started))));
            Err("TLS failed")
        }
    }
}

/// What a completed handshake showed.
struct Handshake {
    version: String,
    /// The leaf's notAfter; `None` if it could not be read.
    not_after: Option<CertTime>,
}

/// The `tls` row: ❌ when the certificate expires within
/// [`EXPIRY_WARNING_DAYS`] of `now` (Unix seconds).
fn tls_row(done: &Handshake, now: i64, ms: u64) -> Row {
    let Some(not_after) = done.not_after else {
        let detail = format!(
            "{}; the certificate's expiry date is unreadable",
            done.version
        );
        return Row::pass("tls", detail, ms);
    };
    let left = not_after.unix() - now;
    let days = left.div_euclid(86_400);
    let date = not_after.date();
    if left < 0 {
        let detail = format!("{}; the certificate expired on {date}", done.version);
        Row::fail("tls", detail, Some(ms))
    } else if left < EXPIRY_WARNING_DAYS * 86_400 {
        let detail = format!(
            "{}; the certificate expires {date}, in {days} days \
             (less than {EXPIRY_WARNING_DAYS}): renew it",
            done.version
        );
        Row::fail("tls", detail, Some(ms))
    } else {
        let detail = format!(
            "{}; certificate valid until {date} ({days} days)",
            done.version
        );
        Row::pass("tls", detail, ms)
    }
}

/// The gateway's trust for upstream TLS: the built-in Mozilla roots plus
/// `ca_file`, exactly as the connection pool builds it.
fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    crate::proxy::upstream::tls_config(extra_roots)
}

/// A TLS handshake on the connection the `tcp` check opened. It runs on a
/// blocking thread with rustls' own I/O loop, so no async TLS crate is
/// needed besides rustls itself.
async fn handshake(
    tcp: TcpStream,
    host: &str,
    extra_roots: &[CertificateDer<'static>],
    wait: Duration,
) -> Result<Handshake, String> {
    let config = Arc::new(tls_config(extra_roots)?);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
    let mut tcp = tcp
        .into_std()
        .and_then(|tcp| {
            tcp.set_nonblocking(false)?;
            tcp.set_read_timeout(Some(wait))?;
            tcp.set_write_timeout(Some(wait))?;
            Ok(tcp)
        })
        .map_err(|e| format!("TLS: {e}"))?;
    tokio::task::spawn_blocking(move || {
        let mut tls =
            rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).map_err(|e| tls_error(&e, wait))?;
        }
        let version = match tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_owned(),
        };
        let not_after = tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| not_after(leaf));
        tls.send_close_notify();
        let _ = tls.complete_io(&mut tcp);
        Ok(Handshake { version, not_after })
    })
    .await
    .map_err(|e| format!("TLS: {e}"))?
}

/// A failed handshake, worded for an operator.
fn tls_error(e: &std::io::Error, wait: Duration) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "certificate not trusted: unknown issuer (a private CA? set ca_file)".to_owned()
        }
        Some(other) => format!("handshake failed: {other}"),
        None if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) =>
        {
            format!("no handshake within {}s", wait.as_secs())
        }
        None => format!("handshake failed: {e}"),
    }
}

/// The HTTP client of the key, balance and format checks: the same trust
/// as the gateway's, no redirects, the target's timeouts.
fn http_client(target: &Target) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder();
    for root in &target.extra_roots {
        let root = reqwest::Certificate::from_der(root).map_err(|e| format!("ca_file: {e}"))?;
        builder = builder.add_root_certificate(root);
    }
    builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout(target))
        .timeout(target.timeout)
        .user_agent(concat!("deepseek_proxy-check/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Whether an outbound proxy is set (as `proxy::upstream` decides): then a
/// failed direct connection does not mean the HTTP checks would fail.
fn proxy_configured() -> bool {
    ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]
        .iter()
        .flat_map(|v| [v.to_string(), v.to_lowercase()])
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// The HTTP checks of one target.
struct Probe<'a> {
    target: &'a Target,
    client: reqwest::Client,
}

/// What came back: the status and the body (read only on success).
struct Answer {
    status: reqwest::StatusCode,
    body: Option<Value>,
}

impl Probe<'_> {
    fn url(&self, route: Route) -> Url {
        let base = &self.target.base_url;
        let mut url = base.clone();
        url.set_path(&format!(
            "{}{}",
            base.path().trim_end_matches('/'),
            route.path()
        ));
        url
    }

    /// `Authorization: Bearer <key>`, or for Anthropic `x-api-key: <key>`
    /// and `anthropic-version`; marked sensitive so they never print.
    fn auth_headers(&self, anthropic: bool) -> Result<HeaderMap, String> {
        let key = self.target.api_key.expose_secret();
        let (name, value) = if anthropic {
            (HeaderName::from_static("x-api-key"), key.to_owned())
        } else {
            (AUTHORIZATION, format!("Bearer {key}"))
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| "the key is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(name, value);
        if anthropic {
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        Ok(headers)
    }

    /// Sends a request and reads a successful answer's JSON; an error
    /// answer's body is dropped unread (DeepSeek's 401 quotes the key).
    async fn send(&self, route: Route, body: Option<Value>) -> Result<Answer, String> {
        let anthropic = route == Route::Messages;
        let request = match &body {
            Some(body) => self
                .client
                .post(self.url(route))
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string()),
            None => self.client.get(self.url(route)),
        };
        let response = request
            .headers(self.auth_headers(anthropic)?)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Ok(Answer { status, body: None });
        }
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        Ok(Answer {
            status,
            body: serde_json::from_slice(&bytes).ok(),
        })
    }

    /// `GET /models`: is the key accepted?
    async fn key(&self) -> Row {
        let started = Instant::now();
        let answer = self.send(Route::Models, None).await;
        let ms = ms(started);
        match answer {
            Ok(Answer { status, body }) if status.is_success() => {
                let models = body
                    .as_ref()
                    .and_then(|b| b.get("data"))
                    .and_then(Value::as_array)
                    .map(Vec::len);
                let detail = match models {
                    Some(1) => "key accepted; 1 model".to_owned(),
                    Some(n) => format!("key accepted; {n} models"),
                    None => "key accepted".to_owned(),
                };
                Row::pass("key", detail, ms)
            }
            Ok(Answer { status, .. }) => {
                Row::fail("key", status_detail(Route::Models, status), Some(ms))
            }
            Err(e) => Row::fail("key", e, Some(ms)),
        }
    }

    /// `GET /user/balance`: is there money on the account?
    async fn balance(&self) -> Row {
        let started = Instant::now();
        let answer = self.send(Route::Balance, None).await;
        let ms = ms(started);
        match answer {
            Ok(Answer { status, body }) if status.is_success() => balance_row(body.as_ref(), ms),
            Ok(Answer { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => Row::skip(
                "balance",
                "not offered by this upstream (HTTP 404)",
                Some(ms),
            ),
            Ok(Answer { status, .. }) => {
                Row::fail("balance", status_detail(Route::Balance, status), Some(ms))
            }
            Err(e) => Row::fail("balance", e, Some(ms)),
        }
    }

    /// One tiny request in `format`.
    async fn format(&self, format: Format) -> Row {
        let name = format_name(format);
        let (route, body) = probe_request_for(format, &self.target.model);
        let started = Instant::now();
        let answer = self.send(route, Some(body)).await;
        let ms = ms(started);
        match answer {
            Ok(Answer { status, .. }) if status.is_success() => Row::pass(
                name,
                format!("POST {} → {}", route.path(), status_text(status)),
                ms,
            ),
            Ok(Answer { status, .. }) => Row::fail(name, status_detail(route, status), Some(ms)),
            Err(e) => Row::fail(name, e, Some(ms)),
        }
    }
}

/// The served model a check asks for, renamed as the upstream names it.
fn probe_model(entry: &crate::config::UpstreamEntry) -> String {
    let served = match &entry.models {
        Some(models) if !models.contains(PROBE_MODEL) => {
            let mut models: Vec<&String> = models.iter().collect();
            models.sort();
            models
                .first()
                .map_or(PROBE_MODEL.to_owned(), |m| (*m).clone())
        }
        _ => PROBE_MODEL.to_owned(),
    };
    entry.rename.get(&served).cloned().unwrap_or(served)
}

/// The smallest request of a format: one output token, thinking off where
/// the format has thinking (FIM has none), no stream.
pub fn probe_request(format: Format) -> (Route, Value) {
    probe_request_for(format, PROBE_MODEL)
}

/// The same, naming `model`.
pub fn probe_request_for(format: Format, model: &str) -> (Route, Value) {
    let ping = json!([{"role": "user", "content": "ping"}]);
    let (route, mut body) = match format {
        Format::Chat => (
            Route::Chat,
            json!({"model": model, "messages": ping, "max_tokens": 1}),
        ),
        Format::Fim => (
            Route::BetaCompletions,
            json!({"model": model, "prompt": "def ping(", "max_tokens": 1}),
        ),
        Format::Responses => (
            Route::Responses,
            json!({"model": model, "input": "ping", "max_output_tokens": 1}),
        ),
        Format::Anthropic => (
            Route::Messages,
            json!({"model": model, "messages": ping, "max_tokens": 1}),
        ),
        Format::Search => return (Route::ToolSearch, json!({"query": "deepseek"})),
        Format::Fetch => return (Route::ToolFetch, json!({"url": "https://api.deepseek.com"})),
    };
    body["stream"] = json!(false);
    if format.has_thinking() {
        body["thinking"] = json!({"type": "disabled"});
    }
    (route, body)
}

/// The `balance` row for a 200 answer.
fn balance_row(body: Option<&Value>, ms: u64) -> Row {
    let Some(body) = body else {
        return Row::fail("balance", "HTTP 200 but not JSON", Some(ms));
    };
    let totals: Vec<String> = body
        .get("balance_infos")
        .and_then(Value::as_array)
        .map(|infos| {
            infos
                .iter()
                .filter_map(|info| {
                    let total = match info.get("total_balance")? {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    let currency = info.get("currency").and_then(Value::as_str).unwrap_or("");
                    Some(format!("{total} {currency}").trim_end().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let totals = match totals.is_empty() {
        true => String::new(),
        false => format!("; total {}", totals.join(", ")),
    };
    match body.get("is_available").and_then(Value::as_bool) {
        Some(true) => Row::pass("balance", format!("available{totals}"), ms),
        Some(false) => Row::fail(
            "balance",
            format!("no balance (is_available: false){totals}"),
            Some(ms),
        ),
        None => Row::pass(
            "balance",
            format!("answered without is_available{totals}"),
            ms,
        ),
    }
}

/// `HTTP 500 Internal Server Error`.
fn status_text(status: reqwest::StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// A failed answer, from its status alone (its body is never shown).
fn status_detail(route: Route, status: reqwest::StatusCode) -> String {
    let path = route.path();
    let verb = if matches!(route, Route::Models | Route::Balance) {
        "GET"
    } else {
        "POST"
    };
    let why = match status.as_u16() {
        401 | 403 => ": the key was refused",
        402 => ": insufficient balance",
        429 => ": rate limited or overloaded",
        300..=399 => ": a redirect (not followed)",
        _ => "",
    };
    format!("{verb} {path} → {}{why}", status_text(status))
}

/// A request that got no answer, with its causes (no URL, no key).
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (timeout)".to_owned();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    let mut text = what.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` with every occurrence of `key` masked: a last guard, since
/// nothing `check` prints is meant to hold the key.
fn mask(text: &str, key: &str) -> String {
    if key.len() < 6 {
        return text.to_owned();
    }
    text.replace(key, "[key hidden]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(days_left: i64) -> (Handshake, i64) {
        let not_after = CertTime {
            year: 2030,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        let now = not_after.unix() - days_left * 86_400 - 60;
        let done = Handshake {
            version: "TLS 1.3".into(),
            not_after: Some(not_after),
        };
        (done, now)
    }

    #[test]
    fn a_certificate_expiring_within_two_weeks_fails() {
        let (done, now) = handshake(90);
        let row = tls_row(&done, now, 5);
        assert_eq!(row.outcome, Outcome::Pass);
        assert_eq!(
            row.detail,
            "TLS 1.3; certificate valid until 2030-01-01 (90 days)"
        );
        let (done, now) = handshake(13);
        let row = tls_row(&done, now, 5);
        assert_eq!(row.outcome, Outcome::Fail);
        assert!(
            row.detail.contains("expires 2030-01-01, in 13 days"),
            "{}",
            row.detail
        );
        let (done, now) = handshake(-2);
        let row = tls_row(&done, now, 5);
        assert_eq!(row.outcome, Outcome::Fail);
        assert!(
            row.detail.contains("expired on 2030-01-01"),
            "{}",
            row.detail
        );
    }

    #[test]
    fn the_balance_row_reads_availability_and_totals() {
        let row = balance_row(
            Some(&json!({"is_available": true, "balance_infos": [
                {"currency": "CNY", "total_balance": "110.00"},
                {"currency": "USD", "total_balance": "2.50"}]})),
            1,
        );
        assert_eq!(row.outcome, Outcome::Pass);
        assert_eq!(row.detail, "available; total 110.00 CNY, 2.50 USD");
        let row = balance_row(
            Some(&json!({"is_available": false, "balance_infos": [
                {"currency": "CNY", "total_balance": "0.00"}]})),
            1,
        );
        assert_eq!(row.outcome, Outcome::Fail);
        assert_eq!(
            row.detail,
            "no balance (is_available: false); total 0.00 CNY"
        );
        assert_eq!(balance_row(None, 1).outcome, Outcome::Fail);
    }

    #[test]
    fn probe_requests_ask_for_one_token_without_thinking() {
        for format in ALL_FORMATS {
            let (route, body) = probe_request(format);
            assert_eq!(route.format(), format, "{format:?}");
            match format {
                Format::Search => assert_eq!(body, json!({"query": "deepseek"})),
                Format::Fetch => assert_eq!(body, json!({"url": "https://api.deepseek.com"})),
                _ => {
                    assert_eq!(body["model"], PROBE_MODEL);
                    assert_eq!(body["stream"], false);
                    let cap = body.get("max_tokens").or(body.get("max_output_tokens"));
                    assert_eq!(cap, Some(&json!(1)), "{format:?}");
                    let thinking = body.get("thinking");
                    match format.has_thinking() {
                        true => assert_eq!(thinking, Some(&json!({"type": "disabled"}))),
                        false => assert_eq!(thinking, None),
                    }
                }
            }
        }
    }

    #[test]
    fn failures_are_worded_from_the_status_alone() {
        let detail = status_detail(Route::Models, reqwest::StatusCode::UNAUTHORIZED);
        assert_eq!(
            detail,
            "GET /models → HTTP 401 Unauthorized: the key was refused"
        );
        let detail = status_detail(Route::Chat, reqwest::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            detail,
            "POST /chat/completions → HTTP 500 Internal Server Error"
        );
    }

    #[test]
    fn the_key_is_masked_as_a_last_guard() {
        assert_eq!(mask("a sk-123456 b", "sk-123456"), "a [key hidden] b");
    }
}
