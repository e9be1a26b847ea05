//! `aya::Pod` for the map types, so user space can read and write them.
//!
//! Kept apart because it is the crate's only `unsafe`, and only the agent needs it.
#![allow(unsafe_code)]

use crate::{EnrolledPod, NodeConfig, OrigDst, OrigDstKey, PodAddr, SockKey};

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers, with explicit padding
// fields, so every bit pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for EnrolledPod {}
// SAFETY: as above.
unsafe impl aya::Pod for OrigDst {}
// SAFETY: as above.
unsafe impl aya::Pod for OrigDstKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SockKey {}
// SAFETY: as above.
unsafe impl aya::Pod for NodeConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for PodAddr {}
