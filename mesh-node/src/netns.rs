//! Network namespaces: the agent creates sockets inside a pod's namespace, so the socket
//! belongs to the agent but carries the pod's addresses and is reached by the pod's loopback.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// `SO_NETNS_COOKIE`: not in every libc crate version.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    /// Held open so the namespace cannot be swapped under us between uses.
    file: File,
    /// For log lines and the config dump.
    path: PathBuf,
}

/// The agent's own namespace, opened once before any thread moves.
fn agent_netns() -> io::Result<&'static File> {
    static AGENT: OnceLock<File> = OnceLock::new();
    if let Some(file) = AGENT.get() {
        return Ok(file);
    }
    let file = File::open("/proc/self/ns/net")?;
    Ok(AGENT.get_or_init(|| file))
}

impl NetNs {
    pub fn open(path: &Path) -> io::Result<Self> {
        agent_netns()?;
        let file = File::open(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this thread with the thread inside the namespace, then moves back. `f` must
    /// not block on anything that could run other work on this thread (no `.await`): sockets
    /// made inside stay in the namespace for their whole life.
    pub fn enter<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let home = agent_netns()?;
        setns(self.file.as_fd())?;
        let result = f();
        if let Err(error) = setns(home.as_fd()) {
            // A thread stuck in a pod's namespace would open the agent's later sockets
            // there; nothing can be trusted after that.
            tracing::error!(%error, "cannot return to the agent's network namespace; aborting");
            std::process::abort();
        }
        result
    }

    /// Makes a TCP socket inside the namespace.
    pub fn socket(&self, domain: socket2::Domain) -> io::Result<socket2::Socket> {
        self.enter(|| {
            let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            socket.set_cloexec(true)?;
            Ok(socket)
        })
    }
}

impl NetNs {
    /// The global IPv6 addresses configured in the namespace (no loopback, no link-local):
    /// the pod's IPv6 service addresses, which `sk_lookup` must steer.
    pub fn global_ipv6_addresses(&self) -> io::Result<Vec<std::net::Ipv6Addr>> {
        self.enter(|| {
            let mut found = Vec::new();
            let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
            // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
            if unsafe { libc::getifaddrs(&mut list) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut entry = list;
            while !entry.is_null() {
                // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
                let ifa = unsafe { &*entry };
                // SAFETY: ifa_addr, when set, points at a sockaddr whose family says its size.
                if !ifa.ifa_addr.is_null()
                    && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET6
                {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    if !ip.is_loopback() && !ip.is_unicast_link_local() {
                        found.push(ip);
                    }
                }
                entry = ifa.ifa_next;
            }
            // SAFETY: `list` came from getifaddrs and is freed once.
            unsafe { libc::freeifaddrs(list) };
            Ok(found)
        })
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a namespace fd we hold open, and changes only this thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The cookie the kernel gives the namespace a socket lives in (what `bpf_get_netns_cookie`
/// returns for the same namespace).
pub fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `cookie`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
