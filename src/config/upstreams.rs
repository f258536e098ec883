//! `[[upstreams]]` and `[routing]`: more than one key, account or host.
//!
//! ```toml
//! [[upstreams]]
//! name = "main"
//! base_url = "https://api.deepseek.com"
//! api_key_env = "DEEPSEEK_KEY_MAIN"
//! priority = 0                    # lower goes first
//! weight = 3                      # shared within a priority
//! formats = ["chat", "responses", "anthropic", "fim", "tools"]
//! models = ["deepseek-flash", "deepseek-v4-pro"]
//! rename = { "deepseek-v4-pro" = "deepseek-ai/DeepSeek-V4-Pro" }
//! max_in_flight = 500             # per model; 0 = no cap
//! ```
//!
//! Without any `[[upstreams]]`, `[deepseek]` is the one upstream, named
//! "deepseek", so the seed's config works unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::upstream::{parse_prefix_for, read_roots_for, UpstreamConfig};
use super::{invalid, ConfigError, Env};

/// The formats an upstream can serve, as named in the config.
pub const FORMAT_NAMES: [&str; 5] = ["chat", "responses", "anthropic", "fim", "tools"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: String,
    base_url: String,
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    api_key_env: String,
    #[serde(default)]
    priority: u32,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    formats: Option<Vec<String>>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    max_in_flight: u64,
    #[serde(default)]
    ca_file: String,
}

fn default_weight() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRouting {
    failover_attempts: u32,
    retry_sent_requests: bool,
    auth_failure_cooldown_seconds: u64,
    breaker_failures: u32,
    breaker_cooldown_seconds: u64,
    probe_interval_seconds: u64,
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            failover_attempts: 2,
            retry_sent_requests: false,
            auth_failure_cooldown_seconds: 300,
            breaker_failures: 5,
            breaker_cooldown_seconds: 30,
            probe_interval_seconds: 0,
        }
    }
}

/// One upstream, validated.
#[derive(Debug)]
pub struct UpstreamEntry {
    pub name: String,
    /// Its key, URL, TLS roots (and the shared timeouts).
    pub config: UpstreamConfig,
    pub priority: u32,
    pub weight: u32,
    /// Of [`FORMAT_NAMES`].
    pub formats: HashSet<String>,
    /// Served models it accepts; `None`: any.
    pub models: Option<HashSet<String>>,
    /// Served model -> the name this host knows it by.
    pub rename: HashMap<String, String>,
    /// Requests in flight per model (all models together when `models` is
    /// not set); 0: no cap. Shared across replicas with Redis.
    pub max_in_flight: u64,
}

/// `[routing]`: failover and health.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Further upstreams tried after the first fails (before any byte
    /// reached the client).
    pub failover_attempts: u32,
    /// Also retry a request that was sent but got no answer head (DeepSeek
    /// may bill it twice).
    pub retry_sent_requests: bool,
    pub auth_failure_cooldown: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Background `GET /models` per upstream; `None`: off.
    pub probe_interval: Option<Duration>,
}

impl RawRouting {
    pub(super) fn validate(self) -> Result<RoutingConfig, ConfigError> {
        if self.breaker_failures == 0 {
            return Err(invalid(
                "routing.breaker_failures",
                "must be at least 1 (e.g. 5)",
            ));
        }
        if self.breaker_cooldown_seconds == 0 {
            return Err(invalid(
                "routing.breaker_cooldown_seconds",
                "must be at least 1 (e.g. 30)",
            ));
        }
        Ok(RoutingConfig {
            failover_attempts: self.failover_attempts,
            retry_sent_requests: self.retry_sent_requests,
            auth_failure_cooldown: Duration::from_secs(self.auth_failure_cooldown_seconds),
            breaker_failures: self.breaker_failures,
            breaker_cooldown: Duration::from_secs(self.breaker_cooldown_seconds),
            probe_interval: (self.probe_interval_seconds > 0)
                .then(|| Duration::from_secs(self.probe_interval_seconds)),
        })
    }
}

/// `[deepseek]` as the one upstream, serving every format and model.
pub fn single(config: &UpstreamConfig) -> UpstreamEntry {
    UpstreamEntry {
        name: "deepseek".into(),
        config: UpstreamConfig {
            api_key: config.api_key.clone(),
            base_url: config.base_url.clone(),
            timeout: config.timeout,
            max_request: config.max_request,
            extra_roots: config.extra_roots.clone(),
            user_id: config.user_id,
        },
        priority: 0,
        weight: 1,
        formats: FORMAT_NAMES.iter().map(|f| (*f).to_owned()).collect(),
        models: None,
        rename: HashMap::new(),
        max_in_flight: 0,
    }
}

/// Validates the tables; `shared` gives the timeouts and `user_id`.
pub(super) fn validate(
    raw: Vec<RawUpstream>,
    shared: &UpstreamConfig,
    env: Env<'_>,
) -> Result<Vec<UpstreamEntry>, ConfigError> {
    let mut names = HashSet::new();
    let mut entries = Vec::with_capacity(raw.len());
    for (i, up) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("upstreams[{i}].{field}");
        let name = up.name.trim().to_owned();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                &at("name"),
                "is 1 to 64 letters, digits, '-', '_' or '.' (it labels metrics and logs)",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(&at("name"), format!("\"{name}\" is used twice")));
        }
        let key = match (up.api_key.trim(), up.api_key_env.trim()) {
            ("", "") => {
                return Err(invalid(
                    &at("api_key"),
                    "is missing: set api_key, or api_key_env to the name of an environment \
                     variable holding it",
                ))
            }
            (key, "") => key.to_owned(),
            ("", var) => env(var).ok_or_else(|| {
                invalid(
                    &at("api_key_env"),
                    format!("names {var}, which is not set (or empty)"),
                )
            })?,
            _ => {
                return Err(invalid(
                    &at("api_key"),
                    "set api_key or api_key_env, not both",
                ))
            }
        };
        if key.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(invalid(
                &at("api_key"),
                "contains spaces or control characters",
            ));
        }
        if up.weight == 0 {
            return Err(invalid(&at("weight"), "must be at least 1"));
        }
        let formats = match up.formats {
            None => FORMAT_NAMES.iter().map(|f| (*f).to_owned()).collect(),
            Some(list) => {
                if let Some(bad) = list.iter().find(|f| !FORMAT_NAMES.contains(&f.as_str())) {
                    return Err(invalid(
                        &at("formats"),
                        format!("\"{bad}\" is not a format; use {}", FORMAT_NAMES.join(", ")),
                    ));
                }
                if list.is_empty() {
                    return Err(invalid(
                        &at("formats"),
                        "is empty: the upstream would serve nothing",
                    ));
                }
                list.into_iter().collect()
            }
        };
        let mut models: Option<HashSet<String>> = up.models.map(|m| m.into_iter().collect());
        if let Some(list) = &models {
            if list.iter().any(|m| m.trim().is_empty()) {
                return Err(invalid(&at("models"), "contains an empty name"));
            }
        }
        if up
            .rename
            .iter()
            .any(|(a, b)| a.trim().is_empty() || b.trim().is_empty())
        {
            return Err(invalid(&at("rename"), "maps an empty name"));
        }
        // A renamed model is one the upstream serves.
        if let Some(list) = &mut models {
            list.extend(up.rename.keys().cloned());
        }
        entries.push(UpstreamEntry {
            name,
            config: UpstreamConfig {
                api_key: SecretString::from(key),
                // Kept as written: DeepSeek's is `https://api.deepseek.com`,
                // an OpenAI-style host's (vLLM, SGLang) ends in `/v1`.
                base_url: parse_prefix_for(&at("base_url"), &up.base_url)?,
                timeout: shared.timeout,
                max_request: shared.max_request,
                extra_roots: read_roots_for(&at("ca_file"), up.ca_file.trim())?,
                user_id: shared.user_id,
            },
            priority: up.priority,
            weight: up.weight,
            formats,
            models,
            rename: up.rename.into_iter().collect(),
            max_in_flight: up.max_in_flight,
        });
    }
    Ok(entries)
}
