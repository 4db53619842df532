//! `slipctl logs APP --env E`: an app's output from the hosts that run it, as
//! each host sends it (`Deployments.Logs`), every line named by its host. With
//! `-o json`, one JSON object a line (`{"host", "line"}` or `{"host",
//! "error"}`), so a script can read while it follows.

use proto::v1::LogsRequest;
use serde::Serialize;

use crate::cli::LogsArgs;
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::output::{Format, escape};

#[derive(Serialize)]
struct LineJson<'a> {
    host: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    line: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
}

pub async fn run(a: LogsArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = LogsRequest {
        tenant: c.tenant.clone(),
        app: a.app,
        environment: a.env,
        host: a.host.unwrap_or_default(),
        process: a.process.unwrap_or_default(),
        lines: a.lines,
        follow: a.follow,
        since_secs: a.since.map_or(0, |d| d.as_secs().max(1)),
        grep: a.grep.unwrap_or_default(),
    };
    let mut stream = c
        .deployments
        .logs(req)
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let mut failed: Vec<String> = Vec::new();
    while let Some(batch) = stream.message().await.map_err(|s| from_status(&c.url, s))? {
        for l in &batch.lines {
            if fmt.is_json() {
                let text = serde_json::to_string(&LineJson {
                    host: &l.host,
                    line: &l.text,
                    error: &l.error,
                })
                .map_err(|e| CtlError::Json(e.to_string()))?;
                say!("{text}");
            } else if l.error.is_empty() {
                say!("{} {}", escape(&l.host), escape(&l.text));
            } else {
                eprintln!("{}: {}", escape(&l.host), escape(&l.error));
            }
            if !l.error.is_empty() {
                failed.push(l.host.clone());
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(CtlError::Failed(format!(
        "{} could not answer: {}",
        if failed.len() == 1 {
            "1 host"
        } else {
            "some hosts"
        },
        escape(&failed.join(", "))
    )))
}
