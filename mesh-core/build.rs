//! Generates the gRPC types of the certificate and configuration services (needs protoc: `cargo xtask setup`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/ca.proto", "proto/config.proto"], &["proto"])?;
    Ok(())
}
