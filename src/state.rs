//! The state every handler shares. Cloning it is one reference-count bump.

use std::ops::Deref;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::http::HeaderValue;

use crate::active::Active;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::Passwords;
use crate::client_ip::IpNet;
use crate::config::{Config, ConfigSource};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reload::Fingerprint;
use crate::store::{self, Store, StoreSettings};
use crate::upstreams::Upstreams;
use crate::users::directory::Base;
use crate::users::Directory;

pub use crate::users::Account;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// A handle that does not keep the state alive (for background tasks).
#[derive(Clone)]
pub struct WeakState(Weak<Inner>);

impl WeakState {
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }
}

pub struct Inner {
    /// Users and keys (config and database), as one swappable snapshot.
    pub directory: Arc<Directory>,
    pub passwords: Passwords,
    pub jwt: JwtKeys,
    pub token_ttl: Duration,
    /// Slots, login cache, revocations, failure counters: memory or Redis.
    pub store: Arc<dyn Store>,
    /// Where requests go (`[deepseek]`, or the `[[upstreams]]`).
    pub upstreams: Upstreams,
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Completion requests in flight here, for `/admin/active`.
    pub active: Active,
    /// `server.cors_allowed_origins`, swapped by a reload.
    pub cors: RwLock<Arc<Vec<HeaderValue>>>,
    /// Where the config came from, for a reload.
    pub config_source: Option<ConfigSource>,
    /// The settings a reload cannot change, as they were at start.
    pub started_with: Fingerprint,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state from a validated config: loads users and keys from
    /// the ledger's database. Fails if the HTTP client cannot be built (for
    /// example, no TLS roots), or on a user defined twice, or nobody at all.
    pub async fn new(config: Config, ledger: Ledger) -> Result<Self, String> {
        let metrics = Metrics::new();
        let upstreams = Upstreams::new(&config.upstreams, &config.routing, &metrics)?;
        let started_with = Fingerprint::of(&config);
        let store = store::select(
            &config.state,
            StoreSettings {
                login_cache_secs: config.auth.login_cache.as_secs(),
                throttle: config.auth.throttle,
            },
        )?;
        let jwt = JwtKeys::new(&config.auth.jwt_secret);
        let token_ttl = config.auth.token_ttl;
        let cors = RwLock::new(Arc::new(config.server.cors_allowed_origins.clone()));
        let max_body_bytes = config.server.max_body_bytes;
        let body_read_timeout = config.server.body_read_timeout;
        let trusted_proxies = config.server.trusted_proxies.clone();
        let config_source = config.source.clone();
        let directory = Directory::open(ledger.pool().clone(), base(config)).await?;
        Ok(Self(Arc::new(Inner {
            directory,
            passwords: Passwords::default(),
            jwt,
            token_ttl,
            store,
            upstreams,
            ledger,
            metrics,
            max_body_bytes,
            body_read_timeout,
            trusted_proxies,
            active: Active::default(),
            cors,
            config_source,
            started_with,
        })))
    }

    pub fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.0))
    }
}

/// What the directory takes from a config (at start and on every reload).
pub fn base(config: Config) -> Base {
    let user_id_key = secrecy::ExposeSecret::expose_secret(&config.auth.jwt_secret)
        .as_bytes()
        .to_vec();
    Base::new(
        config.auth.users,
        config.quota_defaults,
        config.default_max_tokens,
        config.models,
        config.upstream.user_id,
        user_id_key,
        config.auth.api_keys,
        config.pricing,
    )
}
