//! Reads every session of an environment makes alike when a change wakes
//! them all: which apps have a desired release there (with their
//! placement) and each app's desired release. A deploy wakes every session
//! of the environment at once, about three times; each session read both
//! for itself, a thousand times the same rows. Here the first session to
//! ask reads them and the others wait for its answer.
//!
//! A read is used only while the hub's `epoch` is what it was before the
//! read began: every change that wakes sessions for these rows (a desired
//! release, a rollout step, a placement, declared apps, a resync after
//! missed changes, here or from another replica) moves the epoch on before
//! it wakes anyone, so a session woken by a change never gets a read made
//! before it. A read is also never older than `MAX_AGE`, for a write that
//! wakes nobody. What only one host reads (whether a rollout holds it back,
//! its labels) is not shared.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::store::{DesiredGeneration, DesiredRow, Store, StoreError};

/// The oldest a shared read is given out.
const MAX_AGE: Duration = Duration::from_secs(2);

/// Past this many keys, the stale ones go before another is added.
const MAX_KEYS: usize = 1024;

/// What a read gave: a failure is shared with the callers waiting for it
/// (they would otherwise retry one after another, each waiting out a
/// store that does not answer), then forgotten.
type Read<T> = Result<T, Arc<StoreError>>;

/// One read, shared by the sessions asking at one epoch (or a later one: a
/// read begun at a newer epoch is newer still).
struct Slot<T> {
    epoch: u64,
    at: Instant,
    value: Arc<OnceCell<Read<T>>>,
}

impl<T> Slot<T> {
    fn fresh(&self, epoch: u64) -> bool {
        self.epoch >= epoch && self.at.elapsed() < MAX_AGE
    }
}

type Map<K, T> = Mutex<HashMap<K, Slot<T>>>;

#[derive(Default)]
pub struct SharedReads {
    /// (tenant, environment) → `Store::desired_generations`.
    generations: Map<(String, String), Vec<DesiredGeneration>>,
    /// (tenant, environment, app) → `Store::desired_app`.
    desired: Map<(String, String, String), Option<DesiredRow>>,
}

impl SharedReads {
    /// `Store::desired_generations`, read once per `epoch`.
    pub async fn desired_generations(
        &self,
        store: &Store,
        epoch: u64,
        tenant: &str,
        environment: &str,
    ) -> Result<Vec<DesiredGeneration>, StoreError> {
        let key = (tenant.to_string(), environment.to_string());
        shared(&self.generations, key, epoch, || {
            store.desired_generations(tenant, environment)
        })
        .await
    }

    /// `Store::desired_app`, read once per `epoch`.
    pub async fn desired_app(
        &self,
        store: &Store,
        epoch: u64,
        tenant: &str,
        environment: &str,
        app: &str,
    ) -> Result<Option<DesiredRow>, StoreError> {
        let key = (tenant.to_string(), environment.to_string(), app.to_string());
        shared(&self.desired, key, epoch, || {
            store.desired_app(tenant, environment, app)
        })
        .await
    }
}

/// The value under `key` read at `epoch` or later, by this caller or one
/// asking at the same time. A failed read goes to the callers waiting for
/// it; the next caller reads again.
async fn shared<K, T, F, Fut>(map: &Map<K, T>, key: K, epoch: u64, read: F) -> Result<T, StoreError>
where
    K: Eq + Hash + Clone,
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let value = {
        let mut map = map.lock().expect("shared reads lock");
        match map.get(&key) {
            Some(slot) if slot.fresh(epoch) => slot.value.clone(),
            _ => {
                if map.len() >= MAX_KEYS {
                    map.retain(|_, slot| slot.fresh(epoch));
                }
                let value = Arc::new(OnceCell::new());
                map.insert(
                    key.clone(),
                    Slot {
                        epoch,
                        at: Instant::now(),
                        value: value.clone(),
                    },
                );
                value
            }
        }
    };
    let read = value
        .get_or_init(|| async { read().await.map_err(Arc::new) })
        .await;
    match read {
        Ok(v) => Ok(v.clone()),
        Err(e) => {
            let mut map = map.lock().expect("shared reads lock");
            if map
                .get(&key)
                .is_some_and(|slot| Arc::ptr_eq(&slot.value, &value))
            {
                map.remove(&key);
            }
            Err(again(e))
        }
    }
}

/// A shared failure for one of its callers: the same kind of error (the
/// store unavailable, or not), with its text.
fn again(e: &StoreError) -> StoreError {
    if e.is_unavailable() {
        StoreError::Db(sqlx::Error::Io(std::io::Error::other(e.to_string())))
    } else {
        StoreError::Db(sqlx::Error::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn callers_at_one_epoch_share_one_read_and_a_new_epoch_reads_again() {
        let map: Map<&str, u32> = Mutex::default();
        let reads = AtomicU32::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, StoreError>(reads.load(Ordering::SeqCst))
        };
        let answers =
            futures_util::future::join_all((0..50).map(|_| shared(&map, "env", 1, read))).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(1))), "{answers:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "fifty callers, one read");
        assert_eq!(
            shared(&map, "env", 2, read).await.unwrap(),
            2,
            "a change since"
        );
        assert_eq!(
            shared(&map, "other", 2, read).await.unwrap(),
            3,
            "another key"
        );
        assert_eq!(shared(&map, "env", 2, read).await.unwrap(), 2);
    }

    /// A store that fails: every caller waiting for the read gets its error
    /// from that one read, not from one retry after another.
    #[tokio::test]
    async fn callers_waiting_on_a_failed_read_share_its_failure() {
        let map: Map<&str, u32> = Mutex::default();
        let reads = AtomicU32::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Err::<u32, _>(StoreError::Db(sqlx::Error::PoolTimedOut))
        };
        let answers =
            futures_util::future::join_all((0..50).map(|_| shared(&map, "env", 1, read))).await;
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().is_err_and(StoreError::is_unavailable)),
            "every caller is told the store is unavailable"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1, "fifty callers, one read");
    }

    #[tokio::test]
    async fn a_failed_read_is_not_kept_and_an_old_one_is_not_given_out() {
        let map: Map<&str, u32> = Mutex::default();
        let failed = shared(&map, "env", 1, || async {
            Err::<u32, _>(StoreError::Db(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(
            failed.is_err_and(|e| e.is_unavailable()),
            "still unavailable"
        );
        let ok = shared(&map, "env", 1, || async { Ok::<_, StoreError>(7) }).await;
        assert_eq!(ok.unwrap(), 7, "read again after a failure");
        map.lock().unwrap().get_mut("env").unwrap().at -= MAX_AGE;
        let again = shared(&map, "env", 1, || async { Ok::<_, StoreError>(8) }).await;
        assert_eq!(again.unwrap(), 8, "too old: read again at the same epoch");
    }
}
