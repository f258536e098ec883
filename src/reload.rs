//! Re-reading `config.toml` without a restart: SIGHUP (Unix),
//! `POST /admin/reload`, or `deepseek_proxy reload` (which asks every
//! replica through the database, so it works on Windows too).
//!
//! A reload swaps users, quotas, aliases, models, `user_id` and CORS in one
//! step: the directory snapshot and the CORS list are each replaced whole,
//! and a request in flight keeps the snapshot it started with. An invalid
//! file is refused and the old settings stay. Settings that need a restart
//! (listen address, backends, the upstream, secrets) are reported, never
//! half-applied.

use serde::Serialize;

use crate::config::Config;
use crate::state::{base, AppState};

/// The settings a reload cannot change, as comparable text (secrets as a
/// digest, never in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(&'static str, String)>);

impl Fingerprint {
    pub fn of(config: &Config) -> Self {
        use secrecy::ExposeSecret;
        let digest = |secret: &str| {
            let sum = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
            crate::users::keys::hex(&sum.as_ref()[..8])
        };
        Self(vec![
            ("server.host", config.server.host.clone()),
            ("server.port", config.server.port.to_string()),
            (
                "server.metrics_addr",
                format!("{:?}", config.server.metrics_addr),
            ),
            (
                "server.max_connections",
                config.server.max_connections.to_string(),
            ),
            (
                "state.backend",
                match config.state.backend {
                    crate::config::StateBackend::Memory => "memory".into(),
                    crate::config::StateBackend::Redis(_) => "redis".into(),
                },
            ),
            (
                "server.max_body_bytes",
                config.server.max_body_bytes.to_string(),
            ),
            (
                "server.max_header_bytes",
                config.server.max_header_bytes.to_string(),
            ),
            (
                "server.timeouts",
                format!(
                    "{:?} {:?} {:?}",
                    config.server.header_read_timeout,
                    config.server.body_read_timeout,
                    config.server.shutdown_grace
                ),
            ),
            (
                "server.trusted_proxies",
                format!("{:?}", config.server.trusted_proxies),
            ),
            (
                "server.log_format",
                format!("{:?}", config.server.log_format),
            ),
            (
                "auth.token_ttl_seconds",
                config.auth.token_ttl.as_secs().to_string(),
            ),
            (
                "auth.login_cache_seconds",
                config.auth.login_cache.as_secs().to_string(),
            ),
            (
                "auth.login_max_failures_*",
                format!("{:?}", config.auth.throttle),
            ),
            ("storage", config.storage.describe()),
            (
                "deepseek.timeouts",
                format!(
                    "{:?} {:?}",
                    config.upstream.timeout, config.upstream.max_request
                ),
            ),
            ("upstreams", format!("{:?}", fingerprint_upstreams(config))),
            ("routing", format!("{:?}", config.routing)),
            ("deepseek.base_url", config.upstream.base_url.to_string()),
            (
                "deepseek.api_key",
                digest(config.upstream.api_key.expose_secret()),
            ),
            (
                "auth.jwt_secret",
                if config.auth.jwt_secret_generated {
                    "generated".into()
                } else {
                    digest(config.auth.jwt_secret.expose_secret())
                },
            ),
        ])
    }

    /// The keys whose values differ.
    fn changed(&self, other: &Fingerprint) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// The `[[upstreams]]` without their keys (those are digested above for
/// `[deepseek]`, and an upstream key change shows as a changed digest here).
fn fingerprint_upstreams(config: &Config) -> Vec<String> {
    use secrecy::ExposeSecret;
    config
        .upstreams
        .iter()
        .map(|u| {
            let sum = ring::digest::digest(
                &ring::digest::SHA256,
                u.config.api_key.expose_secret().as_bytes(),
            );
            format!(
                "{} {} {} {} {:?} {:?} {:?} {} {}",
                u.name,
                u.config.base_url,
                u.priority,
                u.weight,
                {
                    let mut f: Vec<_> = u.formats.iter().collect();
                    f.sort();
                    f
                },
                u.models.as_ref().map(|m| {
                    let mut m: Vec<_> = m.iter().collect();
                    m.sort();
                    m
                }),
                {
                    let mut r: Vec<_> = u.rename.iter().collect();
                    r.sort();
                    r
                },
                u.max_in_flight,
                crate::users::keys::hex(&sum.as_ref()[..8]),
            )
        })
        .collect()
}

/// What a reload did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub reloaded: bool,
    pub users: usize,
    /// Changed in the file but kept as they were until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads the config file and swaps what can be swapped.
pub async fn reload(state: &AppState) -> Result<Report, String> {
    let source = state
        .config_source
        .as_ref()
        .ok_or("this gateway was started without a config file, so there is nothing to re-read")?;
    let config = source.load().map_err(|e| e.to_string())?;
    let mut needs_restart = state.started_with.changed(&Fingerprint::of(&config));
    if source.demo {
        // --demo points the upstream at its built-in fake after loading.
        needs_restart.retain(|key| !key.starts_with("deepseek.") && *key != "upstreams");
    }
    let cors = config.server.cors_allowed_origins.clone();
    // The JWT secret changes only with a restart, and the user_id
    // pseudonyms are keyed with it: keep the running one.
    let mut base = base(config);
    base.user_id_key = state.directory.snapshot().base.user_id_key.clone();
    state.directory.rebuild(Some(base)).await?;
    *state.cors.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(cors);
    let users = state.directory.snapshot().accounts.len();
    if !needs_restart.is_empty() {
        tracing::warn!(
            ?needs_restart,
            "config reloaded; these settings need a restart to change"
        );
    }
    tracing::info!(users, "config reloaded");
    Ok(Report {
        reloaded: true,
        users,
        needs_restart,
    })
}

/// Runs a reload in the background and logs its outcome (SIGHUP, and a
/// reload asked through the database).
pub fn in_background(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(error) = reload(&state).await {
            tracing::error!(%error, "config reload refused; the old settings stay");
        }
    });
}
