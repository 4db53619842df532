//! Content-addressed blob files: `blobs/sha256/<hex>`. Uploads are written to a
//! temp file, hashed on the way, fsynced and renamed into place only when the
//! digest matches; a failed or mismatched upload leaves nothing behind. Reads
//! are checked too (`read_verified`): a blob that no longer matches its name
//! (truncated, bit rot, a hand edit) is moved to `blobs/corrupt/`, so it reads
//! as missing and the next publish uploads it again.
//!
//! With a bucket (`--blobs s3://…`, `bucket`), the bucket is where a blob
//! lives and the directory is this replica's cache of it: a blob committed
//! here goes up to the bucket before the commit returns (so before the store
//! records it), and a blob this replica lacks comes down, checked, before
//! it is read (`ensure_local`). Per-tenant object stores are never in the
//! bucket: they are filed from packs, which are.

use std::io;
use std::path::{Path, PathBuf};

use artifact::Digest;
use artifact::digest::StreamHasher;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store io at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "digest mismatch: upload declared {declared} but its bytes hash to {actual}; blob discarded"
    )]
    Mismatch { declared: Digest, actual: Digest },
    #[error("size mismatch: upload declared {declared} bytes but sent {actual}; blob discarded")]
    Size { declared: u64, actual: u64 },
    #[error(
        "blob {digest} is corrupt on the controller's disk ({why}); moved aside: publish the release again to repair it"
    )]
    Corrupt { digest: Digest, why: String },
    #[error("{0}; blob discarded")]
    Bucket(#[from] crate::bucket::BucketError),
    #[error("blob {0} is neither on this controller nor in the bucket")]
    Missing(Digest),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary file nobody wrote for this long is a dead upload's.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    bucket: Option<std::sync::Arc<crate::bucket::Bucket>>,
    /// The most a blob brought down from the bucket may hold.
    max_bytes: u64,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for dir in [root.join("sha256"), root.join("tmp"), root.join("corrupt")] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Leftovers of uploads (and of objects being filed) cut off by a crash
        // are never valid blobs. Only those nobody wrote for `STALE_TMP`: a
        // directory shared by several controllers holds the others' uploads
        // in progress (each writes at least once per upload idle timeout).
        let mut tmps = vec![root.join("tmp")];
        if let Ok(tenants) = std::fs::read_dir(root.join("objects")) {
            tmps.extend(tenants.flatten().map(|t| t.path().join("tmp")));
        }
        for tmp in tmps {
            if let Ok(entries) = std::fs::read_dir(&tmp) {
                for e in entries.flatten() {
                    let stale = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_none_or(|age| age > STALE_TMP);
                    if stale {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            bucket: None,
            max_bytes: u64::MAX,
        })
    }

    /// The same directory as the cache of `bucket`, where blobs live (of
    /// at most `max_bytes` each).
    pub fn with_bucket(mut self, bucket: crate::bucket::Bucket, max_bytes: u64) -> Self {
        self.bucket = Some(std::sync::Arc::new(bucket));
        self.max_bytes = max_bytes;
        self
    }

    /// Whether blob `digest` is here or in the bucket.
    pub async fn present(&self, digest: &Digest) -> bool {
        if self.exists(digest) {
            return true;
        }
        match &self.bucket {
            None => false,
            Some(b) => match b.size(digest).await {
                Ok(found) => found.is_some(),
                Err(e) => {
                    tracing::warn!(%digest, bucket = %b.name, error = %e, "bucket unavailable; blob taken as missing");
                    false
                }
            },
        }
    }

    /// A presigned URL an agent may download `digest` (of `size` bytes) from
    /// for a while, when the bucket hands them out; None: it fetches through
    /// this controller (so also when the bucket cannot be asked).
    pub async fn download_url(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Option<(String, std::time::Duration)> {
        let bucket = self.bucket.as_ref()?;
        // The bucket is asked whether it holds the blob: an unreachable one
        // (object_store retries for minutes) must not hold the agent's fetch.
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            bucket.download_url(digest, size),
        );
        match asked.await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(%digest, bucket = %bucket.name, error = %e, "bucket unavailable; the agent fetches through the controller");
                None
            }
            Err(_) => {
                tracing::warn!(%digest, bucket = %bucket.name, "bucket did not answer in 2 s; the agent fetches through the controller");
                None
            }
        }
    }

    /// Blob `digest` in this directory: here already, or brought down from
    /// the bucket into `tmp/` and renamed to its name only once its bytes
    /// hash to it.
    pub async fn ensure_local(&self, digest: &Digest) -> Result<(), BlobError> {
        if self.exists(digest) {
            return Ok(());
        }
        let Some(bucket) = &self.bucket else {
            return Err(BlobError::Missing(digest.clone()));
        };
        let tmp_dir = self.tmp_dir();
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(io_err(&tmp_dir))?
            .into_temp_path();
        if !bucket.get_to(digest, &tmp, self.max_bytes).await? {
            return Err(BlobError::Missing(digest.clone()));
        }
        let actual = hash_file(&tmp).await.map_err(io_err(&tmp))?;
        if actual != *digest {
            tracing::error!(%digest, %actual, bucket = %bucket.name, "the bucket's copy of a blob does not match its name; not used");
            return Err(BlobError::Corrupt {
                digest: digest.clone(),
                why: format!("the bucket's copy hashes to {actual}"),
            });
        }
        let dest = self.path(digest);
        tmp.persist(&dest).map_err(|e| BlobError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Sends the blob committed here to the bucket, if there is one: a
    /// blob is recorded in the store only once it is there. On failure the
    /// local copy goes too, so this replica never serves what others cannot.
    pub async fn upload_committed(&self, digest: &Digest) -> Result<(), BlobError> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let path = self.path(digest);
        if let Err(e) = bucket.put_file(digest, &path).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// A store at `root` (created if missing), leaving any temp file alone.
    pub fn at(root: &Path) -> Result<Self, BlobError> {
        for dir in [root.join("sha256"), root.join("tmp"), root.join("corrupt")] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            bucket: None,
            max_bytes: u64::MAX,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Streams blob `digest` (`size` bytes) from `offset` in chunks of at most
    /// `chunk` bytes, checked against its name without ever holding it whole:
    /// a read from the start is hashed as it goes and its last chunk held back
    /// until size and digest match; a ranged read (a resumed fetch) checks the
    /// whole file first. A blob that fails is moved to `corrupt/` and the
    /// stream ends with [`BlobError::Corrupt`] instead of its last chunk.
    pub async fn read_verified(
        &self,
        digest: Digest,
        size: u64,
        offset: u64,
        chunk: usize,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>, BlobError>>, BlobError> {
        self.ensure_local(&digest).await?;
        let path = self.path(&digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
        let meta = file.metadata().await.map_err(io_err(&path))?;
        let at_rest = AtRest {
            store: self.clone(),
            digest,
            dev_ino: dev_ino(&meta),
        };
        if meta.len() != size {
            return Err(at_rest
                .corrupt(format!("{} bytes instead of {size}", meta.len()))
                .await);
        }
        if offset > 0 {
            let whole = hash_file(&path).await.map_err(io_err(&path))?;
            if whole != at_rest.digest {
                return Err(at_rest.corrupt(format!("its bytes hash to {whole}")).await);
            }
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(io_err(&path))?;
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut hasher = (offset == 0).then(StreamHasher::new);
            let mut remaining = size - offset;
            while remaining > 0 {
                let mut buf = vec![0u8; chunk.min(remaining as usize)];
                if let Err(e) = file.read_exact(&mut buf).await {
                    let e = match e.kind() {
                        io::ErrorKind::UnexpectedEof => {
                            at_rest.corrupt("shorter than its size".into()).await
                        }
                        _ => BlobError::Io { path, source: e },
                    };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                remaining -= buf.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf);
                }
                if remaining == 0
                    && let Some(h) = hasher.take()
                {
                    let actual = h.finish();
                    if actual != at_rest.digest {
                        let e = at_rest.corrupt(format!("its bytes hash to {actual}")).await;
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if tx.send(Ok(buf)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Starts an upload of `declared` bytes expected to hash to `digest`.
    pub async fn begin(&self, digest: Digest, declared: u64) -> Result<Upload, BlobError> {
        self.begin_with(Some(digest), declared)
    }

    /// Starts an upload whose digest and size come at its end (a blob
    /// uploaded while it is packed), of at most `max` bytes.
    pub async fn begin_unnamed(&self, max: u64) -> Result<Upload, BlobError> {
        self.begin_with(None, max)
    }

    fn begin_with(&self, digest: Option<Digest>, declared: u64) -> Result<Upload, BlobError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let (file, path) = tmp.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            tmp: path,
            hasher: StreamHasher::new(),
            written: 0,
            digest,
            declared,
            store: self.clone(),
        })
    }
}

/// A blob file being read, as it was when opened.
struct AtRest {
    store: BlobStore,
    digest: Digest,
    dev_ino: (u64, u64),
}

impl AtRest {
    /// Logs the corruption and moves the file to `corrupt/<hex>` (unless a
    /// re-upload replaced it since it was opened); the error to end with.
    async fn corrupt(&self, why: String) -> BlobError {
        let from = self.store.path(&self.digest);
        let to = self.store.root.join("corrupt").join(self.digest.hex());
        let same = tokio::fs::metadata(&from)
            .await
            .is_ok_and(|m| dev_ino(&m) == self.dev_ino);
        if same {
            match tokio::fs::rename(&from, &to).await {
                Ok(()) => {
                    tracing::error!(digest = %self.digest, why = %why, moved_to = %to.display(),
                        "blob corrupt at rest: moved aside; publish its release again to repair it")
                }
                Err(e) => {
                    tracing::error!(digest = %self.digest, why = %why, error = %e,
                        "blob corrupt at rest, and it could not be moved aside")
                }
            }
        }
        BlobError::Corrupt {
            digest: self.digest.clone(),
            why,
        }
    }
}

fn dev_ino(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// sha256 of a whole file, streamed on a blocking thread.
async fn hash_file(path: &Path) -> io::Result<Digest> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut reader = artifact::digest::HashingReader::new(std::fs::File::open(&path)?);
        io::copy(&mut reader, &mut io::sink())?;
        Ok(reader.finish().0)
    })
    .await
    .map_err(io::Error::other)?
}

/// An upload in progress. Dropping it without `commit` deletes the temp file.
pub struct Upload {
    file: tokio::fs::File,
    tmp: tempfile::TempPath,
    hasher: StreamHasher,
    written: u64,
    /// The digest named up front; None when the trailer names it.
    digest: Option<Digest>,
    /// The exact size named up front, or the most an unnamed upload may send.
    declared: u64,
    store: BlobStore,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let next = self.written + chunk.len() as u64;
        if next > self.declared {
            return Err(BlobError::Size {
                declared: self.declared,
                actual: next,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err(&self.tmp))?;
        self.written = next;
        Ok(())
    }

    /// Verifies size and digest, then makes the blob durable under its name.
    pub async fn commit(self) -> Result<u64, BlobError> {
        let Some(digest) = self.digest.clone() else {
            return Err(BlobError::Io {
                path: self.tmp.to_path_buf(),
                source: io::Error::other("an upload without a digest needs its trailer"),
            });
        };
        let declared = self.declared;
        self.commit_as(digest, declared).await
    }

    /// Commits an upload whose trailer named `digest` and `size`.
    pub async fn commit_named(self, digest: Digest, size: u64) -> Result<u64, BlobError> {
        if let Some(named) = &self.digest
            && *named != digest
        {
            return Err(BlobError::Mismatch {
                declared: named.clone(),
                actual: digest,
            });
        }
        self.commit_as(digest, size).await
    }

    async fn commit_as(mut self, digest: Digest, size: u64) -> Result<u64, BlobError> {
        if self.written != size {
            return Err(BlobError::Size {
                declared: size,
                actual: self.written,
            });
        }
        let actual = self.hasher.clone().finish();
        if actual != digest {
            return Err(BlobError::Mismatch {
                declared: digest,
                actual,
            });
        }
        self.file.flush().await.map_err(io_err(&self.tmp))?;
        self.file.sync_all().await.map_err(io_err(&self.tmp))?;
        let dest = self.store.path(&digest);
        let tmp = self.tmp;
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            tmp.persist(&dest).map_err(|e| BlobError::Io {
                path: dest.clone(),
                source: e.error,
            })?;
            let dir = dest.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        })
        .await
        .map_err(|e| BlobError::Io {
            path: self.store.path(&digest),
            source: io::Error::other(e),
        })??;
        self.store.upload_committed(&digest).await?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `data` as a blob and returns its digest.
    async fn stored(store: &BlobStore, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let mut up = store
            .begin(digest.clone(), data.len() as u64)
            .await
            .unwrap();
        up.write(data).await.unwrap();
        up.commit().await.unwrap();
        digest
    }

    /// Everything a read yields: the bytes, then the error it ended with.
    async fn read(
        store: &BlobStore,
        digest: &Digest,
        size: u64,
        offset: u64,
    ) -> (Vec<u8>, Option<String>) {
        let mut rx = match store.read_verified(digest.clone(), size, offset, 4).await {
            Ok(rx) => rx,
            Err(e) => return (Vec::new(), Some(e.to_string())),
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Ok(c) => bytes.extend(c),
                Err(e) => return (bytes, Some(e.to_string())),
            }
        }
        (bytes, None)
    }

    #[tokio::test]
    async fn reads_check_the_blob_at_rest_and_move_a_corrupt_one_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"0123456789abcdef0123".to_vec();
        let digest = stored(&store, &data).await;
        let size = data.len() as u64;
        assert_eq!(read(&store, &digest, size, 0).await, (data.clone(), None));
        assert_eq!(
            read(&store, &digest, size, 6).await,
            (data[6..].to_vec(), None)
        );

        // Same size, one byte flipped: a full read ends with an error instead
        // of its last chunk; the blob is moved aside and reads as missing.
        let mut bad = data.clone();
        bad[9] ^= 1;
        std::fs::write(store.path(&digest), &bad).unwrap();
        let (bytes, err) = read(&store, &digest, size, 0).await;
        assert!(bytes.len() < data.len(), "the last chunk is held back");
        assert!(err.unwrap().contains("is corrupt"));
        assert!(!store.exists(&digest));
        assert!(dir.path().join("corrupt").join(digest.hex()).is_file());

        // A ranged read checks the whole file before it serves a byte.
        let digest = stored(&store, &data).await;
        std::fs::write(store.path(&digest), &bad).unwrap();
        let (bytes, err) = read(&store, &digest, size, 12).await;
        assert!(bytes.is_empty());
        assert!(err.unwrap().contains("hash to"));
        assert!(!store.exists(&digest));

        // Truncated.
        let digest = stored(&store, &data).await;
        std::fs::write(store.path(&digest), &data[..5]).unwrap();
        let (_, err) = read(&store, &digest, size, 0).await;
        assert!(err.unwrap().contains("5 bytes instead of 20"));
        assert!(!store.exists(&digest));
    }
}
