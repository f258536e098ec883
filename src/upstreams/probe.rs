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
                        member.health.probe_succeeded()
                    }
                    Ok(response) => {
                        member.health.failed(response.status().as_str());
                    }
                    Err(e @ ApiError::UpstreamRejectedKey { .. }) => {
                        member.health.refused_key(e.code());
                    }
                    Err(e) => {
                        member.health.failed(e.code());
                    }
                }
            }
        }
    });
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
                        if ms > 0 {
                            member.health.bench_for(ms);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read shared upstream health"),
            }
        }
    });
}
