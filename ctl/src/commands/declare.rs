//! `slipctl apps add|set|remove|show`: an app's host settings declared on the
//! controller, and following them to the hosts: every connected host the
//! app is declared on takes them (or refuses them, and then the change is
//! undone everywhere), then runs the environment's release of the app healthy.

use std::time::{Duration, Instant};

use artifact::settings::AppSettings;
use proto::v1::{
    AppHostState, AppHostsRequest, AppHostsResponse, DeployState, Health, RemoveAppRequest,
    SetAppRequest, SetAppResponse, SetMode,
};
use serde::Serialize;

use super::status::{health_name, state_name};
use crate::cli::{AppSettingsArgs, AppTarget};
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::output::{Format, Table, dash, escape, print_json};
use crate::values::{ActivationMode, Backend};

const POLL: Duration = Duration::from_millis(250);

/// The settings flags as a JSON merge patch (`unset` keys become null).
fn patch(s: &AppSettingsArgs, unset: &[String]) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut p = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        p.insert(k.to_string(), v);
    };
    if let Some(port) = s.port {
        put("port", json!(port));
    }
    if let Some(b) = s.backend {
        put(
            "service",
            json!(match b {
                Backend::Supervise => "supervise",
                Backend::Systemd => "systemd",
            }),
        );
    }
    if !s.env_files.is_empty() {
        put("env_files", json!(s.env_files));
    }
    if let Some(u) = &s.user {
        put("user", json!(u));
    }
    if let Some(k) = s.keep {
        put("keep_releases", json!(k));
    }
    if let Some(a) = s.activation {
        put(
            "activation",
            json!(match a {
                ActivationMode::StopStart => "stop-start",
                ActivationMode::Proxy => "proxy",
                ActivationMode::Socket => "socket",
            }),
        );
    }
    if let Some(d) = s.drain_timeout {
        put("drain_timeout_secs", json!(d));
    }
    if let Some(g) = s.stop_grace {
        put("stop_grace_secs", json!(g));
    }
    for flag in unset {
        let key = crate::values::setting_json_key(flag);
        if !p.contains_key(key) {
            p.insert(key.to_string(), serde_json::Value::Null);
        }
    }
    p
}

/// Settings JSON as `key=value` pairs for people.
fn describe(json: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(m) if m.is_empty() => "(defaults)".into(),
        Ok(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                serde_json::Value::Array(a) => format!(
                    "{k}={}",
                    a.iter()
                        .map(|x| x
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => json.to_string(),
    }
}

pub struct Declare {
    pub app: String,
    pub env: String,
    pub target: AppTarget,
    pub settings: AppSettingsArgs,
    pub unset: Vec<String>,
    pub mode: SetMode,
}

#[derive(Serialize)]
struct HostJson {
    host: String,
    connected: bool,
    took: bool,
    refused: String,
    running_version: String,
    state: String,
    health: String,
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    app: &'a str,
    environment: &'a str,
    host: &'a str,
    revision: u64,
    settings: serde_json::Value,
    previous: serde_json::Value,
    desired_version: String,
    hosts: Vec<HostJson>,
    undone: bool,
}

fn host_json(h: &AppHostState, revision: u64) -> HostJson {
    HostJson {
        host: h.host.clone(),
        connected: h.connected,
        took: h.apps_revision >= revision && h.refused.is_empty(),
        refused: h.refused.clone(),
        running_version: h.running_version.clone(),
        state: state_name(h.state),
        health: health_name(h.health),
    }
}

fn json_or_null(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

/// `apps add` / `apps set`.
pub async fn set(d: Declare, c: &mut Clients, fmt: Format) -> Result<()> {
    let p = patch(&d.settings, &d.unset);
    if d.mode == SetMode::Update && p.is_empty() {
        return Err(CtlError::Usage(
            "nothing to change: give a setting (--port, --env-file, ...) or --unset KEY".into(),
        ));
    }
    if d.mode == SetMode::Add {
        // Refused here, before anything is sent, when the values are wrong.
        let s: AppSettings = serde_json::from_value(serde_json::Value::Object(p.clone()))
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        if d.target.host.is_none() {
            s.check().map_err(|e| CtlError::Usage(e.to_string()))?;
        }
    }
    let host = d.target.host.clone().unwrap_or_default();
    let req = SetAppRequest {
        tenant: c.tenant.clone(),
        app: d.app.clone(),
        environment: d.env.clone(),
        host: host.clone(),
        settings: serde_json::Value::Object(p).to_string(),
        mode: d.mode as i32,
    };
    let r = c.deployments.set_app(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    finish(c, fmt, &d.app, &d.env, &host, &d.target, r, Some(d.mode)).await
}

/// `apps remove`.
pub async fn remove(
    app: String,
    env: String,
    target: AppTarget,
    c: &mut Clients,
    fmt: Format,
) -> Result<()> {
    let host = target.host.clone().unwrap_or_default();
    let req = RemoveAppRequest {
        tenant: c.tenant.clone(),
        app: app.clone(),
        environment: env.clone(),
        host: host.clone(),
    };
    let r = c.deployments.remove_app(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    finish(c, fmt, &app, &env, &host, &target, r, None).await
}

async fn app_hosts(c: &mut Clients, app: &str, env: &str) -> Result<AppHostsResponse> {
    let req = AppHostsRequest {
        tenant: c.tenant.clone(),
        app: app.to_string(),
        environment: env.to_string(),
    };
    let r = c.deployments.app_hosts(req).await;
    Ok(r.map_err(|s| from_status(&c.url, s))?.into_inner())
}

/// How following a change ended.
enum Followed {
    Done(AppHostsResponse),
    Refused(AppHostsResponse),
    Failed(AppHostsResponse, String),
    TimedOut(AppHostsResponse, String),
}

/// Follows `revision` to the hosts: every connected host it concerns takes
/// it (or one refuses it), then, for a declared app with a desired release,
/// runs that release healthy (or fails it).
async fn follow(
    c: &mut Clients,
    app: &str,
    env: &str,
    only: &str,
    revision: u64,
    removing: bool,
    timeout: Duration,
) -> Result<Followed> {
    let started = Instant::now();
    // The hosts connected when the change was made: one that takes it and
    // reconnects (a declaration restarts the agent's session) is still
    // waited for.
    let mut watched: Option<std::collections::HashSet<String>> = None;
    loop {
        let r = app_hosts(c, app, env).await?;
        let watched = watched.get_or_insert_with(|| {
            r.hosts
                .iter()
                .filter(|h| h.connected)
                .map(|h| h.host.clone())
                .collect()
        });
        let concerned: Vec<&AppHostState> = r
            .hosts
            .iter()
            .filter(|h| watched.contains(&h.host) && (only.is_empty() || h.host == only))
            .filter(|h| removing || h.declared)
            .collect();
        // Removing the app: a host is done once it stopped it and said so
        // (its next hello no longer lists it).
        let pending: Vec<&str> = concerned
            .iter()
            .filter(|h| {
                h.apps_revision < revision
                    || (removing && only.is_empty() && !h.running_version.is_empty())
            })
            .map(|h| h.host.as_str())
            .collect();
        let refused = concerned
            .iter()
            .any(|h| h.apps_revision >= revision && !h.refused.is_empty());
        // A refusal is reported once every host answered (or at the
        // timeout), so it names every host's reason, not the quickest one's.
        let waiting_for = if refused && (pending.is_empty() || started.elapsed() >= timeout) {
            return Ok(Followed::Refused(r));
        } else if !pending.is_empty() {
            format!("hosts to take the change: {}", pending.join(", "))
        } else if removing || r.desired_version.is_empty() {
            return Ok(Followed::Done(r));
        } else {
            let failed: Vec<String> = concerned
                .iter()
                .filter(|h| {
                    matches!(
                        DeployState::try_from(h.state),
                        Ok(DeployState::Failed | DeployState::RolledBack)
                    )
                })
                .map(|h| format!("{}: {}", h.host, dash(&h.health_reason)))
                .collect();
            if !failed.is_empty() {
                let why = format!(
                    "{} did not start on {}",
                    r.desired_version,
                    failed.join("; ")
                );
                return Ok(Followed::Failed(r, why));
            }
            let unready: Vec<&str> = concerned
                .iter()
                .filter(|h| {
                    h.running_version != r.desired_version || h.health != Health::Healthy as i32
                })
                .map(|h| h.host.as_str())
                .collect();
            if unready.is_empty() {
                return Ok(Followed::Done(r));
            }
            format!(
                "{app} {} healthy on: {}",
                r.desired_version,
                unready.join(", ")
            )
        };
        if started.elapsed() >= timeout {
            return Ok(Followed::TimedOut(r, waiting_for));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    c: &mut Clients,
    fmt: Format,
    app: &str,
    env: &str,
    host: &str,
    target: &AppTarget,
    r: SetAppResponse,
    mode: Option<SetMode>,
) -> Result<()> {
    let removing = mode.is_none();
    let what = if host.is_empty() {
        format!("{app} in {env}")
    } else {
        format!("{app} on {host}")
    };
    if target.no_wait {
        if fmt.is_json() {
            return print_json(&ChangeJson {
                app,
                environment: env,
                host,
                revision: r.revision,
                settings: json_or_null(&r.settings),
                previous: json_or_null(&r.previous),
                desired_version: String::new(),
                hosts: Vec::new(),
                undone: false,
            });
        }
        say!(
            "{} (revision {}); not waiting for hosts",
            headline(&what, &r, removing),
            r.revision
        );
        return Ok(());
    }
    let timeout = Duration::from_secs(target.timeout);
    let followed = follow(c, app, env, host, r.revision, removing, timeout).await?;
    let (state, outcome) = match followed {
        Followed::Done(s) => (s, Ok(())),
        Followed::Refused(s) => {
            let why: Vec<String> = s
                .hosts
                .iter()
                .filter(|h| h.apps_revision >= r.revision && !h.refused.is_empty())
                .map(|h| format!("{}: {}", h.host, h.refused))
                .collect();
            // Undo: put back what was there, so no host is left half-changed.
            let undo = match mode {
                Some(SetMode::Add) => {
                    let req = RemoveAppRequest {
                        tenant: c.tenant.clone(),
                        app: app.to_string(),
                        environment: env.to_string(),
                        host: host.to_string(),
                    };
                    c.deployments.remove_app(req).await.map(|_| ())
                }
                _ if r.previous.is_empty() => Ok(()),
                _ => {
                    let req = SetAppRequest {
                        tenant: c.tenant.clone(),
                        app: app.to_string(),
                        environment: env.to_string(),
                        host: host.to_string(),
                        settings: r.previous.clone(),
                        mode: SetMode::Replace as i32,
                    };
                    c.deployments.set_app(req).await.map(|_| ())
                }
            };
            let undone = match undo {
                Ok(()) => "; the change was undone".to_string(),
                Err(s) => format!("; undoing it failed too: {}", s.message()),
            };
            (
                s,
                Err(CtlError::Refused(format!(
                    "{what}: refused by {}{undone}",
                    escape(&why.join("; "))
                ))),
            )
        }
        Followed::Failed(s, why) => (s, Err(CtlError::Rollout(escape(&why)))),
        Followed::TimedOut(s, waiting) => (
            s,
            Err(CtlError::Rollout(format!(
                "timed out after {}s waiting for {}",
                target.timeout,
                escape(&waiting)
            ))),
        ),
    };
    let hosts: Vec<&AppHostState> = state
        .hosts
        .iter()
        .filter(|h| host.is_empty() || h.host == host)
        .filter(|h| removing || h.declared)
        .collect();
    if fmt.is_json() {
        print_json(&ChangeJson {
            app,
            environment: env,
            host,
            revision: r.revision,
            settings: json_or_null(&r.settings),
            previous: json_or_null(&r.previous),
            desired_version: state.desired_version.clone(),
            hosts: hosts.iter().map(|h| host_json(h, r.revision)).collect(),
            undone: matches!(outcome, Err(CtlError::Refused(_))),
        })?;
        return outcome;
    }
    if outcome.is_ok() {
        say!("{}", headline(&what, &r, removing));
    }
    host_table(&hosts, r.revision);
    let offline: Vec<&str> = hosts
        .iter()
        .filter(|h| !h.connected)
        .map(|h| h.host.as_str())
        .collect();
    if !offline.is_empty() {
        say!(
            "offline (they take it when they reconnect): {}",
            escape(&offline.join(", "))
        );
    }
    outcome
}

fn headline(what: &str, r: &SetAppResponse, removing: bool) -> String {
    if removing {
        return format!("removed {what}");
    }
    format!("{what}: {}", escape(&describe(&r.settings)))
}

fn host_table(hosts: &[&AppHostState], revision: u64) {
    let mut t = Table::new(&["HOST", "TOOK", "RUNNING", "STATE", "HEALTH", "NOTE"]);
    for h in hosts {
        let took = if !h.connected {
            "offline"
        } else if h.apps_revision < revision {
            "pending"
        } else if !h.refused.is_empty() {
            "refused"
        } else {
            "yes"
        };
        let note = if h.refused.is_empty() {
            h.health_reason.clone()
        } else {
            h.refused.clone()
        };
        t.row([
            h.host.clone(),
            took.to_string(),
            dash(&h.running_version),
            state_name(h.state),
            health_name(h.health),
            dash(&note),
        ]);
    }
    t.print();
}

/// `apps show`.
pub async fn show(app: String, env: String, c: &mut Clients, fmt: Format) -> Result<()> {
    let r = app_hosts(c, &app, &env).await?;
    if r.settings.is_empty() {
        return Err(CtlError::NotFound(format!(
            "app {app} is not declared in {env}: `slipctl apps add {app} --env {env}`"
        )));
    }
    if fmt.is_json() {
        #[derive(Serialize)]
        struct ShowJson<'a> {
            app: &'a str,
            environment: &'a str,
            revision: u64,
            settings: serde_json::Value,
            overrides: std::collections::BTreeMap<String, serde_json::Value>,
            desired_version: &'a str,
            hosts: Vec<HostJson>,
        }
        return print_json(&ShowJson {
            app: &app,
            environment: &env,
            revision: r.revision,
            settings: json_or_null(&r.settings),
            overrides: r
                .overrides
                .iter()
                .map(|(h, s)| (h.clone(), json_or_null(s)))
                .collect(),
            desired_version: &r.desired_version,
            hosts: r
                .hosts
                .iter()
                .filter(|h| h.declared)
                .map(|h| host_json(h, r.revision))
                .collect(),
        });
    }
    say!("{app} in {env}: {}", escape(&describe(&r.settings)));
    let mut overrides: Vec<_> = r.overrides.iter().collect();
    overrides.sort();
    for (h, s) in overrides {
        say!("  on {h}: {}", escape(&describe(s)));
    }
    say!("desired release: {}", dash(&r.desired_version));
    let hosts: Vec<&AppHostState> = r.hosts.iter().filter(|h| h.declared).collect();
    host_table(&hosts, r.revision);
    Ok(())
}
