//! Content-addressed blob files: `blobs/sha256/<hex>`. Uploads are written to a
//! temp file, hashed on the way, fsynced and renamed into place only when the
//! digest matches; a failed or mismatched upload leaves nothing behind.

use std::io;
use std::path::{Path, PathBuf};

use artifact::Digest;
use artifact::digest::StreamHasher;
use tokio::io::AsyncWriteExt;

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
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for dir in [root.join("sha256"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Leftovers of uploads cut off by a crash are never valid blobs.
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Starts an upload of `declared` bytes expected to hash to `digest`.
    pub async fn begin(&self, digest: Digest, declared: u64) -> Result<Upload, BlobError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let (file, path) = tmp.into_parts();
        let dest = self.path(&digest);
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            tmp: path,
            hasher: StreamHasher::new(),
            written: 0,
            digest,
            declared,
            dest,
        })
    }
}

/// An upload in progress. Dropping it without `commit` deletes the temp file.
pub struct Upload {
    file: tokio::fs::File,
    tmp: tempfile::TempPath,
    hasher: StreamHasher,
    written: u64,
    digest: Digest,
    declared: u64,
    dest: PathBuf,
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
    pub async fn commit(mut self) -> Result<u64, BlobError> {
        if self.written != self.declared {
            return Err(BlobError::Size {
                declared: self.declared,
                actual: self.written,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(BlobError::Mismatch {
                declared: self.digest,
                actual,
            });
        }
        self.file.flush().await.map_err(io_err(&self.tmp))?;
        self.file.sync_all().await.map_err(io_err(&self.tmp))?;
        let dest = self.dest.clone();
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
            path: self.dest.clone(),
            source: io::Error::other(e),
        })??;
        Ok(self.written)
    }
}
