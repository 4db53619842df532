//! The release's hooks around a deploy: `prepare` and `on_rollback` tracked in
//! the progress (a restarted agent kills or waits for what is left of them),
//! `post_activate` once healthy, and the restart warning sent before a stop.

use std::path::Path;
use std::time::Duration;

use artifact::ReleaseSpec;
use tokio::time::Instant;

use crate::install;
use crate::state::{HookRun, Progress};

use super::backend::port_of;
use super::{AppRunner, CHECK_EVERY, DeployError};

impl AppRunner {
    /// Runs a deploy hook (`prepare`, `on_rollback`) of the target in `dir`,
    /// its process recorded in the progress while it runs (a restarted agent
    /// kills or waits for what is left of it), its masked output logged.
    pub(super) async fn run_tracked_hook(
        &mut self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        p: &mut Progress,
    ) -> Result<install::HookOutput, DeployError> {
        let version = p.target.version.clone();
        let mut env = self.env_for(&version)?;
        let nonce = crate::supervisor::nonce();
        env.insert(crate::supervisor::RUN_VAR.into(), nonce.clone());
        p.hook_nonce = Some(nonce);
        let (secrets, run_as) = (self.secret_values(), self.cfg.run_as());
        // Persisted before it starts (the caller's marks included, such as
        // `on_rollback_started`: it runs at most once per deploy).
        self.status.deploy = Some(p.clone());
        self.publish();
        let out = install::run_hook_output(hook, dir, &env, &secrets, run_as, |pid| {
            p.hook =
                crate::supervisor::start_time(pid).map(|start_time| HookRun { pid, start_time });
            self.status.deploy = Some(p.clone());
            self.publish();
            crate::failpoint::hit(&format!("hook-started:{step}"));
        })
        .await;
        p.hook = None;
        p.hook_nonce = None;
        match out {
            Ok(out) => {
                self.log(&version, step, "ok", out.all.trim());
                Ok(out)
            }
            Err(e) => {
                let why = e.to_string();
                self.log(&version, step, "failed", &why);
                Err(DeployError::Hook(why))
            }
        }
    }

    /// The hook an earlier agent left running: its recorded pid, or the one
    /// found by its nonce when the agent died between spawn and record.
    pub(super) fn left_hook(p: &Progress) -> Option<HookRun> {
        p.hook.or_else(|| {
            let (pid, start_time) = crate::supervisor::find_by_nonce(p.hook_nonce.as_deref()?)?;
            Some(HookRun { pid, start_time })
        })
    }

    /// Waits (at most `secs` + 10 s) for what is left of a hook an earlier
    /// agent started, then kills the rest.
    pub(super) async fn wait_for_hook(&self, left: HookRun, secs: u64) {
        let root = self.paths.root.clone();
        let deadline = Instant::now() + Duration::from_secs(secs + 10);
        while Instant::now() < deadline
            && crate::supervisor::group_left(left.pid, left.start_time, &root)
        {
            tokio::time::sleep(CHECK_EVERY).await;
        }
        crate::supervisor::kill_group_left(left.pid, left.start_time, &root);
    }

    /// Runs a hook of `version` in `dir`, logging its (masked) output.
    pub(super) async fn run_hook_logged(
        &self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        version: &str,
    ) -> Result<(), DeployError> {
        let env = self.env_for(version)?;
        let secrets = self.secret_values();
        match install::run_hook(hook, dir, &env, &secrets, self.cfg.run_as(), |_| {}).await {
            Ok(out) => {
                self.log(version, step, "ok", out.trim());
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.log(version, step, "failed", &why);
                Err(DeployError::Hook(why))
            }
        }
    }

    /// `post_activate`, once the release is healthy. A failure is reported; the
    /// healthy release stays.
    pub(super) async fn post_activate(&mut self, version: &str) {
        let dir = self.paths.release(version);
        let Ok(spec) = ReleaseSpec::load(&dir) else {
            return;
        };
        let Some(hook) = &spec.hooks.post_activate else {
            return;
        };
        if let Err(why) = self
            .run_hook_logged("post_activate", hook, &dir, version)
            .await
        {
            self.status.last_error = format!("{version} post_activate hook {why}");
            self.publish();
        }
    }

    /// POSTs the running release's restart warning, if it has one, then waits.
    pub(super) async fn warn_restart(&self, running: &str) {
        let Ok(spec) = ReleaseSpec::load(&self.paths.release(running)) else {
            return;
        };
        let Some(w) = &spec.restart_warning else {
            return;
        };
        let target = match &w.process {
            Some(p) => spec.processes.get_key_value(p),
            None => spec
                .processes
                .iter()
                .find(|(_, p)| p.health.http.is_some() || p.health.tcp),
        };
        let Some(port) = target.and_then(|(_, p)| port_of(&self.cfg, p)) else {
            self.log(
                running,
                "restart_warning",
                "skipped",
                "no process with a port to warn",
            );
            return;
        };
        match crate::health::http_request(hyper::Method::POST, port, &w.http).await {
            Ok(status) => self.log(
                running,
                "restart_warning",
                "ok",
                &format!("POST {} answered {status}; waiting {}s", w.http, w.seconds),
            ),
            Err(e) => self.log(
                running,
                "restart_warning",
                "failed",
                &format!("POST {}: {e}", w.http),
            ),
        }
        tokio::time::sleep(Duration::from_secs(w.seconds)).await;
    }
}
