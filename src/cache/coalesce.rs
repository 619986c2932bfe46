//! One fetch per key at a time in this process: the first request for a key starts the fetch as
//! its own task; everyone asking meanwhile waits on the same result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// One fetch in flight: where its result will be published, and whether a purge has overtaken
/// it since it started.
struct InFlight<T> {
    result: watch::Receiver<Option<T>>,
    superseded: Superseded,
}

type Map<K, T> = Arc<Mutex<HashMap<K, InFlight<T>>>>;

/// Fetches in flight, by key. The map lock is held only to look up or insert, never across an
/// `await`, and only on misses and purges.
pub struct Coalescer<K, T> {
    inflight: Map<K, T>,
    /// Every fetch task started here, so shutdown can wait for them before the tiers close.
    tasks: tokio_util::task::TaskTracker,
}

/// Set when a purge of the key arrives while its fetch is in flight: the fetch may carry the
/// purged value, so it answers its waiters but must not be stored.
#[derive(Clone, Debug, Default)]
pub struct Superseded(Arc<AtomicBool>);

impl Superseded {
    /// Whether a purge overtook the fetch.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
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
    inflight: Map<K, T>,
    key: Option<K>,
    /// This fetch's flag: the map's entry for the key is removed only while it is this fetch's
    /// (a purge may have let a newer fetch take the key).
    superseded: Superseded,
}

impl<K: Hash + Eq, T> Drop for Done<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if map
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(&f.superseded.0, &self.superseded.0))
            {
                map.remove(&key);
            }
        }
    }
}

impl<K, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }
}

impl<K, T> Coalescer<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// The fetch tasks started here (and whatever else the owner tracks with them).
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.tasks
    }

    /// Whether a fetch for `key` is in flight.
    #[cfg(test)]
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

    /// Marks the fetch in flight for `key`, if any, as overtaken by a purge.
    pub fn supersede<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(f) = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            f.superseded.0.store(true, Ordering::SeqCst);
        }
    }

    /// Joins the fetch in flight for `key`, or starts `fetch` as a task. The task runs to its
    /// end even if every waiter goes away, so its result is still stored for the next request.
    /// `fetch` gets the flag a purge sets if it overtakes the fetch.
    pub fn join_or_start<F>(&self, key: &K, fetch: impl FnOnce(Superseded) -> F) -> (Role, Waiter<T>)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // A fetch a purge overtook answers only those who asked before the purge: a request
        // after it starts a fetch of its own.
        if let Some(f) = map.get(key).filter(|f| !f.superseded.is_set()) {
            return (Role::Follower, Waiter(f.result.clone()));
        }
        let (tx, rx) = watch::channel(None);
        let superseded = Superseded::default();
        map.insert(
            key.clone(),
            InFlight {
                result: rx.clone(),
                superseded: superseded.clone(),
            },
        );
        drop(map);
        let done = Done {
            inflight: self.inflight.clone(),
            key: Some(key.clone()),
            superseded: superseded.clone(),
        };
        let fut = fetch(superseded);
        self.tasks.spawn(async move {
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
                let (_, w) = c.join_or_start(&"k".to_owned(), |_| async move {
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
    async fn a_request_after_a_purge_does_not_join_the_fetch_it_overtook() {
        let c: Coalescer<String, u32> = Coalescer::default();
        let key = "k".to_owned();
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let (role, old) = c.join_or_start(&key, |_| async move {
            let _ = opened.await;
            1
        });
        assert_eq!(role, Role::Leader);
        c.supersede("k");
        let (role, new) = c.join_or_start(&key, |_| async { 2 });
        assert_eq!(
            role,
            Role::Leader,
            "a fetch of its own, not the purged one's answer"
        );
        assert_eq!(new.wait().await.unwrap(), 2);
        // The overtaken fetch ends after the newer one took the key: it removes only itself.
        let (role, third) = c.join_or_start(&key, |_| std::future::pending::<u32>());
        gate.send(()).unwrap();
        assert_eq!(old.wait().await.unwrap(), 1);
        assert_eq!(role, Role::Leader);
        assert!(c.in_flight("k"), "the third fetch is still the key's");
        drop(third);
    }

    #[tokio::test]
    async fn a_panicked_fetch_does_not_wedge_its_key() {
        let c: Coalescer<String, u32> = Coalescer::default();
        let (_, w) = c.join_or_start(&"k".to_owned(), |_| async { panic!("boom") });
        assert_eq!(w.wait().await, Err(Abandoned));
        let (role, w) = c.join_or_start(&"k".to_owned(), |_| async { 1 });
        assert_eq!(role, Role::Leader);
        assert_eq!(w.wait().await, Ok(1));
    }

    #[tokio::test]
    async fn a_purge_marks_only_the_fetch_in_flight_as_superseded() {
        let c: Coalescer<String, bool> = Coalescer::default();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (_, w) = c.join_or_start(&"k".to_owned(), |superseded| async move {
            let _ = gate_rx.await;
            superseded.is_set()
        });
        c.supersede("k");
        c.supersede("other");
        gate_tx.send(()).unwrap();
        assert_eq!(w.wait().await, Ok(true));
        let (_, w) = c.join_or_start(&"k".to_owned(), |superseded| async move { superseded.is_set() });
        assert_eq!(w.wait().await, Ok(false));
    }
}
