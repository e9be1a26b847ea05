//! Inbound capture: `sk_lookup`, attached to each enrolled pod's network namespace, hands
//! connections for the pod's addresses to the agent's in-pod plaintext listeners (one per
//! address family). The accepted socket's local address is then the original destination.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        bpf_sk_lookup,
        sk_action::{SK_DROP, SK_PASS},
    },
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;
use mesh_common::{INBOUND_DELIVERY_SOURCE, INBOUND_DELIVERY_SOURCE6, PodAddr, ports};

use crate::{INBOUND_LISTENS, is_loopback4};

const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sk_lookup]
pub fn ambit_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is the kernel's for the duration of the program.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let port = lookup.local_port;
    if port == u32::from(ports::OUTBOUND)
        || port == u32::from(ports::INBOUND_PLAINTEXT)
        || port == u32::from(ports::HBONE)
    {
        return SK_PASS;
    }
    let key = match lookup.family {
        AF_INET => match inbound_key4(lookup) {
            Some(key) => key,
            None => return SK_PASS,
        },
        AF_INET6 => match inbound_key6(ctx.lookup) {
            Some(key) => key,
            None => return SK_PASS,
        },
        _ => return SK_PASS,
    };
    match INBOUND_LISTENS.redirect_sk_lookup(&ctx, key, 0) {
        Ok(()) => SK_PASS,
        // Attached only to enrolled pods: no listener means the agent is down or still
        // starting. Refuse rather than deliver unauthenticated traffic to the app.
        Err(_) => {
            warn!(
                &ctx,
                "refused inbound connection to port {}: enrolled pod has no agent listener", port
            );
            SK_DROP
        }
    }
}

/// The key for an IPv4 connection to capture, or `None` for the agent's own delivery and the
/// pod's loopback traffic (including its redirected connect to 127.0.0.1:15001).
#[inline(always)]
fn inbound_key4(lookup: &bpf_sk_lookup) -> Option<PodAddr> {
    if lookup.remote_ip4 == u32::from_ne_bytes(INBOUND_DELIVERY_SOURCE)
        || is_loopback4(lookup.local_ip4)
    {
        return None;
    }
    Some(PodAddr::v4(lookup.local_ip4))
}

#[inline(always)]
fn inbound_key6(lookup: *mut bpf_sk_lookup) -> Option<PodAddr> {
    // The verifier accepts only 4-byte reads of the address words: volatile, one by one.
    // SAFETY: in-bounds context reads.
    let (local, remote) = unsafe {
        (
            [
                read_volatile(&(*lookup).local_ip6[0]),
                read_volatile(&(*lookup).local_ip6[1]),
                read_volatile(&(*lookup).local_ip6[2]),
                read_volatile(&(*lookup).local_ip6[3]),
            ],
            [
                read_volatile(&(*lookup).remote_ip6[0]),
                read_volatile(&(*lookup).remote_ip6[1]),
                read_volatile(&(*lookup).remote_ip6[2]),
                read_volatile(&(*lookup).remote_ip6[3]),
            ],
        )
    };
    let loopback6 = PodAddr::v6(INBOUND_DELIVERY_SOURCE6).words;
    // fe80::/10: link-local traffic (neighbour discovery's TCP cousins) is not a pod's service.
    let link_local = u32::from_be(local[0]) >> 22 == 0x3fa;
    if remote == loopback6 || local == loopback6 || link_local {
        return None;
    }
    Some(PodAddr { words: local })
}
