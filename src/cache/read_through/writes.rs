//! Stores in progress, so that a purge answers only once every store it overtook has written
//! nothing or undone what it wrote.
//!
//! Why it exists: a fetch's answer is written to the first tier, then the others in the
//! background, and a purge that lands in between makes the store undo its writes. Without
//! this, the purge would answer `200` while a superseded store still had the purged value in
//! Redis, or had failed to remove it. A store registers here *before* it first checks for a
//! purge, and a purge looks here *after* it recorded itself, so every store either sees the
//! purge before it writes or is found and waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cache::{Entry, Target};

/// The stores in progress in this process.
#[derive(Default)]
pub(super) struct Writes {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Writing>>>,
}

/// One store in progress: its key, its entry's tags, and how it ended (`Some(true)`: nothing
/// of a purged value was left behind; `Some(false)`: an undo failed, or the store was cut short).
struct Writing {
    key: Box<str>,
    entry: Arc<Entry>,
    done: watch::Sender<Option<bool>>,
}

/// A registered store; [`Store::finish`] says how it ended, and dropping it unfinished (a
/// task cancelled at shutdown) counts as a store that may have left its value behind.
pub(super) struct Store {
    writes: Arc<Writes>,
    id: u64,
    writing: Arc<Writing>,
}

impl Writes {
    /// Registers a store of `entry` under `key`, before it first checks for a purge.
    pub(super) fn begin(self: &Arc<Self>, key: &str, entry: &Arc<Entry>) -> Store {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let writing = Arc::new(Writing {
            key: key.into(),
            entry: entry.clone(),
            done: watch::Sender::new(None),
        });
        self.lock().insert(id, writing.clone());
        Store {
            writes: self.clone(),
            id,
            writing,
        }
    }

    /// Waits for every store in progress that `target` names (its key, or a tag its entry
    /// carries); `false` when one of them left a value it could not undo. Call it after the
    /// purge is recorded.
    pub(super) async fn settled(&self, target: &Target) -> bool {
        let named: Vec<_> = self
            .lock()
            .values()
            .filter(|w| match target {
                Target::Key(key) => *w.key == **key,
                Target::Tag(tag) => w.entry.tags().iter().any(|t| **t == **tag),
            })
            .map(|w| w.done.subscribe())
            .collect();
        let mut clean = true;
        for mut done in named {
            clean &= match done.wait_for(Option::is_some).await {
                Ok(ended) => ended.unwrap_or(false),
                Err(_) => false,
            };
        }
        clean
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Writing>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store {
    /// Ends the store: `clean` unless it undid its writes and an undo failed.
    pub(super) fn finish(self, clean: bool) {
        self.writing.done.send_replace(Some(clean));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Unfinished: cut short (cancelled at shutdown) while it may have written.
        self.writing.done.send_if_modified(|v| {
            let unset = v.is_none();
            if unset {
                *v = Some(false);
            }
            unset
        });
        self.writes.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Lifetimes;
    use std::time::Duration;

    fn entry(tags: &[&str]) -> Arc<Entry> {
        let life = Lifetimes::fixed(Duration::from_secs(60), Duration::from_secs(60), Duration::ZERO);
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        Arc::new(Entry::value("k", b"\"v\"", 0, &life).with_tags(&tags))
    }

    fn key(k: &str) -> Target {
        Target::Key(k.to_owned())
    }

    #[tokio::test]
    async fn a_purge_waits_for_the_stores_it_names_and_learns_how_they_ended() {
        let writes = Arc::new(Writes::default());
        assert!(writes.settled(&key("k")).await, "nothing in progress");

        let store = writes.begin("k", &entry(&["t"]));
        let other = writes.begin("other", &entry(&[]));
        assert!(
            writes.settled(&key("nope")).await,
            "a store of another key is not waited for"
        );
        let w = writes.clone();
        let waiting = tokio::spawn(async move { w.settled(&Target::Tag("t".to_owned())).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the tag purge waits for the store of an entry with the tag"
        );
        store.finish(false);
        assert!(
            !waiting.await.unwrap(),
            "an undo that failed makes the purge unclean"
        );
        assert!(
            writes.settled(&key("k")).await,
            "an ended store is no longer waited for"
        );

        let w = writes.clone();
        let waiting = tokio::spawn(async move { w.settled(&key("other")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(other);
        assert!(
            !waiting.await.unwrap(),
            "a store cut short may have left its value"
        );

        let store = writes.begin("k", &entry(&[]));
        let w = writes.clone();
        let waiting = tokio::spawn(async move { w.settled(&key("k")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.finish(true);
        assert!(waiting.await.unwrap());
        assert!(writes.lock().is_empty());
    }
}
