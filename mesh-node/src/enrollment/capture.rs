//! Capturing one pod: its listeners opened in its network namespace (or taken over from a
//! predecessor), the kernel told of it, and its proxies started. All or nothing: every listener
//! is opened before the kernel is told anything.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::Arc,
};

use mesh_common::{ENROLLED_IPV6_OUTBOUND, EnrolledPod, PodAddr, ports};
use tokio::net::TcpListener;

use super::{ActivePod, Enrollment, Error};
use crate::{
    netns::{NetNs, netns_cookie},
    pods::Pod,
    proxy::{PodContext, serve_hbone, serve_inbound, serve_outbound},
};

impl Enrollment {
    pub(super) fn enroll(&mut self, pod: &Pod) -> Result<ActivePod, Error> {
        let key = pod.key();
        let identity = pod
            .identity(&self.state.config.trust_domain)
            .map_err(|source| Error::Identity {
                pod: key.clone(),
                source,
            })?;
        let netns = open_sandbox(pod)?;
        // A predecessor's listener is taken only in the namespace the pod has now.
        let mut inherited = self
            .inherited
            .as_mut()
            .map(|inherited| (inherited, probe_cookie(&netns)));
        let mut listeners = Vec::new();
        let mut listen = |addr: SocketAddr| {
            let taken = match &mut inherited {
                Some((inherited, Some(cookie))) => inherited.take(&key, *cookie, addr),
                _ => None,
            };
            let listener = match taken {
                Some(listener) => listener,
                None => open_listener(&netns, addr).map_err(|source| Error::Listener {
                    pod: key.clone(),
                    addr,
                    source,
                })?,
            };
            listeners.push((addr, listener.as_raw_fd()));
            Ok(listener)
        };
        let outbound = listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports::OUTBOUND))?;
        // Native IPv6 is captured only where the pod has it; without it no IPv6 path exists.
        // Any other failure (the port taken in the pod) fails the enrollment: IPv6 connects
        // would otherwise go out uncaptured.
        let outbound6 = match listen(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), ports::OUTBOUND)) {
            Ok(listener) => Some(listener),
            Err(Error::Listener { source, .. }) if no_ipv6(&source) => None,
            Err(error) => return Err(error),
        };
        let inbound = listen(SocketAddr::new(
            Ipv4Addr::LOCALHOST.into(),
            ports::INBOUND_PLAINTEXT,
        ))?;
        // sk_lookup steers each of the pod's addresses to the listener of its family.
        let mut inbound_keys = vec![(
            PodAddr::v4(u32::from_ne_bytes(pod.ip.octets())),
            inbound.as_raw_fd(),
        )];
        let ipv6_addresses = netns.global_ipv6_addresses().unwrap_or_default();
        let inbound6 = if ipv6_addresses.is_empty() {
            None
        } else {
            let listener = listen(SocketAddr::new(
                Ipv6Addr::LOCALHOST.into(),
                ports::INBOUND_PLAINTEXT,
            ))?;
            inbound_keys.extend(
                ipv6_addresses
                    .iter()
                    .map(|ip| (PodAddr::v6(ip.octets()), listener.as_raw_fd())),
            );
            Some(listener)
        };
        // HBONE listens on the pod's own addresses, dual-stack; sk_lookup leaves port 15008
        // alone. Opened before the kernel is told of the pod, like every listener.
        let hbone = match self.state.hbone {
            Some(_) => Some(
                listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), ports::HBONE)).or_else(
                    |_| listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), ports::HBONE)),
                )?,
            ),
            None => None,
        };
        let cookie = netns_cookie(&outbound).map_err(|source| Error::Listener {
            pod: key.clone(),
            addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports::OUTBOUND),
            source,
        })?;
        let flags = if outbound6.is_some() {
            ENROLLED_IPV6_OUTBOUND
        } else {
            0
        };
        let entry = EnrolledPod {
            ip4: u32::from_ne_bytes(pod.ip.octets()),
            flags,
        };
        self.dataplane
            .enroll(&netns, cookie, entry, &inbound_keys)
            .map_err(|source| Error::Dataplane {
                pod: key.clone(),
                source: Box::new(source),
            })?;
        let context = Arc::new(PodContext::new(pod.clone(), netns, cookie, identity));
        let mut tasks = Vec::new();
        if let Some(listener) = hbone {
            tasks.push(tokio::spawn(serve_hbone(
                tokio_listener(listener),
                context.clone(),
                self.state.clone(),
            )));
        }
        for listener in std::iter::once(outbound).chain(outbound6) {
            let listener = tokio_listener(listener);
            tasks.push(tokio::spawn(serve_outbound(
                listener,
                context.clone(),
                self.orig.clone(),
                self.state.clone(),
            )));
        }
        for listener in std::iter::once(inbound).chain(inbound6) {
            tasks.push(tokio::spawn(serve_inbound(
                tokio_listener(listener),
                context.clone(),
                self.state.clone(),
            )));
        }
        Ok(ActivePod {
            spec: pod.clone(),
            context,
            ipv6_outbound: flags != 0,
            inbound_keys: inbound_keys.into_iter().map(|(addr, _)| addr).collect(),
            ipv6_addresses,
            tasks,
            listeners,
        })
    }
}

/// The pod's network namespace, held open. In Kubernetes it is found through a process of the
/// pod (`/proc/<pid>/ns/net`): once the handle is open, that process must still be the pod's,
/// or the number may have been reused by another pod's process since the scan.
pub(super) fn open_sandbox(pod: &Pod) -> Result<NetNs, Error> {
    let netns = NetNs::open(&pod.netns).map_err(|source| Error::Netns {
        pod: pod.key(),
        path: pod.netns.display().to_string(),
        source,
    })?;
    if let Some(uid) = &pod.uid
        && !crate::sandbox::still_the_pods(&pod.netns, uid)
    {
        return Err(Error::SandboxChanged {
            pod: pod.key(),
            path: pod.netns.display().to_string(),
        });
    }
    Ok(netns)
}

/// The cookie of `netns` (from a socket made in it), if it can be read.
fn probe_cookie(netns: &NetNs) -> Option<u64> {
    netns
        .socket(socket2::Domain::IPV4)
        .and_then(|socket| netns_cookie(&socket))
        .ok()
}

/// Whether binding `[::1]` failed because the pod has no IPv6 at all.
fn no_ipv6(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
    )
}

fn open_listener(netns: &NetNs, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = netns.socket(socket2::Domain::for_address(addr))?;
    if addr.is_ipv6() {
        // `[::]` means both families; a specific IPv6 address means just that one.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn tokio_listener(listener: std::net::TcpListener) -> TcpListener {
    // The socket is non-blocking and this runs inside the runtime: from_std cannot fail
    // except on a closed fd, which we just made.
    TcpListener::from_std(listener).expect("registering a fresh listener with the runtime")
}
