//! Outbound capture: an enrolled pod's `connect()` is rewritten to the agent's in-pod outbound
//! listener, and the original destination is recorded under the socket's cookie.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{
    ENROLLED_IPV6_OUTBOUND, EnrolledPod, FAMILY_INET, FAMILY_INET6, MAX_CGROUP_DEPTH, OrigDst,
    V4_MAPPED_PREFIX, ports,
};

use crate::{CONNECT_DSTS, DECIDED_PODS, ENROLLED_PODS, POD_CG_PARENTS, is_loopback4, node_config};

const IPPROTO_TCP: u32 = 6;
/// A `cgroup/connect*` program returns 1 to let the connect proceed. Capture itself never
/// refuses a connect: if the agent is down the rewritten connect is refused by the kernel,
/// which fails closed without a decision here.
const CONNECT_PROCEED: i32 = 1;
/// 0 fails the connect with EPERM: a pod that just started and is not decided yet.
const CONNECT_REFUSE: i32 = 0;

const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6_LAST_WORD: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

/// What a connect is to capture.
enum Connecting {
    /// From an enrolled pod: redirected to its agent.
    Pod(EnrolledPod),
    /// Not ours: the agent itself, another protocol, or a pod outside the mesh.
    Ignored,
    /// From a pod whose cgroup appeared and that the agent has not decided about yet.
    Undecided,
}

#[cgroup_sock_addr(connect4)]
pub fn ambit_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Some(Held) => CONNECT_REFUSE,
        None => CONNECT_PROCEED,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn ambit_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Some(Held) => CONNECT_REFUSE,
        None => CONNECT_PROCEED,
    }
}

/// A connect refused because its pod is not decided yet.
struct Held;

/// Whose connect this is: an enrolled pod's, a pod's that just started and is not decided
/// yet, or one capture leaves alone (not TCP, the agent itself, a pod outside the mesh).
#[inline(always)]
fn connecting(ctx: &SockAddrContext) -> Connecting {
    // SAFETY: the context pointer is the kernel's for the duration of the program.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return Connecting::Ignored;
    }
    // SAFETY: no arguments; reads the current task's cgroup.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let node = node_config();
    if cgroup == node.agent_cgroup_id || cgroup == node.predecessor_cgroup_id {
        return Connecting::Ignored;
    }
    // SAFETY: bpf_get_netns_cookie is allowed for sock_addr programs and reads only the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before any other map operation.
    if let Some(pod) = unsafe { ENROLLED_PODS.get(netns) }.copied() {
        return Connecting::Pod(pod);
    }
    if undecided_pod() {
        Connecting::Undecided
    } else {
        Connecting::Ignored
    }
}

/// Whether the current task is in a pod's cgroup (a child of one of the kubelet's pod cgroup
/// parents) that is not in [`DECIDED_PODS`]: a pod that just started, before the agent has
/// captured it or let it go. Decided by the cgroup tree, not by anything the pod says.
#[inline(always)]
fn undecided_pod() -> bool {
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: reads the current task's cgroup ancestry; 0 past its own cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: presence checks only.
        if unsafe { POD_CG_PARENTS.get(&id) }.is_some() {
            // SAFETY: as above.
            let pod = unsafe { bpf_get_current_ancestor_cgroup_id(level + 1) };
            // A QoS class below `kubepods` is a parent itself, not a pod: keep descending.
            if pod != 0 && unsafe { POD_CG_PARENTS.get(&pod) }.is_none() {
                return unsafe { DECIDED_PODS.get(&pod) }.is_none();
            }
        }
        level += 1;
    }
    false
}

#[inline(always)]
fn record(ctx: &SockAddrContext, dst: &OrigDst) {
    let mut dst = *dst;
    // If the kernel cannot allocate the storage the connect still goes to the agent, which
    // then finds no original destination and refuses it: failing closed rather than letting
    // traffic escape capture.
    // SAFETY: the context's socket is the one connecting; the value is copied into storage.
    let stored = unsafe { CONNECT_DSTS.get_or_insert_ptr_mut(ctx, Some(&mut dst)) };
    if !stored.is_null() {
        // A socket that connects again (after a failed attempt) already has storage, which
        // `get_or_insert` returns unchanged: the new destination must replace it.
        // SAFETY: non-null storage of this socket, valid for the program's run.
        unsafe { stored.write(dst) };
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Option<Held> {
    let undecided = match connecting(ctx) {
        Connecting::Pod(_) => false,
        Connecting::Undecided => true,
        Connecting::Ignored => return None,
    };
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte accesses to fields the verifier allows for connect4.
    let (ip, port_be) = unsafe {
        (
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
        )
    };
    if is_loopback4(ip) {
        return None;
    }
    // Inside the pod (loopback) is allowed; out of it waits for the agent's decision.
    if undecided {
        return Some(Held);
    }
    let dst = OrigDst {
        family: FAMILY_INET,
        port: u32::from(u16::from_be(port_be as u16)),
        addr: [ip, 0, 0, 0],
    };
    record(ctx, &dst);
    // SAFETY: as above; connect4 may rewrite user_ip4 and user_port.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, LOOPBACK4);
        write_volatile(&mut (*sa).user_port, u32::from(ports::OUTBOUND.to_be()));
    }
    None
}

fn try_connect6(ctx: &SockAddrContext) -> Option<Held> {
    let pod = match connecting(ctx) {
        Connecting::Pod(pod) => Some(pod),
        Connecting::Undecided => None,
        Connecting::Ignored => return None,
    };
    let sa = ctx.sock_addr;
    // The verifier accepts only 4-byte reads of user_ip6: read word by word, volatile so the
    // compiler cannot merge them.
    // SAFETY: in-bounds 4-byte context reads.
    let ip = unsafe {
        [
            read_volatile(&(*sa).user_ip6[0]),
            read_volatile(&(*sa).user_ip6[1]),
            read_volatile(&(*sa).user_ip6[2]),
            read_volatile(&(*sa).user_ip6[3]),
        ]
    };
    // SAFETY: as above.
    let port_be = unsafe { read_volatile(&(*sa).user_port) };
    let port = u32::from(u16::from_be(port_be as u16));
    let v4_mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_PREFIX;
    let (dst, listener) = if v4_mapped {
        // A dual-stack socket reaching an IPv4 peer never passes connect4.
        if is_loopback4(ip[3]) {
            return None;
        }
        let dst = OrigDst {
            family: FAMILY_INET,
            port,
            addr: [ip[3], 0, 0, 0],
        };
        if pod.is_none() {
            return Some(Held);
        }
        (dst, [0, 0, V4_MAPPED_PREFIX, LOOPBACK4])
    } else {
        if ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == LOOPBACK6_LAST_WORD {
            return None;
        }
        let Some(pod) = pod else {
            return Some(Held);
        };
        if pod.flags & ENROLLED_IPV6_OUTBOUND == 0 {
            // No [::1]:15001 in this pod (IPv6 is off there), so no IPv6 path exists to leak.
            return None;
        }
        (
            OrigDst {
                family: FAMILY_INET6,
                port,
                addr: ip,
            },
            [0, 0, 0, LOOPBACK6_LAST_WORD],
        )
    };
    record(ctx, &dst);
    // SAFETY: 4-byte context writes that connect6 may make.
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], listener[0]);
        write_volatile(&mut (*sa).user_ip6[1], listener[1]);
        write_volatile(&mut (*sa).user_ip6[2], listener[2]);
        write_volatile(&mut (*sa).user_ip6[3], listener[3]);
        write_volatile(&mut (*sa).user_port, u32::from(ports::OUTBOUND.to_be()));
    }
    None
}
