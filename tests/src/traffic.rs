//! Traffic for tests and benchmarks: servers that report what they saw, and clients that
//! check what came back.
//!
//! Servers run on threads of the calling process with sockets made inside a pod's namespace;
//! each stops when its handle is dropped.

use std::{
    io::{self, BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// A server thread; stops accepting when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `handle` on a thread of its own for each accepted connection.
pub fn serve(
    listener: TcpListener,
    handle: impl Fn(TcpStream, SocketAddr) -> io::Result<()> + Send + Sync + 'static,
) -> Result<Server> {
    let handle = Arc::new(handle);
    let addr = listener.local_addr()?;
    // accept() honours SO_RCVTIMEO: wake up now and then to notice the stop flag, without
    // the latency a non-blocking poll loop would add to every new connection.
    socket2::SockRef::from(&listener).set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_read_timeout(None);
                    let _ = stream.set_nodelay(true);
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(stream, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(Server {
        stop,
        thread: Some(thread),
        addr,
    })
}

/// Greets each connection with the peer address it sees (`"<ip:port>\n"`), then echoes.
pub fn echo_server(listener: TcpListener) -> Result<Server> {
    serve(listener, |mut stream, peer| {
        writeln!(stream, "{peer}")?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n])?;
        }
    })
}

/// Reads until EOF, then answers `"<sha256 hex> <bytes>\n"`.
pub fn checksum_server(listener: TcpListener) -> Result<Server> {
    serve(listener, |mut stream, _| {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        writeln!(stream, "{} {total}", hex(&hasher.finalize()))
    })
}

/// Reads a decimal byte count and a newline, then sends that many bytes of [`pattern`].
pub fn source_server(listener: TcpListener) -> Result<Server> {
    serve(listener, |stream, _| {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let count: u64 = line.trim().parse().map_err(io::Error::other)?;
        let mut stream = reader.into_inner();
        let mut sent = 0;
        let mut chunk = vec![0u8; 256 * 1024];
        while sent < count {
            let n = chunk.len().min((count - sent) as usize);
            pattern(sent, &mut chunk[..n]);
            stream.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        Ok(())
    })
}

/// Deterministic, incompressible-looking bytes for offset `start` (xorshift of the position).
pub fn pattern(start: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let mut x = (start + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        *byte = (x >> 17) as u8;
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads as a non-blocking app does: a `WouldBlock` before the socket's own read timeout is
/// retried. With sockmap acceleration the kernel's `tcp_bpf_recvmsg` answers a blocking read
/// with EAGAIN after a spurious wake-up (for instance when the agent frees the memory of data
/// the app sent); event-loop apps retry it anyway, and this lets the checks see the data.
pub struct Patient<'a> {
    stream: &'a TcpStream,
}

impl<'a> Patient<'a> {
    pub fn new(stream: &'a TcpStream) -> Self {
        Self { stream }
    }
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = self
            .stream
            .read_timeout()?
            .unwrap_or(Duration::from_secs(20));
        let deadline = Instant::now() + timeout;
        loop {
            match (&*self.stream).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    continue;
                }
                other => return other,
            }
        }
    }
}

/// Whether the peer closes (or resets) the stream within `within`; a read that times out means
/// the connection is still open.
pub fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(within));
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Reads the echo server's greeting: the peer address the server saw.
pub fn read_greeting(stream: &mut TcpStream) -> Result<SocketAddr> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        Patient::new(stream)
            .read_exact(&mut byte)
            .context("reading the echo server's greeting")?;
        line.push(byte[0]);
    }
    let seen: SocketAddr = String::from_utf8(line)?.trim().parse()?;
    // Servers listen dual-stack: show IPv4 peers as IPv4, not as `::ffff:a.b.c.d`.
    Ok(SocketAddr::new(seen.ip().to_canonical(), seen.port()))
}

/// Sends `payload` and checks it comes back unchanged.
pub fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) -> Result<()> {
    let writer = {
        let mut stream = stream.try_clone()?;
        let payload = payload.to_vec();
        std::thread::spawn(move || stream.write_all(&payload))
    };
    let mut back = vec![0u8; payload.len()];
    Patient::new(stream)
        .read_exact(&mut back)
        .context("reading the echo")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if back != payload {
        bail!("echoed bytes differ from what was sent");
    }
    Ok(())
}

/// Streams `total` bytes of [`pattern`] to a checksum server and checks its answer.
pub fn upload_and_verify(stream: TcpStream, total: u64) -> Result<()> {
    upload_paced_and_verify(stream, total, Duration::ZERO)
}

/// As [`upload_and_verify`], pausing `pause` after each 256 KiB so the transfer spans time.
pub fn upload_paced_and_verify(mut stream: TcpStream, total: u64, pause: Duration) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        pattern(sent, &mut chunk[..n]);
        hasher.update(&chunk[..n]);
        stream
            .write_all(&chunk[..n])
            .with_context(|| format!("sending at offset {sent}"))?;
        sent += n as u64;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    check_upload(&stream, hasher, total)
}

/// Ends an upload to a checksum server and checks that it saw the `sent` bytes `hasher` saw.
fn check_upload(stream: &TcpStream, hasher: Sha256, sent: u64) -> Result<()> {
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    Patient::new(stream)
        .read_to_string(&mut answer)
        .context("reading the checksum")?;
    let expected = format!("{} {sent}", hex(&hasher.finalize()));
    if answer.trim() != expected {
        bail!("server saw {:?}, sent {expected:?}", answer.trim());
    }
    Ok(())
}

/// Streams [`pattern`] to a checksum server, 64 KiB every `pause`, until `stop` is set; then
/// checks the server's answer. Returns the bytes sent.
pub fn upload_until_and_verify(
    mut stream: TcpStream,
    stop: &AtomicBool,
    pause: Duration,
) -> Result<u64> {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while !stop.load(Ordering::SeqCst) {
        pattern(sent, &mut chunk);
        hasher.update(&chunk);
        stream
            .write_all(&chunk)
            .with_context(|| format!("sending at offset {sent}"))?;
        sent += chunk.len() as u64;
        std::thread::sleep(pause);
    }
    check_upload(&stream, hasher, sent)?;
    Ok(sent)
}

/// Asks a source server for `total` bytes and checks every one.
pub fn download_and_verify(mut stream: TcpStream, total: u64) -> Result<()> {
    writeln!(stream, "{total}")?;
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; 256 * 1024];
    loop {
        let n = Patient::new(&stream).read(&mut buf)?;
        if n == 0 {
            break;
        }
        pattern(got, &mut expected[..n]);
        if buf[..n] != expected[..n] {
            bail!("downloaded bytes differ from the pattern at offset {got}");
        }
        got += n as u64;
    }
    if got != total {
        bail!("downloaded {got} bytes, expected {total}");
    }
    Ok(())
}

/// Request/response latency: `connections` clients each send `size` bytes to an echo server
/// and wait for them back, for `duration`. Returns (histogram in ns, round trips).
pub fn request_response(
    connect: &(dyn Fn() -> io::Result<TcpStream> + Sync),
    connections: usize,
    size: usize,
    duration: Duration,
) -> Result<hdrhistogram::Histogram<u64>> {
    let deadline = Instant::now() + duration;
    let results: Vec<Result<hdrhistogram::Histogram<u64>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                scope.spawn(|| -> Result<hdrhistogram::Histogram<u64>> {
                    let mut stream = connect()?;
                    read_greeting(&mut stream)?;
                    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
                    let request = vec![0x5a; size];
                    let mut response = vec![0u8; size];
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        stream.write_all(&request)?;
                        Patient::new(&stream).read_exact(&mut response)?;
                        histogram.record(start.elapsed().as_nanos() as u64)?;
                    }
                    Ok(histogram)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("client panicked")))
            .collect()
    });
    let mut total = hdrhistogram::Histogram::<u64>::new(3)?;
    for histogram in results {
        total.add(histogram?)?;
    }
    Ok(total)
}

/// New connections per second: each of `clients` loops connect, one echo, close.
pub fn connection_rate(
    connect: &(dyn Fn() -> io::Result<TcpStream> + Sync),
    clients: usize,
    duration: Duration,
) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let counts: Vec<Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> Result<u64> {
                    let mut done = 0;
                    while Instant::now() < deadline {
                        let mut stream = connect()?;
                        read_greeting(&mut stream)?;
                        stream.write_all(b"x")?;
                        let mut one = [0u8; 1];
                        Patient::new(&stream).read_exact(&mut one)?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("client panicked")))
            .collect()
    });
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
