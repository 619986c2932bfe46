//! One fetch per key at a time in this process: the first request for a key starts the fetch as
//! its own task; everyone asking meanwhile waits on the same result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Fetches in flight, by key. The map lock is held only to look up or insert, never across an
/// `await`, and only on misses.
pub struct Coalescer<K, T> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<T>>>>>,
}

/// How a caller took part in a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This call started the fetch.
    Leader,
    /// This call joined a fetch already in flight.
    Follower,
}

/// The fetch task ended without a result (it panicked or was aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fetch ended without a result")]
pub struct Abandoned;

/// Removes the key from the map when the fetch task ends, however it ends, so a failed or
/// panicked fetch never wedges its key.
struct Done<K: Hash + Eq, T> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<T>>>>>,
    key: Option<K>,
}

impl<K: Hash + Eq, T> Drop for Done<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

impl<K, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::default(),
        }
    }
}

impl<K, T> Coalescer<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Whether a fetch for `key` is in flight.
    pub fn in_flight<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Joins the fetch in flight for `key`, or starts `fetch` as a task. The task runs to its
    /// end even if every waiter goes away, so its result is still stored for the next request.
    pub fn join_or_start<F>(&self, key: &K, fetch: impl FnOnce() -> F) -> (Role, Waiter<T>)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return (Role::Follower, Waiter(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        drop(map);
        let done = Done {
            inflight: self.inflight.clone(),
            key: Some(key.clone()),
        };
        let fut = fetch();
        tokio::spawn(async move {
            let value = fut.await;
            // Leave the map before publishing, so a request arriving after the result starts
            // afresh (by then the value is in the tiers).
            drop(done);
            let _ = tx.send(Some(value));
        });
        (Role::Leader, Waiter(rx))
    }
}

/// A handle on a fetch's result.
pub struct Waiter<T>(watch::Receiver<Option<T>>);

impl<T: Clone> Waiter<T> {
    /// The fetch's result.
    pub async fn wait(mut self) -> Result<T, Abandoned> {
        let value = self.0.wait_for(Option::is_some).await.map_err(|_| Abandoned)?;
        Ok(value.clone().expect("waited for Some"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Barrier;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let c: Arc<Coalescer<String, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(50));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, calls, barrier) = (c.clone(), calls.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let (_, w) = c.join_or_start(&"k".to_owned(), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    7
                });
                w.wait().await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!c.in_flight("k"));
    }

    #[tokio::test]
    async fn a_panicked_fetch_does_not_wedge_its_key() {
        let c: Coalescer<String, u32> = Coalescer::default();
        let (_, w) = c.join_or_start(&"k".to_owned(), || async { panic!("boom") });
        assert_eq!(w.wait().await, Err(Abandoned));
        let (role, w) = c.join_or_start(&"k".to_owned(), || async { 1 });
        assert_eq!(role, Role::Leader);
        assert_eq!(w.wait().await, Ok(1));
    }
}
