//! The release's `[migrations]`, in the prepare step (before anything
//! stops): list what is pending, try it (the dry run), and apply it when the
//! directive allows (the environment's policy, or a promoter's approval);
//! otherwise refuse the release while anything is pending, so the previous
//! release keeps serving. Each command is a tracked hook: its output is
//! masked like hook output, and a restarted agent never runs a second copy
//! beside one left running.

use std::path::Path;

use artifact::spec::{MIGRATIONS_AWAITING, Migrations};

use crate::directive::Directive;
use crate::state::Progress;

use super::{AppRunner, DeployError};

/// Pending migrations named in a refusal or a log line (the rest counted).
const NAMES_SHOWN: usize = 20;
/// A pending migration's name is cut past this many characters.
const MAX_NAME_CHARS: usize = 200;
/// Lines of the pending list read at most.
const MAX_PENDING: usize = 10_000;

/// The pending list's lines: trimmed, non-empty, escaped, bounded.
fn pending_names(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(MAX_PENDING)
        .map(|l| {
            l.chars()
                .take(MAX_NAME_CHARS)
                .flat_map(|c| {
                    if c.is_control() {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect()
        })
        .collect()
}

/// "2 pending (0001_users, 0002_index)".
fn summary(names: &[String]) -> String {
    let mut shown = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        shown.push_str(&format!(", and {} more", names.len() - NAMES_SHOWN));
    }
    format!("{} pending ({shown})", names.len())
}

impl AppRunner {
    pub(super) async fn migrate(
        &mut self,
        m: &Migrations,
        dir: &Path,
        p: &mut Progress,
        d: &Directive,
    ) -> Result<(), DeployError> {
        let version = p.target.version.clone();
        let failed = |what: &str, e: DeployError| DeployError::Migrations(format!("{what}: {e}"));
        let out = self
            .run_tracked_hook("migrations_pending", &m.hook(&m.pending), dir, p)
            .await
            .map_err(|e| failed("listing pending migrations", e))?;
        let names = pending_names(&out.stdout);
        if names.is_empty() {
            self.log(&version, "migrations", "ok", "none pending");
            return Ok(());
        }
        let pending = summary(&names);
        if let Some(dry_run) = &m.dry_run {
            self.run_tracked_hook("migrations_dry_run", &m.hook(dry_run), dir, p)
                .await
                .map_err(|e| failed(&format!("dry run of {pending} failed"), e))?;
        }
        if !d.apply_migrations {
            return Err(DeployError::Migrations(format!(
                "{MIGRATIONS_AWAITING}: {pending}; {}: a promoter applies them with `slipctl migrate {} --env {}`",
                p.previous
                    .as_ref()
                    .map_or("nothing was started".into(), |prev| format!(
                        "{} keeps running",
                        prev.version
                    )),
                d.app,
                d.environment,
            )));
        }
        let Some(apply) = &m.apply else {
            return Err(DeployError::Migrations(format!(
                "{pending}, and slipway.toml's [migrations] has no apply command"
            )));
        };
        self.run_tracked_hook("migrations_apply", &m.hook(apply), dir, p)
            .await
            .map_err(|e| failed(&format!("applying {pending}"), e))?;
        self.log(&version, "migrations", "applied", &pending);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_list_is_read_line_by_line_escaped_and_summed_up() {
        let names = pending_names("  0001_users\n\n0002_index\x1b[31m\n");
        assert_eq!(names, ["0001_users", "0002_index\\u{1b}[31m"]);
        assert_eq!(summary(&names[..1]), "1 pending (0001_users)");
        let many: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
        let s = summary(&many);
        assert!(
            s.starts_with("25 pending (m0, m1") && s.ends_with("m19, and 5 more)"),
            "{s}"
        );
    }
}
