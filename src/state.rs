//! The state every handler shares. Cloning it is one reference-count bump.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::active::Active;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::{Passwords, Stored};
use crate::client_ip::IpNet;
use crate::config::{Config, Models};
use crate::formats::Format;
use crate::ledger::Ledger;
use crate::limits::quota::Limits;
use crate::metrics::Metrics;
use crate::proxy::prepare::{served_name, user_id_for};
use crate::proxy::Upstream;
use crate::store::{self, Store, StoreSettings};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// A configured user, as the request path needs it.
#[derive(Debug)]
pub struct Account {
    pub username: String,
    pub password: Arc<Stored>,
    /// Models this user may request; `None` allows all.
    pub models: Option<HashSet<String>>,
    pub disabled: bool,
    pub admin: bool,
    pub limits: Limits,
    /// What DeepSeek gets as `user_id` for this user (`deepseek.user_id`).
    pub upstream_user_id: Option<String>,
}

impl Account {
    pub fn may_use(&self, model: Option<&str>) -> bool {
        match (&self.models, model) {
            (None, _) => true,
            (Some(allowed), Some(model)) => allowed.contains(model),
            (Some(_), None) => false,
        }
    }
}

pub struct Inner {
    pub accounts: HashMap<String, Arc<Account>>,
    pub passwords: Passwords,
    pub jwt: JwtKeys,
    pub token_ttl: Duration,
    /// Slots, login cache, revocations, failure counters: memory or Redis.
    pub store: Arc<dyn Store>,
    pub upstream: Upstream,
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Completion requests in flight here, for `/admin/active`.
    pub active: Active,
    /// Reserved against `tokens_per_day` for a request without `max_tokens`.
    pub default_max_tokens: u64,
    /// Model aliases (`[models.aliases]`).
    pub models: Models,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state from a validated config. Fails only if the HTTP client
    /// cannot be built (for example, no TLS roots).
    pub fn new(config: Config, ledger: Ledger) -> Result<Self, String> {
        let upstream = Upstream::new(&config.upstream)?;
        let auth = config.auth;
        let user_id_mode = config.upstream.user_id;
        let user_id_key = secrecy::ExposeSecret::expose_secret(&auth.jwt_secret)
            .as_bytes()
            .to_vec();
        let store = store::select(
            &config.state,
            StoreSettings {
                login_cache_secs: auth.login_cache.as_secs(),
                throttle: auth.throttle,
            },
        )?;
        let models = config.models;
        let aliases = &models.aliases;
        let (users, credentials): (Vec<_>, Vec<_>) = auth
            .users
            .into_iter()
            .map(|u| {
                let upstream_user_id = user_id_for(user_id_mode, &user_id_key, &u.username);
                // The list names served models; an alias or a legacy name in
                // it stands for the model it is served by.
                let allowed = u.models.map(|names| {
                    names
                        .iter()
                        .map(|name| match aliases.get(name) {
                            Some(alias) => alias.model.clone(),
                            None => served_name(Format::Chat, name).into_owned(),
                        })
                        .collect()
                });
                let account = move |password| Account {
                    upstream_user_id,
                    username: u.username,
                    password,
                    models: allowed,
                    disabled: u.disabled,
                    admin: u.admin,
                    limits: u.limits,
                };
                (account, u.credential)
            })
            .unzip();
        let (passwords, stored) = Passwords::prepare(credentials);
        let accounts = users
            .into_iter()
            .zip(stored)
            .map(|(account, password)| {
                let account = account(password);
                (account.username.clone(), Arc::new(account))
            })
            .collect();
        Ok(Self(Arc::new(Inner {
            accounts,
            passwords,
            jwt: JwtKeys::new(&auth.jwt_secret),
            token_ttl: auth.token_ttl,
            store,
            upstream,
            ledger,
            metrics: Metrics::new(),
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            trusted_proxies: config.server.trusted_proxies,
            active: Active::default(),
            default_max_tokens: config.default_max_tokens,
            models,
        })))
    }
}
