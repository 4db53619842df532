//! Watches files (the app's env files) with `notify` and signals when one of
//! them changes. Directories are watched, not the files, so editors that
//! replace a file by renaming a new one over it are seen too.
//!
//! When the host has no inotify instance or watch left (EMFILE, ENOSPC: many
//! agents or editors on one host), the watch falls back to polling the same
//! paths and says so (`degraded`); its owner retries inotify now and then.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::time::Duration;

use notify::{EventHandler, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How often a degraded (polling) watch looks at its paths.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: Box<dyn Watcher + Send>,
    pub changed: mpsc::Receiver<()>,
    /// Polling, because inotify could not be had.
    pub degraded: bool,
}

/// Which mechanism a watch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Inotify,
    Poll,
}

/// Sets up `watch` with inotify, or, if the host refuses inotify, by polling.
/// `contents`: polling hashes file contents (small files only: polled mtimes
/// have a one-second grain, so an edit within the second is otherwise missed).
fn with_fallback<H: EventHandler + Clone>(
    handler: H,
    first: Mechanism,
    contents: bool,
    watch: impl Fn(&mut dyn Watcher, Mechanism) -> notify::Result<()>,
) -> notify::Result<(Box<dyn Watcher + Send>, bool)> {
    if first == Mechanism::Inotify {
        let made = notify::recommended_watcher(handler.clone()).and_then(|mut w| {
            watch(&mut w, Mechanism::Inotify)?;
            Ok(w)
        });
        match made {
            Ok(w) => return Ok((Box::new(w), false)),
            Err(e) => {
                tracing::warn!(error = %e, poll_every = ?POLL_EVERY, "inotify unavailable; polling instead (watching degraded)")
            }
        }
    }
    let mut w = PollWatcher::new(
        handler,
        notify::Config::default()
            .with_poll_interval(POLL_EVERY)
            .with_compare_contents(contents),
    )?;
    watch(&mut w, Mechanism::Poll)?;
    Ok((Box::new(w), true))
}

pub fn watch_files(files: &[PathBuf]) -> notify::Result<FileWatch> {
    watch_paths(files, &[])
}

/// Like `watch_files`, plus any file directly inside `dirs`.
pub fn watch_paths(files: &[PathBuf], dirs: &[PathBuf]) -> notify::Result<FileWatch> {
    watch_paths_with(files, dirs, Mechanism::Inotify)
}

pub fn watch_paths_with(
    files: &[PathBuf],
    dirs: &[PathBuf],
    first: Mechanism,
) -> notify::Result<FileWatch> {
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let whole: BTreeSet<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
    let (tx, rx) = mpsc::channel(1);
    let filter = wanted.clone();
    let whole_filter = whole.clone();
    let handler = move |event: notify::Result<notify::Event>| {
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
    };
    let mut watched: BTreeSet<PathBuf> = wanted
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let whole_dirs = whole.clone();
    watched.extend(whole);
    // Polling hashes what it watches: the files themselves where they exist,
    // not every file beside them (a parent dir only for a file not there yet).
    let polled: BTreeSet<PathBuf> = wanted
        .iter()
        .map(|f| match f.parent() {
            Some(dir) if !f.exists() => dir.to_path_buf(),
            _ => f.clone(),
        })
        .chain(whole_dirs.iter().cloned())
        .collect();
    let (watcher, degraded) = with_fallback(handler, first, true, |w, mechanism| {
        let targets = match mechanism {
            Mechanism::Inotify => &watched,
            Mechanism::Poll => &polled,
        };
        for path in targets {
            if path.exists() {
                w.watch(path, RecursiveMode::NonRecursive)?;
            }
        }
        Ok(())
    })?;
    Ok(FileWatch {
        _watcher: watcher,
        changed: rx,
        degraded,
    })
}

/// Watches a whole tree (a running release, for drift): any event but an
/// access signals, and so does a watcher error (events may have been lost).
pub fn watch_tree(root: &Path) -> notify::Result<FileWatch> {
    watch_tree_with(root, Mechanism::Inotify)
}

pub fn watch_tree_with(root: &Path, first: Mechanism) -> notify::Result<FileWatch> {
    let (tx, rx) = mpsc::channel(1);
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = &event
            && matches!(event.kind, notify::EventKind::Access(_))
        {
            return;
        }
        // A full channel already carries a pending change: nothing lost.
        let _ = tx.try_send(());
    };
    let (watcher, degraded) = with_fallback(handler, first, false, |w, _| {
        w.watch(root, RecursiveMode::Recursive)
    })?;
    Ok(FileWatch {
        _watcher: watcher,
        changed: rx,
        degraded,
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

/// Whether a watch is degraded (polling); None without a watch.
pub fn degraded(w: &Option<FileWatch>) -> bool {
    w.as_ref().is_some_and(|w| w.degraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polling is what runs when the host refuses inotify (EMFILE or
    /// ENOSPC); exhausting the machine's inotify instances for real would
    /// break every other process of the user, so the test starts the watch in
    /// its fallback mode directly.
    #[tokio::test]
    async fn a_polling_watch_still_sees_an_edit_and_says_it_is_degraded() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(&env, "A=1\n").unwrap();
        let mut w =
            Some(watch_paths_with(std::slice::from_ref(&env), &[], Mechanism::Poll).unwrap());
        assert!(degraded(&w));
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&env, "A=22\n").unwrap();
        let seen = tokio::time::timeout(POLL_EVERY * 5, next_change(&mut w)).await;
        assert_eq!(seen, Ok(Some(())), "the edit is seen by polling");

        let tree = watch_tree_with(dir.path(), Mechanism::Poll).unwrap();
        assert!(tree.degraded);
        let normal = watch_paths(&[env], &[]).unwrap();
        assert!(!normal.degraded, "inotify is used when the host has it");
    }
}
