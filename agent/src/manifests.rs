//! Release manifests, fetched by digest once per release (a directive names a
//! manifest, it does not carry it) and kept under `manifests/<app>/<hex>`.
//! The newest one kept for the app is offered to the controller as the base:
//! the manifest comes compressed against it, which for a release that
//! changed a few files is a few hundred bytes. What arrives is bounded before
//! it is decompressed and must hash to the digest the signed directive names.

use std::path::{Path, PathBuf};

use artifact::Digest;
use artifact::manifest::MAX_MANIFEST_BYTES;
use proto::v1::FetchManifestRequest;
use proto::v1::agents_client::AgentsClient;
use tonic::transport::Channel;

/// Manifests kept per app (the base of the next fetch is among them).
const KEEP: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ManifestFetchError {
    #[error("fetch manifest {digest}: {status}")]
    Rpc {
        digest: String,
        status: Box<tonic::Status>,
    },
    #[error("manifest {digest}: {why}")]
    Bad { digest: String, why: String },
    #[error("manifest cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The app's manifests on this host.
pub struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    pub fn new(state_dir: &Path, app: &str) -> Self {
        Manifests {
            dir: state_dir.join("manifests").join(app),
        }
    }

    /// The manifest `digest` (`size` bytes, as the directive says), from the
    /// cache or the controller.
    pub async fn get(
        &self,
        client: &mut AgentsClient<Channel>,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, ManifestFetchError> {
        let bad = |why: String| ManifestFetchError::Bad {
            digest: digest.to_string(),
            why,
        };
        let named = Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
        if size > MAX_MANIFEST_BYTES as u64 {
            return Err(bad(format!(
                "{size} bytes is over the {MAX_MANIFEST_BYTES}-byte limit"
            )));
        }
        let dir = self.dir.clone();
        let cached = tokio::task::spawn_blocking({
            let (dir, named) = (dir.clone(), named.clone());
            move || read_cached(&dir, &named)
        })
        .await
        .ok()
        .flatten();
        if let Some(bytes) = cached {
            return Ok(bytes);
        }
        let base = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || newest(&dir)
        })
        .await
        .ok()
        .flatten();
        let resp = client
            .fetch_manifest(FetchManifestRequest {
                digest: digest.to_string(),
                base_digest: base
                    .as_ref()
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default(),
            })
            .await
            .map_err(|s| ManifestFetchError::Rpc {
                digest: digest.to_string(),
                status: Box::new(s),
            })?
            .into_inner();
        if resp.size != size || resp.compressed.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "the controller sent {} compressed bytes for {} (the directive says {size})",
                resp.compressed.len(),
                resp.size
            )));
        }
        let base = match (resp.base_digest.as_str(), base) {
            ("", _) => None,
            (b, Some((d, bytes))) if d.to_string() == b => Some(bytes),
            (b, _) => {
                return Err(bad(format!(
                    "compressed against {b}, which this host did not offer"
                )));
            }
        };
        let named2 = named.clone();
        tokio::task::spawn_blocking(move || {
            let bytes =
                artifact::manifest::decompress(&resp.compressed, base.as_deref(), size as usize)
                    .map_err(|e| format!("decompress: {e}"))?;
            let got = Digest::of(&bytes);
            if got != named2 {
                return Err(format!("bytes hash to {got}"));
            }
            store(&dir, &named2, &bytes);
            Ok(bytes)
        })
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(bad)
    }
}

fn read_cached(dir: &Path, digest: &Digest) -> Option<Vec<u8>> {
    let bytes = std::fs::read(dir.join(digest.hex())).ok()?;
    (Digest::of(&bytes) == *digest).then_some(bytes)
}

/// The newest manifest kept, with its digest.
fn newest(dir: &Path) -> Option<(Digest, Vec<u8>)> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let (_, path) = files.pop()?;
    let name = path.file_name()?.to_str()?;
    let digest = Digest::parse(&format!("sha256:{name}")).ok()?;
    read_cached(dir, &digest).map(|bytes| (digest, bytes))
}

/// Keeps `bytes` as the newest manifest; drops the oldest beyond [`KEEP`]. A
/// cache that cannot be written only costs a full fetch next time.
fn store(dir: &Path, digest: &Digest, bytes: &[u8]) {
    if std::fs::create_dir_all(dir).is_err()
        || artifact::unpack::write_atomic(&dir.join(digest.hex()), bytes).is_err()
    {
        tracing::warn!(dir = %dir.display(), "cannot keep a manifest; the next one is fetched whole");
        return;
    }
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = listing
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    while files.len() > KEEP {
        let (_, oldest) = files.remove(0);
        let _ = std::fs::remove_file(oldest);
    }
}
