//! Packet capture on one interface of a namespace (an AF_PACKET socket), to check what
//! actually crosses the wire between nodes.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::sys;

/// Collects every frame seen on an interface until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing on `interface` inside the namespace at `netns`.
    pub fn start(netns: &Path, interface: &str) -> Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        let fd = sys::in_netns(netns, || -> Result<OwnedFd> {
            // SAFETY: plain syscalls; the fd is owned right after.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                )
            };
            if raw < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: `name` is NUL-terminated.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                bail!("no interface {interface:?}");
            }
            // SAFETY: zeroed sockaddr_ll is valid; we fill what bind needs.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = index as i32;
            // SAFETY: addr is a valid sockaddr_ll of the given size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                bail!(
                    "binding the capture to {interface}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: timeval outlives the call.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            Ok(fd)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (flag, sink) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: reads into our buffer of the given length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(buf[..n as usize].to_vec());
                }
            }
        });
        Ok(Self {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// Stops and returns the frames seen.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.frames.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether `needle` occurs in any frame.
pub fn contains(frames: &[Vec<u8>], needle: &[u8]) -> bool {
    frames
        .iter()
        .any(|frame| frame.windows(needle.len()).any(|w| w == needle))
}

/// Whether any frame is IPv4 TCP to or from `port`.
pub fn has_tcp_port(frames: &[Vec<u8>], port: u16) -> bool {
    frames.iter().any(|f| {
        // Ethernet (14) + IPv4 with its header length, TCP ports first in the TCP header.
        if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
            return false;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let tcp = 14 + ihl;
        f.len() >= tcp + 4 && {
            let (src, dst) = (
                u16::from_be_bytes([f[tcp], f[tcp + 1]]),
                u16::from_be_bytes([f[tcp + 2], f[tcp + 3]]),
            );
            src == port || dst == port
        }
    })
}
