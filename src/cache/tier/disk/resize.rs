//! Resizing the disk tier without losing what it holds.
//!
//! Why it exists: `DISK_CACHE_MAX_BYTES` changes (a bigger volume, a smaller one), and a
//! restart used to lose every small entry: their bucket was the key's hash modulo the bucket
//! count, so a new count put every key in another bucket, and the block size (chosen from the
//! bytes) changed the engine's files under it. Now:
//!
//! - the block size of the directory is kept ([`Saved::block`]) while the new size can hold at
//!   least four blocks of it, so the engine's files read as before (a larger disk adds files, a
//!   smaller one drops the last ones); when it cannot be kept the tier starts empty;
//! - a key's bucket is [`jump`]'s (Lamping and Veach's jump consistent hash): from `n` to `m`
//!   buckets, only the keys that must move do (a share of `|m - n| / max(m, n)`), so growing a
//!   disk keeps every bucket's keys but those moved to the new buckets;
//! - a key not found in its bucket is looked for in its bucket of the previous count, until a
//!   disk's worth of bytes has been written since the resize (the engine is a log: by then the
//!   old blocks are gone); a key written to its new bucket is removed from its old one, so an
//!   older version cannot come back.
//!
//! The layout is saved in [`LAYOUT_FILE`] beside the entries when the tier opens and closes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file the layout is saved in, beside the entries.
pub const LAYOUT_FILE: &str = "cache-layer-layout";

/// The layout a process left: what the next one needs to read the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Saved {
    /// The engine's block size (its files are one block each).
    pub block: u64,
    /// The bucket count small entries were placed by.
    pub buckets: u64,
    /// The bucket count before the last resize, while it is still read (0: none).
    pub previous: u64,
    /// Bytes written since the last resize.
    pub written: u64,
}

impl Saved {
    /// The layout saved in `dir`; `None` when there is none or it does not parse.
    pub fn read(dir: &Path) -> Option<Saved> {
        let text = std::fs::read_to_string(dir.join(LAYOUT_FILE)).ok()?;
        let mut saved = Saved::default();
        let mut seen = 0;
        for field in text.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match name {
                "block" => saved.block = value,
                "buckets" => saved.buckets = value,
                "previous" => saved.previous = value,
                "written" => saved.written = value,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 4 && saved.block > 0 && saved.buckets > 0).then_some(saved)
    }

    /// Saves it in `dir` (written aside, then renamed over the old file).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{LAYOUT_FILE}.tmp"));
        let text = format!(
            "block={} buckets={} previous={} written={}\n",
            self.block, self.buckets, self.previous, self.written
        );
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(LAYOUT_FILE))
    }
}

/// The bucket count before a resize, read as a fallback until `capacity` bytes have been
/// written since.
#[derive(Debug)]
pub struct Transition {
    /// The previous count; 0 once the transition is over (or when there is none).
    previous: AtomicU64,
    written: AtomicU64,
    capacity: u64,
}

impl Transition {
    /// The transition a tier of `buckets` buckets over `capacity` bytes is in, given what the
    /// last process `saved` (`None`: a new or emptied directory, no transition).
    pub fn new(saved: Option<Saved>, buckets: u64, capacity: u64) -> Transition {
        let (previous, written) = match saved {
            Some(s) if s.buckets != buckets => (s.buckets, 0),
            Some(s) if s.previous != 0 && s.previous != buckets && s.written < capacity => {
                (s.previous, s.written)
            }
            _ => (0, 0),
        };
        Transition {
            previous: AtomicU64::new(previous),
            written: AtomicU64::new(written),
            capacity,
        }
    }

    /// The previous bucket count, while it is still read.
    pub fn previous(&self) -> Option<u64> {
        match self.previous.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// `bytes` were written: after a disk's worth, the previous buckets are gone from the log
    /// and no longer read. Whether that ended the transition now.
    pub fn wrote(&self, bytes: u64) -> bool {
        if self.previous.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let written = self.written.fetch_add(bytes, Ordering::Relaxed) + bytes;
        written >= self.capacity && self.previous.swap(0, Ordering::Relaxed) != 0
    }

    /// What to save for the next process.
    pub fn saved(&self, block: u64, buckets: u64) -> Saved {
        Saved {
            block,
            buckets,
            previous: self.previous.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
        }
    }
}

/// The bucket in `0..buckets` of a key whose hash is `hash` (jump consistent hash, Lamping and
/// Veach 2014): going from `n` to `m` buckets moves only the keys that must move.
pub fn jump(hash: u64, buckets: u64) -> u64 {
    // Not the hash itself: the mask bit is its top bits, which the LCG's first step would
    // carry into the first choice.
    let mut key = crate::cache::sketch::spread(hash ^ 0x9e37_79b9_7f4a_7c15);
    let (mut b, mut j) = (0_i64, 0_i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u64
}

/// The engine's files in `dir` that a layout of `blocks` blocks does not use (a disk made
/// smaller): removed before the engine opens, so they take no room. `foyer-storage-direct-fs-`
/// and the block number are foyer 0.22's file names.
pub fn remove_blocks_beyond(dir: &Path, blocks: u64) -> std::io::Result<usize> {
    let mut removed = 0;
    for f in std::fs::read_dir(dir)? {
        let f = f?;
        let name = f.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("foyer-storage-direct-fs-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if n >= blocks {
            std::fs::remove_file(f.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every engine file in `dir` (a block size that could not be kept): the tier starts
/// empty.
pub fn remove_all_blocks(dir: &Path) -> std::io::Result<usize> {
    remove_blocks_beyond(dir, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_moves_only_the_keys_of_the_new_buckets() {
        let keys: Vec<u64> = (0..100_000_u64).map(crate::cache::sketch::spread).collect();
        let moved = keys.iter().filter(|&&k| jump(k, 1000) != jump(k, 2000)).count();
        // Half the keys belong to the new half of the buckets; none of the others moves.
        assert!((45_000..55_000).contains(&moved), "{moved}");
        for &k in &keys {
            let (a, b) = (jump(k, 1000), jump(k, 2000));
            assert!(a == b || b >= 1000);
            assert!(a < 1000 && b < 2000);
        }
        // Spread evenly.
        let mut counts = vec![0; 100];
        for &k in &keys {
            counts[jump(k, 100) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn the_layout_file_reads_back_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Saved::read(dir.path()), None);
        let s = Saved {
            block: 262_144,
            buckets: 682,
            previous: 341,
            written: 5,
        };
        s.write(dir.path()).unwrap();
        assert_eq!(Saved::read(dir.path()), Some(s));
        std::fs::write(dir.path().join(LAYOUT_FILE), "block=262144 buckets=").unwrap();
        assert_eq!(Saved::read(dir.path()), None);
    }

    #[test]
    fn a_transition_lasts_a_disk_of_writes() {
        let saved = |buckets, previous, written| {
            Some(Saved {
                block: 1,
                buckets,
                previous,
                written,
            })
        };
        assert_eq!(Transition::new(None, 10, 100).previous(), None);
        assert_eq!(Transition::new(saved(10, 0, 0), 10, 100).previous(), None);
        let t = Transition::new(saved(5, 0, 0), 10, 100);
        assert_eq!(t.previous(), Some(5));
        assert!(!t.wrote(60));
        assert!(t.wrote(60), "a disk's worth written");
        assert_eq!(t.previous(), None);
        // Carried over a restart until it ends.
        let t = Transition::new(saved(10, 5, 60), 10, 100);
        assert_eq!(t.previous(), Some(5));
        assert_eq!(t.saved(1, 10).written, 60);
        assert_eq!(Transition::new(saved(10, 5, 100), 10, 100).previous(), None);
    }
}
