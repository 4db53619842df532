//! Release blobs in an S3-compatible bucket (`--blobs s3://BUCKET/PREFIX?…`),
//! through Apache Arrow's `object_store`. The bucket is where every replica
//! finds a blob; each replica's blob directory is a cache of it. A blob goes
//! up only once verified in the directory (its digest and size checked as it
//! was received), as one multipart upload that S3 makes visible only when it
//! completes: a failed or cut upload is aborted and leaves nothing under the
//! blob's name. A blob comes down into the directory's `tmp/` and is renamed
//! to its name only when its digest matches, so a wrong object in the bucket
//! is never served. Keys: `PREFIX/sha256/<hex>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use artifact::Digest;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parts of a multipart upload (S3's smallest but the last is 5 MiB).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("--blobs {0}: {1}")]
    Url(String, String),
    #[error("bucket: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The shortest and longest life a presigned download URL may be given: long
/// enough to start a download, short enough that a leaked URL soon stops
/// working (S3 itself allows a week).
pub const PRESIGN_MIN: Duration = Duration::from_secs(10);
pub const PRESIGN_MAX: Duration = Duration::from_secs(12 * 3600);

/// One bucket and prefix.
pub struct Bucket {
    s3: Arc<AmazonS3>,
    prefix: String,
    /// How long a presigned download URL handed to an agent lives; None:
    /// agents fetch through the controller.
    presign: Option<Duration>,
    /// Shown in logs: `s3://bucket/prefix` (never a credential).
    pub name: String,
}

impl Bucket {
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=R]`. Credentials come from
    /// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), never
    /// the URL. An `http://` endpoint (a test server, a private MinIO) is
    /// allowed only when named so.
    pub fn from_url(url: &str) -> Result<Self, BucketError> {
        let bad = |why: &str| BucketError::Url(url.to_string(), why.to_string());
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named"));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            b = match k {
                "endpoint" => b
                    .with_endpoint(v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => b.with_region(v),
                other => return Err(bad(&format!("unknown option {other:?} (endpoint, region)"))),
            };
        }
        // reqwest's rustls takes the process's crypto provider: ring, as the
        // rest of the controller (a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = b.build().map_err(|e| bad(&e.to_string()))?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(Self {
            s3: Arc::new(s3),
            name: format!("s3://{bucket}/{prefix}"),
            prefix,
            presign: None,
        })
    }

    /// Agents download blobs straight from the bucket with URLs valid for
    /// `ttl` (within [`PRESIGN_MIN`]..=[`PRESIGN_MAX`]).
    pub fn with_presigned_downloads(mut self, ttl: Duration) -> Result<Self, BucketError> {
        if !(PRESIGN_MIN..=PRESIGN_MAX).contains(&ttl) {
            return Err(BucketError::Url(
                self.name.clone(),
                format!(
                    "--presigned-downloads {}: must be between {} and {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(PRESIGN_MIN),
                    humantime::format_duration(PRESIGN_MAX)
                ),
            ));
        }
        self.presign = Some(ttl);
        Ok(self)
    }

    /// A URL that downloads `digest` for the next while, when this bucket
    /// hands them out and holds `digest` with `size` bytes (a blob recorded
    /// before the bucket was configured is not there: the agent then
    /// fetches through the controller). One HEAD request; the signing itself
    /// is local.
    pub async fn download_url(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<(String, Duration)>, BucketError> {
        let Some(ttl) = self.presign else {
            return Ok(None);
        };
        if self.size(digest).await? != Some(size) {
            return Ok(None);
        }
        let url = self
            .s3
            .signed_url(Method::GET, &self.key(digest), ttl)
            .await?;
        Ok(Some((url.to_string(), ttl)))
    }

    fn key(&self, digest: &Digest) -> Key {
        let name = format!("sha256/{}", digest.hex());
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Whether the bucket holds `digest`, and its size.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, BucketError> {
        match self.s3.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Uploads the verified file at `path` as `digest`, streamed in parts;
    /// on any failure the upload is aborted and nothing is left visible.
    pub async fn put_file(&self, digest: &Digest, path: &Path) -> Result<(), BucketError> {
        let io = |source| BucketError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let upload = self.s3.put_multipart(&self.key(digest)).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = w.abort().await;
                return Err(e.into());
            }
            w.write(&buf[..n]);
        }
        w.finish().await?;
        Ok(())
    }

    /// Streams `digest` into `dest` (a new file), refusing more than `max`
    /// bytes. False when the bucket does not hold it. The caller checks the
    /// digest.
    pub async fn get_to(
        &self,
        digest: &Digest,
        dest: &Path,
        max: u64,
    ) -> Result<bool, BucketError> {
        let io = |source| BucketError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let got = match self.s3.get(&self.key(digest)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            if written > max {
                return Err(io(std::io::Error::other(format!(
                    "the bucket's object is larger than the {max} bytes a blob may have"
                ))));
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_read_and_bad_ones_refused_by_name() {
        let b =
            Bucket::from_url("s3://releases/slipway/prod?endpoint=http://127.0.0.1:9&region=eu-1")
                .unwrap();
        assert_eq!(b.name, "s3://releases/slipway/prod");
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(
            b.key(&d).to_string(),
            format!("slipway/prod/sha256/{}", "ab".repeat(32))
        );
        for (url, why) in [
            ("releases/x", "expected s3://"),
            ("s3:///x", "no bucket"),
            ("s3://b/p?secret=x", "unknown option \"secret\""),
        ] {
            let e = Bucket::from_url(url).err().unwrap().to_string();
            assert!(e.contains(why) && e.contains(url), "{e}");
        }
    }
}
