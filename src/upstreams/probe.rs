//! The optional background probe (`routing.probe_interval_seconds`): a
//! `GET /models` to each upstream, so a broken one is found (and a healed
//! one brought back) before a user's request has to find out.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::proxy::Route;
use crate::state::WeakState;

/// Probes every upstream each `every` until the state is gone.
pub fn start(state: WeakState, every: Duration) {
    tokio::spawn(async move {
        let id = HeaderValue::from_static("deepseek-proxy-probe");
        loop {
            tokio::time::sleep(every).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            for member in state.upstreams.members() {
                let deadline = Instant::now() + member.transport.timeout;
                let answer = member
                    .transport
                    .send(Route::Models, &HeaderMap::new(), &id, None, deadline)
                    .await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        if member.health.probe_succeeded() {
                            share(&state, &member.name, 0).await;
                        }
                    }
                    Ok(response) => {
                        if let Some(benched) = member.health.failed(response.status().as_str()) {
                            share(&state, &member.name, benched.as_millis() as u64).await;
                        }
                    }
                    Err(e @ ApiError::UpstreamRejectedKey { .. }) => {
                        let benched = member.health.refused_key(e.code());
                        share(&state, &member.name, benched.as_millis() as u64).await;
                    }
                    Err(e) => {
                        if let Some(benched) = member.health.failed(e.code()) {
                            share(&state, &member.name, benched.as_millis() as u64).await;
                        }
                    }
                }
            }
        }
    });
}

/// Tells the other replicas (with shared state) that `name` is benched for
/// `for_ms`, or no longer (0).
async fn share(state: &crate::state::AppState, name: &str, for_ms: u64) {
    if state.store.is_shared() {
        if let Err(e) = state.store.bench_upstream(name, for_ms).await {
            tracing::warn!(error = %e, upstream = %name, "cannot share an upstream's health");
        }
    }
}

/// How often a replica reads the health other replicas shared.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// With shared state, applies other replicas' benches every [`SYNC_EVERY`]
/// until the state is gone.
pub fn sync(state: WeakState) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SYNC_EVERY).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let members = state.upstreams.members();
            let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
            match state.store.benched_upstreams(&names).await {
                Ok(benched) => {
                    for (member, ms) in members.iter().zip(benched) {
                        member.health.shared_bench(ms);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read shared upstream health"),
            }
        }
    });
}
