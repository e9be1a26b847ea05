//! One HBONE tunnel (an HTTP/2 CONNECT stream) carried to and from a TCP socket. Data moves as
//! `Bytes` between the socket and the stream without being copied in user space (hyper's
//! upgraded-stream adapter copies each chunk once more each way), and an idle tunnel holds no
//! buffer (see [`SocketReader`]).

use std::{
    future::poll_fn,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use super::copy::{SocketReader, shutdown_write, write_all};

/// Both halves of an established CONNECT stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The client's count of open streams on the connection, given back on drop.
    slot: Option<Arc<AtomicUsize>>,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, slot: Option<Arc<AtomicUsize>>) -> Self {
        H2Stream { send, recv, slot }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How long, after one direction failed (the app closed while its peer was still sending),
/// the other may go on: time for the answer already read to leave, and for the peer's own
/// END_STREAM after it.
const LINGER: Duration = Duration::from_secs(10);

/// Why one direction ended early.
enum Failure {
    /// The HBONE stream failed (the peer reset it, the connection died): nothing more can be
    /// said on it, so the tunnel ends at once.
    Stream(io::Error),
    /// The app's socket failed (it closed while its peer was still sending, or reset): the
    /// other direction may still finish.
    Socket(io::Error),
}

impl From<Failure> for io::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Stream(e) | Failure::Socket(e) => e,
        }
    }
}

/// Carries `tcp -> stream` and `stream -> tcp` until both directions ended (half-closes are
/// passed on); returns the bytes each way in that order.
///
/// An app may close while its peer is still sending (it answered and is done). That fails the
/// `stream -> tcp` direction at the socket; the other still delivers what the app wrote and
/// ends the stream with END_STREAM, and what the peer still sends is drained, as ztunnel does,
/// so the stream is not reset (a reset can drop answer bytes still queued, and a ztunnel peer
/// logs it as an error). A read error on the socket ends the stream the same way. Only if the
/// other direction is still busy [`LINGER`] later is the stream given up (dropped: reset). A
/// failure of the stream itself ends the tunnel at once.
///
/// Each chunk is counted in its direction's counter once delivered.
pub async fn carry(
    tcp: TcpStream,
    mut stream: H2Stream,
    from_socket: Counter,
    from_stream: Counter,
) -> io::Result<(u64, u64)> {
    let H2Stream { send, recv, .. } = &mut stream;
    let up = socket_to_stream(&tcp, send, &from_socket);
    let down = stream_to_socket(recv, &tcp, &from_stream);
    tokio::pin!(up, down);
    let (mut sent, mut received) = (None, None);
    let mut linger = std::pin::pin!(tokio::time::sleep(Duration::MAX));
    let mut lingering = false;
    while sent.is_none() || received.is_none() {
        tokio::select! {
            done = &mut up, if sent.is_none() => sent = Some(done),
            done = &mut down, if received.is_none() => received = Some(done),
            () = &mut linger, if lingering => break,
        }
        for done in [&mut sent, &mut received] {
            match done.take() {
                Some(Err(Failure::Stream(e))) => return Err(e),
                Some(Err(Failure::Socket(e))) => {
                    if !lingering {
                        lingering = true;
                        linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    }
                    *done = Some(Err(Failure::Socket(e)));
                }
                other => *done = other,
            }
        }
    }
    match (sent, received) {
        (Some(Ok(sent)), Some(Ok(received))) => Ok((sent, received)),
        (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e.into()),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the app's socket failed and the stream did not end in time",
        )),
    }
}

/// `tcp -> stream`; the stream's sending side ends with END_STREAM whether the socket ended
/// or failed (a reset from the app ends what it had to say).
async fn socket_to_stream(
    tcp: &TcpStream,
    send: &mut SendStream<Bytes>,
    counted: &Counter,
) -> Result<u64, Failure> {
    let mut reader = SocketReader::new();
    let mut total = 0u64;
    let ended = loop {
        match reader.next(tcp).await {
            Ok(Some(chunk)) => {
                let length = chunk.len() as u64;
                send_all(send, chunk).await.map_err(Failure::Stream)?;
                total += length;
                counted.inc_by(length);
            }
            Ok(None) => break Ok(total),
            Err(e) => break Err(Failure::Socket(e)),
        }
    };
    send.send_data(Bytes::new(), true)
        .map_err(|e| Failure::Stream(h2_to_io(e)))?;
    ended
}

/// Sends `data` as flow control allows, waiting for window when the peer is slower.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted,
            Some(Err(e)) => return Err(h2_to_io(e)),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the HBONE stream was closed by the peer",
                ));
            }
        };
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false).map_err(h2_to_io)?;
    }
    Ok(())
}

/// `stream -> tcp`. When the socket can no longer be written (the app closed), the rest of
/// what the peer sends is read and dropped until its END_STREAM, so the stream ends cleanly;
/// the write error is returned then.
async fn stream_to_socket(
    recv: &mut RecvStream,
    tcp: &TcpStream,
    counted: &Counter,
) -> Result<u64, Failure> {
    let mut total = 0u64;
    // The write error, and until when the peer's data is drained.
    let mut write_failed: Option<(io::Error, tokio::time::Instant)> = None;
    loop {
        let next = match &write_failed {
            None => recv.data().await,
            Some((_, until)) => match tokio::time::timeout_at(*until, recv.data()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some(data) = next else { break };
        let data = data.map_err(|e| Failure::Stream(h2_to_io(e)))?;
        if write_failed.is_none() {
            match write_all(tcp, &data).await {
                Ok(()) => {
                    total += data.len() as u64;
                    counted.inc_by(data.len() as u64);
                }
                Err(e) => write_failed = Some((e, tokio::time::Instant::now() + LINGER)),
            }
        }
        // Window goes back only once the socket took the bytes: a slow reader slows the sender.
        recv.flow_control()
            .release_capacity(data.len())
            .map_err(|e| Failure::Stream(h2_to_io(e)))?;
    }
    if let Some((e, _)) = write_failed {
        return Err(Failure::Socket(e));
    }
    // The peer finished sending: pass the half-close on.
    shutdown_write(tcp).map_err(Failure::Socket)?;
    Ok(total)
}

pub fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error.into_io().expect("is_io")
    } else {
        io::Error::other(error)
    }
}
