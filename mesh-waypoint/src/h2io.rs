//! An HBONE tunnel (one HTTP/2 CONNECT stream) as a byte stream hyper can serve or speak
//! HTTP on: reads hand out the stream's DATA frames (giving flow-control window back as they
//! are consumed), writes send DATA as the peer's window allows, shutdown ends the stream.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What was received but not read yet.
    pending: Bytes,
    /// The peer ended its side.
    eof: bool,
    /// Counts this stream against its pooled connection while it lives.
    _slot: Option<std::sync::Arc<()>>,
}

impl H2Io {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Io {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            _slot: None,
        }
    }

    /// The first bytes the peer sent, without consuming them; `None` if nothing came within
    /// `wait` (a protocol where the server speaks first) or the stream ended.
    pub async fn peek(&mut self, wait: std::time::Duration) -> io::Result<Option<&[u8]>> {
        let first = self.peek_at_least(1, wait).await?;
        Ok((!first.is_empty()).then_some(first))
    }

    /// At least `len` of the first bytes the peer sends, without consuming them: fewer if
    /// the stream ends, or if `wait` passes first.
    pub async fn peek_at_least(
        &mut self,
        len: usize,
        wait: std::time::Duration,
    ) -> io::Result<&[u8]> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.pending.len() < len && !self.eof {
            let next = std::future::poll_fn(|cx| self.recv.poll_data(cx));
            match tokio::time::timeout_at(deadline, next).await {
                Err(_) => break,
                Ok(None) => self.eof = true,
                Ok(Some(Err(error))) => return Err(h2_to_io(error)),
                Ok(Some(Ok(data))) => {
                    self.recv
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_to_io)?;
                    self.pending = match self.pending.is_empty() {
                        true => data,
                        false => [&self.pending[..], &data[..]].concat().into(),
                    };
                }
            }
        }
        Ok(&self.pending[..])
    }

    /// The same stream, holding `slot` (a pooled connection's stream count) until dropped.
    pub fn holding(mut self, slot: std::sync::Arc<()>) -> Self {
        self._slot = Some(slot);
        self
    }
}

pub fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error.into_io().expect("is_io")
    } else {
        io::Error::other(error)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Window goes back as soon as the bytes are ours: what bounds memory is
                    // the reader above us, which reads only what it can handle.
                    let len = data.len();
                    self.recv
                        .flow_control()
                        .release_capacity(len)
                        .map_err(h2_to_io)?;
                    self.pending = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => self.eof = true,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl H2Io {
    /// How much of `want` bytes the peer's window takes now.
    fn poll_granted(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(granted)) => Poll::Ready(Ok(granted.min(want))),
            Some(Err(error)) => Poll::Ready(Err(h2_to_io(error))),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the HBONE stream was closed by the peer",
            ))),
        }
    }

    /// Sends as much of `bytes` as the window takes, as it is (no copy), and advances it.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if bytes.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_granted(cx, bytes.len()))?;
        self.send
            .send_data(bytes.split_to(n), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_granted(cx, buf.len()))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 sends queued data on its own connection task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Ending an already ended stream is not an error worth reporting.
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}
