//! Generates the destination service's gRPC code from its versioned `.proto`
//! with a pure-Rust protobuf compiler, so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/strait/destination/v1/destination.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
