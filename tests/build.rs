//! Generates the lab applications' gRPC code from proto/lab.proto with a
//! pure-Rust protobuf compiler, so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/lab.proto");
    let descriptors = protox::compile(["proto/lab.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
