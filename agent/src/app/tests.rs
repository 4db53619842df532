//! Unit tests of the deploy machine: real release archives, real files, real
//! hooks, with a fake fetcher (blobs from memory instead of the controller)
//! and a fake process backend (a table of "running" processes instead of real
//! ones, so a test can say which release is unhealthy and see exactly what
//! runs). Every transition of the table is driven here, and so is an agent
//! killed right before each step and started again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use artifact::Digest;
use artifact::spec::{ProcessSpec, ReleaseSpec};

use super::backend::BoxFuture;
use super::*;
use crate::directive::{Desired, Directive};
use crate::health::Verdict;
use crate::state::State;
use crate::step::Step;

/// What "runs" on the fake host: one entry per process.
#[derive(Default)]
struct World {
    running: BTreeMap<String, ProcRecord>,
    next_pid: i32,
    /// Versions whose processes fail their checks.
    unhealthy: BTreeSet<String>,
    /// A start while another release's process still ran ("two servers").
    overlaps: Vec<String>,
    starts: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeProcs(Arc<Mutex<World>>);

impl Processes for FakeProcs {
    fn adopt(&self) -> Vec<ProcRecord> {
        self.0.lock().unwrap().running.values().cloned().collect()
    }

    fn start<'a>(
        &'a self,
        spec: &'a ReleaseSpec,
        version: &'a str,
        _env: &'a Env,
    ) -> BoxFuture<'a, Result<Vec<ProcRecord>, DeployError>> {
        Box::pin(async move {
            let mut w = self.0.lock().unwrap();
            let mut out = Vec::new();
            for name in spec.processes.keys() {
                if let Some(other) = w.running.values().find(|r| r.version != version) {
                    let overlap = format!("{version} started while {} ran", other.version);
                    w.overlaps.push(overlap);
                }
                w.next_pid += 1;
                let rec = ProcRecord {
                    process: name.clone(),
                    pid: w.next_pid,
                    start_time: 0,
                    version: version.to_string(),
                    ..ProcRecord::default()
                };
                w.running.insert(name.clone(), rec.clone());
                w.starts.push(version.to_string());
                out.push(rec);
            }
            Ok(out)
        })
    }

    fn stop<'a>(&'a self, rec: &'a ProcRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut w = self.0.lock().unwrap();
            if w.running
                .get(&rec.process)
                .is_some_and(|r| r.pid == rec.pid)
            {
                w.running.remove(&rec.process);
            }
        })
    }

    fn check<'a>(
        &'a self,
        rec: &'a ProcRecord,
        _ps: &'a ProcessSpec,
        _release: &'a Path,
        _env: &'a Env,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let w = self.0.lock().unwrap();
            if w.running.get(&rec.process).map(|r| r.pid) != Some(rec.pid) {
                return Verdict::Failed {
                    reason: format!("process {} exited", rec.process),
                    missing_env: vec![],
                };
            }
            if w.unhealthy.contains(&rec.version) {
                return Verdict::Failed {
                    reason: "GET /health on port 1 answered 503".into(),
                    missing_env: vec![],
                };
            }
            Verdict::Healthy
        })
    }
}

/// Serves blobs from memory; counts fetches per blob; can hang like a
/// download that never ends.
#[derive(Clone, Default)]
struct FakeFetch {
    blobs: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    fetched: Arc<Mutex<Vec<String>>>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Fetch for FakeFetch {
    fn fetch<'a>(
        &'a self,
        cache: &'a Path,
        blob: &'a Digest,
        _size: u64,
        _feed: &'a crate::follow::Feed,
    ) -> BoxFuture<'a, Result<PathBuf, DeployError>> {
        Box::pin(async move {
            if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let bytes = self.blobs.lock().unwrap().get(&blob.to_string()).cloned();
            let bytes = bytes.ok_or_else(|| DeployError::Transient("no such blob".into()))?;
            self.fetched.lock().unwrap().push(blob.to_string());
            std::fs::create_dir_all(cache).unwrap();
            let path = cache.join(blob.hex());
            std::fs::write(&path, bytes).unwrap();
            Ok(path)
        })
    }
}

/// One app ("web") on a fake host, with releases packed for real.
struct Rig {
    dir: tempfile::TempDir,
    procs: FakeProcs,
    fetch: FakeFetch,
    generation: u64,
}

const SPEC: &str = r#"
[processes.web]
command = ["bin/web"]
health = { timeout_secs = 2, min_healthy_secs = 0 }

[hooks.prepare]
command = ["sh", "-c", "echo $SLIPWAY_VERSION >> ../../prepare.log"]
timeout_secs = 10
"#;

impl Rig {
    fn new() -> Self {
        Rig {
            dir: tempfile::tempdir().unwrap(),
            procs: FakeProcs::default(),
            fetch: FakeFetch::default(),
            generation: 0,
        }
    }

    fn app_dir(&self) -> PathBuf {
        self.dir.path().join("state/apps/web")
    }

    fn runner(&self) -> AppRunner {
        self.runner_crashing_before(None)
    }

    /// A fresh runner on the same disk and processes: an agent (re)started.
    fn runner_crashing_before(&self, step: Option<Step>) -> AppRunner {
        let cfg: crate::config::AppConfig = toml::from_str("").unwrap();
        let (board, _) = tokio::sync::watch::channel(BTreeMap::new());
        let mut r = AppRunner::new("web".into(), cfg, &self.dir.path().join("state"), board)
            .unwrap()
            .with_fetch(Arc::new(self.fetch.clone()))
            .with_backend(Arc::new(self.procs.clone()));
        r.crash_before = step;
        r
    }

    /// Packs release `version` (with `spec` as its slipway.toml) and returns
    /// the directive for it, at a new generation.
    fn release(&mut self, version: &str, spec: &str) -> Desired {
        let src = self.dir.path().join(format!("src-{version}"));
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("slipway.toml"), spec).unwrap();
        std::fs::write(src.join("bin/web"), format!("#!/bin/sh\necho {version}\n")).unwrap();
        let mut blob = Vec::new();
        let packed = artifact::pack::pack_dir(&src, &mut blob).unwrap();
        let manifest = packed.into_manifest("web", version, None);
        let blob_digest = Digest::of(&blob);
        self.fetch
            .blobs
            .lock()
            .unwrap()
            .insert(blob_digest.to_string(), blob.clone());
        self.generation += 1;
        Desired::Release(Directive {
            tenant: "default".into(),
            environment: "preprod".into(),
            app: "web".into(),
            version: version.into(),
            digest: manifest.digest().to_string(),
            generation: self.generation,
            counter: self.generation,
            blob: Some(blob_digest),
            blob_size: blob.len() as u64,
            manifest: Arc::new(manifest),
            release_signatures: vec![],
            rollback_authorization: vec![],
            rollback_terms: None,
            apply_migrations: false,
        })
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.app_dir().join("current"))
            .ok()
            .and_then(|p| p.file_name()?.to_str().map(String::from))
    }

    /// Versions of the processes that run now.
    fn running(&self) -> Vec<String> {
        let w = self.procs.0.lock().unwrap();
        w.running.values().map(|r| r.version.clone()).collect()
    }

    fn prepare_runs(&self, version: &str) -> usize {
        std::fs::read_to_string(self.app_dir().join("prepare.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == version)
            .count()
    }

    fn steps(&self, version: &str) -> Vec<(String, String)> {
        std::fs::read_to_string(self.app_dir().join("deploy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["version"] == version)
            .map(|v| {
                (
                    v["step"].as_str().unwrap().to_string(),
                    v["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.app_dir().join("releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    /// What the reconcile loop does with a desired release.
    async fn reconcile(&self, r: &mut AppRunner, d: &Desired) {
        if r.needs_deploy(d) {
            r.deploy(d).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_good_release_walks_every_step_and_replaces_the_running_one() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.reconcile(&mut r, &v2).await;

    assert_eq!(rig.current().as_deref(), Some("2.0.0"));
    assert_eq!(rig.running(), ["2.0.0"]);
    assert_eq!(r.status.state, State::Healthy);
    assert_eq!(r.status.running_version.as_deref(), Some("2.0.0"));
    assert!(r.status.deploy.is_none());
    assert_eq!(r.status.history, ["1.0.0", "2.0.0"]);
    let steps: Vec<String> = rig
        .steps("2.0.0")
        .into_iter()
        .filter(|(_, o)| o == "ok")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, ["fetch", "unpack", "prepare", "flip", "health"]);
    assert_eq!(rig.prepare_runs("2.0.0"), 1);
    assert!(rig.procs.0.lock().unwrap().overlaps.is_empty());
    // Deploying what runs again changes nothing.
    let starts = rig.procs.0.lock().unwrap().starts.len();
    rig.reconcile(&mut r, &v2).await;
    assert_eq!(rig.procs.0.lock().unwrap().starts.len(), starts);
}

#[tokio::test]
async fn an_unhealthy_release_is_rolled_back_and_not_tried_again() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    rig.procs.0.lock().unwrap().unhealthy.insert("2.0.0".into());
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.reconcile(&mut r, &v2).await;

    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(r.status.state, State::RolledBack);
    assert_eq!(r.status.failed.as_ref().unwrap().version, "2.0.0");
    assert!(
        r.status.last_error.contains("answered 503"),
        "{}",
        r.status.last_error
    );
    assert!(r.status.deploy.is_none());
    assert!(!r.needs_deploy(&v2), "the same generation is not retried");
    assert!(rig.procs.0.lock().unwrap().overlaps.is_empty());
}

#[tokio::test]
async fn a_failing_prepare_hook_refuses_before_anything_stops() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let broken = SPEC.replace("echo $SLIPWAY_VERSION >> ../../prepare.log", "exit 3");
    let v2 = rig.release("2.0.0", &broken);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    let starts = rig.procs.0.lock().unwrap().starts.len();
    rig.reconcile(&mut r, &v2).await;

    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(
        rig.procs.0.lock().unwrap().starts.len(),
        starts,
        "never restarted"
    );
    assert!(
        r.status.last_error.starts_with("2.0.0: prepare: "),
        "{}",
        r.status.last_error
    );
    assert!(
        !rig.app_dir().join("releases/2.0.0").exists(),
        "half-installed dir removed"
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_verify_is_refused_and_reported() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    let bad = Desired::Invalid {
        target: crate::state::Target {
            version: "2.0.0".into(),
            digest: "sha256:00".into(),
            generation: 9,
            counter: 9,
        },
        reason: "manifest does not describe the desired release".into(),
    };
    rig.reconcile(&mut r, &bad).await;
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(r.status.failed.as_ref().unwrap().generation, 9);
    assert!(
        r.status
            .last_error
            .contains("verify: manifest does not describe")
    );
}

#[tokio::test]
async fn rolling_back_to_a_release_kept_on_the_host_fetches_nothing() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.reconcile(&mut r, &v2).await;
    assert_eq!(rig.fetch.fetched.lock().unwrap().len(), 2);

    // The controller rolls back: 1.0.0 again, at a new generation.
    rig.reconcile(&mut r, &redeployed(&v1, 10)).await;
    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(
        rig.fetch.fetched.lock().unwrap().len(),
        2,
        "not fetched again"
    );
    assert_eq!(
        rig.prepare_runs("1.0.0"),
        1,
        "prepare ran when it was installed only"
    );
    assert!(
        rig.steps("1.0.0")
            .iter()
            .any(|(s, o)| s == "verify" && o == "ok")
    );

    // A kept release edited on the host is not trusted: fetched afresh.
    std::fs::write(rig.app_dir().join("releases/2.0.0/bin/web"), "tampered").unwrap();
    rig.reconcile(&mut r, &redeployed(&v2, 11)).await;
    assert_eq!(rig.current().as_deref(), Some("2.0.0"));
    assert_eq!(rig.fetch.fetched.lock().unwrap().len(), 3);
    let web = std::fs::read_to_string(rig.app_dir().join("releases/2.0.0/bin/web")).unwrap();
    assert!(web.contains("echo 2.0.0"), "{web}");
}

#[tokio::test]
async fn a_host_rollback_runs_through_the_same_machine() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.reconcile(&mut r, &v2).await;

    // The target is unhealthy: the command fails and 2.0.0 is put back.
    rig.procs.0.lock().unwrap().unhealthy.insert("1.0.0".into());
    let e = r.local_rollback(None, "ops").await.unwrap_err().to_string();
    assert!(
        e.contains("1.0.0 did not prove healthy, 2.0.0 restored"),
        "{e}"
    );
    assert!(e.contains("answered 503"), "{e}");
    assert_eq!(rig.current().as_deref(), Some("2.0.0"));
    assert_eq!(rig.running(), ["2.0.0"]);
    assert!(
        r.status.failed.is_none(),
        "the healthy release is not blamed"
    );

    rig.procs.0.lock().unwrap().unhealthy.clear();
    let done = r.local_rollback(None, "ops").await.unwrap();
    assert_eq!(done, "web: 2.0.0 -> 1.0.0, healthy");
    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(r.status.state, State::RolledBack);
    assert_eq!(r.status.failed.as_ref().unwrap().version, "2.0.0");
    assert!(
        !r.needs_deploy(&v2),
        "the release left is not re-applied by itself"
    );
    assert!(rig.procs.0.lock().unwrap().overlaps.is_empty());
}

/// The same release deployed again (a retry, a rollback) at `generation`.
fn redeployed(d: &Desired, generation: u64) -> Desired {
    let Desired::Release(mut d) = d.clone() else {
        unreachable!("only releases are redeployed")
    };
    d.generation = generation;
    Desired::Release(d)
}

/// How a scenario should end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ends {
    /// 2.0.0 runs, healthy.
    OnNew,
    /// 2.0.0 failed its health checks: 1.0.0 runs again.
    RolledBack,
    /// 2.0.0 was refused at `prepare`: 1.0.0 never stopped.
    Refused,
}

/// Deploys 1.0.0, then 2.0.0 with an agent killed right before `step`; starts
/// the agent again and lets it converge; checks the host is where the scenario
/// ends, with one release running, nothing left behind, no deploy pending.
async fn killed_before(step: Step, ends: Ends) {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let spec2 = match ends {
        Ends::Refused => SPEC.replace("echo $SLIPWAY_VERSION >> ../../prepare.log", "exit 3"),
        _ => SPEC.to_string(),
    };
    let v2 = rig.release("2.0.0", &spec2);
    if ends == Ends::RolledBack {
        rig.procs.0.lock().unwrap().unhealthy.insert("2.0.0".into());
    }
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;

    let mut doomed = rig.runner_crashing_before(Some(step));
    doomed.deploy(&v2).await.unwrap();
    let persisted = AppStatus::load(&rig.app_dir().join("status.json")).unwrap();
    assert_eq!(
        persisted.deploy.as_ref().map(|p| p.step),
        Some(step),
        "the step is on disk before it starts"
    );
    drop(doomed);

    // Start-up logs "start ok" when it starts what `current` holds.
    let current_then = rig.current().unwrap();
    let start_ups = |rig: &Rig| {
        rig.steps(&current_then)
            .iter()
            .filter(|(s, o)| s == "start" && o == "ok")
            .count()
    };
    let start_ups_then = start_ups(&rig);
    let mut restarted = rig.runner();
    restarted.start_up().await;
    rig.reconcile(&mut restarted, &v2).await;

    let label = format!("killed before {step}, expected {ends:?}");
    if matches!(
        step,
        Step::Stop | Step::Flip | Step::Start | Step::RollingBack
    ) {
        assert_eq!(
            start_ups(&rig),
            start_ups_then,
            "{label}: start-up started {current_then}, which the resumed step replaces"
        );
    }
    let (version, state) = match ends {
        Ends::OnNew => ("2.0.0", State::Healthy),
        Ends::RolledBack | Ends::Refused => ("1.0.0", State::RolledBack),
    };
    assert_eq!(rig.current().as_deref(), Some(version), "{label}");
    assert_eq!(
        rig.running(),
        [version],
        "{label}: one server, the right one"
    );
    assert_eq!(
        restarted.status.running_version.as_deref(),
        Some(version),
        "{label}"
    );
    assert_eq!(restarted.status.state, state, "{label}");
    assert!(restarted.status.deploy.is_none(), "{label}");
    assert!(rig.leftovers().is_empty(), "{label}: {:?}", rig.leftovers());
    if ends != Ends::OnNew {
        let failed = restarted.status.failed.as_ref().expect(&label);
        assert_eq!(failed.version, "2.0.0", "{label}");
        assert!(!restarted.needs_deploy(&v2), "{label}: not retried");
    }
    if ends == Ends::Refused {
        assert!(!rig.app_dir().join("releases/2.0.0").exists(), "{label}");
    }
    // An interrupted `prepare` runs once more; a finished one never again.
    let most = if step == Step::Prepare { 2 } else { 1 };
    assert!(rig.prepare_runs("2.0.0") <= most, "{label}");
    assert!(rig.procs.0.lock().unwrap().overlaps.is_empty(), "{label}");
}

#[tokio::test]
async fn killed_before_any_step_of_a_good_deploy_the_agent_finishes_it() {
    // Every step a good deploy walks: all but the two failure endings.
    for step in Step::ALL
        .into_iter()
        .filter(|s| !matches!(s, Step::RollingBack | Step::Refused))
    {
        killed_before(step, Ends::OnNew).await;
    }
}

#[tokio::test]
async fn killed_before_any_step_of_a_failing_deploy_the_agent_rolls_it_back() {
    for step in [
        Step::Stop,
        Step::Flip,
        Step::Start,
        Step::Health,
        Step::RollingBack,
    ] {
        killed_before(step, Ends::RolledBack).await;
    }
}

#[tokio::test]
async fn killed_before_a_refusal_is_recorded_the_agent_records_it() {
    killed_before(Step::Refused, Ends::Refused).await;
}

#[tokio::test]
async fn an_activation_left_by_an_older_agent_is_judged_again() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    rig.procs.0.lock().unwrap().unhealthy.insert("2.0.0".into());
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    let mut doomed = rig.runner_crashing_before(Some(Step::Health));
    doomed.deploy(&v2).await.unwrap();
    drop(doomed);
    // Rewrite status.json as an agent before the machine wrote it.
    let path = rig.app_dir().join("status.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let p = json["deploy"].take();
    json["activating"] = serde_json::json!({
        "version": p["target"]["version"],
        "digest": p["target"]["digest"],
        "generation": p["target"]["generation"],
        "previous": "1.0.0",
        "previous_digest": null,
    });
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();

    let mut restarted = rig.runner();
    restarted.start_up().await;
    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(restarted.status.failed.as_ref().unwrap().version, "2.0.0");
    assert!(
        rig.steps("2.0.0")
            .contains(&("activation".into(), "resumed".into()))
    );
}

#[test]
fn an_edit_never_postpones_a_drift_check_already_due() {
    let now = tokio::time::Instant::now();
    let gap = super::DRIFT_MIN_GAP;
    // Checked long ago, periodic check far away: at once.
    let due = now + gap * 100;
    assert_eq!(super::drift_check_after_edit(due, now - gap * 2, now), now);
    // Checked just now: not before the gap.
    assert_eq!(super::drift_check_after_edit(due, now, now), now + gap);
    // The periodic check comes before the gap would end: it stays first.
    let soon = now + gap / 5;
    assert_eq!(super::drift_check_after_edit(soon, now, now), soon);
}

#[tokio::test]
async fn a_download_that_outlasts_its_limit_postpones_the_deploy_and_blames_nothing() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.fetch
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The fetch's day-long limit shortened: the hanging fetch runs into it.
    r.fetch_limit = Some(std::time::Duration::from_millis(200));
    let e = r.deploy(&v2).await.unwrap_err();
    assert!(e.to_string().contains("fetch timed out"), "{e}");
    assert!(
        r.status.failed.is_none(),
        "a slow link is not the release's fault"
    );
    assert!(r.status.deploy.is_none());
    assert!(r.needs_deploy(&v2), "tried again later");
    assert_eq!(rig.running(), ["1.0.0"]);
}

#[tokio::test]
async fn a_release_its_on_rollback_hook_undid_is_installed_afresh() {
    let mut rig = Rig::new();
    let spec = format!(
        "{SPEC}\n[hooks.on_rollback]\ncommand = [\"sh\", \"-c\", \"echo undone >> ../../rollback.log\"]\n"
    );
    let v1 = rig.release("1.0.0", &spec);
    let v2 = rig.release("2.0.0", &spec);
    rig.procs.0.lock().unwrap().unhealthy.insert("2.0.0".into());
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    rig.reconcile(&mut r, &v2).await;
    assert_eq!(rig.running(), ["1.0.0"]);
    let undone = std::fs::read_to_string(rig.app_dir().join("rollback.log")).unwrap();
    assert_eq!(undone.lines().count(), 1, "on_rollback ran once");

    // Fixed on the host; the same release deployed again runs `prepare` again.
    rig.procs.0.lock().unwrap().unhealthy.clear();
    rig.reconcile(&mut r, &redeployed(&v2, 20)).await;
    assert_eq!(rig.running(), ["2.0.0"]);
    assert_eq!(
        rig.prepare_runs("2.0.0"),
        2,
        "prepared again after its undo"
    );
    assert_eq!(rig.fetch.fetched.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_host_rollback_left_half_way_is_finished_by_the_running_agent() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let mut agent = rig.runner();
    rig.reconcile(&mut agent, &v1).await;
    rig.reconcile(&mut agent, &v2).await;

    // `slipway-agent rollback` killed right before `hold`.
    let mut command = rig.runner_crashing_before(Some(Step::Hold));
    command.local_rollback(None, "ops").await.unwrap_err();
    drop(command);

    // The agent's loop: sees the change and the deploy nobody runs.
    agent.reload_if_changed();
    agent.finish_abandoned().await;
    assert_eq!(rig.current().as_deref(), Some("1.0.0"));
    assert_eq!(rig.running(), ["1.0.0"]);
    assert!(agent.status.deploy.is_none());
    assert_eq!(agent.status.running_version.as_deref(), Some("1.0.0"));
    assert_eq!(agent.status.failed.as_ref().unwrap().version, "2.0.0");
    assert!(!agent.needs_deploy(&v2), "the operator's choice holds");
}

#[tokio::test]
async fn a_second_rollback_on_the_host_keeps_the_controllers_release_refused() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let v3 = rig.release("3.0.0", SPEC);
    let mut r = rig.runner();
    for v in [&v1, &v2, &v3] {
        rig.reconcile(&mut r, v).await;
    }
    r.local_rollback(Some("2.0.0".into()), "ops").await.unwrap();
    r.local_rollback(Some("1.0.0".into()), "ops").await.unwrap();
    assert_eq!(rig.running(), ["1.0.0"]);
    assert_eq!(r.status.failed.as_ref().unwrap().version, "3.0.0");
    assert!(
        !r.needs_deploy(&v3),
        "3.0.0, which the controller wants, is not re-applied"
    );
}

/// `d` signed by `key` as its publisher, at generation `generation`; with a
/// rollback authorization from counter `from` expiring at `expires_at` when
/// given (a fresh nonce each time).
fn signed(
    key: &trust::sign::KeyPair,
    d: &Desired,
    generation: u64,
    rollback: Option<(u64, i64)>,
) -> Desired {
    let Desired::Release(d) = d else {
        panic!("a release")
    };
    let mut d = d.clone();
    d.generation = generation;
    let statement = trust::sign::ReleaseStatement {
        tenant: &d.tenant,
        app: &d.app,
        version: &d.version,
        counter: d.counter,
        manifest_digest: &d.digest,
    };
    let s = key.sign(&statement.bytes());
    d.release_signatures = vec![(s.key, s.sig)];
    if let Some((from, expires_at)) = rollback {
        let mut terms = trust::sign::RollbackTerms::new(from, 0, 0);
        terms.expires_at = expires_at;
        let s = key.sign(
            &terms
                .statement(&d.tenant, &d.app, &d.environment, &d.version, &d.digest)
                .bytes(),
        );
        d.rollback_authorization = vec![(s.key, s.sig)];
        d.rollback_terms = Some(terms);
    }
    Desired::Release(d)
}

#[tokio::test]
async fn a_signed_rollback_is_honoured_once_while_fresh_and_from_what_runs() {
    let mut rig = Rig::new();
    let key = trust::sign::KeyPair::generate();
    let trust = crate::config::TrustConfig {
        publisher_keys: vec![key.public()],
        signatures_required: 1,
    };
    let v1 = rig.release("1.0.0", SPEC);
    let v2 = rig.release("2.0.0", SPEC);
    let v3 = rig.release("3.0.0", SPEC);
    let soon = crate::state::now() + 3600;
    let mut r = rig.runner().with_trust(trust.clone());
    rig.reconcile(&mut r, &signed(&key, &v1, 10, None)).await;
    rig.reconcile(&mut r, &signed(&key, &v2, 11, None)).await;
    assert_eq!(rig.running(), ["2.0.0"]);
    let refused = |r: &AppRunner, what: &str| {
        assert!(
            r.status.last_error.contains("downgrade refused") && r.status.last_error.contains(what),
            "{what}: {}",
            r.status.last_error
        );
        assert_eq!(rig.running(), ["2.0.0"], "{what}: 2.0.0 keeps running");
    };

    // Refused: expired, too long-lived, v1 (no terms), from an older release.
    rig.reconcile(
        &mut r,
        &signed(&key, &v1, 12, Some((2, crate::state::now() - 1))),
    )
    .await;
    refused(&r, "expired");
    let far = crate::state::now() + trust::sign::ROLLBACK_MAX_LIFETIME_SECS + 60;
    rig.reconcile(&mut r, &signed(&key, &v1, 13, Some((2, far))))
        .await;
    refused(&r, "ahead");
    let Desired::Release(mut v1_only) = signed(&key, &v1, 14, Some((2, soon))) else {
        unreachable!()
    };
    v1_only.rollback_terms = None;
    rig.reconcile(&mut r, &Desired::Release(v1_only)).await;
    refused(&r, "v1");
    rig.reconcile(&mut r, &signed(&key, &v1, 15, Some((1, soon))))
        .await;
    refused(&r, "rolls back from counter 1");

    // A fresh one from 2: accepted, and survives an agent killed mid-way
    // (the same authorization verified again for the same release).
    let back = signed(&key, &v1, 16, Some((2, soon)));
    let mut doomed = rig
        .runner_crashing_before(Some(Step::Fetch))
        .with_trust(trust.clone());
    doomed.deploy(&back).await.unwrap();
    drop(doomed);
    let mut r = rig.runner().with_trust(trust.clone());
    rig.reconcile(&mut r, &back).await;
    assert_eq!(rig.running(), ["1.0.0"], "{}", r.status.last_error);

    // CI puts 2 back; the same authorization replayed (a compromised
    // controller, a new generation) is refused, across a restart too.
    rig.reconcile(&mut r, &signed(&key, &v2, 17, None)).await;
    assert_eq!(rig.running(), ["2.0.0"]);
    let Desired::Release(mut replay) = back.clone() else {
        unreachable!()
    };
    replay.generation = 18;
    let mut r = rig.runner().with_trust(trust.clone());
    rig.reconcile(&mut r, &Desired::Release(replay)).await;
    refused(&r, "was used already");

    // Past 3, an authorization from 2 is too old.
    rig.reconcile(&mut r, &signed(&key, &v3, 19, None)).await;
    rig.reconcile(&mut r, &signed(&key, &v1, 20, Some((2, soon))))
        .await;
    assert!(
        r.status.last_error.contains("rolls back from counter 2"),
        "{}",
        r.status.last_error
    );
    assert_eq!(rig.running(), ["3.0.0"]);
}

/// An unpack child killed with its agent leaves `releases/.tmp-<version>-<pid>`
/// (and a staging dir) that no progress record names; the restarted agent
/// removes them before anything else, not at the next healthy activation.
#[tokio::test]
async fn temp_dirs_a_killed_unpack_left_are_removed_at_start() {
    let mut rig = Rig::new();
    let v1 = rig.release("1.0.0", SPEC);
    let mut r = rig.runner();
    rig.reconcile(&mut r, &v1).await;
    let releases = rig.app_dir().join("releases");
    for left in [".tmp-2.0.0-4242", ".stage-2.0.0-4242"] {
        std::fs::create_dir_all(releases.join(left).join("bin")).unwrap();
    }
    drop(r);
    let mut restarted = rig.runner();
    restarted.start_up().await;
    let mut names: Vec<String> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.0.0"]);
    assert_eq!(rig.running(), ["1.0.0"], "what ran is adopted, untouched");
}
