//! Fetches a release blob into the app's cache: streamed to `<hex>.partial`,
//! resumed from its length after a cut, hashed while writing, and renamed to
//! `<hex>` only when size and sha256 match. Every write is told to a
//! [`Feed`], so the unpack reads the blob as it arrives. The cache file is not
//! fsynced: it is a resumable copy, verified again by hash on every use; what
//! must survive a power loss is the unpacked tree (see `artifact::unpack`).

use std::path::{Path, PathBuf};

use artifact::Digest;
use artifact::digest::StreamHasher;
use proto::v1::agents_client::AgentsClient;
use proto::v1::{BlobUrlRequest, FetchBlobRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::follow::Feed;

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
        /// Some of the bytes came from the bucket.
        from_bucket: bool,
    },
}

/// Where a blob's bytes came from; a blob fetched with a presigned URL
/// whose bytes do not verify is fetched through the controller next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Controller,
    Bucket,
}

/// Returns the path of the verified blob in `cache`, downloading what is
/// missing and telling `feed` how far the file has grown. With `direct`, the
/// controller is first asked for a presigned URL, and what the bucket sends
/// is taken before the rest comes through the controller (all of it, when
/// the controller hands out no URL or the bucket cannot be reached). A
/// resumed download that does not verify (a corrupt partial file) is
/// discarded: the next fetch starts from the beginning (the unpack following
/// this one has read the bad bytes already, so it fails with it).
pub async fn fetch_blob(
    client: &mut AgentsClient<Channel>,
    cache: &Path,
    digest: &Digest,
    size: u64,
    feed: &Feed,
    direct: bool,
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
        feed.grew(&done, size);
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
            if have > size {
                break;
            }
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
        feed.resuming(have);
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .map_err(io(&partial))?;
    feed.grew(&partial, have);
    let mut part = Partial {
        file,
        path: partial.clone(),
        hasher,
        have,
        size,
        digest: digest.clone(),
        from_bucket: false,
    };
    let rpc = |status| FetchError::Rpc {
        digest: digest.clone(),
        status: Box::new(status),
    };
    if direct && part.have < size {
        match client
            .blob_url(BlobUrlRequest {
                digest: digest.to_string(),
            })
            .await
        {
            Ok(answer) if !answer.get_ref().url.is_empty() => {
                crate::direct::download(&answer.into_inner().url, &mut part, feed).await?;
            }
            Ok(_) => {}
            // A controller from before presigned URLs.
            Err(status) if status.code() == tonic::Code::Unimplemented => {}
            Err(status) => return Err(rpc(status)),
        }
    }
    if part.have < size {
        let mut stream = client
            .fetch_blob(FetchBlobRequest {
                digest: digest.to_string(),
                offset: part.have,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        while let Some(chunk) = next_chunk(&mut stream).await.map_err(rpc)? {
            part.append(&chunk.data, feed, Source::Controller).await?;
        }
    }
    let Partial {
        mut file,
        hasher,
        have,
        from_bucket,
        ..
    } = part;
    file.flush().await.map_err(io(&partial))?;
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
            from_bucket,
        });
    }
    tokio::fs::rename(&partial, &done)
        .await
        .map_err(io(&done))?;
    Ok(done)
}

/// The blob's `.partial` file being written, hashed as it grows.
pub(crate) struct Partial {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: StreamHasher,
    /// Bytes in the file.
    pub(crate) have: u64,
    /// Bytes the blob has.
    pub(crate) size: u64,
    pub(crate) digest: Digest,
    /// Whether any of the bytes came from the bucket.
    from_bucket: bool,
}

impl Partial {
    /// Appends `data` (from `source`), telling `feed`; more than the blob's
    /// size discards the file.
    pub(crate) async fn append(
        &mut self,
        data: &[u8],
        feed: &Feed,
        source: Source,
    ) -> Result<(), FetchError> {
        if self.have + data.len() as u64 > self.size {
            let _ = tokio::fs::remove_file(&self.path).await;
            return Err(FetchError::TooLong {
                digest: self.digest.clone(),
                expected: self.size,
            });
        }
        self.hasher.update(data);
        feed.received(data.len() as u64);
        let io = |source| FetchError::Io {
            digest: self.digest.clone(),
            path: self.path.clone(),
            source,
        };
        self.file.write_all(data).await.map_err(io)?;
        // tokio's file writes in the background: wait for it before the
        // reader is told the bytes are there.
        self.file.flush().await.map_err(io)?;
        if source == Source::Bucket {
            // Told before the reader sees the bytes.
            self.from_bucket = true;
            feed.from_bucket();
        }
        let first = self.have == 0;
        self.have += data.len() as u64;
        feed.grew(&self.path, self.have);
        crate::metrics::METRICS.fetched(
            match source {
                Source::Controller => "controller",
                Source::Bucket => "bucket",
            },
            data.len() as u64,
        );
        if first {
            // The first bytes are on their way into the unpack.
            crate::failpoint::hit("fetch-streaming");
        }
        Ok(())
    }
}

/// Streams the object pack of `want` (objects of release `release`) into
/// `cache/<release hex>.objects`, telling `feed` as it grows; its path. No
/// resume: a delta is small, and a cut one is asked for again (so is a
/// release's full pack asked for as every object, on a new host within a
/// minute of a delta publish). At most what
/// the objects could take compressed, plus headers, is accepted.
pub async fn fetch_objects(
    client: &mut AgentsClient<Channel>,
    cache: &Path,
    release: &str,
    want: &[(Digest, u64)],
    feed: &Feed,
) -> Result<PathBuf, FetchError> {
    // Errors name the release (a manifest digest, checked by the directive).
    let named = Digest::parse(release).unwrap_or_else(|_| Digest::of(release.as_bytes()));
    let io = |path: &Path| {
        let (digest, path) = (named.clone(), path.to_path_buf());
        move |source| FetchError::Io {
            digest,
            path,
            source,
        }
    };
    tokio::fs::create_dir_all(cache).await.map_err(io(cache))?;
    let path = cache.join(format!("{}.objects", named.hex()));
    let content: u64 = want.iter().map(|(_, s)| *s).sum();
    let headers = (want.len() as u64 + 8) * 4096;
    let limit = (content + headers) + (content + headers) / 64 + (1 << 20);
    let mut file = tokio::fs::File::create(&path).await.map_err(io(&path))?;
    feed.grew(&path, 0);
    let rpc = |status| FetchError::Rpc {
        digest: named.clone(),
        status: Box::new(status),
    };
    let mut stream = client
        .fetch_objects(proto::v1::FetchObjectsRequest {
            manifest_digest: release.to_string(),
            digests: want.iter().map(|(d, _)| d.to_string()).collect(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut have = 0u64;
    while let Some(chunk) = next_chunk(&mut stream).await.map_err(rpc)? {
        have += chunk.data.len() as u64;
        if have > limit {
            return Err(FetchError::TooLong {
                digest: named,
                expected: limit,
            });
        }
        feed.received(chunk.data.len() as u64);
        crate::metrics::METRICS.fetched("controller", chunk.data.len() as u64);
        file.write_all(&chunk.data).await.map_err(io(&path))?;
        file.flush().await.map_err(io(&path))?;
        feed.grew(&path, have);
        if have == chunk.data.len() as u64 {
            crate::failpoint::hit("fetch-streaming");
        }
    }
    Ok(path)
}

/// The next chunk of a download; a stream silent for [`STALL_TIMEOUT`] is
/// given up as unavailable (the fetch is tried again later).
async fn next_chunk(
    stream: &mut tonic::Streaming<proto::v1::BlobChunk>,
) -> Result<Option<proto::v1::BlobChunk>, tonic::Status> {
    tokio::time::timeout(STALL_TIMEOUT, stream.message())
        .await
        .map_err(|_| {
            tonic::Status::unavailable(format!("no data for {}s", STALL_TIMEOUT.as_secs()))
        })?
}
