//! `slipctl rollout`: the live view that follows a rollout until it ends
//! (`--wait` turns its outcome into exit code 6 unless it succeeded), and
//! pause / resume / abort.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::{DeployResponse, HostOutcome, RolloutInfo, RolloutRequest, RolloutState};
use serde::{Serialize, Serializer};

use crate::cli::{RolloutCommand, Wait};
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::output::{Format, escape, print_json};

const POLL: Duration = Duration::from_millis(500);

pub async fn run(cmd: RolloutCommand, c: &mut Clients, fmt: Format) -> Result<()> {
    let (target, call) = match cmd {
        RolloutCommand::Status {
            app,
            env,
            once,
            wait,
        } => return status(c, &app, &env, once, wait, fmt).await,
        RolloutCommand::Pause(t) => (t, Call::Pause),
        RolloutCommand::Resume(t) => (t, Call::Resume),
        RolloutCommand::Abort(t) => (t, Call::Abort),
    };
    let req = RolloutRequest {
        tenant: c.tenant.clone(),
        app: target.app,
        environment: target.env,
    };
    let r = match call {
        Call::Pause => c.deployments.pause_rollout(req).await,
        Call::Resume => c.deployments.resume_rollout(req).await,
        Call::Abort => c.deployments.abort_rollout(req).await,
    };
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    print_once(&r, fmt)
}

enum Call {
    Pause,
    Resume,
    Abort,
}

/// `rollout status`: once (`--once`, or `-o json` without `--wait`), or live.
/// With `-o json --wait`, progress goes to stderr and the final state is the JSON.
async fn status(
    c: &mut Clients,
    app: &str,
    env: &str,
    once: bool,
    wait: Wait,
    fmt: Format,
) -> Result<()> {
    if once || (fmt.is_json() && !wait.wait) {
        return print_once(&get(c, app, env).await?, fmt);
    }
    let timeout = wait.wait.then(|| Duration::from_secs(wait.timeout));
    let followed = follow(c, app, env, None, timeout, fmt).await;
    if fmt.is_json() {
        print_json(&to_json(&get(c, app, env).await?))?;
    }
    followed
}

/// After deploy, promote, rollback or retry with `--wait`: follow the rollout it started.
pub async fn follow_change(
    c: &mut Clients,
    r: &DeployResponse,
    wait: Wait,
    fmt: Format,
) -> Result<()> {
    if !wait.wait {
        return Ok(());
    }
    let timeout = Some(Duration::from_secs(wait.timeout));
    follow(c, &r.app, &r.environment, Some(r.rollout_id), timeout, fmt).await
}

/// Follows the latest rollout of app@env (or `id`) live, printing what
/// changes, until it ends. With `wait`, anything but success is an error
/// naming why; `wait` bounds how long.
async fn follow(
    c: &mut Clients,
    app: &str,
    env: &str,
    id: Option<u64>,
    wait: Option<Duration>,
    fmt: Format,
) -> Result<()> {
    let deadline = wait.map(|t| tokio::time::Instant::now() + t);
    let mut seen = Seen::default();
    loop {
        let r = get(c, app, env).await?;
        if let Some(id) = id
            && r.id != id
        {
            let msg = format!(
                "rollout {id} was superseded by rollout {} ({})",
                r.id, r.to_version
            );
            return finish(msg, wait.is_some(), fmt);
        }
        seen.print_changes(&r, fmt);
        if terminal(r.state()) {
            return verdict(&r, env, app, wait.is_some(), fmt);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(timed_out(&r));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the live view printed last, so it prints only what changed.
#[derive(Default)]
struct Seen {
    state: String,
    hosts: BTreeMap<String, (bool, HostOutcome)>,
}

impl Seen {
    fn print_changes(&mut self, r: &RolloutInfo, fmt: Format) {
        let state = format!("{}|{}|{}", r.state, r.step, r.reason);
        if state != self.state {
            self.state = state;
            tell!(fmt, "{}", headline(r));
            if !terminal(r.state()) && r.steps > 0 {
                let step = step_name(r.step, has_canary(r));
                tell!(fmt, "  step {}/{} ({step})", r.step + 1, r.steps);
            }
        }
        for h in &r.hosts {
            let now = (h.admitted, h.outcome());
            if self.hosts.get(&h.host) != Some(&now) && h.admitted {
                let (host, reason) = (escape(&h.host), escape(&h.reason));
                let version = escape(&r.to_version);
                match h.outcome() {
                    HostOutcome::Pending => tell!(fmt, "  {host}: updating to {version}"),
                    HostOutcome::Healthy => tell!(fmt, "  {host}: {version} healthy"),
                    HostOutcome::Offline => {
                        tell!(
                            fmt,
                            "  {host}: offline: skipped, not judged; converges when back"
                        )
                    }
                    other if reason.is_empty() => tell!(fmt, "  {host}: {}", outcome_word(other)),
                    other => tell!(fmt, "  {host}: {}: {reason}", outcome_word(other)),
                }
            }
            self.hosts.insert(h.host.clone(), now);
        }
    }
}

/// The end of a followed rollout: Ok when it succeeded (or nobody waits).
fn verdict(r: &RolloutInfo, env: &str, app: &str, waiting: bool, fmt: Format) -> Result<()> {
    let succeeded = r.state() == RolloutState::Succeeded;
    if r.hosts.is_empty() && succeeded {
        let msg = format!("no host of {env} runs {app} yet; hosts converge when they connect");
        return finish(msg, waiting, fmt);
    }
    if succeeded || !waiting {
        return Ok(());
    }
    Err(CtlError::Rollout(format!(
        "rollout {} of {} {} in {} {}: {}",
        r.id,
        r.app,
        r.to_version,
        r.environment,
        state_word(r.state()),
        r.reason
    )))
}

fn timed_out(r: &RolloutInfo) -> CtlError {
    let waiting: Vec<&str> = r
        .hosts
        .iter()
        .filter(|h| h.outcome() == HostOutcome::Pending)
        .map(|h| h.host.as_str())
        .collect();
    CtlError::Rollout(format!(
        "timed out; rollout {} is {} at step {}/{} (waiting for: {})",
        r.id,
        state_word(r.state()),
        r.step + 1,
        r.steps,
        if waiting.is_empty() {
            "the next step".to_string()
        } else {
            waiting.join(", ")
        }
    ))
}

/// Ends following with `msg`: an error when waiting (CI), a note otherwise.
fn finish(msg: String, waiting: bool, fmt: Format) -> Result<()> {
    if waiting {
        return Err(CtlError::Rollout(msg));
    }
    tell!(fmt, "  {}", escape(&msg));
    Ok(())
}

async fn get(c: &mut Clients, app: &str, env: &str) -> Result<RolloutInfo> {
    let req = RolloutRequest {
        tenant: c.tenant.clone(),
        app: app.into(),
        environment: env.into(),
    };
    let r = c.deployments.rollout_status(req).await;
    Ok(r.map_err(|s| from_status(&c.url, s))?.into_inner())
}

/// The rollout has ended: anything but running or paused (an unknown state
/// too, so following it stops).
pub fn terminal(state: RolloutState) -> bool {
    !matches!(state, RolloutState::Running | RolloutState::Paused)
}

/// The word slipctl prints for a rollout state: the controller's own name for
/// it, "unknown" for a state this slipctl does not know.
pub fn state_word(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Halted => "halted",
        RolloutState::Succeeded => "succeeded",
        RolloutState::Reverted => "reverted",
        RolloutState::Aborted => "aborted",
        RolloutState::Superseded => "superseded",
        RolloutState::Unspecified => "unknown",
    }
}

/// The word slipctl prints for a host's outcome ("unknown" as for states).
pub fn outcome_word(o: HostOutcome) -> &'static str {
    match o {
        HostOutcome::Pending => "pending",
        HostOutcome::Healthy => "healthy",
        HostOutcome::Failed => "failed",
        HostOutcome::Timeout => "timeout",
        HostOutcome::Offline => "offline",
        HostOutcome::Reverted => "reverted",
        HostOutcome::Unspecified => "unknown",
    }
}

/// A rollout state in JSON: its word.
pub fn as_state_word<S: Serializer>(
    s: &RolloutState,
    ser: S,
) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(state_word(*s))
}

fn as_outcome_word<S: Serializer>(o: &HostOutcome, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(outcome_word(*o))
}

fn has_canary(r: &RolloutInfo) -> bool {
    r.strategy.as_ref().and_then(|s| s.canary).unwrap_or(0) > 0
}

fn step_name(step: u32, canary: bool) -> String {
    match (step, canary) {
        (0, true) => "canary".into(),
        (s, true) => format!("batch {s}"),
        (s, false) => format!("batch {}", s + 1),
    }
}

/// The state as slipctl says it: a success that skipped offline hosts says
/// how many ("succeeded with 2 skipped"), never a plain success.
fn state_text(r: &RolloutInfo) -> String {
    let skipped = skipped(r);
    match r.state() {
        RolloutState::Succeeded if skipped > 0 => format!("succeeded with {skipped} skipped"),
        s => state_word(s).to_string(),
    }
}

/// Hosts the rollout skipped as offline, unjudged.
fn skipped(r: &RolloutInfo) -> usize {
    r.hosts
        .iter()
        .filter(|h| h.outcome() == HostOutcome::Offline)
        .count()
}

fn headline(r: &RolloutInfo) -> String {
    let from = if r.from_version.is_empty() {
        "(none)"
    } else {
        &r.from_version
    };
    let reason = if r.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", r.reason)
    };
    escape(&format!(
        "rollout {} of {} in {}: {from} -> {} — {}{reason}",
        r.id,
        r.app,
        r.environment,
        r.to_version,
        state_text(r),
    ))
}

/// Prints a rollout once: headline, then its hosts step by step.
fn print_once(r: &RolloutInfo, fmt: Format) -> Result<()> {
    if fmt.is_json() {
        return print_json(&to_json(r));
    }
    say!("{}", headline(r));
    let mut steps: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for h in &r.hosts {
        let what = if !h.admitted {
            "waiting".to_string()
        } else if h.reason.is_empty() {
            outcome_word(h.outcome()).to_string()
        } else {
            format!("{} ({})", outcome_word(h.outcome()), h.reason)
        };
        steps
            .entry(h.step)
            .or_default()
            .push(escape(&format!("{}: {what}", h.host)));
    }
    for (step, hosts) in steps {
        say!("  {}: {}", step_name(step, has_canary(r)), hosts.join(", "));
    }
    Ok(())
}

#[derive(Serialize)]
struct HostJson<'a> {
    host: &'a str,
    step: u32,
    admitted: bool,
    #[serde(serialize_with = "as_outcome_word")]
    outcome: HostOutcome,
    reason: &'a str,
}

#[derive(Serialize)]
struct RolloutJson<'a> {
    id: u64,
    app: &'a str,
    environment: &'a str,
    from_version: &'a str,
    to_version: &'a str,
    release_digest: &'a str,
    #[serde(serialize_with = "as_state_word")]
    state: RolloutState,
    step: u32,
    steps: u32,
    reason: &'a str,
    /// Hosts skipped as offline, not judged (a success with skipped hosts is
    /// not a clean one).
    skipped: usize,
    created_by: &'a str,
    hosts: Vec<HostJson<'a>>,
}

fn to_json(r: &RolloutInfo) -> RolloutJson<'_> {
    RolloutJson {
        id: r.id,
        app: &r.app,
        environment: &r.environment,
        from_version: &r.from_version,
        to_version: &r.to_version,
        release_digest: &r.manifest_digest,
        state: r.state(),
        step: r.step,
        steps: r.steps,
        reason: &r.reason,
        skipped: skipped(r),
        created_by: &r.created_by,
        hosts: r
            .hosts
            .iter()
            .map(|h| HostJson {
                host: &h.host,
                step: h.step,
                admitted: h.admitted,
                outcome: h.outcome(),
                reason: &h.reason,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

    fn info(state: RolloutState, reason: &str) -> RolloutInfo {
        RolloutInfo {
            id: 7,
            app: "web".into(),
            environment: "prod".into(),
            from_version: "1.0.0".into(),
            to_version: "1.1.0".into(),
            state: state.into(),
            reason: reason.into(),
            hosts: vec![proto::v1::RolloutHost {
                host: "prod-1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn headlines_name_the_rollout_and_escape_what_hosts_reported() {
        let cases = [
            (
                info(RolloutState::Running, ""),
                "rollout 7 of web in prod: 1.0.0 -> 1.1.0 — running",
            ),
            (
                info(
                    RolloutState::Halted,
                    "canary failed: prod-1: \u{1b}[2Jgone\nforged",
                ),
                "rollout 7 of web in prod: 1.0.0 -> 1.1.0 — halted: canary failed: prod-1: \\u{1b}[2Jgone\\nforged",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(headline(&r), want);
        }
    }

    #[test]
    fn steps_are_named_after_the_canary() {
        let names: Vec<String> = [(0, true), (1, true), (0, false), (2, false)]
            .into_iter()
            .map(|(s, c)| step_name(s, c))
            .collect();
        assert_eq!(names, ["canary", "batch 1", "batch 1", "batch 3"]);
    }

    #[test]
    fn only_a_success_ends_a_wait_with_exit_0() {
        let f = Format::Table;
        let ok = |s| verdict(&info(s, "x"), "prod", "web", true, f);
        assert!(ok(RolloutState::Succeeded).is_ok());
        let not_waiting = verdict(&info(RolloutState::Halted, "x"), "prod", "web", false, f);
        assert!(not_waiting.is_ok());
        for (state, word) in [
            (RolloutState::Halted, "halted"),
            (RolloutState::Reverted, "reverted"),
            (RolloutState::Aborted, "aborted"),
            (RolloutState::Superseded, "superseded"),
            (RolloutState::Unspecified, "unknown"),
        ] {
            let e = verdict(&info(state, "why"), "prod", "web", true, f).unwrap_err();
            assert_eq!(e.exit_code(), exit::ROLLOUT_FAILED, "{word}");
            assert_eq!(
                e.to_string(),
                format!("rollout 7 of web 1.1.0 in prod {word}: why")
            );
        }
        let e = timed_out(&info(RolloutState::Paused, ""));
        assert_eq!(e.exit_code(), exit::ROLLOUT_FAILED);
    }

    /// The words slipctl printed when states and outcomes were strings on the
    /// wire: text, JSON and errors keep them. A value this slipctl does not
    /// know (a newer controller's) prints "unknown".
    #[test]
    fn every_state_and_outcome_prints_its_word() {
        let states = [
            (RolloutState::Unspecified, "unknown"),
            (RolloutState::Running, "running"),
            (RolloutState::Paused, "paused"),
            (RolloutState::Halted, "halted"),
            (RolloutState::Succeeded, "succeeded"),
            (RolloutState::Reverted, "reverted"),
            (RolloutState::Aborted, "aborted"),
            (RolloutState::Superseded, "superseded"),
        ];
        let known = (0..32).filter(|v| RolloutState::try_from(*v).is_ok());
        assert_eq!(known.count(), states.len(), "a state without a word here");
        for (state, word) in states {
            let r = info(state, "");
            assert!(headline(&r).ends_with(&format!(" — {word}")), "{word}");
            assert_eq!(serde_json::to_value(to_json(&r)).unwrap()["state"], word);
        }
        let from_the_future = RolloutInfo {
            state: 99,
            ..info(RolloutState::Running, "")
        };
        assert!(headline(&from_the_future).ends_with(" — unknown"));
        assert!(terminal(from_the_future.state()));

        let outcomes = [
            (HostOutcome::Unspecified, "unknown"),
            (HostOutcome::Pending, "pending"),
            (HostOutcome::Healthy, "healthy"),
            (HostOutcome::Failed, "failed"),
            (HostOutcome::Timeout, "timeout"),
            (HostOutcome::Offline, "offline"),
            (HostOutcome::Reverted, "reverted"),
        ];
        let known = (0..32).filter(|v| HostOutcome::try_from(*v).is_ok());
        assert_eq!(
            known.count(),
            outcomes.len(),
            "an outcome without a word here"
        );
        let wire = outcomes.map(|(o, word)| (o as i32, word));
        for (outcome, word) in wire.into_iter().chain([(99, "unknown")]) {
            let mut r = info(RolloutState::Running, "");
            r.hosts[0].outcome = outcome;
            let json = serde_json::to_value(to_json(&r)).unwrap();
            assert_eq!(json["hosts"][0]["outcome"], word);
        }
    }
}
