//! Actions an operator runs on the host (`slipway-agent rollback`), serialized
//! with deploys by the app lock.

use super::*;

impl AppRunner {
    /// `slipway-agent rollback APP [--to VERSION]`, run on the host without the
    /// controller: serialized with deploys by the app lock, health-checked like a
    /// deploy, undone if the target does not prove healthy. The release it leaves
    /// is recorded as refused so the agent does not re-apply it by itself.
    pub async fn local_rollback(
        &mut self,
        to: Option<String>,
        actor: &str,
    ) -> Result<String, String> {
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        self.reload_if_changed();
        self.procs = supervisor::adopt(&self.paths);
        let current = self
            .paths
            .current_version()
            .ok_or_else(|| format!("{}: no release is active on this host", self.name))?;
        let target = match to {
            Some(v) => {
                artifact::validate_name(artifact::NameKind::Version, &v)
                    .map_err(|e| e.to_string())?;
                v
            }
            None => {
                let pos = self.status.history.iter().position(|v| v == &current);
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
            let kept = crate::local::kept_versions(&self.paths).join(", ");
            return Err(format!(
                "{}: release {target} is not on this host (kept: {kept})",
                self.name
            ));
        }
        let spec = ReleaseSpec::load(&self.paths.release(&target)).map_err(|e| e.to_string())?;
        let env = self.app_env(&target)?;
        let current_digest = self
            .status
            .running_digest
            .clone()
            .or_else(|| self.status.installed.get(&current).cloned())
            .unwrap_or_default();

        self.stop_all().await;
        let switched = async {
            install::flip_current(&self.paths, &target).map_err(|e| e.to_string())?;
            self.procs = self.start_processes(&spec, &target, &env)?;
            self.wait_healthy(&spec, &target).await
        }
        .await;
        if let Err(reason) = switched {
            // Put back what ran before; the operator's command failed, nothing else.
            self.stop_all().await;
            let _ = install::flip_current(&self.paths, &current);
            if let (Ok(spec), Ok(env)) = (
                ReleaseSpec::load(&self.paths.release(&current)),
                self.app_env(&current),
            ) {
                self.procs = self
                    .start_processes(&spec, &current, &env)
                    .unwrap_or_default();
            }
            self.log(&target, "local_rollback", "failed", &reason);
            self.publish();
            return Err(format!(
                "{}: {target} did not prove healthy, {current} restored: {reason}",
                self.name
            ));
        }
        let reason = format!("rolled back on the host by {actor}");
        self.status.failed = Some(FailedRelease {
            version: current.clone(),
            digest: current_digest,
            generation: self.status.generation,
            reason: reason.clone(),
        });
        self.status.last_error = format!("{current}: {reason}");
        self.status.running_version = Some(target.clone());
        self.status.running_digest = self.status.installed.get(&target).cloned();
        self.status.state = State::RolledBack;
        self.status.health = HealthState::Healthy;
        self.status.health_reason.clear();
        self.status.env_check = EnvState::Ok;
        self.status.missing_env.clear();
        self.status.activating = None;
        self.publish();
        self.log(
            &target,
            "local_rollback",
            "ok",
            &format!("{current} -> {target} by {actor}"),
        );
        Ok(format!("{}: {current} -> {target}, healthy", self.name))
    }
}
