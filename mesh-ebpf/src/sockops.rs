//! `sock_ops`: turns connect-time records into something the agent can look up, and puts both
//! ends of the app <-> agent loopback hop into the sockhash that `sk_msg` splices.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, sk_action::SK_PASS,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_common::{NODE_ACCELERATE, OrigDstKey, SockKey, ports};

use crate::{ACCEL_SOCKS, CONNECT_DSTS, ENROLLED_PODS, ORIG_DSTS, is_loopback4, node_config};

const AF_INET: u32 = 2;

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
        // SAFETY: reads only the context's socket.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied before the map is changed.
        if let Some(dst) = unsafe { CONNECT_DSTS.get(cookie) }.copied() {
            let key = OrigDstKey {
                netns_cookie: netns,
                port: ctx.local_port(),
                _pad: 0,
            };
            let _ = ORIG_DSTS.insert(key, dst, u64::from(BPF_ANY));
            let _ = CONNECT_DSTS.remove(cookie);
        }
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
