//! The small entries' file: one 4 KiB page per bucket, bucket `i` at offset `i × 4096`,
//! rewritten in place (CacheLib's BigHash).
//!
//! Why it exists: buckets kept as entries of foyer's log were rewritten to the log's head on
//! every change and their older copies filled the rest of it, so only a third of the disk held
//! live buckets (about 2 entries of 600 bytes per page of disk where 7 fit). In place, every
//! page of this file is a live bucket, and a fill is one read and one write of its page
//! through the page cache, not a trip through the engine's queue and flusher.
//!
//! A page: its bucket's encoding's length (u32, little-endian), a checksum (u32: FNV-1a of
//! the page's index and the encoding), then the encoding ([`super::bucket`]). An all-zero
//! page (never written, or emptied) is an empty bucket. A page whose checksum does not match
//! (torn by a crash mid-write, damaged) reads as [`PageError::Corrupt`]: the tier counts it
//! and treats the bucket as empty. Writes are not synced: it is a cache, and a torn page
//! only loses its own entries.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::DISK_PAGE;

/// The file the pages live in, beside the engine's.
pub const PAGES_FILE: &str = "cache-layer-buckets";

/// Bytes of a page before its bucket's encoding: its length and checksum.
pub const PAGE_HEADER: usize = 8;

/// Why a page could not be read.
#[derive(Debug)]
pub enum PageError {
    /// Its checksum does not match its bytes.
    Corrupt,
    /// The read or write failed.
    Io(std::io::Error),
}

/// The open pages file.
#[derive(Debug)]
pub struct Pages {
    file: File,
    /// Pages that may be written: a write past it is dropped (the file was cut to it, and
    /// must not grow back under a removal meant for a bucket of a larger disk).
    limit: AtomicU64,
}

impl Pages {
    /// Opens (creating it if missing) the pages file in `dir`, at least `pages` long: a file
    /// that is longer keeps its pages until [`Pages::cut_to`] (a resize moves their entries
    /// first).
    pub fn open(dir: &Path, pages: u64) -> std::io::Result<Pages> {
        let path = dir.join(PAGES_FILE);
        // Only a regular file (a FIFO there would block the open).
        if let Ok(m) = std::fs::symlink_metadata(&path)
            && !m.is_file()
        {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let want = pages * DISK_PAGE;
        if len < want {
            // Sparse: a page takes room on the volume only once written.
            file.set_len(want)?;
        }
        let limit = len.max(want) / DISK_PAGE;
        Ok(Pages {
            file,
            limit: AtomicU64::new(limit),
        })
    }

    /// How many pages the file holds.
    pub fn len(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// The bucket encoding page `i` holds; `None` when it is empty (or past the file's end).
    pub fn read(&self, i: u64) -> Result<Option<Vec<u8>>, PageError> {
        if i >= self.len() {
            return Ok(None);
        }
        let mut page = vec![0; DISK_PAGE as usize];
        let mut filled = 0;
        while filled < page.len() {
            match self
                .file
                .read_at(&mut page[filled..], i * DISK_PAGE + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PageError::Io(e)),
            }
        }
        let len = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
        if len == 0 && sum == 0 {
            return Ok(None);
        }
        if len > page.len() - PAGE_HEADER || sum != checksum(i, &page[PAGE_HEADER..PAGE_HEADER + len]) {
            return Err(PageError::Corrupt);
        }
        page.truncate(PAGE_HEADER + len);
        page.drain(..PAGE_HEADER);
        Ok(Some(page))
    }

    /// Writes `encoding` (at most a page less its header; empty: the bucket is emptied) as
    /// page `i`. A page past the file's end is not written (`Ok`: nothing to keep there).
    pub fn write(&self, i: u64, encoding: &[u8]) -> std::io::Result<()> {
        assert!(
            encoding.len() <= DISK_PAGE as usize - PAGE_HEADER,
            "a bucket is one page"
        );
        if i >= self.len() {
            return Ok(());
        }
        let mut page = Vec::with_capacity(PAGE_HEADER + encoding.len());
        if encoding.is_empty() {
            page.extend_from_slice(&[0; PAGE_HEADER]);
        } else {
            page.extend_from_slice(&(encoding.len() as u32).to_le_bytes());
            page.extend_from_slice(&checksum(i, encoding).to_le_bytes());
            page.extend_from_slice(encoding);
        }
        // The rest of the page is left as it was: the length says where the bucket ends.
        self.file.write_all_at(&page, i * DISK_PAGE)
    }

    /// Makes the file `pages` pages long, when it is shorter (the small entries were given
    /// more of the disk).
    pub fn grow(&self, pages: u64) -> std::io::Result<()> {
        if pages > self.len() {
            self.file.set_len(pages * DISK_PAGE)?;
            self.limit.store(pages, Ordering::Release);
        }
        Ok(())
    }

    /// Cuts the file to `pages` pages (after a resize made the disk smaller and moved the
    /// entries of the pages past it).
    pub fn cut_to(&self, pages: u64) -> std::io::Result<()> {
        if pages < self.len() {
            self.limit.store(pages, Ordering::Release);
            self.file.set_len(pages * DISK_PAGE)?;
        }
        Ok(())
    }
}

/// A page's checksum: FNV-1a of its index and its bucket's encoding (a page copied to another
/// offset does not pass for that one's).
fn checksum(i: u64, encoding: &[u8]) -> u32 {
    let h = crate::cache::sketch::fnv1a_of(&[&i.to_le_bytes(), encoding]);
    // Never the empty page's (0, 0): a bucket is never mistaken for an empty one.
    ((h ^ (h >> 32)) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_read_back_in_place_and_a_damaged_one_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let pages = Pages::open(dir.path(), 8).unwrap();
        assert_eq!(pages.len(), 8);
        assert!(pages.read(3).unwrap().is_none(), "never written: empty");
        pages.write(3, b"bucket three").unwrap();
        pages.write(4, &[7; 4088]).unwrap();
        assert_eq!(pages.read(3).unwrap().unwrap(), b"bucket three");
        assert_eq!(pages.read(4).unwrap().unwrap(), vec![7; 4088]);
        // Rewritten shorter in place: the rest of the old page does not leak into it.
        pages.write(4, b"short").unwrap();
        assert_eq!(pages.read(4).unwrap().unwrap(), b"short");
        pages.write(3, b"").unwrap();
        assert!(pages.read(3).unwrap().is_none(), "emptied");
        // Reopened (a restart): the same pages.
        drop(pages);
        let pages = Pages::open(dir.path(), 8).unwrap();
        assert_eq!(pages.read(4).unwrap().unwrap(), b"short");
        // A byte flipped on disk: corrupt, not garbage.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(PAGES_FILE))
            .unwrap();
        f.write_all_at(b"X", 4 * DISK_PAGE + 9).unwrap();
        assert!(matches!(pages.read(4), Err(PageError::Corrupt)));
        // A page copied to another offset does not pass for it.
        pages.write(5, b"five").unwrap();
        let mut five = vec![0; 4096];
        f.read_at(&mut five, 5 * DISK_PAGE).unwrap();
        f.write_all_at(&five, 6 * DISK_PAGE).unwrap();
        assert!(matches!(pages.read(6), Err(PageError::Corrupt)));
    }

    #[test]
    fn a_file_cut_shorter_is_not_written_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let pages = Pages::open(dir.path(), 16).unwrap();
        pages.write(12, b"twelve").unwrap();
        // Reopened smaller: the longer file is kept until cut.
        let pages = Pages::open(dir.path(), 8).unwrap();
        assert_eq!(pages.len(), 16);
        assert_eq!(pages.read(12).unwrap().unwrap(), b"twelve");
        pages.cut_to(8).unwrap();
        assert!(pages.read(12).unwrap().is_none());
        pages.write(12, b"again").unwrap();
        let len = std::fs::metadata(dir.path().join(PAGES_FILE)).unwrap().len();
        assert_eq!(len, 8 * DISK_PAGE, "a write past the end does not grow it back");
    }
}
