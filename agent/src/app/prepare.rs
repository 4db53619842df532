//! The deploy steps before anything serving is touched: verify (publisher
//! signatures, downgrades, a release kept on the host), fetch, unpack, and
//! prepare (spec checks, shared links, env, the `prepare` hook, the baseline).
//! A failure here refuses the release; the old one keeps serving.

use artifact::ReleaseSpec;

use crate::config::Backend;
use crate::directive::Directive;
use crate::install;
use crate::state::{Progress, Target};
use crate::step::Outcome;

use super::backend::port_of;
use super::machine::Work;
use super::{AppRunner, DeployError};

impl AppRunner {
    pub(super) async fn verify(
        &mut self,
        p: &mut Progress,
        w: &Work,
    ) -> Result<Outcome, DeployError> {
        let d = w
            .directive
            .as_ref()
            .ok_or_else(|| DeployError::Verify("no directive to verify".into()))?;
        let accepted = self.verify_signatures(d, crate::state::now())?;
        self.record_rollback(d, accepted);
        if self.kept_intact(&p.target).await {
            p.kept = true;
            self.log(
                &p.target.version,
                "verify",
                "ok",
                "kept on this host and unchanged since installed: not fetched again",
            );
            return Ok(Outcome::Kept);
        }
        Ok(Outcome::Ok)
    }

    /// Whether the release is unpacked here already, recorded with this
    /// digest, and still matches the baseline taken when it was installed.
    pub(super) async fn kept_intact(&self, t: &Target) -> bool {
        let dir = self.paths.release(&t.version);
        if self.paths.current_version().as_deref() == Some(t.version.as_str())
            || !dir.is_dir()
            || self.status.installed.get(&t.version) != Some(&t.digest)
        {
            return false;
        }
        let Ok(Some(baseline)) = crate::drift::Baseline::load(&self.paths.baseline(&t.version))
        else {
            return false;
        };
        if baseline.version != t.version {
            return false;
        }
        tokio::task::spawn_blocking(move || {
            crate::drift::compare(&dir, &baseline).is_ok_and(|d| d.is_empty())
        })
        .await
        .unwrap_or(false)
    }

    pub(super) async fn fetch_blob(&mut self, w: &mut Work) -> Result<Outcome, DeployError> {
        let d = w
            .directive
            .as_ref()
            .ok_or_else(|| DeployError::Transient("fetch without a directive".into()))?;
        let blob = self
            .fetch
            .fetch(&self.paths.cache, &d.blob, d.blob_size)
            .await?;
        self.log(&d.version, "fetch", "ok", &d.blob.to_string());
        w.blob = Some(blob);
        Ok(Outcome::Ok)
    }

    pub(super) async fn unpack(
        &mut self,
        p: &mut Progress,
        w: &mut Work,
    ) -> Result<Outcome, DeployError> {
        let (Some(d), Some(blob)) = (w.directive.as_ref(), w.blob.take()) else {
            return Err(DeployError::Transient(
                "unpack without a fetched blob".into(),
            ));
        };
        let run_as = self.cfg.run_as();
        if let (Some(user), None) = (&self.cfg.user, run_as) {
            return Err(DeployError::Spec(format!("user {user:?} no longer exists")));
        }
        p.fresh = true;
        self.status.deploy = Some(p.clone());
        self.publish();
        let unpacked = install::unpack_release(&self.paths, &blob, &d.manifest, run_as).await;
        // Once unpacked (or refused) the blob has served its purpose: the cache
        // only ever holds what is being installed.
        let _ = std::fs::remove_file(&blob);
        unpacked?;
        let version = d.version.clone();
        self.status
            .installed
            .insert(version.clone(), d.digest.clone());
        self.status.counters.insert(version.clone(), d.counter);
        self.publish();
        let entries = d.manifest.entries.len();
        let detail = match run_as {
            Some(u) => format!("{entries} entries, unpacked as uid {}", u.uid),
            None => format!("{entries} entries"),
        };
        self.log(&version, "unpack", "ok", &detail);
        Ok(Outcome::Ok)
    }

    /// Checks the release can run here, links shared files, reads the env (a
    /// broken env file refuses the release while the old one serves), runs
    /// `prepare` and takes the drift baseline. A kept release was prepared
    /// when it was first installed: only the checks run.
    pub(super) async fn prepare(&mut self, p: &mut Progress) -> Result<Outcome, DeployError> {
        let version = p.target.version.clone();
        let release = self.paths.release(&version);
        let spec = ReleaseSpec::load(&release).map_err(|e| DeployError::Spec(e.to_string()))?;
        self.check_spec(&spec)?;
        install::link_shared(&self.paths, &release, &spec.shared.files, &spec.shared.dirs)?;
        // Read now: a broken env file refuses the release while the old one serves.
        self.env_for(&version)?;
        self.warn_env_duplicates(&version);
        if p.kept {
            return Ok(Outcome::Ok);
        }
        if let Some(hook) = &spec.hooks.prepare {
            self.run_tracked_hook("prepare", hook, &release, p).await?;
        }
        self.take_baseline(&version).await;
        Ok(Outcome::Ok)
    }

    /// Refuses a spec this host cannot run: a port probe without a port, a
    /// command backend without commands for a process.
    pub(super) fn check_spec(&self, spec: &ReleaseSpec) -> Result<(), DeployError> {
        if let Some((name, _)) = spec.processes.iter().find(|(_, p)| {
            (p.health.http.is_some() || p.health.tcp) && port_of(&self.cfg, p).is_none()
        }) {
            return Err(DeployError::Spec(format!(
                "process {name} has an HTTP or TCP health check but no port: set its port in slipway.toml or apps.{}.port in the agent config",
                self.name
            )));
        }
        if self.cfg.service == Backend::Command
            && let Some(name) = spec
                .processes
                .keys()
                .find(|p| !self.cfg.commands.contains_key(*p))
        {
            return Err(DeployError::Spec(format!(
                "process {name} has no start/stop/pid commands in apps.{}.commands",
                self.name
            )));
        }
        Ok(())
    }

    /// With `[trust] publisher_keys`: the release must be signed by enough
    /// distinct trusted keys, and one older than what runs (lower counter) also
    /// needs an operator-signed rollback authorization for this environment:
    /// v2 terms, unexpired (at most 24 h ahead), from a release at least as new
    /// as the one running, and a nonce this host has not used up. Returns the
    /// authorization's nonce when a downgrade rests on it.
    pub(super) fn verify_signatures(
        &self,
        d: &Directive,
        now: i64,
    ) -> Result<Option<String>, DeployError> {
        let policy = &self.trust;
        if !policy.enforced() {
            return Ok(None);
        }
        let release = trust::sign::ReleaseStatement {
            tenant: &d.tenant,
            app: &self.name,
            version: &d.version,
            counter: d.counter,
            manifest_digest: &d.digest,
        };
        let valid = trust::sign::count_trusted(
            &release.bytes(),
            pairs(&d.release_signatures),
            &policy.publisher_keys,
        );
        if valid < policy.signatures_required {
            return Err(DeployError::Verify(format!(
                "release is signed by {valid} trusted publisher key(s); {} required",
                policy.signatures_required
            )));
        }
        let running = self
            .status
            .running_version
            .as_ref()
            .and_then(|v| self.status.counters.get(v))
            .copied()
            .unwrap_or(0);
        if d.counter >= running {
            return Ok(None);
        }
        let refused = |why: &str| {
            DeployError::Verify(format!(
                "downgrade refused: release counter {} is below the running release's {running}; {why}",
                d.counter
            ))
        };
        if d.rollback_authorization.is_empty() {
            return Err(refused(&format!(
                "going back needs an operator-signed rollback (slipctl rollback --to {} --sign KEY)",
                d.version
            )));
        }
        let terms = d
            .rollback_terms
            .as_ref()
            .ok_or_else(|| refused(&trust::sign::TermsError::V1.to_string()))?;
        let rollback =
            terms.statement(&d.tenant, &self.name, &d.environment, &d.version, &d.digest);
        let valid = trust::sign::count_trusted(
            &rollback.bytes(),
            pairs(&d.rollback_authorization),
            &policy.publisher_keys,
        );
        if valid < policy.signatures_required {
            return Err(refused(&format!(
                "the rollback authorization is signed by {valid} trusted publisher key(s); {} required",
                policy.signatures_required
            )));
        }
        match self.status.rollback_nonces.get(&terms.nonce) {
            // Accepted before for this release and not used up: the same
            // deploy starting over (an agent restarted before `stop`).
            Some(seen) if !seen.spent && seen.digest == d.digest => {}
            Some(_) => {
                return Err(refused(&format!(
                    "the rollback authorization with nonce {} was used already on this host; sign a new one",
                    terms.nonce
                )));
            }
            None => {
                terms.check(now).map_err(|e| refused(&e.to_string()))?;
                if terms.from_counter < running {
                    return Err(refused(&format!(
                        "the rollback authorization rolls back from counter {}, older than the running release; sign a new one",
                        terms.from_counter
                    )));
                }
            }
        }
        Ok(Some(terms.nonce.clone()))
    }

    /// After a verified directive: every rollback authorization accepted for
    /// another release is used up, the one this downgrade rests on is
    /// remembered, and used-up ones past their expiry are forgotten (they
    /// would be refused as expired anyway). Persisted with `status.json`.
    fn record_rollback(&mut self, d: &Directive, accepted: Option<String>) {
        let now = crate::state::now();
        let nonces = &mut self.status.rollback_nonces;
        let before = nonces.clone();
        for seen in nonces.values_mut() {
            if seen.digest != d.digest {
                seen.spent = true;
            }
        }
        if let (Some(nonce), Some(terms)) = (accepted, d.rollback_terms.as_ref()) {
            nonces
                .entry(nonce)
                .or_insert_with(|| crate::state::AcceptedRollback {
                    digest: d.digest.clone(),
                    expires_at: terms.expires_at,
                    spent: false,
                });
        }
        nonces.retain(|_, seen| !(seen.spent && seen.expires_at < now));
        if *nonces != before {
            self.publish();
        }
    }
}

/// `(key, signature)` pairs as the signature check takes them.
fn pairs(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    list.iter().map(|(k, s)| (k.as_str(), s.as_str()))
}
