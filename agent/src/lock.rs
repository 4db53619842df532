//! Per-app deploy lock: an exclusive `flock` on `apps/<app>/.lock`. The kernel
//! drops it when its holder dies, so a stale lock can never block forever.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("open lock {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another deploy of this app holds {path} (waited {waited:?})")]
    Busy { path: String, waited: Duration },
}

pub struct AppLock {
    _lock: Flock<File>,
}

impl AppLock {
    /// The lock if nobody holds it right now.
    pub fn try_acquire(path: &Path) -> Option<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ok()?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .ok()
            .map(|lock| Self { _lock: lock })
    }

    pub async fn acquire(path: &Path, timeout: Duration) -> Result<Self, LockError> {
        let shown = path.display().to_string();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|source| LockError::Open {
                    path: shown.clone(),
                    source,
                })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {
                    return Err(LockError::Busy {
                        path: shown,
                        waited: timeout,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_and_gives_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".lock");
        let first = AppLock::acquire(&p, Duration::from_secs(1)).await.unwrap();
        let err = AppLock::acquire(&p, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("another deploy"));
        drop(first);
        AppLock::acquire(&p, Duration::from_millis(300))
            .await
            .unwrap();
    }
}
