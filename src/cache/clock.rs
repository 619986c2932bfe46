//! The wall clock entries are judged by. Entries carry wall-clock times (ms since the Unix
//! epoch), since they travel between processes through Redis; the read-through and the memory
//! tier read the time through a [`Clock`], so that tests of freshness can move time by hand
//! instead of sleeping. A leaf: it imports nothing of the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from: the system clock, or a manual one that moves only when told (every
/// clone of a manual clock is the same clock). Reading the system clock costs what
/// `SystemTime::now` costs; a manual one, one atomic load.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock standing at `start_ms` until [`Clock::advance`] or [`Clock::set_ms`] moves it.
    pub fn manual(start_ms: u64) -> Self {
        Clock(Some(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Milliseconds since the Unix epoch.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            None => system_now_ms(),
            Some(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward by `by`. The system clock cannot be moved: a no-op.
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock to `ms`. The system clock cannot be set: a no-op.
    pub fn set_ms(&self, ms: u64) {
        if let Some(t) = &self.0 {
            t.store(ms, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_move_with_it() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        clock.set_ms(5);
        assert_eq!(other.now_ms(), 5);
        let system = Clock::system();
        let before = system_now_ms();
        system.advance(Duration::from_secs(3600));
        assert!(system.now_ms() >= before && system.now_ms() < before + 60_000);
    }
}
