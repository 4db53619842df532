//! `Deployments.Logs`: an app's output from the connected hosts that run it
//! (`crate::logs::ask`), each host's answer forwarded as it comes, its lines
//! named by host.

use std::pin::Pin;

use proto::v1::{LogLine, LogLines, LogsRequest};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{SharedCtx, reader};
use crate::logs::{Answer, LogAsk, LogRequest};

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLines, Status>> + Send>>;

fn request(r: LogsRequest) -> LogRequest {
    LogRequest {
        app: r.app,
        environment: r.environment,
        host: r.host,
        ask: LogAsk {
            process: r.process,
            lines: r.lines,
            follow: r.follow,
            since_secs: r.since_secs,
            grep: r.grep,
            ..LogAsk::default()
        },
    }
}

pub async fn logs(
    ctx: &SharedCtx,
    req: Request<LogsRequest>,
) -> Result<Response<LogStream>, Status> {
    let who = reader(ctx, &req).await?;
    let r = req.into_inner();
    if r.environment.is_empty() {
        return Err(Status::invalid_argument("--env is required"));
    }
    let r = request(r);
    let (_, answers) = crate::logs::ask(ctx, &who.tenant, &r)?;
    tracing::info!(tenant = %who.tenant, app = %r.app, env = %r.environment, follow = r.ask.follow, actor = %who.actor(), "logs asked");
    let stream = ReceiverStream::new(answers).filter_map(|a| match a {
        Answer::Lines { host, lines, .. } => Some(Ok(LogLines {
            lines: lines
                .into_iter()
                .map(|text| LogLine {
                    host: host.clone(),
                    text,
                    error: String::new(),
                })
                .collect(),
        })),
        Answer::Failed { host, error } => Some(Ok(LogLines {
            lines: vec![LogLine {
                host,
                text: String::new(),
                error,
            }],
        })),
        Answer::Done { .. } => None,
    });
    Ok(Response::new(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{MAX_LINES, MAX_PATTERN_BYTES, MAX_SINCE};

    fn req() -> LogsRequest {
        LogsRequest {
            app: "web".into(),
            environment: "prod".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_query_over_its_bounds_is_refused_before_any_host_hears_of_it() {
        assert!(request(req()).check().is_ok());
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
            let e = request(r).check().unwrap_err();
            assert!(
                matches!(e, crate::error::ControllerError::InvalidArgument(_)),
                "{e}"
            );
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }
}
