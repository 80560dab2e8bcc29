//! Generates the gRPC service from `proto/shardforge.proto` with protox, a
//! protobuf compiler written in Rust: building needs no `protoc`. The
//! compiled descriptors are also written out (`shardforge_descriptor.bin`
//! in `OUT_DIR`) for the reflection service.

// Cargo reads a build script's instructions from its standard output.
#![allow(clippy::disallowed_macros)]

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/shardforge.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("shardforge_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
