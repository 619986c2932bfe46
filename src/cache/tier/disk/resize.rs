//! Resizing the disk tier without losing what it holds.
//!
//! Why it exists: `DISK_CACHE_MAX_BYTES` changes (a bigger volume, a smaller one), and a
//! restart used to lose every small entry: their bucket was the key's hash modulo the bucket
//! count, so a new count put every key in another bucket, and the block size (chosen from the
//! bytes) changed the engine's files under it. Now:
//!
//! - the block size of the directory is kept ([`Saved::block`]) while the new size can hold at
//!   least four blocks of it, so the engine's files read as before (a larger share adds files;
//!   a smaller one starts the engine empty, see [`shrink_to`], the small entries kept); when it
//!   cannot be kept the tier starts empty;
//! - the bucket count changes with the disk's size, and with the small entries' share of it,
//!   which follows the fills;
//! - a key's bucket is [`jump`]'s (Lamping and Veach's jump consistent hash): from `n` to `m`
//!   buckets, only the keys that must move do (a share of `|m - n| / max(m, n)`), so growing a
//!   disk keeps every bucket's keys but those moved to the new buckets;
//! - after a resize the tier moves every entry of the pages file whose bucket changed to its
//!   new bucket, page by page in the background (the disk tier's `migrate`); until it is done,
//!   a key not found in its bucket is looked for in its buckets of the previous counts (up to
//!   [`MAX_PREVIOUS`] resizes in a row, a restart meanwhile starting the move again), and a key
//!   written to its new bucket is removed from every old one, so an older version cannot come
//!   back. More resizes in a row than that, and the tier starts empty;
//! - a directory whose layout file is missing or unreadable while the engine's files are there
//!   starts empty: their block size is unknown, and read with another they are garbage.
//!
//! The layout is saved in [`LAYOUT_FILE`] beside the entries when the tier opens and closes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file the layout is saved in, beside the entries.
pub const LAYOUT_FILE: &str = "cache-layer-layout";

/// Resizes in a row (each before the last one's transition ended) whose buckets are still read;
/// one more and the tier starts empty.
pub const MAX_PREVIOUS: usize = 4;

/// The longest layout file read (a longer one, or one that is not a regular file, is ignored).
const MAX_LAYOUT_FILE: u64 = 4096;

/// The layout a process left: what the next one needs to read the directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Saved {
    /// The engine's block size (its files are one block each).
    pub block: u64,
    /// The bucket count small entries were placed by.
    pub buckets: u64,
    /// The bucket counts before the last resizes, newest first, while their entries are
    /// still being moved.
    pub previous: Vec<u64>,
    /// The share of the disk given to the small entries' pages, in thousandths: adapted at
    /// every start to the fills seen, blended with the share before.
    pub share: u64,
    /// The keys of the hash that places small entries in buckets: random per directory, so
    /// no client can aim keys at another key's bucket, and kept so a restart finds them.
    pub seed: (u64, u64),
}

impl Saved {
    /// The layout saved in `dir`; `None` when there is none or it does not parse.
    pub fn read(dir: &Path) -> Option<Saved> {
        let text = read_small_file(&dir.join(LAYOUT_FILE), MAX_LAYOUT_FILE)?;
        // The fields, then their checksum: a file edited or damaged (its seed put back by
        // hand, say) is not read, and the tier starts empty rather than find old copies.
        let (fields, sum) = text.trim_end().rsplit_once(" sum=")?;
        if u64::from_str_radix(sum, 16).ok()? != checksum(fields) {
            return None;
        }
        let mut saved = Saved::default();
        let mut seen = 0;
        for field in fields.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            if name == "previous" {
                for n in value.split(',').filter(|n| !n.is_empty()) {
                    saved.previous.push(n.parse().ok().filter(|&n| n > 0)?);
                }
                if saved.previous.len() > MAX_PREVIOUS {
                    return None;
                }
                seen += 1;
                continue;
            }
            if name == "seed" {
                let (a, b) = value.split_once(',')?;
                saved.seed = (a.parse().ok()?, b.parse().ok()?);
                seen += 1;
                continue;
            }
            let value: u64 = value.parse().ok()?;
            match name {
                "block" => saved.block = value,
                "buckets" => saved.buckets = value,
                "share" => saved.share = value,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 5 && saved.block > 0 && saved.buckets > 0 && saved.share <= 1000).then_some(saved)
    }

    /// Saves it in `dir` (written aside, then renamed over the old file).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let previous: Vec<String> = self.previous.iter().map(u64::to_string).collect();
        let fields = format!(
            "block={} buckets={} previous={} share={} seed={},{}",
            self.block,
            self.buckets,
            previous.join(","),
            self.share,
            self.seed.0,
            self.seed.1
        );
        let text = format!("{fields} sum={:016x}\n", checksum(&fields));
        replace_file(dir, LAYOUT_FILE, text)
    }
}

/// The checksum of the layout file's fields.
fn checksum(fields: &str) -> u64 {
    crate::cache::sketch::fnv1a(fields.as_bytes())
}

/// The bucket counts before the last resizes, read as a fallback until the entries of their
/// buckets have all been moved to today's ([`Transition::end`]).
#[derive(Debug)]
pub struct Transition {
    /// The previous counts, newest first; all 0 once the transition is over (or without one).
    previous: [AtomicU64; MAX_PREVIOUS],
}

impl Transition {
    /// The transition a tier of `buckets` buckets is in, given what the last process `saved`
    /// (`None`: a new or emptied directory, no transition); `None` when there were more
    /// resizes in a row than [`MAX_PREVIOUS`] (the tier must start empty).
    pub fn new(saved: Option<&Saved>, buckets: u64) -> Option<Transition> {
        let mut previous = Vec::new();
        if let Some(s) = saved {
            if s.buckets != buckets {
                previous.push(s.buckets);
            }
            previous.extend(&s.previous);
        }
        previous.retain(|&n| n != buckets);
        let mut seen = std::collections::HashSet::new();
        previous.retain(|n| seen.insert(*n));
        if previous.len() > MAX_PREVIOUS {
            return None;
        }
        let slots = std::array::from_fn(|i| AtomicU64::new(previous.get(i).copied().unwrap_or(0)));
        Some(Transition { previous: slots })
    }

    /// The transition of a resize from `previous` buckets, the last one over (a new split).
    pub fn after(previous: u64) -> Transition {
        let mut slots: [AtomicU64; MAX_PREVIOUS] = Default::default();
        slots[0] = AtomicU64::new(previous);
        Transition { previous: slots }
    }

    /// The previous bucket counts still read, newest first.
    pub fn previous(&self) -> impl Iterator<Item = u64> + '_ {
        self.previous
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .take_while(|&n| n != 0)
    }

    /// Every entry is in today's bucket: the previous counts are no longer read.
    pub fn end(&self) {
        for n in &self.previous {
            n.store(0, Ordering::Relaxed);
        }
    }

    /// What to save for the next process.
    pub fn saved(&self, block: u64, buckets: u64, share: u64, seed: (u64, u64)) -> Saved {
        Saved {
            block,
            buckets,
            previous: self.previous().collect(),
            share,
            seed,
        }
    }
}

/// The contents of `path` when it is a regular file of at most `max` bytes and UTF-8: a FIFO, a
/// device or a huge file put there is not read (it would block start-up or fill the memory).
pub fn read_small_file(path: &Path, max: u64) -> Option<String> {
    String::from_utf8(read_small(path, max)?).ok()
}

/// Replaces the file `name` in `dir` with `contents`: written aside (`<name>.tmp`), then renamed
/// over it, so a crash leaves the old file or the new one, never half of one.
pub fn replace_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The bytes of `path` when it is a regular file of at most `max` bytes (see
/// [`read_small_file`]).
pub fn read_small(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let is_small_file = |m: std::fs::Metadata| m.is_file() && m.len() <= max;
    // Looked at before it is opened (opening a FIFO waits for a writer), and opened without
    // waiting in case it was swapped meanwhile.
    if !std::fs::metadata(path).is_ok_and(is_small_file) {
        return None;
    }
    const O_NONBLOCK: i32 = 0o4000;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().is_ok_and(is_small_file) {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Removes what is at `path` when it is there and not a regular file (a FIFO, a link, a
/// directory put where a file of the tier's belongs: opened, a FIFO would block); whether it
/// removed anything.
pub fn remove_unless_file(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map(|()| true),
        Ok(m) if !m.is_file() => std::fs::remove_file(path).map(|()| true),
        _ => Ok(false),
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

/// Whether `dir` holds any of the engine's files, or the small entries' pages.
pub fn has_blocks(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|files| {
        files.flatten().any(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.starts_with(BLOCK_FILE) || name == super::pages::PAGES_FILE
        })
    })
}

/// foyer 0.22's name of a block's file, before the block's number.
const BLOCK_FILE: &str = "foyer-storage-direct-fs-";

/// Fits the engine's files in `dir` to a layout of `blocks` blocks: when there are files past
/// it (the engine made smaller), every one of the engine's files is removed and the engine
/// starts empty. Dropping only the blocks past the end is not safe: foyer's recovery indexes
/// the newest copy of a key it finds, so a key whose newest copy (or its removal) was in a
/// dropped block would come back as the older copy a kept block holds (an attack pass: 83 of
/// 300 keys served a version older than one answered since). How many files were removed.
///
/// Also finishes a removal a crash cut short ([`WIPE_FILE`]): the blocks left, low-numbered,
/// could hold the older copies of keys whose newer ones went first.
pub fn shrink_to(dir: &Path, blocks: u64) -> std::io::Result<usize> {
    let unfinished = std::fs::symlink_metadata(dir.join(WIPE_FILE)).is_ok();
    if !unfinished && !has_blocks_from(dir, blocks)? {
        return Ok(0);
    }
    wipe_engine(dir)
}

/// The file that says a removal of the engine's files is under way: written and synced before
/// the first file goes, removed after the last, so a start after a crash in between finishes it.
pub const WIPE_FILE: &str = "cache-layer-engine-wipe";

/// Removes every one of the engine's files (crash-safe: see [`WIPE_FILE`]); how many.
fn wipe_engine(dir: &Path) -> std::io::Result<usize> {
    let marker = dir.join(WIPE_FILE);
    remove_unless_file(&marker)?;
    std::fs::File::create(&marker)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    let removed = remove_files(dir, |name| name.starts_with("foyer"))?;
    std::fs::remove_file(&marker)?;
    Ok(removed)
}

/// Whether `dir` holds an engine block numbered `blocks` or above.
fn has_blocks_from(dir: &Path, blocks: u64) -> std::io::Result<bool> {
    for f in std::fs::read_dir(dir)? {
        let name = f?.file_name();
        let n = name
            .to_str()
            .and_then(|n| n.strip_prefix(BLOCK_FILE))
            .and_then(|n| n.parse::<u64>().ok());
        if n.is_some_and(|n| n >= blocks) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the files (and directories) in `dir` whose names `doomed` picks; how many.
fn remove_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> std::io::Result<usize> {
    let mut removed = 0;
    for f in std::fs::read_dir(dir)? {
        let f = f?;
        if doomed(&f.file_name().to_string_lossy()) {
            if f.file_type()?.is_dir() {
                std::fs::remove_dir_all(f.path())?;
            } else {
                std::fs::remove_file(f.path())?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every file of entries in `dir`: the engine's (anything named `foyer…`, whatever
/// its version named it) and the small entries' pages: the tier starts empty. How many were
/// removed.
pub fn remove_engine_files(dir: &Path) -> std::io::Result<usize> {
    remove_files(dir, |name| {
        name.starts_with("foyer") || name == super::pages::PAGES_FILE
    })
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
            previous: vec![341, 1365],
            share: 750,
            seed: (7, u64::MAX),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(Saved::read(dir.path()), Some(s.clone()));
        let none = Saved {
            previous: vec![],
            ..Saved::default()
        };
        let none = Saved {
            block: 1,
            buckets: 1,
            ..none
        };
        none.write(dir.path()).unwrap();
        assert_eq!(Saved::read(dir.path()), Some(none));
        std::fs::write(dir.path().join(LAYOUT_FILE), "block=262144 buckets=").unwrap();
        assert_eq!(Saved::read(dir.path()), None);
        // Edited by hand (its seed changed), it no longer matches its checksum.
        s.write(dir.path()).unwrap();
        let path = dir.path().join(LAYOUT_FILE);
        let edited = std::fs::read_to_string(&path)
            .unwrap()
            .replace("seed=7,", "seed=8,");
        std::fs::write(&path, edited).unwrap();
        assert_eq!(Saved::read(dir.path()), None);
    }

    #[test]
    fn a_transition_lasts_until_its_entries_moved_and_remembers_resizes_in_a_row() {
        let saved = |buckets, previous: &[u64]| Saved {
            block: 1,
            buckets,
            previous: previous.to_vec(),
            share: 500,
            seed: (1, 2),
        };
        let prev = |t: &Transition| t.previous().collect::<Vec<_>>();
        assert!(prev(&Transition::new(None, 10).unwrap()).is_empty());
        assert!(prev(&Transition::new(Some(&saved(10, &[])), 10).unwrap()).is_empty());
        let t = Transition::new(Some(&saved(5, &[])), 10).unwrap();
        assert_eq!(prev(&t), [5]);
        // Carried over a restart until it ends.
        assert_eq!(t.saved(1, 10, 500, (1, 2)).previous, [5]);
        t.end();
        assert!(prev(&t).is_empty());
        assert!(t.saved(1, 10, 500, (1, 2)).previous.is_empty());
        let t = Transition::new(Some(&saved(10, &[5])), 10).unwrap();
        assert_eq!(prev(&t), [5]);
        // Resized again within it: both earlier counts are read, newest first.
        let t = Transition::new(Some(&saved(10, &[5])), 20).unwrap();
        assert_eq!(prev(&t), [10, 5]);
        // Back to an earlier count: that one is today's, not a previous.
        let t = Transition::new(Some(&saved(20, &[10, 5])), 5).unwrap();
        assert_eq!(prev(&t), [20, 10]);
        // Too many in a row: start empty.
        assert!(Transition::new(Some(&saved(50, &[40, 30, 20, 10])), 60).is_none());
    }

    #[test]
    fn only_a_small_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            read_small_file(&fifo, 4096),
            None,
            "not opened for reading: never blocks"
        );
        assert_eq!(read_small_file(Path::new("/dev/zero"), 4096), None);
        std::fs::write(dir.path().join("big"), vec![b'x'; 5000]).unwrap();
        assert_eq!(read_small_file(&dir.path().join("big"), 4096), None);
    }

    #[test]
    fn a_smaller_engine_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..16 {
            std::fs::write(dir.path().join(format!("{BLOCK_FILE}{i:08}")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("foyer-tombstone-log"), b"x").unwrap();
        std::fs::write(dir.path().join(super::super::pages::PAGES_FILE), b"x").unwrap();
        assert!(has_blocks(dir.path()));
        assert_eq!(
            shrink_to(dir.path(), 16).unwrap(),
            0,
            "not made smaller: nothing removed"
        );
        assert_eq!(
            shrink_to(dir.path(), 8).unwrap(),
            17,
            "every block and the tombstone log"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name())
            .collect();
        assert_eq!(left, ["cache-layer-buckets"], "the pages stay");
        // A removal a crash cut short (its marker left, blocks below the new end still
        // there): finished at the next fit, whatever the blocks' numbers.
        for i in 0..4 {
            std::fs::write(dir.path().join(format!("{BLOCK_FILE}{i:08}")), b"x").unwrap();
        }
        std::fs::write(dir.path().join(WIPE_FILE), b"").unwrap();
        assert_eq!(shrink_to(dir.path(), 8).unwrap(), 4);
        assert!(!dir.path().join(WIPE_FILE).exists());
        let foyer = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("foyer")
            })
            .count();
        assert_eq!(foyer, 0);
        assert_eq!(shrink_to(dir.path(), 8).unwrap(), 0, "nothing left to do");
    }
}
