//! Prometheus metrics, served at `GET /metrics` on `[server] metrics_addr`
//! (a separate listener, off by default: bind it where only your monitoring
//! can reach it). Labels never carry a token or a token id: users and models
//! are the finest grain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
    /// The handles a request updates, resolved once per label set: one map
    /// lookup a request instead of a label lookup (hash, lock, map) per
    /// metric. They grow with the label sets themselves, no further.
    by_route: Mutex<HashMap<(&'static str, u16, &'static str), RouteHandles>>,
    by_user: Mutex<HashMap<Box<str>, ByModel>>,
}

/// A user's handles, by model.
type ByModel = HashMap<Box<str>, Arc<UserHandles>>;

#[derive(Clone)]
struct RouteHandles {
    requests: IntCounter,
    duration: Histogram,
    upstream_ttfb: Histogram,
    overhead: Histogram,
}

struct UserHandles {
    prompt: IntCounter,
    completion: IntCounter,
    cached: IntCounter,
    cache_miss: IntCounter,
    reasoning: IntCounter,
    cache_hit_ratio: Gauge,
    /// The cost counter and the currency it counts in (a reload may
    /// change the currency).
    cost: Mutex<Option<(&'static str, Counter)>>,
}

/// One finished request, as the access log saw it.
pub struct Observed<'a> {
    pub route: &'static str,
    pub status: u16,
    pub code: &'static str,
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
            by_route: Mutex::default(),
            by_user: Mutex::default(),
        }
    }

    fn route_handles(&self, route: &'static str, status: u16, code: &'static str) -> RouteHandles {
        let mut known = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        known
            .entry((route, status, code))
            .or_insert_with(|| {
                // Status codes as static text: no allocation per request.
                let text = axum::http::StatusCode::from_u16(status);
                let text = text.as_ref().map_or("0", |s| s.as_str());
                RouteHandles {
                    requests: self.requests.with_label_values(&[route, text, code]),
                    duration: self.duration.with_label_values(&[route]),
                    upstream_ttfb: self.upstream_ttfb.with_label_values(&[route]),
                    overhead: self.overhead.with_label_values(&[route]),
                }
            })
            .clone()
    }

    fn user_handles(&self, user: &str, model: &str) -> Arc<UserHandles> {
        let mut known = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let models = match known.get_mut(user) {
            Some(models) => models,
            None => known.entry(user.into()).or_default(),
        };
        if let Some(handles) = models.get(model) {
            return handles.clone();
        }
        let tokens = |kind: &str| self.tokens.with_label_values(&[user, model, kind]);
        let handles = Arc::new(UserHandles {
            prompt: tokens("prompt"),
            completion: tokens("completion"),
            cached: tokens("cached"),
            cache_miss: tokens("cache_miss"),
            reasoning: tokens("reasoning"),
            cache_hit_ratio: self.cache_hit_ratio.with_label_values(&[user, model]),
            cost: Mutex::new(None),
        });
        models.insert(model.into(), handles.clone());
        handles
    }

    /// Counts one finished request.
    pub fn observe(&self, o: &Observed<'_>) {
        let route = self.route_handles(o.route, o.status, o.code);
        route.requests.inc();
        route.duration.observe(o.seconds);
        if let Some(ttfb) = o.upstream_ttfb_seconds {
            route.upstream_ttfb.observe(ttfb);
        }
        if let Some(overhead) = o.overhead_seconds {
            route.overhead.observe(overhead);
        }
        if o.status == 429 {
            self.rejected.with_label_values(&[o.code]).inc();
        }
        if o.code.starts_with("upstream_") {
            self.upstream_errors.with_label_values(&[o.code]).inc();
        }
        if o.usage.is_none() && o.cost.is_none() {
            return;
        }
        let user = self.user_handles(o.user, o.model);
        if let Some(u) = o.usage {
            user.prompt.inc_by(u.prompt_tokens);
            user.completion.inc_by(u.completion_tokens);
            user.cached.inc_by(u.cached_tokens);
            user.cache_miss
                .inc_by(u.prompt_tokens.saturating_sub(u.cached_tokens));
            user.reasoning.inc_by(u.reasoning_tokens);
            let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let (hits, misses) = (user.cached.get(), user.cache_miss.get());
            if let Some(ratio) = crate::usage::pricing::hit_ratio(clamp(hits), clamp(misses)) {
                user.cache_hit_ratio.set(ratio);
            }
        }
        if let Some(cost) = o.cost {
            let currency = cost.currency.code();
            let mut counter = user.cost.lock().unwrap_or_else(|e| e.into_inner());
            let counter = match &*counter {
                Some((made_for, c)) if *made_for == currency => c.clone(),
                _ => {
                    let c = self.cost.with_label_values(&[o.user, o.model, currency]);
                    *counter = Some((currency, c.clone()));
                    c
                }
            };
            counter.inc_by(cost.micros as f64 / 1e6);
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
