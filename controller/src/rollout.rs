//! The rollout engine. A change of an app's desired release in an environment
//! starts a rollout (`start`): hosts are planned into steps (canaries, then
//! batches) and held at the previous release until their step is admitted.
//! One task (`run`) drives every running rollout from what the store holds:
//! admit the next step, judge the admitted hosts from their reports (healthy,
//! failed, timed out, offline), halt past the failure threshold and revert
//! the hosts already changed, all at once. Nothing lives only in memory, so a
//! restarted controller carries on where it stopped: the engine remembers
//! between looks only which hosts are still pending (`Seen`), to judge just
//! the hosts that reported instead of re-reading the rollout and its fleet on
//! every report, and falls back to a full look whenever the rollout changed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, SharedCtx};
use crate::fleet;
use crate::hub::{DesiredChange, Hub, Reported};
use crate::lifecycle::{Health, HostOutcome, RolloutState};
use crate::plan::{self, Change, OfflinePolicy};
use crate::store::{
    self, FleetRow, NewRollout, RolloutHostRow, RolloutRow, Started, Store, StoreError,
};

/// How often running rollouts are looked at even when nothing reports.
const TICK: Duration = Duration::from_secs(1);

/// Sets the desired release and plans its rollout over the environment's
/// hosts that run the app, then wakes the app's sessions there and the engine.
pub async fn start(store: &Store, hub: &Hub, c: &Change<'_>) -> Result<Started, StoreError> {
    let candidates = store.app_hosts(c.tenant, c.app, c.environment).await?;
    let (plan, steps) = plan::plan(&candidates, &c.strategy);
    let started = store
        .start_rollout(&NewRollout {
            change: c,
            plan: &plan,
            steps,
        })
        .await?;
    tracing::info!(
        tenant = c.tenant,
        app = c.app,
        env = c.environment,
        version = c.version,
        rollout = started.rollout_id,
        hosts = plan.len(),
        steps,
        "rollout started"
    );
    // Hosts held back recompute to what they run; the others get the release.
    hub.desired_changed(&DesiredChange {
        tenant: c.tenant,
        environment: c.environment,
        app: c.app,
        hosts: None,
    });
    hub.rollouts_changed();
    Ok(started)
}

/// The change a rollout makes to its app's hosts in its environment: `hosts`,
/// or all of them.
fn desired_change<'a>(r: &'a RolloutRow, hosts: Option<&'a [String]>) -> DesiredChange<'a> {
    DesiredChange {
        tenant: &r.tenant,
        environment: &r.environment,
        app: &r.app,
        hosts,
    }
}

/// What the engine remembers of a rollout between two looks: derived from
/// the store by a full look, never the truth (the store is). A look judges
/// only the hosts that reported since (and pending hosts without a session,
/// for the offline rule) while the rollout row is unchanged; anything else
/// (an admitted step, a pause, a restart of the engine, a step timing out,
/// an error) makes the next look a full one.
struct Seen {
    /// The rollout row's fields the engine acts on, at the last look.
    mark: (RolloutState, u32, i64, i64),
    /// Admitted hosts still pending, with their step.
    pending: HashMap<String, u32>,
    /// Pending hosts without a session, as of `departures` sessions ended
    /// (`Hub::departures`): asked again only when another session ended.
    absent: Vec<String>,
    departures: u64,
}

fn mark(r: &RolloutRow) -> (RolloutState, u32, i64, i64) {
    (r.state, r.step, r.step_started_at, r.next_step_at)
}

/// Drives every running (and paused) rollout until shutdown.
pub async fn run(ctx: SharedCtx, stop: CancellationToken) {
    let signal = ctx.hub.rollout_signal();
    let started = tokio::time::Instant::now();
    // Right after a start, every host looks unheard of: agents are still
    // reconnecting. Nobody is judged offline before they had the time to.
    let grace = Duration::from_secs(fleet::offline_after(ctx.heartbeat_secs) as u64);
    let mut seen: HashMap<i64, Seen> = HashMap::new();
    loop {
        let trust_offline = started.elapsed() > grace;
        // Taken before anything is read: a report stored after this is either
        // read by this look or named in the next one's.
        let reported = ctx.hub.take_reported();
        if ctx.hub.take_resync() {
            // Reports from other replicas may have been missed.
            seen.clear();
        }
        match ctx.store.active_rollouts().await {
            Ok(rollouts) => {
                seen.retain(|id, _| rollouts.iter().any(|r| r.id == *id));
                for r in rollouts {
                    let prev = seen.remove(&r.id);
                    match advance(&ctx, &r, prev, &reported, trust_offline).await {
                        Ok(Some(next)) => {
                            seen.insert(r.id, next);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(rollout = r.id, error = %e, "advancing rollout failed")
                        }
                    }
                }
            }
            Err(e) => {
                // The reports taken are not lost: every rollout is looked at whole.
                seen.clear();
                tracing::error!(error = %e, "reading rollouts failed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = signal.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// A host's verdict in a rollout from its latest report, or None while it is
/// still on its way. An offline host is failed, skipped or waited for (then
/// it times out), as the strategy's `offline` policy says; an offline canary
/// is always waited for, so a rollout never passes its canary step unproven.
fn judge(
    r: &RolloutRow,
    step: u32,
    report: Option<&FleetRow>,
    offline: bool,
    now: i64,
) -> Option<(HostOutcome, String)> {
    if let Some(f) = report {
        let rep = &f.report;
        let current = rep.generation >= r.generation;
        if current
            && !crate::lifecycle::deploying(rep.state)
            && rep.running_digest == r.to_digest
            && rep.health == Health::Healthy
        {
            return Some((HostOutcome::Healthy, String::new()));
        }
        if current && rep.failed_digest == r.to_digest {
            return Some((HostOutcome::Failed, rep.last_error.clone()));
        }
    }
    if offline && !is_canary(r, step) {
        match r.strategy.offline {
            OfflinePolicy::Skip => {
                return Some((
                    HostOutcome::Offline,
                    "offline during its step: skipped, not judged".into(),
                ));
            }
            OfflinePolicy::Fail => {
                return Some((
                    HostOutcome::Failed,
                    "offline during its step (offline policy: fail)".into(),
                ));
            }
            OfflinePolicy::Wait => {}
        }
    }
    let timeout = i64::from(r.strategy.batch_timeout_secs);
    if now - r.step_started_at > timeout {
        let why = if offline {
            format!("offline, and no healthy report within {timeout}s")
        } else {
            format!("not healthy within {timeout}s")
        };
        return Some((HostOutcome::Timeout, why));
    }
    None
}

fn is_canary(r: &RolloutRow, step: u32) -> bool {
    step == 0 && r.strategy.canary > 0
}

/// The first failed hosts with why, and how many more there are.
fn describe_failures(failed: &[&RolloutHostRow]) -> String {
    const SHOWN: usize = 5;
    let mut text = failed
        .iter()
        .take(SHOWN)
        .map(|h| format!("{} {}: {}", h.host, h.outcome, h.reason))
        .collect::<Vec<_>>()
        .join("; ");
    if failed.len() > SHOWN {
        text.push_str(&format!("; and {} more", failed.len() - SHOWN));
    }
    text
}

/// "not judged (offline): a, b" when the rollout skipped hosts.
fn skipped_note(hosts: &[RolloutHostRow]) -> Option<String> {
    const SHOWN: usize = 10;
    let skipped: Vec<&str> = hosts
        .iter()
        .filter(|h| h.outcome == HostOutcome::Offline)
        .map(|h| h.host.as_str())
        .collect();
    if skipped.is_empty() {
        return None;
    }
    let mut text = format!(
        "not judged (offline): {}",
        skipped
            .iter()
            .take(SHOWN)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if skipped.len() > SHOWN {
        text.push_str(&format!(" and {} more", skipped.len() - SHOWN));
    }
    Some(text)
}

/// Every host the rollout reached (judged, not skipped as offline) failed:
/// the release took nowhere, whatever failure threshold the strategy allows
/// (a rollback tolerates every failure so as not to revert itself).
fn nothing_took(hosts: &[RolloutHostRow]) -> bool {
    let reached: Vec<&RolloutHostRow> = hosts
        .iter()
        .filter(|h| h.outcome.is_failure() || h.outcome == HostOutcome::Healthy)
        .collect();
    !reached.is_empty() && reached.iter().all(|h| h.outcome.is_failure())
}

/// One look at a rollout: admit its next step when due, or judge its
/// admitted hosts and then halt it, move it on or mark it succeeded. What
/// to remember for the next look (None: the next look is a full one).
async fn advance(
    ctx: &Ctx,
    r: &RolloutRow,
    prev: Option<Seen>,
    reported: &HashSet<Reported>,
    trust_offline: bool,
) -> Result<Option<Seen>, StoreError> {
    let store = &ctx.store;
    let now = store::now();
    // A paused rollout, or one pausing between steps, admits nothing new.
    let admitting = r.step_started_at == 0;
    if admitting && (r.state != RolloutState::Running || r.next_step_at > now) {
        return Ok(None);
    }
    // A host with an open session is never offline, however long since it
    // was heard from; without one, three missed heartbeats make it offline.
    let is_offline = |h: &str, report: Option<&FleetRow>| {
        trust_offline
            && report.map_or(!ctx.hub.connected(&r.tenant, h), |f| {
                ctx.hub
                    .offline(&r.tenant, h, f.last_seen, now, ctx.heartbeat_secs)
            })
    };
    if admitting {
        let hosts = store.rollout_hosts(r.id).await?;
        let reports = fleet_by_host(store.fleet(&r.tenant, &r.app, &r.environment).await?);
        // Hosts not heard from for three heartbeats while their session is
        // up: judged online (logged, so a loaded controller shows in its log).
        let lagging = hosts
            .iter()
            .filter(|h| h.step == r.step && ctx.hub.connected(&r.tenant, &h.host))
            .filter(|h| {
                let stored = reports.get(&h.host).map_or(0, |f| f.last_seen);
                let seen = ctx.hub.last_seen(&r.tenant, &h.host, stored);
                fleet::offline(false, seen, now, ctx.heartbeat_secs)
            })
            .count();
        admit(ctx, r, &hosts, |h| is_offline(h, reports.get(h)), lagging).await?;
        return Ok(None);
    }
    // Paused or not, admitted hosts are judged and a failure halts.
    let timed_out = now - r.step_started_at > i64::from(r.strategy.batch_timeout_secs);
    let prev = prev.filter(|p| p.mark == mark(r) && !timed_out);
    let full = prev.is_none();
    // Pending hosts without a session (for the offline rule), asked of the
    // hub again only when a session ended since the last look.
    let departures = ctx.hub.departures();
    let absent_of = |pending: &HashMap<String, u32>| -> Vec<String> {
        pending
            .keys()
            .filter(|h| !ctx.hub.connected(&r.tenant, h))
            .cloned()
            .collect()
    };
    let (mut pending, to_judge, reports, absent) = match prev {
        Some(p) => {
            let absent = if p.departures == departures {
                p.absent
            } else {
                absent_of(&p.pending)
            };
            // The hosts that reported, and those without a session.
            let mut names: Vec<String> = reported
                .iter()
                .filter(|(t, h, a)| *t == r.tenant && *a == r.app && p.pending.contains_key(h))
                .map(|(_, h, _)| h.clone())
                .collect();
            if trust_offline {
                let named: HashSet<&String> = names.iter().collect();
                let more: Vec<String> = absent
                    .iter()
                    .filter(|h| p.pending.contains_key(*h) && !named.contains(h))
                    .cloned()
                    .collect();
                names.extend(more);
            }
            let reports = if names.is_empty() {
                HashMap::new()
            } else {
                fleet_by_host(
                    store
                        .fleet_hosts(&r.tenant, &r.app, &r.environment, &names)
                        .await?,
                )
            };
            (p.pending, names, reports, absent)
        }
        None => {
            let pending: HashMap<String, u32> = store
                .rollout_hosts(r.id)
                .await?
                .into_iter()
                .filter(|h| h.admitted_at > 0 && h.outcome == HostOutcome::Pending)
                .map(|h| (h.host, h.step))
                .collect();
            let names = pending.keys().cloned().collect();
            let reports = fleet_by_host(store.fleet(&r.tenant, &r.app, &r.environment).await?);
            let absent = absent_of(&pending);
            (pending, names, reports, absent)
        }
    };
    let mut verdicts = Vec::new();
    for host in to_judge {
        let Some(&step) = pending.get(&host) else {
            continue;
        };
        let report = reports.get(&host);
        if let Some((outcome, reason)) = judge(r, step, report, is_offline(&host, report), now) {
            tracing::info!(rollout = r.id, host = %host, %outcome, reason = %reason, "rollout host judged");
            pending.remove(&host);
            verdicts.push((host, outcome, reason));
        }
    }
    store.set_host_outcomes(r.id, &verdicts).await?;
    if full || !verdicts.is_empty() {
        conclude(ctx, r, now).await?;
    }
    let absent = absent
        .into_iter()
        .filter(|h| pending.contains_key(h))
        .collect();
    Ok(Some(Seen {
        mark: mark(r),
        pending,
        absent,
        departures,
    }))
}

/// Reports by host name.
fn fleet_by_host(rows: Vec<FleetRow>) -> HashMap<String, FleetRow> {
    rows.into_iter().map(|f| (f.host.clone(), f)).collect()
}

/// Admits the rollout's current step and wakes the step's hosts, the only
/// ones it releases. Under the `skip` policy its offline hosts (never a
/// canary) are skipped right away; otherwise they are judged like the others.
async fn admit(
    ctx: &Ctx,
    r: &RolloutRow,
    hosts: &[RolloutHostRow],
    is_offline: impl Fn(&str) -> bool,
    lagging: usize,
) -> Result<(), StoreError> {
    let step: Vec<&RolloutHostRow> = hosts.iter().filter(|h| h.step == r.step).collect();
    let skip = r.strategy.offline == OfflinePolicy::Skip;
    let offline: Vec<String> = step
        .iter()
        .filter(|h| skip && !is_canary(r, h.step) && is_offline(&h.host))
        .map(|h| h.host.clone())
        .collect();
    let store = &ctx.store;
    if store.admit_step(r.id, r.step, &offline).await? {
        tracing::info!(rollout = r.id, app = %r.app, env = %r.environment, step = r.step,
            steps = r.steps, offline = offline.len(), connected_stale_last_seen = lagging,
            store_queries = store.queries(),
            "rollout step admitted");
        let admitted: Vec<String> = step.iter().map(|h| h.host.clone()).collect();
        ctx.hub.desired_changed(&desired_change(r, Some(&admitted)));
    }
    Ok(())
}

/// The rollout's hosts counted: what `conclude` decides from.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    hosts: u64,
    failed: u64,
    canary_failed: bool,
    /// Hosts of the current step not judged yet.
    pending_in_step: u64,
}

fn tally(r: &RolloutRow, counts: &[(u32, HostOutcome, u64)]) -> Tally {
    let mut t = Tally::default();
    for &(step, outcome, n) in counts {
        t.hosts += n;
        if outcome.is_failure() {
            t.failed += n;
            t.canary_failed |= is_canary(r, step);
        }
        if step == r.step && outcome == HostOutcome::Pending {
            t.pending_in_step += n;
        }
    }
    t
}

/// After the judging: halt on a canary failure or past the threshold; once
/// the step is judged (and the rollout running), the next step or, after the
/// last, success (or a halt when every host it reached failed). Decided from
/// the counts; the hosts are read only to name them.
async fn conclude(ctx: &Ctx, r: &RolloutRow, now: i64) -> Result<(), StoreError> {
    let t = tally(r, &ctx.store.rollout_tally(r.id).await?);
    if t.failed > 0 {
        // A host refused the release before anything stopped, for
        // migrations a promoter must approve: the rollout stops there,
        // whatever failures it tolerates, and nothing is reverted;
        // `slipctl migrate` starts it again.
        let hosts = ctx.store.rollout_hosts(r.id).await?;
        let awaiting: Vec<&RolloutHostRow> = hosts
            .iter()
            .filter(|h| h.outcome.is_failure() && awaits_migrations(r, h))
            .collect();
        if !awaiting.is_empty() {
            let reason = format!(
                "{WAITING_FOR_MIGRATIONS} at step {}/{}: {}",
                r.step + 1,
                r.steps,
                describe_failures(&awaiting)
            );
            return wait_for_migrations(ctx, r, &reason).await;
        }
    }
    if t.canary_failed || t.failed > r.strategy.max_failures.tolerated_of(t.hosts as usize) as u64 {
        let hosts = ctx.store.rollout_hosts(r.id).await?;
        let failed: Vec<&RolloutHostRow> =
            hosts.iter().filter(|h| h.outcome.is_failure()).collect();
        let what = if t.canary_failed {
            "canary failed"
        } else {
            "failure threshold crossed"
        };
        let reason = format!(
            "{what} at step {}/{}: {}",
            r.step + 1,
            r.steps,
            describe_failures(&failed)
        );
        return halt(ctx, r, &reason).await;
    }
    if r.state != RolloutState::Running || t.pending_in_step > 0 {
        return Ok(());
    }
    if r.step + 1 < r.steps {
        let at = if r.strategy.pause_secs > 0 {
            now + i64::from(r.strategy.pause_secs)
        } else {
            0
        };
        ctx.store.next_step(r.id, r.step + 1, at).await?;
        ctx.hub.rollouts_changed();
        return Ok(());
    }
    let hosts = ctx.store.rollout_hosts(r.id).await?;
    if nothing_took(&hosts) {
        let failed: Vec<&RolloutHostRow> =
            hosts.iter().filter(|h| h.outcome.is_failure()).collect();
        let reason = format!(
            "every host it reached failed {}: {}",
            r.to_version,
            describe_failures(&failed)
        );
        return halt(ctx, r, &reason).await;
    }
    // Success never hides the hosts it did not judge.
    let skipped = skipped_note(&hosts);
    if ctx
        .store
        .transition_rollout(
            r.id,
            &[RolloutState::Running],
            RolloutState::Succeeded,
            skipped.as_deref(),
        )
        .await?
    {
        tracing::info!(rollout = r.id, app = %r.app, env = %r.environment, version = %r.to_version,
            skipped = skipped.as_deref().unwrap_or(""), store_queries = ctx.store.queries(), "rollout succeeded");
        engine_audit(ctx, r, "rollout-succeeded", "ok").await;
        // Hosts that joined since the plan were held at the previous release.
        ctx.hub.desired_changed(&desired_change(r, None));
    }
    Ok(())
}

/// How the reason of a rollout halted for migrations a promoter must
/// approve begins (`slipctl migrate` looks for it).
pub const WAITING_FOR_MIGRATIONS: &str = "waiting for migrations to be approved";

/// Whether the host refused the rollout's release for migrations awaiting a
/// promoter's approval: the refusal the agent words itself
/// ("<version>: migrations: awaiting a promoter's approval: …"), never text
/// a hook or the app printed.
fn awaits_migrations(r: &RolloutRow, h: &RolloutHostRow) -> bool {
    h.reason
        .strip_prefix(r.to_version.as_str())
        .and_then(|rest| rest.strip_prefix(": migrations: "))
        .is_some_and(|rest| rest.starts_with(artifact::spec::MIGRATIONS_AWAITING))
}

/// Stops a rollout whose hosts refused it for migrations awaiting approval:
/// halted, never reverted (nothing changed on them).
async fn wait_for_migrations(ctx: &Ctx, r: &RolloutRow, reason: &str) -> Result<(), StoreError> {
    tracing::warn!(rollout = r.id, app = %r.app, env = %r.environment, version = %r.to_version, reason, "rollout waits for migrations");
    if ctx
        .store
        .transition_rollout(
            r.id,
            &[RolloutState::Running, RolloutState::Paused],
            RolloutState::Halted,
            Some(reason),
        )
        .await?
    {
        engine_audit(ctx, r, "rollout-halt", &format!("halted: {reason}")).await;
    }
    Ok(())
}

/// Stops a rollout past its failure threshold and, with auto-revert, puts
/// the previous release back on every host at once.
async fn halt(ctx: &Ctx, r: &RolloutRow, reason: &str) -> Result<(), StoreError> {
    tracing::warn!(rollout = r.id, app = %r.app, env = %r.environment, version = %r.to_version, reason, "rollout halted");
    if r.strategy.auto_revert && !r.from_version.is_empty() {
        let reason = format!("{reason}; reverted to {}", r.from_version);
        // With publisher keys, agents refuse an older release without a signed
        // rollback: those hosts report it failed and keep the new one.
        if ctx
            .store
            .revert_rollout(
                r.id,
                &[RolloutState::Running, RolloutState::Paused],
                RolloutState::Reverted,
                &reason,
            )
            .await?
            .is_some()
        {
            engine_audit(ctx, r, "rollout-revert", &format!("reverted: {reason}")).await;
            ctx.hub.desired_changed(&desired_change(r, None));
        }
        return Ok(());
    }
    let reason = match (r.strategy.auto_revert, r.from_version.is_empty()) {
        (true, true) => format!(
            "{reason}; nothing to revert to (first release here): deploy another release or abort"
        ),
        _ => format!("{reason}; auto-revert is off: abort to revert, or deploy"),
    };
    if ctx
        .store
        .transition_rollout(
            r.id,
            &[RolloutState::Running, RolloutState::Paused],
            RolloutState::Halted,
            Some(&reason),
        )
        .await?
    {
        engine_audit(ctx, r, "rollout-halt", &format!("halted: {reason}")).await;
    }
    Ok(())
}

async fn engine_audit(ctx: &Ctx, r: &RolloutRow, action: &str, outcome: &str) {
    let detail = format!(
        "rollout {}: {} -> {} ({})",
        r.id, r.from_version, r.to_version, r.to_digest
    );
    if let Err(e) = ctx
        .store
        .audit(
            &r.tenant,
            "controller",
            action,
            &r.app,
            &r.environment,
            &detail,
            outcome,
            "",
        )
        .await
    {
        tracing::error!(error = %e, "audit log write failed");
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::intent::{Actor, Deploy, Intent, Target};
    use crate::plan::StrategyOverride;
    use crate::store::HostAppReport;

    fn host(name: &str, outcome: HostOutcome) -> RolloutHostRow {
        RolloutHostRow {
            host: name.into(),
            step: 0,
            admitted_at: 1,
            outcome,
            reason: String::new(),
        }
    }

    #[test]
    fn nothing_took_when_every_reached_host_failed() {
        use HostOutcome::*;
        let check = |outcomes: &[HostOutcome], expect: bool| {
            let hosts: Vec<RolloutHostRow> = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| host(&format!("h{i}"), *o))
                .collect();
            assert_eq!(nothing_took(&hosts), expect, "{outcomes:?}");
        };
        check(&[Failed, Failed], true);
        check(&[Failed, Timeout, Offline], true);
        check(&[Failed, Healthy], false);
        check(&[Offline, Offline], false);
        check(&[], false);
        check(&[Healthy], false);
    }

    /// A controller context on `store` (its CA and blobs in `dir`) with
    /// releases 1 and 2 of web and hosts on, off (preprod) running 1; both
    /// last heard of long ago.
    async fn engine(store: &Store, dir: &std::path::Path) -> Ctx {
        let store = store.clone();
        store.insert_blob("sha256:b", 1).await.unwrap();
        for v in ["1", "2"] {
            let r = crate::store::tests::release(v, &format!("sha256:m{v}"));
            store.insert_release("default", &r, b"{}").await.unwrap();
        }
        for host in ["on", "off"] {
            store
                .add_host(
                    "default",
                    host,
                    "preprod",
                    host,
                    "x",
                    store::now() + 60,
                    "test",
                )
                .await
                .unwrap();
            report(&store, host, "1", 0).await;
        }
        let hub = Hub::new();
        let ca = trust::pki::Ca::load_or_create(dir).unwrap();
        Ctx {
            reports: crate::reports::ReportWriter::spawn(store.clone(), hub.clone()),
            joins: crate::joins::JoinQueue::spawn(store.clone()),
            store,
            blobs: crate::blobs::BlobStore::open(&dir.join("blobs")).unwrap(),
            hub,
            peers: crate::grpc::replicas::Peers::new(&ca).unwrap(),
            replica: "test".into(),
            ca,
            directive_key: trust::sign::KeyPair::generate(),
            agent_cert_ttl: Duration::from_secs(60),
            join_token_ttl: Duration::from_secs(60),
            directive_ttl: Duration::from_secs(60),
            heartbeat_secs: 2,
            max_blob_bytes: 1 << 20,
            upload_idle_timeout: Duration::from_secs(60),
            edge: crate::grpc::edge::EdgeState::new(Default::default()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            logs: Default::default(),
            reads: Default::default(),
        }
    }

    /// `host` runs web `version` healthy at `generation`; its last_seen is
    /// then set stale (as under load, when heartbeat writes lag).
    async fn report(s: &Store, host: &str, version: &str, generation: u64) {
        report_in(s, host, version, generation, 5).await;
    }

    /// A healthy report at `version` in deploy `state` (the wire's number).
    async fn report_in(s: &Store, host: &str, version: &str, generation: u64, state: i32) {
        let r = HostAppReport {
            app: "web".into(),
            running_version: version.into(),
            running_digest: format!("sha256:m{version}"),
            state,
            health: Health::Healthy,
            generation,
            ..Default::default()
        };
        s.record_report("default", host, &r).await.unwrap();
        sqlx::query("UPDATE hosts SET last_seen = 1")
            .execute(s.pool_for_tests())
            .await
            .unwrap();
    }

    /// Deploys web 2 to preprod in one step under `offline` and advances the
    /// engine until both hosts were looked at; each host's outcome.
    async fn roll(ctx: &Ctx, offline: OfflinePolicy) -> (RolloutRow, Vec<(String, HostOutcome)>) {
        let intent = Intent {
            store: &ctx.store,
            hub: &ctx.hub,
            heartbeat_secs: ctx.heartbeat_secs,
            dry_run: false,
        };
        let none = trust::sign::RollbackAuthorization::default();
        let d = Deploy {
            target: Target {
                tenant: "default",
                app: "web",
                environment: "preprod",
            },
            version: "2",
            authorization: &none,
            strategy: Some(StrategyOverride {
                canary: Some(0),
                batch: Some(plan::Amount::Percent(100)),
                max_failures: Some(plan::Amount::Count(1)),
                offline: Some(offline),
                ..Default::default()
            }),
        };
        let actor = Actor {
            name: "test",
            may_force: false,
        };
        let deployed = intent.deploy(&actor, &d).await.unwrap();
        for _ in 0..2 {
            let r = ctx
                .store
                .rollout(deployed.rollout_id)
                .await
                .unwrap()
                .unwrap();
            look(ctx, &r).await;
        }
        outcomes(ctx, deployed.rollout_id).await
    }

    /// A full look at the rollout (as after a controller start).
    async fn look(ctx: &Ctx, r: &RolloutRow) -> Option<Seen> {
        advance(ctx, r, None, &HashSet::new(), true).await.unwrap()
    }

    async fn outcomes(ctx: &Ctx, id: i64) -> (RolloutRow, Vec<(String, HostOutcome)>) {
        let r = ctx.store.rollout(id).await.unwrap().unwrap();
        let hosts = ctx.store.rollout_hosts(id).await.unwrap();
        (r, hosts.into_iter().map(|h| (h.host, h.outcome)).collect())
    }

    async fn a_host_with_an_open_session_is_judged_whatever_its_last_seen(db: Store) {
        use HostOutcome::*;
        let dir = tempfile::tempdir().unwrap();
        let ctx = engine(&db, dir.path()).await;
        let web = vec!["web".to_string()];
        let _session = ctx.hub.connect("default", "on", "preprod", &web, "");

        // skip: the host without a session is skipped, the connected one is
        // waited for and judged; success says who was not judged.
        let (r, hosts) = roll(&ctx, OfflinePolicy::Skip).await;
        let sorted = |mut v: Vec<(String, HostOutcome)>| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(
            sorted(hosts),
            [("off".to_string(), Offline), ("on".to_string(), Pending)],
            "stale last_seen with an open session is not offline"
        );
        report(&ctx.store, "on", "2", r.generation).await;
        look(&ctx, &r).await;
        let (r, hosts) = outcomes(&ctx, r.id).await;
        assert_eq!(
            sorted(hosts),
            [("off".to_string(), Offline), ("on".to_string(), Healthy)]
        );
        assert_eq!(r.state, RolloutState::Succeeded);
        assert_eq!(r.reason, "not judged (offline): off");

        // fail: counted failed at once (against the threshold of 1 here).
        let (_, hosts) = roll(&ctx, OfflinePolicy::Fail).await;
        assert_eq!(
            sorted(hosts),
            [("off".to_string(), Failed), ("on".to_string(), Pending)]
        );

        // wait: held until it returns or the step times out.
        let (r, hosts) = roll(&ctx, OfflinePolicy::Wait).await;
        assert_eq!(
            sorted(hosts),
            [("off".to_string(), Pending), ("on".to_string(), Pending)]
        );
        report(&ctx.store, "on", "2", r.generation).await;
        look(&ctx, &r).await;
        let (r, _) = outcomes(&ctx, r.id).await;
        assert_eq!(r.state, RolloutState::Running, "the step waits for off");
        let timed_out = RolloutRow {
            step_started_at: r.step_started_at - i64::from(r.strategy.batch_timeout_secs) - 1,
            ..r
        };
        assert_eq!(
            judge(&timed_out, 0, None, true, store::now()).map(|(o, _)| o),
            Some(Timeout),
            "an offline host waited for counts failed once the step times out"
        );
    }

    /// A look judges only the hosts that reported since the last one (the
    /// others' rows are not even read); an engine without memory (a
    /// restarted controller) looks at every host and finishes the rollout.
    async fn a_look_judges_the_hosts_that_reported_and_a_restart_judges_all(db: Store) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = engine(&db, dir.path()).await;
        let web = vec!["web".to_string()];
        let _on = ctx.hub.connect("default", "on", "preprod", &web, "");
        let _off = ctx.hub.connect("default", "off", "preprod", &web, "");
        let (r, _) = roll(&ctx, OfflinePolicy::Wait).await;
        let seen = look(&ctx, &r).await;
        assert!(seen.is_some(), "a judging look is remembered");
        for host in ["on", "off"] {
            report(&ctx.store, host, "2", r.generation).await;
        }
        let reported: HashSet<Reported> =
            [("default".to_string(), "on".to_string(), "web".to_string())].into();
        let seen = advance(&ctx, &r, seen, &reported, true).await.unwrap();
        let (r, hosts) = outcomes(&ctx, r.id).await;
        let of = |name: &str| hosts.iter().find(|(h, _)| h == name).map(|(_, o)| *o);
        assert_eq!(of("on"), Some(HostOutcome::Healthy));
        assert_eq!(
            of("off"),
            Some(HostOutcome::Pending),
            "a host that did not report is not looked at"
        );
        assert!(seen.is_some_and(|s| s.pending.len() == 1 && s.pending.contains_key("off")));
        // A restarted controller remembers nothing: it reads the store whole.
        look(&ctx, &r).await;
        let (r, hosts) = outcomes(&ctx, r.id).await;
        assert!(
            hosts.iter().all(|(_, o)| *o == HostOutcome::Healthy),
            "{hosts:?}"
        );
        assert_eq!(r.state, RolloutState::Succeeded);
    }

    /// A look between reports still notices a pending host whose session
    /// ended (to judge it by the offline rule on every look after), and asks
    /// the hub about every pending host only when some session ended.
    async fn a_look_notices_a_pending_host_that_lost_its_session(db: Store) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = engine(&db, dir.path()).await;
        let web = vec!["web".to_string()];
        let _on = ctx.hub.connect("default", "on", "preprod", &web, "");
        let off = ctx.hub.connect("default", "off", "preprod", &web, "");
        let (r, _) = roll(&ctx, OfflinePolicy::Wait).await;
        let none = HashSet::new();
        let seen = look(&ctx, &r).await.unwrap();
        assert!(seen.absent.is_empty());
        let seen = advance(&ctx, &r, Some(seen), &none, true).await.unwrap();
        assert!(seen.as_ref().is_some_and(|s| s.absent.is_empty()));
        ctx.hub.disconnect("default", "off", off.id);
        let seen = advance(&ctx, &r, seen, &none, true).await.unwrap().unwrap();
        assert_eq!(seen.absent, ["off".to_string()]);
        assert_eq!(
            seen.pending.len(),
            2,
            "heard from a moment ago: not offline yet"
        );
    }

    /// A host whose session ended is judged offline from when it was last
    /// heard from, which heartbeats keep in memory only: before three
    /// heartbeats have passed it is not offline whatever the store says,
    /// after them it is.
    async fn a_host_that_stops_heartbeating_is_judged_offline_from_memory(db: Store) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = engine(&db, dir.path()).await;
        let web = vec!["web".to_string()];
        let off = ctx.hub.connect("default", "off", "preprod", &web, "");
        let now = store::now();
        off.heard(now);
        ctx.hub.disconnect("default", "off", off.id);
        let stored = ctx.store.fleet("default", "web", "preprod").await.unwrap();
        let stored = stored.iter().find(|f| f.host == "off").unwrap().last_seen;
        assert_eq!(stored, 1, "the store was never told of the heartbeat");
        let hb = ctx.heartbeat_secs;
        let later = now + fleet::offline_after(hb) + 1;
        assert!(!ctx.hub.offline("default", "off", stored, now, hb));
        assert!(ctx.hub.offline("default", "off", stored, later, hb));
        // Flushed: the store has it, memory lets it go, the verdicts stay.
        crate::liveness::flush(&ctx).await;
        let stored = ctx.store.fleet("default", "web", "preprod").await.unwrap();
        let stored = stored.iter().find(|f| f.host == "off").unwrap().last_seen;
        assert_eq!(stored, now);
        assert_eq!(ctx.hub.last_heard("default", "off"), None);
        assert!(!ctx.hub.offline("default", "off", stored, now, hb));
        assert!(ctx.hub.offline("default", "off", stored, later, hb));
    }

    /// A host mid-deploy reporting the new digest with the health on file (an
    /// agent restarted mid-activation) is not judged healthy until its deploy
    /// has ended.
    async fn a_host_still_deploying_is_not_judged_healthy(db: Store) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = engine(&db, dir.path()).await;
        let web = vec!["web".to_string()];
        let _on = ctx.hub.connect("default", "on", "preprod", &web, "");
        let _off = ctx.hub.connect("default", "off", "preprod", &web, "");
        let (r, _) = roll(&ctx, OfflinePolicy::Wait).await;
        for host in ["on", "off"] {
            report_in(&ctx.store, host, "2", r.generation, 4).await;
        }
        look(&ctx, &r).await;
        let (r, hosts) = outcomes(&ctx, r.id).await;
        assert!(
            hosts.iter().all(|(_, o)| *o == HostOutcome::Pending),
            "activating is no verdict: {hosts:?}"
        );
        for host in ["on", "off"] {
            report_in(&ctx.store, host, "2", r.generation, 5).await;
        }
        look(&ctx, &r).await;
        let (r, _) = outcomes(&ctx, r.id).await;
        assert_eq!(r.state, RolloutState::Succeeded);
    }

    crate::store::testing::on_both_dialects!(
        a_host_with_an_open_session_is_judged_whatever_its_last_seen,
        a_look_judges_the_hosts_that_reported_and_a_restart_judges_all,
        a_look_notices_a_pending_host_that_lost_its_session,
        a_host_that_stops_heartbeating_is_judged_offline_from_memory,
        a_host_still_deploying_is_not_judged_healthy,
    );
}
