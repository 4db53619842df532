//! Slipway's wire protocol, generated from `proto/slipway/v1/slipway.proto`.

pub mod codec;

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("slipway.v1");
}

/// Largest gRPC message either side decodes or encodes (blob chunks are 1 MiB,
/// manifests are bounded by the artifact crate).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Size of the chunks blobs travel in.
pub const CHUNK_BYTES: usize = 1024 * 1024;
