//! Running an app's processes through its service backend: their environment,
//! start and stop, probes, the periodic monitor and restarts on env changes.

use super::*;

impl AppRunner {
    pub(super) fn grace(&self) -> Duration {
        Duration::from_secs(self.cfg.stop_grace_secs)
    }

    /// The environment processes and hooks run with: a minimal base, the host's env
    /// files in order (last wins), then what Slipway sets.
    pub(super) fn app_env(&self, version: &str) -> Result<Env, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        env.insert("LANG".into(), "C.UTF-8".into());
        env.extend(crate::envfile::load_layers(&self.env_files()).map_err(|e| e.to_string())?);
        if let Some(port) = self.cfg.port {
            env.insert("PORT".into(), port.to_string());
        }
        env.insert("SLIPWAY_APP".into(), self.name.clone());
        env.insert("SLIPWAY_VERSION".into(), version.into());
        Ok(env)
    }

    /// Env files to watch: the configured ones, or the default `shared/.env`
    /// even before it exists (creating it is a change too).
    pub(super) fn watched_env_files(&self) -> Vec<PathBuf> {
        if self.cfg.env_files.is_empty() {
            vec![self.paths.shared.join(".env")]
        } else {
            self.cfg.env_files.clone()
        }
    }

    /// An env file or the host settings changed: restart the running release's
    /// processes with the new environment and check them again (names of
    /// missing vars reported). The release stays; a deploy in progress reads
    /// the new env by itself.
    pub(super) async fn restart_running(&mut self, why: &str) {
        let Some(version) = self.status.running_version.clone() else {
            return;
        };
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return;
        };
        self.reload_if_changed();
        self.warn_env_duplicates(&version);
        let dir = self.paths.release(&version);
        let Ok(spec) = ReleaseSpec::load(&dir) else {
            return;
        };
        let env = match self.app_env(&version) {
            Ok(env) => env,
            Err(e) => {
                // Keep what runs: it still has the last good environment.
                self.log(
                    &version,
                    "env",
                    "failed",
                    &format!("{e}; processes keep their previous environment"),
                );
                self.status.health_reason = format!("env file not applied: {e}");
                self.publish();
                return;
            }
        };
        self.log(
            &version,
            "env",
            "changed",
            &format!("{why}: restarting processes"),
        );
        self.stop_all().await;
        match self.start_processes(&spec, &version, &env) {
            Ok(p) => self.procs = p,
            Err(e) => self.log(&version, "restart", "failed", &e),
        }
        match self.wait_healthy(&spec, &version).await {
            Ok(()) => self.log(&version, "env", "ok", "healthy with the new environment"),
            Err(why) => self.log(&version, "env", "unhealthy", &why),
        }
        self.monitor_locked(&spec, &version).await;
    }

    /// Warns (names and files only) about a variable defined in two env layers.
    pub(super) fn warn_env_duplicates(&self, version: &str) {
        for dup in crate::envfile::duplicates(&self.env_files()) {
            tracing::warn!(app = %self.name, duplicate = %dup, "env var defined in more than one env file; the last one wins");
            self.log(
                version,
                "env",
                "warning",
                &format!("{dup}: defined twice, the last file wins"),
            );
        }
    }

    pub(super) fn env_files(&self) -> Vec<PathBuf> {
        if !self.cfg.env_files.is_empty() {
            return self.cfg.env_files.clone();
        }
        let default = self.paths.shared.join(".env");
        if default.is_file() {
            vec![default]
        } else {
            vec![]
        }
    }

    /// Hook output with every env file value masked: what a hook prints may be
    /// logged and reported, what the env files hold may not.
    pub(super) fn redact(&self, text: &str) -> String {
        let secrets = crate::envfile::load_layers(&self.env_files()).unwrap_or_default();
        crate::envfile::redact(text, secrets.values())
    }

    pub(super) fn start_processes(
        &self,
        spec: &ReleaseSpec,
        version: &str,
        env: &Env,
    ) -> Result<Vec<ProcRecord>, String> {
        let mut procs = Vec::new();
        for (name, p) in &spec.processes {
            let mut env = env.clone();
            if let Some(port) = self.port_of(p) {
                env.insert("PORT".into(), port.to_string());
            }
            let started = match self.cfg.service {
                Backend::Supervise => supervisor::start(
                    &self.paths,
                    name,
                    version,
                    &p.command,
                    p.cwd.as_deref(),
                    &env,
                    self.cfg.run_as(),
                )
                .map_err(|e| e.to_string()),
                // The unit holds command, cwd and env files; it points at current/.
                Backend::Systemd => tokio::task::block_in_place(|| {
                    crate::systemd::restart(
                        &self.paths,
                        name,
                        &self.cfg.unit(&self.name, name),
                        version,
                    )
                }),
                Backend::Command => match self.cfg.commands.get(name) {
                    Some(cmds) => tokio::task::block_in_place(|| {
                        crate::command_backend::start(
                            &self.paths,
                            name,
                            cmds,
                            &env,
                            version,
                            self.cfg.run_as(),
                        )
                    })
                    .map_err(|e| self.redact(&e)),
                    None => Err(format!("process {name} has no commands in the host config")),
                },
            };
            match started {
                Ok(r) => procs.push(r),
                Err(e) => {
                    // Leave nothing half-started.
                    for r in &procs {
                        match self.cfg.service {
                            Backend::Supervise => supervisor::kill_group(r),
                            Backend::Systemd => crate::systemd::stop(
                                &self.paths,
                                r,
                                &self.cfg.unit(&self.name, &r.process),
                            ),
                            Backend::Command => {
                                if let Some(cmds) = self.cfg.commands.get(&r.process) {
                                    crate::command_backend::stop(
                                        &self.paths,
                                        r,
                                        cmds,
                                        &env,
                                        self.cfg.run_as(),
                                    );
                                }
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(procs)
    }

    pub(super) async fn stop_all(&mut self) {
        for p in std::mem::take(&mut self.procs) {
            self.stop_proc(&p).await;
        }
    }

    /// Stops one process through the app's service backend.
    pub(super) async fn stop_proc(&self, p: &ProcRecord) {
        match self.cfg.service {
            Backend::Supervise => supervisor::stop(&self.paths, p, self.grace()).await,
            Backend::Systemd => {
                let (paths, rec, unit) = (
                    self.paths.clone(),
                    p.clone(),
                    self.cfg.unit(&self.name, &p.process),
                );
                let _ =
                    tokio::task::spawn_blocking(move || crate::systemd::stop(&paths, &rec, &unit))
                        .await;
            }
            Backend::Command => {
                let Some(cmds) = self.cfg.commands.get(&p.process).cloned() else {
                    return;
                };
                let env = self.app_env(&p.version).unwrap_or_default();
                let (paths, rec, run_as) = (self.paths.clone(), p.clone(), self.cfg.run_as());
                let _ = tokio::task::spawn_blocking(move || {
                    crate::command_backend::stop(&paths, &rec, &cmds, &env, run_as)
                })
                .await;
            }
        }
    }

    /// The port a process listens on: its own from the spec, else the app's.
    pub(super) fn port_of(&self, ps: &artifact::spec::ProcessSpec) -> Option<u16> {
        ps.port.or(self.cfg.port)
    }

    /// The readiness probe of a process. A port-based probe without a port was
    /// refused at deploy; for a release already running it degrades to "up".
    pub(super) fn probe_for<'a>(
        &self,
        ps: &'a artifact::spec::ProcessSpec,
        dir: &'a Path,
        env: &'a Env,
    ) -> Probe<'a> {
        let port = self.port_of(ps);
        match (&ps.health, port) {
            (h, Some(port)) if h.http.is_some() => Probe::Http {
                port,
                path: h.http.as_deref().unwrap_or("/"),
            },
            (h, Some(port)) if h.tcp => Probe::Tcp { port },
            (h, _) if h.command.is_some() => Probe::Command {
                argv: h.command.as_deref().unwrap_or_default(),
                dir,
                env,
            },
            _ => Probe::Up,
        }
    }

    /// Periodic check of what runs: restarts crashed processes with backoff and
    /// keeps health and env check current.
    pub(super) async fn monitor(&mut self) {
        let Some(version) = self.status.running_version.clone() else {
            return;
        };
        // A local rollback in progress owns the processes for now.
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return;
        };
        if self.reload_if_changed() {
            return; // judged on the next round, with the processes just adopted
        }
        let Ok(spec) = ReleaseSpec::load(&self.paths.release(&version)) else {
            return;
        };
        self.monitor_locked(&spec, &version).await;
    }

    /// One monitor round, the app lock held by the caller.
    pub(super) async fn monitor_locked(&mut self, spec: &ReleaseSpec, version: &str) {
        tokio::task::block_in_place(|| {
            supervisor::rotate_logs(&self.paths, self.cfg.log_max_bytes, self.cfg.log_keep)
        });
        let version = version.to_string();
        let release = self.paths.release(&version);
        let env = self.app_env(&version).unwrap_or_default();
        let mut verdict = (
            HealthState::Healthy,
            String::new(),
            EnvState::Ok,
            Vec::new(),
        );
        let mut dead = self.procs.is_empty();
        if dead {
            verdict = (
                HealthState::Unhealthy,
                "not running".into(),
                EnvState::Unknown,
                vec![],
            );
        }
        for rec in &self.procs {
            let Some(ps) = spec.processes.get(&rec.process) else {
                continue;
            };
            let probe = self.probe_for(ps, &release, &env);
            match health::check_once(rec, &release, &ps.required_env, probe).await {
                Verdict::Healthy => {}
                Verdict::NotReady(why) => {
                    verdict.0 = HealthState::Unhealthy;
                    verdict.1 = why;
                }
                Verdict::Failed {
                    reason,
                    missing_env,
                } => {
                    dead |= !rec.alive();
                    let env = if missing_env.is_empty() {
                        verdict.2
                    } else {
                        EnvState::Missing
                    };
                    verdict = (HealthState::Unhealthy, reason, env, missing_env);
                }
            }
        }
        if dead && self.next_restart.is_none_or(|t| Instant::now() >= t) {
            self.stop_all().await;
            match self
                .app_env(&version)
                .and_then(|env| self.start_processes(spec, &version, &env))
            {
                Ok(p) => {
                    self.procs = p;
                    self.restarts += 1;
                    self.log(&version, "restart", "ok", &verdict.1);
                }
                Err(e) => self.log(&version, "restart", "failed", &e),
            }
            let backoff = Duration::from_secs(1u64 << self.restarts.min(6));
            self.next_restart = Some(Instant::now() + backoff);
        }
        let s = &self.status;
        if (s.health, &s.health_reason, s.env_check, &s.missing_env)
            == (verdict.0, &verdict.1, verdict.2, &verdict.3)
            && s.state != State::Idle
        {
            return;
        }
        self.status.state = match (self.status.state, verdict.0) {
            (State::Healthy | State::Idle, HealthState::Unhealthy) => State::Unhealthy,
            (State::Unhealthy | State::Idle, HealthState::Healthy) => State::Healthy,
            (state, _) => state,
        };
        (
            self.status.health,
            self.status.health_reason,
            self.status.env_check,
            self.status.missing_env,
        ) = verdict;
        self.publish();
    }
}
