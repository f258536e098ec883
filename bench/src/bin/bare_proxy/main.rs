//! `bare_proxy LISTEN_ADDR UPSTREAM_BASE [BACKLOG]`: the floor the gateway is
//! measured against. A reverse proxy on the same stack (tokio, hyper's HTTP/1
//! server, hyper-util's pooled client) that does nothing but forward: no
//! auth, no log, no state. TCP_NODELAY on both sides, and the listener's
//! backlog at tokio's default (128), as the smallest program would have it,
//! or `BACKLOG` (the bench's `bare-wide` peer asks for the gateway's, so
//! that a burst of connections is all open at once in both). Prints
//! `listening on http://ADDR` once bound.
//!
//! With `BARE_REDIS_URL` set, each request also makes the two Redis round
//! trips the gateway's Redis path keeps on a request's way (BENCHMARKS.md,
//! issue 15): a `SET NX PX` before forwarding and a `DEL` once DeepSeek's
//! answer has come, through redis-rs's `ConnectionManager` like the
//! gateway. That is the floor of the Redis path on this stack.
//!
//! With `BARE_JOB=DIR` it does the gateway's job with production defaults,
//! the plainest way (`job.rs`): the floor of the same job.

mod job;

use std::convert::Infallible;

/// Built with `--features mimalloc`: the gateway's allocator, to tell the
/// allocator's share of memory per stream from the gateway's own.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: bare_proxy LISTEN_ADDR UPSTREAM_BASE [BACKLOG] (e.g. 127.0.0.1:0 http://127.0.0.1:9000)"
        );
        std::process::exit(2);
    };
    let backlog: Option<u32> = match args.next().map(|b| b.parse()) {
        None => None,
        Some(Ok(backlog)) => Some(backlog),
        Some(Err(e)) => {
            eprintln!("bare_proxy: BACKLOG: {e}");
            std::process::exit(2);
        }
    };
    let upstream: Uri = upstream.parse().map_err(std::io::Error::other)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let redis = match std::env::var("BARE_REDIS_URL") {
        Ok(url) => {
            let client = redis::Client::open(url).map_err(std::io::Error::other)?;
            let manager = redis::aio::ConnectionManager::new(client).await;
            Some(manager.map_err(std::io::Error::other)?)
        }
        Err(_) => None,
    };
    let slots = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = match backlog {
        None => tokio::net::TcpListener::bind(&listen).await?,
        Some(backlog) => {
            let addr: std::net::SocketAddr = listen.parse().map_err(std::io::Error::other)?;
            let socket = match addr {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog)?
        }
    };
    let job = job::Job::from_env(&upstream)?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        if let Some(job) = &job {
            let job = job.clone();
            let peer = peer.ip().to_string();
            serve(
                tcp,
                hyper::service::service_fn(move |req| {
                    let answer = job.clone().serve(req, peer.clone());
                    async move { Ok::<_, Infallible>(answer.await) }
                }),
            );
            continue;
        }
        let (client, upstream) = (client.clone(), upstream.clone());
        let (redis, slots) = (redis.clone(), slots.clone());
        serve(
            tcp,
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                let redis = redis.clone();
                let slot = format!(
                    "bare:slot:{}",
                    slots.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                async move {
                    if let Some(mut redis) = redis.clone() {
                        let mut set = redis::cmd("SET");
                        set.arg(&slot).arg(1).arg("NX").arg("PX").arg(15_000);
                        let _: redis::RedisResult<()> = set.query_async(&mut redis).await;
                    }
                    let mut parts = upstream.into_parts();
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
                    req.headers_mut().remove(hyper::header::HOST);
                    let answer = client.request(req).await;
                    if let Some(mut redis) = redis {
                        let mut del = redis::cmd("DEL");
                        del.arg(&slot);
                        let _: redis::RedisResult<()> = del.query_async(&mut redis).await;
                    }
                    let response = match answer {
                        Ok(r) => r.map(http_body_util::Either::Left),
                        Err(_) => {
                            let empty = http_body_util::Empty::<hyper::body::Bytes>::new();
                            let mut bad = Response::new(http_body_util::Either::Right(empty));
                            *bad.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            bad
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            }),
        );
    }
}

/// One connection, served on a task of its own.
fn serve<S, B>(tcp: tokio::net::TcpStream, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tcp.set_nodelay(true);
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });
}
