//! HTTP/1.1 connections to DeepSeek, each driven by the request using it.
//!
//! A general-purpose client (hyper-util's, under reqwest) runs every
//! connection in a task of its own and hands each response chunk, and then
//! the end of the body, to the request's task through a channel: two tasks
//! wake per chunk, and the chunks of one answer leave for the client in
//! separate writes. Here the request's own task polls its connection while it
//! waits for the head and while the relay reads the body, so a chunk goes
//! from DeepSeek's socket to the client's in one task, and an answer that
//! arrives at once leaves at once. The measurements are in BENCHMARKS.md.
//!
//! The pool keeps idle connections (newest first) and nothing else: an idle
//! connection is not polled, so one DeepSeek closed is found when it is next
//! taken, dropped, and replaced. A request that a reused connection could
//! not even start sending is retried on the next pooled connection, or on a
//! fresh one; one that was (even partly) sent is never retried, since a
//! retried completion would be generated, and billed, twice.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// One HTTP/1.1 connection: the handle that sends requests on it and the
/// state machine that does its reading and writing when polled.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once it has finished (closed or failed).
    driver: Option<http1::Connection<Io, Full<Bytes>>>,
}

impl Conn {
    /// Drives the connection; returns `true` if it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = self.driver.as_mut() {
            if Pin::new(driver).poll(cx).is_ready() {
                // Dropping it hands any request or body still waiting on it
                // an error.
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Waits until a request can be sent; `false` if the connection closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    Connect(String),
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Request(e) => write!(f, "{e}"),
        }
    }
}

pub struct Pool {
    /// Scheme, host and port of DeepSeek.
    origin: Uri,
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(
        origin: Uri,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            origin,
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Closes idle connections past `idle_timeout` every so often, so a
    /// quiet gateway does not keep sockets DeepSeek may have closed. Ends
    /// with the pool.
    pub fn reap_in_background(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        let every = self.idle_timeout / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                drop_stale(&mut idle, pool.idle_timeout);
            }
        });
    }

    /// The newest idle connection young enough to trust.
    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        drop_stale(&mut idle, self.idle_timeout);
        idle.pop().map(|i| i.conn)
    }

    fn put(&self, conn: Box<Conn>) {
        if conn.driver.is_none() || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Boxed once here, so that handing it around and back to the pool
    /// moves a pointer, not hyper's connection state.
    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
        }))
    }

    /// Sends `request` (its URI in origin form, its `Host` set) and waits
    /// for the response head, driving the connection meanwhile. The body of
    /// the answer drives it from then on, and gives it back to the pool once
    /// read to the end.
    ///
    /// Not an `async fn`, which would hold the request twice; and a new
    /// connection's state (hyper's handshake, the connector's) is boxed
    /// while it is made, so the usual case, a pooled connection, does not
    /// carry its room in every request's future.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds the request twice"
    )]
    pub fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Driven>, SendError>> + '_ {
        async move {
            loop {
                let (mut conn, reused) = match self.take() {
                    Some(conn) => (conn, true),
                    None => (Box::pin(self.connect()).await?, false),
                };
                if !conn.ready().await {
                    if reused {
                        continue;
                    }
                    return Err(SendError::Connect("the connection closed at once".into()));
                }
                let mut sent = pin!(conn.sender.try_send_request(request));
                let answer = poll_fn(|cx| {
                    if let Poll::Ready(answer) = sent.as_mut().poll(cx) {
                        return Poll::Ready(answer);
                    }
                    // If the connection is gone, `sent` has its error now.
                    conn.drive(cx);
                    sent.as_mut().poll(cx)
                })
                .await;
                match answer {
                    Ok(response) => {
                        return Ok(response.map(|body| Driven {
                            body,
                            conn: Some(conn),
                            pool: Arc::clone(self),
                            ended: false,
                        }))
                    }
                    Err(mut e) => match e.take_message() {
                        // Never sent: a stale pooled connection. Try a new one.
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(SendError::Request(e.into_error())),
                    },
                }
            }
        }
    }
}

/// Drops the connections idle for longer than `timeout`: the oldest, at the
/// front.
fn drop_stale(idle: &mut Vec<Idle>, timeout: Duration) {
    if let Some(cutoff) = Instant::now().checked_sub(timeout) {
        let stale = idle.iter().take_while(|i| i.since < cutoff).count();
        idle.drain(..stale);
    }
}

/// A response body that drives its connection as it is read, and returns
/// the connection to the pool once the answer was read to the end. Dropped
/// before that, it closes the connection: DeepSeek sees the client leave.
pub struct Driven {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
    /// The body reached its end (hyper may drop a body whose length it knew
    /// without polling it to the end, hence also `Incoming::is_end_stream`).
    ended: bool,
}

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if !(self.ended || self.body.is_end_stream()) {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // The answer is complete, but the request may not be: DeepSeek can
        // answer (a 400, say) before it has read a large body, and then stop
        // reading. Such a connection would hang the next request, so it is
        // pooled only if it can take one now (as hyper-util's pool does).
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if conn.drive(&mut cx) && conn.sender.is_ready() {
            self.pool.put(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fake_deepseek::FakeDeepSeek;
    use http_body_util::BodyExt;

    async fn get_models(pool: &Arc<Pool>, fake: &FakeDeepSeek) -> Bytes {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = Uri::from_static("/v1/models");
        let host = fake.addr().to_string();
        request
            .headers_mut()
            .insert(axum::http::header::HOST, host.parse().expect("host header"));
        let response = pool.send(request).await.expect("answered");
        assert_eq!(response.status(), 200);
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    /// A new connection's state is boxed apart, and the request is not
    /// held twice: 576 bytes in the debug build, 1,840 before issue 15's
    /// tenth round (1,576 with only the connection made inline again).
    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "the bound is the debug build's")]
    fn sending_on_a_pooled_connection_is_a_small_future() {
        fn future_size<F, A, B, R>(_: &F) -> usize
        where
            F: Fn(A, B) -> R,
        {
            std::mem::size_of::<R>()
        }
        let size = future_size::<_, &'static Arc<Pool>, Request<Full<Bytes>>, _>(&Pool::send);
        assert!(size <= 800, "{size} bytes");
    }

    fn idle_count(pool: &Pool) -> usize {
        pool.idle.lock().expect("lock").len()
    }

    #[tokio::test]
    async fn a_connection_is_reused_and_closed_once_idle_too_long() {
        let fake = FakeDeepSeek::start().await.expect("fake");
        let origin: Uri = format!("http://{}", fake.addr()).parse().expect("uri");
        let tls = super::super::upstream::tls_config(&[]).expect("tls");
        let idle_timeout = Duration::from_millis(300);
        let pool = Arc::new(Pool::new(
            origin,
            tls,
            Duration::from_secs(2),
            idle_timeout,
            8,
        ));
        pool.reap_in_background();

        let first = get_models(&pool, &fake).await;
        let second = get_models(&pool, &fake).await;
        assert_eq!(first, second);
        assert_eq!(
            fake.connections(),
            1,
            "the second request reused the first's"
        );
        assert_eq!(idle_count(&pool), 1);

        // The reaper (every idle_timeout / 3) closes it without any request.
        tokio::time::sleep(idle_timeout * 2).await;
        assert_eq!(idle_count(&pool), 0);
        let _ = get_models(&pool, &fake).await;
        assert_eq!(fake.connections(), 2);
    }
}
