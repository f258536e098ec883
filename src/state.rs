//! The state every handler shares. Cloning it is one reference-count bump.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::auth::jwt::JwtKeys;
use crate::auth::login_cache::LoginCache;
use crate::config::Config;
use crate::limits::Slots;
use crate::proxy::Upstream;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub users: HashMap<String, SecretString>,
    pub jwt: JwtKeys,
    pub token_ttl: Duration,
    pub login_cache: LoginCache,
    pub slots: Slots,
    pub upstream: Upstream,
    pub max_body_bytes: usize,
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
    pub fn new(config: Config) -> Result<Self, String> {
        let upstream = Upstream::new(&config.upstream)?;
        let auth = config.auth;
        Ok(Self(Arc::new(Inner {
            users: auth
                .users
                .into_iter()
                .map(|u| (u.username, u.password))
                .collect(),
            jwt: JwtKeys::new(&auth.jwt_secret),
            token_ttl: auth.token_ttl,
            login_cache: LoginCache::new(auth.login_cache.as_secs()),
            slots: Slots::default(),
            upstream,
            max_body_bytes: config.server.max_body_bytes,
        })))
    }
}
