//! Intent: the desired release of an app in an environment, changed by
//! deploy, promote, rollback and retry, each carried by a rollout
//! (`rollout::start`), and the gates a promotion passes (soak, drift). Domain
//! types in and out; `grpc/deployments.rs` authorizes the caller and converts.

use trust::sign::{RollbackAuthorization, Signature};

use crate::error::{ControllerError, Result};
use crate::hub::Hub;
use crate::plan::{Change, Strategy, StrategyOverride};
use crate::store::Store;

/// Most signatures a release or an authorization may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Who changes the intent, as the audit log names them, and whether they
/// may force a promotion past its gates (the promoter role).
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub may_force: bool,
}

/// An app in an environment of a tenant.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub environment: &'a str,
}

pub struct Deploy<'a> {
    pub target: Target<'a>,
    pub version: &'a str,
    /// Operator signatures allowing a lower counter (a downgrade), with the
    /// terms they cover.
    pub authorization: &'a RollbackAuthorization,
    pub strategy: Option<StrategyOverride>,
}

pub struct Promote<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// Past the gates (needs `Actor::may_force`).
    pub force: bool,
    pub strategy: Option<StrategyOverride>,
}

pub struct Rollback<'a> {
    pub target: Target<'a>,
    /// None: the newest earlier release that ran healthy there.
    pub to_version: Option<&'a str>,
    pub authorization: &'a RollbackAuthorization,
}

/// The rollback authorization a change carries: one given now (checked:
/// terms, signatures, counter floor, nonce spent), or the one the desired
/// release already carries (a retry: checked when it was given).
#[derive(Clone, Copy)]
enum Authorizing<'a> {
    Given(&'a RollbackAuthorization),
    Carried(&'a str),
}

/// A change of desired release, made.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub app: String,
    pub environment: String,
    pub version: String,
    pub manifest_digest: String,
    /// Empty for the first release of the app there.
    pub previous_version: String,
    pub generation: u64,
    /// Hosts of the environment holding a session now.
    pub connected_hosts: u32,
    pub rollout_id: i64,
    pub planned_hosts: u32,
    /// Who applies the release's pending migrations there.
    pub migrations: crate::plan::MigrationPolicy,
    /// A dry run's plan (None: the change was made).
    pub plan: Option<DryPlan>,
}

/// A step of a dry run's plan.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub step: u32,
    pub canary: bool,
    pub hosts: Vec<PlannedHost>,
}

#[derive(Debug, Clone)]
pub struct PlannedHost {
    pub name: String,
    pub connected: bool,
    /// What it runs now (empty: nothing reported).
    pub running: String,
}

/// What a change would do, without doing it.
#[derive(Debug, Clone)]
pub struct DryPlan {
    pub steps: Vec<PlannedStep>,
    /// Hosts of the environment the app's selector leaves out.
    pub left_out: Vec<String>,
    pub strategy: Strategy,
}

/// Checks every signature over `payload` (a bad one is refused, not dropped)
/// and returns them as stored JSON.
pub fn checked_signatures(sigs: &[Signature], payload: &[u8]) -> Result<String> {
    if sigs.len() > MAX_SIGNATURES {
        return Err(ControllerError::InvalidArgument(format!(
            "at most {MAX_SIGNATURES} signatures"
        )));
    }
    for s in sigs {
        let key = trust::sign::parse_public(&s.key)
            .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        if !trust::sign::verify(&key, payload, &s.sig) {
            return Err(ControllerError::InvalidArgument(format!(
                "the signature by {} does not verify for this release",
                s.key
            )));
        }
    }
    Ok(serde_json::to_string(sigs).expect("signatures serialize"))
}

/// Signatures as the store keeps them (JSON).
pub fn stored_signatures(json: &str) -> Vec<Signature> {
    serde_json::from_str(json).unwrap_or_default()
}

/// "unknown environment X (known: a, b)" + `hint`, as a not-found error.
pub async fn unknown_environment(
    store: &Store,
    tenant: &str,
    env: &str,
    hint: &str,
) -> ControllerError {
    match store.environments(tenant).await {
        Ok(envs) => {
            let known: Vec<String> = envs.into_iter().map(|(n, _)| n).collect();
            ControllerError::NotFound(format!(
                "unknown environment {env:?} (known: {}){hint}",
                known.join(", ")
            ))
        }
        Err(e) => e.into(),
    }
}

/// What changing intent reaches: the store, the sessions (through the hub),
/// and the heartbeat that says when a host is offline.
#[derive(Clone, Copy)]
pub struct Intent<'a> {
    pub store: &'a Store,
    pub hub: &'a Hub,
    pub heartbeat_secs: u32,
    /// Check everything a change checks and answer with its plan; change
    /// nothing (no rollout, no nonce spent, no approval kept).
    pub dry_run: bool,
}

impl Intent<'_> {
    /// The app was published and the environment exists.
    pub async fn check_app_env(&self, tenant: &str, app: &str, env: &str) -> Result<()> {
        if !self.store.app_exists(tenant, app).await? {
            return Err(ControllerError::NotFound(format!(
                "unknown app {app:?}: publish a release of it first"
            )));
        }
        if self.store.environment(tenant, env).await?.is_none() {
            return Err(unknown_environment(self.store, tenant, env, "").await);
        }
        Ok(())
    }

    /// Points app@env at `version`.
    pub async fn deploy(&self, actor: &Actor<'_>, d: &Deploy<'_>) -> Result<Deployed> {
        self.set_desired(
            actor,
            d.target,
            d.version,
            Authorizing::Given(d.authorization),
            d.strategy.as_ref(),
            false,
            None,
        )
        .await
    }

    /// Copies the version `from` desires to `to`, when the promotion gates
    /// pass or the actor forces it past them. Returns the gates forced past.
    pub async fn promote(
        &self,
        actor: &Actor<'_>,
        p: &Promote<'_>,
    ) -> Result<(Deployed, Vec<String>)> {
        if p.from == p.to {
            return Err(ControllerError::InvalidArgument(
                "--from and --to name the same environment".into(),
            ));
        }
        self.check_app_env(p.tenant, p.app, p.from).await?;
        self.check_app_env(p.tenant, p.app, p.to).await?;
        let (version, _) = self
            .store
            .desired(p.tenant, p.app, p.from)
            .await?
            .ok_or_else(|| no_release(p.app, p.from))?;
        let release = self
            .store
            .release(p.tenant, p.app, &version)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("release {version} vanished")))?;
        let there_now = self.store.desired(p.tenant, p.app, p.to).await?;
        let decided_at = there_now.as_ref().map_or(0, |(_, g)| *g);
        if let Some((there, generation)) = &there_now
            && *there == version
        {
            return Err(ControllerError::FailedPrecondition(format!(
                "{} {version} is already desired in {} (generation {generation}): nothing to promote \
                 (`slipctl deploy {} {version} --env {}` sends it again)",
                p.app, p.to, p.app, p.to
            )));
        }
        let soak = self
            .store
            .env_policy(p.tenant, p.to)
            .await?
            .map(|e| e.soak_secs)
            .unwrap_or(0);
        let blockers = self
            .promotion_blockers(p, &release.manifest_digest, soak)
            .await?;
        if !blockers.is_empty() {
            if !p.force {
                return Err(ControllerError::FailedPrecondition(format!(
                    "cannot promote {} {version} ({}) from {} to {}: {} (wait for the soak, redeploy or `slipctl drift ack`, or --force as promoter)",
                    p.app,
                    release.manifest_digest,
                    p.from,
                    p.to,
                    blockers.join("; ")
                )));
            }
            if !actor.may_force {
                return Err(ControllerError::PermissionDenied(format!(
                    "--force needs the promoter role; blocked by: {}",
                    blockers.join("; ")
                )));
            }
        }
        let target = Target {
            tenant: p.tenant,
            app: p.app,
            environment: p.to,
        };
        let deployed = self
            .set_desired(
                actor,
                target,
                &version,
                Authorizing::Given(&RollbackAuthorization::default()),
                p.strategy.as_ref(),
                false,
                Some(decided_at),
            )
            .await?;
        Ok((deployed, blockers))
    }

    /// Promotion gates: the exact digest must have run healthy on every host
    /// of the source environment for the target's soak time, and no host of
    /// either environment may carry unacknowledged drift. Each blocker, named.
    pub async fn promotion_blockers(
        &self,
        p: &Promote<'_>,
        digest: &str,
        soak_secs: u32,
    ) -> Result<Vec<String>> {
        let (app, from, to) = (p.app, p.from, p.to);
        let now = crate::store::now();
        let mut blockers = Vec::new();
        let source = self.store.fleet(p.tenant, app, from).await?;
        if source.is_empty() {
            blockers.push(format!("no {from} host runs {app}"));
        }
        for f in &source {
            let h = &f.host;
            if self
                .hub
                .offline(p.tenant, h, f.last_seen, now, self.heartbeat_secs)
            {
                blockers.push(format!("{h} is offline"));
            } else if f.report.running_digest != digest {
                let running = match f.report.running_version.as_str() {
                    "" => "nothing",
                    v => v,
                };
                blockers.push(format!("{h} runs {running} instead"));
            } else if f.healthy_since == 0 {
                blockers.push(format!("{h} is not healthy"));
            } else if now - f.healthy_since < i64::from(soak_secs) {
                blockers.push(format!(
                    "{h} has run it healthy for {}s of the {soak_secs}s soak",
                    now - f.healthy_since
                ));
            }
        }
        let target = self.store.fleet(p.tenant, app, to).await?;
        for (env, rows) in [(from, &source), (to, &target)] {
            for f in rows.iter().filter(|f| f.drifted()) {
                let drift: Vec<&str> = f.report.drift.iter().take(3).map(|d| d.as_str()).collect();
                blockers.push(format!(
                    "{} ({env}) has drift: {}",
                    f.host,
                    drift.join(", ")
                ));
            }
        }
        Ok(blockers)
    }

    /// Puts app@env back on `to_version`, or on the newest earlier release
    /// that ran healthy there; every host at once, no canary.
    pub async fn rollback(&self, actor: &Actor<'_>, r: &Rollback<'_>) -> Result<Deployed> {
        let Target {
            tenant,
            app,
            environment: env,
        } = r.target;
        self.check_app_env(tenant, app, env).await?;
        let now_desired = self.store.desired(tenant, app, env).await?;
        let decided_at = now_desired.as_ref().map(|(_, g)| *g);
        let target = match r.to_version {
            Some(v) => v.to_string(),
            None => {
                let (current, _) = now_desired.ok_or_else(|| no_release(app, env))?;
                self.store
                    .rollback_target(tenant, app, env, &current)
                    .await?
                    .ok_or_else(|| {
                        ControllerError::FailedPrecondition(format!(
                            "{app} in {env} has no earlier release that ran healthy there to roll back to; name one with --to"
                        ))
                    })?
            }
        };
        self.set_desired(
            actor,
            r.target,
            &target,
            Authorizing::Given(r.authorization),
            None,
            true,
            decided_at,
        )
        .await
    }

    /// The same release (and authorization) again with a new generation:
    /// hosts that refused it try once more. (After an automatic revert the
    /// desired release is the previous one: deploy the failed one again to
    /// retry it.) A carried rollback authorization is not spent again here;
    /// agents still refuse it once expired or once they moved past it.
    pub async fn retry(&self, actor: &Actor<'_>, t: Target<'_>) -> Result<Deployed> {
        self.check_app_env(t.tenant, t.app, t.environment).await?;
        let current = self
            .store
            .desired_app(t.tenant, t.environment, t.app)
            .await?
            .ok_or_else(|| no_release(t.app, t.environment))?;
        self.set_desired(
            actor,
            t,
            &current.version,
            Authorizing::Carried(&current.authorization),
            None,
            false,
            Some(current.generation),
        )
        .await
    }

    /// Approves the migrations of the release app@env desires, then rolls
    /// it out again (`retry`): hosts may now apply them before the flip.
    pub async fn migrate(&self, actor: &Actor<'_>, t: Target<'_>) -> Result<Deployed> {
        self.check_app_env(t.tenant, t.app, t.environment).await?;
        let current = self
            .store
            .desired_app(t.tenant, t.environment, t.app)
            .await?
            .ok_or_else(|| no_release(t.app, t.environment))?;
        // Only what a host refused, naming its pending migrations, is
        // approved: never a release deployed since, unseen.
        let waiting = self
            .store
            .latest_rollout(t.tenant, t.app, t.environment)
            .await?
            .filter(|r| {
                r.state == crate::lifecycle::RolloutState::Halted
                    && r.to_version == current.version
                    && r.reason.starts_with(crate::rollout::WAITING_FOR_MIGRATIONS)
            });
        if waiting.is_none() {
            return Err(ControllerError::FailedPrecondition(format!(
                "no rollout of {} {} in {} waits for migrations to be approved (see `slipctl rollout status {} --env {}`)",
                t.app, current.version, t.environment, t.app, t.environment
            )));
        }
        if !self.dry_run {
            self.store
                .approve_migrations(t.tenant, t.environment, t.app, &current.version, actor.name)
                .await?;
        }
        self.retry(actor, t).await
    }

    /// Points app@env at `version` through a rollout with the environment's
    /// strategy (overridden by `strategy`; a rollback's: every host at once),
    /// which wakes the sessions concerned.
    /// Sets app@env to `version` through a rollout. `decided_at`: the
    /// desired generation the caller's own checks read (a promote's gates,
    /// a rollback's target, a retry's release); None: read here. The change
    /// is refused if app@env moved past it meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn set_desired(
        &self,
        actor: &Actor<'_>,
        t: Target<'_>,
        version: &str,
        authorization: Authorizing<'_>,
        strategy: Option<&StrategyOverride>,
        is_rollback: bool,
        decided_at: Option<u64>,
    ) -> Result<Deployed> {
        let Target {
            tenant,
            app,
            environment: env,
        } = t;
        self.check_app_env(tenant, app, env).await?;
        let store = self.store;
        let release = store.release(tenant, app, version).await?.ok_or_else(|| {
            ControllerError::NotFound(format!(
                "unknown version {version:?} of app {app:?} (see `slipctl releases {app}`)"
            ))
        })?;
        if let Some(at) = release.yanked_at {
            let why = match release.yank_reason.as_str() {
                "" => String::new(),
                r => format!(": {r}"),
            };
            return Err(ControllerError::FailedPrecondition(format!(
                "{app} {version} was yanked at {at}{why}; it cannot be deployed, promoted or rolled back to"
            )));
        }
        let current = store.desired_app(tenant, env, app).await?;
        let previous = current
            .as_ref()
            .map(|d| d.version.clone())
            .unwrap_or_default();
        let authorization = match authorization {
            Authorizing::Carried(json) => json.to_string(),
            Authorizing::Given(a) if a.is_empty() => "[]".into(),
            Authorizing::Given(a) => {
                self.check_rollback_authorization(t, &release, current.as_ref(), a)
                    .await?
            }
        };
        let policy = store
            .env_policy(tenant, env)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("unknown environment {env:?}")))?;
        let mut strategy = match strategy {
            Some(o) => policy.strategy.with(o),
            None => policy.strategy,
        };
        if is_rollback {
            strategy = strategy.rollback();
        }
        if self.dry_run {
            let plan = self.dry_plan(t, strategy).await?;
            return Ok(Deployed {
                app: app.into(),
                environment: env.into(),
                version: version.into(),
                manifest_digest: release.manifest_digest,
                previous_version: previous,
                generation: 0,
                connected_hosts: plan
                    .steps
                    .iter()
                    .flat_map(|s| &s.hosts)
                    .filter(|h| h.connected)
                    .count() as u32,
                rollout_id: 0,
                planned_hosts: plan.steps.iter().map(|s| s.hosts.len() as u32).sum(),
                migrations: policy.migrations,
                plan: Some(plan),
            });
        }
        let started = crate::rollout::start(
            store,
            self.hub,
            &Change {
                tenant,
                app,
                environment: env,
                version,
                digest: &release.manifest_digest,
                authorization: &authorization,
                strategy,
                actor: actor.name,
                expected_generation: decided_at
                    .unwrap_or_else(|| current.as_ref().map_or(0, |d| d.generation)),
            },
        )
        .await?;
        let generation = started.generation;
        let connected_hosts = store
            .hosts(tenant, env)
            .await?
            .iter()
            .filter(|h| self.hub.connected(tenant, &h.name))
            .count() as u32;
        tracing::info!(tenant, app, env, version, generation, "desired release set");
        Ok(Deployed {
            app: app.into(),
            environment: env.into(),
            version: version.into(),
            manifest_digest: release.manifest_digest,
            previous_version: previous,
            generation,
            connected_hosts,
            rollout_id: started.rollout_id,
            planned_hosts: started.planned_hosts as u32,
            migrations: policy.migrations,
            plan: None,
        })
    }

    /// The plan a rollout of app@env with `strategy` would run now.
    async fn dry_plan(&self, t: Target<'_>, strategy: Strategy) -> Result<DryPlan> {
        let candidates = self.store.app_hosts(t.tenant, t.app, t.environment).await?;
        let (plan, _) = crate::plan::plan(&candidates, &strategy);
        let fleet = self.store.fleet(t.tenant, t.app, t.environment).await?;
        let running = |host: &str| {
            fleet
                .iter()
                .find(|f| f.host == host)
                .map(|f| f.report.running_version.clone())
                .unwrap_or_default()
        };
        let mut steps: Vec<PlannedStep> = Vec::new();
        for (name, step) in plan {
            if steps.last().is_none_or(|s| s.step != step) {
                steps.push(PlannedStep {
                    step,
                    canary: step == 0 && strategy.canary > 0,
                    hosts: Vec::new(),
                });
            }
            let host = PlannedHost {
                connected: self.hub.connected(t.tenant, &name),
                running: running(&name),
                name,
            };
            steps.last_mut().expect("pushed").hosts.push(host);
        }
        let left_out = self
            .store
            .hosts(t.tenant, t.environment)
            .await?
            .into_iter()
            .filter(|h| h.revoked_at.is_none() && !candidates.iter().any(|c| c.name == h.name))
            .map(|h| h.name)
            .collect();
        Ok(DryPlan {
            steps,
            left_out,
            strategy,
        })
    }
}

impl Intent<'_> {
    /// A rollback authorization given with a change: v2 terms, fresh (not
    /// expired, at most `ROLLBACK_MAX_LIFETIME_SECS` ahead), from the
    /// release the environment desires now (or a newer published one), every signature valid over the
    /// statement, and a nonce never used before (spent here). Returns it as
    /// stored with the desired release.
    async fn check_rollback_authorization(
        &self,
        t: Target<'_>,
        release: &crate::store::ReleaseRow,
        current: Option<&crate::store::DesiredRow>,
        a: &RollbackAuthorization,
    ) -> Result<String> {
        let Target {
            tenant,
            app,
            environment: env,
        } = t;
        let invalid = |e: trust::sign::TermsError| ControllerError::InvalidArgument(e.to_string());
        let terms = a
            .terms
            .as_ref()
            .ok_or_else(|| invalid(trust::sign::TermsError::V1))?;
        let now = crate::store::now();
        terms.check(now).map_err(invalid)?;
        let Some(current) = current else {
            return Err(ControllerError::FailedPrecondition(format!(
                "{app} has no release in {env} to roll back from; deploy without --sign"
            )));
        };
        // From the release desired now, or a newer one hosts may still run
        // (they refused a downgrade made without a signature); never from
        // one older than what is desired: signed before that was deployed.
        let newest = self.store.max_counter(tenant, app).await?;
        if terms.from_counter < current.counter || terms.from_counter > newest {
            return Err(ControllerError::FailedPrecondition(format!(
                "the rollback authorization rolls back from counter {}, but {env} desires {app} {} (counter {}) now; sign a new one",
                terms.from_counter, current.version, current.counter
            )));
        }
        let statement =
            terms.statement(tenant, app, env, &release.version, &release.manifest_digest);
        checked_signatures(&a.signatures, &statement.bytes())?;
        let fresh = if self.dry_run {
            !self
                .store
                .rollback_nonce_spent(tenant, &terms.nonce)
                .await?
        } else {
            self.store
                .spend_rollback_nonce(tenant, &terms.nonce, terms.expires_at)
                .await?
        };
        if !fresh {
            return Err(ControllerError::FailedPrecondition(format!(
                "the rollback authorization with nonce {} was used already: an authorization allows one rollback; sign a new one",
                terms.nonce
            )));
        }
        Ok(a.to_stored())
    }
}

/// Promote, rollback and retry start from what an environment desires.
fn no_release(app: &str, environment: &str) -> ControllerError {
    ControllerError::FailedPrecondition(format!("{app} has no release in {environment}"))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::hub::Recompute;
    use crate::lifecycle::{Health, RolloutState};
    use crate::store::{EnvChange, HostAppReport, ReleaseRow, now};

    static UNSIGNED: RollbackAuthorization = RollbackAuthorization {
        signatures: Vec::new(),
        terms: None,
    };

    const ACTOR: Actor<'static> = Actor {
        name: "ci (token t1)",
        may_force: false,
    };

    fn web(environment: &str) -> Target<'_> {
        Target {
            tenant: "default",
            app: "web",
            environment,
        }
    }

    /// A store with releases 1..=3 of web and hosts a (preprod) and p (prod)
    /// reporting web.
    async fn store(s: Store) -> Store {
        s.insert_blob("sha256:b", 1).await.unwrap();
        for v in ["1", "2", "3"] {
            let r = ReleaseRow {
                counter: v.parse().unwrap(),
                ..crate::store::tests::release(v, &format!("sha256:m{v}"))
            };
            s.insert_release("default", &r, b"{}").await.unwrap();
        }
        for (host, env) in [("a", "preprod"), ("p", "prod")] {
            s.add_host("default", host, env, host, "x", now() + 60, "test")
                .await
                .unwrap();
            report(&s, host, "", false, 0).await;
        }
        s
    }

    /// `host` says hello and reports web: running `version` (healthy or
    /// not), with `drift` paths drifted.
    async fn report(s: &Store, host: &str, version: &str, healthy: bool, drift: u32) {
        let r = HostAppReport {
            app: "web".into(),
            running_version: version.into(),
            running_digest: if version.is_empty() {
                String::new()
            } else {
                format!("sha256:m{version}")
            },
            health: if healthy {
                Health::Healthy
            } else {
                Health::Unknown
            },
            drift: (0..drift).map(|i| format!("changed f{i}")).collect(),
            drift_count: drift,
            ..Default::default()
        };
        // Said hello (stored as seen), then reported; heartbeats stay in the
        // hub's memory.
        s.host_hello("default", host, "test", "", (0, &Default::default()), 0)
            .await
            .unwrap();
        s.record_report("default", host, &r).await.unwrap();
    }

    async fn deploy(i: &Intent<'_>, env: &str, version: &str) -> Result<Deployed> {
        let d = Deploy {
            target: web(env),
            version,
            authorization: &UNSIGNED,
            strategy: None,
        };
        i.deploy(&ACTOR, &d).await
    }

    fn promote(force: bool) -> Promote<'static> {
        Promote {
            tenant: "default",
            app: "web",
            from: "preprod",
            to: "prod",
            force,
            strategy: None,
        }
    }

    async fn a_deploy_sets_desired_through_a_rollout_and_wakes_the_apps_sessions(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        let web_apps = vec!["web".to_string()];
        let a = hub.connect("default", "a", "preprod", &web_apps, "");
        let p = hub.connect("default", "p", "prod", &web_apps, "");

        let first = deploy(&i, "preprod", "1").await.unwrap();
        assert_eq!(
            (first.version.as_str(), first.previous_version.as_str()),
            ("1", "")
        );
        assert_eq!((first.planned_hosts, first.connected_hosts), (1, 1));
        assert_eq!(a.changed().await.0, Recompute::Apps(["web".into()].into()));
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), p.changed()).await;
        assert!(
            woken.is_err(),
            "a prod session sleeps through a preprod deploy"
        );

        let second = deploy(&i, "preprod", "2").await.unwrap();
        assert_eq!(second.previous_version, "1");
        assert!(second.generation > first.generation);
        assert_eq!(
            s.desired("default", "web", "preprod").await.unwrap(),
            Some(("2".to_string(), second.generation))
        );
        let rollout = s
            .latest_rollout("default", "web", "preprod")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rollout.id, second.rollout_id);
        assert_eq!(rollout.state, RolloutState::Running);
        assert_eq!(
            s.rollout(first.rollout_id).await.unwrap().unwrap().state,
            RolloutState::Superseded
        );
    }

    async fn a_deploy_names_what_it_cannot_find(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        let check = |r: Result<Deployed>, expect: &str| {
            let e = r.expect_err(expect);
            assert!(matches!(e, ControllerError::NotFound(_)), "{e:?}");
            assert_eq!(e.to_string(), expect);
        };
        check(
            deploy(&i, "staging", "1").await,
            "unknown environment \"staging\" (known: preprod, prod)",
        );
        check(
            deploy(&i, "preprod", "9").await,
            "unknown version \"9\" of app \"web\" (see `slipctl releases web`)",
        );
        let d = Deploy {
            target: Target {
                app: "api",
                ..web("preprod")
            },
            version: "1",
            authorization: &UNSIGNED,
            strategy: None,
        };
        check(
            i.deploy(&ACTOR, &d).await,
            "unknown app \"api\": publish a release of it first",
        );
        let bad = [Signature {
            key: "ed25519:00".into(),
            sig: "00".into(),
        }];
        let bad = RollbackAuthorization {
            signatures: bad.to_vec(),
            terms: None,
        };
        let d = Deploy {
            authorization: &bad,
            ..d
        };
        let d = Deploy {
            target: web("preprod"),
            ..d
        };
        assert!(matches!(
            i.deploy(&ACTOR, &d).await,
            Err(ControllerError::InvalidArgument(_))
        ));
    }

    async fn a_promotion_waits_for_the_soak_and_refuses_drift_unless_forced(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        // The soak clock may tick a second between the report and the promote.
        let steady = |text: String| text.replace("healthy for 1s of", "healthy for 0s of");
        let check = |r: Result<(Deployed, Vec<String>)>, expect: &str| match r {
            Ok((d, forced)) => assert_eq!(
                steady(format!(
                    "ok {} forced past: {}",
                    d.version,
                    forced.join("; ")
                )),
                expect
            ),
            Err(e) => assert_eq!(steady(e.to_string()), expect),
        };
        let same = Promote {
            to: "preprod",
            ..promote(false)
        };
        check(
            i.promote(&ACTOR, &same).await,
            "--from and --to name the same environment",
        );
        check(
            i.promote(&ACTOR, &promote(false)).await,
            "web has no release in preprod",
        );
        deploy(&i, "preprod", "2").await.unwrap();
        check(
            i.promote(&ACTOR, &promote(false)).await,
            "cannot promote web 2 (sha256:m2) from preprod to prod: a runs nothing instead \
             (wait for the soak, redeploy or `slipctl drift ack`, or --force as promoter)",
        );
        report(&s, "a", "2", true, 0).await;
        report(&s, "p", "1", true, 2).await;
        s.set_environment(
            "default",
            "prod",
            &EnvChange {
                soak_secs: Some(3600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let blockers = "a has run it healthy for 0s of the 3600s soak; \
                        p (prod) has drift: changed f0, changed f1";
        check(
            i.promote(&ACTOR, &promote(false)).await,
            &format!(
                "cannot promote web 2 (sha256:m2) from preprod to prod: {blockers} \
                 (wait for the soak, redeploy or `slipctl drift ack`, or --force as promoter)"
            ),
        );
        check(
            i.promote(&ACTOR, &promote(true)).await,
            &format!("--force needs the promoter role; blocked by: {blockers}"),
        );
        let promoter = Actor {
            may_force: true,
            ..ACTOR
        };
        check(
            i.promote(&promoter, &promote(true)).await,
            &format!("ok 2 forced past: {blockers}"),
        );
        assert_eq!(
            s.desired("default", "web", "prod")
                .await
                .unwrap()
                .map(|(v, _)| v),
            Some("2".to_string())
        );
        s.set_environment(
            "default",
            "prod",
            &EnvChange {
                soak_secs: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        report(&s, "p", "2", true, 0).await;
        let (_, generation) = s.desired("default", "web", "prod").await.unwrap().unwrap();
        check(
            i.promote(&ACTOR, &promote(false)).await,
            &format!(
                "web 2 is already desired in prod (generation {generation}): nothing to promote \
                 (`slipctl deploy web 2 --env prod` sends it again)"
            ),
        );
        deploy(&i, "preprod", "3").await.unwrap();
        report(&s, "a", "3", true, 0).await;
        check(
            i.promote(&ACTOR, &promote(false)).await,
            "ok 3 forced past: ",
        );
    }

    async fn a_rollback_goes_to_the_last_release_that_ran_healthy_all_at_once(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        let back = |to_version| Rollback {
            target: web("preprod"),
            to_version,
            authorization: &UNSIGNED,
        };
        assert_eq!(
            i.rollback(&ACTOR, &back(None))
                .await
                .unwrap_err()
                .to_string(),
            "web has no release in preprod"
        );
        deploy(&i, "preprod", "1").await.unwrap();
        report(&s, "a", "1", true, 0).await;
        deploy(&i, "preprod", "2").await.unwrap();
        report(&s, "a", "2", false, 0).await;
        deploy(&i, "preprod", "3").await.unwrap();
        let rolled = i.rollback(&ACTOR, &back(None)).await.unwrap();
        assert_eq!(
            (rolled.version.as_str(), rolled.previous_version.as_str()),
            ("1", "3"),
            "2 never ran healthy"
        );
        let r = s.rollout(rolled.rollout_id).await.unwrap().unwrap();
        assert_eq!(
            r.strategy,
            s.env_policy("default", "preprod")
                .await
                .unwrap()
                .unwrap()
                .strategy
                .rollback()
        );
        let named = i.rollback(&ACTOR, &back(Some("2"))).await.unwrap();
        assert_eq!(named.version, "2");
        assert_eq!(
            i.rollback(&ACTOR, &back(None)).await.unwrap().version,
            "1",
            "the newest earlier release that ran healthy"
        );
    }

    async fn a_retry_sends_the_same_release_again_with_a_new_generation(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        assert_eq!(
            i.retry(&ACTOR, web("preprod"))
                .await
                .unwrap_err()
                .to_string(),
            "web has no release in preprod"
        );
        let first = deploy(&i, "preprod", "2").await.unwrap();
        let again = i.retry(&ACTOR, web("preprod")).await.unwrap();
        assert_eq!(
            (again.version.as_str(), again.previous_version.as_str()),
            ("2", "2")
        );
        assert!(again.generation > first.generation);
        assert_ne!(again.rollout_id, first.rollout_id);
    }

    /// An operator's authorization to go from `from` back to `version` of web
    /// in preprod, signed by `key`, expiring `lifetime` seconds from now.
    fn signed_back(
        key: &trust::sign::KeyPair,
        version: &str,
        from: u64,
        lifetime: i64,
    ) -> RollbackAuthorization {
        let terms = trust::sign::RollbackTerms::new(from, now(), lifetime);
        let digest = format!("sha256:m{version}");
        let statement = terms.statement("default", "web", "preprod", version, &digest);
        RollbackAuthorization {
            signatures: vec![key.sign(&statement.bytes())],
            terms: Some(terms),
        }
    }

    async fn a_rollback_authorization_allows_one_rollback_from_the_release_desired_now(db: Store) {
        let s = store(db).await;
        let hub = Hub::new();
        let i = Intent {
            store: &s,
            hub: &hub,
            heartbeat_secs: 10,
            dry_run: false,
        };
        let key = trust::sign::KeyPair::generate();
        let back = |authorization| Rollback {
            target: web("preprod"),
            to_version: Some("1"),
            authorization,
        };
        let redeploy = |authorization| Deploy {
            target: web("preprod"),
            version: "1",
            authorization,
            strategy: None,
        };
        let refused = |r: Result<Deployed>| r.unwrap_err().to_string();
        deploy(&i, "preprod", "1").await.unwrap();
        deploy(&i, "preprod", "2").await.unwrap();

        let ok = signed_back(&key, "1", 2, 3600);
        let rolled = i.rollback(&ACTOR, &back(&ok)).await.unwrap();
        assert_eq!(rolled.version, "1");
        let stored = s
            .desired_app("default", "preprod", "web")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            RollbackAuthorization::from_stored(&stored.authorization),
            ok,
            "the terms travel with the desired release to the agents"
        );

        // CI puts 2 back; the same authorization replayed through a deploy
        // (from counter 2 matches again) is refused: its nonce is spent.
        deploy(&i, "preprod", "2").await.unwrap();
        assert!(
            refused(i.deploy(&ACTOR, &redeploy(&ok)).await).contains("was used already"),
            "replay"
        );

        // From a release older than the desired one (signed before 2 was
        // deployed), or from a counter nothing was published with.
        let stale = signed_back(&key, "1", 1, 3600);
        assert!(
            refused(i.rollback(&ACTOR, &back(&stale)).await)
                .contains("rolls back from counter 1, but preprod desires web 2 (counter 2)")
        );
        let unknown = signed_back(&key, "1", 4, 3600);
        assert!(refused(i.rollback(&ACTOR, &back(&unknown)).await).contains("from counter 4"));
        // Expired, too long-lived, v1 (no terms), signed over other terms.
        let mut expired = signed_back(&key, "1", 2, 3600);
        expired.terms.as_mut().unwrap().expires_at = now() - 1;
        assert!(refused(i.rollback(&ACTOR, &back(&expired)).await).contains("expired"));
        let long = signed_back(&key, "1", 2, trust::sign::ROLLBACK_MAX_LIFETIME_SECS + 60);
        assert!(refused(i.rollback(&ACTOR, &back(&long)).await).contains("more than 86400s ahead"));
        let v1 = RollbackAuthorization {
            terms: None,
            ..signed_back(&key, "1", 2, 3600)
        };
        assert!(
            refused(i.rollback(&ACTOR, &back(&v1)).await).contains("v1 authorizations are refused")
        );
        let mut forged = signed_back(&key, "1", 2, 3600);
        forged.terms.as_mut().unwrap().nonce = signed_back(&key, "1", 2, 3600).terms.unwrap().nonce;
        assert!(refused(i.rollback(&ACTOR, &back(&forged)).await).contains("does not verify"));

        // A fresh authorization works, once.
        let fresh = signed_back(&key, "1", 2, 3600);
        i.deploy(&ACTOR, &redeploy(&fresh)).await.unwrap();
        // A retry carries it again without spending it anew.
        let again = i.retry(&ACTOR, web("preprod")).await.unwrap();
        assert_eq!(again.version, "1");
    }

    crate::store::testing::on_both_dialects!(
        a_deploy_sets_desired_through_a_rollout_and_wakes_the_apps_sessions,
        a_deploy_names_what_it_cannot_find,
        a_promotion_waits_for_the_soak_and_refuses_drift_unless_forced,
        a_rollback_goes_to_the_last_release_that_ran_healthy_all_at_once,
        a_retry_sends_the_same_release_again_with_a_new_generation,
        a_rollback_authorization_allows_one_rollback_from_the_release_desired_now,
    );
}
