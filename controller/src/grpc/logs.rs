//! `Deployments.Logs`: an app's output from the connected hosts that run it
//! (`crate::logs`). The query is checked here before any host hears of it;
//! each host's answer is forwarded as it comes, its lines named by host.

use std::pin::Pin;

use artifact::{NameKind, validate_name};
use proto::v1::{LogLine, LogLines, LogsRequest};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{SharedCtx, reader};
use crate::logs::{
    ANSWER_TIMEOUT, Asked, HostLog, LogAsk, MAX_HOSTS, MAX_LINES, MAX_PATTERN_BYTES, MAX_SINCE,
};

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLines, Status>> + Send>>;

/// The query as asked of every host, checked.
fn checked(r: &LogsRequest) -> Result<LogAsk, Status> {
    let bad = |m: String| Status::invalid_argument(m);
    validate_name(NameKind::App, &r.app).map_err(|e| bad(e.to_string()))?;
    validate_name(NameKind::Environment, &r.environment).map_err(|e| bad(e.to_string()))?;
    if !r.host.is_empty() {
        validate_name(NameKind::Host, &r.host).map_err(|e| bad(format!("--host: {e}")))?;
    }
    if !r.process.is_empty() {
        validate_name(NameKind::App, &r.process).map_err(|e| bad(format!("process: {e}")))?;
    }
    if r.lines > MAX_LINES {
        return Err(bad(format!("-n {}: at most {MAX_LINES} lines", r.lines)));
    }
    if r.since_secs > MAX_SINCE.as_secs() {
        return Err(bad(format!(
            "--since: at most {} days",
            MAX_SINCE.as_secs() / 86_400
        )));
    }
    if r.grep.len() > MAX_PATTERN_BYTES {
        return Err(bad(format!("--grep: at most {MAX_PATTERN_BYTES} bytes")));
    }
    if !r.grep.is_empty() {
        regex::RegexBuilder::new(&r.grep)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                let why = e.to_string();
                bad(format!(
                    "--grep: {}",
                    why.lines().last().unwrap_or("").trim()
                ))
            })?;
    }
    Ok(LogAsk {
        id: 0,
        app: r.app.clone(),
        process: r.process.clone(),
        lines: r.lines,
        follow: r.follow,
        since_secs: r.since_secs,
        grep: r.grep.clone(),
    })
}

pub async fn logs(
    ctx: &SharedCtx,
    req: Request<LogsRequest>,
) -> Result<Response<LogStream>, Status> {
    let who = reader(ctx, &req).await?;
    let r = req.into_inner();
    let ask = checked(&r)?;
    let (tenant, env, app) = (&who.tenant, &r.environment, &r.app);
    let mut hosts = ctx.hub.hosts_running(tenant, env, app);
    if !r.host.is_empty() {
        if !hosts.contains(&r.host) {
            return Err(Status::failed_precondition(
                if ctx.hub.connected(tenant, &r.host) {
                    format!("host {} does not run {app} in {env}", r.host)
                } else {
                    format!("host {} is not connected", r.host)
                },
            ));
        }
        hosts = vec![r.host.clone()];
    }
    if hosts.is_empty() {
        return Err(Status::failed_precondition(format!(
            "no connected host of {env} runs {app}"
        )));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(Status::invalid_argument(format!(
            "{} hosts run {app} in {env}: name one with --host (at most {MAX_HOSTS} a query)",
            hosts.len()
        )));
    }
    // Room for every host's error line before anyone reads.
    let (out, rx) = mpsc::channel::<Result<LogLines, Status>>(16 + hosts.len());
    for host in hosts {
        let (asked, answers) = ctx
            .logs
            .open(tenant, &host)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let ask = LogAsk {
            id: asked.id,
            ..ask.clone()
        };
        if !ctx.hub.ask_logs(tenant, &host, ask) {
            let _ = out.try_send(Ok(error_line(&host, "not connected, or busy answering")));
            continue;
        }
        tokio::spawn(forward(host, asked, answers, out.clone()));
    }
    tracing::info!(tenant = %tenant, app = %app, env = %env, follow = r.follow, actor = %who.actor(), "logs asked");
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

fn error_line(host: &str, error: &str) -> LogLines {
    LogLines {
        lines: vec![LogLine {
            host: host.to_string(),
            text: String::new(),
            error: error.to_string(),
        }],
    }
}

/// Forwards one host's answer until it ends, the host does not open it in
/// time, or whoever asked goes away (then `asked` drops, and the host's
/// `SendLogs` call is answered, which stops the host).
async fn forward(
    host: String,
    asked: Asked,
    mut answers: mpsc::Receiver<HostLog>,
    out: mpsc::Sender<Result<LogLines, Status>>,
) {
    // The host opens its answer in time, or is said not to answer.
    let first = tokio::select! {
        _ = out.closed() => return,
        first = tokio::time::timeout(ANSWER_TIMEOUT, answers.recv()) => first,
    };
    let Ok(mut next) = first else {
        let _ = out
            .send(Ok(error_line(&host, "did not answer within 10s")))
            .await;
        return;
    };
    loop {
        let msg = match next {
            None => break,
            Some(HostLog::Lines(lines)) => LogLines {
                lines: lines
                    .into_iter()
                    .map(|text| LogLine {
                        host: host.clone(),
                        text,
                        error: String::new(),
                    })
                    .collect(),
            },
            Some(HostLog::Error(e)) => error_line(&host, &e),
        };
        // (The host's first chunk, which only opens its answer, is empty.)
        if !msg.lines.is_empty() && out.send(Ok(msg)).await.is_err() {
            break;
        }
        next = tokio::select! {
            _ = out.closed() => break,
            next = answers.recv() => next,
        };
    }
    drop(asked);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> LogsRequest {
        LogsRequest {
            app: "web".into(),
            environment: "prod".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_query_over_its_bounds_is_refused_before_any_host_hears_of_it() {
        assert!(checked(&req()).is_ok());
        for (r, want) in [
            (
                LogsRequest {
                    lines: MAX_LINES + 1,
                    ..req()
                },
                "-n 10001: at most 10000 lines",
            ),
            (
                LogsRequest {
                    grep: "(".into(),
                    ..req()
                },
                "--grep: ",
            ),
            (
                LogsRequest {
                    grep: "x".repeat(MAX_PATTERN_BYTES + 1),
                    ..req()
                },
                "--grep: at most",
            ),
            (
                LogsRequest {
                    since_secs: MAX_SINCE.as_secs() + 1,
                    ..req()
                },
                "--since: at most 90 days",
            ),
            (
                LogsRequest {
                    process: "../x".into(),
                    ..req()
                },
                "process: ",
            ),
        ] {
            let e = checked(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(want), "{}", e.message());
        }
    }
}
