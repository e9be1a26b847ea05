//! The ClientHello parser the ingress reads SNI with, on the first bytes of any connection.
//! Properties: never a panic; a server name it returns is printable ASCII without a slash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_waypoint::sni::{ClientHello, parse};

fuzz_target!(|data: &[u8]| {
    if let ClientHello::Complete(Some(name)) = parse(data) {
        assert!(
            name.bytes().all(|b| b.is_ascii_graphic() && b != b'/'),
            "server name {name:?}"
        );
    }
});
