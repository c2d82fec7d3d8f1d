//! One agent per node: an exclusive lock held for the agent's life.

use std::{fs::File, io::Write as _, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// One agent per node: an exclusive lock held for the agent's life. The kernel
/// drops it when the process dies, however it dies.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(path: &Path, node: &str) -> Result<RunLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            bail!(
                "another agent is running for node {node:?} (pid {}, lock {})",
                holder.trim(),
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(RunLock { _file: file })
    }
}
