//! The agent's opt-in metrics (`metrics_listen` in agent.toml, loopback
//! only): deploys and rollbacks by outcome, seconds per deploy step,
//! health-check latency, drift events, in Prometheus text format over plain
//! HTTP. Counted where the deploy log is written (`state::log_step`: every
//! step of every deploy passes there) and where a probe runs (`health`).
//! Labels are bounded sets (a step name this file does not know counts as
//! `other`); no app or host name is a label (one agent, few apps: scrape
//! per host).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Steps named as labels; any other counts as `other`.
const STEPS: &[&str] = &[
    "verify",
    "fetch",
    "unpack",
    "prepare",
    "migrations",
    "flip",
    "start",
    "health",
    "env",
    "traffic",
    "restart",
    "deploy",
    "rollback",
    "local_rollback",
    "drift",
    "prune",
    "adopt",
    "proxy",
];

/// The steps of a deploy, timed from the previous one (or the deploy's start).
const TIMED: &[&str] = &[
    "verify",
    "fetch",
    "unpack",
    "prepare",
    "migrations",
    "flip",
    "start",
    "health",
    "env",
    "traffic",
    "deploy",
];

const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct Metrics {
    registry: Registry,
    deploys: IntCounterVec,
    rollbacks: IntCounterVec,
    steps: IntCounterVec,
    step_seconds: HistogramVec,
    health_seconds: HistogramVec,
    drift: IntCounter,
    fetched: IntCounterVec,
    /// When each app's current step began (its deploy's start, then each step).
    marks: Mutex<HashMap<String, Instant>>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn step_label(step: &str) -> &str {
    STEPS
        .iter()
        .find(|s| **s == step)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let drift = IntCounter::new(
            "slipway_agent_drift_events_total",
            "Times a running release was found changed on disk.",
        )
        .expect("valid metric");
        registry.register(Box::new(drift.clone())).expect("unique");
        Metrics {
            deploys: counters(
                "slipway_agent_deploys_total",
                "Deploys by outcome: healthy, or failed (then rolled back or refused).",
                &["outcome"],
            ),
            rollbacks: counters(
                "slipway_agent_rollbacks_total",
                "Rollbacks by kind (automatic after a failed deploy, local by an operator) and outcome.",
                &["kind", "outcome"],
            ),
            steps: counters(
                "slipway_agent_deploy_steps_total",
                "Deploy log steps by step and outcome.",
                &["step", "outcome"],
            ),
            step_seconds: histograms(
                "slipway_agent_deploy_step_seconds",
                "Seconds a deploy step took (from the previous step, or the deploy's start).",
                &["step"],
            ),
            health_seconds: histograms(
                "slipway_agent_health_check_seconds",
                "Seconds one readiness probe took, by kind and result.",
                &["kind", "result"],
            ),
            drift,
            fetched: counters(
                "slipway_agent_fetched_bytes_total",
                "Bytes of release blobs and object packs downloaded, by source: the controller, or the bucket with a presigned URL.",
                &["source"],
            ),
            marks: Mutex::new(HashMap::new()),
            registry,
        }
    }

    /// A deploy of `app` begins: its first step is timed from now.
    pub fn deploy_started(&self, app: &str) {
        self.marks
            .lock()
            .expect("metrics lock")
            .insert(app.to_string(), Instant::now());
    }

    /// A step written to `app`'s deploy log.
    pub fn step(&self, app: &str, step: &str, outcome: &str) {
        let label = step_label(step);
        let outcome_label = match outcome {
            "ok" | "healthy" | "failed" | "unhealthy" | "found" | "cleared" | "applied" => outcome,
            _ => "other",
        };
        self.steps.with_label_values(&[label, outcome_label]).inc();
        match (step, outcome) {
            ("deploy", "healthy") => self.deploys.with_label_values(&["healthy"]).inc(),
            ("rollback", o) => self
                .rollbacks
                .with_label_values(&["automatic", if o == "ok" { "ok" } else { "failed" }])
                .inc(),
            ("local_rollback", o) => self
                .rollbacks
                .with_label_values(&["local", if o == "ok" { "ok" } else { "failed" }])
                .inc(),
            ("drift", "found") => self.drift.inc(),
            (s, "failed" | "unhealthy") if TIMED.contains(&s) => {
                self.deploys.with_label_values(&["failed"]).inc()
            }
            _ => {}
        }
        if TIMED.contains(&step) {
            let mut marks = self.marks.lock().expect("metrics lock");
            if let Some(since) = marks.get(app) {
                self.step_seconds
                    .with_label_values(&[label])
                    .observe(since.elapsed().as_secs_f64());
            }
            if step == "deploy" || outcome == "failed" {
                marks.remove(app);
            } else {
                marks.insert(app.to_string(), Instant::now());
            }
        }
    }

    /// One readiness probe of `kind` (`http`, `tcp`, `command`…) took `took`.
    pub fn health_check(&self, kind: &str, ok: bool, took: Duration) {
        self.health_seconds
            .with_label_values(&[kind, if ok { "ok" } else { "failed" }])
            .observe(took.as_secs_f64());
    }

    /// `n` bytes downloaded from `source` (`controller` or `bucket`).
    pub fn fetched(&self, source: &'static str, n: u64) {
        self.fetched.with_label_values(&[source]).inc_by(n);
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Serves `GET /metrics` in plain HTTP on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let service =
        hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let response = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                hyper::Response::builder()
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(METRICS.render())))
            } else {
                hyper::Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
            };
            Ok::<_, std::convert::Infallible>(response.expect("a valid response"))
        });
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Binds the metrics listener (`metrics_listen`), or says why it cannot.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_count_deploys_rollbacks_and_drift_under_bounded_labels() {
        let m = Metrics::new();
        m.deploy_started("web");
        m.step("web", "fetch", "ok");
        m.step("web", "deploy", "healthy");
        m.deploy_started("web");
        m.step("web", "health", "failed");
        m.step("web", "rollback", "ok");
        m.step("web", "drift", "found");
        m.step("web", "some_hook_name", "ok");
        let text = m.render();
        for line in [
            "slipway_agent_deploys_total{outcome=\"healthy\"} 1",
            "slipway_agent_deploys_total{outcome=\"failed\"} 1",
            "slipway_agent_rollbacks_total{kind=\"automatic\",outcome=\"ok\"} 1",
            "slipway_agent_drift_events_total 1",
            "slipway_agent_deploy_steps_total{outcome=\"ok\",step=\"other\"} 1",
            "slipway_agent_deploy_step_seconds_count{step=\"fetch\"} 1",
            "slipway_agent_deploy_step_seconds_count{step=\"health\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(!text.contains("some_hook_name"));
    }
}
