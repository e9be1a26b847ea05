//! HTTP/2 settings for HBONE, as ztunnel sets them (see shared/HBONE.md): windows sized for
//! throughput on one connection, large frames, keep-alive pings.

use std::time::Duration;

use hyper::rt::Executor;

const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a server accepts on one connection.
pub const MAX_STREAMS: u32 = 200;

pub fn server<E>(builder: &mut hyper::server::conn::http2::Builder<E>)
where
    E: Clone,
{
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT);
}

pub fn client<E>(builder: &mut hyper::client::conn::http2::Builder<E>)
where
    E: Executor<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(16 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT);
}
