//! The server: bind, accept, serve HTTP/1.1, shut down gracefully.
//!
//! hyper is driven directly (not through `axum::serve`) because the edges
//! need its knobs: a cap on open connections, a deadline for request
//! headers (slowloris; it also closes idle keep-alive connections), a cap on
//! header size (431), TCP_NODELAY on every accepted socket, and a graceful
//! stop that lets open streams finish for a bounded time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::{Config, ServerConfig};
use crate::ledger::Ledger;
use crate::own_wakes::OwnWakes;
use crate::routes::{router, Gateway};
use crate::state::AppState;

pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    gateway: Gateway,
    state: AppState,
    limits: Limits,
}

struct Limits {
    shutdown_grace: Duration,
    max_connections: usize,
    max_header_bytes: usize,
    header_read_timeout: Duration,
}

impl Limits {
    fn from(server: &ServerConfig) -> Self {
        Self {
            shutdown_grace: server.shutdown_grace,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.header_read_timeout,
        }
    }
}

/// A pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

impl App {
    /// Builds the state and binds the listener (port 0 picks a free port;
    /// read it back with [`App::local_addr`]).
    pub async fn build(config: Config) -> std::io::Result<App> {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let limits = Limits::from(&config.server);
        let metrics_addr = config.server.metrics_addr.clone();
        let currency = config.pricing.currency.code();
        if config.storage.journal_path.is_none() && !config.storage.url().contains(":memory:") {
            tracing::warn!(
                "storage.journal_path is not set: usage rows of the last second before a crash \
                 are lost (set it to a local file, one per replica)"
            );
        }
        let ledger = Ledger::open(&config.storage)
            .await
            .map_err(std::io::Error::other)?;
        // Users defined twice, nobody at all, an upstream that cannot be
        // set up: config problems, which a restart cannot fix.
        let state = AppState::new(config, ledger)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // Counters start from the ledger, so a restart hands out no fresh
        // daily allowance or monthly budget.
        let seeds = state
            .ledger
            .seeds(crate::usage::calendar::now_ms(), currency)
            .await
            .map_err(|e| std::io::Error::other(format!("cannot read the usage ledger: {e}")))?;
        state.store.seed(&seeds).await.map_err(|e| {
            std::io::Error::other(format!(
                "cannot set the quota counters from the ledger: {e}"
            ))
        })?;
        if let Some(every) = state.upstreams.routing.probe_interval {
            crate::upstreams::probe::start(state.downgrade(), every);
        }
        if state.store.is_shared() && state.upstreams.members().len() > 1 {
            crate::upstreams::probe::sync(state.downgrade());
        }
        // Changes made on other replicas or by the CLI, and reloads asked
        // through the database, reach this process by this poll.
        let weak = state.downgrade();
        state.directory.watch(move || {
            if let Some(state) = weak.upgrade() {
                crate::reload::in_background(&state);
            }
        });
        let listener = listen(&addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let metrics_listener = match &metrics_addr {
            Some(addr) => Some(listen(addr).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on metrics_addr {addr}: {e}"),
                )
            })?),
            None => None,
        };
        Ok(App {
            listener,
            metrics_listener,
            gateway: router(state.clone()),
            state,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// The shared state, for tests that look inside (slots in flight).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open
    /// requests (SSE streams included) finish for up to the grace period.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.limits;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let metrics_server = self.metrics_listener.map(|listener| {
            let app = Router::new()
                .route("/metrics", axum::routing::get(serve_metrics))
                .with_state(self.state.clone());
            tokio::spawn(async move { axum::serve(listener, app).await })
        });
        tokio::pin!(shutdown);
        // Every connection task, so that at the end of the grace period the
        // ones still open can be cancelled *and waited for*: their bodies'
        // drops write their log lines and ledger rows before the flush.
        let mut open = tokio::task::JoinSet::new();

        loop {
            while open.try_join_next().is_some() {}
            // At the cap, stop accepting: new connections wait in the
            // kernel's backlog until an open one closes.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Small SSE frames must leave at once, not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let gateway = self.gateway.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                // Three reference counts: the state, CORS's settings, the router.
                gateway.clone().oneshot(req)
            });
            let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
            // Its parts wake one another; see `own_wakes`. A combinator, not
            // an `async` block: the block would hold the connection twice
            // (once captured, once being awaited), for as long as it is open.
            open.spawn(OwnWakes::new(connection.map(move |ended| {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                drop(permit);
            })));
        }

        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(limits.shutdown_grace) => {
                tracing::warn!(
                    in_flight = self.state.store.in_flight(),
                    "shutdown grace period over; closing the requests still open"
                );
            }
        }
        open.abort_all();
        while open.join_next().await.is_some() {}
        if let Some(server) = metrics_server {
            server.abort();
        }
        // Every row queued so far reaches the database before we exit.
        self.state.ledger.flush().await;
        Ok(())
    }
}

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`
/// (4096 on current Linux). tokio's `TcpListener::bind` (through mio) asks
/// for 128, the standard library's value: when a thousand clients connect
/// at once, the connections past it are dropped and retried a second
/// later, which showed as a 1 s time to first frame (BENCHMARKS.md,
/// issue 15).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` (the first of its addresses that binds, as tokio's `bind`
/// does) with [`LISTEN_BACKLOG`], and `SO_REUSEADDR` as tokio sets it.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = match candidate {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(candidate)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

async fn serve_metrics(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    let health: Vec<(&str, bool)> = state
        .upstreams
        .members()
        .iter()
        .map(|m| (m.name.as_str(), m.health.report().healthy))
        .collect();
    state.metrics.render(
        state.store.in_flight(),
        state.ledger.queued(),
        state.ledger.dropped(),
        &health,
    )
}
