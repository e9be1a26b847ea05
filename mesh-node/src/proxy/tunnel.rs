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
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
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

/// Carries `tcp -> stream` and `stream -> tcp` until both directions ended (half-closes are
/// passed on); returns the bytes each way in that order. An error on either side ends both,
/// and dropping the stream resets it.
pub async fn carry(tcp: TcpStream, mut stream: H2Stream) -> io::Result<(u64, u64)> {
    let H2Stream { send, recv, .. } = &mut stream;
    tokio::try_join!(socket_to_stream(&tcp, send), stream_to_socket(recv, &tcp))
}

async fn socket_to_stream(tcp: &TcpStream, send: &mut SendStream<Bytes>) -> io::Result<u64> {
    let mut reader = SocketReader::new();
    let mut total = 0u64;
    while let Some(chunk) = reader.next(tcp).await? {
        total += chunk.len() as u64;
        send_all(send, chunk).await?;
    }
    send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
    Ok(total)
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

async fn stream_to_socket(recv: &mut RecvStream, tcp: &TcpStream) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_to_io)?;
        write_all(tcp, &data).await?;
        // Window goes back only once the socket took the bytes: a slow reader slows the sender.
        recv.flow_control()
            .release_capacity(data.len())
            .map_err(h2_to_io)?;
        total += data.len() as u64;
    }
    // The peer finished sending: pass the half-close on.
    shutdown_write(tcp)?;
    Ok(total)
}

pub fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error.into_io().expect("is_io")
    } else {
        io::Error::other(error)
    }
}
