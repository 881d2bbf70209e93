//! Running a server role: one tokio runtime, bound listeners, and every role's failure
//! reported (a busy port fails at once, naming the address).

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

/// Builds the runtime and runs `serve` on it until it returns (the servers stop on Ctrl-C
/// or SIGTERM).
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(serve: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve)
}

/// A listener on `host:port`, or an error naming the address.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}
