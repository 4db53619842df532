//! Generates the slipway.v1 Rust code from `proto/slipway/v1/*.proto` with protox,
//! a pure-Rust protobuf compiler, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/slipway/v1/slipway.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Every stream starts with 1 KiB buffers instead of tonic's 8 KiB ones
    // (`src/codec.rs`): an idle agent session costs the controller less.
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
