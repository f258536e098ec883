//! The server: bind, serve, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Config;
use crate::routes::router;
use crate::state::AppState;

pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown_grace: Duration,
}

impl App {
    /// Builds the state and binds the listener (port 0 picks a free port;
    /// read it back with [`App::local_addr`]).
    pub async fn build(config: Config) -> std::io::Result<App> {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let shutdown_grace = config.server.shutdown_grace;
        let state = AppState::new(config).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Ok(App {
            listener,
            router: router(state.clone()),
            state,
            shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
        let listener = self.listener.tap_io(|tcp| {
            // Small SSE frames must leave at once, not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let signalled = Arc::new(Notify::new());
        let notify = signalled.clone();
        let shutdown = async move {
            shutdown.await;
            notify.notify_one();
        };
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, service).with_graceful_shutdown(shutdown);
        let grace = self.shutdown_grace;
        tokio::select! {
            result = server => result,
            () = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(
                    in_flight = self.state.slots.in_flight(),
                    "shutdown grace period over; closing the requests still open"
                );
                Ok(())
            }
        }
    }
}
