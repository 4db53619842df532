//! Slipway's release format. A release is a deterministic tar compressed with zstd
//! (the *blob*, named by its sha256) plus a canonical JSON *manifest* listing every
//! entry; the manifest's own sha256 names the release. This crate packs, describes,
//! verifies and safely unpacks releases, and parses the release spec
//! (`slipway.toml`). It does no networking.

pub mod assemble;
mod decode;
pub mod digest;
pub mod manifest;
pub mod names;
pub mod objects;
pub mod pack;
pub mod settings;
pub mod spec;
pub mod tar_guard;
pub mod unpack;

pub use digest::{Digest, HashingReader, HashingWriter};
pub use manifest::{Entry, EntryKind, Manifest, ManifestError};
pub use names::{NameError, NameKind, validate_name};
pub use pack::{PackError, PackOutput, pack_dir};
pub use spec::{ReleaseSpec, SPEC_FILE, SpecError};
pub use unpack::{Limits, UnpackError, unpack_into};
