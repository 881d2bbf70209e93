//! Serving a role's routes until the process is asked to stop the way containers and
//! terminals ask: SIGTERM or Ctrl-C.

use anyhow::Context;
use tokio::net::TcpListener;

/// Serves `router` on a listener bound by the caller (tests bind port 0) until Ctrl-C or
/// SIGTERM; requests in flight are finished first. `role` names the server in the log and
/// in the error.
pub async fn serve(listener: TcpListener, router: axum::Router, role: &str) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "{role} listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(signal())
        .await
        .with_context(|| format!("the {role}'s HTTP server failed"))
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
