//! Prometheus metrics, served at `GET /metrics` on `[server] metrics_addr`
//! (a separate listener, off by default: bind it where only your monitoring
//! can reach it). Labels never carry a token or a token id: users and models
//! are the finest grain.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::usage::{Cost, Usage};

/// Latency buckets in seconds: 1 ms to 10 minutes (streams run long).
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Overhead buckets in seconds: 10 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_ttfb: HistogramVec,
    overhead: HistogramVec,
    rejected: IntCounterVec,
    upstream_errors: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    cache_hit_ratio: GaugeVec,
    in_flight: IntGauge,
    ledger_queue: IntGauge,
    ledger_dropped: IntGauge,
    /// Answers (and failures, status 0) per upstream.
    pub upstream_requests: IntCounterVec,
    upstream_healthy: IntGaugeVec,
    /// Requests in flight per upstream and model (see `upstreams::Place`).
    pub upstream_in_flight: IntGaugeVec,
}

/// One finished request, as the access log saw it.
pub struct Observed<'a> {
    pub route: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub seconds: f64,
    pub upstream_ttfb_seconds: Option<f64>,
    /// The gateway's own time on an upstream-bound request (see
    /// `access_log`); `None` for requests that did not reach DeepSeek.
    pub overhead_seconds: Option<f64>,
    pub user: &'a str,
    pub model: &'a str,
    pub usage: Option<&'a Usage>,
    pub cost: Option<Cost>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("deepseek_proxy".into()), None).unwrap_or_default();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, &["route"]).expect("valid metric");
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        Self {
            requests: counter(
                "requests_total",
                "Requests by route, status and error code.",
                &["route", "status", "code"],
            ),
            duration: histogram(
                "request_duration_seconds",
                "Time from request to the end of the response body.",
                BUCKETS,
            ),
            upstream_ttfb: histogram(
                "upstream_ttfb_seconds",
                "Time from sending upstream to DeepSeek's response head.",
                BUCKETS,
            ),
            overhead: histogram(
                "gateway_overhead_seconds",
                "The gateway's own time on a proxied request: from arrival to sending \
                 upstream (less the wait for the client's body), plus from DeepSeek's \
                 response head to ours.",
                OVERHEAD_BUCKETS,
            ),
            rejected: counter(
                "rejected_total",
                "429 answers by reason (token_busy, user_busy, quota_exceeded, login_throttled, \
                 upstream_rate_limited).",
                &["reason"],
            ),
            upstream_errors: counter(
                "upstream_errors_total",
                "Upstream failures by kind (the error code).",
                &["kind"],
            ),
            tokens: counter(
                "tokens_total",
                "Tokens DeepSeek reported, by user, model and kind.",
                &["user", "model", "kind"],
            ),
            cost: {
                let opts = Opts::new(
                    "cost_total",
                    "What requests cost, in units of the [pricing] currency (estimates included), \
                     by user and model.",
                );
                let c =
                    CounterVec::new(opts, &["user", "model", "currency"]).expect("valid metric");
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            cache_hit_ratio: {
                let opts = Opts::new(
                    "cache_hit_ratio",
                    "Input tokens served from DeepSeek's cache / all input tokens, by user and \
                     model, since start (a fall multiplies spend: a cache hit costs ~1/50 of a miss).",
                );
                let g = GaugeVec::new(opts, &["user", "model"]).expect("valid metric");
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            in_flight: gauge(
                "in_flight_requests",
                "Completion requests holding a slot now.",
            ),
            ledger_queue: gauge("ledger_queue_depth", "Usage rows waiting to be written."),
            ledger_dropped: gauge(
                "ledger_dropped_rows",
                "Usage rows dropped because the queue was full (since start).",
            ),
            upstream_requests: counter(
                "upstream_requests_total",
                "Attempts per upstream by the status it answered (0: no answer).",
                &["upstream", "status"],
            ),
            upstream_healthy: gauges(
                "upstream_healthy",
                "1 when the upstream's breaker is closed and it is not benched.",
                &["upstream"],
            ),
            upstream_in_flight: gauges(
                "upstream_in_flight",
                "Requests in flight per upstream and served model.",
                &["upstream", "model"],
            ),
            registry,
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, o: &Observed<'_>) {
        // Status codes as static text: no allocation per request.
        let status = axum::http::StatusCode::from_u16(o.status);
        let status = status.as_ref().map_or("0", |s| s.as_str());
        self.requests
            .with_label_values(&[o.route, status, o.code])
            .inc();
        self.duration
            .with_label_values(&[o.route])
            .observe(o.seconds);
        if let Some(ttfb) = o.upstream_ttfb_seconds {
            self.upstream_ttfb
                .with_label_values(&[o.route])
                .observe(ttfb);
        }
        if let Some(overhead) = o.overhead_seconds {
            self.overhead
                .with_label_values(&[o.route])
                .observe(overhead);
        }
        if o.status == 429 {
            self.rejected.with_label_values(&[o.code]).inc();
        }
        if o.code.starts_with("upstream_") {
            self.upstream_errors.with_label_values(&[o.code]).inc();
        }
        if let Some(u) = o.usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("cached", u.cached_tokens),
                (
                    "cache_miss",
                    u.prompt_tokens.saturating_sub(u.cached_tokens),
                ),
                ("reasoning", u.reasoning_tokens),
            ] {
                self.tokens
                    .with_label_values(&[o.user, o.model, kind])
                    .inc_by(n);
            }
            let hits = self
                .tokens
                .with_label_values(&[o.user, o.model, "cached"])
                .get();
            let misses = self
                .tokens
                .with_label_values(&[o.user, o.model, "cache_miss"])
                .get();
            let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            if let Some(ratio) = crate::usage::pricing::hit_ratio(clamp(hits), clamp(misses)) {
                self.cache_hit_ratio
                    .with_label_values(&[o.user, o.model])
                    .set(ratio);
            }
        }
        if let Some(cost) = o.cost {
            self.cost
                .with_label_values(&[o.user, o.model, cost.currency.code()])
                .inc_by(cost.micros as f64 / 1e6);
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(
        &self,
        in_flight: usize,
        ledger_queue: usize,
        ledger_dropped: u64,
        upstreams_healthy: &[(&str, bool)],
    ) -> String {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (name, healthy) in upstreams_healthy {
            self.upstream_healthy
                .with_label_values(&[name])
                .set(i64::from(*healthy));
        }
        self.in_flight.set(clamp(in_flight as u64));
        self.ledger_queue.set(clamp(ledger_queue as u64));
        self.ledger_dropped.set(clamp(ledger_dropped));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
