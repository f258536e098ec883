//! Configuration: parse (serde, TOML) -> validate -> freeze.
//!
//! [`RawConfig`] mirrors the file. [`RawConfig::validate`] turns it into a
//! typed [`Config`] (durations, URLs, secrets) or a [`ConfigError`] that names
//! the key and says how to fix it. Nothing binds a port before this succeeds.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use axum::http::HeaderValue;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::auth::throttle;
use crate::client_ip::IpNet;
use crate::limits::quota::Limits;
use crate::telemetry::LogFormat;

mod models;
mod pricing;
mod upstream;
mod upstreams;

pub use models::{Alias, Models, Thinking};
use upstream::RawDeepSeek;
pub use upstream::{UpstreamConfig, UserIdMode};
pub use upstreams::{RoutingConfig, UpstreamEntry, FORMAT_NAMES};

/// The sample secret from the seed README: never accepted as a real secret.
pub const SAMPLE_JWT_SECRET: &str = "your-secret-key-change-in-production";
const MIN_JWT_SECRET_BYTES: usize = 32;

/// A config problem, worded for the person who has to fix it.
#[derive(Debug)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, problem: impl fmt::Display) -> ConfigError {
    ConfigError(format!("config key `{key}`: {problem}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    deepseek: RawDeepSeek,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    models: models::RawModels,
    #[serde(default)]
    upstreams: Vec<upstreams::RawUpstream>,
    #[serde(default)]
    routing: upstreams::RawRouting,
    #[serde(default)]
    pricing: pricing::RawPricing,
}

/// `[quotas]`: every user's limits unless their `[[auth.users]]` entry
/// sets its own. `0` means no limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQuotas {
    requests_per_minute: u64,
    tokens_per_day: u64,
    max_concurrent: u64,
    default_max_tokens: u64,
    /// In the `[pricing]` currency; 0: no budget.
    budget_per_month: f64,
}

impl Default for RawQuotas {
    fn default() -> Self {
        Self {
            requests_per_minute: 0,
            tokens_per_day: 0,
            max_concurrent: 0,
            // deepseek-reasoner's default max_tokens, the largest of DeepSeek's
            // defaults: a request without max_tokens cannot use more.
            default_max_tokens: 32_768,
            budget_per_month: 0.0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    sqlite_path: String,
    url: String,
    queue_capacity: usize,
    /// "" (default): `<sqlite_path>.journal` beside a SQLite file, none for
    /// PostgreSQL; "off": none; else the path.
    journal_path: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            sqlite_path: "usage.db".into(),
            url: String::new(),
            queue_capacity: 10_000,
            journal_path: String::new(),
        }
    }
}

impl RawStorage {
    fn validate(self, env: Env<'_>) -> Result<StorageConfig, ConfigError> {
        let url = env("DEEPSEEK_PROXY_STORAGE_URL").unwrap_or(self.url);
        let backend = if url.is_empty() {
            if self.sqlite_path.trim().is_empty() {
                return Err(invalid(
                    "storage.sqlite_path",
                    "is empty; e.g. \"usage.db\"",
                ));
            }
            Storage::Sqlite(self.sqlite_path)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Storage::Postgres(SecretString::from(url))
        } else {
            return Err(invalid(
                "storage.url",
                "must be a postgres:// URL (leave it empty for SQLite at storage.sqlite_path)",
            ));
        };
        if self.queue_capacity == 0 {
            return Err(invalid(
                "storage.queue_capacity",
                "must be at least 1 (e.g. 10000)",
            ));
        }
        let journal_path = match (self.journal_path.trim(), &backend) {
            ("off", _) => None,
            ("", Storage::Sqlite(path)) if path == ":memory:" => None,
            ("", Storage::Sqlite(path)) => Some(format!("{path}.journal").into()),
            ("", Storage::Postgres(_)) => None,
            (path, _) => Some(path.into()),
        };
        Ok(StorageConfig {
            backend,
            queue_capacity: self.queue_capacity,
            journal_path,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    backend: String,
    redis_url: String,
    key_prefix: String,
    lease_ttl_seconds: u64,
    redis_timeout_ms: u64,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            backend: "memory".into(),
            redis_url: String::new(),
            key_prefix: "deepseek_proxy:".into(),
            lease_ttl_seconds: 15,
            redis_timeout_ms: 500,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    host: String,
    port: u16,
    max_body_bytes: u64,
    shutdown_grace_seconds: u64,
    max_connections: usize,
    max_header_bytes: usize,
    header_read_timeout_seconds: u64,
    body_read_timeout_seconds: u64,
    trusted_proxies: Vec<String>,
    cors_allowed_origins: Vec<String>,
    metrics_addr: String,
    log_format: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_seconds: 30,
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            trusted_proxies: Vec::new(),
            cors_allowed_origins: Vec::new(),
            metrics_addr: String::new(),
            log_format: "text".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    jwt_secret: String,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
    #[serde(default = "default_login_cache")]
    login_cache_seconds: u64,
    #[serde(default = "default_failures_per_minute")]
    login_max_failures_per_minute: u32,
    #[serde(default = "default_failures_per_hour")]
    login_max_failures_per_hour: u32,
    #[serde(default = "default_ip_failures_per_minute")]
    login_max_failures_per_ip_per_minute: u32,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default = "default_true")]
    api_keys: bool,
}

fn default_true() -> bool {
    true
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            token_ttl_seconds: default_token_ttl(),
            login_cache_seconds: default_login_cache(),
            login_max_failures_per_minute: default_failures_per_minute(),
            login_max_failures_per_hour: default_failures_per_hour(),
            login_max_failures_per_ip_per_minute: default_ip_failures_per_minute(),
            users: Vec::new(),
            api_keys: true,
        }
    }
}

fn default_failures_per_minute() -> u32 {
    5
}

fn default_failures_per_hour() -> u32 {
    100
}

fn default_ip_failures_per_minute() -> u32 {
    20
}

fn default_token_ttl() -> u64 {
    3600
}

fn default_login_cache() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    requests_per_minute: Option<u64>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
    #[serde(default)]
    max_concurrent: Option<u64>,
    #[serde(default)]
    budget_per_month: Option<f64>,
}

/// The validated, frozen configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// `[deepseek]`: the timeouts and `user_id` of every upstream, and the
    /// one upstream when there are no `[[upstreams]]`.
    pub upstream: UpstreamConfig,
    /// Where requests may go, in config order (`[deepseek]` alone, or the
    /// `[[upstreams]]` tables).
    pub upstreams: Vec<UpstreamEntry>,
    pub routing: RoutingConfig,
    pub state: StateConfig,
    pub storage: StorageConfig,
    /// Model aliases.
    pub models: Models,
    /// Reserved against `tokens_per_day` for a request without `max_tokens`.
    pub default_max_tokens: u64,
    /// `[quotas]`: the limits of users who set none of their own.
    pub quota_defaults: Limits,
    /// `[pricing]`: prices, currency and peak hours.
    pub pricing: std::sync::Arc<crate::usage::Pricing>,
    /// Things that work but should be fixed; logged once at start.
    pub warnings: Vec<String>,
    /// Where this config was read from, for a reload (`None`: built in).
    pub source: Option<ConfigSource>,
}

/// A config file, and how it is read (`--demo` supplies a stand-in key).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: std::path::PathBuf,
    pub demo: bool,
}

impl ConfigSource {
    /// Reads and validates the file again.
    pub fn load(&self) -> Result<Config, ConfigError> {
        if self.demo {
            crate::demo::config(&self.path, &process_env)
        } else {
            Config::load(&self.path, &process_env)
        }
    }
}

#[derive(Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub cors_allowed_origins: Vec<HeaderValue>,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub metrics_addr: Option<String>,
    pub log_format: LogFormat,
}

#[derive(Debug)]
pub struct AuthConfig {
    pub jwt_secret: SecretString,
    /// True when the secret was generated at start (tokens die with the process).
    pub jwt_secret_generated: bool,
    pub token_ttl: Duration,
    pub login_cache: Duration,
    pub throttle: throttle::Limits,
    pub users: Vec<User>,
    /// `auth.api_keys`: personal API keys accepted (default true).
    pub api_keys: bool,
}

#[derive(Debug)]
pub struct User {
    pub username: String,
    pub credential: Credential,
    /// Models this user may request; `None` allows all.
    pub models: Option<Vec<String>>,
    pub disabled: bool,
    /// `role = "admin"`: may call the `/admin` API and `/user/balance`.
    pub admin: bool,
    /// `[quotas]`, overridden by the user's own keys.
    pub limits: Limits,
}

/// How a user's password is checked.
#[derive(Debug)]
pub enum Credential {
    /// A plaintext password from the file (kept for the seed's config; warned about).
    Plain(SecretString),
    /// An Argon2id PHC string, as `deepseek_proxy hash-password` prints.
    Argon2(String),
}

/// Where the usage ledger lives.
#[derive(Debug)]
pub struct StorageConfig {
    pub backend: Storage,
    pub queue_capacity: usize,
    /// The ledger's crash journal (see `ledger::journal`); `None`: none.
    pub journal_path: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub enum Storage {
    /// A SQLite file (created on first start), or `:memory:`.
    Sqlite(String),
    /// A PostgreSQL URL; may carry a password, so never printed.
    Postgres(SecretString),
}

impl StorageConfig {
    /// The connection URL (contains the password for PostgreSQL: do not log).
    pub fn url(&self) -> String {
        match &self.backend {
            Storage::Sqlite(path) if path == ":memory:" => "sqlite::memory:".into(),
            Storage::Sqlite(path) => format!("sqlite://{path}?mode=rwc"),
            Storage::Postgres(url) => url.expose_secret().to_owned(),
        }
    }

    /// For messages: which database, without credentials.
    pub fn describe(&self) -> String {
        match &self.backend {
            Storage::Sqlite(path) => format!("SQLite at {path}"),
            Storage::Postgres(_) => "PostgreSQL at storage.url".into(),
        }
    }
}

/// Where shared state lives.
#[derive(Debug)]
pub struct StateConfig {
    pub backend: StateBackend,
}

#[derive(Debug)]
pub enum StateBackend {
    /// In this process (one replica).
    Memory,
    /// In Redis (several replicas).
    Redis(RedisConfig),
}

#[derive(Debug)]
pub struct RedisConfig {
    /// May carry a password: never printed.
    pub url: SecretString,
    pub key_prefix: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
}

impl RawState {
    fn validate(self, env: Env<'_>) -> Result<StateConfig, ConfigError> {
        let backend = match self.backend.as_str() {
            "memory" => StateBackend::Memory,
            "redis" => {
                let url = env("DEEPSEEK_PROXY_REDIS_URL").unwrap_or(self.redis_url);
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(invalid(
                        "state.redis_url",
                        "must be a redis:// or rediss:// URL when state.backend = \"redis\"",
                    ));
                }
                if self.lease_ttl_seconds < 3 {
                    return Err(invalid(
                        "state.lease_ttl_seconds",
                        "must be at least 3 (e.g. 15)",
                    ));
                }
                if self.redis_timeout_ms == 0 {
                    return Err(invalid(
                        "state.redis_timeout_ms",
                        "must be at least 1 (e.g. 500)",
                    ));
                }
                StateBackend::Redis(RedisConfig {
                    url: SecretString::from(url),
                    key_prefix: self.key_prefix,
                    lease_ttl: Duration::from_secs(self.lease_ttl_seconds),
                    timeout: Duration::from_millis(self.redis_timeout_ms),
                })
            }
            other => {
                return Err(invalid(
                    "state.backend",
                    format!("\"{other}\" is not a backend; use \"memory\" or \"redis\""),
                ))
            }
        };
        Ok(StateConfig { backend })
    }
}

/// Where the process environment is read. Tests pass a closure instead.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads an environment variable, treating an empty value as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError(format!(
                    "config file {} not found: copy config.toml from the repository there, \
                     pass --config PATH (or set DEEPSEEK_PROXY_CONFIG), or try --demo",
                    path.display()
                ))
            } else {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            }
        })?;
        let mut config = Self::from_toml(&text, env)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        config.source = Some(ConfigSource {
            path: path.to_owned(),
            demo: false,
        });
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        raw.validate(env)
    }
}

/// The parser's message with its line, column and key, but without the
/// excerpt of the file that toml's own `Display` adds, and with quoted values
/// blanked: that line may hold the API key, the JWT secret or a password.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let place = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let this_line = text.lines().nth(line - 1).unwrap_or("");
        let section = before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']'))
            .unwrap_or("");
        let key = this_line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && k.len() < 64)
            .map(|k| {
                let dotted = if section.is_empty() {
                    k.to_owned()
                } else {
                    format!("{section}.{k}")
                };
                format!(" (key `{dotted}`)")
            })
            .unwrap_or_default();
        format!(" at line {line}, column {column}{key}")
    });
    ConfigError(format!(
        "invalid TOML{}: {}",
        place.unwrap_or_default(),
        blank_quoted(e.message().trim_end())
    ))
}

/// Replaces what serde quotes (`...` or "...") with `…`.
fn blank_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

impl RawConfig {
    pub fn validate(self, env: Env<'_>) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let q = self.quotas;
        if q.default_max_tokens == 0 {
            return Err(invalid(
                "quotas.default_max_tokens",
                "must be at least 1 (DeepSeek's largest default is 32768)",
            ));
        }
        let defaults = Limits {
            requests_per_minute: q.requests_per_minute,
            tokens_per_day: q.tokens_per_day,
            max_concurrent: q.max_concurrent,
            budget_per_month: pricing::micros("quotas.budget_per_month", q.budget_per_month)?,
        };
        let pricing = self
            .pricing
            .validate(crate::usage::calendar::now_ms(), &mut warnings)?;
        let auth = self.auth.validate(env, defaults, &mut warnings)?;
        let many = !self.upstreams.is_empty();
        let upstream = self.deepseek.validate(env, !many)?;
        let upstreams = if many {
            upstreams::validate(self.upstreams, &upstream, env)?
        } else {
            vec![upstreams::single(&upstream)]
        };
        let state = self.state.validate(env)?;
        // Replicas must verify each other's tokens, and the shared login
        // cache hands out tokens another process signed: one fixed secret.
        if auth.jwt_secret_generated && matches!(state.backend, StateBackend::Redis(_)) {
            return Err(invalid(
                "auth.jwt_secret",
                "must be set (at least 32 random bytes, the same on every replica) when \
                 state.backend = \"redis\"; or set DEEPSEEK_PROXY_JWT_SECRET",
            ));
        }
        Ok(Config {
            server: self.server.validate()?,
            auth,
            upstreams,
            routing: self.routing.validate()?,
            upstream,
            state,
            storage: self.storage.validate(env)?,
            models: self.models.validate()?,
            default_max_tokens: q.default_max_tokens,
            quota_defaults: defaults,
            pricing: std::sync::Arc::new(pricing),
            warnings,
            source: None,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        if self.host.trim().is_empty() {
            return Err(invalid(
                "server.host",
                "is empty; use \"0.0.0.0\" or \"127.0.0.1\"",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid(
                "server.max_body_bytes",
                "must be at least 1 (e.g. 10485760)",
            ));
        }
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .map_err(|_| invalid("server.max_body_bytes", "is too large for this machine"))?;
        if self.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1 (e.g. 10000)",
            ));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(invalid(
                "server.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES} (e.g. 16384)"),
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            (
                "server.body_read_timeout_seconds",
                self.body_read_timeout_seconds,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| p.parse().map_err(|e| invalid("server.trusted_proxies", e)))
            .collect::<Result<_, _>>()?;
        let cors_allowed_origins = self
            .cors_allowed_origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<_, _>>()?;
        Ok(ServerConfig {
            host: self.host,
            port: self.port,
            max_body_bytes,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            body_read_timeout: Duration::from_secs(self.body_read_timeout_seconds),
            trusted_proxies,
            cors_allowed_origins,
            metrics_addr: Some(self.metrics_addr.trim().to_owned()).filter(|a| !a.is_empty()),
            log_format: match self.log_format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "server.log_format",
                        format!("\"{other}\" is not a format; use \"text\" or \"json\""),
                    ))
                }
            },
        })
    }
}

/// hyper's smallest read buffer; headers must fit in it.
const MIN_HEADER_BYTES: usize = 8192;

/// A CORS origin: scheme, host and optional port, nothing else.
fn parse_origin(origin: &str) -> Result<HeaderValue, ConfigError> {
    let key = "server.cors_allowed_origins";
    let url = Url::parse(origin).map_err(|_| {
        invalid(
            key,
            format!("\"{origin}\" is not an origin like https://app.example.com"),
        )
    })?;
    let canonical = url.origin().ascii_serialization();
    if origin == "*" || canonical == "null" || canonical != origin.trim_end_matches('/') {
        return Err(invalid(
            key,
            format!(
                "\"{origin}\" must be an exact origin like https://app.example.com (no path, no *)"
            ),
        ));
    }
    HeaderValue::from_str(&canonical).map_err(|_| invalid(key, "not a valid header value"))
}

impl RawUser {
    fn validate(
        self,
        key: &str,
        defaults: Limits,
        warnings: &mut Vec<String>,
    ) -> Result<User, ConfigError> {
        let credential = match (self.password, self.password_hash) {
            (Some(_), Some(_)) => {
                return Err(invalid(key, "has both password and password_hash; keep only password_hash"))
            }
            (None, None) => {
                return Err(invalid(
                    key,
                    "has no password_hash (or password); create one with `deepseek_proxy hash-password`",
                ))
            }
            (Some(password), None) => {
                if password.expose_secret().is_empty() {
                    return Err(invalid(&format!("{key}.password"), "is empty"));
                }
                warnings.push(format!(
                    "user \"{}\" has a plaintext password in the config; replace `password` with \
                     `password_hash` from `deepseek_proxy hash-password`",
                    self.username
                ));
                Credential::Plain(password)
            }
            (None, Some(hash)) => {
                crate::auth::password::check_phc(&hash)
                    .map_err(|e| invalid(&format!("{key}.password_hash"), e))?;
                Credential::Argon2(hash)
            }
        };
        if let Some(models) = &self.models {
            if models.iter().any(|m| m.trim().is_empty()) {
                return Err(invalid(
                    &format!("{key}.models"),
                    "contains an empty model name",
                ));
            }
        }
        let admin = match self.role.as_deref() {
            None | Some("user") => false,
            Some("admin") => true,
            Some(other) => {
                return Err(invalid(
                    &format!("{key}.role"),
                    format!("\"{other}\" is not a role; use \"admin\" or \"user\""),
                ))
            }
        };
        Ok(User {
            username: self.username,
            credential,
            models: self.models,
            disabled: self.disabled,
            admin,
            limits: Limits {
                requests_per_minute: self
                    .requests_per_minute
                    .unwrap_or(defaults.requests_per_minute),
                tokens_per_day: self.tokens_per_day.unwrap_or(defaults.tokens_per_day),
                max_concurrent: self.max_concurrent.unwrap_or(defaults.max_concurrent),
                budget_per_month: match self.budget_per_month {
                    Some(budget) => pricing::micros(&format!("{key}.budget_per_month"), budget)?,
                    None => defaults.budget_per_month,
                },
            },
        })
    }
}

impl RawAuth {
    fn validate(
        self,
        env: Env<'_>,
        defaults: Limits,
        warnings: &mut Vec<String>,
    ) -> Result<AuthConfig, ConfigError> {
        let from_env = env("DEEPSEEK_PROXY_JWT_SECRET");
        let secret = from_env.unwrap_or(self.jwt_secret);
        let generated = secret.is_empty() || secret == SAMPLE_JWT_SECRET;
        let secret = if generated {
            random_secret()
        } else if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(invalid(
                "auth.jwt_secret",
                format!(
                    "is {} bytes; use at least {MIN_JWT_SECRET_BYTES} random bytes \
                     (e.g. `openssl rand -hex 32`), or leave it empty for a per-process secret",
                    secret.len()
                ),
            ));
        } else {
            secret
        };
        if self.token_ttl_seconds == 0 {
            return Err(invalid(
                "auth.token_ttl_seconds",
                "must be at least 1 (e.g. 3600)",
            ));
        }
        // No users here is fine when the database has some (checked at
        // start, when the database is open).
        let mut seen = HashSet::new();
        let mut users = Vec::with_capacity(self.users.len());
        for (i, user) in self.users.into_iter().enumerate() {
            let key = format!("auth.users[{i}]");
            if user.username.trim().is_empty() {
                return Err(invalid(&format!("{key}.username"), "is empty"));
            }
            if !seen.insert(user.username.clone()) {
                return Err(invalid(
                    &format!("{key}.username"),
                    format!(
                        "\"{}\" is listed twice; usernames must be unique",
                        user.username
                    ),
                ));
            }
            users.push(user.validate(&key, defaults, warnings)?);
        }
        if self.login_max_failures_per_minute == 0
            || self.login_max_failures_per_hour == 0
            || self.login_max_failures_per_ip_per_minute == 0
        {
            return Err(invalid("auth.login_max_failures_*", "must be at least 1"));
        }
        Ok(AuthConfig {
            jwt_secret: SecretString::from(secret),
            jwt_secret_generated: generated,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            login_cache: Duration::from_secs(self.login_cache_seconds),
            throttle: throttle::Limits {
                per_user_per_minute: self.login_max_failures_per_minute,
                per_user_per_hour: self.login_max_failures_per_hour,
                per_ip_per_minute: self.login_max_failures_per_ip_per_minute,
                ..throttle::Limits::default()
            },
            users,
            api_keys: self.api_keys,
        })
    }
}

/// 256 bits from the OS generator, hex encoded.
fn random_secret() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("{}{}", a.simple(), b.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [auth]
        [[auth.users]]
        username = "admin"
        password = "admin123"
    "#;

    fn env_with_key(name: &str) -> Option<String> {
        (name == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let config = Config::from_toml(MINIMAL, &env_with_key).expect("valid");
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(config.auth.token_ttl, Duration::from_secs(3600));
        assert_eq!(config.auth.login_cache, Duration::from_secs(60));
        assert!(config.auth.jwt_secret_generated);
        assert_eq!(
            config.upstream.base_url.as_str(),
            "https://api.deepseek.com/"
        );
        assert_eq!(config.upstream.user_id, UserIdMode::Pseudonym);
        assert_eq!(
            config.models.aliases["deepseek-chat"].model,
            "deepseek-flash"
        );
        assert_eq!(config.upstream.api_key.expose_secret(), "sk-test");
    }

    #[test]
    fn a_missing_key_names_the_key_and_the_env_vars() {
        let err = Config::from_toml(MINIMAL, &no_env).unwrap_err().to_string();
        assert!(err.contains("deepseek.api_key"), "{err}");
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
    }

    #[test]
    fn deepseek_api_key_is_the_second_choice() {
        let env = |n: &str| (n == "DEEPSEEK_API_KEY").then(|| "sk-ds".to_owned());
        let config = Config::from_toml(MINIMAL, &env).expect("valid");
        assert_eq!(config.upstream.api_key.expose_secret(), "sk-ds");
    }

    #[test]
    fn bad_toml_reports_line_and_column() {
        let err = Config::from_toml("[server]\nport = \"x\n", &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let text = format!("[server]\nport = \"eighty\"\n{MINIMAL}");
        let err = Config::from_toml(&text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn a_typo_in_a_key_is_rejected_by_name() {
        let text = format!("[server]\nprot = 80\n{MINIMAL}");
        let err = Config::from_toml(&text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused_and_the_sample_is_replaced() {
        let short = format!("{MINIMAL}\n").replace("[auth]", "[auth]\njwt_secret = \"short\"");
        let err = Config::from_toml(&short, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
        let sample = MINIMAL.replace(
            "[auth]",
            &format!("[auth]\njwt_secret = \"{SAMPLE_JWT_SECRET}\""),
        );
        let config = Config::from_toml(&sample, &env_with_key).expect("valid");
        assert!(config.auth.jwt_secret_generated);
        assert_ne!(config.auth.jwt_secret.expose_secret(), SAMPLE_JWT_SECRET);
    }

    #[test]
    fn the_jwt_secret_env_var_overrides_the_file() {
        let env = |n: &str| match n {
            "OPENAI_API_KEY" => Some("sk".to_owned()),
            "DEEPSEEK_PROXY_JWT_SECRET" => Some("e".repeat(40)),
            _ => None,
        };
        let config = Config::from_toml(MINIMAL, &env).expect("valid");
        assert_eq!(config.auth.jwt_secret.expose_secret(), "e".repeat(40));
        assert!(!config.auth.jwt_secret_generated);
    }

    #[test]
    fn bad_values_name_their_keys() {
        let cases = [
            ("[deepseek]\nbase_url = \"ftp://x\"", "deepseek.base_url"),
            (
                "[deepseek]\nbase_url = \"https://u:p@x/v1\"",
                "deepseek.base_url",
            ),
            (
                "[deepseek]\ntimeout_seconds = 0",
                "deepseek.timeout_seconds",
            ),
            (
                "[deepseek]\nmax_request_seconds = 5",
                "deepseek.max_request_seconds",
            ),
            ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
        ];
        for (section, key) in cases {
            let text = format!("{section}\n{MINIMAL}");
            let err = Config::from_toml(&text, &env_with_key)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{section}: {err}");
        }
        let dup = format!("{MINIMAL}[[auth.users]]\nusername = \"admin\"\npassword = \"x\"\n");
        let err = Config::from_toml(&dup, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.users[1].username"), "{err}");
        // No users in the file is allowed: they may be in the database
        // (the gateway refuses to start when there are none anywhere).
        let none = "[auth]\njwt_secret = \"\"\n";
        assert!(Config::from_toml(none, &env_with_key).is_ok());
        // Nor is an [auth] section needed at all.
        let empty = Config::from_toml("", &env_with_key).expect("valid");
        assert!(empty.auth.users.is_empty() && empty.auth.api_keys);
    }

    #[test]
    fn secrets_do_not_print_through_debug() {
        let text = MINIMAL.replace(
            "[auth]",
            &format!("[auth]\njwt_secret = \"{}\"", "s".repeat(40)),
        );
        let config = Config::from_toml(&text, &env_with_key).expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk-test"), "{printed}");
        assert!(!printed.contains("admin123"), "{printed}");
        assert!(!printed.contains(&"s".repeat(40)), "{printed}");
    }

    #[test]
    fn the_shipped_config_toml_is_valid_and_warns_about_plaintext_passwords() {
        let text = include_str!("../../config.toml");
        let config = Config::from_toml(text, &env_with_key).expect("shipped config is valid");
        assert_eq!(config.auth.users.len(), 2);
        // The holiday list goes stale each new year; that warning is
        // tested in `config::pricing`.
        let warnings: Vec<_> = config
            .warnings
            .iter()
            .filter(|w| !w.starts_with("pricing.holidays"))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let demo = Config::from_toml(crate::demo::DEMO_CONFIG, &env_with_key).expect("demo config");
        assert_eq!(demo.auth.users.len(), 2);
    }

    #[test]
    fn users_need_exactly_one_kind_of_password_and_a_real_hash() {
        let both =
            "[auth]\n[[auth.users]]\nusername = \"a\"\npassword = \"x\"\npassword_hash = \"y\"\n";
        let err = Config::from_toml(both, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.users[0]"), "{err}");
        let none = "[auth]\n[[auth.users]]\nusername = \"a\"\n";
        let err = Config::from_toml(none, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hash-password"), "{err}");
        let bad = "[auth]\n[[auth.users]]\nusername = \"a\"\npassword_hash = \"plain\"\n";
        let err = Config::from_toml(bad, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.users[0].password_hash"), "{err}");
    }

    #[test]
    fn proxies_and_origins_are_checked() {
        let proxies = format!("[server]\ntrusted_proxies = [\"10.0.0.0/99\"]\n{MINIMAL}");
        let err = Config::from_toml(&proxies, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.trusted_proxies"), "{err}");
        for origin in ["*", "https://a.example/path", "not a url"] {
            let text = format!("[server]\ncors_allowed_origins = [\"{origin}\"]\n{MINIMAL}");
            let err = Config::from_toml(&text, &env_with_key)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("server.cors_allowed_origins"),
                "{origin}: {err}"
            );
        }
        let ok =
            format!("[server]\ncors_allowed_origins = [\"https://a.example:8443\"]\n{MINIMAL}");
        let config = Config::from_toml(&ok, &env_with_key).expect("valid");
        assert_eq!(
            config.server.cors_allowed_origins[0],
            "https://a.example:8443"
        );
    }

    #[test]
    fn a_toml_error_never_quotes_the_line_it_is_on() {
        let text = "[deepseek]\napi_key = \"sk-very-secret-123\nbase_url = 1\n";
        let err = Config::from_toml(text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-very-secret-123"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let text = "[auth]\njwt_secret = \"topsecret-but-cut\n[[auth.users]]\n";
        let err = Config::from_toml(text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        // A password of the wrong type: serde would quote the value.
        let text = "[auth]\n[[auth.users]]\nusername = \"a\"\npassword = 987654321\n";
        let err = Config::from_toml(text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("987654321"), "{err}");
        assert!(err.contains("auth.users.password"), "{err}");
    }

    #[test]
    fn redis_state_needs_a_fixed_jwt_secret() {
        let text =
            format!("[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1/\"\n{MINIMAL}");
        let err = Config::from_toml(&text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
        let env = |n: &str| match n {
            "OPENAI_API_KEY" => Some("sk".to_owned()),
            "DEEPSEEK_PROXY_JWT_SECRET" => Some("e".repeat(40)),
            _ => None,
        };
        assert!(Config::from_toml(&text, &env).is_ok());
    }

    #[test]
    fn ca_file_adds_roots_and_a_bad_one_names_the_key() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
        let text = format!("[deepseek]\nca_file = {ca:?}\n{MINIMAL}");
        let config = Config::from_toml(&text, &env_with_key).expect("valid");
        assert_eq!(config.upstream.extra_roots.len(), 1);
        let none = Config::from_toml(MINIMAL, &env_with_key).expect("valid");
        assert!(none.upstream.extra_roots.is_empty());

        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        for path in ["/nonexistent/ca.pem", not_pem] {
            let text = format!("[deepseek]\nca_file = {path:?}\n{MINIMAL}");
            let err = Config::from_toml(&text, &env_with_key)
                .unwrap_err()
                .to_string();
            assert!(err.contains("deepseek.ca_file"), "{err}");
        }
    }

    #[test]
    fn a_trailing_v1_on_base_url_is_ignored_and_other_prefixes_are_kept() {
        let base = |url: &str| {
            let text = format!("[deepseek]\nbase_url = \"{url}\"\n{MINIMAL}");
            let config = Config::from_toml(&text, &env_with_key).expect("valid");
            config.upstream.base_url.as_str().to_owned()
        };
        assert_eq!(base("http://127.0.0.1:9/v1/"), "http://127.0.0.1:9/");
        assert_eq!(
            base("https://api.deepseek.com/v1"),
            "https://api.deepseek.com/"
        );
        assert_eq!(
            base("http://gw.example/deepseek/"),
            "http://gw.example/deepseek"
        );
        assert_eq!(
            base("http://gw.example/deepseek/v1"),
            "http://gw.example/deepseek"
        );
    }

    #[test]
    fn user_id_modes_are_checked() {
        for (mode, expected) in [
            ("pseudonym", UserIdMode::Pseudonym),
            ("username", UserIdMode::Username),
            ("off", UserIdMode::Off),
        ] {
            let text = format!("[deepseek]\nuser_id = \"{mode}\"\n{MINIMAL}");
            let config = Config::from_toml(&text, &env_with_key).expect("valid");
            assert_eq!(config.upstream.user_id, expected);
        }
        let text = format!("[deepseek]\nuser_id = \"email\"\n{MINIMAL}");
        let err = Config::from_toml(&text, &env_with_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("deepseek.user_id"), "{err}");
    }
}
