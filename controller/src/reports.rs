//! Hosts' reports written in batches. Every report was its own write
//! transaction, and a 1,000-host rollout sends about eight per host; on one
//! writer connection they queued one behind the other, each waiting for a
//! thread to wake on both sides. Sessions now hand reports to one task that
//! writes whatever has queued up meanwhile in one transaction, answers each
//! session once it is stored, and names the hosts to the engine
//! (`Hub::host_reported`). A batch that fails is written again report by
//! report, so one bad row costs only its own session an error.

use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::store::{HostAppReport, Store, StoreError};

/// Reports written in one transaction at most.
const MAX_BATCH: usize = 256;

/// Reports waiting for the writer at most (sessions wait beyond it).
const QUEUE: usize = 4096;

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report writer stopped")]
    Stopped,
    #[error("storing the report: {0}")]
    Store(#[from] StoreError),
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// One report on its way to the store: (tenant, host, report).
struct Queued {
    tenant: String,
    host: String,
    report: HostAppReport,
    reply: Reply,
}

/// Where sessions hand their reports.
#[derive(Clone)]
pub struct ReportWriter {
    tx: mpsc::Sender<Queued>,
}

impl ReportWriter {
    /// Starts the writer task over `store`; it ends when every handle is
    /// dropped.
    pub fn spawn(store: Store, hub: Hub) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, hub, rx));
        Self { tx }
    }

    /// Stores the host's report (with others that arrived meanwhile) and
    /// tells the engine the host reported.
    pub async fn record(
        &self,
        tenant: &str,
        host: &str,
        report: HostAppReport,
    ) -> Result<(), ReportError> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            tenant: tenant.to_string(),
            host: host.to_string(),
            report,
            reply,
        };
        self.tx
            .send(queued)
            .await
            .map_err(|_| ReportError::Stopped)?;
        let stored = answer.await.map_err(|_| ReportError::Stopped)?;
        crate::metrics::METRICS.observe_report_lag(started.elapsed());
        Ok(stored?)
    }
}

async fn run(store: Store, hub: Hub, mut rx: mpsc::Receiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let rows: Vec<(String, String, HostAppReport)> = batch
            .iter()
            .map(|q| (q.tenant.clone(), q.host.clone(), q.report.clone()))
            .collect();
        let results: Vec<Result<(), StoreError>> = match store.record_reports(&rows).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                tracing::warn!(reports = rows.len(), error = %e, "writing a batch of reports failed; writing them one by one");
                let mut each = Vec::with_capacity(rows.len());
                for (tenant, host, report) in &rows {
                    each.push(store.record_report(tenant, host, report).await);
                }
                each
            }
        };
        for (q, result) in batch.drain(..).zip(results) {
            if result.is_ok() {
                hub.host_reported(&q.tenant, &q.host, &q.report.app);
            }
            let _ = q.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::lifecycle::Health;

    /// Reports from many sessions at once are all stored, in fewer
    /// transactions than reports, each answered, and each host named to the
    /// engine.
    async fn concurrent_reports_are_stored_and_named(store: Store) {
        let hosts: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
        for h in &hosts {
            store
                .add_host(
                    "default",
                    h,
                    "preprod",
                    h,
                    "x",
                    crate::store::now() + 60,
                    "test",
                )
                .await
                .unwrap();
        }
        let hub = Hub::new();
        let writer = ReportWriter::spawn(store.clone(), hub.clone());
        let report = |version: &str| HostAppReport {
            app: "web".into(),
            running_version: version.into(),
            health: Health::Healthy,
            ..Default::default()
        };
        let mut tasks = Vec::new();
        let queries = store.queries();
        for h in hosts.clone() {
            let writer = writer.clone();
            let r = report("1");
            tasks.push(tokio::spawn(async move {
                (h.clone(), writer.record("default", &h, r).await)
            }));
        }
        for t in tasks {
            let (host, result) = t.await.unwrap();
            assert!(result.is_ok(), "{host}: {result:?}");
        }
        let written = store.queries() - queries;
        assert!(
            written < hosts.len() as u64,
            "{written} transactions for {} reports",
            hosts.len()
        );
        let fleet = store.fleet("default", "web", "preprod").await.unwrap();
        assert_eq!(fleet.len(), hosts.len());
        assert!(fleet.iter().all(|f| f.report.running_version == "1"));
        let named = hub.take_reported();
        assert_eq!(named.len(), hosts.len());
    }

    crate::store::testing::on_both_dialects!(concurrent_reports_are_stored_and_named,);
}
