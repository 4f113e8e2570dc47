//! Serving the API's router on the guarded listener, one hyper HTTP/1 connection per client,
//! with the limits `axum::serve` does not set: a request head must arrive whole within
//! `header_timeout` and within `max_header_bytes`, however slowly its bytes trickle (the
//! listener's idle timeout only ends total silence, so a header sent a byte every few seconds
//! held a connection for good). Each request carries its connection's peer address
//! ([`ClientAddr`]), which the failed-authentication limit counts by. On shutdown it stops
//! accepting, lets every open connection finish its request and closes it (a drain, which the
//! daemon bounds with `drain_timeout`).
//!
//! It knows HTTP framing only; what a request must say (its Host, its body's deadline) is
//! checked by the router's own layers (`crate::http::guard`).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower_service::Service as _;

use crate::http::listener::GuardedListener;

/// The per-connection limits of HTTP/1 framing.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request head (request line and headers) must arrive whole within this long of the
    /// connection's being ready for it; an idle keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// Largest request head, in bytes (at least 8192, hyper's smallest buffer).
    pub max_header_bytes: usize,
}

/// The smallest head limit hyper accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// The address of the client a request came from (its TCP peer), set on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `app` until `shutdown` resolves, then drains: no new connection is accepted, each
/// open one finishes the request it is on and closes. Returns once every connection is closed.
pub async fn serve(
    mut listener: GuardedListener,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = tokio::sync::watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = axum::serve::Listener::accept(&mut listener) => {
                let connection = serve_connection(stream, peer, app.clone(), limits, stopping.clone());
                connections.spawn(connection);
            }
            // Reap finished connections as they go (the set would grow otherwise).
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(());
    while connections.join_next().await.is_some() {}
}

/// One client's connection: hyper's HTTP/1 with the head's deadline and size limit, each
/// request handed to the router with the client's address; at `stopping`, it finishes the
/// request it is on and closes.
async fn serve_connection(
    stream: crate::http::listener::GuardedStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    mut stopping: tokio::sync::watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ClientAddr(peer));
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let head_bytes = limits.max_header_bytes.max(MIN_HEADER_BYTES);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(head_bytes)
        .max_header_size(head_bytes)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopping.changed() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}
