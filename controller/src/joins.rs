//! Enrollments written in batches. A fleet joining at once (thousands of
//! agents within seconds) makes every join a write; one after another, each
//! took the store's write lock and about ten statements under it, and on
//! PostgreSQL with two replicas the joins queued behind each other's round
//! trips until callers timed out. Here every join waiting when the writer
//! is free goes into one transaction of a handful of statements
//! (`Store::enroll`), as the session reports do (`reports`). A join that
//! finds the queue full is told the controller is busy at once (its agent
//! tries again later) rather than waiting to time out.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::ControllerError;
use crate::store::{Join, Joined, Store, StoreError};

/// Joins waiting at most; past it a join is refused as busy at once.
const QUEUE: usize = 1024;
/// Joins in one transaction at most.
const MAX_BATCH: usize = 256;

struct Queued {
    join: Join,
    reply: oneshot::Sender<Result<Joined, Arc<StoreError>>>,
}

/// Where enrollment handlers hand their joins.
#[derive(Clone)]
pub struct JoinQueue {
    tx: mpsc::Sender<Queued>,
}

impl JoinQueue {
    pub fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Checks the join's token and, if it may be spent, spends it and
    /// records the join's certificate (with others waiting meanwhile).
    pub async fn enroll(&self, join: Join) -> Result<Joined, ControllerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Queued { join, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ControllerError::Unavailable(
                    "too many enrollments at once: try again shortly".into(),
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    ControllerError::Unavailable("the controller is shutting down".into())
                }
            })?;
        let stored = answer
            .await
            .map_err(|_| ControllerError::Unavailable("the controller is shutting down".into()))?;
        stored.map_err(|e| match &*e {
            e if e.is_unavailable() => ControllerError::Unavailable("store unavailable".into()),
            e => ControllerError::Internal(format!("enrollment: {e}")),
        })
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let joins: Vec<Join> = batch.iter().map(|q| q.join.clone()).collect();
        let results: Vec<Result<Joined, Arc<StoreError>>> = match store.enroll(&joins).await {
            Ok(out) => out.into_iter().map(Ok).collect(),
            // A store that does not answer fails them all at once.
            Err(e) if e.is_unavailable() => {
                let e = Arc::new(e);
                joins.iter().map(|_| Err(e.clone())).collect()
            }
            // Anything else: one by one, so one bad join fails alone.
            Err(e) => {
                tracing::warn!(joins = joins.len(), error = %e, "writing a batch of enrollments failed; writing them one by one");
                let mut each = Vec::with_capacity(joins.len());
                for j in &joins {
                    each.push(
                        store
                            .enroll(std::slice::from_ref(j))
                            .await
                            .map_err(Arc::new)
                            .and_then(|mut out| {
                                out.pop().ok_or_else(|| {
                                    Arc::new(StoreError::Conflict("no answer".into()))
                                })
                            }),
                    );
                }
                each
            }
        };
        for (q, result) in batch.drain(..).zip(results) {
            let _ = q.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JoinRefused, NewCert, now};

    /// Many joins at once are each answered as one at a time would be
    /// (the same token twice: one wins), in fewer transactions than joins.
    async fn joins_at_once_are_each_answered_in_few_writes(store: Store) {
        let far = now() + 3600;
        for i in 0..40 {
            store
                .add_host(
                    "default",
                    &format!("h{i}"),
                    "preprod",
                    &format!("tok{i}"),
                    &format!("hash{i}"),
                    far,
                    "admin",
                )
                .await
                .unwrap();
        }
        let q = JoinQueue::spawn(store.clone());
        let join = |i: usize, csr: &str| Join {
            token_id: format!("tok{i}"),
            secret_hash: format!("hash{i}"),
            host: None,
            csr_digest: csr.into(),
            cert: Some(NewCert {
                tenant: "default".into(),
                host: format!("h{i}"),
                fingerprint: format!("fp-{i}-{csr}"),
                not_after: far,
            }),
            peer: "127.0.0.1:1".into(),
        };
        let before = store.queries();
        let mut calls = Vec::new();
        for i in 0..40 {
            let q = q.clone();
            let j = join(i, "a");
            calls.push(tokio::spawn(async move { q.enroll(j).await }));
        }
        // The same token with another CSR: refused, whichever comes first.
        let (q2, j2) = (q.clone(), join(0, "b"));
        calls.push(tokio::spawn(async move { q2.enroll(j2).await }));
        let mut ok = 0;
        let mut used = 0;
        for c in calls {
            match c.await.unwrap().unwrap() {
                Ok(_) => ok += 1,
                Err(JoinRefused::Used) => used += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!((ok, used), (40, 1));
        assert!(
            store.queries() - before < 40,
            "{} queries for 41 joins",
            store.queries() - before
        );
        for i in 1..40 {
            let owner = store.cert_owner(&format!("fp-{i}-a")).await.unwrap();
            assert_eq!(owner.unwrap().host, format!("h{i}"));
        }
        let h0 = [
            store.cert_owner("fp-0-a").await.unwrap(),
            store.cert_owner("fp-0-b").await.unwrap(),
        ];
        assert_eq!(
            h0.iter().filter(|o| o.is_some()).count(),
            1,
            "one of the two joins of h0 won"
        );
        let history = store.history("default", "", 100, 0).await.unwrap();
        let enrolls = history.iter().filter(|r| r.action == "enroll").count();
        assert_eq!(enrolls, 40, "an audit row per join that worked");
    }

    crate::store::testing::on_both_dialects!(joins_at_once_are_each_answered_in_few_writes);
}
