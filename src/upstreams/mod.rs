//! Where a request goes: the configured upstreams (DeepSeek keys, accounts,
//! or other hosts serving the same models), which of them serve a request,
//! in what order, and how each is doing.
//!
//! A request's plan lists the upstreams that serve its format and served
//! model and are healthy now: lower `priority` first, and within a
//! priority a random order weighted by `weight`. `proxy::forward` tries the
//! plan in order, failing over only before any byte reached the client
//! (see `proxy::failover`). Each upstream has its own connection pool
//! ([`crate::proxy::Upstream`]) and its own [`health::Health`].

pub mod health;
pub mod probe;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::IntGaugeVec;

use crate::config::{RoutingConfig, UpstreamEntry};
use crate::formats::Format;
use crate::limits::quota::Permit;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use health::Health;

/// Every upstream, and the routing rules.
pub struct Upstreams {
    members: Vec<Arc<Member>>,
    pub routing: RoutingConfig,
}

/// The upstreams to try, best first.
pub struct Plan {
    pub members: Vec<Arc<Member>>,
    /// None of them is healthy: try them regardless of their breakers.
    pub forced: bool,
}

/// One upstream.
pub struct Member {
    pub name: String,
    pub transport: Upstream,
    priority: u32,
    weight: u32,
    formats: HashSet<String>,
    models: Option<HashSet<String>>,
    rename: HashMap<String, String>,
    max_in_flight: u64,
    pub health: Health,
    /// Requests in flight here, per served model (`-`: none named).
    in_flight: Mutex<HashMap<String, u64>>,
    in_flight_gauge: IntGaugeVec,
}

/// The config name of a request's format.
pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Chat => "chat",
        Format::Fim => "fim",
        Format::Responses => "responses",
        Format::Anthropic => "anthropic",
        Format::Search | Format::Fetch => "tools",
    }
}

impl Upstreams {
    pub fn new(
        entries: &[UpstreamEntry],
        routing: &RoutingConfig,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let members = entries
            .iter()
            .map(|entry| {
                Ok(Arc::new(Member {
                    name: entry.name.clone(),
                    transport: Upstream::new(&entry.config)
                        .map_err(|e| format!("upstream \"{}\": {e}", entry.name))?,
                    priority: entry.priority,
                    weight: entry.weight.max(1),
                    formats: entry.formats.clone(),
                    models: entry.models.clone(),
                    rename: entry.rename.clone(),
                    max_in_flight: entry.max_in_flight,
                    health: Health::new(
                        routing.breaker_failures,
                        routing.breaker_cooldown,
                        routing.auth_failure_cooldown,
                    ),
                    in_flight: Mutex::new(HashMap::new()),
                    in_flight_gauge: metrics.upstream_in_flight.clone(),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            members,
            routing: routing.clone(),
        })
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// The upstreams to try for a request, best first: those that serve
    /// `format` and `model` and are healthy now. When none is, the unhealthy
    /// ones that serve it, marked `forced`: they are tried anyway, so the
    /// client gets a real answer rather than a guess (and one upstream alone
    /// behaves as it always did).
    pub fn plan(&self, format: Format, model: Option<&str>) -> Plan {
        let serving: Vec<&Arc<Member>> = self
            .members
            .iter()
            .filter(|m| m.serves(format, model))
            .collect();
        let healthy: Vec<&Arc<Member>> = serving
            .iter()
            .copied()
            .filter(|m| m.health.is_available())
            .collect();
        let forced = healthy.is_empty();
        let mut pool = if forced { serving } else { healthy };
        pool.sort_by_key(|m| m.priority);
        let mut plan = Vec::with_capacity(pool.len());
        for group in pool.chunk_by(|a, b| a.priority == b.priority) {
            let mut rest: Vec<&Arc<Member>> = group.to_vec();
            while !rest.is_empty() {
                let total: u64 = rest.iter().map(|m| u64::from(m.weight)).sum();
                let mut pick = random_below(total);
                let mut i = 0;
                while pick >= u64::from(rest[i].weight) {
                    pick -= u64::from(rest[i].weight);
                    i += 1;
                }
                plan.push(rest.remove(i).clone());
            }
        }
        Plan {
            members: plan,
            forced,
        }
    }
}

impl Member {
    pub fn serves(&self, format: Format, model: Option<&str>) -> bool {
        self.formats.contains(format_name(format))
            && match (&self.models, model) {
                (None, _) | (_, None) => true,
                (Some(models), Some(model)) => models.contains(model),
            }
    }

    /// The name this host knows `served` by, when it renames it.
    pub fn renamed(&self, served: &str) -> Option<&str> {
        self.rename.get(served).map(String::as_str)
    }

    /// Takes one of this upstream's places for `model`, or `None` when its
    /// `max_in_flight` is reached (the request then goes to the next one).
    pub fn take_place(self: &Arc<Self>, model: Option<&str>) -> Option<Place> {
        let model = self.place_key(model).to_owned();
        {
            let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(model.clone()).or_insert(0);
            if self.max_in_flight > 0 && *count >= self.max_in_flight {
                return None;
            }
            *count += 1;
        }
        self.in_flight_gauge
            .with_label_values(&[&self.name, &model])
            .inc();
        Some(Place {
            member: self.clone(),
            model,
            permit: None,
        })
    }

    /// Its state for `/admin/upstreams` (never its key).
    pub fn describe(&self) -> serde_json::Value {
        let mut formats: Vec<&String> = self.formats.iter().collect();
        formats.sort();
        let mut models: Option<Vec<&String>> = self.models.as_ref().map(|m| m.iter().collect());
        if let Some(models) = &mut models {
            models.sort();
        }
        serde_json::json!({
            "name": self.name,
            "base_url": self.transport.base_url(),
            "priority": self.priority,
            "weight": self.weight,
            "formats": formats,
            "models": models,
            "rename": self.rename,
            "max_in_flight": self.max_in_flight,
            "health": self.health.report(),
            "in_flight": self.in_flight(),
        })
    }

    /// What `max_in_flight` counts a request under: its model when this
    /// upstream lists its models (so the name is one of a known few), else
    /// `*`, all models together (a client-chosen name must not grow a map).
    pub fn place_key<'a>(&self, model: Option<&'a str>) -> &'a str {
        match (&self.models, model) {
            (Some(_), Some(model)) => model,
            _ => "*",
        }
    }

    /// Requests in flight per model at most (0: no cap).
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight
    }

    /// Requests in flight here now, per model.
    pub fn in_flight(&self) -> HashMap<String, u64> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A request's place at an upstream, given back when dropped (the request's
/// body owns it, like the token's slot).
pub struct Place {
    member: Arc<Member>,
    model: String,
    /// The shared count's permit, released with the place.
    permit: Option<Permit>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Place({}, {})", self.member.name, self.model)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self
            .member
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.model) {
            *count = count.saturating_sub(1);
        }
        drop(counts);
        self.member
            .in_flight_gauge
            .with_label_values(&[&self.member.name, &self.model])
            .dec();
    }
}

impl Place {
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Keeps the shared state's permit until the place is given back.
    pub fn hold(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }
}

/// A number in `0..n` from a per-thread xorshift generator (seeded once from
/// the OS): good enough to spread load, cheap enough for every request.
fn random_below(n: u64) -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // Multiply-shift maps to 0..n with negligible bias for small n.
        ((u128::from(x) * u128::from(n.max(1))) >> 64) as u64
    })
}
