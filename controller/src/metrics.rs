//! What the controller exposes at `/metrics` (Prometheus text format).
//!
//! Counters and histograms are bumped where things happen (a directive
//! signed, a chunk of a blob sent, a report stored, a call answered); gauges
//! of state (hosts, sessions, rollouts, bytes stored) are read from the hub
//! and the store at scrape time, so they are never stale and cost nothing
//! between scrapes. No label holds a tenant, host or app name: the series
//! are bounded and the page says nothing about who runs what.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::ctx::Ctx;
use crate::fleet::HostState;

/// Seconds buckets for calls and report lag: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub directives_sent: IntCounter,
    pub blob_bytes_served: IntCounter,
    pub report_lag: Histogram,
    pub grpc_latency: HistogramVec,
    pub http_latency: HistogramVec,
    pub web_sign_ins: IntCounterVec,
    /// 1 while this replica runs the rollout engine (`leader`).
    pub leading: prometheus::IntGauge,
    host_apps: IntGaugeVec,
    hosts: IntGaugeVec,
    sessions: IntGaugeVec,
    rollouts: IntGaugeVec,
    blob_bytes_stored: IntGaugeVec,
    /// When the state gauges were last read (a scrape within `FRESH` of it
    /// reuses them: each read walks every tenant's fleet).
    refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How long read state gauges stay fresh.
const FRESH: Duration = Duration::from_secs(5);

/// The process's metrics (one controller per process).
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let report_lag = Histogram::with_opts(
            HistogramOpts::new(
                "slipway_report_lag_seconds",
                "Time from a host's report reaching the controller to it being stored.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(report_lag.clone()))
            .expect("unique");
        let web_sign_ins = IntCounterVec::new(
            Opts::new(
                "slipway_web_sign_ins_total",
                "Dashboard sign-ins by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(web_sign_ins.clone()))
            .expect("unique");
        Metrics {
            directives_sent: counter(
                "slipway_directives_sent_total",
                "Signed directives sent to hosts.",
            ),
            blob_bytes_served: counter(
                "slipway_blob_bytes_served_total",
                "Bytes of release blobs and packs sent to hosts.",
            ),
            report_lag,
            grpc_latency: histograms(
                "slipway_grpc_request_duration_seconds",
                "Time to a gRPC call's response headers (the whole answer for a unary call), by method.",
                &["method"],
            ),
            http_latency: histograms(
                "slipway_http_request_duration_seconds",
                "Time to answer an HTTP request of the dashboard listener, by route and status.",
                &["route", "status"],
            ),
            web_sign_ins,
            leading: {
                let g = prometheus::IntGauge::new(
                    "slipway_rollouts_leader",
                    "1 while this controller runs the rollout engine (one replica of a store does).",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique");
                g
            },
            host_apps: gauges(
                "slipway_host_apps",
                "Apps on hosts by state (a host counted once per app it runs).",
                &["state"],
            ),
            hosts: gauges(
                "slipway_hosts",
                "Enrolled hosts by connection.",
                &["connection"],
            ),
            sessions: gauges(
                "slipway_agent_sessions",
                "Agent sessions open on this controller.",
                &[],
            ),
            rollouts: gauges("slipway_rollouts", "Rollouts by state.", &["state"]),
            blob_bytes_stored: gauges(
                "slipway_blob_bytes_stored",
                "Bytes of release blobs in the store.",
                &[],
            ),
            refreshed: tokio::sync::Mutex::new(None),
            registry,
        }
    }

    pub fn observe_report_lag(&self, took: Duration) {
        self.report_lag.observe(took.as_secs_f64());
    }

    /// Reads the gauges from the hub and the store, then writes every
    /// metric in Prometheus text format.
    pub async fn render(&self, ctx: &Ctx) -> crate::error::Result<String> {
        {
            // One read at a time; scrapers arriving meanwhile reuse it.
            let mut refreshed = self.refreshed.lock().await;
            if refreshed.is_none_or(|at| at.elapsed() >= FRESH) {
                self.refresh(ctx).await?;
                *refreshed = Some(std::time::Instant::now());
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| crate::error::ControllerError::Internal(format!("metrics: {e}")))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn refresh(&self, ctx: &Ctx) -> crate::error::Result<()> {
        let mut by_state = [0i64; 5];
        let (mut connected, mut offline) = (0i64, 0i64);
        for tenant in ctx.store.tenants().await? {
            for h in ctx.store.hosts(&tenant, "").await? {
                if h.revoked_at.is_some() {
                    continue;
                }
                if ctx.hub.connected(&tenant, &h.name) {
                    connected += 1;
                } else {
                    offline += 1;
                }
            }
            for h in crate::views::fleet(ctx, &tenant, "", "").await?.rows {
                by_state[h.state as usize] += 1;
            }
        }
        for state in [
            HostState::Ok,
            HostState::Updating,
            HostState::Drifted,
            HostState::Offline,
            HostState::Failed,
        ] {
            self.host_apps
                .with_label_values(&[state.as_str()])
                .set(by_state[state as usize]);
        }
        self.hosts.with_label_values(&["connected"]).set(connected);
        self.hosts.with_label_values(&["offline"]).set(offline);
        self.sessions
            .with_label_values(&[] as &[&str])
            .set(ctx.hub.session_count() as i64);
        self.rollouts.reset();
        for (state, n) in ctx.store.rollout_counts().await? {
            self.rollouts.with_label_values(&[state.as_str()]).set(n);
        }
        self.blob_bytes_stored
            .with_label_values(&[] as &[&str])
            .set(ctx.store.blob_bytes().await?);
        Ok(())
    }
}
