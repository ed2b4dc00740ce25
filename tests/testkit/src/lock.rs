//! flock(2) locks on files, released on drop.
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

/// An flock(2) on a file, released on drop.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    }

    fn lock(path: &Path, op: i32) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = Self::open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock { _file: file })
    }

    pub fn exclusive(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_EX)
    }

    pub fn shared(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_SH)
    }

    pub fn try_exclusive(path: &Path) -> Result<Self> {
        Self::lock(path, libc::LOCK_EX | libc::LOCK_NB)
    }
}
