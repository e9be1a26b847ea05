//! The waypoint's HTTP/1.1 response decoder, fed what an upstream sends, in pieces of any size.
//! Properties: never a panic or a hang; the same bytes decode the same way however they are
//! split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_waypoint::upstream::decode_response;

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let split = usize::from(control & 0x7f) + 1;
    let head_request = control & 0x80 != 0;
    let whole = decode_response(wire, wire.len().max(1), head_request).map_err(|e| e.to_string());
    let pieces = decode_response(wire, split, head_request).map_err(|e| e.to_string());
    assert_eq!(whole, pieces, "the split changed the outcome");
});
