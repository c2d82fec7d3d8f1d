//! Network namespaces: where named ones live, entering one for a while, and the
//! per-interface settings that are only reachable from inside.

use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::config::rules;

/// Where `ip netns add NAME` puts a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Switches the calling thread into a network namespace until dropped.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn enter(path: &Path) -> Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        setns(&target).with_context(|| format!("entering network namespace {}", path.display()))?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread in the wrong namespace for
        // everything that follows: nothing sensible can go on.
        setns(&self.original).expect("returning to the original network namespace");
    }
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A named namespace that must exist already: its path, or the problem in words
/// that say how to create it.
pub fn existing(name: &str) -> std::result::Result<PathBuf, String> {
    rules::netns_name(name)?;
    let path = netns_path(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "network namespace {name:?} does not exist ({}); create it with `ip netns add {name}`",
            path.display()
        ))
    }
}

/// Opens a named namespace, with an error that says how to create it.
pub fn open_netns(name: &str) -> Result<OwnedFd> {
    let path = netns_path(name);
    let file = File::open(&path).map_err(|e| {
        anyhow!("network namespace {name:?} does not exist ({}: {e}); create it with `ip netns add {name}`", path.display())
    })?;
    Ok(file.into())
}

/// Turns IPv6 off on an interface of the calling thread's namespace. The overlay
/// carries IPv4 only, as Docker's does by default; without this every container
/// would send router solicitations and MLD reports that the dataplane must drop.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has nothing to turn off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("writing {path}: {e}"),
    }
}
