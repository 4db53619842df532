//! Actions an operator runs on the host (`slipway-agent rollback`), serialized
//! with deploys by the app lock and run by the same deploy machine.

use crate::lock::AppLock;
use crate::state::{Origin, Previous, Progress, Target};
use crate::step::Step;

use super::{AppRunner, LOCK_TIMEOUT};

impl AppRunner {
    /// `slipway-agent rollback APP [--to VERSION]`, run on the host without the
    /// controller: the deploy machine from `Stop` on, with a kept release as
    /// the target; health-checked like a deploy, undone if the target does not
    /// prove healthy. The release it leaves is recorded as refused so the agent
    /// does not re-apply it by itself.
    pub async fn local_rollback(
        &mut self,
        to: Option<String>,
        actor: &str,
    ) -> Result<String, String> {
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        self.reload_if_changed();
        self.procs = self.backend.adopt();
        let current = self
            .paths
            .current_version()
            .ok_or_else(|| format!("{}: no release is active on this host", self.name))?;
        let target = self.rollback_target(&current, to)?;
        artifact::ReleaseSpec::load(&self.paths.release(&target)).map_err(|e| e.to_string())?;
        self.env_for(&target).map_err(|e| e.to_string())?;
        let previous = self.previous_of(&target).unwrap_or(Previous {
            version: current.clone(),
            digest: None,
        });
        let t = Target {
            digest: self
                .status
                .installed
                .get(&target)
                .cloned()
                .unwrap_or_default(),
            counter: self.status.counters.get(&target).copied().unwrap_or(0),
            generation: self.status.generation,
            version: target.clone(),
        };
        let p = Progress::new(
            Step::Stop,
            t,
            Some(previous),
            Origin::Host {
                actor: actor.to_string(),
            },
        );
        let reached = self
            .drive(p, super::machine::Work::default())
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        if reached.step == Step::Healthy {
            return Ok(format!("{}: {current} -> {target}, healthy", self.name));
        }
        Err(format!(
            "{}: {target} did not prove healthy, {current} restored: {}",
            self.name, reached.reason
        ))
    }

    /// The release to go back to: the one named, or the newest kept release
    /// activated before `current`.
    fn rollback_target(&self, current: &str, to: Option<String>) -> Result<String, String> {
        let target = match to {
            Some(v) => {
                artifact::validate_name(artifact::NameKind::Version, &v)
                    .map_err(|e| e.to_string())?;
                v
            }
            None => {
                let pos = self.status.history.iter().position(|v| v == current);
                let older = pos.map_or(&self.status.history[..], |i| &self.status.history[..i]);
                older
                    .iter()
                    .rev()
                    .find(|v| self.paths.release(v).is_dir())
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "{}: no earlier release is kept on this host; name one with --to",
                            self.name
                        )
                    })?
            }
        };
        if target == current {
            return Err(format!(
                "{}: {target} is already the active release",
                self.name
            ));
        }
        if !self.paths.release(&target).is_dir() {
            let kept = self.paths.kept_versions().join(", ");
            return Err(format!(
                "{}: release {target} is not on this host (kept: {kept})",
                self.name
            ));
        }
        Ok(target)
    }
}
