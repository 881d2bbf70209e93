//! Serving a role's routes: every connection bounded against slow and greedy clients, until
//! the process is asked to stop the way containers and terminals ask (SIGTERM or Ctrl-C).
//!
//! axum's own `serve` sets no timer on hyper's HTTP/1 connections, so hyper's header read
//! timeout never fires and it caps nothing: one client dripping a header byte at a time
//! (slowloris) holds a connection, and a task, forever, and a thousand of them hold a
//! thousand. Here, with hyper directly:
//! - a request's headers must arrive within [`ConnectionLimits::header_timeout`];
//! - a request body may pause at most [`ConnectionLimits::body_idle_timeout`] between two
//!   reads (the body size is bounded by each role's limits);
//! - at most [`ConnectionLimits::max_connections`] connections are served at once; past it,
//!   new ones wait in the listen backlog until one closes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// The bounds on each connection a server accepts.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            // Generous for any real client on any link; a header is a few hundred bytes.
            header_timeout: Duration::from_secs(10),
            // An upload stalled this long is not coming.
            body_idle_timeout: Duration::from_secs(30),
            // Far above what one model can serve (the queues answer 503 long before), low
            // enough that file descriptors and tasks stay bounded.
            max_connections: 1024,
        }
    }
}

/// Serves `router` on a listener bound by the caller (tests bind port 0) until Ctrl-C or
/// SIGTERM, with the default [`ConnectionLimits`]; requests in flight are finished first.
/// `role` names the server in the log and in the error.
pub async fn serve(listener: TcpListener, router: axum::Router, role: &str) -> anyhow::Result<()> {
    serve_until(
        listener,
        router,
        role,
        &ConnectionLimits::default(),
        signal(),
    )
    .await
}

/// [`serve`] with `limits`, until `stop` resolves.
pub async fn serve_until(
    listener: TcpListener,
    router: axum::Router,
    role: &str,
    limits: &ConnectionLimits,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "{role} listening");
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_idle_timeout,
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => {
                permit.context("the connection limit's semaphore closed")?
            }
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "{role}: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C, or on SIGTERM (how containers are stopped).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
