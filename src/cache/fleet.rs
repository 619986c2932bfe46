//! Waking the replicas that wait on another replica's fetch. The replica holding a key's fleet
//! lock publishes the key on the fill channel when it lets go; each replica's Redis listener
//! wakes its waiter for that key, which then reads the value (or competes for the lock again).
//! Waiters also look on their own every `FLEET_LOCK_POLL_MS`, in case a message is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The keys this process is waiting on another replica for.
#[derive(Default)]
pub struct FleetWaiters {
    waiting: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
}

impl FleetWaiters {
    /// Registers interest in `key` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, key: &str) -> Registration {
        let key: Arc<str> = Arc::from(key);
        let notify = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Registration {
            waiters: self.clone(),
            key,
            notify,
        }
    }

    /// Wakes the waiter for `key`, if any. A wake before the waiter sleeps is kept for it.
    pub fn wake(&self, key: &str) {
        if let Some(notify) = self.lock().get(key) {
            notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A waiter's interest in one key.
pub struct Registration {
    waiters: Arc<FleetWaiters>,
    key: Arc<str>,
    notify: Arc<Notify>,
}

impl Registration {
    /// Returns when the key's holder has let go (a message), or after `poll`.
    pub async fn wait(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.notify.notified()).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        // Only this process's one fetch task per key registers, but stay safe if two did.
        if waiting
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wake_ends_the_wait_at_once_and_is_kept_if_early() {
        let waiters = Arc::new(FleetWaiters::default());
        let r = waiters.register("k");
        waiters.wake("k"); // before the waiter sleeps
        let started = tokio::time::Instant::now();
        let poll = Duration::from_millis(500);
        r.wait(poll).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // No message: the wait ends after the poll interval.
        r.wait(poll).await;
        assert_eq!(started.elapsed(), poll);
    }

    #[tokio::test]
    async fn a_dropped_registration_is_forgotten() {
        let waiters = Arc::new(FleetWaiters::default());
        drop(waiters.register("k"));
        assert!(waiters.lock().is_empty());
        waiters.wake("k"); // nobody waits: nothing happens
    }
}
