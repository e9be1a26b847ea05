//! Types and names shared by Ambit's kernel programs (`mesh-ebpf`) and the node agent.
//!
//! Every type here crosses the user/kernel boundary as raw bytes through a BPF map, so each is
//! `#[repr(C)]` with explicit padding: the kernel compares keys byte for byte, and an
//! uninitialised padding byte would make two equal keys differ.
//!
//! Byte order: addresses are kept in network order (as the kernel hands them to programs),
//! ports in host order (programs convert once, user space never has to guess).
//!
//! # Layout
//! - map and program names, and their pin paths (`maps`, `programs`);
//! - the agent's well-known ports (`ports`);
//! - map keys and values (`EnrolledPod`, `OrigDst`, `OrigDstKey`, `SockKey`, `NodeConfig`),
//!   and the per-pod capacity of pending original destinations (`PENDING_PER_POD`).
#![no_std]
#![deny(unsafe_code)]

#[cfg(feature = "user")]
mod pod_impls;

/// Map names as they appear in the ELF object (and so in `bpftool map show`), with the file
/// name each is pinned as under the agent's bpffs directory.
pub mod maps {
    /// Enrolled pods, keyed by network-namespace cookie: the only switch for capture.
    pub const ENROLLED_PODS: &str = "ENROLLED_PODS";
    /// Original destinations of redirected connects, in the connecting socket's local storage
    /// until it is established.
    pub const CONNECT_DSTS: &str = "CONNECT_DSTS";
    /// Per pod (netns cookie), a map of its own of original destinations keyed by the client's
    /// [`crate::OrigDstKey`], read by the agent on accept.
    pub const ORIG_DSTS: &str = "ORIG_DSTS";
    /// Each enrolled pod's inbound listeners, keyed by pod address ([`crate::PodAddr`]), for
    /// `sk_lookup` (which cannot read the network-namespace cookie).
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENS";
    /// App <-> agent loopback sockets, for `sk_msg` redirection.
    pub const ACCEL_SOCKS: &str = "ACCEL_SOCKS";
    /// One-element array of [`crate::NodeConfig`].
    pub const NODE_CONFIG: &str = "NODE_CONFIG";
    /// cgroup ids of the cgroups the kubelet makes pods' cgroups in (`kubepods` and its QoS
    /// classes): a child of one of them is a pod.
    pub const POD_CGROUP_PARENTS: &str = "POD_CG_PARENTS";
    /// cgroup ids of the pods the agent has decided about (captured, or not in the mesh). A pod
    /// cgroup not in it is one that just started: its connects are refused until it is.
    pub const DECIDED_PODS: &str = "DECIDED_PODS";

    /// Pins of map layouts older agents used, removed at start (a pinned map is reused by name,
    /// so an old layout must never be picked up by new programs).
    pub const RETIRED_PINS: [&str; 3] = ["connect_dsts", "orig_dsts", "node_config"];

    /// Every map with the file name it is pinned as.
    pub const PINNED: [(&str, &str); 8] = [
        (ENROLLED_PODS, "enrolled_pods"),
        (CONNECT_DSTS, "connect_dsts_by_socket"),
        (ORIG_DSTS, "orig_dsts_by_pod"),
        (INBOUND_LISTENERS, "inbound_listeners"),
        (ACCEL_SOCKS, "accel_socks"),
        // `_v2`: the value gained the predecessor's cgroup (the old layout is retired).
        (NODE_CONFIG, "node_config_v2"),
        (POD_CGROUP_PARENTS, "pod_cgroup_parents"),
        (DECIDED_PODS, "decided_pods"),
    ];
}

/// Program (function) names in the ELF object; the kernel shows them truncated to 15 bytes.
pub mod programs {
    pub const CONNECT4: &str = "ambit_connect4";
    pub const CONNECT6: &str = "ambit_connect6";
    pub const SOCK_OPS: &str = "ambit_sock_ops";
    pub const SK_LOOKUP: &str = "ambit_sk_lookup";
    pub const SK_MSG: &str = "ambit_sk_msg";
}

/// Ports the agent listens on inside each enrolled pod (the same numbers as Istio's).
pub mod ports {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    pub const HBONE: u16 = 15008;
}

/// `127.0.0.6`: the source address the agent delivers inbound IPv4 connections to the app
/// from, so that `sk_lookup` does not capture them a second time (as Istio does).
pub const INBOUND_DELIVERY_SOURCE: [u8; 4] = [127, 0, 0, 6];
/// IPv6 has one loopback address, so inbound IPv6 is delivered from `::1`.
pub const INBOUND_DELIVERY_SOURCE6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Key of [`maps::INBOUND_LISTENERS`]: an IPv6 address, or an IPv4 one mapped into
/// `::ffff:0:0/96`, as four words each in network order (the kernel's `local_ip6` layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodAddr {
    pub words: [u32; 4],
}

/// The third word of a v4-mapped address, network order.
pub const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl PodAddr {
    /// From an IPv4 address in network order.
    pub const fn v4(ip4_be: u32) -> Self {
        Self {
            words: [0, 0, V4_MAPPED_PREFIX, ip4_be],
        }
    }

    pub const fn v6(o: [u8; 16]) -> Self {
        Self {
            words: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }
}

/// Value of [`maps::ENROLLED_PODS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolledPod {
    /// The pod's IPv4 address, network order: lets the kernel side tell the pod's own
    /// address from loopback without another lookup.
    pub ip4: u32,
    /// `ENROLLED_*` flags.
    pub flags: u32,
}

/// The agent opened `[::1]:15001` in this pod, so native IPv6 connects can be captured.
pub const ENROLLED_IPV6_OUTBOUND: u32 = 1;

/// Address family tag in [`OrigDst::family`] (values of `AF_INET` / `AF_INET6`).
pub const FAMILY_INET: u32 = 2;
pub const FAMILY_INET6: u32 = 10;

/// Where a captured connection was going before `connect4/6` rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u32,
    /// Destination port, host order.
    pub port: u32,
    /// IPv4 address in `addr[0]`, or the IPv6 address; network order in each word.
    pub addr: [u32; 4],
}

/// Capacity of each pod's map in [`maps::ORIG_DSTS`]: established connects whose original
/// destination the agent has not read yet. Past it the pod's oldest entry is evicted, and the
/// agent refuses that connection (it fails closed, and only in that pod). The kernel's LRU hands
/// each CPU free slots in batches of 128, so on nodes with more than 16 CPUs eviction can start
/// before the map is full; the size should then grow with the CPU count.
pub const PENDING_PER_POD: u32 = 2048;

/// Key of each pod's map in [`maps::ORIG_DSTS`]: the client socket as the agent sees it when it
/// accepts (the pod is known from the listener), so a v4 and a v6 socket on one port, or two
/// addresses with one port, never share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDstKey {
    /// [`FAMILY_INET`] (also for a dual-stack socket on a v4-mapped address, which reaches the
    /// agent as IPv4) or [`FAMILY_INET6`].
    pub family: u32,
    /// Client port, host order.
    pub port: u32,
    /// Client address as IPv6 words, network order; IPv4 mapped into `::ffff:0:0/96`.
    pub addr: [u32; 4],
}

impl OrigDstKey {
    /// From an IPv4 address in network order.
    pub const fn v4(ip4_be: u32, port: u32) -> Self {
        Self {
            family: FAMILY_INET,
            port,
            addr: [0, 0, V4_MAPPED_PREFIX, ip4_be],
        }
    }

    pub const fn v6(octets: [u8; 16], port: u32) -> Self {
        Self {
            family: FAMILY_INET6,
            port,
            addr: PodAddr::v6(octets).words,
        }
    }
}

/// Key of [`maps::ACCEL_SOCKS`]: a TCP socket as seen from its own side. The netns cookie is
/// part of the key because every pod has the same loopback 4-tuples.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    pub netns_cookie: u64,
    /// Network order.
    pub local_ip4: u32,
    /// Network order.
    pub remote_ip4: u32,
    /// Host order.
    pub local_port: u32,
    /// Host order.
    pub remote_port: u32,
}

impl SockKey {
    /// The key under which the other end of this connection is stored.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            netns_cookie: self.netns_cookie,
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Value of [`maps::NODE_CONFIG`], written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// cgroup v2 id of the agent: its sockets inside a pod are never captured.
    pub agent_cgroup_id: u64,
    /// cgroup v2 id of the agent this one took over from (0 if none): while it drains, the
    /// connections it still opens (deliveries to apps, HBONE out) must not be captured either.
    /// In Kubernetes the two run in different pods, so in different cgroups.
    pub predecessor_cgroup_id: u64,
    /// `NODE_*` flags.
    pub flags: u64,
}

/// How deep below the cgroup v2 root the programs look for a pod's cgroup (real nodes:
/// `kubepods.slice/kubepods-burstable.slice/<pod>/<container>` is 4 levels).
pub const MAX_CGROUP_DEPTH: i32 = 10;

/// Splice the app <-> agent loopback hop with `sk_msg` (new connections only: switching in the
/// middle of a stream would reorder bytes).
pub const NODE_ACCELERATE: u64 = 1;
