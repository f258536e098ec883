//! Trying the upstreams of a request's plan, one after another, until one
//! answers.
//!
//! Only before any byte reached the client, and only for failures that say
//! nothing about the request itself:
//! * the connection or TLS failed (nothing was sent);
//! * 429, 500, 502, 503 or 529;
//! * 401, 402 or 403, which also benches that upstream for
//!   `routing.auth_failure_cooldown_seconds`: its key or balance is at fault;
//! * no answer head after the request was sent, only with
//!   `routing.retry_sent_requests = true`: DeepSeek may have started on it,
//!   and would bill it twice.
//!
//! A request's own 400/404/413/422 passes through: another host would refuse
//! it too. When every try failed, the client gets the last error, mapped
//! as for one upstream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Response;
use tokio::time::Instant;

use super::upstream::{Route, UpstreamBody};
use super::Context;
use crate::error::ApiError;
use crate::formats::json::{top_level, Edits, Object};
use crate::limits::quota::{Admission, Ask, Limits};
use crate::upstreams::health::Admit;
use crate::upstreams::{Member, Place};

/// An answer head, and what its relay needs.
pub struct Sent {
    pub response: Response<UpstreamBody>,
    pub place: Place,
    pub deadline: Instant,
    pub idle_timeout: Duration,
}

/// Marks a half-open probe abandoned if the request is dropped mid-try.
struct Probing<'a>(Option<&'a Member>);

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.0.take() {
            member.health.abandoned();
        }
    }
}

pub async fn send(
    route: Route,
    cx: &Context,
    body: Option<Bytes>,
    served: Option<&str>,
    started: Instant,
) -> Result<Sent, ApiError> {
    let upstreams = &cx.state.upstreams;
    let plan = upstreams.plan(route.format(), served);
    let Some(first) = plan.members.first() else {
        return Err(ApiError::bad_request(
            "not_served",
            format!(
                "no upstream of this gateway serves {} requests for model {}",
                crate::upstreams::format_name(route.format()),
                served.unwrap_or("(none)")
            ),
        ));
    };
    let deadline = started + first.transport.max_request;
    let tries = 1 + upstreams.routing.failover_attempts as usize;
    let mut attempts = 0;
    let mut last = None;
    for member in &plan.members {
        if attempts == tries || Instant::now() >= deadline {
            break;
        }
        let admit = member.health.admit();
        if admit == Admit::No && !plan.forced {
            continue;
        }
        // Taken before anything else can skip this upstream: dropping it
        // (any `continue` below, or the client leaving) frees the probe.
        let mut probing = Probing((admit == Admit::Probe).then_some(member.as_ref()));
        // Full (its max_in_flight for this model): the next one, no try spent.
        let Some(mut place) = member.take_place(served) else {
            continue;
        };
        if member.max_in_flight() > 0 {
            // Counted in the shared state too, so the cap holds across
            // replicas (one round trip with Redis).
            let ask = Ask {
                user: &format!("\u{1}upstream:{}:{}", member.name, member.place_key(served)),
                limits: Limits {
                    max_concurrent: member.max_in_flight(),
                    ..Limits::default()
                },
                reserve: 0,
                key: None,
                reserve_micros: 0,
                currency: "",
                now_ms: super::unix_ms(),
            };
            match cx.state.store.admit(ask).await? {
                Admission::Granted(permit) => place.hold(permit),
                Admission::Refused(_) => continue,
            }
        }
        attempts += 1;
        cx.log.set_served_by(&member.name, attempts as u32);
        let body = body.as_ref().map(|b| renamed(member, served, b));
        let answer = member
            .transport
            .send(route, &cx.headers, &cx.request_id.0, body, deadline)
            .await;
        probing.0 = None;
        let metrics = &cx.state.metrics.upstream_requests;
        match answer {
            Ok(response) => {
                let status = response.status();
                metrics
                    .with_label_values(&[&member.name, status.as_str()])
                    .inc();
                if member.health.succeeded() {
                    tell_other_replicas(cx, member, Duration::ZERO);
                }
                return Ok(Sent {
                    response,
                    place,
                    deadline,
                    idle_timeout: member.transport.timeout,
                });
            }
            Err(e) => {
                let status = e.upstream_status().unwrap_or(0).to_string();
                metrics.with_label_values(&[&member.name, &status]).inc();
                let (again, benched) = match &e {
                    ApiError::UpstreamRejectedKey { .. } => {
                        (true, Some(member.health.refused_key(e.code())))
                    }
                    _ => (
                        worth_another(&e, upstreams.routing.retry_sent_requests),
                        member.health.failed(e.code()),
                    ),
                };
                if let Some(benched) = benched {
                    tell_other_replicas(cx, member, benched);
                }
                tracing::warn!(upstream = %member.name, error = e.code(), again, "upstream attempt failed");
                last = Some(e);
                if !again {
                    break;
                }
            }
        }
    }
    // Every upstream that serves it is at its max_in_flight: like DeepSeek
    // past an account's concurrency, a 429 worth retrying shortly.
    Err(last.unwrap_or(ApiError::UpstreamRateLimited { retry_after: None }))
}

/// With shared state (Redis), every replica stops using an upstream that
/// one of them found broken (see `upstreams::sync`). Off the request path.
fn tell_other_replicas(cx: &Context, member: &Member, benched: Duration) {
    let store = cx.state.store.clone();
    if !store.is_shared() {
        return;
    }
    let name = member.name.clone();
    tokio::spawn(async move {
        if let Err(e) = store
            .bench_upstream(&name, benched.as_millis() as u64)
            .await
        {
            tracing::warn!(error = %e, upstream = %name, "cannot share an upstream's health");
        }
    });
}

/// Whether a failed try may go to the next upstream.
fn worth_another(e: &ApiError, retry_sent: bool) -> bool {
    match e {
        ApiError::UpstreamUnreachable { sent: false } => true,
        ApiError::UpstreamUnreachable { sent: true } | ApiError::UpstreamTimeout => retry_sent,
        ApiError::UpstreamRateLimited { .. } | ApiError::UpstreamOverloaded { .. } => true,
        ApiError::UpstreamFailed { status } => matches!(status, 500 | 502 | 529),
        _ => false,
    }
}

/// The body with the model as this upstream names it (its `rename`), every
/// other byte unchanged.
fn renamed(member: &Arc<Member>, served: Option<&str>, body: &Bytes) -> Bytes {
    let Some(name) = served.and_then(|s| member.renamed(s)) else {
        return body.clone();
    };
    let Ok(object) = Object::parse(body) else {
        return body.clone();
    };
    let value = serde_json::to_vec(name).unwrap_or_default();
    let mut edits = Edits::default();
    match object.get("model") {
        Some(raw) => edits.replace(body, raw, value),
        None => {
            if let Some(top) = top_level(body) {
                edits.add_member(body, top, object.members.len(), "model", &value);
            }
        }
    }
    Bytes::from(edits.apply(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_say_nothing_about_the_request_fail_over() {
        let yes = [
            ApiError::UpstreamUnreachable { sent: false },
            ApiError::UpstreamRateLimited { retry_after: None },
            ApiError::UpstreamOverloaded { retry_after: None },
            ApiError::UpstreamFailed { status: 500 },
            ApiError::UpstreamFailed { status: 502 },
            ApiError::UpstreamFailed { status: 529 },
        ];
        for e in &yes {
            assert!(worth_another(e, false), "{e:?}");
        }
        let sent = [
            ApiError::UpstreamUnreachable { sent: true },
            ApiError::UpstreamTimeout,
        ];
        for e in &sent {
            assert!(!worth_another(e, false), "{e:?} may have been billed");
            assert!(worth_another(e, true), "{e:?} with retry_sent_requests");
        }
        for e in [
            ApiError::UpstreamFailed { status: 504 },
            ApiError::UpstreamFailed { status: 307 },
            ApiError::ModelNotAllowed,
        ] {
            assert!(!worth_another(&e, true), "{e:?}");
        }
    }
}
