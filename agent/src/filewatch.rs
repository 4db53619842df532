//! Watches files (the app's env files) with `notify` and signals when one of
//! them changes. Directories are watched, not the files, so editors that
//! replace a file by renaming a new one over it are seen too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    pub changed: mpsc::Receiver<()>,
}

pub fn watch_files(files: &[PathBuf]) -> notify::Result<FileWatch> {
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let (tx, rx) = mpsc::channel(1);
    let filter = wanted.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| filter.contains(&absolute(p))) {
            // A full channel already carries a pending change: nothing lost.
            let _ = tx.try_send(());
        }
    })?;
    let dirs: BTreeSet<PathBuf> = wanted
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for dir in dirs {
        if dir.is_dir() {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(FileWatch {
        _watcher: watcher,
        changed: rx,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
