//! The CONNECT request an HBONE server (node agent, waypoint) receives: method and authority
//! from the peer. Properties: never a panic; an accepted target is `ip:port` on the address
//! the connection arrived on, and never one of the proxy's own ports.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const PROXY_PORTS: [u16; 3] = [15001, 15006, 15008];

fuzz_target!(|data: &[u8]| {
    // method \0 authority \0 (header name \0 value \0)*
    let mut parts = data.split(|b| *b == 0);
    let method = parts.next().unwrap_or_default();
    let authority = parts.next().unwrap_or_default();
    let mut builder = http::Request::builder();
    if let Ok(method) = http::Method::from_bytes(method) {
        builder = builder.method(method);
    }
    if let Ok(authority) = std::str::from_utf8(authority) {
        builder = builder.uri(authority);
    }
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    if let Ok(target) = mesh_core::hbone::parse_connect(&request, LOCAL, &PROXY_PORTS) {
        assert_eq!(request.method(), http::Method::CONNECT);
        assert_eq!(target.ip(), LOCAL, "a target on another address");
        assert!(
            !PROXY_PORTS.contains(&target.port()),
            "a proxy port as target"
        );
    }
});
