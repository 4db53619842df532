//! Fetches a release blob into the app's cache: streamed to `<hex>.partial`,
//! resumed from its length after a cut, hashed while writing, and renamed to
//! `<hex>` only when size and sha256 match.

use std::path::{Path, PathBuf};

use artifact::Digest;
use artifact::digest::StreamHasher;
use proto::v1::FetchBlobRequest;
use proto::v1::agents_client::AgentsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A stream that sends nothing for this long is given up (and resumed later).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetch {digest}: {status}")]
    Rpc {
        digest: Digest,
        status: Box<tonic::Status>,
    },
    #[error("fetch {digest}: cache io at {path}: {source}")]
    Io {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetch {digest}: controller sent more than the expected {expected} bytes")]
    TooLong { digest: Digest, expected: u64 },
    #[error("fetch {digest}: stream ended at {got} of {expected} bytes")]
    Short {
        digest: Digest,
        got: u64,
        expected: u64,
    },
    /// The controller answered every one of `attempts` fetches with an error
    /// (or said its copy is corrupt): the release is failed, not retried.
    #[error("fetch {digest}: {message} (attempt {attempts}, not retried)")]
    GaveUp {
        digest: Digest,
        attempts: u32,
        message: String,
    },
    #[error("fetch {digest}: downloaded bytes hash to {actual}; discarded")]
    Mismatch {
        digest: Digest,
        actual: Digest,
        resumed: bool,
    },
}

/// Returns the path of the verified blob in `cache`, downloading what is missing.
/// A resumed download that does not verify (a corrupt partial file) is discarded
/// and fetched once more from the start.
pub async fn fetch_blob(
    client: &mut AgentsClient<Channel>,
    cache: &Path,
    digest: &Digest,
    size: u64,
) -> Result<PathBuf, FetchError> {
    match fetch_once(client, cache, digest, size).await {
        Err(FetchError::Mismatch { resumed: true, .. }) => {
            tracing::warn!(%digest, "resumed download did not verify; fetching from the start");
            fetch_once(client, cache, digest, size).await
        }
        other => other,
    }
}

async fn fetch_once(
    client: &mut AgentsClient<Channel>,
    cache: &Path,
    digest: &Digest,
    size: u64,
) -> Result<PathBuf, FetchError> {
    let io = |path: &Path| {
        let (digest, path) = (digest.clone(), path.to_path_buf());
        move |source| FetchError::Io {
            digest,
            path,
            source,
        }
    };
    tokio::fs::create_dir_all(cache).await.map_err(io(cache))?;
    let done = cache.join(digest.hex());
    if tokio::fs::try_exists(&done).await.unwrap_or(false) {
        return Ok(done);
    }
    let partial = cache.join(format!("{}.partial", digest.hex()));
    // Downloads of releases no longer wanted only take space.
    if let Ok(mut entries) = tokio::fs::read_dir(cache).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            if e.path() != partial {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }

    // Resume: hash what an earlier attempt already wrote.
    let mut hasher = StreamHasher::new();
    let mut have = 0u64;
    if let Ok(mut f) = tokio::fs::File::open(&partial).await {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).await.map_err(io(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
    }
    if have > size {
        let _ = tokio::fs::remove_file(&partial).await;
        hasher = StreamHasher::new();
        have = 0;
    }
    let resumed = have > 0;
    if resumed {
        tracing::info!(%digest, offset = have, "resuming blob download");
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .map_err(io(&partial))?;
    if have < size {
        let rpc = |status| FetchError::Rpc {
            digest: digest.clone(),
            status: Box::new(status),
        };
        let mut stream = client
            .fetch_blob(FetchBlobRequest {
                digest: digest.to_string(),
                offset: have,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        loop {
            let next = tokio::time::timeout(STALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    rpc(tonic::Status::unavailable(format!(
                        "no data for {}s",
                        STALL_TIMEOUT.as_secs()
                    )))
                })?;
            let Some(chunk) = next.map_err(rpc)? else {
                break;
            };
            if have + chunk.data.len() as u64 > size {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(FetchError::TooLong {
                    digest: digest.clone(),
                    expected: size,
                });
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(io(&partial))?;
            have += chunk.data.len() as u64;
        }
    }
    file.flush().await.map_err(io(&partial))?;
    file.sync_all().await.map_err(io(&partial))?;
    drop(file);
    if have != size {
        return Err(FetchError::Short {
            digest: digest.clone(),
            got: have,
            expected: size,
        });
    }
    let actual = hasher.finish();
    if &actual != digest {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(FetchError::Mismatch {
            digest: digest.clone(),
            actual,
            resumed,
        });
    }
    tokio::fs::rename(&partial, &done)
        .await
        .map_err(io(&done))?;
    Ok(done)
}
