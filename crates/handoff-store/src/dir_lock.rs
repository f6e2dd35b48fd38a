//! The lock that keeps a second server off a SQLite data directory: an exclusive `flock(2)` on
//! `<data_dir>/handoff.lock`, held for as long as the store is open.
//!
//! Two processes writing one SQLite log would each believe it assigns the next `seq`; SQLite's
//! own locks serialise their transactions but not their idea of the head, so the second one's
//! writes failed later, with UNIQUE errors, long after it had said it was serving. The lock makes
//! the second one refuse at once, naming the process that holds the directory. The kernel drops
//! a `flock` when its holder dies, SIGKILL included, so no stale lock ever needs cleaning up.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The file name of the lock inside the data directory.
pub const LOCK_FILE: &str = "handoff.lock";

/// Holds the directory until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    // Never read: the open file description is what holds the lock.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` without waiting, and writes this process's id into the file
    /// so that the next one to try can say who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, String> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        if let Err(error) = try_lock_exclusive(&file) {
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(format!("cannot lock {}: {error}", path.display()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another handoff server".to_string()
            } else {
                format!("another handoff server (pid {holder})")
            };
            return Err(format!(
                "{who} is already using this data directory; stop it first, or give this \
                 server a data directory of its own (several nodes share a PostgreSQL store, \
                 not a directory)"
            ));
        }
        // Only the holder writes, so this cannot race with another writer of the file.
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "cannot write the pid into the lock file");
        }
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<()> {
    // Elsewhere the directory is not locked; handoff is built and tested on Linux.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).expect("the first lock");
        let refused = DataDirLock::acquire(dir.path()).expect_err("a second lock must be refused");
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "the refusal names the holder: {refused}"
        );
        assert!(
            refused.contains("already using this data directory"),
            "{refused}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("the lock is free once its holder is dropped");
    }
}
