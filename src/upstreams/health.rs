//! One upstream's health: a circuit breaker, and a cooldown after DeepSeek
//! refused its key or balance.
//!
//! Closed: requests flow; `breaker_failures` failures in a row open it.
//! Open: the upstream is skipped until `breaker_cooldown` has passed.
//! Half-open: one request (a probe) is let through; success closes the
//! breaker, failure opens it again. A 401/402/403 also benches the upstream
//! for `auth_failure_cooldown`: its key or balance is the problem, and
//! retrying it every request would only add latency.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: State,
    failures: u32,
    /// Open until then (breaker), or benched until then (auth).
    open_until: Option<Instant>,
    benched_until: Option<Instant>,
    /// A half-open probe is in flight.
    probing: bool,
    /// The bench came from another replica (and ends when theirs does).
    remote: bool,
    last_error: Option<String>,
}

#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
    failures_to_open: u32,
    cooldown: Duration,
    auth_cooldown: Duration,
}

/// What a caller may do with this upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    No,
}

/// A snapshot for `/admin/upstreams` and the metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub state: State,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub benched_for_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(failures_to_open: u32, cooldown: Duration, auth_cooldown: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                failures: 0,
                open_until: None,
                benched_until: None,
                probing: false,
                remote: false,
                last_error: None,
            }),
            failures_to_open: failures_to_open.max(1),
            cooldown,
            auth_cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go to this upstream now; a half-open breaker
    /// lets exactly one through.
    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let mut h = self.lock();
        if h.benched_until.is_some_and(|t| now < t) {
            return Admit::No;
        }
        match h.state {
            State::Closed => Admit::Yes,
            State::Open if h.open_until.is_some_and(|t| now < t) => Admit::No,
            State::Open | State::HalfOpen => {
                h.state = State::HalfOpen;
                if h.probing {
                    Admit::No
                } else {
                    h.probing = true;
                    Admit::Probe
                }
            }
        }
    }

    /// Whether the upstream would be tried now (without taking the probe).
    pub fn is_available(&self) -> bool {
        let now = Instant::now();
        let h = self.lock();
        if h.benched_until.is_some_and(|t| now < t) {
            return false;
        }
        match h.state {
            State::Closed => true,
            State::Open => h.open_until.is_none_or(|t| now >= t),
            State::HalfOpen => !h.probing,
        }
    }

    /// An answer came (any status the request itself caused): the upstream
    /// works, and so does its key.
    /// True when that lifted a bench or closed the breaker (other replicas
    /// are then told).
    pub fn succeeded(&self) -> bool {
        let now = Instant::now();
        let mut h = self.lock();
        let lifted = h.benched_until.is_some_and(|t| now < t) || h.state != State::Closed;
        h.benched_until = None;
        h.remote = false;
        h.state = State::Closed;
        h.failures = 0;
        h.open_until = None;
        h.probing = false;
        lifted
    }

    /// The background probe (`GET /models`) succeeded: the key works, so a
    /// key bench is lifted; an open breaker closes only once its cooldown
    /// is over (the model list can answer while completions fail).
    pub fn probe_succeeded(&self) -> bool {
        let now = Instant::now();
        let mut h = self.lock();
        let mut lifted = h.benched_until.is_some_and(|t| now < t);
        h.benched_until = None;
        h.remote = false;
        let cooled = h.open_until.is_none_or(|t| t <= now);
        if h.state != State::Open || cooled {
            lifted |= h.state != State::Closed;
            h.state = State::Closed;
            h.failures = 0;
            h.open_until = None;
        }
        lifted
    }

    /// A failure that says nothing about the key (connect, 5xx, 429).
    /// Returns the cooldown when this failure opened the breaker.
    pub fn failed(&self, error: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut h = self.lock();
        h.last_error = Some(error.chars().take(200).collect());
        h.failures = h.failures.saturating_add(1);
        h.probing = false;
        if h.state == State::HalfOpen || h.failures >= self.failures_to_open {
            let opened = h.state != State::Open;
            h.state = State::Open;
            h.open_until = Some(now + self.cooldown);
            return opened.then_some(self.cooldown);
        }
        None
    }

    /// DeepSeek refused the key or the balance (401/402/403). Returns how
    /// long the upstream is benched.
    pub fn refused_key(&self, error: &str) -> Duration {
        let now = Instant::now();
        let mut h = self.lock();
        h.last_error = Some(error.chars().take(200).collect());
        h.benched_until = Some(now + self.auth_cooldown);
        h.remote = false;
        h.probing = false;
        self.auth_cooldown
    }

    /// What the replicas' shared state says: benched for `for_ms` more
    /// (another replica's breaker opened or its key was refused), or not
    /// at all (0: a bench that came from there is lifted).
    pub fn shared_bench(&self, for_ms: u64) {
        let mut h = self.lock();
        if for_ms == 0 {
            if h.remote {
                h.benched_until = None;
                h.remote = false;
            }
            return;
        }
        let until = Instant::now() + Duration::from_millis(for_ms);
        if h.benched_until.is_none_or(|t| t < until) {
            h.benched_until = Some(until);
            h.remote = true;
            h.last_error
                .get_or_insert_with(|| "benched by another replica".into());
        }
    }

    /// A probe or request that ended without saying anything either way
    /// (the client left): lets the next probe through.
    pub fn abandoned(&self) {
        self.lock().probing = false;
    }

    pub fn report(&self) -> Report {
        let now = Instant::now();
        let h = self.lock();
        let benched = h.benched_until.filter(|t| now < *t);
        Report {
            state: h.state,
            healthy: benched.is_none() && h.state == State::Closed,
            consecutive_failures: h.failures,
            benched_for_ms: benched.map(|t| (t - now).as_millis() as u64),
            last_error: h.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(3, Duration::from_secs(30), Duration::from_secs(300))
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_half_opens_and_closes_on_a_paused_clock() {
        let h = health();
        for _ in 0..2 {
            h.failed("502");
            assert_eq!(h.admit(), Admit::Yes, "closed below the threshold");
        }
        h.failed("502");
        assert_eq!(h.admit(), Admit::No, "open after 3 failures in a row");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(h.admit(), Admit::No, "still cooling down");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.admit(), Admit::Probe, "half-open: one probe");
        assert_eq!(h.admit(), Admit::No, "only one probe at a time");
        h.failed("502");
        assert_eq!(h.admit(), Admit::No, "a failed probe opens it again");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(h.admit(), Admit::Probe);
        h.succeeded();
        assert_eq!(h.admit(), Admit::Yes, "a good probe closes it");
        assert!(h.report().healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_key_benches_the_upstream_for_the_cooldown() {
        let h = health();
        h.refused_key("401");
        assert_eq!(h.admit(), Admit::No);
        assert!(!h.report().healthy);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(h.admit(), Admit::Yes);
    }

    #[test]
    fn a_success_resets_the_count() {
        let h = health();
        h.failed("x");
        h.failed("x");
        h.succeeded();
        h.failed("x");
        assert_eq!(h.admit(), Admit::Yes);
    }
}
