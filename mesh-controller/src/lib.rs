//! Ambit's controller as a library: today the certificate authority; the control-plane issue
//! adds resource types, validation, config sources and the config stream.
//!
//! # Layout
//! - `ca`: the mesh's root, and signing workload certificates for SPIFFE identities.
pub mod ca;
