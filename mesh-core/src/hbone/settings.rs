//! HTTP/2 settings for HBONE, as ztunnel sets them (see shared/HBONE.md): windows sized for
//! throughput on one connection, large frames, keep-alive pings.

use std::time::Duration;

const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
/// Data a stream may queue for sending beyond what was written: a few large reads.
const SEND_BUFFER: usize = 1024 * 1024;
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a server accepts on one connection.
pub const MAX_STREAMS: u32 = 200;

pub fn server() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS)
        // Larger header blocks are answered 431 on their stream; the connection lives on.
        .max_header_list_size(64 * 1024);
    builder
}

pub fn client() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(16 * 1024)
        .enable_push(false);
    builder
}

/// Pings the peer every 10 s; returns why the connection should be closed once a ping goes
/// unanswered for 20 s (or the connection failed). Without a ping handle (already taken) it
/// never returns.
pub async fn keep_alive(ping_pong: Option<h2::PingPong>) -> String {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("ping failed: {error}"),
            Err(_) => return format!("no answer to a ping in {PING_TIMEOUT:?}"),
        }
    }
}
