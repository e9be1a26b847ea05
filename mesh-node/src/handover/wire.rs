//! The hand-over socket: a `SOCK_SEQPACKET` Unix socket (message boundaries kept), each
//! message one JSON document with the sockets it names attached (`SCM_RIGHTS`). Only a peer
//! running as the same user (root) is talked to, and the socket file is the agent's alone
//! (mode 0600 in a 0700 directory): a pod never sees the host's file system, and a process
//! that could reach the file could take over the node anyway.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, sockopt,
};
use serde::{Serialize, de::DeserializeOwned};

/// Largest message: a pod's listeners or the node's endpoints are a few hundred bytes.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most sockets one message carries (a pod has at most six listeners).
const MAX_FDS: usize = 16;
/// A peer that does not answer within this is given up on: the hand-over is abandoned and
/// whoever holds the listeners keeps them.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// One end of a hand-over conversation.
pub struct Channel(OwnedFd);

/// The listening end, bound at the agent's hand-over path.
pub struct Server(OwnedFd);

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

impl Server {
    /// Binds `path`, replacing a stale file (an agent that died left it; a live one was
    /// asked first, by [`Channel::connect`]).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = seqpacket()?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, Backlog::new(4)?)?;
        Ok(Self(fd))
    }

    /// The next successor, once it proved it runs as this process' user.
    pub fn accept(&self) -> std::io::Result<Channel> {
        loop {
            let fd = socket::accept4(self.0.as_fd(), SockFlag::SOCK_CLOEXEC)?;
            let channel = Channel::new(fd)?;
            match channel.same_user() {
                Ok(()) => return Ok(channel),
                Err(error) => tracing::warn!(%error, "hand-over refused"),
            }
        }
    }
}

impl Channel {
    /// Connects to the agent serving `path`; `Ok(None)` when none does (no file, or a file
    /// an agent that is gone left behind).
    pub fn connect(path: &Path) -> std::io::Result<Option<Self>> {
        let fd = seqpacket()?;
        match socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => return Ok(None),
            Err(errno) => return Err(errno.into()),
        }
        let channel = Self::new(fd)?;
        channel.same_user()?;
        Ok(Some(channel))
    }

    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let socket = socket2::SockRef::from(&fd);
        socket.set_read_timeout(Some(PEER_TIMEOUT))?;
        socket.set_write_timeout(Some(PEER_TIMEOUT))?;
        Ok(Self(fd))
    }

    /// Refuses a peer that is not running as this process' user.
    fn same_user(&self) -> std::io::Result<()> {
        let peer = socket::getsockopt(&self.0, sockopt::PeerCredentials)?;
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        if peer.uid() != own {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "hand-over peer pid {} runs as uid {}, not {own}",
                    peer.pid(),
                    peer.uid()
                ),
            ));
        }
        Ok(())
    }

    /// Sends `message` with `fds` attached (at most 16).
    pub fn send<T: Serialize>(&self, message: &T, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        self.send_raw(message, fds).map_err(timed_out)
    }

    /// The next message and the sockets attached to it.
    pub fn recv<T: DeserializeOwned>(&self) -> std::io::Result<(T, Vec<OwnedFd>)> {
        self.recv_raw().map_err(timed_out)
    }

    fn send_raw<T: Serialize>(&self, message: &T, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(std::io::Error::other(format!(
                "hand-over message too large: {} bytes, {} sockets",
                body.len(),
                fds.len()
            )));
        }
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let sent = socket::sendmsg::<UnixAddr>(
            self.0.as_raw_fd(),
            &[IoSlice::new(&body)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != body.len() {
            return Err(std::io::Error::other("hand-over message sent in part"));
        }
        Ok(())
    }

    fn recv_raw<T: DeserializeOwned>(&self) -> std::io::Result<(T, Vec<OwnedFd>)> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let message = socket::recvmsg::<UnixAddr>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for cmsg in message.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process
                    // for us; nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let truncated = message
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            (message.bytes, fds, truncated)
        };
        if len == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if truncated {
            return Err(std::io::Error::other("hand-over message truncated"));
        }
        let message = serde_json::from_slice(&body[..len]).map_err(std::io::Error::other)?;
        Ok((message, fds))
    }
}

/// The socket's timeout reads as EAGAIN: say what it means.
fn timed_out(error: std::io::Error) -> std::io::Error {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the other agent did not answer within {PEER_TIMEOUT:?}"),
        ),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn carries_a_message_and_its_sockets() {
        let dir = std::env::temp_dir().join(format!("ambit-wire-{}", std::process::id()));
        let path = dir.join("handover.sock");
        let server = Server::bind(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let channel = server.accept().unwrap();
            let (text, fds): (String, _) = channel.recv().unwrap();
            assert_eq!(text, "listeners");
            assert_eq!(fds.len(), 1);
            std::net::TcpListener::from(fds.into_iter().next().unwrap())
        });
        let channel = Channel::connect(&path)
            .unwrap()
            .expect("the server listens");
        channel.send(&"listeners", &[listener.as_fd()]).unwrap();
        let received = peer.join().unwrap();
        drop(listener);
        // The same listening socket: it still accepts on the same address.
        assert_eq!(received.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        received.accept().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_agent_is_none() {
        let path = std::env::temp_dir().join(format!("ambit-none-{}.sock", std::process::id()));
        assert!(Channel::connect(&path).unwrap().is_none());
    }
}
