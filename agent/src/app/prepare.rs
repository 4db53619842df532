//! The deploy steps before anything serving is touched: verify (publisher
//! signatures, downgrades, a release kept on the host), fetch, unpack, and
//! prepare (spec checks, shared links, env, the `prepare` hook, the baseline).
//! A failure here refuses the release; the old one keeps serving.

use artifact::{Digest, ReleaseSpec};

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

    /// Downloads the blob and unpacks it as it arrives, beside the running
    /// release: the unpack reads what the fetch has written and commits the
    /// tree only once the whole blob verified (see `crate::follow`).
    pub(super) async fn fetch_blob(
        &mut self,
        p: &mut Progress,
        w: &mut Work,
    ) -> Result<Outcome, DeployError> {
        let Some(d) = w.directive.as_ref() else {
            return Err(DeployError::Transient("fetch without a directive".into()));
        };
        let run_as = self.cfg.run_as();
        if let (Some(user), None) = (&self.cfg.user, run_as) {
            return Err(DeployError::Spec(format!("user {user:?} no longer exists")));
        }
        // On disk before anything is written: a restart removes what we made.
        p.fresh = true;
        self.status.deploy = Some(p.clone());
        self.publish();
        // Format 2: files kept on this host are linked, only the rest move.
        let local = if d.manifest.blob.is_none() {
            self.local_objects().await
        } else {
            install::LocalObjects::new()
        };
        let want = artifact::assemble::wanted(&d.manifest, &local);
        let all = d.manifest.objects().len();
        // A fresh host takes the release's full pack when the controller has
        // built one, else it asks for every object (the controller then
        // builds the full pack and serves that).
        let plan = match (&d.blob, d.manifest.blob.is_some(), want.len()) {
            (Some(blob), true, _) => Plan::Blob(blob.clone()),
            (_, false, 0) => Plan::Nothing,
            (Some(blob), false, n) if n == all => Plan::Blob(blob.clone()),
            (_, false, _) => Plan::Objects,
            (None, true, _) => {
                return Err(DeployError::Transient(
                    "a format-1 release without its blob".into(),
                ));
            }
        };
        let (feed, reader) = crate::follow::pair();
        let fetcher = self.fetch.clone();
        let release = d.digest.clone();
        let fetching = async {
            let r = match &plan {
                Plan::Blob(blob) => {
                    fetcher
                        .fetch(&self.paths.cache, blob, d.blob_size, &feed)
                        .await
                }
                Plan::Objects => {
                    fetcher
                        .fetch_objects(&self.paths.cache, &release, &want, &feed)
                        .await
                }
                Plan::Nothing => return Ok(None),
            };
            feed.finish(
                r.as_ref()
                    .map(Clone::clone)
                    .map_err(|e| crate::follow::Stopped(e.to_string())),
            );
            r.map(Some)
        };
        let paths = &self.paths;
        let linked = local.len();
        let unpacking = async {
            let source = match &plan {
                Plan::Nothing => None,
                _ => {
                    reader.started().await;
                    Some(reader)
                }
            };
            install::unpack_release(paths, source, &d.manifest, local, run_as).await
        };
        tokio::pin!(fetching, unpacking);
        let (fetched, unpacked) = tokio::select! {
            f = &mut fetching => (f, unpacking.await),
            u = &mut unpacking => match u {
                // Refused mid-stream: the rest of the blob is not worth fetching.
                Err(e) => (Ok(None), Err(e)),
                Ok(dir) => (fetching.await, Ok(dir)),
            },
        };
        if let (Ok(None), Err(_), Plan::Blob(blob)) = (&fetched, &unpacked, &plan)
            && feed.came_from_bucket()
        {
            // Bytes from the bucket the unpack refused before the download
            // ended (a whole blob is judged by its sha256 instead): the
            // bucket's copy is suspect (the controller checks its own), so
            // the next attempt goes through the controller.
            let partial = self.paths.cache.join(format!("{}.partial", blob.hex()));
            let _ = std::fs::remove_file(&partial);
            self.fetch.distrust_bucket(blob);
            tracing::error!(app = %self.name, digest = %blob, "the bucket's copy did not verify; fetching through the controller");
            return Err(DeployError::Transient(format!(
                "the bucket's copy of {blob} did not verify; fetching through the controller"
            )));
        }
        if let (Err(_), Plan::Blob(blob)) = (&unpacked, &plan)
            && feed.resumed() > 0
        {
            // The bytes an earlier attempt left may be what is wrong: they go,
            // and the next attempt downloads the whole blob.
            let partial = self.paths.cache.join(format!("{}.partial", blob.hex()));
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(app = %self.name, digest = %blob, "resumed download did not verify; fetching from the start");
            return Err(DeployError::Transient(format!(
                "the resumed download of {blob} did not verify; fetching from the start"
            )));
        }
        // Once unpacked (or refused) the download has served its purpose: the
        // cache only ever holds what is being installed.
        if let Some(fetched) = fetched? {
            let _ = std::fs::remove_file(&fetched);
        }
        unpacked?;
        let detail = match &plan {
            Plan::Blob(blob) => format!("{blob} wire_bytes={}", feed.wire_bytes()),
            Plan::Objects => format!(
                "{} of {all} objects wire_bytes={} (the rest from {linked} files kept on this host)",
                want.len(),
                feed.wire_bytes()
            ),
            Plan::Nothing => format!("0 of {all} objects wire_bytes=0 (all kept on this host)"),
        };
        let version = d.version.clone();
        self.log(&version, "fetch", "ok", &detail);
        w.unpacked = true;
        Ok(Outcome::Ok)
    }

    /// Files of the releases kept here (`current` first) that still match
    /// the stat their drift baseline recorded, by content digest.
    async fn local_objects(&self) -> install::LocalObjects {
        let mut versions: Vec<String> = self.paths.current_version().into_iter().collect();
        versions.extend(self.status.installed.keys().cloned());
        let paths = self.paths.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = install::LocalObjects::new();
            for v in versions {
                let Ok(Some(b)) = crate::drift::Baseline::load(&paths.baseline(&v)) else {
                    continue;
                };
                if b.version != v {
                    continue;
                }
                let root = paths.release(&v);
                for (rel, fp) in b.entries {
                    let crate::drift::Fingerprint::File {
                        sha256,
                        size,
                        stat: Some(stat),
                        ..
                    } = fp
                    else {
                        continue;
                    };
                    let Ok(digest) = artifact::Digest::parse(&format!("sha256:{sha256}")) else {
                        continue;
                    };
                    if out.contains_key(&digest) {
                        continue;
                    }
                    let path = root.join(&rel);
                    let Ok(meta) = std::fs::symlink_metadata(&path) else {
                        continue;
                    };
                    if meta.is_file() && meta.len() == size && crate::drift::Stat::of(&meta) == stat
                    {
                        out.insert(
                            digest,
                            artifact::assemble::LocalFile {
                                path,
                                ino: stat.ino,
                                size,
                                mtime_ns: stat.mtime_ns,
                            },
                        );
                    }
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Records the tree the fetch unpacked as installed.
    pub(super) async fn unpack(&mut self, w: &mut Work) -> Result<Outcome, DeployError> {
        let Some(d) = w.directive.as_ref().filter(|_| w.unpacked) else {
            return Err(DeployError::Transient(
                "unpack without a fetched release".into(),
            ));
        };
        let version = d.version.clone();
        let (digest, counter, entries) = (d.digest.clone(), d.counter, d.manifest.entries.len());
        self.status.installed.insert(version.clone(), digest);
        self.status.counters.insert(version.clone(), counter);
        self.publish();
        let detail = match self.cfg.run_as() {
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
    pub(super) async fn prepare(
        &mut self,
        p: &mut Progress,
        w: &Work,
    ) -> Result<Outcome, DeployError> {
        let version = p.target.version.clone();
        let release = self.paths.release(&version);
        let spec = ReleaseSpec::load(&release).map_err(|e| DeployError::Spec(e.to_string()))?;
        self.check_spec(&spec)?;
        install::link_shared(&self.paths, &release, &spec.shared.files, &spec.shared.dirs)?;
        // Read now: a broken env file refuses the release while the old one serves.
        self.env_for(&version)?;
        self.warn_env_duplicates(&version);
        if p.kept {
            // A release kept here (deployed again): its files are as
            // installed, but the database may not be.
            if let (Some(m), Some(d)) = (&spec.migrations, &w.directive) {
                self.migrate(m, &release, p, d).await?;
            }
            return Ok(Outcome::Ok);
        }
        // The baseline takes each file's digest from the manifest (the unpack
        // verified every one) unless the hook may have rewritten it.
        let mut known = crate::drift::Known::default();
        if let Some(d) = w.directive.as_ref().filter(|_| w.unpacked) {
            known.files = d
                .manifest
                .entries
                .iter()
                .filter_map(|e| {
                    let hex = e.sha256.as_deref()?.strip_prefix("sha256:")?;
                    Some((e.path.clone(), (e.size, hex.to_string())))
                })
                .collect();
        }
        if let Some(hook) = &spec.hooks.prepare {
            known.changed_since_ns = Some(now_ns() - HOOK_CLOCK_SLACK_NS);
            self.run_tracked_hook("prepare", hook, &release, p).await?;
        }
        if let (Some(m), Some(d)) = (&spec.migrations, &w.directive) {
            known
                .changed_since_ns
                .get_or_insert(now_ns() - HOOK_CLOCK_SLACK_NS);
            self.migrate(m, &release, p, d).await?;
        }
        self.take_baseline(&version, known).await;
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

/// Where the files of a release come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// The whole blob (format 1) or the release's full pack (nothing kept).
    Blob(Digest),
    /// An object pack of what is not kept here.
    Objects,
    /// Every file is kept here.
    Nothing,
}

/// How far a file's change time may trail the clock (the kernel stamps it
/// from a coarse clock, a tick behind at most): files changed this long
/// before the hook started are hashed for the baseline too.
const HOOK_CLOCK_SLACK_NS: i64 = 50_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `(key, signature)` pairs as the signature check takes them.
fn pairs(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    list.iter().map(|(k, s)| (k.as_str(), s.as_str()))
}
