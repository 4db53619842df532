//! The deploy state machine of one app: verify, fetch, install, hooks, flip,
//! restart, health, and the automatic rollback.

use super::*;

impl AppRunner {
    /// Waits for every process to pass, then requires that they keep passing for
    /// the minimum healthy time. Err carries the reason (naming missing env vars).
    pub(super) async fn wait_healthy(
        &self,
        spec: &ReleaseSpec,
        version: &str,
    ) -> Result<(), String> {
        let release = self.paths.release(version);
        let env = self.app_env(version)?;
        for rec in &self.procs {
            let Some(ps) = spec.processes.get(&rec.process) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(ps.health.timeout_secs);
            loop {
                let probe = self.probe_for(ps, &release, &env);
                match health::check_once(rec, &release, &ps.required_env, probe).await {
                    Verdict::Healthy => break,
                    Verdict::Failed { reason, .. } => return Err(reason),
                    Verdict::NotReady(why) if Instant::now() >= deadline => {
                        return Err(format!(
                            "not ready within {}s: {why}",
                            ps.health.timeout_secs
                        ));
                    }
                    Verdict::NotReady(_) => tokio::time::sleep(CHECK_EVERY).await,
                }
            }
        }
        let hold = spec
            .processes
            .values()
            .map(|p| p.health.min_healthy_secs)
            .max()
            .unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(hold);
        while Instant::now() < until {
            tokio::time::sleep(CHECK_EVERY * 2).await;
            for rec in &self.procs {
                let Some(ps) = spec.processes.get(&rec.process) else {
                    continue;
                };
                let probe = self.probe_for(ps, &release, &env);
                match health::check_once(rec, &release, &ps.required_env, probe).await {
                    Verdict::Healthy => {}
                    Verdict::Failed { reason: why, .. } | Verdict::NotReady(why) => {
                        return Err(format!("during the {hold}s minimum healthy time: {why}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The deploy state machine for one desired release.
    pub(super) async fn deploy(&mut self, d: &DesiredApp) -> Outcome {
        let target = Target::from(d);
        let version = d.version.clone();
        // 0. The manifest must be the one the controller named, for this app.
        let manifest = match self.verify_manifest(d) {
            Ok(m) => m,
            Err(why) => return self.refuse(&target, "verify", why),
        };
        if let Err(why) = self.verify_signatures(d) {
            return self.refuse(&target, "verify", why);
        }
        let _lock = match AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT).await {
            Ok(l) => l,
            Err(e) => return Outcome::Transient(e.to_string()),
        };
        // A local action may have run while we waited for the lock.
        if self.reload_if_changed() && !self.needs_deploy(d) {
            return Outcome::Done;
        }
        tracing::info!(app = %self.name, %version, generation = d.generation, "deploying");

        // 1. Fetch into this app's cache.
        let Some(channel) = self.channel.borrow().clone() else {
            return Outcome::Transient("controller not connected".into());
        };
        self.set_state(State::Fetching);
        let blob_digest = match Digest::parse(&d.blob_digest) {
            Ok(b) => b,
            Err(e) => return self.refuse(&target, "fetch", e.to_string()),
        };
        let mut client =
            AgentsClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
        let blob = match crate::fetch::fetch_blob(
            &mut client,
            &self.paths.cache,
            &blob_digest,
            d.blob_size,
        )
        .await
        {
            Ok(p) => p,
            Err(crate::fetch::FetchError::Rpc { status, .. })
                if status.code() != tonic::Code::NotFound =>
            {
                self.set_state(State::Idle);
                return Outcome::Transient(format!("fetch: {}", status.message()));
            }
            Err(e) => return self.refuse(&target, "fetch", e.to_string()),
        };
        self.log(&version, "fetch", "ok", &d.blob_digest);

        // 2. Install beside the running release; it stays untouched until the flip.
        self.set_state(State::Installing);
        let run_as = self.cfg.run_as();
        if let (Some(user), None) = (&self.cfg.user, run_as) {
            return self.refuse(&target, "unpack", format!("user {user:?} no longer exists"));
        }
        let unpacked = install::unpack_release(&self.paths, &blob, &manifest, run_as).await;
        // Once unpacked (or refused) the blob has served its purpose: the cache
        // only ever holds what is being installed.
        let _ = std::fs::remove_file(&blob);
        let release = match unpacked {
            Ok(p) => p,
            Err(e) => return self.refuse(&target, "unpack", e.to_string()),
        };
        self.status
            .installed
            .insert(version.clone(), d.manifest_digest.clone());
        self.status.counters.insert(version.clone(), d.counter);
        self.publish();
        self.log(
            &version,
            "unpack",
            "ok",
            &match run_as {
                Some(u) => format!(
                    "{} entries, unpacked as uid {}",
                    manifest.entries.len(),
                    u.uid
                ),
                None => format!("{} entries", manifest.entries.len()),
            },
        );
        let spec = match ReleaseSpec::load(&release) {
            Ok(s) => s,
            Err(e) => return self.abandon(&target, &release, "spec", e.to_string()).await,
        };
        if let Some((name, _)) = spec
            .processes
            .iter()
            .find(|(_, p)| (p.health.http.is_some() || p.health.tcp) && self.port_of(p).is_none())
        {
            let why = format!(
                "process {name} has an HTTP or TCP health check but no port: set its port in slipway.toml or apps.{}.port in the agent config",
                self.name
            );
            return self.abandon(&target, &release, "spec", why).await;
        }
        if self.cfg.service == Backend::Command
            && let Some(name) = spec
                .processes
                .keys()
                .find(|p| !self.cfg.commands.contains_key(*p))
        {
            let why = format!(
                "process {name} has no start/stop/pid commands in apps.{}.commands",
                self.name
            );
            return self.abandon(&target, &release, "spec", why).await;
        }
        if let Err(e) =
            install::link_shared(&self.paths, &release, &spec.shared.files, &spec.shared.dirs)
        {
            return self
                .abandon(&target, &release, "link_shared", e.to_string())
                .await;
        }
        // The env is read before anything is stopped: a broken env file refuses
        // the release while the old one keeps serving.
        let env = match self.app_env(&version) {
            Ok(e) => e,
            Err(e) => return self.abandon(&target, &release, "env", e).await,
        };
        self.warn_env_duplicates(&version);
        if let Some(hook) = &spec.hooks.prepare {
            match install::run_hook(hook, &release, &env, self.cfg.run_as()).await {
                Ok(out) => self.log(&version, "prepare", "ok", self.redact(&out).trim()),
                Err(e) => {
                    let why = self.redact(&e.to_string());
                    return self.abandon(&target, &release, "prepare", why).await;
                }
            }
        }

        self.take_baseline(&version).await;

        // 3. Activate: record, flip, restart.
        let previous = self.paths.current_version().filter(|v| v != &version);
        let previous_digest = self.status.running_digest.clone();
        self.status.activating = Some(Activation {
            version: version.clone(),
            digest: d.manifest_digest.clone(),
            generation: d.generation,
            previous: previous.clone(),
            previous_digest: previous_digest.clone(),
        });
        self.set_state(State::Activating);
        if let Some(running) = &previous {
            self.warn_restart(running).await;
        }
        self.stop_all().await;
        if let Err(e) = install::flip_current(&self.paths, &version) {
            return self
                .roll_back(
                    &target,
                    previous,
                    previous_digest,
                    format!("flip current: {e}"),
                )
                .await;
        }
        self.log(&version, "flip", "ok", "");
        match self.start_processes(&spec, &version, &env) {
            Ok(p) => self.procs = p,
            Err(e) => return self.roll_back(&target, previous, previous_digest, e).await,
        }

        // 4. Health.
        if let Err(reason) = self.wait_healthy(&spec, &version).await {
            return self
                .roll_back(&target, previous, previous_digest, reason)
                .await;
        }
        self.activated(&target, previous.as_deref());
        self.post_activate(&version).await;
        Outcome::Done
    }

    /// The release proved healthy: record it, prune old releases.
    pub(super) fn activated(&mut self, t: &Target, previous: Option<&str>) {
        self.log(&t.version, "health", "ok", "");
        let s = &mut self.status;
        s.running_version = Some(t.version.clone());
        s.running_digest = Some(t.digest.clone());
        s.state = State::Healthy;
        s.health = HealthState::Healthy;
        s.health_reason.clear();
        s.env_check = EnvState::Ok;
        s.missing_env.clear();
        s.last_error.clear();
        s.failed = None;
        s.activating = None;
        s.drift.clear();
        s.drift_count = 0;
        s.drift_digest.clear();
        s.generation = t.generation;
        s.history.retain(|v| v != &t.version);
        s.history.push(t.version.clone());
        let protect: Vec<&str> = [Some(t.version.as_str()), previous]
            .into_iter()
            .flatten()
            .collect();
        let removed = install::prune(
            &self.paths,
            &self.status.history,
            self.cfg.keep_releases,
            &protect,
        );
        self.status.history.retain(|v| !removed.contains(v));
        for v in &removed {
            let _ = std::fs::remove_file(self.paths.baseline(v));
        }
        self.status.installed.retain(|v, _| !removed.contains(v));
        if !removed.is_empty() {
            self.log(&t.version, "prune", "ok", &removed.join(", "));
        }
        self.restarts = 0;
        self.publish();
        self.log(&t.version, "deploy", "healthy", "");
    }

    /// Runs a hook of `version` in `dir`, logging its (masked) output.
    pub(super) async fn run_hook_logged(
        &self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        version: &str,
    ) -> Result<(), String> {
        let env = self.app_env(version)?;
        match install::run_hook(hook, dir, &env, self.cfg.run_as()).await {
            Ok(out) => {
                self.log(version, step, "ok", self.redact(&out).trim());
                Ok(())
            }
            Err(e) => {
                let why = self.redact(&e.to_string());
                self.log(version, step, "failed", &why);
                Err(why)
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
        let Some(port) = target.and_then(|(_, p)| self.port_of(p)) else {
            self.log(
                running,
                "restart_warning",
                "skipped",
                "no process with a port to warn",
            );
            return;
        };
        match health::http_request(hyper::Method::POST, port, &w.http).await {
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

    pub(super) fn verify_manifest(&self, d: &DesiredApp) -> Result<Manifest, String> {
        let got = Digest::of(&d.manifest);
        if got.to_string() != d.manifest_digest {
            return Err(format!(
                "manifest bytes hash to {got}, not {}",
                d.manifest_digest
            ));
        }
        let limits = artifact::Limits::default();
        let m =
            Manifest::from_canonical_bytes(&d.manifest, limits.max_entries, limits.max_total_bytes)
                .map_err(|e| format!("manifest: {e}"))?;
        if m.app != self.name
            || m.version != d.version
            || m.blob.digest != d.blob_digest
            || m.blob.size != d.blob_size
        {
            return Err("manifest does not describe the desired release".into());
        }
        Ok(m)
    }

    /// With `[trust] publisher_keys`: the release must be signed by enough
    /// distinct trusted keys, and one older than what runs (lower counter) also
    /// needs an operator-signed rollback authorization for this environment.
    pub(super) fn verify_signatures(&self, d: &DesiredApp) -> Result<(), String> {
        let policy = &self.trust;
        if !policy.enforced() {
            return Ok(());
        }
        let release = trust::sign::ReleaseStatement {
            tenant: &d.tenant,
            app: &self.name,
            version: &d.version,
            counter: d.counter,
            manifest_digest: &d.manifest_digest,
        };
        let valid = trust::sign::count_trusted(
            &release.bytes(),
            pairs(&d.release_signatures),
            &policy.publisher_keys,
        );
        if valid < policy.signatures_required {
            return Err(format!(
                "release is signed by {valid} trusted publisher key(s); {} required",
                policy.signatures_required
            ));
        }
        let running = self
            .status
            .running_version
            .as_ref()
            .and_then(|v| self.status.counters.get(v))
            .copied()
            .unwrap_or(0);
        if d.counter < running {
            let rollback = trust::sign::RollbackStatement {
                tenant: &d.tenant,
                app: &self.name,
                environment: &d.environment,
                version: &d.version,
                manifest_digest: &d.manifest_digest,
            };
            let valid = trust::sign::count_trusted(
                &rollback.bytes(),
                pairs(&d.rollback_authorization),
                &policy.publisher_keys,
            );
            if valid < policy.signatures_required {
                return Err(format!(
                    "downgrade refused: release counter {} is below the running release's {running}; going back needs an operator-signed rollback (slipctl rollback --to {} --sign KEY)",
                    d.counter, d.version
                ));
            }
        }
        Ok(())
    }

    pub(super) fn set_state(&mut self, state: State) {
        self.status.state = state;
        self.publish();
    }

    pub(super) fn record_failure(&mut self, t: &Target, reason: String) {
        self.status.last_error = format!("{}: {reason}", t.version);
        self.status.failed = Some(FailedRelease {
            version: t.version.clone(),
            digest: t.digest.clone(),
            generation: t.generation,
            reason,
        });
        self.status.generation = t.generation;
    }

    /// Refuses the release for this generation before the flip: what runs is
    /// untouched and keeps serving.
    pub(super) fn refuse(&mut self, t: &Target, step: &str, reason: String) -> Outcome {
        self.log(&t.version, step, "failed", &reason);
        tracing::error!(app = %self.name, version = %t.version, step, reason = %reason, "deploy refused; the running release keeps serving");
        self.record_failure(t, format!("{step}: {reason}"));
        self.status.state = if self.status.running_version.is_some() {
            State::RolledBack
        } else {
            State::Failed
        };
        self.publish();
        Outcome::Done
    }

    /// Like `refuse`, and removes the half-installed release dir.
    pub(super) async fn abandon(
        &mut self,
        t: &Target,
        release: &Path,
        step: &str,
        reason: String,
    ) -> Outcome {
        if self.paths.current_version().as_deref() != Some(t.version.as_str()) {
            let _ = tokio::fs::remove_dir_all(release).await;
            self.status.installed.remove(&t.version);
        }
        self.refuse(t, step, reason)
    }

    /// After the flip: put the previous release back and report why.
    pub(super) async fn roll_back(
        &mut self,
        t: &Target,
        previous: Option<String>,
        previous_digest: Option<String>,
        reason: String,
    ) -> Outcome {
        self.log(&t.version, "health", "failed", &reason);
        self.stop_all().await;
        // Missing env names travel in the reason; env_check and missing_env keep
        // describing the release that runs.
        self.record_failure(t, reason.clone());
        let failed_dir = self.paths.release(&t.version);
        if let Ok(spec) = ReleaseSpec::load(&failed_dir)
            && let Some(hook) = &spec.hooks.on_rollback
        {
            let _ = self
                .run_hook_logged("on_rollback", hook, &failed_dir, &t.version)
                .await;
        }
        let Some(prev) = previous else {
            install::clear_current(&self.paths);
            self.status.activating = None;
            self.status.running_version = None;
            self.status.running_digest = None;
            self.status.state = State::Failed;
            self.status.health = HealthState::Unhealthy;
            self.status.health_reason = reason;
            self.publish();
            self.log(
                &t.version,
                "deploy",
                "failed",
                "no previous release to roll back to",
            );
            return Outcome::Done;
        };
        let restored = async {
            install::flip_current(&self.paths, &prev).map_err(|e| e.to_string())?;
            let spec = ReleaseSpec::load(&self.paths.release(&prev)).map_err(|e| e.to_string())?;
            let env = self.app_env(&prev)?;
            self.procs = self.start_processes(&spec, &prev, &env)?;
            self.wait_healthy(&spec, &prev).await
        }
        .await;
        self.status.activating = None;
        self.status.running_version = Some(prev.clone());
        self.status.running_digest = previous_digest;
        match restored {
            Ok(()) => {
                self.status.state = State::RolledBack;
                self.status.health = HealthState::Healthy;
                self.status.health_reason.clear();
                self.status.env_check = EnvState::Ok;
                self.status.missing_env.clear();
                self.log(&t.version, "rollback", "ok", &format!("back on {prev}"));
                tracing::warn!(app = %self.name, failed = %t.version, running = %prev, reason = %self.status.last_error, "rolled back");
            }
            Err(e) => {
                self.status.state = State::Failed;
                self.status.health = HealthState::Unhealthy;
                self.status.health_reason =
                    format!("previous release {prev} is unhealthy too: {e}");
                self.log(
                    &t.version,
                    "rollback",
                    "failed",
                    &self.status.health_reason.clone(),
                );
                tracing::error!(app = %self.name, reason = %self.status.health_reason, "rollback did not restore a healthy release");
            }
        }
        self.publish();
        Outcome::Done
    }
}

/// `(key, signature)` pairs of wire signatures.
fn pairs(list: &[proto::v1::Signature]) -> impl Iterator<Item = (&str, &str)> {
    list.iter().map(|s| (s.key.as_str(), s.sig.as_str()))
}
