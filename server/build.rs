//! Generates the gRPC service from `proto/shardforge.proto` with protox, a
//! protobuf compiler written in Rust: building needs no `protoc`.

// Cargo reads a build script's instructions from its standard output.
#![allow(clippy::disallowed_macros)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/shardforge.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
