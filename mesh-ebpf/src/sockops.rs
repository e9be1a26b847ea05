//! `sock_ops`: turns connect-time records into something the agent can look up, and puts both
//! ends of the app <-> agent loopback hop into the sockhash that `sk_msg` splices.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, sk_action::SK_PASS,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_common::{
    FAMILY_INET, FAMILY_INET6, NODE_ACCELERATE, OrigDst, OrigDstKey, SockKey, ports,
};

use crate::{ACCEL_SOCKS, CONNECT_DSTS, ENROLLED_PODS, ORIG_DSTS, is_loopback4, node_config};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn ambit_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    // sock_ops return values are ignored for the established callbacks.
    1
}

fn try_sock_ops(ctx: &SockOpsContext) -> Option<()> {
    let op = ctx.op();
    let active = op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
    if !active && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return None;
    }
    // SAFETY: allowed in sock_ops; reads only the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // Attached at the cgroup root, this sees every TCP connection on the host: leave at once
    // unless the socket lives in an enrolled pod.
    // SAFETY: only tested for presence.
    unsafe { ENROLLED_PODS.get(netns) }?;

    if active {
        move_orig_dst(ctx, netns);
    }

    if node_config().flags & NODE_ACCELERATE == 0 || ctx.family() != AF_INET {
        return None;
    }
    let key = SockKey {
        netns_cookie: netns,
        local_ip4: ctx.local_ip4(),
        remote_ip4: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        // sock_ops hands the remote port in network order in the upper half.
        remote_port: u32::from_be(ctx.remote_port()),
    };
    let outbound_hop = key.local_port == u32::from(ports::OUTBOUND)
        || key.remote_port == u32::from(ports::OUTBOUND);
    if !outbound_hop || !is_loopback4(key.local_ip4) || !is_loopback4(key.remote_ip4) {
        return None;
    }
    // SAFETY: the context pointer is valid for this callback.
    let _ = ACCEL_SOCKS.update(key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY));
    Some(())
}

/// Moves a connect's original destination from its socket's storage to the pod's map, keyed as
/// the agent will see the client: family, address (v4 mapped into v6) and port.
#[inline(always)]
fn move_orig_dst(ctx: &SockOpsContext, netns: u64) -> Option<()> {
    // SAFETY: an 8-byte read of the context's socket pointer, which the verifier allows.
    let sk = unsafe { read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    let storage = core::ptr::addr_of!(CONNECT_DSTS).cast_mut().cast();
    // SAFETY: `sk` is this callback's non-null socket; no flags, so nothing is created.
    let dst = unsafe { bpf_sk_storage_get(storage, sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<OrigDst>();
    if dst.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket, copied out before it is deleted.
    let dst = unsafe { dst.read() };
    // SAFETY: as above; the storage is freed with the socket anyway, this frees it earlier.
    unsafe { bpf_sk_storage_delete(storage, sk.cast()) };
    let key = client_key(ctx)?;
    // SAFETY: the inner map reference is used only through BPF helpers.
    let pending = unsafe { ORIG_DSTS.get(&netns) }?;
    let _ = pending.insert(key, dst, u64::from(BPF_ANY));
    Some(())
}

/// The connecting socket as the agent's accepted socket sees its peer.
#[inline(always)]
fn client_key(ctx: &SockOpsContext) -> Option<OrigDstKey> {
    let port = ctx.local_port();
    match ctx.family() {
        AF_INET => Some(OrigDstKey::v4(ctx.local_ip4(), port)),
        AF_INET6 => {
            // SAFETY: 4-byte reads of the context's local address, as the verifier requires.
            let ip = unsafe {
                [
                    read_volatile(&(*ctx.ops).local_ip6[0]),
                    read_volatile(&(*ctx.ops).local_ip6[1]),
                    read_volatile(&(*ctx.ops).local_ip6[2]),
                    read_volatile(&(*ctx.ops).local_ip6[3]),
                ]
            };
            Some(OrigDstKey {
                family: if ip[0] == 0 && ip[1] == 0 && ip[2] == mesh_common::V4_MAPPED_PREFIX {
                    FAMILY_INET
                } else {
                    FAMILY_INET6
                },
                port,
                addr: ip,
            })
        }
        _ => None,
    }
}

#[sk_msg]
pub fn ambit_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the context pointer is the kernel's for the duration of the program.
    let md = unsafe { &*ctx.msg };
    // SAFETY: allowed in sk_msg; reads only the context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let own = SockKey {
        netns_cookie: netns,
        local_ip4: md.local_ip4,
        remote_ip4: md.remote_ip4,
        local_port: md.local_port,
        remote_port: u32::from_be(md.remote_port),
    };
    // Straight into the peer's receive queue. When the peer is not in the map (the hop is not
    // accelerated) the helper leaves the message alone and it takes the normal path.
    let _ = ACCEL_SOCKS.redirect_msg(&ctx, own.peer(), u64::from(BPF_F_INGRESS));
    SK_PASS
}
