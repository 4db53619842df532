//! The running release's drift, for one app: the baseline taken when the
//! release was installed, a `notify` watch on the live tree that triggers a
//! check right after a change, and a full check on a timer (a watch can miss
//! events; the timer cannot). What differs goes into the status and up to the
//! controller as "changed|added|removed <path>" lines.

use std::sync::Arc;

use crate::drift::{self, Baseline};
use crate::filewatch::FileWatch;

use super::AppRunner;

/// Drift lines reported per app (the count says how many in all).
pub const DRIFT_LINES: usize = 50;
/// Longest drift line reported (a longer path is cut, marked with "…").
const MAX_LINE: usize = 400;

/// A drift line as reported: control characters shown escaped, bounded.
fn report_line(line: &str) -> String {
    let mut out: String = line.escape_debug().collect();
    if out.len() > MAX_LINE {
        out.truncate(out.floor_char_boundary(MAX_LINE));
        out.push('…');
    }
    out
}

/// The release drift is being checked for.
pub(super) struct Armed {
    version: String,
    baseline: Option<Arc<Baseline>>,
}

impl AppRunner {
    /// Records the release as installed (after `prepare`, before the flip), so
    /// what hooks produce is part of it and what hands change later is not.
    pub(super) async fn take_baseline(&self, version: &str, known: drift::Known) {
        let root = self.paths.release(version);
        let path = self.paths.baseline(version);
        let v = version.to_string();
        let result = tokio::task::spawn_blocking(move || {
            drift::snapshot_known(&root, &v, &known)?.save(&path)
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(app = %self.name, %version, error = %e, "cannot record the drift baseline; drift of this release goes unseen")
            }
            Err(e) => tracing::warn!(app = %self.name, error = %e, "baseline task failed"),
        }
    }

    /// Whether `current` moved to another release than the one watched.
    pub(super) fn drift_stale(&self) -> bool {
        self.paths.current_version().as_deref() != self.drift.as_ref().map(|a| a.version.as_str())
    }

    /// Watches the release `current` holds now: loads its baseline (or, for a
    /// release installed before baselines existed, takes one now) and starts
    /// a watch on its tree.
    pub(super) async fn arm_drift(&mut self) -> Option<FileWatch> {
        let Some(version) = self.paths.current_version() else {
            self.drift = None;
            return None;
        };
        let path = self.paths.baseline(&version);
        let baseline = match Baseline::load(&path) {
            Ok(Some(b)) if b.version == version => Some(b),
            Ok(_) => {
                tracing::warn!(app = %self.name, %version, "no drift baseline for the running release; taking one now (earlier hand edits go unseen)");
                self.take_baseline(&version, drift::Known::default()).await;
                Baseline::load(&path).ok().flatten()
            }
            Err(e) => {
                tracing::warn!(app = %self.name, %version, error = %e, "drift baseline unreadable; drift goes unseen");
                None
            }
        };
        self.drift = Some(Armed {
            version,
            baseline: baseline.map(Arc::new),
        });
        self.watch_release()
    }

    /// A watch on the tree of the release being checked for drift.
    pub(super) fn watch_release(&self) -> Option<FileWatch> {
        let version = &self.drift.as_ref()?.version;
        match crate::filewatch::watch_tree(&self.paths.release(version)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(app = %self.name, %version, error = %e, "cannot watch the release; drift is found by the periodic check only");
                None
            }
        }
    }

    /// Compares the running release with its baseline and reports any change
    /// of the drift found.
    pub(super) async fn check_drift(&mut self) {
        let Some(Armed {
            version,
            baseline: Some(baseline),
        }) = &self.drift
        else {
            return;
        };
        let root = self.paths.release(version);
        let baseline = baseline.clone();
        let version = version.clone();
        let v = version.clone();
        let checked = tokio::task::spawn_blocking(move || {
            drift::compare(&root, &baseline).map(|d| {
                let digest = if d.is_empty() {
                    String::new()
                } else {
                    d.digest(&root, &v)
                };
                (d, digest)
            })
        })
        .await;
        let (found, digest) = match checked {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(app = %self.name, %version, error = %e, "drift check failed");
                return;
            }
            Err(e) => {
                tracing::warn!(app = %self.name, error = %e, "drift task failed");
                return;
            }
        };
        let count = u32::try_from(found.count()).unwrap_or(u32::MAX);
        if digest == self.status.drift_digest && count == self.status.drift_count {
            return;
        }
        let lines: Vec<String> = found
            .lines(DRIFT_LINES)
            .iter()
            .map(|l| report_line(l))
            .collect();
        if count > 0 {
            tracing::warn!(app = %self.name, %version, count, paths = %lines.join(", "), "drift: the running release was changed on the host");
            self.log(&version, "drift", "found", &lines.join(", "));
        } else {
            tracing::info!(app = %self.name, %version, "drift gone: the running release matches its baseline again");
            self.log(&version, "drift", "cleared", "");
        }
        self.status.drift = lines;
        self.status.drift_count = count;
        self.status.drift_digest = digest;
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_lines_are_escaped_and_bounded() {
        assert_eq!(report_line("changed a\nb"), "changed a\\nb");
        let long = format!("added {}", "é".repeat(400));
        let line = report_line(&long);
        assert!(line.len() <= MAX_LINE + '…'.len_utf8(), "{}", line.len());
        assert!(line.ends_with('…') && line.starts_with("added é"));
    }
}
