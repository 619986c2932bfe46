//! The disk tier's directory lock: one process per `DISK_CACHE_DIR`.
//!
//! Why it exists: two processes pointed at one directory (two replicas given the same volume,
//! or a second copy started by hand) would each recover, write and evict the other's blocks, and
//! serve each other's torn entries. The first process takes an exclusive `flock` on
//! `cache-layer.lock` in the directory and holds it until it exits (the kernel lets go of it
//! when the process dies, so a crash leaves no stale lock); a second one is refused at start-up.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name, beside the entries.
pub const LOCK_FILE: &str = "cache-layer.lock";

/// The held lock; dropping it lets go.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing): `Err` when another process holds it;
    /// `Ok(None)` when the directory cannot be used at all (read-only, not creatable), which
    /// the tier itself reports (it stays down and probes), as for any disk that fails.
    pub fn acquire(dir: &Path) -> Result<Option<DirLock>, String> {
        let path = dir.join(LOCK_FILE);
        let file = match std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        }) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "disk tier: cannot create its lock file; the directory is not locked");
                return Ok(None);
            }
        };
        // SAFETY: `flock` on a file descriptor this function owns, for the life of `file`.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if taken == 0 {
            return Ok(Some(DirLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!(
                "{} is in use by another process (it holds {LOCK_FILE}); two processes on one directory would overwrite each other's entries: give each replica a directory of its own",
                dir.display()
            ));
        }
        tracing::warn!(dir = %dir.display(), error = %e, "disk tier: cannot lock its directory; it is used unlocked");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_of_one_directory_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap().expect("locked");
        let second = DirLock::acquire(dir.path()).unwrap_err();
        assert!(second.contains("in use by another process"), "{second}");
        drop(first);
        assert!(
            DirLock::acquire(dir.path()).unwrap().is_some(),
            "free again once the first lets go"
        );
    }
}
