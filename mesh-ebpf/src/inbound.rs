//! Inbound capture: `sk_lookup`, attached to each enrolled pod's network namespace, hands
//! connections for the pod's address to the agent's in-pod plaintext listener. The accepted
//! socket's local address is then the original destination.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_common::{INBOUND_DELIVERY_SOURCE, ports};

use crate::{INBOUND_LISTENS, is_loopback4};

const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;

#[sk_lookup]
pub fn ambit_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is the kernel's for the duration of the program.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP || lookup.family != AF_INET {
        return SK_PASS;
    }
    let port = lookup.local_port;
    if port == u32::from(ports::OUTBOUND)
        || port == u32::from(ports::INBOUND_PLAINTEXT)
        || port == u32::from(ports::HBONE)
    {
        return SK_PASS;
    }
    // The agent delivering a connection to the app, or the app's own loopback traffic
    // (including its redirected connect to 127.0.0.1:15001).
    if lookup.remote_ip4 == u32::from_ne_bytes(INBOUND_DELIVERY_SOURCE)
        || is_loopback4(lookup.local_ip4)
    {
        return SK_PASS;
    }
    match INBOUND_LISTENS.redirect_sk_lookup(&ctx, lookup.local_ip4, 0) {
        Ok(()) => SK_PASS,
        // This program is attached only to enrolled pods: no listener means the agent is down
        // or still starting. Refuse rather than deliver unauthenticated traffic to the app.
        Err(_) => SK_DROP,
    }
}
