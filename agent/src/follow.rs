//! A download read while it is written: the fetcher tells a [`Feed`] how far
//! the cache file has grown, and a [`FollowReader`] (blocking, for the unpack)
//! hands those bytes on as they arrive. The reader ends only once the fetcher
//! says the whole blob verified, and fails as soon as the fetch fails or is
//! dropped, so an unpack never commits a tree from a blob that did not verify.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Why a download ended without a verified blob (the fetch's own error,
/// reported by the fetch; the reader only needs to stop).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

#[derive(Default)]
struct State {
    /// The file being written, once the fetcher opened it.
    path: Option<PathBuf>,
    /// Bytes of it written so far.
    written: u64,
    /// Set once: the verified blob's path, or why the fetch ended without one.
    end: Option<Result<PathBuf, Stopped>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Bytes that came over the wire in this fetch (a resume counts only the rest).
    wire: AtomicU64,
    /// True from the first report on (async, for [`FollowReader::started`]).
    started: tokio::sync::watch::Sender<bool>,
    /// Bytes an earlier attempt had written (a resumed download).
    resumed: AtomicU64,
    /// Some bytes came from the bucket (a presigned URL), not the controller.
    bucket: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fetch and the reader that follows it.
pub fn pair() -> (Feed, FollowReader) {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        changed: Condvar::new(),
        wire: AtomicU64::new(0),
        started: tokio::sync::watch::Sender::new(false),
        resumed: AtomicU64::new(0),
        bucket: AtomicBool::new(false),
    });
    (
        Feed(shared.clone()),
        FollowReader {
            shared,
            file: None,
            pos: 0,
            unlinked: false,
        },
    )
}

/// The fetcher's side. Dropped before [`Feed::finish`] (the fetch was
/// cancelled or timed out), it ends the reader with an error.
pub struct Feed(Arc<Shared>);

impl Feed {
    /// The file at `path` now holds `written` bytes of the blob.
    pub fn grew(&self, path: &Path, written: u64) {
        let mut s = self.0.lock();
        if s.path.as_deref() != Some(path) {
            s.path = Some(path.to_path_buf());
        }
        s.written = written;
        drop(s);
        self.0.changed.notify_all();
        self.0.started.send_replace(true);
    }

    /// The download resumes a file an earlier attempt wrote `offset` bytes of.
    pub fn resuming(&self, offset: u64) {
        self.0.resumed.store(offset, Ordering::Relaxed);
    }

    /// Bytes of the blob that came from an earlier attempt (0: none).
    pub fn resumed(&self) -> u64 {
        self.0.resumed.load(Ordering::Relaxed)
    }

    /// Counts bytes received from the controller.
    pub fn received(&self, bytes: u64) {
        self.0.wire.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received from the controller (or the bucket) so far.
    pub fn wire_bytes(&self) -> u64 {
        self.0.wire.load(Ordering::Relaxed)
    }

    /// Bytes of this download came from the bucket.
    pub fn from_bucket(&self) {
        self.0.bucket.store(true, Ordering::Relaxed);
    }

    /// Whether any bytes of this download came from the bucket.
    pub fn came_from_bucket(&self) -> bool {
        self.0.bucket.load(Ordering::Relaxed)
    }

    /// The fetch is over: the verified blob, or why not. The first call counts.
    pub fn finish(&self, end: Result<PathBuf, Stopped>) {
        let mut s = self.0.lock();
        if s.end.is_none() {
            s.end = Some(end);
        }
        drop(s);
        self.0.changed.notify_all();
        self.0.started.send_replace(true);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.finish(Err(Stopped("the download stopped".into())));
    }
}

/// The unpack's side: a blocking reader of the blob as it arrives.
pub struct FollowReader {
    shared: Arc<Shared>,
    file: Option<File>,
    pos: u64,
    /// The verified download was removed from the cache (once read whole).
    unlinked: bool,
}

enum Next {
    /// Read up to this many bytes from the file.
    Upto(u64),
    /// The blob verified: read the file to its end.
    ToEnd,
}

impl FollowReader {
    /// Resolves once the fetch reported anything (bytes or its end), so no
    /// blocking reader waits on a download that has not begun.
    pub async fn started(&self) {
        let mut rx = self.shared.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits until there is something to read, the blob verified, or the fetch
    /// failed; opens the file when it first appears.
    fn next(&mut self) -> io::Result<Next> {
        let mut s = self.shared.lock();
        loop {
            match &s.end {
                Some(Err(why)) => return Err(io::Error::other(why.0.clone())),
                Some(Ok(path)) => {
                    if self.file.is_none() {
                        self.file = Some(open_at(path, self.pos)?);
                    }
                    if !self.unlinked {
                        // The reader is the download's last user: gone from
                        // the cache now, its pages are never written back
                        // (the unpack's `syncfs` flushes the tree, not this).
                        self.unlinked = true;
                        let _ = std::fs::remove_file(path);
                    }
                    return Ok(Next::ToEnd);
                }
                None => {}
            }
            if let Some(path) = s.path.clone()
                && s.written > self.pos
            {
                if self.file.is_none() {
                    match open_at(&path, self.pos) {
                        Ok(f) => self.file = Some(f),
                        // Renamed to its final name since it was reported:
                        // the end names it.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            s.path = None;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                return Ok(Next::Upto(s.written - self.pos));
            }
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn open_at(path: &Path, pos: u64) -> io::Result<File> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(pos))?;
    Ok(f)
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let next = self.next()?;
            let file = self.file.as_mut().expect("opened by next");
            let n = match next {
                Next::Upto(avail) => {
                    let want = (buf.len() as u64).min(avail) as usize;
                    file.read(&mut buf[..want])?
                }
                Next::ToEnd => return file.read(buf).inspect(|n| self.pos += *n as u64),
            };
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            // Reported written but not readable yet (a resumed file replaced
            // under us): wait for the next report.
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_reader_follows_the_file_and_ends_only_when_the_blob_verified() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("blob.partial");
        let (feed, mut reader) = pair();
        let read = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        let mut f = File::create(&path).unwrap();
        for part in [&b"hello "[..], b"streamed ", b"world"] {
            f.write_all(part).unwrap();
            let len = f.metadata().unwrap().len();
            feed.grew(&path, len);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!read.is_finished(), "waits for the verdict at the end");
        feed.finish(Ok(path.clone()));
        assert_eq!(read.join().unwrap().unwrap(), b"hello streamed world");
    }

    #[test]
    fn a_failed_or_dropped_fetch_fails_the_reader() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("blob.partial");
        std::fs::write(&path, b"half").unwrap();
        let (feed, mut reader) = pair();
        feed.grew(&path, 4);
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        feed.finish(Err(Stopped(
            "fetch sha256:ab: downloaded bytes hash to something else".into(),
        )));
        let err = reader.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("hash to something else"), "{err}");

        let (feed, mut reader) = pair();
        drop(feed);
        let err = reader.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("download stopped"), "{err}");
    }
}
