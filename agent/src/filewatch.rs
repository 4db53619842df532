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
    watch_paths(files, &[])
}

/// Like `watch_files`, plus any file directly inside `dirs`.
pub fn watch_paths(files: &[PathBuf], dirs: &[PathBuf]) -> notify::Result<FileWatch> {
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let whole: BTreeSet<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
    let (tx, rx) = mpsc::channel(1);
    let filter = wanted.clone();
    let whole_filter = whole.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let hit = |p: &PathBuf| {
            let p = absolute(p);
            filter.contains(&p) || p.parent().is_some_and(|d| whole_filter.contains(d))
        };
        if event.paths.iter().any(hit) {
            // A full channel already carries a pending change: nothing lost.
            let _ = tx.try_send(());
        }
    })?;
    let mut watched: BTreeSet<PathBuf> = wanted
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    watched.extend(whole);
    for dir in watched {
        if dir.is_dir() {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(FileWatch {
        _watcher: watcher,
        changed: rx,
    })
}

/// Watches a whole tree (a running release, for drift): any event but an
/// access signals, and so does a watcher error (events may have been lost).
pub fn watch_tree(root: &Path) -> notify::Result<FileWatch> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = &event
            && matches!(event.kind, notify::EventKind::Access(_))
        {
            return;
        }
        // A full channel already carries a pending change: nothing lost.
        let _ = tx.try_send(());
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok(FileWatch {
        _watcher: watcher,
        changed: rx,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The next change; never, without a watch.
pub async fn next_change(w: &mut Option<FileWatch>) -> Option<()> {
    match w {
        Some(w) => w.changed.recv().await,
        None => std::future::pending().await,
    }
}

/// Drops pending change signals (a burst of events counts once).
pub fn drain(w: &mut Option<FileWatch>) {
    if let Some(w) = w.as_mut() {
        while w.changed.try_recv().is_ok() {}
    }
}
