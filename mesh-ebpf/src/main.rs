//! Ambit's kernel programs: capture of enrolled pods' traffic into the node agent.
//!
//! Nothing here is pod-specific at load time: a pod is captured when its network-namespace
//! cookie is in [`ENROLLED_PODS`], and released when it is removed. Every program checks that
//! map first, so on a node where nothing is enrolled each costs one hash lookup.
//!
//! # Layout
//! - [`ambit_connect4`] / [`ambit_connect6`]: outbound capture (`cgroup/connect4`, `connect6`);
//! - [`ambit_sock_ops`]: re-keys original destinations by client port; feeds the accelerator;
//! - [`ambit_sk_lookup`]: inbound capture, attached per pod network namespace;
//! - [`ambit_sk_msg`]: splices the app <-> agent loopback hop.
#![no_std]
#![no_main]

mod capture;
mod inbound;
mod sockops;

use aya_ebpf::{
    btf_maps::{Array, HashMap, HashOfMaps, LruHashMap, SkStorage, SockHash},
    macros::btf_map,
};
use mesh_common::{EnrolledPod, NodeConfig, OrigDst, OrigDstKey, PodAddr, SockKey};

/// Capacity sized for a large node (ztunnel's default pod limit is far below this).
const MAX_PODS: usize = 4096;
/// Established connects of one pod whose original destination the agent has not read yet
/// (read as each connection is accepted; see `mesh_common::PENDING_PER_POD`).
const PENDING_PER_POD: usize = mesh_common::PENDING_PER_POD as usize;
/// Loopback app <-> agent sockets that can be spliced at once (two per connection).
const MAX_ACCEL_SOCKS: usize = 65536;

#[btf_map]
static ENROLLED_PODS: HashMap<u64, EnrolledPod, MAX_PODS> = HashMap::new();

/// A redirected connect's original destination, kept on the connecting socket itself until
/// `sock_ops` sees it established: the kernel frees it with the socket, so there is no shared
/// capacity one pod could exhaust and nothing to age out.
#[btf_map]
static CONNECT_DSTS: SkStorage<OrigDst> = SkStorage::new();

/// Per enrolled pod (network-namespace cookie), its own LRU of original destinations awaiting
/// the agent's accept, keyed by the client's family, address and port. The agent creates each
/// pod's map at enrollment: one pod's connect storm can only evict its own entries.
#[btf_map]
static ORIG_DSTS: HashOfMaps<u64, LruHashMap<OrigDstKey, OrigDst, PENDING_PER_POD>, MAX_PODS> =
    HashOfMaps::new();

#[btf_map]
static INBOUND_LISTENS: SockHash<PodAddr, { 4 * MAX_PODS }> = SockHash::new();

#[btf_map]
static ACCEL_SOCKS: SockHash<SockKey, MAX_ACCEL_SOCKS> = SockHash::new();

#[btf_map]
static NODE_CONFIG: Array<NodeConfig, 1> = Array::new();

/// See `mesh_common::maps::POD_CGROUP_PARENTS`.
#[btf_map]
static POD_CG_PARENTS: HashMap<u64, u8, 16> = HashMap::new();

/// See `mesh_common::maps::DECIDED_PODS`.
#[btf_map]
static DECIDED_PODS: HashMap<u64, u8, MAX_PODS> = HashMap::new();

/// The node's configuration, or an all-zero one before the agent wrote it (no acceleration,
/// and agent cgroup 0, which no task has).
#[inline(always)]
fn node_config() -> NodeConfig {
    NODE_CONFIG.get(0).copied().unwrap_or_default()
}

/// `127.0.0.0/8`, from an address in network order.
#[inline(always)]
fn is_loopback4(ip_be: u32) -> bool {
    u32::from_be(ip_be) >> 24 == 127
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The connect and sock_ops helpers used here are not GPL-only, but `bpf_sk_assign` callers
/// conventionally declare a GPL-compatible licence, as aya-template does.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
