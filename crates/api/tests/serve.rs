//! The server under every role against slow and greedy clients, over raw sockets: a client
//! that never finishes its headers is cut off, one that stalls mid-body is answered and
//! cut off, and connections past the cap wait until one closes.

use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use tessera_api::serve::{serve_until, ConnectionLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server(limits: ConnectionLimits) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = Router::new()
        .route("/hi", get(|| async { "hi" }))
        .route("/echo", post(|body: Bytes| async move { body }));
    tokio::spawn(async move {
        serve_until(listener, router, "test", &limits, std::future::pending()).await
    });
    addr
}

fn limits(header_ms: u64, body_ms: u64, max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_millis(header_ms),
        body_idle_timeout: Duration::from_millis(body_ms),
        max_connections,
    }
}

/// Everything the server sends until it closes the connection (or 5 s pass).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let addr = server(limits(300, 10_000, 16)).await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /hi HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut slow).await;
    let took = started.elapsed();
    assert!(
        !got.contains("hi"),
        "answered a request whose headers never ended: {got}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the connection stayed open {took:?} past a 300 ms header timeout"
    );
}

#[tokio::test]
async fn a_body_that_stalls_is_refused_and_the_connection_freed() {
    let addr = server(limits(10_000, 300, 16)).await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut slow).await;
    assert!(
        got.starts_with("HTTP/1.1 4") || got.starts_with("HTTP/1.1 5") || got.is_empty(),
        "a stalled body was answered: {got}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let addr = server(limits(1500, 10_000, 2)).await;
    // Two clients that connect and say nothing hold both slots until the header timeout.
    let _idle_a = TcpStream::connect(&addr).await.unwrap();
    let _idle_b = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut third).await;
    let waited = started.elapsed();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("hi"),
        "{got}"
    );
    assert!(
        waited >= Duration::from_millis(1000),
        "served after {waited:?}: the cap of 2 did not hold it back"
    );
}

#[tokio::test]
async fn a_prompt_client_is_served_as_before() {
    let addr = server(ConnectionLimits::default()).await;
    let mut client = TcpStream::connect(&addr).await.unwrap();
    client
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await
        .unwrap();
    let got = read_to_close(&mut client).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("hello"),
        "{got}"
    );
}
