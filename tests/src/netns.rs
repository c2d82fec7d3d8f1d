//! Named network namespaces: a guard, and running code or commands inside one.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd::{ip, output_ok};

/// Where `ip netns add NAME` puts the namespace's handle.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// A named network namespace (`ip netns add`) with `lo` up, deleted on drop
/// together with every interface in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        ip(&format!("netns add {name}")).with_context(|| format!("creating namespace {name}"))?;
        // From here on the guard owns it, so a failure below still deletes it.
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&format!("-n {name} link set lo up"))?;
        Ok(ns)
    }

    /// Runs `args` inside the namespace (`ip netns exec`), whatever its outcome.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {}", self.name))
    }

    /// Runs `args` inside the namespace; its stdout, or an error carrying its stderr.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        output_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Quietly: the namespace may already be gone, deleted by a test on purpose.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a fresh thread inside the network namespace `ns`. `setns` moves
/// only the calling thread, which is why the thread is new and is never reused;
/// sockets it opens stay in `ns` wherever they are used later.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let target = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: plain syscall on a valid fd; it affects this thread only.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        f()
    })
}

/// The result of a worker thread, a panic included as an error.
pub fn join<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("worker thread panicked"))?
}
