//! `slipctl drift ack`: accept the hand-made changes hosts report, so they stop
//! blocking promotion until they change.

use proto::v1::AckDriftRequest;
use serde::Serialize;

use crate::cli::DriftCommand;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, escape, print_json};

#[derive(Serialize)]
struct AckJson<'a> {
    app: &'a str,
    environment: &'a str,
    hosts: &'a [String],
}

pub async fn run(cmd: DriftCommand, c: &mut Clients, fmt: Format) -> Result<()> {
    let DriftCommand::Ack { app, env, host } = cmd;
    let req = AckDriftRequest {
        tenant: c.tenant.clone(),
        app: app.clone(),
        environment: env.clone(),
        host: host.unwrap_or_default(),
    };
    let r = c.deployments.ack_drift(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&AckJson {
            app: &app,
            environment: &env,
            hosts: &r.hosts,
        });
    }
    say!(
        "drift of {app} in {env} acknowledged on {}; it no longer blocks promotion until it changes",
        escape(&r.hosts.join(", "))
    );
    Ok(())
}
